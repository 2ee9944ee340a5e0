/**
 * Real userfaultfd tests: the addon's testing.FakeVmm plays Firecracker's side
 * (anonymous memory registered with a uffd, handshake sent over the socket),
 * and UffdPageServer serves it from a memory file.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { UffdPageServer, type PageServerExit } from '../../src/memory/uffd/page-server.js';
import { loadUffdAddon, uffdAddonAvailable, type NativeFakeVmm } from '../../src/memory/uffd/native.js';
import { readWorkingSet } from '../../src/memory/uffd/working-set.js';
import { ChildVmm, makeMemoryFile, reserveHugePages, tempDir } from '../fixtures/uffd/helpers.js';

const MiB = 1024 * 1024;
const skip = uffdAddonAvailable() ? false : 'the hearth_uffd addon is not built (npm run build:native)';

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, rej) => { t = setTimeout(() => rej(new Error(`timed out: ${what}`)), ms); })]).finally(() => clearTimeout(t));
}

/**
 * The page server updates its counters right after the ioctl that already woke
 * the faulting thread, so a test that reads stats right after a synchronous
 * guest read may be a few microseconds early: wait for them to settle.
 */
async function settled<T>(read: () => T, ok: (v: T) => boolean, ms = 2000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = read();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('uffd page server', { skip }, () => {
  let dir: string;
  let cleanupDir: () => Promise<void>;
  const servers: UffdPageServer[] = [];
  const vms: NativeFakeVmm[] = [];
  const children: ChildVmm[] = [];

  before(async () => { ({ dir, cleanup: cleanupDir } = await tempDir()); });
  after(async () => {
    for (const c of children) await c.kill();
    for (const v of vms) v.close();
    for (const s of servers) await s.stop();
    await cleanupDir();
  });

  async function serve(name: string, memoryPath: string, opts: Partial<Parameters<typeof UffdPageServer.listen>[0]> = {}) {
    const s = await UffdPageServer.listen({ socketPath: join(dir, `${name}.sock`), memoryPath, acceptTimeoutMs: 5000, ...opts });
    servers.push(s);
    return s;
  }
  function fakeVmm(socketPath: string, regionSizes: number[], pageSize = 4096): NativeFakeVmm {
    // keepUffd: false — if the server died, a fault in this process completes instead of hanging the test run.
    const vm = new (loadUffdAddon().testing.FakeVmm)({ socketPath, regionSizes, pageSize, keepUffd: false });
    vms.push(vm);
    return vm;
  }

  test('serves every page of two regions from the memory file (4 threads)', async () => {
    const mem = join(dir, 'all.mem');
    const expected = await makeMemoryFile(mem, 16 * MiB);
    const s = await serve('all', mem);
    const vm = fakeVmm(s.socketPath, [12 * MiB, 4 * MiB]);
    const hs = await withTimeout(s.ready, 5000, 'handshake');
    assert.equal(hs.regions.length, 2);
    assert.equal(hs.pageSize, 4096);
    await assert.rejects(stat(s.socketPath), /ENOENT/, 'the socket is unlinked once Firecracker connected');
    const r = await withTimeout(vm.touch({ threads: 4, copy: true, order: 'random' }), 20_000, 'touch');
    assert.ok(r.data!.equals(expected), 'guest memory equals the memory file');
    const st = await settled(() => s.stats(), (x) => x.copiedPages === 4096);
    assert.equal(st.state, 'serving');
    assert.equal(st.copiedPages, 4096);
    assert.equal(st.zeroPages, 0);
    assert.equal(st.bytesCopied, 16 * MiB);
    assert.ok(st.faults >= 4096 && st.faults === st.copiedPages + st.eexist, `faults ${st.faults} = copies + eexist`);
    assert.equal(st.latency.count, st.faults);
    assert.equal(st.peerPid, process.pid);
    vm.disconnect();
    const ex = await withTimeout(s.exit, 5000, 'exit');
    assert.equal(ex.reason, 'peer-closed');
  });

  test('holes of a sparse memory file are served as zero pages', async () => {
    const mem = join(dir, 'sparse.mem');
    const holes = new Set<number>();
    for (let p = 0; p < 1024; p++) if (p % 3 === 0 || (p >= 500 && p < 700)) holes.add(p);
    const expected = await makeMemoryFile(mem, 4 * MiB, { holes });
    const s = await serve('sparse', mem);
    const vm = fakeVmm(s.socketPath, [4 * MiB]);
    await s.ready;
    const r = await vm.touch({ threads: 2, copy: true });
    assert.ok(r.data!.equals(expected));
    const st = await settled(() => s.stats(), (x) => x.zeroPages + x.copiedPages === 1024);
    assert.equal(st.zeroPages, holes.size);
    assert.equal(st.copiedPages, 1024 - holes.size);
  });

  test('after a balloon remove event, faults get zero pages, never file contents', async () => {
    const mem = join(dir, 'remove.mem');
    const expected = await makeMemoryFile(mem, 4 * MiB);
    const s = await serve('remove', mem);
    const vm = fakeVmm(s.socketPath, [4 * MiB]);
    await s.ready;
    assert.ok(vm.read(0, 16 * 4096).equals(expected.subarray(0, 16 * 4096)));
    vm.dontneed(4 * 4096, 8 * 4096); // pages 4..11, some populated (4..15 were), none of 16..
    vm.dontneed(100 * 4096, 4 * 4096); // never populated: must not come from the file either
    const after = vm.read(0, 128 * 4096);
    assert.ok(after.subarray(0, 4 * 4096).equals(expected.subarray(0, 4 * 4096)), 'untouched pages keep their data');
    assert.ok(after.subarray(4 * 4096, 12 * 4096).equals(Buffer.alloc(8 * 4096)), 'removed pages read as zero');
    assert.ok(after.subarray(12 * 4096, 100 * 4096).equals(expected.subarray(12 * 4096, 100 * 4096)));
    assert.ok(after.subarray(100 * 4096, 104 * 4096).equals(Buffer.alloc(4 * 4096)), 'removed before first touch: zero');
    // A guest write after the remove is kept, and a second remove zeroes again.
    vm.write(5 * 4096, Buffer.from('written by the guest'));
    assert.equal(vm.read(5 * 4096, 20).toString(), 'written by the guest');
    vm.dontneed(5 * 4096, 4096);
    assert.ok(vm.read(5 * 4096, 4096).equals(Buffer.alloc(4096)));
    const st = await settled(() => s.stats(), (x) => x.zeroPages >= 12);
    assert.equal(st.removeEvents, 3);
    assert.equal(st.removedBytes, 13 * 4096);
    assert.ok(st.zeroPages >= 12, `zero pages served: ${st.zeroPages}`);
  });

  test('2 MiB hugetlb pages', async (t) => {
    const res = await reserveHugePages(4);
    if (!res.ok) { t.skip(`hugetlbfs 2 MiB pages unavailable: ${res.reason}`); return; }
    try {
      const mem = join(dir, 'huge.mem');
      const holes = [1]; // the second 2 MiB page is a hole: served by copying zeroes (no UFFDIO_ZEROPAGE on hugetlbfs)
      const expected = await makeMemoryFile(mem, 8 * MiB, { pageSize: 2 * MiB, holes });
      const s = await serve('huge', mem);
      let vm: NativeFakeVmm;
      try {
        vm = fakeVmm(s.socketPath, [4 * MiB, 4 * MiB], 2 * MiB);
      } catch (err) {
        t.skip(`cannot map hugetlb memory here: ${(err as Error).message}`);
        return;
      }
      const hs = await s.ready;
      assert.equal(hs.pageSize, 2 * MiB);
      const r = await withTimeout(vm.touch({ threads: 2, copy: true }), 10_000, 'touch hugetlb');
      assert.equal(s.stats().error, undefined);
      assert.ok(r.data!.equals(expected));
      let st = await settled(() => s.stats(), (x) => x.copiedPages + x.zeroPages === 4);
      assert.equal(st.copiedPages, 3);
      assert.equal(st.zeroPages, 1);
      vm.dontneed(2 * MiB * 2, 2 * MiB);
      assert.ok(vm.read(4 * MiB, 2 * MiB).equals(Buffer.alloc(2 * MiB)));
      st = await settled(() => s.stats(), (x) => x.zeroPages === 2);
      assert.equal(st.removeEvents, 1);
      assert.equal(st.zeroPages, 2);
      vm.close();
      await s.stop();
    } finally {
      res.restore();
    }
  });

  test('the working set recorded on one restore is prefetched on the next', async () => {
    const mem = join(dir, 'ws.mem');
    const expected = await makeMemoryFile(mem, 8 * MiB);
    const wsPath = join(dir, 'ws.json');
    const hot = [3, 4, 5, 6, 100, 101, 1500, 2000, 7, 8];
    // First restore: record.
    let s = await serve('ws1', mem, { workingSetPath: wsPath });
    let vm = fakeVmm(s.socketPath, [8 * MiB]);
    await s.ready;
    for (const p of hot) assert.equal(vm.read(p * 4096, 4).readUInt32LE(0), p + 1);
    const ws = await s.stopRecording();
    assert.deepEqual([...ws!.pages], hot);
    vm.read(50 * 4096, 4); // after "ready": not recorded
    const saved = await readWorkingSet(wsPath);
    assert.deepEqual([...saved!.pages], hot);
    assert.equal(saved!.restores, 1);
    vm.close();
    await s.stop();

    // Second restore: those pages arrive before the guest asks.
    s = await serve('ws2', mem, { workingSetPath: wsPath });
    const prefetched = new Promise<{ pages: number; ms: number }>((r) => s.once('prefetched', r));
    vm = fakeVmm(s.socketPath, [8 * MiB]);
    await s.ready;
    const pf = await withTimeout(prefetched, 5000, 'prefetch');
    assert.equal(pf.pages, hot.length);
    const before = s.stats().faults;
    for (const p of hot) assert.ok(vm.read(p * 4096, 4096).equals(expected.subarray(p * 4096, (p + 1) * 4096)));
    assert.equal(s.stats().faults, before, 'prefetched pages do not fault');
    vm.read(9 * 4096, 4); // a new page joins the working set
    const ws2 = await s.stopRecording();
    assert.deepEqual([...ws2!.pages], [...hot, 9]);
    assert.equal((await readWorkingSet(wsPath))!.restores, 2);
    vm.close();
  });

  test("background population, then detach: the VM no longer needs the server", async () => {
    const mem = join(dir, 'pop.mem');
    const expected = await makeMemoryFile(mem, 4 * MiB, { holes: [7, 8, 9] });
    const s = await serve('pop', mem, { populate: 'background', detachWhenPopulated: true });
    const populated = new Promise<{ pages: number }>((r) => s.once('populated', r));
    const vm = fakeVmm(s.socketPath, [2 * MiB, 2 * MiB]);
    await s.ready;
    const ex = await withTimeout(s.exit, 10_000, 'detach');
    assert.equal(ex.reason, 'detached');
    assert.equal((await populated).pages, 1024);
    await s.stop();
    // Served by nobody now: everything is resident, and madvise no longer blocks on a handler.
    const r = await vm.touch({ copy: true });
    assert.ok(r.data!.equals(expected));
    vm.dontneed(0, 4096);
    assert.ok(vm.read(0, 4096).equals(Buffer.alloc(4096)));
  });

  test('a crashed fault loop is reported; the stuck VM must be killed by its owner', async () => {
    const mem = join(dir, 'crash.mem');
    await makeMemoryFile(mem, 4 * MiB);
    const s = await serve('crash', mem);
    const failed = new Promise<Error>((r) => s.once('failed', r));
    const child = await ChildVmm.start({ socketPath: s.socketPath, regionSizes: [4 * MiB] });
    children.push(child);
    await s.ready;
    assert.equal(s.peerPid, child.child.pid, 'SO_PEERCRED names the VMM process');
    assert.match(await child.digest(0, 4096), /^[0-9a-f]{64}$/);
    s.debugCrash();
    const err = await withTimeout(failed, 5000, 'failed event');
    assert.match(err.message, /injected crash/);
    const ex: PageServerExit = await s.exit;
    assert.equal(ex.reason, 'error');
    assert.equal(s.stats().state, 'exited');
    // The VMM now hangs on its next fault (docs/uffd.md, "When the handler dies"): nothing answers.
    child.send({ op: 'digest', offset: 8192, length: 4096 });
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(child.child.exitCode, null, 'the VMM is stuck, not exited');
    await child.kill(); // what FirecrackerVmm does on 'failed'
    assert.equal(child.child.signalCode, 'SIGKILL');
  });

  test('a VMM in another process is served the same bytes', async () => {
    const mem = join(dir, 'xproc.mem');
    const expected = await makeMemoryFile(mem, 4 * MiB, { holes: [2, 3] });
    const s = await serve('xproc', mem);
    const child = await ChildVmm.start({ socketPath: s.socketPath, regionSizes: [1 * MiB, 3 * MiB] });
    children.push(child);
    await s.ready;
    assert.equal(await child.digest(0, 4 * MiB), createHash('sha256').update(expected).digest('hex'));
    await child.kill();
    assert.equal((await withTimeout(s.exit, 5000, 'exit')).reason, 'peer-closed');
  });

  test('handshake failures: no connection, no fd, wrong memory size', async () => {
    const mem = join(dir, 'hs.mem');
    await makeMemoryFile(mem, 1 * MiB);
    // Nobody connects.
    const s1 = await serve('hs1', mem, { acceptTimeoutMs: 200 });
    const failed = new Promise<Error>((r) => s1.once('failed', r));
    await assert.rejects(s1.ready, /handshake failed.*ETIMEDOUT/);
    assert.equal((await s1.exit).reason, 'handshake-failed');
    assert.match((await failed).message, /ETIMEDOUT/);
    await assert.rejects(stat(s1.socketPath), /ENOENT/);
    // The region list arrives without the uffd.
    const s2 = await serve('hs2', mem, { acceptTimeoutMs: 2000 });
    const vm2 = new (loadUffdAddon().testing.FakeVmm)({ socketPath: s2.socketPath, regionSizes: [1 * MiB], sendFd: false, keepUffd: false });
    vms.push(vm2);
    await assert.rejects(s2.ready, /without a userfaultfd/);
    // Regions larger than the memory file: a snapshot mismatch.
    const s3 = await serve('hs3', mem);
    const vm3 = fakeVmm(s3.socketPath, [2 * MiB]);
    await assert.rejects(s3.ready, /wrong snapshot/);
    vm3.close();
    // stop() before anyone connected.
    const s4 = await serve('hs4', mem);
    await s4.stop();
    assert.equal((await s4.exit).reason, 'stopped');
    await assert.rejects(s4.ready, /stopped before/);
  });

  test('stop() while serving joins the thread and reports "stopped"', async () => {
    const mem = join(dir, 'stop.mem');
    await makeMemoryFile(mem, 1 * MiB);
    const s = await serve('stop', mem);
    const vm = fakeVmm(s.socketPath, [1 * MiB]);
    await s.ready;
    vm.read(0, 10);
    const ex = await withTimeout(s.stop(), 5000, 'stop');
    assert.equal(ex.reason, 'stopped');
    assert.equal(s.stats().state, 'exited');
    vm.close();
    await readFile(mem); // the file is untouched and readable
  });
});
