/**
 * The root filesystem, in two layers:
 *
 * 1. the **base**: `debootstrap --variant=minbase <suite>` with the package
 *    list, trimmed (no .debs, apt lists, man pages, translations), cached as a
 *    directory at `<cacheDir>/debootstrap/<key16>/` keyed by suite, mirror,
 *    arch and package list, so changing only the agent or the init scripts
 *    never re-runs debootstrap;
 * 2. the **image**: a staging copy of the base plus the user, hostname, hosts,
 *    resolv.conf, agent bundle and init, turned into `rootfs.ext4` with
 *    `mkfs.ext4 -d` (no loop mount, no mounts at all).
 */
import { chmod, chown, copyFile, link, mkdir, open, readFile, readdir, realpath, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { HostFailureError, throwIfAborted } from '../core/errors.js';
import { atomicWriteFile, exists, publishDir, readJson, reapStaleTemps, removeTree, sha256, tempSibling } from './fsutil.js';
export { removeTree, reapStaleTemps, mountsUnder } from './fsutil.js';
import { ROOTFS_GUEST_FILES, readGuestFile } from './guest-files.js';
import { NODE_MODULE_BINS, type NodeRuntime } from './node-runtime.js';
import { PTY_HELPER_GUEST_PATH } from './pty-helper.js';
import { silentProgress, type Progress } from './progress.js';
import { run as defaultRun, type Runner } from './run.js';

/** Bump when the base's post-processing changes (invalidates cached bases). */
export const BASE_FORMAT_VERSION = 1;

export const DEFAULT_SUITE = 'bookworm';
export const DEFAULT_MIRROR = 'http://deb.debian.org/debian';

/**
 * Packages on top of minbase (which already has bash, coreutils, util-linux,
 * tar, gzip, grep, sed, findutils, mawk, passwd, apt). Choices:
 * - nodejs (18.x in bookworm) runs the agent and user JavaScript; npm is left
 *   out: in bookworm it pulls in ~300 node-* packages;
 * - python3: most sandbox users run Python; costs ~30 MiB; python-is-python3
 *   makes `python` run it too (E2B's examples call `python`);
 * - attr (getfattr/setfattr): the agent keeps file metadata (`X-Metadata-*`
 *   upload headers) in `user.e2b.*` xattrs with them;
 * - git, curl, ca-certificates, openssh-client: fetching code;
 * - python3-pip, python3-venv: `python3 -m pip` and `python3 -m venv` work (what
 *   Python users expect; pip pulls setuptools and wheel);
 * - tini: zombie reaper for PID 1; sudo: passwordless for `user`;
 * - iproute2 (hearth-init configures eth0), iputils-ping, netbase, procps,
 *   psmisc, less, vim-tiny, file, xz-utils, unzip: what a shell user expects.
 */
export const DEFAULT_PACKAGES: readonly string[] = [
  'attr',
  'ca-certificates',
  'curl',
  'file',
  'git',
  'iproute2',
  'iputils-ping',
  'less',
  'netbase',
  'nodejs',
  'openssh-client',
  'procps',
  'psmisc',
  'python-is-python3',
  'python3',
  'python3-pip',
  'python3-venv',
  'sudo',
  'tini',
  'unzip',
  'vim-tiny',
  'xz-utils',
];

export interface BaseSpec {
  suite: string;
  mirror: string;
  arch: string;
  variant: 'minbase';
  packages: string[];
}

export interface BaseInfo {
  dir: string;
  key: string;
  spec: BaseSpec;
  /** `name version` lines of the installed packages (dpkg-query). */
  packageVersions: string[];
}

interface BaseManifest {
  key: string;
  spec: BaseSpec;
  packageVersions: string[];
  createdAt: string;
  debootstrapSeconds: number;
}

const BASE_MANIFEST = '.hearth-base.json';

/** Normalise a base spec (sorted, deduplicated packages) so its key is stable. */
export function normaliseBaseSpec(spec: Partial<BaseSpec> & { mirror: string }): BaseSpec {
  return {
    suite: spec.suite ?? DEFAULT_SUITE,
    mirror: spec.mirror.replace(/\/+$/, ''),
    arch: spec.arch ?? 'amd64',
    variant: 'minbase',
    packages: [...new Set(spec.packages ?? DEFAULT_PACKAGES)].sort(),
  };
}

export function baseKey(spec: BaseSpec): string {
  return sha256(JSON.stringify({ v: BASE_FORMAT_VERSION, ...spec }));
}

/**
 * The Debian mirror the host's apt uses (first `deb` source whose path ends in
 * /debian, from sources.list and sources.list.d/*.list|*.sources), else
 * DEFAULT_MIRROR. Lets debootstrap use whatever mirror the host can reach.
 */
export async function hostDebianMirror(aptDir = '/etc/apt'): Promise<string> {
  const files = [join(aptDir, 'sources.list')];
  try {
    for (const f of (await readdir(join(aptDir, 'sources.list.d'))).sort()) {
      if (f.endsWith('.list') || f.endsWith('.sources')) files.push(join(aptDir, 'sources.list.d', f));
    }
  } catch {
    /* no sources.list.d */
  }
  for (const f of files) {
    const text = await readFile(f, 'utf8').catch(() => '');
    for (const uri of parseAptUris(text, f.endsWith('.sources'))) {
      if (/^https?:\/\/[^\s]+\/debian\/?$/.test(uri)) return uri.replace(/\/+$/, '');
    }
  }
  return DEFAULT_MIRROR;
}

/** Binary (`deb`) source URIs from a one-line-style or deb822-style file. */
export function parseAptUris(text: string, deb822: boolean): string[] {
  const out: string[] = [];
  if (!deb822) {
    for (const line of text.split('\n')) {
      const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)/.exec(line);
      if (m) out.push(m[1]!);
    }
    return out;
  }
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split('\n')) {
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
      if (m) fields.set(m[1]!.toLowerCase(), m[2]!.trim());
    }
    if (fields.get('enabled')?.toLowerCase() === 'no') continue;
    if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue;
    for (const u of (fields.get('uris') ?? '').split(/\s+/)) if (u) out.push(u);
  }
  return out;
}

