import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  generateModulesDep,
  modinfoDepends,
  moduleName,
  parseModulesBuiltin,
  parseModulesDep,
  planModuleLoad,
} from '../../src/images/modules.js';
import { INITRAMFS_MODULES } from '../../src/images/initramfs.js';

/** Lines as depmod writes them for Debian's 6.1 cloud kernel (transitive deps, load-last first). */
const SAMPLE_DEP = `
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vsock.ko:
`;

const names = (plan: ReturnType<typeof planModuleLoad>) => plan.order.map((e) => moduleName(e.path));
const before = (order: string[], a: string, b: string) => {
  assert.ok(order.includes(a), `${a} is loaded`);
  assert.ok(order.includes(b), `${b} is loaded`);
  assert.ok(order.indexOf(a) < order.indexOf(b), `${a} before ${b} in ${order.join(' ')}`);
};

describe('kernel module load order', () => {
  it('normalises module names like the kernel', () => {
    assert.equal(moduleName('kernel/drivers/char/hw_random/virtio-rng.ko'), 'virtio_rng');
    assert.equal(moduleName('foo.ko.xz'), 'foo');
    assert.equal(moduleName('virtio-rng'), 'virtio_rng');
  });

  it('orders the initramfs modules with every dependency first (virtio_ring before virtio)', () => {
    const plan = planModuleLoad(parseModulesDep(SAMPLE_DEP), INITRAMFS_MODULES);
    const order = names(plan);
    assert.deepEqual(plan.missing, []);
    before(order, 'virtio_ring', 'virtio');
    before(order, 'virtio', 'virtio_mmio');
    before(order, 'virtio', 'virtio_pci');
    before(order, 'virtio_pci_legacy_dev', 'virtio_pci');
    before(order, 'virtio_pci_modern_dev', 'virtio_pci');
    before(order, 'virtio_mmio', 'virtio_blk');
    before(order, 'failover', 'net_failover');
    before(order, 'net_failover', 'virtio_net');
    before(order, 'vsock', 'vmw_vsock_virtio_transport_common');
    before(order, 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport');
    assert.equal(new Set(order).size, order.length, 'each module once');
    assert.equal(order.length, 14);
  });

  it('follows dependencies even when the wanted list is in the wrong order', () => {
    const order = names(planModuleLoad(parseModulesDep(SAMPLE_DEP), ['virtio_net', 'virtio', 'virtio_ring']));
    assert.deepEqual(order, ['virtio_ring', 'virtio', 'failover', 'net_failover', 'virtio_net']);
  });

  it('skips modules that are built in or absent (Firecracker kernels) and reports them', () => {
    const db = parseModulesDep('kernel/net/vmw_vsock/vsock.ko:\n');
    const plan = planModuleLoad(db, ['virtio_blk', 'vsock', 'nonexistent'], parseModulesBuiltin('kernel/drivers/block/virtio_blk.ko\n'));
    assert.deepEqual(names(plan), ['vsock']);
    assert.deepEqual(plan.builtin, ['virtio_blk']);
    assert.deepEqual(plan.missing, ['nonexistent']);
  });

  it('detects dependency cycles', () => {
    const db = parseModulesDep('a.ko: b.ko\nb.ko: a.ko\n');
    assert.throws(() => planModuleLoad(db, ['a']), /cycle/);
  });

  it('ignores comments and blank lines in modules.dep', () => {
    const db = parseModulesDep('# comment\n\nx.ko:\n');
    assert.deepEqual([...db.keys()], ['x']);
  });
});

/** A minimal ELF64 LE relocatable with .shstrtab and .modinfo sections. */
function fakeKo(modinfo: string): Buffer {
  const shstr = Buffer.from('\0.shstrtab\0.modinfo\0', 'latin1');
  const info = Buffer.from(modinfo, 'latin1');
  const hdr = Buffer.alloc(64);
  const dataOff = 64;
  const shoff = dataOff + shstr.length + info.length;
  hdr.writeUInt32BE(0x7f454c46, 0);
  hdr[4] = 2; // ELFCLASS64
  hdr[5] = 1; // little endian
  hdr[6] = 1;
  hdr.writeUInt16LE(1, 0x10); // ET_REL
  hdr.writeUInt16LE(62, 0x12); // x86-64
  hdr.writeBigUInt64LE(BigInt(shoff), 0x28);
  hdr.writeUInt16LE(64, 0x34);
  hdr.writeUInt16LE(64, 0x3a); // shentsize
  hdr.writeUInt16LE(3, 0x3c); // shnum
  hdr.writeUInt16LE(1, 0x3e); // shstrndx
  const sh = Buffer.alloc(64 * 3);
  const section = (i: number, name: number, off: number, size: number) => {
    sh.writeUInt32LE(name, i * 64);
    sh.writeUInt32LE(i === 1 ? 3 : 1, i * 64 + 4);
    sh.writeBigUInt64LE(BigInt(off), i * 64 + 0x18);
    sh.writeBigUInt64LE(BigInt(size), i * 64 + 0x20);
  };
  section(1, 1, dataOff, shstr.length);
  section(2, 11, dataOff + shstr.length, info.length);
  return Buffer.concat([hdr, shstr, info, sh]);
}

describe('modules.dep generation from .modinfo', () => {
  it('reads depends= from the .modinfo section', () => {
    assert.deepEqual(modinfoDepends(fakeKo('license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0')), ['virtio', 'virtio_ring']);
    assert.deepEqual(modinfoDepends(fakeKo('license=GPL\0depends=\0')), []);
    assert.throws(() => modinfoDepends(Buffer.from('not an elf file, clearly not one at all, no no no no no no no no no')), /ELF/);
  });

  it('writes a depmod-style modules.dep with transitive dependencies', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hearth-modules-'));
    try {
      await mkdir(join(dir, 'kernel/drivers/virtio'), { recursive: true });
      await mkdir(join(dir, 'kernel/drivers/block'), { recursive: true });
      await writeFile(join(dir, 'kernel/drivers/virtio/virtio_ring.ko'), fakeKo('depends=\0'));
      await writeFile(join(dir, 'kernel/drivers/virtio/virtio.ko'), fakeKo('depends=virtio_ring\0'));
      await writeFile(join(dir, 'kernel/drivers/block/virtio_blk.ko'), fakeKo('depends=virtio\0'));
      const text = await generateModulesDep(dir);
      const db = parseModulesDep(text);
      assert.deepEqual(db.get('virtio_blk')?.deps, ['virtio', 'virtio_ring']);
      assert.deepEqual(db.get('virtio_ring')?.deps, []);
      assert.deepEqual(names(planModuleLoad(db, ['virtio_blk'])), ['virtio_ring', 'virtio', 'virtio_blk']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
