import path from 'node:path';
import type { UserInfo } from './users.js';

export class PathError extends Error {}

/**
 * envd's ExpandAndResolve (docs/agent.md, "Filesystem"): empty → default workdir; `~`/`~/x` → home;
 * `~other` → error; relative → joined to the user's home and cleaned. Returns an absolute path.
 */
export function expandAndResolve(p: string, user: UserInfo, defaultWorkdir: string | undefined): string {
  let out = p;
  if (out === '' && defaultWorkdir) out = defaultWorkdir;
  if (out.startsWith('~')) {
    if (out.length > 1 && out[1] !== '/') {
      throw new PathError(
        `failed to expand path '${p}' for user '${user.name}': cannot expand user-specific home dir`,
      );
    }
    out = path.join(user.home, out.slice(1));
  }
  if (path.isAbsolute(out)) return path.normalize(out).replace(/(.)\/$/, '$1');
  return path.resolve(user.home, out);
}
