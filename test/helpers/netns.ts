/**
 * Names and ranges for tests that make network namespaces: a random tag per
 * pool (hearth-<tag>…, hth<tag>…) so tests never touch a real daemon's slots,
 * a free private range, and a by-name sweep of whatever a tag left behind.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';

function sh(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ stdout, stderr, code });
    });
  });
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

export function randomTag(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const b = randomBytes(3);
  return `t${alphabet[b[0]! % 36]}${alphabet[b[1]! % 36]}`;
}

/** A /24 in 10.230-10.249 that no host route touches. */
export async function freeTestRange(): Promise<string> {
  const routes = await must('ip', ['-4', 'route', 'show', 'table', 'all']);
  for (let i = 0; i < 200; i++) {
    const b = 230 + (randomBytes(1)[0]! % 20);
    const c = randomBytes(1)[0]!;
    if (!routes.includes(`10.${b}.`)) return `10.${b}.${c}.0/24`;
  }
  throw new Error('no free 10.23x-24x range for the test pool');
}

/** Host objects carrying this tag (what must be gone after the tests). */
export async function tagged(tag: string): Promise<{ netns: string[]; links: string[]; tables: string[] }> {
  const [ns, links, tables] = await Promise.all([must('ip', ['netns', 'list']), must('ip', ['-o', 'link', 'show']), must('nft', ['list', 'tables'])]);
  return {
    netns: ns.split('\n').map((l) => l.split(' ')[0]!).filter((n) => n.startsWith(`hearth-${tag}`)),
    links: links.split('\n').map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1] ?? '').filter((n) => n.startsWith(`hth${tag}`)),
    tables: tables.split('\n').map((l) => l.trim().split(/\s+/)[2] ?? '').filter((n) => n.startsWith(`hearth-${tag}`)),
  };
}

/** Removes every object with this tag, by name (the after-hook's last resort). */
export async function sweep(tag: string): Promise<void> {
  const t = await tagged(tag);
  for (const l of t.links) await sh('ip', ['link', 'del', l]);
  for (const n of t.netns) await sh('ip', ['netns', 'del', n]);
  for (const tb of t.tables) await sh('nft', ['delete', 'table', 'inet', tb]);
}
