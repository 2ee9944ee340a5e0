import { errorMessage } from './errors.js';

type Undo = () => Promise<void> | void;
interface Entry { name: string; undo: Undo }

/**
 * Compensations registered where each resource is acquired (E2B's cleanup.go).
 * On failure `run()` undoes everything in reverse order of acquisition, with the
 * priority lane first (stop the VMM before releasing the disk it holds).
 * Undos never receive the caller's signal: a cancelled request must not skip cleanup.
 * `run()` runs every undo even when some fail, and returns every error.
 */
export class Cleanup {
  private readonly normal: Entry[] = [];
  private readonly priority: Entry[] = [];
  private done = false;

  add(name: string, undo: Undo): void { this.normal.push({ name, undo }); }
  addPriority(name: string, undo: Undo): void { this.priority.push({ name, undo }); }

  /** Forget every compensation: the operation succeeded and now owns its resources. */
  commit(): void { this.normal.length = 0; this.priority.length = 0; this.done = true; }

  get size(): number { return this.normal.length + this.priority.length; }

  async run(): Promise<Error[]> {
    if (this.done) return [];
    this.done = true;
    const errors: Error[] = [];
    const order = [...this.priority.reverse(), ...this.normal.reverse()];
    for (const { name, undo } of order) {
      try {
        await undo();
      } catch (err) {
        errors.push(new Error(`cleanup ${name}: ${errorMessage(err)}`, { cause: err }));
      }
    }
    return errors;
  }
}
