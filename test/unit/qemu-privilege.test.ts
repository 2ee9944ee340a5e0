import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/core/errors.js';
import { DEFAULT_ID_RANGE, lookupUser, resolvePrivilege, VmIdAllocator } from '../../src/vmm/qemu/privilege.js';

describe('QEMU privilege options', () => {
  it('defaults to a uid/gid per VM, chroot and seccomp when hearthd is root', async () => {
    const p = await resolvePrivilege({}, 0);
    assert.equal(p.mode, 'per-vm');
    assert.deepEqual(p.idRange, DEFAULT_ID_RANGE);
    assert.equal(p.seccomp, true);
    assert.equal(p.chroot, true);
    assert.match(p.reason, /uid\/gid of its own per VM \(1900000000\.\.1900065535\), chrooted/);
  });

  it('keeps the daemon\'s identity when not root, or when asked to, and says why', async () => {
    const p = await resolvePrivilege({}, 1000);
    assert.equal(p.mode, 'none');
    assert.equal(p.chroot, false);
    assert.match(p.reason, /not root \(euid 1000\)/);
    assert.equal((await resolvePrivilege({ user: 'root' }, 0)).mode, 'none');
    assert.equal((await resolvePrivilege({ user: 'none', seccomp: false }, 0)).seccomp, false);
    assert.equal((await resolvePrivilege({ user: '0:0' }, 0)).mode, 'none');
  });

  it('takes a numeric uid:gid or a user name, and falls back to per-VM ids for a missing user', async () => {
    const n = await resolvePrivilege({ user: '5000:5001', chroot: false }, 0);
    assert.deepEqual([n.mode, n.uid, n.gid, n.chroot], ['user', 5000, 5001, false]);
    const nobody = await lookupUser('nobody');
    if (nobody) {
      const u = await resolvePrivilege({ user: 'nobody' }, 0);
      assert.deepEqual([u.mode, u.uid, u.gid], ['user', nobody.uid, nobody.gid]);
    }
    const missing = await resolvePrivilege({ user: 'hearth-no-such-user' }, 0);
    assert.equal(missing.mode, 'per-vm');
    assert.match(missing.reason, /user 'hearth-no-such-user' does not exist/);
    assert.equal(await lookupUser('bad name;'), undefined);
  });

  it('rejects an id range that reaches into ordinary or signed-overflow ids', async () => {
    await assert.rejects(resolvePrivilege({ idRange: { base: 1000, count: 10 } }, 0), ConfigError);
    await assert.rejects(resolvePrivilege({ idRange: { base: 0x7fffff00, count: 0x1000 } }, 0), ConfigError);
  });

  it('hands out distinct ids, stable per sandbox id, and re-uses released ones', async () => {
    const a = new VmIdAllocator({ base: 3_000_000, count: 4 });
    const ids = await Promise.all(['x', 'y', 'z', 'w'].map((s) => a.acquire(s)));
    assert.equal(new Set(ids.map((i) => i.uid)).size, 4);
    for (const i of ids) {
      assert.equal(i.uid, i.gid);
      assert.ok(i.uid >= 3_000_000 && i.uid < 3_000_004);
    }
    await assert.rejects(a.acquire('v'), /no free uid/);
    const xUid = ids[0]!.uid;
    ids[0]!.release();
    ids[0]!.release(); // idempotent
    assert.equal((await a.acquire('anything')).uid, xUid);
    const b = new VmIdAllocator({ base: 3_000_000, count: 65_536 });
    const first = await b.acquire('sb-1');
    first.release();
    assert.equal((await b.acquire('sb-1')).uid, first.uid, 'the same sandbox id starts at the same id');
  });
});
