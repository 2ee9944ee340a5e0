/**
 * Kernel module dependency handling: parse `modules.dep`, generate one from the
 * `.ko` files' `.modinfo` section when the kernel package does not ship it
 * (Debian's linux-image packages leave that to depmod in postinst), and compute
 * the load order of a set of wanted modules (dependencies first).
 */
import { readFile, readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';

/** Module name as the kernel sees it: basename without .ko[.xz|.zst|.gz], '-' → '_'. */
export function moduleName(pathOrName: string): string {
  const base = pathOrName.split('/').pop() ?? pathOrName;
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

export interface ModuleEntry {
  /** Path relative to the modules dir, as in modules.dep (e.g. kernel/drivers/virtio/virtio.ko). */
  path: string;
  /** Direct or transitive dependencies, by module name. */
  deps: string[];
}

/** name → entry. */
export type ModuleDb = Map<string, ModuleEntry>;

/** Parse the text of a modules.dep file. */
export function parseModulesDep(text: string): ModuleDb {
  const db: ModuleDb = new Map();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const path = line.slice(0, colon).trim();
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(moduleName);
    db.set(moduleName(path), { path, deps });
  }
  return db;
}

export interface LoadPlan {
  /** Modules to load, in order, with their paths relative to the modules dir. */
  order: ModuleEntry[];
  /** Wanted modules that are neither in the db nor built in (skipped). */
  missing: string[];
  /** Wanted modules that are built into the kernel (nothing to load). */
  builtin: string[];
}

/**
 * Load order for `wanted` (and everything they depend on): a depth-first
 * post-order, so each module comes after all of its dependencies (a
 * dependency cycle throws); ties follow the order of `wanted`. Modules listed in `builtin` and names absent from the
 * db are skipped (and reported), which is what a kernel with virtio built in
 * (Firecracker) needs.
 */
export function planModuleLoad(db: ModuleDb, wanted: readonly string[], builtin: ReadonlySet<string> = new Set()): LoadPlan {
  const order: ModuleEntry[] = [];
  const missing: string[] = [];
  const builtins: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, chain: string[]) => {
    const st = state.get(name);
    if (st === 'done') return;
    if (st === 'visiting') throw new Error(`module dependency cycle: ${[...chain, name].join(' → ')}`);
    const entry = db.get(name);
    if (!entry) {
      state.set(name, 'done');
      if (builtin.has(name)) builtins.push(name);
      else missing.push(name);
      return;
    }
    state.set(name, 'visiting');
    // modules.dep lists the dependency to load first last (modprobe loads the
    // list backwards); visiting it backwards gives the same order as modprobe.
    for (const dep of [...entry.deps].reverse()) visit(dep, [...chain, name]);
    state.set(name, 'done');
    order.push(entry);
  };
  for (const w of wanted) visit(moduleName(w), []);
  return { order, missing, builtin: builtins };
}

/** Names from a modules.builtin file (paths like kernel/fs/ext4/ext4.ko). */
export function parseModulesBuiltin(text: string): Set<string> {
  return new Set(text.split('\n').map((l) => l.trim()).filter(Boolean).map(moduleName));
}

/**
 * Read the `depends=` field of a .ko file's `.modinfo` ELF section
 * (64-bit little-endian ELF only; compressed modules are not supported).
 */
export function modinfoDepends(ko: Buffer): string[] {
  const info = modinfoSection(ko);
  for (const field of info.split('\0')) {
    if (field.startsWith('depends=')) return field.slice(8).split(',').filter(Boolean).map(moduleName);
  }
  return [];
}

function modinfoSection(b: Buffer): string {
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file');
  if (b[4] !== 2 || b[5] !== 1) throw new Error('only 64-bit little-endian ELF modules are supported');
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  const shstrndx = b.readUInt16LE(0x3e);
  const sh = (i: number) => {
    const o = shoff + i * shentsize;
    return { name: b.readUInt32LE(o), offset: Number(b.readBigUInt64LE(o + 0x18)), size: Number(b.readBigUInt64LE(o + 0x20)) };
  };
  const strtab = sh(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = sh(i);
    const nameStart = strtab.offset + s.name;
    const nameEnd = b.indexOf(0, nameStart);
    if (b.toString('latin1', nameStart, nameEnd) === '.modinfo') return b.toString('latin1', s.offset, s.offset + s.size);
  }
  return '';
}

async function listKo(dir: string, out: string[] = []): Promise<string[]> {
  for (const ent of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, ent.name);
    if (ent.isDirectory()) await listKo(p, out);
    else if (ent.name.endsWith('.ko')) out.push(p);
  }
  return out;
}

/**
 * Build a modules.dep (text, in depmod's format: each line lists the module's
 * transitive dependencies, the one to load first last) from the .ko files under
 * `modulesDir`.
 */
export async function generateModulesDep(modulesDir: string): Promise<string> {
  const files = (await listKo(modulesDir)).sort();
  const direct = new Map<string, { path: string; deps: string[] }>();
  for (const f of files) {
    direct.set(moduleName(f), { path: relative(modulesDir, f), deps: modinfoDepends(await readFile(f)) });
  }
  const lines: string[] = [];
  for (const [name, ent] of direct) {
    const plan = planModuleLoad(direct, [name]);
    const deps = plan.order.filter((e) => e.path !== ent.path).map((e) => e.path).reverse();
    lines.push(`${ent.path}:${deps.length ? ' ' + deps.join(' ') : ''}`);
  }
  return lines.join('\n') + '\n';
}
