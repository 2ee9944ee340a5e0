/**
 * Observability (issue #16) with a real hearthd and a real VM: the event stream delivers a
 * create and a destroy in order (with the key id and reason); a line the guest prints to its
 * console is in the sandbox's logs (API, follow stream, CLI) with secrets redacted; metrics
 * of a sandbox running a CPU-bound loop show CPU rising, from the guest and from the host;
 * /metrics parses as Prometheus text and its counters move with the operations. One daemon,
 * one sandbox.
 *
 *   npm run build && HEARTH_IMAGE_DIR=/var/lib/hearth HEARTH_TEST_TMP=/var/tmp \
 *     node --import tsx --test --test-timeout=600000 test/integration/observability.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Sandbox, followLogs, getLogs } from '../../src/sdk/index.js';
import { createApiKey } from '../../src/api/auth.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { parseProm, rawValue, value } from '../helpers/prom.js';
import { readSse, type SseEvent } from '../helpers/sse.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('observability with a real sandbox', () => {
  let d: TestDaemon;
  let key: string;
  let keyId: string;
  let sbx: Sandbox;
  let events: Promise<SseEvent[]>;
  let metricsBefore: string;
  const secret = `s3cret-${randomBytes(6).toString('hex')}`;
  const marker = `HEARTH-CONSOLE-${randomBytes(4).toString('hex')}`;
  const started = Date.now();

  const scrape = async (): Promise<string> => {
    const res = await fetch(`${d.url}/metrics`, { headers: { 'x-api-key': key } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return res.text();
  };

  before(async () => {
    d = await startTestDaemon({ requireApiKey: true });
    ({ key, id: keyId } = createApiKey(d.store, 'observability-test'));
    metricsBefore = await scrape();
    let opened!: () => void;
    const open = new Promise<void>((r) => { opened = r; });
    events = readSse(`${d.url}/events`, { headers: { 'x-api-key': key }, onOpen: () => opened(), until: (es) => es.some((e) => e.event === 'sandbox.destroyed' && sbx !== undefined && e.data.includes(`"sandboxID":"${sbx.id}"`)), timeoutMs: 540_000 });
    await open;
    sbx = await Sandbox.create({ url: d.url, apiKey: key, envs: { SECRET_VALUE: secret }, metadata: { suite: 'observability' } });
  });

  after(async () => {
    await d?.stop();
  });

  test('a line the guest prints to its console is in its logs (API, follow stream, CLI); its secret env value is redacted', async () => {
    // Follow first: the line must arrive on the live stream too.
    const ac = new AbortController();
    const followed = (async () => {
      for await (const e of followLogs(sbx.id, { url: d.url, apiKey: key, sources: ['console'], signal: ac.signal })) if (e.line.includes(marker)) return e;
      return null;
    })();
    // The console is root's: through sudo (passwordless for the sandbox user).
    await sbx.commands.run(`echo "${marker} secret=$SECRET_VALUE" | sudo -n tee /dev/console > /dev/null`);
    const live = await Promise.race([followed, sleep(30_000).then(() => null)]);
    ac.abort();
    assert.ok(live, 'the follow stream delivered the console line');
    assert.equal(live.source, 'console');
    assert.equal(live.line, `${marker} secret=[redacted]`);
    const entries = await getLogs(sbx.id, { url: d.url, apiKey: key, limit: 10_000 });
    assert.ok(entries.some((e) => e.source === 'console' && e.line.includes(marker)));
    assert.ok(entries.some((e) => e.source === 'hearth' && /^create \(restore\) ok in \d+ ms: .*restore \d+ ms/.test(e.line)), 'lifecycle step timings in the log');
    assert.ok(!JSON.stringify(entries).includes(secret), 'the env value never reaches the logs');
    const cli = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'logs', sbx.id, '--source', 'console', '-n', '200'], {
        cwd: PACKAGE_ROOT, env: { ...process.env, HEARTH_URL: d.url, HEARTH_API_KEY: key }, stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, out }));
    });
    assert.equal(cli.code, 0);
    assert.match(cli.out, new RegExp(`console +${marker} secret=\\[redacted\\]`));
  });

  test('metrics of a sandbox running a CPU-bound loop show CPU rising, in the guest and from the host; kept at a fixed interval', async () => {
    const t0 = Math.floor(Date.now() / 1000);
    await sleep(11_000);
    const idle = await sbx.getMetrics({ start: new Date(t0 * 1000) });
    assert.ok(idle.length >= 2, `samples every 5 s: ${idle.length}`);
    const median = (xs: number[]): number => { const v = [...xs].sort((a, b) => a - b); return v[Math.floor(v.length / 2)] ?? 0; };
    // Medians: the first sample after a restore measures the guest catching up (often 100%).
    const idleCpu = median(idle.map((m) => m.cpuUsedPct));
    const t1 = Math.floor(Date.now() / 1000);
    await sbx.commands.run('timeout 30 sh -c "while :; do :; done"', { background: true });
    await sleep(22_000);
    const busy = (await sbx.getMetrics({ start: new Date((t1 + 6) * 1000) }));
    assert.ok(busy.length >= 2, `samples while busy: ${busy.length}`);
    const busyCpu = Math.max(...busy.map((m) => m.cpuUsedPct));
    const busyHost = Math.max(...busy.map((m) => m.hostCpuUsedPct ?? 0));
    const idleHost = median(idle.map((m) => m.hostCpuUsedPct ?? 0));
    process.stderr.write(`guest CPU idle ${idleCpu}% → busy ${busyCpu}%; host CPU idle ${idleHost}% → busy ${busyHost}%\n`);
    assert.ok(busyCpu >= 70, `the guest sees its vCPU busy: ${busyCpu}%`);
    assert.ok(median(busy.map((m) => m.cpuUsedPct)) > idleCpu + 30, `CPU rose: ${idleCpu}% → ${busy.map((m) => m.cpuUsedPct).join(' ')}`);
    assert.ok(busyHost >= 50 && busyHost > idleHost, `the host sees the VMM busy: ${idleHost}% → ${busyHost}%`);
    const last = busy.at(-1)!;
    assert.ok((last.hostMemRss ?? 0) > 32 << 20, `host RSS of the VMM: ${last.hostMemRss}`);
    assert.ok((last.hostDiskUsed ?? 0) > 0, `the disk's blocks in the data dir: ${last.hostDiskUsed}`);
    // The whole series since the sandbox started (on disk), at the sampling interval.
    const all = await sbx.getMetrics();
    assert.ok(all[0]!.timestamp.getTime() <= t0 * 1000 + 5000);
    const gaps = all.slice(1).map((m, i) => (m.timestamp.getTime() - all[i]!.timestamp.getTime()) / 1000);
    assert.ok(gaps.filter((g) => g >= 3 && g <= 8).length >= gaps.length * 0.7, `fixed interval (5 s): ${gaps.join(' ')}`);
  });

  test('the event stream delivers the create and the destroy in order, with reason and key id; /metrics counters moved; logs outlive the sandbox', async () => {
    await Sandbox.kill(sbx.id, { url: d.url, apiKey: key });
    const got = (await events).map((e) => ({ event: e.event, ...JSON.parse(e.data) as { id: number; type: string; sandboxID: string; keyId: string | null; reason: string; to: string } }))
      .filter((e) => e.sandboxID === sbx.id);
    const milestones = got.filter((e) => e.type !== 'sandbox.state');
    assert.deepEqual(milestones.map((e) => e.type), ['sandbox.created', 'sandbox.destroyed']);
    assert.deepEqual(got.map((e) => e.to), ['running', 'destroying', 'destroyed']);
    assert.ok(got.every((e, i) => i === 0 || e.id > got[i - 1]!.id));
    assert.ok(got.every((e) => e.keyId === keyId), 'the API key that caused each');
    assert.equal(milestones[0]!.reason, 'POST /sandboxes');
    assert.equal(milestones[1]!.reason, 'destroyed by request');
    assert.ok(got.every((e) => e.event === e.type), 'SSE event names are the types');

    const after = await scrape();
    const fam = parseProm(after);
    assert.ok(fam.length > 20, 'parses');
    const before = parseProm(metricsBefore);
    const moved = (name: string, labels: Record<string, string>) => value(fam, name, labels) - value(before, name, labels);
    assert.equal(moved('hearth_lifecycle_operations_total', { op: 'create_restore', outcome: 'ok' }), 1);
    // (The template's warm-snapshot build VM, started with the daemon, may end after the first scrape: at least ours.)
    assert.ok(moved('hearth_lifecycle_operations_total', { op: 'destroy', outcome: 'ok' }) >= 1);
    assert.ok(rawValue(after, 'hearth_lifecycle_step_duration_seconds_count', { op: 'create_restore', step: 'restore' }) >= 1);
    assert.ok(moved('hearth_sandbox_events_total', { type: 'sandbox.destroyed' }) >= 1);
    assert.ok(moved('hearth_http_requests_total', { class: 'envd' }) >= 2, 'envd requests counted');
    assert.ok(moved('hearth_http_requests_total', { class: 'api', route: '/sandboxes/:sandboxID/metrics', status: '200' }) >= 2);
    assert.ok(value(fam, 'hearth_sandboxes', { state: 'destroyed' }) >= 1);
    assert.ok(moved('hearth_sandbox_metric_samples_total', { outcome: 'ok' }) >= 4);
    assert.ok(value(fam, 'hearth_host_memory_bytes') > 0 && value(fam, 'hearth_datadir_size_bytes') > 0);
    assert.equal(value(fam, 'hearth_build_info'), 1);
    assert.ok(value(fam, 'hearth_reconcile_last_run_timestamp_seconds') * 1000 >= started - 60_000);
    assert.ok(!after.includes(sbx.id) && !after.includes(keyId), 'no sandbox or key ids in labels');

    const entries = await getLogs(sbx.id, { url: d.url, apiKey: key, limit: 10_000 });
    assert.ok(entries.some((e) => e.line.includes(marker)), 'the console line is kept after the sandbox ended');
    assert.ok(entries.some((e) => e.source === 'hearth' && e.line.startsWith('destroying → destroyed: destroyed by request')));
  });
});
