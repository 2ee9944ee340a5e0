import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { AbortedError, HostFailureError } from '../../src/core/errors.js';
import { buildCpio } from '../../src/images/cpio.js';
import { atomicWriteFile, publishDir } from '../../src/images/fsutil.js';
import { GUEST_DIR } from '../../src/images/guest-files.js';
import { bzImagePayload } from '../../src/images/kernel.js';
import { BASE_KERNEL_ARGS, kernelArgsFor } from '../../src/images/kernel-args.js';
import { lineProgress, recordingProgress, ttyProgress } from '../../src/images/progress.js';
import { baseKey, normaliseBaseSpec, parseAptUris, hostDebianMirror } from '../../src/images/rootfs.js';
import { run, formatCommand, haveCommand } from '../../src/images/run.js';
import { tscKhzFromCpuinfo, tscKhzFromKernelLog } from '../../src/images/tsc.js';

let scratch: string;
before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'hearth-images-unit-'));
});
after(async () => {
  await rm(scratch, { recursive: true, force: true });
});

/** Parse a newc archive back into entries (test oracle). */
function parseNewc(buf: Buffer): { name: string; mode: number; rdevMajor: number; rdevMinor: number; data: Buffer }[] {
  const out = [];
  let off = 0;
  const align = (n: number) => (n + 3) & ~3;
  for (;;) {
    assert.equal(buf.toString('ascii', off, off + 6), '070701', `magic at ${off}`);
    const f = (i: number) => parseInt(buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = f(1);
    const size = f(6);
    const rdevMajor = f(9);
    const rdevMinor = f(10);
    const nameSize = f(11);
    const name = buf.toString('utf8', off + 110, off + 110 + nameSize - 1);
    const dataStart = align(off + 110 + nameSize);
    const data = buf.subarray(dataStart, dataStart + size);
    off = align(dataStart + size);
    if (name === 'TRAILER!!!') break;
    out.push({ name, mode, rdevMajor, rdevMinor, data });
  }
  assert.equal(off, buf.length);
  return out;
}

describe('newc cpio writer', () => {
  it('writes directories, files, symlinks and device nodes that read back', () => {
    const archive = buildCpio([
      { type: 'dir', path: '/bin' },
      { type: 'file', path: 'bin/busybox', data: Buffer.from('abc'), mode: 0o755 },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'char', path: 'dev/console', major: 5, minor: 1 },
      { type: 'file', path: 'init', data: Buffer.alloc(0) },
    ]);
    const e = parseNewc(archive);
    assert.deepEqual(e.map((x) => x.name), ['bin', 'bin/busybox', 'bin/sh', 'dev/console', 'init']);
    assert.equal(e[0]!.mode, 0o040755);
    assert.equal(e[1]!.mode, 0o100755);
    assert.equal(e[1]!.data.toString(), 'abc');
    assert.equal(e[2]!.mode, 0o120777);
    assert.equal(e[2]!.data.toString(), 'busybox');
    assert.equal(e[3]!.mode, 0o020600);
    assert.deepEqual([e[3]!.rdevMajor, e[3]!.rdevMinor], [5, 1]);
  });

  it('is reproducible', () => {
    const mk = () => buildCpio([{ type: 'file', path: 'x', data: Buffer.from('y') }]);
    assert.deepEqual(mk(), mk());
  });
});

describe('host TSC rate', () => {
  it('prefers the refined calibration from the kernel log', () => {
    const log = '[0.000057] tsc: Detected 2596.126 MHz processor\n[1.2] tsc: Refined TSC clocksource calibration: 2595.999 MHz\n';
    assert.equal(tscKhzFromKernelLog(log), 2595999);
    assert.equal(tscKhzFromKernelLog('[0.000057] tsc: Detected 2596.126 MHz processor'), 2596126);
    assert.equal(tscKhzFromKernelLog('nothing'), undefined);
  });

  it('uses cpu MHz only for an invariant TSC', () => {
    const cpu = (flags: string) => `processor\t: 0\ncpu MHz\t\t: 2596.126\nflags\t\t: fpu ${flags}\n\nprocessor\t: 1\n`;
    assert.equal(tscKhzFromCpuinfo(cpu('tsc constant_tsc nonstop_tsc')), 2596126);
    assert.equal(tscKhzFromCpuinfo(cpu('tsc')), undefined);
  });

  it('adds tsc_early_khz to the base kernel args only when known', () => {
    assert.equal(kernelArgsFor(undefined), BASE_KERNEL_ARGS.join(' '));
    assert.match(kernelArgsFor(2596126), / tsc_early_khz=2596126$/);
    for (const flag of ['console=ttyS0', 'reboot=k', 'panic=1', 'init=/sbin/hearth-init', 'root=/dev/vda']) {
      assert.ok(BASE_KERNEL_ARGS.includes(flag), flag);
    }
  });
});

