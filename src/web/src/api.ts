/** hearthd REST API and the envd proxy (docs/api.md; the envd wire protocol: docs/agent.md, "Wire protocol"), over fetch. */

export interface Timing { op: string; steps: { step: string; ms: number }[] }
export interface Sandbox {
  sandboxID: string; templateID: string; state: string; cpuCount: number; memoryMB: number; diskSizeMB: number;
  metadata: Record<string, string>; createdAt: string; startedAt: string; endAt: string;
  endedAt: string | null; endReason: string | null; envdVersion: string;
}
export interface SandboxDetail extends Sandbox {
  envdAccessToken: string; envVars: Record<string, string>;
  vmm: { kind: string; pid: number } | null; diskUsageBytes: number | null; timings: Timing | null;
  lifecycle?: { onTimeout: string; autoResume: boolean; autoExtend: boolean };
  network?: { allow_internet_access: boolean; allowOut: string[]; denyOut: string[] } | null;
}
export interface ApiKey { id: string; name: string; createdAt: string; lastUsedAt: string | null }
export interface Snapshot {
  snapshotID: string; names: string[]; sandboxID: string | null; templateID: string;
  cpuCount: number; memoryMB: number; createdAt: string; sizeBytes: number;
}
export interface Template { templateID: string; imageHash: string; cpuCount: number; memoryMB: number; diskSizeMB: number; createdAt: string }
export interface NewSandbox { templateID: string; cpuCount?: number; memoryMB?: number; timeout?: number; envVars?: Record<string, string>; metadata?: Record<string, string> }
export interface ForkResult { sandbox?: SandboxDetail; error?: { code: number; message: string; error_code: string } }

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly errorCode?: string) { super(message); }
}

const KEY_STORAGE = 'hearth.apiKey';
/** The X-API-Key sent with API calls (hearthd asks for one on a non-loopback listener); kept in localStorage. */
export function getApiKey(): string { try { return localStorage.getItem(KEY_STORAGE) ?? ''; } catch { return ''; } }
export function setApiKey(k: string): void { try { if (k) localStorage.setItem(KEY_STORAGE, k); else localStorage.removeItem(KEY_STORAGE); } catch { /* private mode */ } }
/** Fired on window when the API answers 401: the app shows the API key form. */
export const UNAUTHORIZED_EVENT = 'hearth:unauthorized';

async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const key = getApiKey();
  const init: RequestInit = { method, headers: { accept: 'application/json', ...(key ? { 'x-api-key': key } : {}) } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { ...init.headers, 'content-type': 'application/json' };
  }
  if (signal) init.signal = signal;
  const res = await fetch(path, init);
  const text = await res.text();
  let data: unknown = undefined;
  try { data = text ? JSON.parse(text) : undefined; } catch { /* not JSON */ }
  if (!res.ok) {
    if (res.status === 401) window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
    const d = data as { message?: string; error_code?: string } | undefined;
    throw new ApiError(res.status, d?.message ?? (text || res.statusText), d?.error_code);
  }
  return data as T;
}

export const api = {
  listSandboxes: (states?: string[]) => call<Sandbox[]>('GET', `/sandboxes${states?.length ? `?state=${states.join(',')}` : ''}`),
  /** Any state: ended sandboxes too, while hearthd keeps their record. */
  getSandbox: (id: string) => call<SandboxDetail>('GET', `/sandboxes/${id}/record`),
  setTimeout: (id: string, seconds: number) => call<void>('POST', `/sandboxes/${id}/timeout`, { timeout: seconds }),
  createSandbox: (b: NewSandbox) => call<SandboxDetail>('POST', '/sandboxes', b),
  destroy: (id: string) => call<void>('DELETE', `/sandboxes/${id}`),
  pause: (id: string) => call<void>('POST', `/sandboxes/${id}/pause`, {}),
  resume: (id: string) => call<SandboxDetail>('POST', `/sandboxes/${id}/resume`, {}),
  snapshot: (id: string, name?: string) => call<Snapshot>('POST', `/sandboxes/${id}/snapshots`, name ? { name } : {}),
  fork: (id: string, count = 1) => call<ForkResult[]>('POST', `/sandboxes/${id}/fork`, { count }),
  listSnapshots: () => call<Snapshot[]>('GET', '/snapshots'),
  deleteSnapshot: (id: string) => call<void>('DELETE', `/snapshots/${encodeURIComponent(id)}`),
  listTemplates: () => call<Template[]>('GET', '/templates'),
  doctor: () => call<unknown>('GET', '/doctor'),
  health: () => call<{ status: string; version: string }>('GET', '/health'),
  listKeys: () => call<ApiKey[]>('GET', '/api-keys'),
  createKey: (name: string) => call<ApiKey & { key: string }>('POST', '/api-keys', { name }),
  deleteKey: (id: string) => call<void>('DELETE', `/api-keys/${encodeURIComponent(id)}`),
};

