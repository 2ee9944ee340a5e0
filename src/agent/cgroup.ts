import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { errorMessage, log } from './log.js';

/**
 * Moves user processes into the cgroup the guest init prepared for them
 * (default /sys/fs/cgroup/hearth/user), so limits on that cgroup apply to user code and not to
 * the agent. When the directory does not exist (host tests, images without it) this is a no-op.
 */
export class UserCgroup {
  private readonly procsFile: string | undefined;
  private warned = false;

  constructor(dir: string) {
    this.procsFile = dir !== '' && existsSync(dir) ? path.join(dir, 'cgroup.procs') : undefined;
  }

  get enabled(): boolean {
    return this.procsFile !== undefined;
  }

  /** Writes `pid` to cgroup.procs; failures are logged once and otherwise ignored. */
  add(pid: number): void {
    if (!this.procsFile) return;
    try {
      writeFileSync(this.procsFile, `${pid}\n`, { flag: 'a' });
    } catch (e) {
      if (!this.warned) {
        this.warned = true;
        log.warn('cgroup: cannot move process into user cgroup', { file: this.procsFile, pid, error: errorMessage(e) });
      }
    }
  }
}
