/** Guest image builders: kernel, initramfs, rootfs and the default image. See docs/images.md. */
export { ensureDefaultImage, loadImage, DEFAULT_ROOTFS_SIZE_MIB } from './build.js';
export type { EnsureDefaultImageOptions, ImageInfo, ImageManifest } from './build.js';
export { ensureKernel, extractVmlinux, DEFAULT_KERNEL_META_PACKAGE } from './kernel.js';
export type { EnsureKernelOptions, KernelInfo } from './kernel.js';
export { ensureInitramfs, INITRAMFS_MODULES } from './initramfs.js';
export type { EnsureInitramfsOptions, InitramfsInfo } from './initramfs.js';
export {
  ensureDebootstrapBase,
  buildRootfs,
  hostDebianMirror,
  DEFAULT_PACKAGES,
  DEFAULT_SUITE,
  DEFAULT_MIRROR,
  AGENT_GUEST_PATH,
  INIT_GUEST_PATH,
  GUEST_USER,
  BUSYBOX_GUEST_PATH,
} from './rootfs.js';
export { hostNodeRuntime } from './node-runtime.js';
export { PTY_HELPER_GUEST_PATH, PTY_HELPER_SOURCE, compilePtyHelper, ptyHelperRecipe } from './pty-helper.js';
export type { NodeRuntime } from './node-runtime.js';
export { BASE_KERNEL_ARGS, kernelArgsFor, defaultKernelArgs } from './kernel-args.js';
export { hostTscKhz } from './tsc.js';
export { recipeHash, IMAGE_BUILDER_VERSION } from './recipe.js';
export type { ImageRecipe } from './recipe.js';
export { defaultProgress, lineProgress, ttyProgress, silentProgress, recordingProgress } from './progress.js';
export type { Progress } from './progress.js';
export { run, haveCommand } from './run.js';
export type { Runner, RunOptions, RunResult } from './run.js';

/** Guest-side constants other modules need (agent port, cgroup paths). */
export const GUEST_AGENT_PORT = 49983;
export const GUEST_CGROUPS = {
  root: '/sys/fs/cgroup/hearth',
  agent: '/sys/fs/cgroup/hearth/agent',
  user: '/sys/fs/cgroup/hearth/user',
} as const;
export { ensureFirecrackerKernel } from './firecracker-kernel.js';
