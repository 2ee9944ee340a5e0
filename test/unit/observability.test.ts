import { IMAGE_TEMPLATE_FIELDS } from '../../src/core/types.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { buildApi } from '../../src/api/server.js';
import { createApiKey } from '../../src/api/auth.js';
import { SandboxManager } from '../../src/core/manager.js';
import { Store } from '../../src/store/store.js';
import { silentLogger } from '../../src/core/log.js';
import { Observability } from '../../src/observability/hub.js';
import { SandboxLogStore, redactor } from '../../src/observability/logs.js';
import { ConsoleTailer, consoleEntry } from '../../src/observability/console-tail.js';
import { EventBus, eventOf } from '../../src/observability/events.js';
import { actors } from '../../src/observability/actor.js';
import { labelName } from '../../src/observability/prometheus.js';
import { ProcCpuMeter, procStats } from '../../src/observability/host.js';
import { FakeDriver, FakeSlots, FakeStorage, World, fakeAgent, fakeCloner } from '../helpers/fakes.js';
import { family, parseProm, rawValue, value } from '../helpers/prom.js';
import { readSse } from '../helpers/sse.js';

const tmp = (): string => mkdtempSync(join(tmpdir(), 'hearth-obs-'));
const entry = (line: string, source: 'console' | 'agent' | 'hearth' = 'console', at = new Date()) => ({ timestamp: at.toISOString(), source, level: 'info' as const, line });

test('log store: rotation bounds a sandbox\'s logs on disk; reads newest, from a start, by source; followers get new lines', () => {
  const dir = tmp();
  try {
    const logs = new SandboxLogStore({ dir, maxFileBytes: 8192, keepFiles: 2 });
    const got: string[] = [];
    const off = logs.follow('s1', (e) => got.push(e.line));
    for (let i = 0; i < 2000; i++) logs.append('s1', [entry(`line ${i} ${'x'.repeat(40)}`, i % 10 === 0 ? 'hearth' : 'console', new Date(1_700_000_000_000 + i * 1000))]);
    off();
    logs.append('s1', [entry('after unfollow')]);
    assert.equal(got.length, 2000);
    const files = readdirSync(join(dir, 's1')).sort();
    assert.deepEqual(files, ['log.jsonl', 'log.jsonl.1', 'log.jsonl.2'], 'current + keepFiles rotated files, no more');
    const total = files.reduce((n, f) => n + statSync(join(dir, 's1', f)).size, 0);
    assert.ok(total <= 3 * 8192, `bounded: ${total} bytes`);
    assert.ok(logs.rotations > 2);
    const newest = logs.read('s1', { limit: 5 });
    assert.equal(newest.at(-1)!.line, 'after unfollow');
    assert.equal(newest.length, 5);
    const kept = logs.read('s1', { limit: 10_000 });
    const firstKept = Date.parse(kept[0]!.timestamp);
    const from = logs.read('s1', { start: firstKept + 10_000, limit: 3 });
    assert.equal(Date.parse(from[0]!.timestamp), firstKept + 10_000, 'start: from that time on, oldest first');
    assert.ok(logs.read('s1', { sources: ['hearth'], limit: 10_000 }).every((e) => e.source === 'hearth'));
    assert.equal(logs.read('nope').length, 0);
    assert.equal(logs.dirOf('../etc'), null, 'ids that are not plain names never become paths');
    logs.remove('s1');
    assert.deepEqual(logs.ids(), []);
  } finally { rmSync(dir, { recursive: true, force: true }); }
});

test('console lines: the agent\'s JSON lines become agent entries with their level; control characters and ANSI go; secrets redacted', () => {
  const now = new Date('2025-01-01T00:00:00Z');
  const a = consoleEntry('{"t":"2025-01-01T00:00:01.000Z","level":"warn","msg":"agent restarted","pid":7}', now)!;
  assert.deepEqual(a, { timestamp: '2025-01-01T00:00:01.000Z', source: 'agent', level: 'warn', line: 'agent restarted {"pid":7}' });
  assert.deepEqual(consoleEntry('\x1b[32mhello\x1b[0m\r', now), { timestamp: now.toISOString(), source: 'console', level: 'info', line: 'hello' });
  assert.equal(consoleEntry('   \r', now), null);
  const r = redactor(['tok_abcdefghijkl', 'short', 'supersecretvalue']);
  assert.equal(r('token tok_abcdefghijkl and supersecretvalue; short stays'), 'token [redacted] and [redacted]; short stays');
});

