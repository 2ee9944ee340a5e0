/**
 * `dmsetup remove` retry policy (docs/ARCHITECTURE.md, "Retries"): retried with bounded
 * exponential backoff only on "Device or resource busy"; anything else at
 * once; an abort stops the backoff at once. Plus the table/status parsers.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AbortedError } from '../../src/core/errors.js';
import {
  DEFAULT_REMOVE_RETRY, Dmsetup, DmsetupError, backoffDelay, classifyDmError, parseSnapshotStatus, parseSnapshotTable, snapshotTable,
} from '../../src/storage/dm/dmsetup.js';
import { DM_MESSAGES, FakeBlockHost } from '../../src/storage/dm/testing.js';

const sig = (): AbortSignal => new AbortController().signal;

/** A fake host with one dm device `hearth-x` (removable unless a fault says otherwise). */
function hostWithDevice(): FakeBlockHost {
  const h = new FakeBlockHost();
  h.dm.set('hearth-x', { name: 'hearth-x', sectors: 8, origin: '/dev/loop0', cow: '/dev/loop1', persistent: 'P', chunk: 8, openCount: 0 });
  return h;
}

test('dm retry: the default policy is 10 attempts, 50 ms doubling to a 1.6 s cap', () => {
  const waits = Array.from({ length: DEFAULT_REMOVE_RETRY.maxAttempts - 1 }, (_, i) => backoffDelay(DEFAULT_REMOVE_RETRY, i + 1));
  assert.deepEqual(waits, [50, 100, 200, 400, 800, 1600, 1600, 1600, 1600]);
});

test('dm retry: busy 3 times, then removed: 4 runs, with growing waits between them', async () => {
  const h = hostWithDevice();
  h.fail('dmsetup remove hearth-x', DM_MESSAGES.busy('hearth-x'), { times: 3 });
  const times: number[] = [];
  h.onCommand = () => times.push(performance.now());
  const dm = new Dmsetup(h.run, { maxAttempts: 5, initialDelayMs: 10, maxDelayMs: 1000 });
  const r = await dm.remove('hearth-x', sig());
  assert.deepEqual(r, { attempts: 4, missing: false });
  assert.equal(h.count('dmsetup remove hearth-x'), 4);
  assert.equal(h.dm.has('hearth-x'), false);
  const gaps = times.slice(1).map((t, i) => t - times[i]!);
  assert.ok(gaps[0]! >= 9 && gaps[1]! >= 19 && gaps[2]! >= 39, `waits 10/20/40 ms, got ${gaps.map((g) => g.toFixed(1)).join('/')}`);
});

test('dm retry: still busy after the bound: an error after exactly maxAttempts runs', async () => {
  const h = hostWithDevice();
  h.fail('dmsetup remove hearth-x', DM_MESSAGES.busy('hearth-x'), { times: 100 });
  const dm = new Dmsetup(h.run, { maxAttempts: 4, initialDelayMs: 1, maxDelayMs: 2 });
  const err = await dm.remove('hearth-x', sig()).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof DmsetupError);
  assert.equal(err.kind, 'busy');
  assert.equal(err.attempts, 4);
  assert.match(err.message, /still busy after 4 attempts/);
  assert.equal(err.code, 'host_failure');
  assert.equal(h.count('dmsetup remove'), 4);
  assert.equal(h.dm.has('hearth-x'), true);
});

test('dm retry: a missing device is an error at once (one run), or success with missingOk', async () => {
  const h = new FakeBlockHost();
  const dm = new Dmsetup(h.run, { maxAttempts: 5, initialDelayMs: 1 });
  const err = await dm.remove('hearth-gone', sig()).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof DmsetupError);
  assert.equal(err.kind, 'missing');
  assert.match(err.message, /No such device or address/);
  assert.equal(h.count('dmsetup remove'), 1);
  assert.deepEqual(await dm.remove('hearth-gone', sig(), { missingOk: true }), { attempts: 1, missing: true });
  assert.equal(h.count('dmsetup remove'), 2);
});

