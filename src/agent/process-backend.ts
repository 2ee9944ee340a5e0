import type { Readable } from 'node:stream';
import type { UserInfo } from './users.js';

/** What the process service asks a backend to run. Paths and env are already resolved. */
export interface SpawnSpec {
  cmd: string;
  args: string[];
  /** Complete environment (PATH/HOME/USER/LOGNAME, sandbox env, request env). */
  env: Record<string, string>;
  cwd: string;
  user: UserInfo;
  /** Keep a stdin pipe open (false: stdin is /dev/null). Ignored for PTYs. */
  stdin: boolean;
  /** Present for PTY sessions. */
  pty?: { cols: number; rows: number };
}

export type OutputKind = 'stdout' | 'stderr' | 'pty';

export interface OutputSource {
  kind: OutputKind;
  /** Byte stream; the service pauses it for backpressure and destroys it to stop reading. */
  stream: Readable;
}

/** How a process ended: exactly one of code/signal is non-null. */
export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * A running process as seen by the process service. Two implementations: pipes
 * (process-pipe.ts) and, later, a PTY (pty.ts). The service only relies on this shape:
 * output streams, input, signals and an exit promise.
 */
export interface SpawnedProcess {
  readonly pid: number;
  readonly isPty: boolean;
  readonly outputs: OutputSource[];
  /** Resolves once when the process has exited (not waiting for output to drain). */
  readonly exited: Promise<ExitStatus>;
  /** Writes to stdin (pipe) or the terminal (PTY). Resolves once handed to the kernel. */
  write(data: Uint8Array): Promise<void>;
  /** True while input can be written. */
  readonly inputOpen: boolean;
  /** Closes stdin (EOF). Pipe processes only. */
  closeStdin(): void;
  /** PTY only. */
  resize(cols: number, rows: number): void;
  /** Sends a signal to the process (and its process group). */
  signal(sig: NodeJS.Signals): void;
}

export interface ProcessBackend {
  /** Starts the process; rejects (e.g. ConnectError invalid_argument) when it cannot start. */
  spawn(spec: SpawnSpec): Promise<SpawnedProcess>;
}