// ---------- envd (through hearthd's proxy) ----------

export interface EnvdTarget { id: string; token: string }
const envdUrl = (t: EnvdTarget, path: string) => `/sandboxes/${t.id}/envd/${path}`;

function b64decode(s: string): Uint8Array {
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
export function b64encode(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** An envd error in the user's words (no protocol method names). */
function envdErrorText(status: number, message: string, code?: unknown): string {
  if (status === 502) return 'the sandbox is not running (paused or ended)';
  if (status === 401) return 'the sandbox refused the access token (reload the page)';
  const m = message.replace(/^(process\.Process|filesystem\.Filesystem)\/\w+:\s*/, '').trim();
  const words: Record<string, string> = { not_found: 'not found', permission_denied: 'permission denied', already_exists: 'already exists', invalid_argument: 'invalid', deadline_exceeded: 'timed out', resource_exhausted: 'too busy' };
  return m || (typeof code === 'string' ? words[code] ?? code.replace(/_/g, ' ') : 'failed');
}

/** Connect unary call with the JSON codec. */
export async function envdUnary<T>(t: EnvdTarget, method: string, body: unknown, signal?: AbortSignal): Promise<T> {
  const init: RequestInit = {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'connect-protocol-version': '1', 'x-access-token': t.token },
    body: JSON.stringify(body),
  };
  if (signal) init.signal = signal;
  const res = await fetch(envdUrl(t, method), init);
  const text = await res.text();
  let data: { code?: unknown; message?: string } | undefined;
  try { data = text ? JSON.parse(text) : {}; } catch { data = undefined; }
  if (res.status !== 200) throw new ApiError(res.status, envdErrorText(res.status, data?.message ?? (text || res.statusText), data?.code), typeof data?.code === 'string' ? data.code : undefined);
  return data as T;
}

export interface ProcessEvent {
  start?: { pid: number };
  data?: { stdout?: string; stderr?: string; pty?: string };
  end?: { exitCode?: number; exited?: boolean; status?: string; error?: string };
  keepalive?: object;
}

/**
 * Connect server stream (JSON codec) over fetch + ReadableStream: the request is one
 * envelope (flags 0x00 | uint32 BE length | JSON); the response is a sequence of
 * envelopes, the last one flagged 0x02 (EndStream) carrying `{error?}`.
 */
export async function envdStream(t: EnvdTarget, method: string, body: unknown, onMessage: (m: unknown) => void, signal?: AbortSignal): Promise<void> {
  const payload = new TextEncoder().encode(JSON.stringify(body));
  const frame = new Uint8Array(5 + payload.length);
  new DataView(frame.buffer).setUint32(1, payload.length);
  frame.set(payload, 5);
  const init: RequestInit = {
    method: 'POST',
    headers: { 'content-type': 'application/connect+json', 'connect-protocol-version': '1', 'x-access-token': t.token, 'keepalive-ping-interval': '50' },
    body: frame,
  };
  if (signal) init.signal = signal;
  const res = await fetch(envdUrl(t, method), init);
  if (res.status !== 200 || !res.body) {
    const text = await res.text().catch(() => '');
    let msg = text;
    try { msg = (JSON.parse(text) as { message?: string }).message ?? text; } catch { /* raw */ }
    throw new ApiError(res.status, envdErrorText(res.status, msg || res.statusText));
  }
  const reader = res.body.getReader();
  let buf = new Uint8Array(0);
  const dec = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (value) {
      const merged = new Uint8Array(buf.length + value.length);
      merged.set(buf); merged.set(value, buf.length); buf = merged;
      while (buf.length >= 5) {
        const flags = buf[0]!;
        const len = new DataView(buf.buffer, buf.byteOffset + 1, 4).getUint32(0);
        if (buf.length < 5 + len) break;
        const json = dec.decode(buf.subarray(5, 5 + len));
        buf = buf.slice(5 + len);
        const msg = json ? JSON.parse(json) as Record<string, unknown> : {};
        if (flags & 0x02) {
          const err = msg['error'] as { code?: string; message?: string } | undefined;
          if (err) throw new ApiError(200, envdErrorText(200, err.message ?? '', err.code), err.code);
          return;
        }
        onMessage(msg);
      }
    }
    if (done) throw new ApiError(0, 'the connection to the sandbox ended early (was it paused or destroyed?)');
  }
}