describe('apt sources and debootstrap base key', () => {
  it('reads one-line and deb822 sources', () => {
    assert.deepEqual(parseAptUris('# x\ndeb [arch=amd64] http://a/debian bookworm main\ndeb-src http://b/debian bookworm main\n', false), ['http://a/debian']);
    const deb822 = 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\nTypes: deb-src\nURIs: http://src/debian\n\nTypes: deb\nEnabled: no\nURIs: http://off/debian\n';
    assert.deepEqual(parseAptUris(deb822, true), ['http://deb.debian.org/debian']);
  });

  it('picks the first /debian mirror of the host, else deb.debian.org', async () => {
    const apt = join(scratch, 'apt');
    await mkdir(join(apt, 'sources.list.d'), { recursive: true });
    assert.equal(await hostDebianMirror(apt), 'http://deb.debian.org/debian');
    await writeFile(join(apt, 'sources.list.d', 'a.sources'), 'Types: deb\nURIs: http://security/debian-security\n\nTypes: deb\nURIs: http://mirror.local/debian/\n');
    assert.equal(await hostDebianMirror(apt), 'http://mirror.local/debian');
  });

  it('keys the base on suite, mirror and the package set (not its order)', () => {
    const a = normaliseBaseSpec({ mirror: 'http://m/debian/', packages: ['b', 'a', 'a'] });
    const b = normaliseBaseSpec({ mirror: 'http://m/debian', packages: ['a', 'b'] });
    assert.equal(baseKey(a), baseKey(b));
    assert.notEqual(baseKey(a), baseKey({ ...b, packages: ['a', 'b', 'c'] }));
    assert.notEqual(baseKey(a), baseKey({ ...b, suite: 'trixie' }));
  });
});

describe('bzImage payload', () => {
  it('finds the compressed kernel and its size trailer', () => {
    const bz = Buffer.alloc(4096);
    bz[0x1f1] = 3; // setup sectors → protected-mode code at 4*512
    bz.write('HdrS', 0x202, 'latin1');
    bz.writeUInt16LE(0x20f, 0x206);
    const payload = Buffer.concat([Buffer.from('02214c18', 'hex'), Buffer.from('data'), Buffer.from([0x34, 0x12, 0, 0])]);
    bz.writeUInt32LE(100, 0x248);
    bz.writeUInt32LE(payload.length, 0x24c);
    payload.copy(bz, 4 * 512 + 100);
    const p = bzImagePayload(bz);
    assert.equal(p.format, 'lz4');
    assert.equal(p.size, 0x1234);
    assert.equal(p.data.length, payload.length - 4);
    assert.throws(() => bzImagePayload(Buffer.alloc(4096)), /not a bzImage/);
  });
});

describe('command runner', () => {
  it('returns stdout and passes arguments without a shell', async () => {
    const r = await run('printf', ['%s|', 'a b', '$(x)', '; rm -rf /']);
    assert.equal(r.stdout, 'a b|$(x)|; rm -rf /|');
  });

  it('puts the command and its stderr into the error', async () => {
    await assert.rejects(run('sh', ['-c', 'echo boom >&2; exit 3']), (err: unknown) => {
      assert.ok(err instanceof HostFailureError);
      assert.match(err.message, /sh -c 'echo boom >&2; exit 3' failed \(exit code 3\):\nboom/);
      return true;
    });
  });

  it('kills the child when the signal aborts', async () => {
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(run('sleep', ['30'], { signal: ac.signal }), AbortedError);
    assert.ok(Date.now() - t0 < 5000);
  });

  it('rejects at once for an already aborted signal and for a missing binary', async () => {
    await assert.rejects(run('true', [], { signal: AbortSignal.abort() }), AbortedError);
    await assert.rejects(run('/nonexistent/hearth-binary', []), /cannot run/);
  });

  it('feeds lines to onLine and stdin from input, binary stdout to a file', async () => {
    const lines: string[] = [];
    await run('sh', ['-c', 'cat; echo two >&2'], { input: 'one\n', onLine: (l) => lines.push(l) });
    assert.deepEqual(lines.sort(), ['one', 'two']);
    const out = join(scratch, 'bin.out');
    await run('printf', ['\\001\\002'], { stdoutPath: out });
    assert.deepEqual([...(await readFile(out))], [1, 2]);
  });

  it('formats commands for humans and finds sbin tools', async () => {
    assert.equal(formatCommand('mkfs.ext4', ['-L', 'hearth root']), "mkfs.ext4 -L 'hearth root'");
    assert.equal(await haveCommand('sh'), true);
    assert.equal(await haveCommand('hearth-no-such-tool'), false);
  });
});