test('console tailer: copies new lines once, across partial lines and restarts (offset kept), and truncates a large console after copying it', () => {
  const dir = tmp();
  try {
    const sandboxes = join(dir, 'sandboxes');
    mkdirSync(join(sandboxes, 's1'), { recursive: true });
    const consoleLog = join(sandboxes, 's1', 'console.log');
    writeFileSync(consoleLog, 'boot line 1\nsecret=topsecretvalue\npart');
    const logs = new SandboxLogStore({ dir: join(dir, 'observe') });
    const src = { id: 's1', redact: redactor(['topsecretvalue']) };
    const t = new ConsoleTailer(sandboxes, logs, 4096);
    t.drain(src);
    assert.deepEqual(logs.read('s1').map((e) => e.line), ['boot line 1', 'secret=[redacted]']);
    appendFileSync(consoleLog, 'ial line\n');
    t.drain(src);
    assert.deepEqual(logs.read('s1').map((e) => e.line).slice(-1), ['partial line']);
    // A new tailer (a restarted hearthd) goes on from the kept offset.
    const t2 = new ConsoleTailer(sandboxes, logs, 4096);
    appendFileSync(consoleLog, `${'y'.repeat(5000)}\nlast\n`);
    t2.drain(src);
    const lines = logs.read('s1').map((e) => e.line);
    assert.equal(lines.filter((l) => l === 'boot line 1').length, 1, 'nothing copied twice');
    assert.equal(lines.at(-1), 'last');
    assert.equal(statSync(consoleLog).size, 0, 'the console was truncated once copied past its bound');
    appendFileSync(consoleLog, 'after truncation\n');
    t2.drain(src);
    assert.equal(logs.read('s1').at(-1)!.line, 'after truncation');
  } finally { rmSync(dir, { recursive: true, force: true }); }
});

test('events: type from the transition, the request\'s key id and route from the actor, the end reason for ended sandboxes; backlog by id', () => {
  const bus = new EventBus(3);
  const rec = { id: 'i1', templateId: 'base', metadata: { app: 'x' }, endReason: null } as unknown as Parameters<typeof eventOf>[1];
  const e1 = bus.publish((id) => eventOf(id, rec, 'creating', 'running'));
  assert.equal(e1.type, 'sandbox.created');
  assert.equal(e1.keyId, null);
  const e2 = actors.run({ keyId: 'kabc', method: 'POST', route: '/sandboxes/:sandboxID/pause' }, () => bus.publish((id) => eventOf(id, rec, 'pausing', 'paused')));
  assert.equal(e2.type, 'sandbox.paused');
  assert.equal(e2.keyId, 'kabc');
  assert.equal(e2.reason, 'POST /sandboxes/:sandboxID/pause');
  const e3 = bus.publish((id) => eventOf(id, { ...rec, endReason: 'timeout reached' } as typeof rec, 'destroying', 'destroyed'));
  assert.equal(e3.type, 'sandbox.destroyed');
  assert.equal(e3.reason, 'timeout reached');
  bus.publish((id) => eventOf(id, rec, 'running', 'pausing'));
  assert.deepEqual(bus.since(1).map((e) => e.id), [2, 3, 4]);
  assert.deepEqual(bus.since(0).map((e) => e.id), [2, 3, 4], 'bounded backlog');
});

test('labels and host readings: operation names become bounded labels; /proc of this process reads', () => {
  assert.equal(labelName('create (boot)'), 'create_boot');
  assert.equal(labelName('pause (filesystem)'), 'pause_filesystem');
  assert.equal(labelName('x'.repeat(100)), 'other');
  const st = procStats(process.pid);
  assert.ok(st && st.cpuSeconds >= 0 && st.rssBytes > 0);
  assert.equal(procStats(2 ** 30), null);
  const m = new ProcCpuMeter();
  assert.equal(m.percent(1, 1, { cpuSeconds: 10, rssBytes: 0 }, 0), null);
  assert.equal(m.percent(1, 2, { cpuSeconds: 11, rssBytes: 0 }, 1000), 50, 'one CPU second in one second over 2 vCPUs');
});

