import { readFileSync, statSync } from 'node:fs';

/** A local account from /etc/passwd. */
export interface UserInfo {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

interface Cached<T> {
  mtimeMs: number;
  size: number;
  value: T;
}

/**
 * Reads a colon-separated database file (passwd, group) and caches the parsed result until the
 * file's mtime or size changes. Missing files parse as empty.
 */
function cachedTable<T>(path: string, parse: (text: string) => T, empty: T): () => T {
  let cache: Cached<T> | undefined;
  return () => {
    let mtimeMs = -1;
    let size = -1;
    try {
      const st = statSync(path);
      mtimeMs = st.mtimeMs;
      size = st.size;
    } catch {
      return empty;
    }
    if (cache && cache.mtimeMs === mtimeMs && cache.size === size) return cache.value;
    let text = '';
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      return empty;
    }
    cache = { mtimeMs, size, value: parse(text) };
    return cache.value;
  };
}

interface PasswdTable {
  byName: Map<string, UserInfo>;
  byUid: Map<number, UserInfo>;
}

interface GroupTable {
  byGid: Map<number, string>;
}

export function parsePasswd(text: string): PasswdTable {
  const byName = new Map<string, UserInfo>();
  const byUid = new Map<number, UserInfo>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(':');
    if (f.length < 7) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) continue;
    const info: UserInfo = { name: f[0]!, uid, gid, home: f[5]!, shell: f[6]! };
    if (!byName.has(info.name)) byName.set(info.name, info);
    if (!byUid.has(uid)) byUid.set(uid, info);
  }
  return { byName, byUid };
}

export function parseGroup(text: string): GroupTable {
  const byGid = new Map<number, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(':');
    if (f.length < 3) continue;
    const gid = Number(f[2]);
    if (!Number.isInteger(gid)) continue;
    if (!byGid.has(gid)) byGid.set(gid, f[0]!);
  }
  return { byGid };
}

const passwd = cachedTable('/etc/passwd', parsePasswd, { byName: new Map(), byUid: new Map() });
const group = cachedTable('/etc/group', parseGroup, { byGid: new Map() });

export function lookupUser(name: string): UserInfo | undefined {
  return passwd().byName.get(name);
}

/** User name for a uid, or the number as text (Go's os/user fallback in envd). */
export function userNameForUid(uid: number): string {
  return passwd().byUid.get(uid)?.name ?? String(uid);
}

export function groupNameForGid(gid: number): string {
  return group().byGid.get(gid) ?? String(gid);
}
