/**
 * Cluster mode's forwarding overhead (docs/cluster.md), in one run: one real
 * PostgreSQL (test/helpers/postgres.ts) and two in-process nodes A and B
 * (test/helpers/cluster.ts, as test/integration/cluster.test.ts runs them).
 * Node B admits almost no guest memory (memoryOvercommit 0.05), so placement
 * always chooses A: a create sent to A is carried out there (direct), one sent
 * to B is placed on A and forwarded; every sandbox's owner is checked.
 *   - create → first `commands.run('true')` through the SDK, direct (client on
 *     A) vs placed and forwarded (client on B), interleaved;
 *   - `commands.run('true')` on one existing sandbox, direct vs through B,
 *     N interleaved;
 *   - an 8 MiB file write + read, direct vs through B, interleaved;
 *   - a paused sandbox resumed on its node vs moved to the other node
 *     (POST /sandboxes/{id}/move) and resumed there, interleaved.
 *
 *   npm run --silent build && node --import tsx bench/cluster.ts [--rounds N] [--execs N] [--files N] [--moves N]
 *     → bench/results/cluster.json   (root, QEMU, PostgreSQL 15 from Debian's packages;
 *        HEARTH_IMAGE_DIR / HEARTH_IMAGE_CACHE / HEARTH_TEST_TMP as for the integration tests)
 */
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { Sandbox } from '../src/sdk/index.js';
import { postgresAvailable, startPostgres } from '../test/helpers/postgres.js';
import { startClusterNode, until } from '../test/helpers/cluster.js';
import type { TestDaemon } from '../test/helpers/daemon.js';
import type { NodeInfo } from '../src/cluster/types.js';
import { log, stats, timed, writeResults, type Stats } from './lib.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, execs: { type: 'string', default: '20' }, files: { type: 'string', default: '5' }, moves: { type: 'string', default: '3' } } });
const moves = Number(values.moves);
const rounds = Number(values.rounds);
const execs = Number(values.execs);
const fileRounds = Number(values.files);

if (!postgresAvailable()) { log('bench/cluster.ts: PostgreSQL 15 (Debian) is not installed; nothing measured'); process.exit(0); }

const TOKEN = randomBytes(24).toString('hex');
const FILE_BYTES = 8 << 20;
const overhead = (direct: Stats, forwarded: Stats): { p50Ms: number; meanMs: number; p50Ratio: number } => ({
  p50Ms: Math.round((forwarded.p50 - direct.p50) * 10) / 10,
  meanMs: Math.round((forwarded.mean - direct.mean) * 10) / 10,
  p50Ratio: Math.round((forwarded.p50 / direct.p50) * 100) / 100,
});

