export { Sandbox, SandboxPaginator, type CreateOptions, type ListOptions, type NetworkOptions } from './sandbox.js';
export type { NetworkPolicy, SandboxInfo, SandboxMetrics, SandboxSummary, SnapshotInfo, Timing } from './types.js';
export { HearthApi, type ConnectionOptions } from './api.js';
export { Commands, CommandHandle, type CommandResult, type ConnectOptions, type RunOptions } from './commands.js';
export { Files, type FileEntry, type FilesystemEvent, type FilesystemEventType, type WatchHandle, type WatchOptions, type WriteData } from './files.js';
export { Pty, PtyHandle, type PtyCreateOptions, type PtyConnectOptions, type PtyResult, type PtySize } from './pty.js';
export { events, followLogs, getLogs, type LogEntry, type LogsOptions, type SandboxEvent } from './observe.js';
export {
  Templates, TemplateBuilder, TemplateBuildError, readContextDir, parseIgnore, contextSize, IGNORE_FILE,
  type TemplateBuildSpec, type TemplateBuildEvent, type FollowBuildOptions, type WaitForBuildOptions,
} from './templates.js';
export type {
  Recipe, RecipeStep, RunStep, CopyStep, EnvStep, WorkdirStep, UserStep, AptStep, PipStep, ReadyCheck, StartSpec, RecipeResources,
  TemplateInfo, TemplateBuild, TemplateBuildStep, TemplateBuildLogEntry,
} from './types.js';
export * from './errors.js';
