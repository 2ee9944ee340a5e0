/**
 * The guest's Node.js for the agent and for users.
 *
 * Debian bookworm's `nodejs` (18.x) is built without V8's startup snapshot
 * and code cache (`process.config.variables.node_use_node_snapshot === false`):
 * under TCG `node -e 0` takes 1.3 s warm and ~2 s cold in the guest. The
 * official Node builds (what runs Hearth itself, Node ≥ 20) have both and
 * start in ~0.3–0.4 s there. So by default the image gets a copy of the
 * host's own Node (the one running this code, `process.execPath`) in
 * /usr/local/bin, with npm, npx and corepack when they sit beside it. It must
 * run against the guest's bookworm libraries: the build checks that with
 * `chroot <staging> node -e 0` and drops the copy (keeping Debian's node) if not.
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { exists, sha256File } from './fsutil.js';

export interface NodeRuntime {
  /** Resolved path of the node binary on the host. */
  binPath: string;
  /** e.g. v20.20.2 */
  version: string;
  sha256: string;
  /** `<prefix>/lib/node_modules/<name>` for npm and corepack, when present. */
  modules: { name: string; dir: string; version: string }[];
}

const hashCache = new Map<string, { key: string; sha: string }>();

/** Describe the Node that runs this process (or `execPath`), for copying into the guest. */
export async function hostNodeRuntime(execPath = process.execPath, version = process.version): Promise<NodeRuntime> {
  const binPath = await realpath(execPath);
  const st = await stat(binPath);
  const cacheKey = `${st.size}:${st.mtimeMs}:${st.ino}`;
  let sha = hashCache.get(binPath);
  if (!sha || sha.key !== cacheKey) {
    sha = { key: cacheKey, sha: await sha256File(binPath) };
    hashCache.set(binPath, sha);
  }
  const prefix = dirname(dirname(binPath));
  const modules: NodeRuntime['modules'] = [];
  for (const name of ['npm', 'corepack']) {
    const dir = join(prefix, 'lib', 'node_modules', name);
    if (!(await exists(join(dir, 'package.json')))) continue;
    try {
      const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { version?: string };
      modules.push({ name, dir, version: pkg.version ?? 'unknown' });
    } catch {
      /* unreadable package.json: skip */
    }
  }
  return { binPath, version, sha256: sha.sha, modules };
}

/** Links created in the guest's /usr/local/bin for the copied modules. */
export const NODE_MODULE_BINS: Record<string, Record<string, string>> = {
  npm: { npm: '../lib/node_modules/npm/bin/npm-cli.js', npx: '../lib/node_modules/npm/bin/npx-cli.js' },
  corepack: { corepack: '../lib/node_modules/corepack/dist/corepack.js' },
};