const pg = await startPostgres();
const nodes: TestDaemon[] = [];
const results: Record<string, unknown> = {
  rounds, execs, fileRounds, moves,
  config: 'two nodes in one process on one host (loopback between them), QEMU TCG guests, 384 MiB, cold boot (no warm snapshot), heartbeat 400 ms',
};
try {
  const a = await startClusterNode(pg.url, 'a', TOKEN);
  nodes.push(a);
  const b = await startClusterNode(pg.url, 'b', TOKEN, { memoryOvercommit: 0.05 });
  nodes.push(b);
  await until('both nodes up', async () => {
    const r = await fetch(`${a.url}/nodes`);
    const list = await r.json() as NodeInfo[];
    return list.filter((n) => n.state === 'up').length === 2;
  });
  const ownedByA = (id: string): void => {
    if (!a.store.getSandbox(id)) throw new Error(`sandbox ${id} was not placed on node A: the measurement would compare the wrong paths`);
  };
  const createToFirst = async (via: TestDaemon): Promise<{ createMs: number; firstMs: number; totalMs: number }> => {
    const [s, createMs] = await timed(() => Sandbox.create({ url: via.url }));
    const [, firstMs] = await timed(() => s.commands.run('true'));
    ownedByA(s.id);
    await s.kill();
    return { createMs, firstMs, totalMs: createMs + firstMs };
  };

  await createToFirst(a); // unmeasured: first boot on this node
  log(`create → first command, direct (A) vs placed on A through B, ${rounds} rounds interleaved`);
  const cd = { create: [] as number[], first: [] as number[], total: [] as number[] };
  const cf = { create: [] as number[], first: [] as number[], total: [] as number[] };
  for (let i = 0; i < rounds; i++) {
    for (const [via, into] of (i % 2 ? [[b, cf], [a, cd]] : [[a, cd], [b, cf]]) as [TestDaemon, typeof cd][]) {
      const r = await createToFirst(via);
      into.create.push(r.createMs); into.first.push(r.firstMs); into.total.push(r.totalMs);
    }
    log(`  #${i + 1}: direct ${Math.round(cd.total.at(-1)!)} ms, through B ${Math.round(cf.total.at(-1)!)} ms`);
  }
  const ctf = { direct: { total: stats(cd.total), create: stats(cd.create), firstCommand: stats(cd.first) }, forwarded: { total: stats(cf.total), create: stats(cf.create), firstCommand: stats(cf.first) } };
  results['createToFirstCommandMs'] = { ...ctf, overheadTotal: overhead(ctf.direct.total, ctf.forwarded.total) };

  const direct = await Sandbox.create({ url: a.url });
  ownedByA(direct.id);
  const through = await Sandbox.connect(direct.id, { url: b.url });
  for (let i = 0; i < 3; i++) { await direct.commands.run('true'); await through.commands.run('true'); } // warm connections
  log(`commands.run('true'), direct vs through B, ${execs} each interleaved`);
  const ed: number[] = [];
  const ef: number[] = [];
  for (let i = 0; i < execs; i++) {
    for (const [s, into] of (i % 2 ? [[through, ef], [direct, ed]] : [[direct, ed], [through, ef]]) as [Sandbox, number[]][]) {
      into.push((await timed(() => s.commands.run('true')))[1]);
    }
  }
  const sed = stats(ed);
  const sef = stats(ef);
  results['execMs'] = { direct: sed, forwarded: sef, overhead: overhead(sed, sef) };
  log(`  p50 direct ${sed.p50} ms, through B ${sef.p50} ms`);

  log(`8 MiB write + read, direct vs through B, ${fileRounds} each interleaved`);
  const data = randomBytes(FILE_BYTES);
  const fd = { write: [] as number[], read: [] as number[] };
  const ff = { write: [] as number[], read: [] as number[] };
  for (let i = 0; i < fileRounds; i++) {
    for (const [s, into, tag] of (i % 2 ? [[through, ff, 'b'], [direct, fd, 'a']] : [[direct, fd, 'a'], [through, ff, 'b']]) as [Sandbox, typeof fd, string][]) {
      const path = `/tmp/bench-${tag}-${i}.bin`;
      into.write.push((await timed(() => s.files.write(path, data)))[1]);
      const [back, readMs] = await timed(() => s.files.read(path, { format: 'bytes' }));
      into.read.push(readMs);
      if (!Buffer.from(back).equals(data)) throw new Error(`8 MiB round trip via node ${tag} came back different`);
      await s.commands.run(`rm -f ${path}`);
    }
  }
  const mibps = (ms: Stats): number => Math.round((FILE_BYTES / 2 ** 20 / (ms.p50 / 1000)) * 10) / 10;
  const fileStats = (x: typeof fd): Record<string, unknown> => {
    const w = stats(x.write);
    const r = stats(x.read);
    return { writeMs: w, readMs: r, writeMiBps: mibps(w), readMiBps: mibps(r) };
  };
  const fdS = fileStats(fd);
  const ffS = fileStats(ff);
  results['file8MiB'] = {
    direct: fdS, forwarded: ffS,
    overhead: { write: overhead(fdS['writeMs'] as Stats, ffS['writeMs'] as Stats), read: overhead(fdS['readMs'] as Stats, ffS['readMs'] as Stats) },
  };
  log(`  write p50 ${(fdS['writeMs'] as Stats).p50} vs ${(ffS['writeMs'] as Stats).p50} ms, read p50 ${(fdS['readMs'] as Stats).p50} vs ${(ffS['readMs'] as Stats).p50} ms`);

  log(`a paused sandbox: resume on its node vs move to the other node + resume there, ${moves} each interleaved`);
  const post = async (via: TestDaemon, path: string, body: unknown = {}): Promise<Record<string, unknown>> => {
    const r = await fetch(`${via.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const text = await r.text();
    if (!r.ok) throw new Error(`POST ${path}: ${r.status} ${text}`);
    return (text ? JSON.parse(text) : {}) as Record<string, unknown>;
  };
  const id = direct.id;
  const m = { resumeHere: [] as number[], move: [] as number[], resumeThere: [] as number[], bytes: [] as number[] };
  let where = a;
  for (let i = 0; i < moves; i++) {
    await post(where, `/sandboxes/${id}/pause`);
    m.resumeHere.push((await timed(() => post(where, `/sandboxes/${id}/resume`)))[1]);
    const other = where === a ? b : a;
    await post(where, `/sandboxes/${id}/pause`);
    const [moved, moveMs] = await timed(() => post(where, `/sandboxes/${id}/move`, { node: other.cfg.nodeId }));
    m.move.push(moveMs);
    m.bytes.push(Number(moved['bytes']));
    m.resumeThere.push((await timed(() => post(other, `/sandboxes/${id}/resume`)))[1]);
    if ((await direct.commands.run('true')).exitCode !== 0) throw new Error('the moved sandbox does not run commands');
    where = other;
    log(`  #${i + 1}: resume here ${Math.round(m.resumeHere.at(-1)!)} ms; move ${Math.round(moveMs)} ms (${Math.round(m.bytes.at(-1)! / 2 ** 20)} MiB sent) + resume there ${Math.round(m.resumeThere.at(-1)!)} ms`);
  }
  const rh = stats(m.resumeHere);
  const mv = stats(m.move);
  const rt = stats(m.resumeThere);
  results['pausedMove'] = {
    resumeOnItsNodeMs: rh, moveMs: mv, resumeAfterMoveMs: rt, sentMiB: stats(m.bytes.map((x) => x / 2 ** 20)),
    moveThroughputMiBps: Math.round(((stats(m.bytes).p50 / 2 ** 20) / (mv.p50 / 1000)) * 10) / 10,
    moveAndResumeVsResumeP50Ratio: Math.round(((mv.p50 + rt.p50) / rh.p50) * 100) / 100,
  };
  await direct.kill();
} finally {
  for (const d of nodes.reverse()) await d.stop().catch((err: unknown) => log(`stop ${d.cfg.nodeId}: ${String(err)}`));
  await pg.stop();
}
log(`wrote ${writeResults('cluster', results)}`);
