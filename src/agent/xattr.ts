import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

/**
 * File metadata (`X-Metadata-*` upload headers, EntryInfo.metadata) is stored as xattrs
 * `user.e2b.<key>`. Node has no xattr API and the agent takes no native dependencies, so this
 * uses `getfattr`/`setfattr` (Debian package `attr`) when they are on PATH and is a no-op otherwise.
 */
export const XATTR_PREFIX = 'user.e2b.';

let tools: { get: string; set: string } | null | undefined;

function findTool(name: string): string | undefined {
  for (const dir of (process.env.PATH || '/usr/bin:/bin').split(':')) {
    if (!dir) continue;
    const p = path.join(dir, name);
    if (existsSync(p)) return p;
  }
  return undefined;
}

export function xattrTools(): { get: string; set: string } | null {
  if (tools === undefined) {
    const get = findTool('getfattr');
    const set = findTool('setfattr');
    tools = get && set ? { get, set } : null;
  }
  return tools;
}

/** For tests: forget the cached tool lookup. */
export function resetXattrTools(): void {
  tools = undefined;
}

function run(bin: string, args: string[]): Promise<{ stdout: string; code: number }> {
  return new Promise((resolve) => {
    execFile(bin, args, { maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ stdout: stdout ?? '', code });
    });
  });
}

/** Decodes getfattr's `-e text` value: "..." with C-style and octal escapes. */
function decodeText(v: string): string {
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
  return v.replace(/\\([0-7]{3}|.)/g, (_m, e: string) => {
    if (/^[0-7]{3}$/.test(e)) return String.fromCharCode(parseInt(e, 8));
    return e;
  });
}

/** Reads `user.e2b.*` of each path; paths without metadata (or without xattr support) map to {}. */
export async function readMetadata(paths: string[]): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>();
  const t = xattrTools();
  if (!t || paths.length === 0) return out;
  for (let i = 0; i < paths.length; i += 256) {
    const batch = paths.slice(i, i + 256);
    const { stdout } = await run(t.get, ['--absolute-names', '-d', '-m', '^user\\.e2b\\.', '-e', 'text', '--', ...batch]);
    let current: Record<string, string> | undefined;
    for (const line of stdout.split('\n')) {
      if (line.startsWith('# file: ')) {
        const file = decodeText(line.slice('# file: '.length));
        current = {};
        out.set(file, current);
        continue;
      }
      const eq = line.indexOf('=');
      if (!current || eq <= 0) continue;
      const name = line.slice(0, eq);
      if (!name.startsWith(XATTR_PREFIX)) continue;
      current[name.slice(XATTR_PREFIX.length)] = decodeText(line.slice(eq + 1));
    }
  }
  return out;
}

/**
 * Replaces all `user.e2b.*` xattrs of `file` with `metadata`. Returns false when xattrs are not
 * available (no tools, or the filesystem refused).
 */
export async function writeMetadata(
  file: string,
  metadata: Record<string, string>,
  existed: boolean,
): Promise<boolean> {
  const t = xattrTools();
  if (!t) return false;
  if (existed) {
    const current = (await readMetadata([file])).get(file) ?? {};
    for (const key of Object.keys(current)) {
      if (!(key in metadata)) await run(t.set, ['-x', XATTR_PREFIX + key, '--', file]);
    }
  }
  let ok = true;
  for (const [key, value] of Object.entries(metadata)) {
    // Hex form: setfattr gives "0x…"/"0s…"/quoted text special meaning, hex is unambiguous.
    const encoded = value === '' ? '""' : '0x' + Buffer.from(value, 'utf8').toString('hex');
    const r = await run(t.set, ['-n', XATTR_PREFIX + key, '-v', encoded, '--', file]);
    if (r.code !== 0) ok = false;
  }
  return ok;
}
