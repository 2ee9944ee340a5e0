/**
 * The CLI's per-user settings: hearthd's URL and API key, in
 * `$XDG_CONFIG_HOME/hearth/config.json` (default `~/.config/hearth/config.json`), mode 0600.
 * HEARTH_URL / HEARTH_API_KEY in the environment win over the file.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { UsageError } from './output.js';

export interface UserConfig { url?: string; apiKey?: string }

export const SETTINGS: Record<string, keyof UserConfig> = { url: 'url', 'api-key': 'apiKey', apiKey: 'apiKey' };

export function userConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env['XDG_CONFIG_HOME'] || join(env['HOME'] || homedir(), '.config');
  return join(base, 'hearth', 'config.json');
}

export function readUserConfig(path = userConfigPath()): UserConfig {
  if (!existsSync(path)) return {};
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(path, 'utf8')); } catch (err) { throw new UsageError(`${path} is not valid JSON (${(err as Error).message}); fix or remove it`, 1); }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new UsageError(`${path} must hold a JSON object like {"url": "...", "apiKey": "..."}`, 1);
  const c = raw as Record<string, unknown>;
  return {
    ...(typeof c['url'] === 'string' ? { url: c['url'] } : {}),
    ...(typeof c['apiKey'] === 'string' ? { apiKey: c['apiKey'] } : {}),
  };
}

export function writeUserConfig(cfg: UserConfig, path = userConfigPath()): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, `${JSON.stringify(cfg, null, 2)}\n`, { mode: 0o600 });
  chmodSync(path, 0o600);
}

/** Puts the file's settings into the environment where the environment has none (the SDK reads it). */
export function applyUserConfig(env: NodeJS.ProcessEnv = process.env): { url: string; apiKey: string | undefined; urlFrom: string; apiKeyFrom: string } {
  for (const k of ['HEARTH_URL', 'HEARTH_API_KEY']) if (env[k] === '') delete env[k]; // set but empty: as unset
  const path = userConfigPath(env);
  const file = readUserConfig(path);
  const urlFrom = env['HEARTH_URL'] ? 'HEARTH_URL' : file.url ? path : 'default';
  const apiKeyFrom = env['HEARTH_API_KEY'] ? 'HEARTH_API_KEY' : file.apiKey ? path : 'none';
  if (!env['HEARTH_URL'] && file.url) env['HEARTH_URL'] = file.url;
  if (!env['HEARTH_API_KEY'] && file.apiKey) env['HEARTH_API_KEY'] = file.apiKey;
  return { url: env['HEARTH_URL'] ?? 'http://127.0.0.1:3030', apiKey: env['HEARTH_API_KEY'], urlFrom, apiKeyFrom };
}
