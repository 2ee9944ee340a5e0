/**
 * One API over many nodes (docs/cluster.md, "Forwarding"): requests for a
 * sandbox another node owns are streamed to that node (both ways, WebSocket
 * upgrades included) with the node credential; creates are placed; the list is
 * gathered from every up node.
 */
import { request as httpRequest, type IncomingMessage, type ServerResponse, type IncomingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import { NODE_HEADER } from './credential.js';
import type { NodeInfo, Placement } from './types.js';

/** Hop-by-hop headers are not forwarded (RFC 9110 §7.6.1); `host` is kept (host-form port traffic needs it). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']);

/** The sandbox an API path names (`/sandboxes/<id>…`, `/v2/sandboxes/<id>…`), if any. */
export function sandboxOfApiPath(url: string): string | null {
  const m = /^\/(?:v2\/)?sandboxes\/([a-z0-9]{1,64})(?=[/?]|$)/.exec(url);
  return m ? m[1]! : null;
}

function endJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) { res.destroy(); return; }
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

/** The answer for a sandbox whose node is down: its state is unknown, never "not found". */
export function unknownBody(p: Placement, node: NodeInfo): Record<string, unknown> {
  return {
    code: 503, error_code: 'unavailable', sandboxID: p.sandboxId, node: node.id, state: 'unknown', lastKnownState: p.lastKnownState,
    message: `sandbox ${p.sandboxId} is on node ${node.id}, which is down (last heartbeat ${node.heartbeatAt}); its state is unknown until the node returns`,
  };
}

/**
 * Streams `req` to `address` (a node's base URL) and the answer back. The body
 * is piped as it arrives (backpressure both ways); if the node breaks mid-answer,
 * the client's connection is destroyed, not ended cleanly.
 */
export function forwardHttp(req: IncomingMessage, res: ServerResponse, address: string, path: string, headers: Record<string, string | string[]>, body?: Buffer): void {
  const u = new URL(address);
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k)) out[k] = v;
  if (body) { delete out['transfer-encoding']; out['content-length'] = String(body.length); } else if (req.headers['transfer-encoding']) out['transfer-encoding'] = req.headers['transfer-encoding'];
  const up = httpRequest({ host: u.hostname, port: u.port || 80, method: req.method, path, headers: out });
  up.on('response', (upRes) => {
    const back: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) back[k] = v;
    res.writeHead(upRes.statusCode ?? 502, back);
    res.flushHeaders();
    upRes.pipe(res);
    upRes.on('aborted', () => res.destroy());
    upRes.on('error', () => res.destroy());
  });
  up.on('error', (err) => {
    if (res.headersSent) { res.destroy(); return; }
    endJson(res, 502, { code: 502, error_code: 'host_failure', message: `forwarding to node ${address} failed: ${err.message}` });
  });
  res.on('close', () => { if (!res.writableFinished) up.destroy(); });
  if (body) up.end(body); else req.pipe(up);
}

/** Forwards a WebSocket (or any) upgrade to `address` and splices the two sockets once it answers 101. */
export function forwardUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, address: string, headers: Record<string, string | string[]>): void {
  const u = new URL(address);
  const out: Record<string, string | string[]> = { ...headers, connection: 'Upgrade' };
  if (req.headers.upgrade) out['upgrade'] = req.headers.upgrade;
  const up = httpRequest({ host: u.hostname, port: u.port || 80, method: req.method, path: req.url, headers: out });
  up.on('upgrade', (upRes, upSocket, upHead) => {
    const lines = [`HTTP/1.1 ${upRes.statusCode ?? 101} ${upRes.statusMessage ?? 'Switching Protocols'}`];
    for (let i = 0; i < upRes.rawHeaders.length; i += 2) lines.push(`${upRes.rawHeaders[i]}: ${upRes.rawHeaders[i + 1]}`);
    socket.write(lines.join('\r\n') + '\r\n\r\n');
    if (upHead.length) socket.write(upHead);
    if (head.length) upSocket.write(head);
    upSocket.pipe(socket);
    socket.pipe(upSocket);
    upSocket.on('error', () => socket.destroy());
    socket.on('error', () => upSocket.destroy());
    upSocket.on('close', () => socket.destroy());
    socket.on('close', () => upSocket.destroy());
  });
  up.on('response', (upRes) => {
    // Refused upgrade: relay the answer as is, then close.
    const lines = [`HTTP/1.1 ${upRes.statusCode ?? 502} ${upRes.statusMessage ?? ''}`];
    for (let i = 0; i < upRes.rawHeaders.length; i += 2) {
      const k = upRes.rawHeaders[i]!.toLowerCase();
      if (k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') lines.push(`${upRes.rawHeaders[i]}: ${upRes.rawHeaders[i + 1]}`);
    }
    lines.push('connection: close');
    socket.write(lines.join('\r\n') + '\r\n\r\n');
    upRes.pipe(socket);
  });
  up.on('error', (err) => {
    const body = JSON.stringify({ code: 502, error_code: 'host_failure', message: `forwarding to node ${address} failed: ${err.message}` });
    socket.end(`HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
  up.end();
}

/** GET `path` on a node with `headers`, JSON back (the list fan-out). */
export function fetchJson(address: string, path: string, headers: IncomingHttpHeaders | Record<string, string | string[]>, timeoutMs: number): Promise<{ status: number; body: unknown; headers: IncomingHttpHeaders }> {
  return requestJson(address, 'GET', path, headers, timeoutMs);
}

/**
 * One request to a node, its JSON answer back (null when it has no body, as a
 * 204), with its headers. The client's content headers are not sent; a `json`
 * body goes with its own.
 */
export function requestJson(address: string, method: string, path: string, headers: IncomingHttpHeaders | Record<string, string | string[]>, timeoutMs: number, json?: string): Promise<{ status: number; body: unknown; headers: IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const u = new URL(address);
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k) && k !== 'content-type' && k !== 'content-length') out[k] = v;
    if (json !== undefined) { out['content-type'] = 'application/json'; out['content-length'] = String(Buffer.byteLength(json)); }
    const r = httpRequest({ host: u.hostname, port: u.port || 80, method, path, headers: { ...out, connection: 'close' }, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        try { resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) as unknown : null, headers: res.headers }); } catch (err) { reject(err instanceof Error ? err : new Error(String(err))); }
      });
      res.on('error', reject);
    });
    r.on('timeout', () => r.destroy(new Error(`node ${address} did not answer within ${timeoutMs} ms`)));
    r.on('error', reject);
    r.end(json);
  });
}

/** A list item for a sandbox on a down node (its details live there; the placement is all the cluster knows). */
export function unknownListItem(p: Placement): Record<string, unknown> {
  return {
    sandboxID: p.sandboxId, templateID: p.templateId, state: 'unknown', lastKnownState: p.lastKnownState, node: p.nodeId, cpuCount: p.vcpus, memoryMB: p.memoryMib,
    metadata: p.metadata, createdAt: p.createdAt, startedAt: p.createdAt, endAt: null, endedAt: null, endReason: null, domain: null,
  };
}

export { NODE_HEADER };