async function setup(requireApiKey = false) {
  const dataDir = tmp();
  const w = new World();
  const store = new Store(':memory:');
  store.upsertTemplate({ ...IMAGE_TEMPLATE_FIELDS, id: 'base', imageHash: 'h', kernelPath: '/k', initrdPath: null, rootfsPath: '/r', rootfsSizeBytes: 1 << 30, kernelArgs: '', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString() });
  const log = silentLogger();
  const manager = new SandboxManager({
    store, log, vmm: new FakeDriver(w), storage: new FakeStorage(w), network: new FakeSlots(w), agent: fakeAgent(w), cloneFile: fakeCloner(w),
    config: { dataDir, agentPort: 49983, defaultTimeoutSec: 60, maxTimeoutSec: 3600, bootTimeoutMs: 1000, restoreTimeoutMs: 1000, maxConcurrentStarts: 2, warmTemplates: false,
      limits: { maxVcpus: 4, maxMemoryMib: 4096, minMemoryMib: 128, maxForks: 5 }, capacityMemoryMib: 1024 },
  });
  const obs = new Observability({ store, manager, log, dataDir, capacityMemoryMib: 1024, tailIntervalMs: 0, build: { version: 'test', vmm: 'fake' } });
  const app = await buildApi({ manager, store, log, doctor: async () => ({}), version: 'test', requireApiKey, observability: obs });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  return { app, store, manager, obs, url, dataDir, done: async () => { await manager.settled(); await app.close(); obs.close(); rmSync(dataDir, { recursive: true, force: true }); } };
}

const json = (body: unknown, key?: string) => ({ method: 'POST', headers: { 'content-type': 'application/json', ...(key ? { 'x-api-key': key } : {}) }, body: JSON.stringify(body) });

test('GET /metrics parses as Prometheus text; counters move with operations; refusals counted; no sandbox ids in labels; behind the key', async () => {
  const t = await setup(true);
  try {
    const { key, id: keyId } = createApiKey(t.store, 'ops');
    assert.equal((await fetch(`${t.url}/metrics`)).status, 401, '/metrics is an API route: the key is required where keys are');
    const scrape = async () => parseProm(await (await fetch(`${t.url}/metrics`, { headers: { 'x-api-key': key } })).text());
    const before = await scrape();
    assert.equal(value(before, 'hearth_build_info', { version: 'test', vmm: 'fake' }), 1);
    assert.equal(value(before, 'hearth_lifecycle_operations_total'), 0);
    const created = await (await fetch(`${t.url}/sandboxes`, json({ templateID: 'base' }, key))).json() as { sandboxID: string };
    assert.equal((await fetch(`${t.url}/sandboxes/${created.sandboxID}/pause`, json({}, key))).status, 204);
    assert.equal((await fetch(`${t.url}/sandboxes`, json({ templateID: 'base', memoryMB: 2048 }, key))).status, 503, 'past capacity');
    assert.equal((await fetch(`${t.url}/sandboxes`, json({ templateID: 'base', cpuCount: 'x' }, key))).status, 400);
    const text = await (await fetch(`${t.url}/metrics`, { headers: { 'x-api-key': key } })).text();
    const after = parseProm(text);
    assert.equal(value(after, 'hearth_lifecycle_operations_total', { op: 'create_boot', outcome: 'ok' }), 1);
    assert.equal(value(after, 'hearth_lifecycle_operations_total', { op: 'pause', outcome: 'ok' }), 1);
    assert.equal(family(after, 'hearth_lifecycle_step_duration_seconds').type, 'HISTOGRAM');
    assert.equal(rawValue(text, 'hearth_lifecycle_step_duration_seconds_count', { op: 'create_boot', step: 'agent' }), 1, 'per-step histograms');
    assert.equal(rawValue(text, 'hearth_lifecycle_operation_duration_seconds_count', { op: 'pause', outcome: 'ok' }), 1);
    assert.equal(value(after, 'hearth_sandboxes', { state: 'paused' }), 1);
    assert.equal(value(after, 'hearth_sandbox_transitions_total', { from: 'pausing', to: 'paused' }), 1);
    assert.equal(value(after, 'hearth_admission_refusals_total', { operation: 'create', reason: 'capacity' }), 1);
    assert.equal(value(after, 'hearth_admission_refusals_total', { operation: 'create', reason: 'invalid_argument' }), 1);
    assert.ok(value(after, 'hearth_http_requests_total', { class: 'api', route: '/sandboxes/:sandboxID/pause', status: '204' }) >= 1);
    assert.equal(value(after, 'hearth_capacity_memory_bytes'), 1024 * 1048576);
    assert.ok(value(after, 'hearth_host_cpus') >= 1);
    assert.ok(!text.includes(created.sandboxID), 'no sandbox id in any label');
    assert.ok(!text.includes(keyId) && !text.includes(key), 'no key or key id either');
  } finally { await t.done(); }
});

