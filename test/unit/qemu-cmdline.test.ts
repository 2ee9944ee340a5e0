import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InternalError } from '../../src/core/errors.js';
import {
  buildQemuArgs, sandboxOption, kernelCmdline, memoryPathFromArgv, parseGuestCidr, parseQemuArgv, parseQemuOpts, qemuEscape, runFiles, spawnCommand,
  type QemuCmdlineOptions,
} from '../../src/vmm/qemu/cmdline.js';
import type { VmConfig } from '../../src/vmm/types.js';

function cfg(over: Partial<VmConfig> = {}): VmConfig {
  return {
    sandboxId: 'sb-123',
    vcpus: 2,
    memoryMib: 256,
    kernelPath: '/k/vmlinuz',
    initrdPath: '/k/initrd.img',
    kernelArgs: 'quiet panic=1',
    rootfsPath: '/data/sandboxes/sb-123/rootfs.img',
    memoryFilePath: '/data/sandboxes/sb-123/mem',
    runDir: '/run/hearth/sb-123',
    consoleLogPath: '/data/sandboxes/sb-123/console.log',
    network: { kind: 'user', forwards: [{ hostPort: 40001, guestPort: 49983 }], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' },
    ...over,
  };
}

const tcg: QemuCmdlineOptions = { accel: 'tcg', tscKhz: 2596126 };

/** The value following `flag` (all of them when repeated). */
function values(args: string[], flag: string): string[] {
  const out: string[] = [];
  args.forEach((a, i) => { if (a === flag) out.push(args[i + 1]!); });
  return out;
}

describe('QEMU command line', () => {
  it('describes a microvm with ACPI, guest RAM in a shared file, and the devices on virtio-mmio', () => {
    const args = buildQemuArgs(cfg(), tcg);
    assert.deepEqual(values(args, '-machine'), ['microvm,acpi=on,pit=off,pic=off,rtc=on,memory-backend=mem']);
    assert.deepEqual(values(args, '-object'), ['memory-backend-file,id=mem,size=256M,mem-path=/data/sandboxes/sb-123/mem,share=on']);
    assert.deepEqual(values(args, '-m'), ['256M']);
    assert.deepEqual(values(args, '-smp'), ['2']);
    // A bounded translation cache (QEMU's default, 1 GiB, grows into anonymous memory): issue #14.
    assert.deepEqual(values(args, '-accel'), ['tcg,tb-size=128']);
    assert.deepEqual(values(buildQemuArgs(cfg(), { ...tcg, tbSizeMib: 64 }), '-accel'), ['tcg,tb-size=64']);
    assert.deepEqual(values(buildQemuArgs(cfg(), { ...tcg, accel: 'kvm' }), '-accel'), ['kvm']);
    assert.deepEqual(values(args, '-cpu'), ['max']);
    for (const f of ['-nodefaults', '-no-user-config', '-nographic', '-no-reboot']) assert.ok(args.includes(f), f);
    assert.deepEqual(values(args, '-device'), [
      'virtio-blk-device,drive=root',
      'virtio-net-device,netdev=n0',
      'virtio-rng-device',
    ]);
    assert.deepEqual(values(args, '-drive'), ['id=root,file=/data/sandboxes/sb-123/rootfs.img,if=none,format=raw,cache=writeback,aio=threads,discard=unmap,auto-read-only=off']);
    assert.deepEqual(values(args, '-kernel'), ['/k/vmlinuz']);
    assert.deepEqual(values(args, '-initrd'), ['/k/initrd.img']);
    assert.deepEqual(values(args, '-chardev'), [
      'file,id=con0,path=/data/sandboxes/sb-123/console.log,append=on',
      'socket,id=qmp,path=/run/hearth/sb-123/qmp.sock,server=on,wait=off',
    ]);
    assert.deepEqual(values(args, '-serial'), ['chardev:con0']);
    assert.deepEqual(values(args, '-mon'), ['chardev=qmp,mode=control']);
    assert.deepEqual(values(args, '-pidfile'), ['/run/hearth/sb-123/qemu.pid']);
    assert.deepEqual(values(args, '-name'), ['hearth-sb-123,process=hearth-sb-123']);
    assert.deepEqual(values(args, '-sandbox'), ['on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']);
    assert.ok(!args.includes('-incoming') && !args.includes('-S'));
    assert.ok(!args.includes('-runas') && !args.includes('-chroot'), 'no privilege drop unless asked');
  });

  it('adds console, root and (microvm under TCG) tsc_early_khz before the caller\'s kernel arguments', () => {
    assert.equal(kernelCmdline(cfg(), tcg), 'console=ttyS0 root=/dev/vda tsc_early_khz=2596126 quiet panic=1');
    assert.equal(values(buildQemuArgs(cfg(), tcg), '-append')[0], 'console=ttyS0 root=/dev/vda tsc_early_khz=2596126 quiet panic=1');
    // the caller's own values win, nothing is duplicated
    assert.equal(kernelCmdline(cfg({ kernelArgs: 'console=ttyS0 root=/dev/vda rw tsc_early_khz=1000' }), tcg), 'console=ttyS0 root=/dev/vda rw tsc_early_khz=1000');
    assert.equal(kernelCmdline(cfg(), { accel: 'kvm', tscKhz: 2596126 }), 'console=ttyS0 root=/dev/vda quiet panic=1');
    assert.equal(kernelCmdline(cfg(), { accel: 'tcg', machine: 'q35', tscKhz: 2596126 }), 'console=ttyS0 root=/dev/vda quiet panic=1');
    assert.equal(kernelCmdline(cfg({ kernelArgs: '' }), { accel: 'tcg' }), 'console=ttyS0 root=/dev/vda');
  });

  it('uses -cpu host under KVM and virtio-pci devices on q35', () => {
    const kvm = buildQemuArgs(cfg(), { accel: 'kvm' });
    assert.deepEqual(values(kvm, '-cpu'), ['host']);
    const q35 = buildQemuArgs(cfg(), { accel: 'tcg', machine: 'q35' });
    assert.deepEqual(values(q35, '-machine'), ['q35,memory-backend=mem']);
    assert.deepEqual(values(q35, '-device'), ['virtio-blk-pci,drive=root', 'virtio-net-pci,netdev=n0', 'virtio-rng-pci']);
  });

  it('restricts user networking and forwards only from 127.0.0.1', () => {
    const args = buildQemuArgs(cfg({ network: { kind: 'user', forwards: [{ hostPort: 40001, guestPort: 49983 }, { hostPort: 40002, guestPort: 8080 }], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' } }), tcg);
    assert.deepEqual(values(args, '-netdev'), [
      'user,id=n0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,dhcpstart=10.0.2.15,hostfwd=tcp:127.0.0.1:40001-10.0.2.15:49983,hostfwd=tcp:127.0.0.1:40002-10.0.2.15:8080',
    ]);
    const netOnly = buildQemuArgs(cfg({ network: { kind: 'user', forwards: [{ hostPort: 1, guestPort: 2 }], guestCidr: '192.168.77.0/24', gateway: '192.168.77.1' } }), tcg);
    assert.deepEqual(values(netOnly, '-netdev'), ['user,id=n0,restrict=on,net=192.168.77.0/24,host=192.168.77.1,hostfwd=tcp:127.0.0.1:1-:2']);
    for (const bad of [{ hostPort: 0, guestPort: 80 }, { hostPort: 70000, guestPort: 80 }, { hostPort: 1.5, guestPort: 80 }]) {
      assert.throws(() => buildQemuArgs(cfg({ network: { kind: 'user', forwards: [bad], guestCidr: '10.0.2.15/24', gateway: '10.0.2.2' } }), tcg), InternalError);
    }
    assert.throws(() => parseGuestCidr('10.0.2/24'), InternalError);
    assert.deepEqual(parseGuestCidr('172.16.5.9/16'), { network: '172.16.0.0', prefix: 16, address: '172.16.5.9' });
  });

  it('attaches a tap and enters the slot\'s network namespace with nsenter (exec, same pid)', () => {
    const c = cfg({ network: { kind: 'tap', netnsName: 'hearth-slot-7', tapName: 'tap0', mac: '02:fc:00:00:00:07' } });
    const args = buildQemuArgs(c, tcg);
    assert.deepEqual(values(args, '-netdev'), ['tap,id=n0,ifname=tap0,script=no,downscript=no']);
    assert.ok(values(args, '-device').includes('virtio-net-device,netdev=n0,mac=02:fc:00:00:00:07'));
    assert.deepEqual(spawnCommand(c, 'qemu-system-x86_64', args), { file: 'nsenter', args: ['--net=/run/netns/hearth-slot-7', '--', 'qemu-system-x86_64', ...args] });
    assert.deepEqual(spawnCommand(cfg(), 'qemu-system-x86_64', ['-x']), { file: 'qemu-system-x86_64', args: ['-x'] });
    assert.throws(() => buildQemuArgs(cfg({ network: { kind: 'tap', netnsName: 'ns', tapName: 'tap0', mac: 'nope' } }), tcg), InternalError);
    assert.throws(() => buildQemuArgs(cfg({ network: { kind: 'tap', netnsName: 'ns', tapName: 'tap0;rm -rf', mac: '02:00:00:00:00:01' } }), tcg), InternalError);
    assert.throws(() => spawnCommand(cfg({ network: { kind: 'tap', netnsName: '../x', tapName: 'tap0', mac: '02:00:00:00:00:01' } }), 'q', []), InternalError);
  });

  it('restore starts paused with a deferred incoming migration', () => {
    const args = buildQemuArgs(cfg(), { ...tcg, incoming: true, paused: true });
    assert.deepEqual(values(args, '-incoming'), ['defer']);
    assert.ok(args.includes('-S'));
  });

  it('escapes commas in paths for QEMU option strings', () => {
    const c = cfg({ memoryFilePath: '/d/a,b/mem', rootfsPath: '/d/a,b/root', consoleLogPath: '/d/a,b/console' });
    const args = buildQemuArgs(c, tcg);
    assert.equal(values(args, '-object')[0], 'memory-backend-file,id=mem,size=256M,mem-path=/d/a,,b/mem,share=on');
    assert.match(values(args, '-drive')[0]!, /file=\/d\/a,,b\/root,/);
    assert.equal(qemuEscape('a,,b'), 'a,,,,b');
    assert.deepEqual(parseQemuOpts('memory-backend-file,id=mem,mem-path=/d/a,,b/mem,share=on'), {
      first: 'memory-backend-file', opts: { id: 'mem', 'mem-path': '/d/a,b/mem', share: 'on' },
    });
    assert.equal(memoryPathFromArgv(['qemu-system-x86_64', ...args]), '/d/a,b/mem');
  });

  it('can be read back: sandbox id and runDir from a QEMU argv', () => {
    const args = ['qemu-system-x86_64', ...buildQemuArgs(cfg(), tcg)];
    assert.deepEqual(parseQemuArgv(args), { sandboxId: 'sb-123', runDir: '/run/hearth/sb-123' });
    assert.equal(parseQemuArgv(['qemu-system-x86_64', '-name', 'someone-else']), undefined);
    assert.equal(parseQemuArgv(['qemu-system-x86_64']), undefined);
    assert.deepEqual(runFiles('/r'), { qmpSocket: '/r/qmp.sock', pidFile: '/r/qemu.pid', stderrLog: '/r/qemu.log', vmRoot: '/r/vmroot' });
  });

  it('rejects configurations QEMU would misread or that break the Unix socket limit', () => {
    assert.throws(() => buildQemuArgs(cfg({ sandboxId: 'a,b' }), tcg), InternalError);
    assert.throws(() => buildQemuArgs(cfg({ sandboxId: '' }), tcg), InternalError);
    assert.throws(() => buildQemuArgs(cfg({ kernelPath: 'relative/vmlinuz' }), tcg), InternalError);
    assert.throws(() => buildQemuArgs(cfg({ memoryMib: 10 }), tcg), InternalError);
    assert.throws(() => buildQemuArgs(cfg({ vcpus: 0 }), tcg), InternalError);
    assert.throws(() => buildQemuArgs(cfg({ runDir: `/${'x'.repeat(120)}` }), tcg), /too long for a Unix socket/);
  });

  it('can run without the seccomp sandbox and without an initrd', () => {
    const args = buildQemuArgs(cfg({ initrdPath: undefined }), { ...tcg, seccomp: false, driveCache: 'none', driveAio: 'native' });
    assert.ok(!args.includes('-sandbox'));
    assert.ok(!args.includes('-initrd'));
    assert.match(values(args, '-drive')[0]!, /cache=none,aio=native/);
  });

  it('drops to an unprivileged uid:gid (-runas) and chroots, with seccomp allowing only QEMU\'s own set*id', () => {
    const args = buildQemuArgs(cfg(), { ...tcg, runAs: { uid: 1_900_000_123, gid: 1_900_000_123 }, chrootDir: '/run/hearth/sb-123/vmroot' });
    assert.deepEqual(values(args, '-runas'), ['1900000123:1900000123']);
    assert.deepEqual(values(args, '-chroot'), ['/run/hearth/sb-123/vmroot']);
    // QEMU installs the filter before it calls setgid/setuid: deny (and children) would kill it with SIGSYS.
    assert.deepEqual(values(args, '-sandbox'), ['on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny']);
    assert.equal(sandboxOption(false), 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    // the image must stay O_RDWR while migration inactivates it: an unprivileged QEMU cannot reopen it
    assert.match(values(args, '-drive')[0]!, /,auto-read-only=off$/);
    // still recognised by reconciliation
    assert.deepEqual(parseQemuArgv(['qemu-system-x86_64', ...args]), { sandboxId: 'sb-123', runDir: '/run/hearth/sb-123' });
    assert.equal(memoryPathFromArgv(['qemu-system-x86_64', ...args]), '/data/sandboxes/sb-123/mem');
    // tap: nsenter (root) enters the namespace, QEMU drops privileges itself afterwards
    const tap = cfg({ network: { kind: 'tap', netnsName: 'hearth-3', tapName: 'tap0', mac: '02:fc:00:00:00:03' } });
    const cmd = spawnCommand(tap, 'qemu-system-x86_64', buildQemuArgs(tap, { ...tcg, runAs: { uid: 5000, gid: 5001 } }));
    assert.equal(cmd.file, 'nsenter');
    assert.deepEqual(values(cmd.args, '-runas'), ['5000:5001']);
    assert.ok(!cmd.args.includes('-chroot'));
  });

  it('refuses root or malformed identities and a relative chroot', () => {
    assert.throws(() => buildQemuArgs(cfg(), { ...tcg, runAs: { uid: 0, gid: 5 } }), InternalError);
    assert.throws(() => buildQemuArgs(cfg(), { ...tcg, runAs: { uid: 5, gid: 0 } }), InternalError);
    assert.throws(() => buildQemuArgs(cfg(), { ...tcg, runAs: { uid: 1.5, gid: 5 } }), InternalError);
    assert.throws(() => buildQemuArgs(cfg(), { ...tcg, runAs: { uid: 5, gid: 5 }, chrootDir: 'vmroot' }), InternalError);
  });
});