export const decodeBytes = b64decode;

export interface StartOptions { cmd: string; args: string[]; envs?: Record<string, string>; cwd?: string; pty?: { cols: number; rows: number }; stdin?: boolean }

export function startProcess(t: EnvdTarget, o: StartOptions, onEvent: (e: ProcessEvent) => void, signal?: AbortSignal): Promise<void> {
  const body: Record<string, unknown> = { process: { cmd: o.cmd, args: o.args, envs: o.envs ?? {}, ...(o.cwd ? { cwd: o.cwd } : {}) }, stdin: o.stdin ?? false };
  if (o.pty) body['pty'] = { size: { cols: o.pty.cols, rows: o.pty.rows } };
  return envdStream(t, 'process.Process/Start', body, (m) => {
    const ev = (m as { event?: ProcessEvent }).event;
    if (ev) onEvent(ev);
  }, signal);
}

export const sendPtyInput = (t: EnvdTarget, pid: number, data: Uint8Array) =>
  envdUnary(t, 'process.Process/SendInput', { process: { pid }, input: { pty: b64encode(data) } });
export const resizePty = (t: EnvdTarget, pid: number, cols: number, rows: number) =>
  envdUnary(t, 'process.Process/Update', { process: { pid }, pty: { size: { cols, rows } } });
export const killProcess = (t: EnvdTarget, pid: number) =>
  envdUnary(t, 'process.Process/SendSignal', { process: { pid }, signal: 'SIGNAL_SIGKILL' });

export interface EntryInfo { name: string; type: string; path: string; size?: string | number; permissions?: string; owner?: string; modifiedTime?: string; symlinkTarget?: string }
export const listDir = (t: EnvdTarget, path: string) =>
  envdUnary<{ entries?: EntryInfo[] }>(t, 'filesystem.Filesystem/ListDir', { path, depth: 1 }).then((r) => r.entries ?? []);

export const removePath = (t: EnvdTarget, path: string) => envdUnary(t, 'filesystem.Filesystem/Remove', { path });
export const makeDir = (t: EnvdTarget, path: string) => envdUnary(t, 'filesystem.Filesystem/MakeDir', { path });

/** The first `max` bytes of a file (for a preview), and whether there was more. */
export async function readHead(t: EnvdTarget, path: string, max: number): Promise<{ bytes: Uint8Array; truncated: boolean }> {
  const ac = new AbortController();
  const res = await fetch(envdUrl(t, `files?path=${encodeURIComponent(path)}`), { headers: { 'x-access-token': t.token }, signal: ac.signal });
  if (!res.ok || !res.body) throw new ApiError(res.status, envdErrorText(res.status, (await res.text()) || res.statusText));
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  let truncated = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value); n += value.length;
    if (n > max) { truncated = true; ac.abort(); break; }
  }
  const out = new Uint8Array(Math.min(n, max));
  let off = 0;
  for (const p of parts) { if (off >= out.length) break; out.set(p.subarray(0, out.length - off), off); off += p.length; }
  return { bytes: out, truncated };
}