test('GET /events streams create, pause and destroy in order with reason and key id; GET /sandboxes/{id}/logs has the lifecycle lines and follows', async () => {
  const t = await setup(true);
  try {
    const { key, id: keyId } = createApiKey(t.store, 'ops');
    let sid = '';
    const events = await readSse(`${t.url}/events`, {
      headers: { 'x-api-key': key },
      onOpen: async () => {
        sid = (await (await fetch(`${t.url}/sandboxes`, json({ templateID: 'base' }, key))).json() as { sandboxID: string }).sandboxID;
        await fetch(`${t.url}/sandboxes/${sid}/pause`, json({}, key));
        await fetch(`${t.url}/sandboxes/${sid}`, { method: 'DELETE', headers: { 'x-api-key': key } });
      },
      until: (es) => es.some((e) => e.event === 'sandbox.destroyed'),
    });
    const mine = events.map((e) => JSON.parse(e.data) as { type: string; sandboxID: string; keyId: string | null; reason: string; id: number }).filter((e) => e.sandboxID === sid);
    assert.deepEqual(mine.filter((e) => e.type !== 'sandbox.state').map((e) => e.type), ['sandbox.created', 'sandbox.paused', 'sandbox.destroyed']);
    assert.ok(mine.every((e, i) => i === 0 || e.id > mine[i - 1]!.id), 'in order');
    assert.ok(mine.every((e) => e.keyId === keyId), 'each names the API key that caused it');
    assert.equal(mine.at(-1)!.reason, 'destroyed by request');
    assert.equal(mine[0]!.reason, 'POST /sandboxes');
    // Resume after an id: the backlog.
    const replay = await readSse(`${t.url}/events?since=${mine[0]!.id}`, { headers: { 'x-api-key': key }, until: (es) => es.some((e) => e.event === 'sandbox.destroyed') });
    assert.ok(replay.length >= 2 && !replay.some((e) => e.event === 'sandbox.created'));

    // Logs of the destroyed sandbox are still there (its record is).
    const logs = await (await fetch(`${t.url}/sandboxes/${sid}/logs`, { headers: { 'x-api-key': key } })).json() as { logs: { line: string }[]; entries: { source: string; line: string }[]; logEntries: { fields: { source: string } }[] };
    const lines = logs.entries.filter((e) => e.source === 'hearth').map((e) => e.line);
    assert.ok(lines.some((l) => /^creating → running: POST \/sandboxes \(API key k/.test(l)), lines.join('\n'));
    assert.ok(lines.some((l) => /^create \(boot\) ok in \d+ ms: .*agent \d+ ms/.test(l)), 'step timings');
    assert.ok(lines.some((l) => /destroying → destroyed: destroyed by request/.test(l)));
    assert.equal(logs.logs.length, logs.entries.length);
    assert.equal(logs.logEntries[0]!.fields.source, 'hearth');
    assert.ok(!JSON.stringify(logs).includes(key), 'no key in logs');
    // follow on an ended sandbox: the backlog, then end.
    const followed = await readSse(`${t.url}/sandboxes/${sid}/logs?follow=true&source=hearth`, { headers: { 'x-api-key': key }, until: (es) => es.some((e) => e.event === 'end') });
    assert.ok(followed.length >= 3 && followed.at(-1)!.event === 'end');
    assert.equal((await fetch(`${t.url}/sandboxes/nope/logs`, { headers: { 'x-api-key': key } })).status, 404);
    assert.equal((await fetch(`${t.url}/sandboxes/${sid}/logs?source=evil`, { headers: { 'x-api-key': key } })).status, 400);
    // Live follow: a running sandbox's new lifecycle lines arrive, and the stream ends when it is destroyed.
    const sid2 = (await (await fetch(`${t.url}/sandboxes`, json({ templateID: 'base' }, key))).json() as { sandboxID: string }).sandboxID;
    const live = await readSse(`${t.url}/sandboxes/${sid2}/logs?follow=1`, {
      headers: { 'x-api-key': key },
      onOpen: async () => { await fetch(`${t.url}/sandboxes/${sid2}`, { method: 'DELETE', headers: { 'x-api-key': key } }); },
      until: (es) => es.some((e) => e.event === 'end'),
    });
    assert.ok(live.some((e) => e.data.includes('destroying → destroyed')), live.map((e) => e.data).join('\n'));
  } finally { await t.done(); }
});

test('logs of sandboxes whose record is gone are swept', async () => {
  const t = await setup();
  try {
    t.obs.logs.append('gone1', [entry('x')]);
    const sid = (await (await fetch(`${t.url}/sandboxes`, json({ templateID: 'base' }))).json() as { sandboxID: string }).sandboxID;
    assert.deepEqual(t.obs.sweep(), ['gone1']);
    assert.ok(t.obs.logs.ids().includes(sid));
  } finally { await t.done(); }
});

test('hearthd\'s log file: copy-truncate rotation past its size keeps N old files; writers with O_APPEND go on at the start', async () => {
  const { rotateLogFile } = await import('../../src/observability/log-rotate.js');
  const { openSync, writeSync, closeSync, readFileSync } = await import('node:fs');
  const dir = tmp();
  try {
    const file = join(dir, 'hearthd.log');
    const fd = openSync(file, 'a');
    for (let round = 0; round < 5; round++) {
      writeSync(fd, `round ${round} ${'z'.repeat(2000)}\n`);
      assert.equal(rotateLogFile(file, 1000, 2), true);
    }
    writeSync(fd, 'after\n');
    closeSync(fd);
    assert.equal(readFileSync(file, 'utf8'), 'after\n', 'the writer\'s next line starts the emptied file');
    assert.deepEqual(readdirSync(dir).sort(), ['hearthd.log', 'hearthd.log.1', 'hearthd.log.2']);
    assert.match(readFileSync(`${file}.1`, 'utf8'), /^round 4 /);
    assert.equal(rotateLogFile(file, 1000, 2), false, 'small files stay');
  } finally { rmSync(dir, { recursive: true, force: true }); }
});

test('docs/observability.md lists every metric /metrics exposes', async () => {
  const { readFileSync } = await import('node:fs');
  const { HearthMetrics } = await import('../../src/observability/prometheus.js');
  const m = new HearthMetrics({ version: 'x' }, {
    countByState: () => ({}), committed: () => ({ memoryMib: 0, vcpus: 0 }), capacityMemoryMib: 1,
    host: () => ({ cpus: 1, memoryTotalBytes: 1, memoryAvailableBytes: 1, dataDirTotalBytes: 1, dataDirFreeBytes: 1 }),
    vmms: () => ({ coresInUse: 0, residentBytes: 0, count: 0 }), reconcile: () => null, streams: () => ({ eventSubscribers: 0, logFollowers: 0 }),
  });
  const names = parseProm(await m.text()).map((f) => f.name).filter((n) => n.startsWith('hearth_'));
  assert.ok(names.length >= 30, names.join(' '));
  const doc = readFileSync(join(import.meta.dirname, '../../docs/observability.md'), 'utf8');
  const missing = names.filter((n) => !doc.includes(`| \`${n}\` |`));
  assert.deepEqual(missing, [], 'each metric has a row in the table');
});
