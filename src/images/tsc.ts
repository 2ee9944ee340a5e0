/**
 * The host's TSC frequency, for the guest kernel parameter `tsc_early_khz=`.
 *
 * Under TCG the guest's RDTSC reads the host's TSC, and under KVM the guest TSC
 * runs at the host rate unless scaled; giving the guest the rate up front
 * skips its TSC calibration against the PIT/HPET, which under TCG sometimes
 * hangs the `microvm` machine silently (measured: 1 boot in 30 without it,
 * 0 in 80 with it; docs/images.md, "Kernel command line").
 *
 * Sources, best first: the kernel's "Refined TSC clocksource calibration" or
 * "tsc: Detected … MHz" line (dmesg, then journalctl -k -b), then `cpu MHz` in
 * /proc/cpuinfo when the CPU has an invariant TSC (constant_tsc + nonstop_tsc).
 */
import { readFile } from 'node:fs/promises';
import { run as defaultRun, type Runner } from './run.js';

/** Parse kernel log text; the refined calibration wins over the early estimate. */
export function tscKhzFromKernelLog(text: string): number | undefined {
  const refined = /tsc: Refined TSC clocksource calibration: (\d+(?:\.\d+)?) MHz/.exec(text);
  const detected = /tsc: Detected (\d+(?:\.\d+)?) MHz (?:processor|TSC)/.exec(text);
  const mhz = refined?.[1] ?? detected?.[1];
  return mhz ? Math.round(Number(mhz) * 1000) : undefined;
}

/** `cpu MHz` of the first CPU, only when the TSC is invariant (else it is the current clock, not the TSC rate). */
export function tscKhzFromCpuinfo(text: string): number | undefined {
  const first = text.split(/\n\s*\n/)[0] ?? '';
  const flags = /^flags\s*:\s*(.*)$/m.exec(first)?.[1]?.split(/\s+/) ?? [];
  if (!flags.includes('constant_tsc') || !flags.includes('nonstop_tsc')) return undefined;
  const mhz = /^cpu MHz\s*:\s*(\d+(?:\.\d+)?)/m.exec(first)?.[1];
  return mhz ? Math.round(Number(mhz) * 1000) : undefined;
}

let cached: Promise<number | undefined> | undefined;

/**
 * Host TSC frequency in kHz, or undefined when it cannot be determined (then
 * leave `tsc_early_khz` out). Memoised per process unless `fresh` is set.
 */
export function hostTscKhz(opts: { run?: Runner; fresh?: boolean } = {}): Promise<number | undefined> {
  if (!cached || opts.fresh) cached = detect(opts.run ?? defaultRun);
  return cached;
}

async function detect(run: Runner): Promise<number | undefined> {
  if (process.arch !== 'x64') return undefined;
  try {
    const { stdout } = await run('dmesg', [], { maxStdout: 8 * 1024 * 1024 });
    const khz = tscKhzFromKernelLog(stdout);
    if (khz) return khz;
  } catch {
    /* dmesg restricted or missing */
  }
  try {
    // The ring buffer of a long-running host may have dropped the boot lines; the journal keeps them.
    const { stdout } = await run('journalctl', ['-k', '-b', '-o', 'cat', '-q', '--no-pager', '-g', 'tsc: '], { maxStdout: 1024 * 1024 });
    const khz = tscKhzFromKernelLog(stdout);
    if (khz) return khz;
  } catch {
    /* no journald */
  }
  try {
    return tscKhzFromCpuinfo(await readFile('/proc/cpuinfo', 'utf8'));
  } catch {
    return undefined;
  }
}