test('dm retry: permission denied is an error at once (one run)', async () => {
  const h = hostWithDevice();
  h.fail('dmsetup remove', DM_MESSAGES.permission(), { times: 10 });
  const dm = new Dmsetup(h.run, { maxAttempts: 5, initialDelayMs: 1 });
  const err = await dm.remove('hearth-x', sig(), { missingOk: true }).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof DmsetupError);
  assert.equal(err.kind, 'other');
  assert.match(err.message, /Permission denied/);
  assert.equal(h.count('dmsetup remove'), 1);
});

test('dm retry: busy then a different error stops the retries there', async () => {
  const h = hostWithDevice();
  h.fail('dmsetup remove', DM_MESSAGES.busy('hearth-x'), { times: 2 });
  h.fail('dmsetup remove', DM_MESSAGES.permission(), { times: 1 });
  const dm = new Dmsetup(h.run, { maxAttempts: 10, initialDelayMs: 1 });
  await assert.rejects(dm.remove('hearth-x', sig()), (e: unknown) => e instanceof DmsetupError && e.kind === 'other' && e.attempts === 3);
  assert.equal(h.count('dmsetup remove'), 3);
});

test('dm retry: aborting in the middle of a backoff wait stops at once', async () => {
  const h = hostWithDevice();
  h.fail('dmsetup remove', DM_MESSAGES.busy('hearth-x'), { times: 100 });
  const dm = new Dmsetup(h.run, { maxAttempts: 10, initialDelayMs: 5_000, maxDelayMs: 5_000 });
  const ac = new AbortController();
  const t0 = performance.now();
  setTimeout(() => ac.abort(new Error('request cancelled')), 30);
  await assert.rejects(dm.remove('hearth-x', ac.signal), AbortedError);
  const took = performance.now() - t0;
  assert.ok(took < 1_000, `stopped after ${took.toFixed(0)} ms, not after the 5 s wait`);
  assert.equal(h.count('dmsetup remove'), 1);
});

test('dm retry: an already aborted signal runs nothing', async () => {
  const h = hostWithDevice();
  const dm = new Dmsetup(h.run);
  await assert.rejects(dm.remove('hearth-x', AbortSignal.abort()), AbortedError);
  assert.equal(h.calls.length, 0);
});

test('dm errors: real dmsetup messages are classified', () => {
  assert.equal(classifyDmError(DM_MESSAGES.busy('hearth-a')), 'busy');
  assert.equal(classifyDmError(DM_MESSAGES.missing('hearth-a')), 'missing');
  assert.equal(classifyDmError('Device does not exist.\nCommand failed.\n'), 'missing');
  assert.equal(classifyDmError('Device hearth-a not found\nCommand failed.\n'), 'missing');
  assert.equal(classifyDmError(DM_MESSAGES.permission()), 'other');
  assert.equal(classifyDmError('/dev/mapper/control: open failed: No such device\nFailure to communicate with kernel device-mapper driver.\n'), 'no-driver');
});

test('dm tables: built, parsed back from `dmsetup table`, status parsed', () => {
  assert.equal(snapshotTable({ sectors: 2097152, origin: '/dev/loop3', cow: '/dev/loop7', chunkSectors: 8 }), '0 2097152 snapshot /dev/loop3 /dev/loop7 P 8');
  assert.throws(() => snapshotTable({ sectors: 0, origin: 'a', cow: 'b', chunkSectors: 8 }));
  assert.deepEqual(parseSnapshotTable('0 2097152 snapshot 7:3 7:7 P 8\n'), { sectors: 2097152, origin: '7:3', cow: '7:7', persistent: true, chunkSectors: 8 });
  assert.equal(parseSnapshotTable('0 2097152 linear 7:3 0'), null);
  assert.deepEqual(parseSnapshotStatus('0 2097152 snapshot 4096/2113560 32'), { state: 'valid', allocatedSectors: 4096, totalSectors: 2113560, metadataSectors: 32 });
  assert.equal(parseSnapshotStatus('0 2097152 snapshot Invalid').state, 'invalid');
  assert.equal(parseSnapshotStatus('0 2097152 snapshot Overflow').state, 'overflow');
});
