import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError } from '../core/errors.js';
import { Semaphore } from '../core/semaphore.js';
import { run, type Runner } from '../images/run.js';
import { removeTree } from '../util/fs.js';

/** One apt download at a time per hearthd: builds share the archive cache, and apt locks it. */
const downloads = new Semaphore(1);

/**
 * Resolve Debian packages for a guest with the host's apt and fetch their
 * .deb files, without touching the host's own package state: apt reads the
 * guest's dpkg status file (what the image has installed), the host's package
 * lists (the sources the operator configured), and writes only under
 * `archivesDir` and a private cache directory. Returns the .deb paths to
 * install in the guest (what the guest lacks, dependencies included, without
 * recommends), in apt's order. The guest then needs no network access.
 */
export async function fetchDebs(
  guestStatus: Buffer, packages: readonly string[], archivesDir: string, signal: AbortSignal,
  onLine: (line: string) => void, runner: Runner = run,
): Promise<string[]> {
  if (packages.length === 0) return [];
  for (const p of packages) if (p.startsWith('-')) throw new InvalidArgumentError(`apt: "${p}" is not a package name`);
  return downloads.run(async () => {
    const work = join(archivesDir, `.work-${process.pid}-${Date.now()}`);
    await mkdir(join(archivesDir, 'partial'), { recursive: true });
    await mkdir(join(work, 'cache'), { recursive: true });
    try {
      await writeFile(join(work, 'status'), guestStatus);
      const opts = [
        '-o', `Dir::State::status=${join(work, 'status')}`,
        '-o', `Dir::Cache=${join(work, 'cache')}`,
        '-o', `Dir::Cache::archives=${archivesDir}`,
        '-o', 'Debug::NoLocking=1',
        '-o', 'APT::Sandbox::User=root',
        '-o', 'APT::Install-Recommends=0',
        '-o', 'APT::Get::AllowUnauthenticated=0',
      ];
      // What apt would install into the guest, in order ("Inst name (version …) [arch]").
      const sim = await runner('apt-get', [...opts, '-s', '-y', 'install', '--', ...packages], { signal, okCodes: [0, 100] });
      if (sim.code !== 0) {
        throw new InvalidArgumentError(`apt: the host's apt cannot install ${packages.join(' ')} into this image: ${lastLines(sim.stdout + sim.stderr)}`);
      }
      const wanted = [...sim.stdout.matchAll(/^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*?\[(\S+)\]\)/gm)].map((m) => ({ name: m[1]!, version: m[2]!, arch: m[3]! }));
      if (wanted.length === 0) return [];
      onLine(`apt: ${wanted.length} package${wanted.length === 1 ? '' : 's'} to install: ${wanted.map((w) => w.name).join(' ')}`);
      await runner('apt-get', [...opts, '-y', '--download-only', 'install', '--', ...packages], { signal, onLine: (l) => onLine(`apt: ${l}`) });
      const present = new Set(await readdir(archivesDir));
      return wanted.map((w) => {
        // apt names archives name_version_arch.deb with the epoch's ':' escaped.
        const file = `${w.name}_${w.version.replace(/:/g, '%3a')}_${w.arch}.deb`;
        if (!present.has(file)) throw new Error(`apt: ${file} was not downloaded`);
        return join(archivesDir, file);
      });
    } finally {
      await removeTree(work);
    }
  });
}

function lastLines(text: string, n = 6): string {
  return text.trim().split('\n').slice(-n).join(' | ');
}
