/**
 * The guest's PTY helper (`hearth-pty`, native/pty/hearth-pty.c): the agent spawns it for PTY
 * sessions because Node has no openpty. It is compiled on the host with `gcc -static -Os`
 * (static, so it depends on nothing in the guest) and installed at PTY_HELPER_GUEST_PATH.
 * The recipe records the source's sha256 and the compiler version.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { HostFailureError } from '../core/errors.js';
import { sha256 } from './fsutil.js';
import { run as defaultRun, type Runner } from './run.js';

/** `<repo>/native/pty/hearth-pty.c`, from `<repo>/src/images/` or `<repo>/dist/images/`. */
export const PTY_HELPER_SOURCE = fileURLToPath(new URL('../../native/pty/hearth-pty.c', import.meta.url));
/** Where the agent looks for it (its HEARTH_AGENT_PTY_HELPER default). */
export const PTY_HELPER_GUEST_PATH = '/usr/local/lib/hearth/hearth-pty';

export interface PtyHelperRecipe {
  sourceSha256: string;
  /** `gcc -dumpfullversion`. */
  compiler: string;
}

/** What goes into the image recipe; fails (with the reason) if the source or gcc is missing. */
export async function ptyHelperRecipe(opts: { source?: string; run?: Runner; signal?: AbortSignal } = {}): Promise<PtyHelperRecipe> {
  const source = opts.source ?? PTY_HELPER_SOURCE;
  const run = opts.run ?? defaultRun;
  const text = await readFile(source).catch((err: Error) => {
    throw new HostFailureError(`cannot read the PTY helper source ${source}: ${err.message}`);
  });
  let compiler: string;
  try {
    compiler = (await run('gcc', ['-dumpfullversion'], { signal: opts.signal })).stdout.trim();
  } catch (err) {
    throw new HostFailureError(`gcc is needed to build the guest's PTY helper: ${(err as Error).message.split('\n')[0]}`);
  }
  return { sourceSha256: sha256(text), compiler: `gcc ${compiler}` };
}

/** Compiles the helper statically to `outPath`. */
export async function compilePtyHelper(outPath: string, opts: { source?: string; run?: Runner; signal?: AbortSignal } = {}): Promise<void> {
  const run = opts.run ?? defaultRun;
  await run('gcc', ['-static', '-Os', '-s', '-o', outPath, opts.source ?? PTY_HELPER_SOURCE, '-lutil'], { signal: opts.signal });
}
