export { Sandbox, type CreateOptions, type NetworkOptions, type NetworkPolicy, type SandboxInfo, type SandboxSummary, type SnapshotInfo } from './sandbox.js';
export { HearthApi, type ConnectionOptions } from './api.js';
export { Commands, CommandHandle, type CommandResult, type RunOptions } from './commands.js';
export { Files, type FileEntry, type WriteData } from './files.js';
export { Pty, PtyHandle, type PtyCreateOptions, type PtyConnectOptions, type PtyResult, type PtySize } from './pty.js';
export * from './errors.js';
