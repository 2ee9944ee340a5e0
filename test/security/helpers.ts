/**
 * Raw-HTTP helpers for the security suite: requests exactly as an attacker
 * writes them (absolute-form targets, dot segments, half-sent heads), which
 * fetch() would normalise away before they left the process. Loopback only.
 */
import net from 'node:net';

export interface RawAnswer { status: number; headers: Record<string, string>; body: string; raw: string }

/** Sends `head` (and `body`) on a fresh connection with `Connection: close`, reads the whole answer. */
export function rawRequest(port: number, method: string, target: string, headers: Record<string, string> = {}, body = ''): Promise<RawAnswer> {
  const lines = [`${method} ${target} HTTP/1.1`, `host: ${headers['host'] ?? `127.0.0.1:${port}`}`, 'connection: close'];
  for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() !== 'host') lines.push(`${k}: ${v}`);
  if (body || method === 'POST' || method === 'PUT') lines.push(`content-length: ${Buffer.byteLength(body)}`);
  return rawExchange(port, `${lines.join('\r\n')}\r\n\r\n${body}`);
}

/** Writes `bytes` as is and parses what comes back before the server closes (10 s at most). */
export function rawExchange(port: number, bytes: string): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no answer to ${JSON.stringify(bytes.slice(0, 80))}`)); }, 10_000);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.on('close', () => { clearTimeout(timer); resolve(parseAnswer(Buffer.concat(chunks).toString('latin1'))); });
    s.write(bytes);
  });
}

export function parseAnswer(raw: string): RawAnswer {
  const end = raw.indexOf('\r\n\r\n');
  const head = end === -1 ? raw : raw.slice(0, end);
  const [statusLine, ...rest] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of rest) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  let body = end === -1 ? '' : raw.slice(end + 4);
  if (headers['transfer-encoding'] === 'chunked') body = dechunk(body);
  return { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '')?.[1] ?? 0), headers, body, raw };
}

function dechunk(s: string): string {
  let out = '';
  let i = 0;
  for (;;) {
    const nl = s.indexOf('\r\n', i);
    if (nl === -1) return out;
    const n = parseInt(s.slice(i, nl), 16);
    if (!Number.isFinite(n) || n === 0) return out;
    out += s.slice(nl + 2, nl + 2 + n);
    i = nl + 2 + n + 2;
  }
}

/** The dot-segment and encoding variants of `/init` an attacker tries (each must be refused). */
export const INIT_VARIANTS = ['/init', '/./init', '/%2e/init', '/%2E/init', '/x/../init', '/x/%2e%2e/init', '/init#frag', '//init', '/%69nit', '/x/.%2e/init', '/init/', '/INIT'];
