/**
 * The base kernel command line for the default image. docs/images.md explains
 * each flag; the VMM driver appends the per-VM part (hearth.ip=, hearth.gw=,
 * hearth.dns=, …). Flags were chosen by measuring boots under QEMU TCG
 * (`microvm`) and keeping Firecracker's conventions.
 */
import { hostTscKhz } from './tsc.js';

export const BASE_KERNEL_ARGS: readonly string[] = [
  'console=ttyS0',
  'reboot=k',
  'panic=1',
  'root=/dev/vda',
  'rw',
  'rootfstype=ext4',
  'init=/sbin/hearth-init',
  'quiet',
  '8250.nr_uarts=1',
  'i8042.noaux',
  'i8042.nomux',
  'i8042.nopnp',
  'i8042.dumbkbd',
  'random.trust_cpu=on',
  'cryptomgr.notests',
  'initcall_blacklist=crypto_kdf108_init',
  'mitigations=off',
  'tsc=reliable',
];

/** The base command line plus `tsc_early_khz=<khz>` when the host TSC rate is known. */
export function kernelArgsFor(tscKhz: number | undefined, base: readonly string[] = BASE_KERNEL_ARGS): string {
  return [...base, ...(tscKhz ? [`tsc_early_khz=${tscKhz}`] : [])].join(' ');
}

/** BASE_KERNEL_ARGS with this host's TSC rate. */
export async function defaultKernelArgs(): Promise<string> {
  return kernelArgsFor(await hostTscKhz());
}
