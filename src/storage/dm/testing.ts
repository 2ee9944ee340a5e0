/**
 * Test support (not used by hearthd): a fake block layer that answers
 * `losetup`, `blockdev`, `dmsetup` and `cp` the way the real tools do (same
 * output formats, same stderr messages, same exit codes), keeps the state a
 * kernel would (loop devices, dm devices and what they hold open), records
 * every command, and fails the commands a test programs. Used where the host
 * has no device-mapper, to test the dm backend's command construction,
 * ordering and failure handling.
 */
import { copyFileSync, existsSync, statSync } from 'node:fs';
import { AbortedError, HostFailureError } from '../../core/errors.js';
import type { CommandRunner, RunResult } from '../../util/exec.js';

export interface FakeLoop { device: string; file: string; readOnly: boolean; majMin: string }
export interface FakeDmDevice { name: string; sectors: number; origin: string; cow: string; persistent: string; chunk: number; openCount: number }

interface Fault { prefix: string; stderr: string; code: number; times: number }

/** Exact messages of the real tools (util-linux 2.38, lvm2 dmsetup 1.02). */
export const DM_MESSAGES = {
  busy: (name: string) => `device-mapper: remove ioctl on ${name}  failed: Device or resource busy\nCommand failed.\n`,
  missing: (name: string) => `device-mapper: remove ioctl on ${name}  failed: No such device or address\nCommand failed.\n`,
  permission: () => '/dev/mapper/control: open failed: Permission denied\nFailure to communicate with kernel device-mapper driver.\nCommand failed.\n',
  noDriver: () => '/dev/mapper/control: open failed: No such device\nFailure to communicate with kernel device-mapper driver.\nCheck that device-mapper is available in the kernel.\nIncompatible libdevmapper 1.02.185 (2022-05-18) and kernel driver (unknown version).\nCommand failed.\n',
  createFailed: (name: string) => `device-mapper: reload ioctl on ${name}  failed: Invalid argument\nCommand failed.\n`,
};

export class FakeBlockHost {
  /** Every command as `cmd arg arg…`, in order. */
  readonly calls: string[] = [];
  readonly loops = new Map<string, FakeLoop>();
  readonly dm = new Map<string, FakeDmDevice>();
  /** Things a kernel would have refused or silently deferred (detaching a loop a dm device holds). */
  readonly violations: string[] = [];
  /** Called before each command runs (tests look at the filesystem at that moment). */
  onCommand: (line: string) => void = () => undefined;
  private faults: Fault[] = [];
  /** Number of loop device nodes that exist (/dev/loop0..N-1); attaching past them fails like a full host. */
  constructor(private readonly loopCount = 64) {}

  /** Fail the next `times` commands whose line starts with `prefix`. */
  fail(prefix: string, stderr: string, opts: { times?: number; code?: number } = {}): void {
    this.faults.push({ prefix, stderr, code: opts.code ?? 1, times: opts.times ?? 1 });
  }

  /** How many commands started with `prefix`. */
  count(prefix: string): number { return this.calls.filter((c) => c.startsWith(prefix)).length; }

  /** A dm device as a crashed daemon or a failed pause would have left it. */
  addStaleDevice(name: string, originFile: string, cowFile: string, sectors: number): FakeDmDevice {
    const origin = this.attach(originFile, true);
    const cow = this.attach(cowFile, false);
    const d: FakeDmDevice = { name, sectors, origin: origin.device, cow: cow.device, persistent: 'P', chunk: 8, openCount: 0 };
    this.dm.set(name, d);
    return d;
  }

  /** What /sys/block/loopN/holders would list: the dm devices stacked on it. */
  holderNames = async (device: string): Promise<string[]> =>
    [...this.dm.keys()].flatMap((name, i) => (this.holders(device).some((d) => d.name === name) ? [`dm-${i}`] : []));

  /** The loop device backing `file`, if any. */
  loopOf(file: string): FakeLoop | undefined { return [...this.loops.values()].find((l) => l.file === file); }

