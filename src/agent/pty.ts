import { Code, ConnectError } from '@connectrpc/connect';
import type { ProcessBackend, SpawnSpec, SpawnedProcess } from './process-backend.js';

/**
 * PTY backend placeholder. Node has no openpty/ioctl and the agent takes no native npm modules;
 * PTY sessions will come with a small native pty helper binary that this backend will spawn
 * (it must implement SpawnedProcess: one 'pty' output of ≤16 KiB chunks, write(), resize()).
 */
export class UnsupportedPtyBackend implements ProcessBackend {
  async spawn(_spec: SpawnSpec): Promise<SpawnedProcess> {
    throw new ConnectError('PTY sessions are not supported yet', Code.Unimplemented);
  }
}
