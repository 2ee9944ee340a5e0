export { FirecrackerDriver, type FirecrackerDriverOptions, type FirecrackerJailerOptions } from './driver.js';
export { FirecrackerVmm, type FirecrackerSettings, type FirecrackerVmRecord, type MemoryBackendKind } from './vmm.js';
export { FirecrackerClient, FirecrackerApiError, FirecrackerUnreachableError } from './client.js';
export { bootArgs, planBoot, planLoad, planSnapshot, sandboxMmds, ROOT, ROOT_DRIVE_ID, NET_IFACE_ID, type FirecrackerVmConfig } from './config.js';
export { vmLayout, launchCommand, firecrackerId, idFromArgv, MOUNTNS_ROOT_DEFAULT, type Isolation, type VmLayout } from './layout.js';
export { detectFirecrackerVersion, parseFirecrackerVersion, featuresOf, atLeast, type FirecrackerVersionInfo, type FirecrackerFeatures } from './version.js';
export { vsockConnect, VsockAgent, VsockHttpClient, VsockNotReadyError } from './vsock.js';
export { readSnapshotMeta, SNAPSHOT_META_FILE, type FirecrackerSnapshotMeta } from './snapshot-meta.js';