  readonly run: CommandRunner = async (cmd, args, opts = {}) => {
    const line = [cmd, ...args].join(' ');
    this.calls.push(line);
    if (opts.signal?.aborted) throw new AbortedError(`${cmd} not started: cancelled`);
    this.onCommand(line);
    await Promise.resolve();
    let r: RunResult;
    const fault = this.faults.find((f) => f.times > 0 && line.startsWith(f.prefix));
    if (fault) {
      fault.times--;
      r = { stdout: '', stderr: fault.stderr, code: fault.code };
    } else {
      r = this.exec(cmd, args);
    }
    if (r.code !== 0 && !opts.allowFailure) {
      throw new HostFailureError(`${line} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
    }
    return r;
  };

  private attach(file: string, readOnly: boolean): FakeLoop {
    for (let i = 0; i < this.loopCount; i++) {
      const device = `/dev/loop${i}`;
      if (this.loops.has(device)) continue;
      const l: FakeLoop = { device, file, readOnly, majMin: `7:${i}` };
      this.loops.set(device, l);
      return l;
    }
    throw new Error('no free loop device');
  }

  private holders(device: string): FakeDmDevice[] {
    return [...this.dm.values()].filter((d) => d.origin === device || d.cow === device);
  }

  private exec(cmd: string, args: readonly string[]): RunResult {
    const ok = (stdout = ''): RunResult => ({ stdout, stderr: '', code: 0 });
    const err = (stderr: string, code = 1): RunResult => ({ stdout: '', stderr, code });
    const a = [...args];
    switch (cmd) {
      case 'losetup': {
        if (a[0] === '--find' && a[1] === '--show') {
          const readOnly = a.includes('--read-only');
          const file = a[a.length - 1]!;
          if (!existsSync(file)) return err(`losetup: ${file}: failed to set up loop device: No such file or directory\n`);
          if (this.loops.size >= this.loopCount) return err('losetup: cannot find an unused loop device\n');
          return ok(`${this.attach(file, readOnly).device}\n`);
        }
        if (a[0] === '-d') {
          const device = a[1]!;
          const l = this.loops.get(device);
          if (!l) return err(`losetup: ${device}: detach failed: No such device or address\n`);
          const held = this.holders(device);
          if (held.length) this.violations.push(`losetup -d ${device} while dm device ${held.map((d) => d.name).join(',')} holds it (the kernel would only set autoclear)`);
          this.loops.delete(device);
          return ok();
        }
        if (a[0] === '--json' && a[1] === '--list') {
          const only = a.find((x) => x.startsWith('/dev/'));
          const entries = only
            ? (/^\/dev\/loop(\d+)$/.test(only) && Number(only.slice(9)) < this.loopCount
              ? [this.loops.get(only) ?? { device: only, file: null, readOnly: false, majMin: `7:${only.slice(9)}` }]
              : null)
            : [...this.loops.values()];
          if (entries === null) return err(`losetup: ${only}: failed to use device: No such device\n`);
          const loopdevices = entries.map((l) => ({ name: l.device, 'maj:min': `  ${l.majMin}  `, 'back-file': l.file, ro: l.readOnly }));
          return ok(JSON.stringify({ loopdevices }, null, 3));
        }
        return err(`fake losetup: unsupported ${args.join(' ')}\n`);
      }
      case 'blockdev': {
        if (a[0] !== '--getsz') return err('fake blockdev: unsupported\n');
        const l = this.loops.get(a[1]!);
        if (!l) return err(`blockdev: cannot open ${a[1]}: No such device or address\n`);
        return ok(`${Math.floor(statSync(l.file).size / 512)}\n`);
      }
      case 'dmsetup': return this.dmsetup(a, ok, err);
      case 'cp': {
        const [src, dst] = a.filter((x) => !x.startsWith('--'));
        const m = /^\/dev\/mapper\/(.+)$/.exec(src!);
        const d = m ? this.dm.get(m[1]!) : undefined;
        if (!d) return err(`cp: cannot open '${src}' for reading: No such file or directory\n`);
        // The fake keeps no CoW data: the merged content it copies is the origin's.
        copyFileSync(this.loops.get(d.origin)!.file, dst!);
        return ok();
      }
      default:
        return err(`fake host: unknown command ${cmd}\n`, 127);
    }
  }

  private dmsetup(a: string[], ok: (s?: string) => RunResult, err: (s: string, c?: number) => RunResult): RunResult {
    const [verb, name] = a;
    const d = name ? this.dm.get(name) : undefined;
    const missingInfo = 'Device does not exist.\nCommand failed.\n';
    switch (verb) {
      case 'create': {
        if (a[2] !== '--table' || !a[3]) return err('fake dmsetup: create needs --table\n');
        if (d) return err(`device-mapper: create ioctl on ${name}  failed: Device or resource busy\nCommand failed.\n`);
        const f = a[3].split(/\s+/);
        if (f.length !== 7 || f[0] !== '0' || f[2] !== 'snapshot') return err(DM_MESSAGES.createFailed(name!));
        const [, len, , origin, cow, persistent, chunk] = f as [string, string, string, string, string, string, string];
        if (!this.loops.has(origin) || !this.loops.has(cow) || origin === cow) return err(DM_MESSAGES.createFailed(name!));
        if (Number(len) > Math.floor(statSync(this.loops.get(origin)!.file).size / 512)) return err(DM_MESSAGES.createFailed(name!));
        if (this.loops.get(cow)!.readOnly) return err(DM_MESSAGES.createFailed(name!));
        this.dm.set(name!, { name: name!, sectors: Number(len), origin, cow, persistent, chunk: Number(chunk), openCount: 0 });
        return ok();
      }
      case 'remove': {
        if (!d) return err(DM_MESSAGES.missing(name!));
        if (d.openCount > 0) return err(DM_MESSAGES.busy(name!));
        this.dm.delete(name!);
        return ok();
      }
      case 'info':
        if (!d) return err(missingInfo);
        return ok(`Name:              ${d.name}\nState:             ACTIVE\nRead Ahead:        256\nTables present:    LIVE\nOpen count:        ${d.openCount}\nEvent number:      0\nMajor, minor:      253, 0\nNumber of targets: 1\n\n`);
      case 'table':
        if (!d) return err(missingInfo);
        return ok(`0 ${d.sectors} snapshot ${this.loops.get(d.origin)?.majMin ?? '7:99'} ${this.loops.get(d.cow)?.majMin ?? '7:98'} ${d.persistent} ${d.chunk}\n`);
      case 'status':
        if (!d) return err(missingInfo);
        return ok(`0 ${d.sectors} snapshot 16/${d.sectors + 64} 16\n`);
      case 'ls':
        if (this.dm.size === 0) return ok('No devices found\n');
        return ok([...this.dm.values()].map((x, i) => `${x.name}\t(253:${i})`).join('\n') + '\n');
      default:
        return err(`fake dmsetup: unsupported ${a.join(' ')}\n`);
    }
  }
}
