export { QemuDriver, type QemuDriverOptions } from './driver.js';
export { QemuVmm, identifyQemu, type QemuStatus } from './vmm.js';
export { QmpClient, QmpCommandError, QmpClosedError, type QmpEvent, type QmpGreeting } from './qmp.js';
export {
  buildQemuArgs, kernelCmdline, spawnCommand, runFiles, qemuVmName, parseQemuArgv, parseQemuOpts,
  memoryPathFromArgv, sandboxOption, type QemuCmdlineOptions, type QemuMachine, type DriveCache, type DriveAio,
} from './cmdline.js';
export { listHearthQemuProcesses, readProcIds, type HearthQemuProcess } from './process.js';
export { resolvePrivilege, lookupUser, VmIdAllocator, DEFAULT_ID_RANGE, type QemuPrivilege, type QemuPrivilegeOptions } from './privilege.js';
