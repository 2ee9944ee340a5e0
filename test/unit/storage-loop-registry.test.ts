/**
 * LoopRegistry semantics through the fake block host (refcounts, shared
 * in-flight attach, cancellation, adoption, detach guards). The same registry
 * against real loop devices: test/integration/storage-loop.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AbortedError, HostFailureError } from '../../src/core/errors.js';
import { LoopRegistry } from '../../src/storage/loop/registry.js';
import { FakeBlockHost } from '../../src/storage/dm/testing.js';
import type { CommandRunner } from '../../src/util/exec.js';

interface Lab { dir: string; img: (name: string) => string; host: FakeBlockHost; sys: string; done(): void }

function lab(): Lab {
  const dir = mkdtempSync(join(tmpdir(), 'hearth-loopreg-'));
  const host = new FakeBlockHost();
  return {
    dir, host, sys: join(dir, 'sys'),
    img(name) { const p = join(dir, name); writeFileSync(p, Buffer.alloc(4096)); return p; },
    done() { rmSync(dir, { recursive: true, force: true }); },
  };
}

/** A runner that holds commands starting with `prefix` until `open()`. */
function gated(run: CommandRunner, prefix: string): { run: CommandRunner; open(): void; waiting(): number } {
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  let waiting = 0;
  return {
    run: async (cmd, args, opts) => {
      if ([cmd, ...args].join(' ').startsWith(prefix)) { waiting++; await gate; }
      return run(cmd, args, opts);
    },
    open: () => release(),
    waiting: () => waiting,
  };
}

const sig = (): AbortSignal => new AbortController().signal;

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
  assert.ok(cond(), 'condition not reached');
}

test('loop registry: concurrent acquires of one image share one read-only attach; the last release detaches', async () => {
  const l = lab();
  try {
    const reg = new LoopRegistry({ run: l.host.run, sysfsRoot: l.sys });
    const img = l.img('base.ext4');
    const refs = await Promise.all([reg.acquire(img, sig()), reg.acquire(img, sig()), reg.acquire(img, sig())]);
    assert.equal(l.host.count('losetup --find --show --read-only'), 1);
    assert.deepEqual(new Set(refs.map((r) => r.device)), new Set(['/dev/loop0']));
    assert.equal(l.host.loops.get('/dev/loop0')?.readOnly, true);
    assert.deepEqual(reg.list(), [{ imagePath: img, device: '/dev/loop0', refs: 3, adopted: false }]);
    await refs[0]!.release();
    await refs[0]!.release(); // idempotent per ref
    await refs[1]!.release();
    assert.equal(l.host.count('losetup -d'), 0);
    assert.equal(reg.list()[0]?.refs, 1);
    await refs[2]!.release();
    assert.equal(l.host.count('losetup -d'), 1);
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(reg.list(), []);
    // A later acquire attaches again.
    const again = await reg.acquire(img, sig());
    assert.equal(l.host.count('losetup --find --show --read-only'), 2);
    await again.release();
  } finally { l.done(); }
});

test('loop registry: different images get different devices', async () => {
  const l = lab();
  try {
    const reg = new LoopRegistry({ run: l.host.run, sysfsRoot: l.sys });
    const [a, b] = await Promise.all([reg.acquire(l.img('a'), sig()), reg.acquire(l.img('b'), sig())]);
    assert.notEqual(a.device, b.device);
    await a.release(); await b.release();
    assert.equal(l.host.loops.size, 0);
  } finally { l.done(); }
});

test('loop registry: a failed attach fails every waiter, and the next acquire tries again', async () => {
  const l = lab();
  try {
    const g = gated(l.host.run, 'losetup --find');
    const reg = new LoopRegistry({ run: g.run, sysfsRoot: l.sys });
    const img = l.img('base');
    l.host.fail('losetup --find', 'losetup: cannot find an unused loop device\n');
    const pending = [reg.acquire(img, sig()), reg.acquire(img, sig())];
    await until(() => g.waiting() === 1);
    await new Promise((r) => setTimeout(r, 10));
    g.open();
    const results = await Promise.allSettled(pending);
    assert.deepEqual(results.map((r) => r.status), ['rejected', 'rejected']);
    assert.match(String((results[0] as PromiseRejectedResult).reason), /unused loop device/);
    assert.equal(l.host.count('losetup --find'), 1);
    assert.deepEqual(reg.list(), []);
    const ok = await reg.acquire(img, sig());
    assert.equal(ok.device, '/dev/loop0');
    await ok.release();
  } finally { l.done(); }
});

test('loop registry: a missing image is an error before any losetup', async () => {
  const l = lab();
  try {
    const reg = new LoopRegistry({ run: l.host.run, sysfsRoot: l.sys });
    await assert.rejects(reg.acquire(join(l.dir, 'nope'), sig()), HostFailureError);
    assert.equal(l.host.calls.length, 0);
  } finally { l.done(); }
});

test('loop registry: one waiter cancelled during a shared attach does not disturb the others', async () => {
  const l = lab();
  try {
    const g = gated(l.host.run, 'losetup --find');
    const reg = new LoopRegistry({ run: g.run, sysfsRoot: l.sys });
    const img = l.img('base');
    const ac = new AbortController();
    const first = reg.acquire(img, sig());
    const second = reg.acquire(img, ac.signal);
    await until(() => reg.list()[0]?.refs === 2);
    ac.abort();
    await assert.rejects(second, AbortedError);
    g.open();
    const ref = await first;
    assert.equal(reg.list()[0]?.refs, 1);
    assert.equal(g.waiting(), 1, 'one attach only');
    await ref.release();
    assert.equal(l.host.loops.size, 0);
  } finally { l.done(); }
});