export async function uploadFile(t: EnvdTarget, path: string, data: Blob): Promise<void> {
  const res = await fetch(envdUrl(t, `files?path=${encodeURIComponent(path)}`), {
    method: 'POST', headers: { 'content-type': 'application/octet-stream', 'x-access-token': t.token }, body: data,
  });
  if (!res.ok) throw new ApiError(res.status, `could not upload ${path}: ${envdErrorText(res.status, (await res.text()) || res.statusText)}`);
}

export async function downloadFile(t: EnvdTarget, path: string): Promise<Blob> {
  const res = await fetch(envdUrl(t, `files?path=${encodeURIComponent(path)}`), { headers: { 'x-access-token': t.token } });
  if (!res.ok) throw new ApiError(res.status, `could not download ${path}: ${envdErrorText(res.status, (await res.text()) || res.statusText)}`);
  return res.blob();
}

// ---------- custom templates and their builds (docs/templates.md, "API") ----------

export interface TemplateLayer { key: string; step: string; sizeBytes: number }
export type ReadyCheck = { port: number } | { command: string };
/** GET /templates[/{id}]: the fields custom templates add to Template (absent on an older hearthd). */
export interface TemplateInfo extends Template {
  aliases?: string[]; source?: 'image' | 'build' | 'sandbox' | 'snapshot' | string;
  buildID?: string | null; from?: string | null; envVars?: Record<string, string>;
  user?: string | null; workdir?: string | null; startCommand?: string | null; readyCheck?: ReadyCheck | null;
  layers?: TemplateLayer[];
}
export type BuildStatus = 'building' | 'ready' | 'failed' | 'cancelled';
export type BuildStepStatus = 'pending' | 'cached' | 'running' | 'done' | 'failed' | 'cancelled' | 'skipped';
export interface BuildStep { index: number; description: string; key: string; status: BuildStepStatus; cached: boolean; durationMs: number | null; exitCode: number | null }
export interface TemplateBuild {
  buildID: string; templateID: string; status: BuildStatus; createdAt: string; finishedAt: string | null;
  durationMs: number | null; error: string | null; phase: 'steps' | 'snapshot' | 'done' | string; steps: BuildStep[];
}
/** One line of a build's log; `step` is null for the builder's own lines (`stream: "hearth"`). */
export interface BuildLogEntry { timestamp: string; step: number | null; stream: 'stdout' | 'stderr' | 'hearth' | string; line: string }
/** POST /templates with a recipe (hearth.template.json) or a Dockerfile. */
export interface NewTemplate {
  name: string; recipe?: unknown; dockerfile?: string; files?: Record<string, string>; aliases?: string[];
  cpuCount?: number; memoryMB?: number; diskSizeMB?: number;
}

const tplPath = (id: string) => `/templates/${encodeURIComponent(id)}`;
export const templateApi = {
  list: () => call<TemplateInfo[]>('GET', '/templates'),
  get: (id: string) => call<TemplateInfo>('GET', tplPath(id)),
  /** 409 (with hearthd's reason) while sandboxes, snapshots or other templates use it. */
  delete: (id: string) => call<void>('DELETE', tplPath(id)),
  /** Starts a build: 202 with the build. */
  build: (b: NewTemplate) => call<TemplateBuild>('POST', '/templates', b),
  builds: (id: string) => call<TemplateBuild[]>('GET', `${tplPath(id)}/builds`),
  getBuild: (id: string, buildID: string) => call<TemplateBuild>('GET', `${tplPath(id)}/builds/${encodeURIComponent(buildID)}`),
  cancelBuild: (id: string, buildID: string) => call<void>('DELETE', `${tplPath(id)}/builds/${encodeURIComponent(buildID)}`),
  /** The SSE log stream (entries so far, then each new one; events `log`, `step`, `end`): read it with streamSse (observe.ts). */
  buildLogsPath: (id: string, buildID: string) => `${tplPath(id)}/builds/${encodeURIComponent(buildID)}/logs?follow=true`,
};
