import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';

export interface CliRun { code: number | null; stdout: string; stderr: string }

/**
 * The `hearth` CLI as a user runs it, against `url`, with HOME and
 * XDG_CONFIG_HOME in `home` (a temp dir the caller owns: never the host user's).
 */
export function runCli(url: string, home: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(PACKAGE_ROOT, 'src/cli/main.ts'), ...args], {
      cwd: opts.cwd ?? PACKAGE_ROOT,
      env: { ...process.env, HEARTH_URL: url, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), HEARTH_API_KEY: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 900_000);
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}
