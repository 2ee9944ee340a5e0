/**
 * A paused sandbox moving between two nodes' managers (src/core/flows/move.ts,
 * docs/cluster.md "Moving a paused sandbox"), on the fakes, with the real
 * transfer format in between: what each side keeps on success and on every
 * failure before the commit point, and the drop of a stale copy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ConflictError } from '../../src/core/errors.js';
import type { PausedExport } from '../../src/core/flows/move.js';
import { encodeTransfer, TransferReader } from '../../src/cluster/transfer.js';
import { managerFixture } from '../helpers/manager-fixture.js';

const signal = () => new AbortController().signal;
type T = ReturnType<typeof managerFixture>;

async function collect(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function pausedOn(t: T): Promise<string> {
  const s = await t.m.create({ templateId: 'base', metadata: { owner: 'x' } }, signal());
  await t.m.settled();
  await t.m.pause(s.id, signal());
  return s.id;
}

/** Sends `id` from `a` to `b` through the transfer format; `commit` decides the claim. */
async function move(a: T, b: T, id: string, commit: () => Promise<void> = async () => undefined): Promise<void> {
  await a.m.moveOut(id, async (exp: PausedExport, dir: string) => {
    const bytes = await collect(encodeTransfer({ sandbox: exp }, dir, exp.files.map((f) => f.name)));
    const reader = new TransferReader(Readable.from([bytes]));
    const m = (await reader.manifest()) as { sandbox: PausedExport };
    await b.m.importPaused(m.sandbox, async (into) => { await reader.files(into, new Map(m.sandbox.files.map((f) => [f.name, f.size]))); }, commit);
  });
}

function pair(): [T, T, () => void] {
  const a = managerFixture({ prefix: 'hearth-move-a-', warmTemplates: false });
  const b = managerFixture({ prefix: 'hearth-move-b-', warmTemplates: false });
  return [a, b, () => { a.done(); b.done(); }];
}

test('a move: the target has the paused sandbox (same id, tokens, metadata), its capture rewritten to its own paths; nothing stays on the source; it resumes there', async () => {
  const [a, b, done] = pair();
  try {
    const id = await pausedOn(a);
    const before = a.m.get(id);
    await move(a, b, id);
    assert.equal(a.store.getSandbox(id), undefined);
    assert.deepEqual(a.store.listHoldings(id), []);
    assert.equal(existsSync(join(a.dataDir, 'sandboxes', id)), false, 'the source\'s files are gone');
    const rec = b.m.get(id);
    assert.equal(rec.state, 'paused');
    assert.equal(rec.agentToken, before.agentToken);
    assert.deepEqual(rec.metadata, { owner: 'x' });
    assert.deepEqual(b.store.listHoldings(id).map((h) => h.kind), ['dir', 'paused']);
    const meta = JSON.parse(readFileSync(join(b.dataDir, 'sandboxes', id, 'paused', 'meta.json'), 'utf8')) as { disk: { dir: string; files: string[] } };
    assert.equal(meta.disk.dir, join(b.dataDir, 'sandboxes', id, 'paused'));
    assert.deepEqual(meta.disk.files, [join(b.dataDir, 'sandboxes', id, 'paused', 'rootfs.ext4')]);
    const resumed = await b.m.resume(id, signal());
    assert.equal(resumed.state, 'running');
    await b.m.destroy(id, signal());
    b.nothingLeft();
    a.nothingLeft();
  } finally {
    done();
  }
});

test('a failed commit (the cluster no longer names the source) leaves nothing on the target and the sandbox paused and resumable on the source', async () => {
  const [a, b, done] = pair();
  try {
    const id = await pausedOn(a);
    await assert.rejects(move(a, b, id, async () => { throw new ConflictError('claimed by someone else'); }), /claimed by someone else/);
    assert.equal(b.store.getSandbox(id), undefined);
    assert.deepEqual(b.store.listHoldings(id), []);
    assert.equal(existsSync(join(b.dataDir, 'sandboxes', id)), false, 'the received files are removed');
    assert.equal(a.m.get(id).state, 'paused');
    assert.equal((await a.m.resume(id, signal())).state, 'running');
    await a.m.destroy(id, signal());
    a.nothingLeft();
  } finally {
    done();
  }
});

test('the target refuses (409) another image, and without room; the source keeps the sandbox', async () => {
  const [a, b, done] = pair();
  try {
    const id = await pausedOn(a);
    b.store.upsertTemplate({ ...b.store.getTemplate('base')!, imageHash: 'other' });
    await assert.rejects(move(a, b, id), (e: Error) => e instanceof ConflictError && /image/.test(e.message));
    b.store.upsertTemplate({ ...b.store.getTemplate('base')!, imageHash: 'h' });
    const big = await b.m.create({ templateId: 'base', memoryMib: 4000 }, signal());
    await assert.rejects(move(a, b, id), /capacity/);
    await b.m.destroy(big.id, signal());
    assert.equal(a.m.get(id).state, 'paused');
    assert.equal(existsSync(join(b.dataDir, 'sandboxes', id)), false);
    await move(a, b, id);
    assert.equal(b.m.get(id).state, 'paused', 'once it fits, it moves');
    await b.m.destroy(id, signal());
  } finally {
    done();
  }
});

test('only a paused sandbox moves; a move holds the sandbox (no resume meanwhile)', async () => {
  const [a, b, done] = pair();
  try {
    const s = await a.m.create({ templateId: 'base' }, signal());
    await assert.rejects(move(a, b, s.id), /only a paused sandbox/);
    await a.m.pause(s.id, signal());
    let release!: () => void;
    const held = a.m.moveOut(s.id, () => new Promise<void>((r) => { release = r; }));
    await new Promise((r) => setTimeout(r, 10));
    await assert.rejects(a.m.resume(s.id, signal()), /busy \(move/);
    release();
    await held;
    assert.equal(a.store.getSandbox(s.id), undefined);
  } finally {
    done();
  }
});

test('a stale paused copy (the move committed elsewhere, then this node died before forgetting it) is dropped; a running one is not', async () => {
  const [a, b, done] = pair();
  try {
    const id = await pausedOn(a);
    const run = await a.m.create({ templateId: 'base' }, signal());
    assert.deepEqual(await a.m.dropMovedAway([id, run.id]), [id]);
    assert.equal(a.store.getSandbox(id), undefined);
    assert.equal(existsSync(join(a.dataDir, 'sandboxes', id)), false);
    assert.equal(a.m.get(run.id).state, 'running');
    await a.m.destroy(run.id, signal());
    a.nothingLeft();
    b.nothingLeft();
  } finally {
    done();
  }
});