describe('progress renderers', () => {
  it('line renderer prints stages with durations', () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (c: Buffer) => (text += c.toString()));
    const p = lineProgress(out, 't');
    p.stage('debootstrap');
    p.info('Retrieving Release');
    p.stage('mkfs');
    p.done('ok');
    assert.match(text, /\[t \+\d+\.\ds\] debootstrap…/);
    assert.match(text, / {2}Retrieving Release/);
    assert.match(text, /debootstrap: done in \d+\.\ds/);
    assert.match(text, /mkfs: done in/);
    assert.match(text, /\] ok\n$/);
  });

  it('TTY renderer redraws one line with a spinner and elapsed seconds', () => {
    const out = new PassThrough() as PassThrough & { isTTY: boolean; columns: number };
    out.isTTY = true;
    out.columns = 60;
    let text = '';
    out.on('data', (c: Buffer) => (text += c.toString()));
    const p = ttyProgress(out as unknown as NodeJS.WriteStream);
    p.stage('debootstrap bookworm');
    p.info('Retrieving '.repeat(20));
    p.done('built');
    // eslint-disable-next-line no-control-regex -- the TTY renderer writes ANSI escapes on purpose
    assert.match(text, /\r\x1b\[2K[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] debootstrap bookworm \d+\.\ds/);
    assert.ok(text.split('\r\x1b[2K').every((seg) => seg.split('\n')[0]!.length <= 60), 'lines fit the terminal');
    assert.match(text, /✔ debootstrap bookworm \d+\.\ds\nbuilt\n$/);
  });

  it('recording renderer keeps events', () => {
    const p = recordingProgress();
    p.stage('a');
    p.info('b');
    p.done();
    assert.deepEqual(p.events.map((e) => e.kind), ['stage', 'info', 'done']);
  });
});

describe('atomic files and directory publication', () => {
  it('atomicWriteFile leaves no temp files', async () => {
    const d = join(scratch, 'atomic');
    await atomicWriteFile(join(d, 'm.json'), '{"a":1}');
    await atomicWriteFile(join(d, 'm.json'), '{"a":2}');
    assert.deepEqual(await readdir(d), ['m.json']);
    assert.equal(await readFile(join(d, 'm.json'), 'utf8'), '{"a":2}');
  });

  it('publishDir replaces an incomplete leftover and keeps a complete winner', async () => {
    const final = join(scratch, 'img');
    const complete = async (dir: string) => (await readdir(dir).catch(() => [] as string[])).includes('manifest.json');
    await mkdir(final);
    await writeFile(join(final, 'half-written'), 'x'); // crashed build: no manifest
    const a = join(scratch, '.img.build-a');
    await mkdir(a);
    await writeFile(join(a, 'manifest.json'), 'A');
    await publishDir(a, final, complete);
    assert.equal(await readFile(join(final, 'manifest.json'), 'utf8'), 'A');
    const b = join(scratch, '.img.build-b');
    await mkdir(b);
    await writeFile(join(b, 'manifest.json'), 'B');
    await publishDir(b, final, complete); // lost the race: ours is dropped
    assert.equal(await readFile(join(final, 'manifest.json'), 'utf8'), 'A');
    assert.deepEqual((await readdir(scratch)).filter((n) => n.includes('img')), ['img']);
  });
});

describe('guest scripts', () => {
  for (const script of ['hearth-init', 'initramfs-init']) {
    it(`${script} parses as POSIX sh`, async () => {
      await run('sh', ['-n', join(GUEST_DIR, script)]);
      if (await haveCommand('busybox')) await run('busybox', ['sh', '-n', join(GUEST_DIR, script)]);
    });
  }

  it('hearth-init prints the agent-started line and uses the documented cgroups and port', async () => {
    const text = await readFile(join(GUEST_DIR, 'hearth-init'), 'utf8');
    assert.match(text, /say "agent started/);
    assert.match(text, /CG_AGENT=\$CG_HEARTH\/agent/);
    assert.match(text, /CG_USER=\$CG_HEARTH\/user/);
    assert.match(text, /AGENT_PORT=49983/);
    assert.match(text, /oom_score_adj/);
  });
});