test('loop registry: if every waiter is cancelled, the device attached meanwhile is detached (no leak)', async () => {
  const l = lab();
  try {
    const g = gated(l.host.run, 'losetup --find');
    const reg = new LoopRegistry({ run: g.run, sysfsRoot: l.sys });
    const ac = new AbortController();
    const p = reg.acquire(l.img('base'), ac.signal);
    await until(() => g.waiting() === 1);
    ac.abort();
    await assert.rejects(p, AbortedError);
    g.open();
    await until(() => l.host.count('losetup -d') === 1 && reg.list().length === 0);
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(reg.list(), []);
    assert.equal(l.host.count('losetup -d'), 1);
  } finally { l.done(); }
});

test('loop registry: an acquire during the last release waits for the detach, then attaches afresh', async () => {
  const l = lab();
  try {
    const g = gated(l.host.run, 'losetup -d');
    const reg = new LoopRegistry({ run: g.run, sysfsRoot: l.sys });
    const img = l.img('base');
    const a = await reg.acquire(img, sig());
    const releasing = a.release();
    await until(() => g.waiting() === 1);
    const b = reg.acquire(img, sig());
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(l.host.count('losetup --find'), 1, 'waits for the detach');
    g.open();
    await releasing;
    const ref = await b;
    assert.equal(l.host.count('losetup --find'), 2);
    assert.equal(l.host.loops.size, 1);
    await ref.release();
  } finally { l.done(); }
});

test('loop registry: writable attaches are private and detach only their own device', async () => {
  const l = lab();
  try {
    const reg = new LoopRegistry({ run: l.host.run, sysfsRoot: l.sys });
    const f = l.img('cow');
    const a = await reg.attachFile(f, sig());
    const b = await reg.attachFile(f, sig());
    assert.notEqual(a.device, b.device);
    assert.equal(l.host.loops.get(a.device)?.readOnly, false);
    assert.ok(l.host.calls.includes(`losetup --find --show ${f}`));
    await a.detach();
    await a.detach(); // idempotent: gone is done
    assert.equal(l.host.loops.has(a.device), false);
    // The number was reused for another file: never detach someone else's device.
    l.host.loops.get(b.device)!.file = join(l.dir, 'someone-else.img');
    await b.detach();
    assert.equal(l.host.loops.has(b.device), true);
    l.host.loops.clear();
  } finally { l.done(); }
});

test('loop registry: attachFile cancelled while losetup runs detaches what it attached', async () => {
  const l = lab();
  try {
    const g = gated(l.host.run, 'losetup --find');
    const reg = new LoopRegistry({ run: g.run, sysfsRoot: l.sys });
    const ac = new AbortController();
    const p = reg.attachFile(l.img('cow'), ac.signal);
    await until(() => g.waiting() === 1);
    ac.abort();
    g.open();
    await assert.rejects(p, AbortedError);
    assert.equal(l.host.loops.size, 0);
    assert.deepEqual(reg.listWritable(), []);
  } finally { l.done(); }
});

test('loop registry: after a restart, owned read-only devices are adopted; unclaimed ones are reaped', async () => {
  const l = lab();
  try {
    const host = l.host;
    const base = l.img('base');
    const other = l.img('other');
    const foreign = join(tmpdir(), 'not-hearth.img');
    // What the previous daemon left: base (ro), other (ro), a writable one, and someone else's.
    await host.run('losetup', ['--find', '--show', '--read-only', base]);
    await host.run('losetup', ['--find', '--show', '--read-only', other]);
    await host.run('losetup', ['--find', '--show', l.img('cow')]);
    host.loops.set('/dev/loop9', { device: '/dev/loop9', file: foreign, readOnly: true, majMin: '7:9' });
    const reg = new LoopRegistry({ run: host.run, sysfsRoot: l.sys, owns: (p) => p.startsWith(`${l.dir}/`) });
    const { adopted, duplicates } = await reg.adoptExisting(sig());
    assert.deepEqual(adopted.map((a) => a.device).sort(), ['/dev/loop0', '/dev/loop1']);
    assert.deepEqual(duplicates, []);
    const attachesBefore = host.count('losetup --find');
    const ref = await reg.acquire(base, sig());
    assert.equal(ref.device, '/dev/loop0', 'the adopted device, not a new one');
    assert.equal(host.count('losetup --find'), attachesBefore);
    assert.deepEqual(await reg.reapIdle(), ['/dev/loop1']);
    assert.ok(host.loops.has('/dev/loop0'), 'in use');
    assert.ok(host.loops.has('/dev/loop2'), 'writable loops are not the registry\'s to reap');
    assert.ok(host.loops.has('/dev/loop9'), 'not Hearth\'s');
    await ref.release();
    assert.equal(host.loops.has('/dev/loop0'), false);
    host.loops.clear();
  } finally { l.done(); }
});

test('loop registry: a device with holders (a stale dm device) is kept at refcount 0 and reaped later', async () => {
  const l = lab();
  try {
    const reg = new LoopRegistry({ run: l.host.run, sysfsRoot: l.sys });
    const ref = await reg.acquire(l.img('base'), sig());
    const holders = join(l.sys, 'block', 'loop0', 'holders');
    mkdirSync(join(holders, 'dm-0'), { recursive: true });
    await ref.release();
    assert.equal(l.host.count('losetup -d'), 0);
    assert.deepEqual(reg.list(), [{ imagePath: join(l.dir, 'base'), device: '/dev/loop0', refs: 0, adopted: false }]);
    rmSync(join(holders, 'dm-0'), { recursive: true });
    assert.deepEqual(await reg.reapIdle(), ['/dev/loop0']);
    assert.equal(l.host.loops.size, 0);
  } finally { l.done(); }
});