export interface EnsureBaseOptions {
  cacheDir: string;
  spec: BaseSpec;
  signal?: AbortSignal;
  progress?: Progress;
  run?: Runner;
}

async function loadBase(dir: string): Promise<BaseInfo | undefined> {
  const m = await readJson<BaseManifest>(join(dir, BASE_MANIFEST));
  return m ? { dir, key: m.key, spec: m.spec, packageVersions: m.packageVersions } : undefined;
}

/** debootstrap once per spec; cached as a directory. */
export async function ensureDebootstrapBase(opts: EnsureBaseOptions): Promise<BaseInfo> {
  const { cacheDir, spec, signal } = opts;
  const progress = opts.progress ?? silentProgress;
  const run = opts.run ?? defaultRun;
  const key = baseKey(spec);
  const root = join(cacheDir, 'debootstrap');
  const finalDir = join(root, key.slice(0, 16));
  const cached = await loadBase(finalDir);
  if (cached) {
    progress.info(`debootstrap base cached in ${finalDir}`);
    return cached;
  }
  await mkdir(root, { recursive: true });
  await reapStaleTemps(root, run);

  progress.stage(`debootstrap ${spec.suite} (${spec.packages.length} extra packages; takes a minute or more)`);
  const tmp = tempSibling(finalDir, 'build');
  const t0 = Date.now();
  try {
    await run(
      'debootstrap',
      [
        `--variant=${spec.variant}`,
        `--arch=${spec.arch}`,
        '--components=main',
        '--merged-usr',
        `--include=${spec.packages.join(',')}`,
        spec.suite,
        tmp,
        spec.mirror,
      ],
      {
        signal,
        killGraceMs: 15000, // let debootstrap's exit trap unmount proc/sys in the target
        onLine: (line) => {
          const m = /^I: (.*)/.exec(line);
          if (m) progress.info(m[1]!);
        },
      },
    );
    const debootstrapSeconds = (Date.now() - t0) / 1000;
    throwIfAborted(signal);
    progress.stage('trim base (apt caches, docs, translations)');
    await trimBase(tmp, run, signal);
    const { stdout } = await run('dpkg-query', [`--admindir=${join(tmp, 'var/lib/dpkg')}`, '-W', '-f', '${Package} ${Version}\\n'], { signal });
    const packageVersions = stdout.split('\n').filter(Boolean).sort();
    const manifest: BaseManifest = { key, spec, packageVersions, createdAt: new Date().toISOString(), debootstrapSeconds };
    await atomicWriteFile(join(tmp, BASE_MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    await publishDir(tmp, finalDir, async (d) => (await loadBase(d)) !== undefined);
    progress.info(`debootstrap took ${debootstrapSeconds.toFixed(0)} s; ${packageVersions.length} packages`);
  } catch (err) {
    await removeTree(tmp, run).catch(() => undefined);
    throw err;
  }
  const info = await loadBase(finalDir);
  if (!info) throw new HostFailureError(`debootstrap base ${finalDir} is incomplete after build`);
  return info;
}

const NODOC_CFG = `# Hearth: keep the sandbox image small; copyright files stay.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
`;

async function trimBase(root: string, run: Runner, signal?: AbortSignal): Promise<void> {
  const clearDir = async (rel: string, keep: (name: string) => boolean = () => false) => {
    const dir = join(root, rel);
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      if (!keep(n)) await rm(join(dir, n), { recursive: true, force: true });
    }
  };
  await clearDir('var/cache/apt/archives', (n) => n === 'partial' || n === 'lock');
  await clearDir('var/cache/apt', (n) => n === 'archives');
  await clearDir('var/lib/apt/lists', (n) => n === 'partial' || n === 'lock');
  await clearDir('usr/share/man');
  await clearDir('usr/share/info');
  await clearDir('usr/share/locale', (n) => n === 'locale.alias');
  await run('find', [join(root, 'usr/share/doc'), '-mindepth', '1', '(', '-type', 'f', '-o', '-type', 'l', ')', '!', '-name', 'copyright', '-delete'], { signal });
  await run('find', [join(root, 'usr/share/doc'), '-mindepth', '1', '-type', 'd', '-empty', '-delete'], { signal });
  await clearDir('var/log', (n) => !n.endsWith('.log'));
  for (const n of await readdir(join(root, 'var/log')).catch(() => [] as string[])) {
    if (n.endsWith('.log')) await writeFile(join(root, 'var/log', n), '');
  }
  await mkdir(join(root, 'etc/dpkg/dpkg.cfg.d'), { recursive: true });
  await writeFile(join(root, 'etc/dpkg/dpkg.cfg.d/01-hearth-nodoc'), NODOC_CFG);
}

// ------------------------------------------------------------------ image

export const GUEST_USER = { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/bash' } as const;
export const AGENT_GUEST_PATH = '/usr/local/lib/hearth/hearth-agent.cjs';
export const INIT_GUEST_PATH = '/sbin/hearth-init';
/** Not on PATH: only hearth-init uses it (static, so it execs fast under TCG). */
export const BUSYBOX_GUEST_PATH = '/usr/local/lib/hearth/busybox';
export const DEFAULT_HOSTNAME = 'hearth';

export interface BuildRootfsOptions {
  base: BaseInfo;
  /** Scratch directory for the staging copy (deleted afterwards). */
  stagingDir: string;
  /** The ext4 image to write. */
  outPath: string;
  agentBundlePath: string;
  /** The compiled hearth-pty helper (installed at PTY_HELPER_GUEST_PATH); omitted: no PTY sessions. */
  ptyHelperPath?: string;
  sizeMiB: number;
  hostname?: string;
  /** Written to /etc/hearth/image.json in the guest. */
  imageMeta?: Record<string, unknown>;
  /** ext4 UUID (stable per image hash). */
  uuid?: string;
  guestDir?: string;
  /** Static busybox for hearth-init's boot-time commands (installed at BUSYBOX_GUEST_PATH). */
  busyboxPath?: string;
  /** Copy this Node (and npm/corepack) into /usr/local; undefined keeps only Debian's node. */
  nodeRuntime?: NodeRuntime;
  signal?: AbortSignal;
  progress?: Progress;
  run?: Runner;
}

/** Write a file inside the staging tree, creating parents (paths are guest-absolute). */
async function put(staging: string, guestPath: string, data: string | Buffer, mode = 0o644): Promise<void> {
  const p = join(staging, guestPath);
  await mkdir(dirname(p), { recursive: true });
  // Parents may be symlinks (/sbin → usr/sbin): an absolute one would resolve on the host.
  const parent = await realpath(dirname(p));
  const root = await realpath(staging);
  if (parent !== root && !parent.startsWith(root + '/')) {
    throw new HostFailureError(`${guestPath} resolves outside the staging tree (${parent}); refusing to write`);
  }
  await rm(p, { force: true }); // never write through a symlink left by a package
  await writeFile(p, data, { mode });
  await chmod(p, mode);
}

/**
 * Replace a staged file by a new inode with `edit(content)`, keeping mode and
 * owner (the staged file may be a hard link into the cached base).
 */
async function rewrite(staging: string, guestPath: string, edit: (text: string) => string): Promise<void> {
  const p = join(staging, guestPath);
  const st = await stat(p);
  const text = edit(await readFile(p, 'utf8'));
  await rm(p);
  await writeFile(p, text, { mode: st.mode & 0o7777 });
  await chmod(p, st.mode & 0o7777);
  await chown(p, st.uid, st.gid);
}

/** Append `line` to a colon-separated database unless an entry `name:` exists. */
function addEntry(text: string, name: string, line: string): string {
  if (text.split('\n').some((l) => l.startsWith(`${name}:`))) return text;
  return `${text.replace(/\n*$/, '\n')}${line}\n`;
}

/** Add `member` to the group line `group:` (last field of /etc/group and /etc/gshadow). */
function addMember(text: string, group: string, member: string): string {
  return text
    .split('\n')
    .map((l) => {
      if (!l.startsWith(`${group}:`)) return l;
      const fields = l.split(':');
      const members = (fields[fields.length - 1] ?? '').split(',').filter(Boolean);
      if (!members.includes(member)) members.push(member);
      fields[fields.length - 1] = members.join(',');
      return fields.join(':');
    })
    .join('\n');
}

/**
 * The sandbox user (uid/gid 1000, /home/user from /etc/skel, member of sudo,
 * password locked), written directly into the staged /etc files: what
 * `useradd -m -G sudo` does, without running tools inside the staging tree.
 */
export async function addGuestUser(staging: string, u: typeof GUEST_USER = GUEST_USER): Promise<void> {
  for (const db of ['passwd', 'group', 'shadow', 'gshadow']) {
    const text = await readFile(join(staging, 'etc', db), 'utf8');
    const taken = text.split('\n').some((l) => {
      const f = l.split(':');
      return f[0] === u.name || ((db === 'passwd' || db === 'group') && f[2] === String(db === 'passwd' ? u.uid : u.gid));
    });
    if (taken) throw new HostFailureError(`the base image already has a ${db} entry for ${u.name} or id ${u.uid}`);
  }
  await rewrite(staging, '/etc/passwd', (t) => addEntry(t, u.name, `${u.name}:x:${u.uid}:${u.gid}::${u.home}:${u.shell}`));
  await rewrite(staging, '/etc/shadow', (t) => addEntry(t, u.name, `${u.name}:!::0:99999:7:::`));
  await rewrite(staging, '/etc/group', (t) => addMember(addEntry(t, u.name, `${u.name}:x:${u.gid}:`), 'sudo', u.name));
  await rewrite(staging, '/etc/gshadow', (t) => addMember(addEntry(t, u.name, `${u.name}:!::`), 'sudo', u.name));
  const home = join(staging, u.home);
  await mkdir(home, { recursive: true, mode: 0o755 });
  await chmod(home, 0o755);
  await chown(home, u.uid, u.gid);
  for (const f of await readdir(join(staging, 'etc/skel')).catch(() => [] as string[])) {
    const src = join(staging, 'etc/skel', f);
    if (!(await stat(src)).isFile()) continue;
    await copyFile(src, join(home, f));
    await chown(join(home, f), u.uid, u.gid);
  }
}

export async function buildRootfs(opts: BuildRootfsOptions): Promise<{ path: string }> {
  const { base, stagingDir: staging, outPath, signal } = opts;
  const progress = opts.progress ?? silentProgress;
  const run = opts.run ?? defaultRun;
  const hostname = opts.hostname ?? DEFAULT_HOSTNAME;

  progress.stage('rootfs: staging copy of the base');
  await removeTree(staging, run);
  await mkdir(dirname(staging), { recursive: true });
  // A hard-link farm of the base: O(number of files), no data copied. Safe
  // only because nothing below modifies a staged file in place: `put` and
  // `rewrite` unlink before writing, everything else creates new files, and
  // no tool runs inside the staging tree that could write to it (useradd,
  // for one, rewrites /etc/group- in place: the user is added by
  // addGuestUser instead). mkfs.ext4 -d only reads. Across filesystems, fall
  // back to a copy (cp -a keeps owners, modes, hard links and xattrs such as
  // ping's capabilities).
  try {
    await run('cp', ['-al', base.dir, staging], { signal });
  } catch (err) {
    throwIfAborted(signal);
    progress.info(`hard links not possible (${(err as Error).message.split('\n')[0]}); copying the base`);
    await removeTree(staging, run);
    await run('cp', ['-a', '--reflink=auto', base.dir, staging], { signal });
  }
  await rm(join(staging, '.hearth-base.json'), { force: true });

  progress.stage('rootfs: configure');
  await addGuestUser(staging);
  await put(staging, '/etc/sudoers.d/90-hearth-user', `${GUEST_USER.name} ALL=(ALL:ALL) NOPASSWD: ALL\n`, 0o440);
  await put(staging, '/etc/hostname', `${hostname}\n`);
  await put(
    staging,
    '/etc/hosts',
    `127.0.0.1\tlocalhost\n127.0.1.1\t${hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n`,
  );
  // debootstrap copied the build host's resolv.conf: never ship it.
  await put(staging, '/etc/resolv.conf', '# Written by hearth-init from the kernel parameter hearth.dns=<addr>[,<addr>].\n');
  await put(staging, '/etc/fstab', '# Hearth: hearth-init mounts everything; the root is mounted by the initramfs.\n');
  await put(staging, '/etc/machine-id', '');
  await put(staging, AGENT_GUEST_PATH, await readFile(opts.agentBundlePath), 0o644);
  if (opts.ptyHelperPath) await put(staging, PTY_HELPER_GUEST_PATH, await readFile(opts.ptyHelperPath), 0o755);
  for (const f of ROOTFS_GUEST_FILES) await put(staging, f.guestPath, await readGuestFile(f.name, opts.guestDir), f.mode);
  await put(staging, '/etc/hearth/image.json', JSON.stringify(opts.imageMeta ?? {}, null, 2) + '\n');
  if (opts.busyboxPath) await put(staging, BUSYBOX_GUEST_PATH, await readFile(opts.busyboxPath), 0o755);
  if (opts.nodeRuntime) await installNodeRuntime(staging, opts.nodeRuntime, run, progress, signal);
  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp']) await mkdir(join(staging, d), { recursive: true });
  await chmod(join(staging, 'tmp'), 0o1777);
  // A stale /sbin/init would be confusing: hearth-init is the only init.
  if (!(await exists(join(staging, 'sbin/init')))) {
    await symlink(INIT_GUEST_PATH, join(staging, 'sbin/init')).catch(() => undefined);
  }
  throwIfAborted(signal);

  progress.stage(`rootfs: mkfs.ext4 -d (${opts.sizeMiB} MiB, sparse)`);
  await rm(outPath, { force: true });
  const fh = await open(outPath, 'w', 0o644);
  try {
    await fh.truncate(opts.sizeMiB * 1024 * 1024);
  } finally {
    await fh.close();
  }
  const args = ['-F', '-q', '-t', 'ext4', '-L', 'hearth-root', '-m', '0'];
  if (opts.uuid) args.push('-U', opts.uuid);
  // Initialise inode tables and journal now: otherwise ext4lazyinit writes them
  // from inside every guest, into every sandbox's copy-on-write layer.
  args.push('-E', 'lazy_itable_init=0,lazy_journal_init=0', '-d', staging, outPath);
  await run('mkfs.ext4', args, { signal });
  progress.stage('rootfs: remove staging copy');
  await removeTree(staging, run);
  return { path: outPath };
}

/**
 * Copy the host's Node into /usr/local (ahead of Debian's /usr/bin/node in
 * PATH). If it does not run against the guest's libraries, remove it again and
 * keep Debian's node.
 */
async function installNodeRuntime(staging: string, rt: NodeRuntime, run: Runner, progress: Progress, signal?: AbortSignal): Promise<void> {
  progress.info(`installing host Node ${rt.version} at /usr/local/bin/node`);
  const bin = join(staging, 'usr/local/bin/node');
  await mkdir(dirname(bin), { recursive: true });
  await rm(bin, { force: true });
  await copyFile(rt.binPath, bin);
  await chmod(bin, 0o755);
  const created: string[] = [bin];
  for (const m of rt.modules) {
    const dst = join(staging, 'usr/local/lib/node_modules', m.name);
    await mkdir(dirname(dst), { recursive: true });
    await run('cp', ['-a', '--no-preserve=ownership', m.dir, dst], { signal });
    created.push(dst);
    for (const [name, target] of Object.entries(NODE_MODULE_BINS[m.name] ?? {})) {
      const link = join(staging, 'usr/local/bin', name);
      await rm(link, { force: true });
      await symlink(target, link);
      created.push(link);
    }
  }
  try {
    const { stdout } = await run('chroot', [staging, '/usr/local/bin/node', '-p', 'process.version'], { signal });
    if (stdout.trim() !== rt.version) throw new Error(`reports ${stdout.trim()}`);
  } catch (err) {
    throwIfAborted(signal);
    progress.info(`host Node does not run in the guest (${(err as Error).message.split('\n')[0]}); using Debian's node`);
    for (const p of created) await rm(p, { recursive: true, force: true });
  }
}

/** Copy or hard-link (same filesystem) `src` to `dst`. */
export async function linkOrCopy(src: string, dst: string): Promise<void> {
  await rm(dst, { force: true });
  try {
    await link(src, dst);
  } catch {
    await copyFile(src, dst);
  }
}
