import { constants as C, createReadStream, promises as fsp } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import busboy from 'busboy';
import { checkFilesAccess } from './auth.js';
import { ensureDirs } from './fs-util.js';
import { sendError, sendJson } from './http-util.js';
import { errorMessage, log } from './log.js';
import { PathError, expandAndResolve } from './paths.js';
import { HEADER_METADATA_PREFIX } from './protocol.js';
import type { AgentState } from './state.js';
import { lookupUser, type UserInfo } from './users.js';
import { writeMetadata, xattrTools } from './xattr.js';

/** gzip level for downloads: the agent runs in a small VM, so favour speed over ratio. */
const DOWNLOAD_GZIP_LEVEL = 1;
/**
 * gzip output chunk size. With zlib's default 16 KiB, undici's fetch (Node 20) consuming the stream
 * showed 1–15 s outliers for 50 MB on loopback; 64 KiB chunks were consistently ~1.3 s.
 */
const DOWNLOAD_GZIP_CHUNK = 64 * 1024;
/** A multipart `file` part without a filename arrives as a form field and is buffered; cap it. */
const MAX_FIELD_FILE_BYTES = 32 * 1024 * 1024;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const MIME: Record<string, string> = {
  '.txt': 'text/plain; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.xml': 'text/xml; charset=utf-8',
  '.csv': 'text/csv; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.avif': 'image/avif',
  '.ico': 'image/vnd.microsoft.icon',
  '.pdf': 'application/pdf',
  '.zip': 'application/zip',
  '.gz': 'application/gzip',
  '.tar': 'application/x-tar',
  '.wasm': 'application/wasm',
  '.mp3': 'audio/mpeg',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
};

function contentTypeFor(p: string): string {
  return MIME[path.extname(p).toLowerCase()] ?? 'application/octet-stream';
}

/** `inline; filename=...` (RFC 6266; non-ASCII names via filename*). */
function contentDisposition(name: string): string {
  if (/^[\x20-\x7e]*$/.test(name) && !/["\\]/.test(name)) return `inline; filename="${name}"`;
  return `inline; filename*=utf-8''${encodeURIComponent(name)}`;
}

/** Parses Accept-Encoding into coding → q. */
function parseAcceptEncoding(header: string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  if (!header) return out;
  for (const part of header.split(',')) {
    const [coding, ...params] = part.trim().split(';');
    if (!coding) continue;
    let q = 1;
    for (const p of params) {
      const m = /^\s*q\s*=\s*([0-9.]+)\s*$/i.exec(p);
      if (m) q = Number(m[1]);
    }
    out.set(coding.trim().toLowerCase(), Number.isFinite(q) ? q : 0);
  }
  return out;
}

/** Identity is acceptable unless excluded by `identity;q=0` or `*;q=0` (without an explicit identity). */
function identityAcceptable(acc: Map<string, number>): boolean {
  const q = acc.get('identity') ?? (acc.get('*') === 0 ? 0 : 1);
  return q > 0;
}

/** gzip if the client accepts it (envd's preference), else identity; null when neither is acceptable (406). */
export function negotiateEncoding(header: string | undefined): 'gzip' | 'identity' | null {
  const acc = parseAcceptEncoding(header);
  const gzipQ = acc.get('gzip') ?? acc.get('x-gzip') ?? acc.get('*') ?? 0;
  if (gzipQ > 0) return 'gzip';
  return identityAcceptable(acc) ? 'identity' : null;
}

function resolveFilesUser(state: AgentState, query: URLSearchParams): UserInfo {
  const name = query.get('username') || state.defaultUser;
  const user = lookupUser(name);
  if (!user) throw new HttpError(401, `error looking up user '${name}': user: unknown user ${name}`);
  return user;
}

function resolveFilesPath(p: string, user: UserInfo, state: AgentState): string {
  try {
    return expandAndResolve(p, user, state.defaultWorkdir);
  } catch (e) {
    if (e instanceof PathError) throw new HttpError(400, e.message);
    throw e;
  }
}

function parseRange(header: string, size: number): { start: number; end: number } | 'invalid' | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined; // unsupported form (e.g. multi-range): send everything
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'invalid';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return 'invalid';
  return { start, end };
}

/** `GET /files`: streams a file (gzip when accepted; single byte ranges on identity responses). */
export async function handleDownload(
  req: IncomingMessage,
  res: ServerResponse,
  query: URLSearchParams,
  state: AgentState,
): Promise<void> {
  const denied = checkFilesAccess(req, query, 'read', state.accessToken);
  if (denied) return sendError(res, 401, denied);
  try {
    const user = resolveFilesUser(state, query);
    const file = resolveFilesPath(query.get('path') ?? '', user, state);
    let st;
    try {
      st = await fsp.stat(file);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new HttpError(404, `path '${file}' does not exist`);
      throw e;
    }
    if (st.isDirectory()) throw new HttpError(400, `path '${file}' is a directory`);

    const rangeHeader = req.headers.range;
    let encoding = negotiateEncoding(req.headers['accept-encoding']);
    if (encoding === null) throw new HttpError(406, 'no acceptable content encoding (supported: gzip, identity)');
    const identityOk = identityAcceptable(parseAcceptEncoding(req.headers['accept-encoding']));
    // Empty files and range requests are served as identity when the client allows it.
    if (encoding === 'gzip' && (st.size === 0 || rangeHeader) && identityOk) encoding = 'identity';

    const headers: Record<string, string | number> = {
      'Content-Type': contentTypeFor(file),
      'Content-Disposition': contentDisposition(path.basename(file)),
      'Last-Modified': st.mtime.toUTCString(),
      'Cache-Control': 'no-store',
    };
    const head = req.method === 'HEAD';

    if (encoding === 'gzip') {
      headers['Content-Encoding'] = 'gzip';
      headers['Vary'] = 'Accept-Encoding';
      res.writeHead(200, headers);
      if (head) return void res.end();
      await pipeline(createReadStream(file), zlib.createGzip({ level: DOWNLOAD_GZIP_LEVEL, chunkSize: DOWNLOAD_GZIP_CHUNK }), res);
      return;
    }

    headers['Accept-Ranges'] = 'bytes';
    let start = 0;
    let end = st.size - 1;
    let status = 200;
    if (rangeHeader && st.size > 0) {
      const r = parseRange(rangeHeader, st.size);
      if (r === 'invalid') {
        res.writeHead(416, { 'Content-Range': `bytes */${st.size}` });
        return void res.end();
      }
      if (r) {
        start = r.start;
        end = r.end;
        status = 206;
        headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
      }
    }
    headers['Content-Length'] = st.size === 0 ? 0 : end - start + 1;
    res.writeHead(status, headers);
    if (head || st.size === 0) return void res.end();
    await pipeline(createReadStream(file, { start, end }), res);
  } catch (e) {
    if (e instanceof HttpError) return sendError(res, e.status, e.message);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    log.warn('download failed', { error: errorMessage(e) });
    sendError(res, 500, errorMessage(e));
  }
}

/** `X-Metadata-<key>` headers → metadata map (first value wins); invalid ones are a 400. */
function parseMetadataHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  let total = 0;
  const distinct = (req as IncomingMessage & { headersDistinct?: Record<string, string[]> }).headersDistinct;
  const raw = req.rawHeaders;
  const seen = new Set<string>();
  const entries: Array<[string, string]> = [];
  if (distinct) {
    for (const [name, values] of Object.entries(distinct)) entries.push([name, values[0] ?? '']);
  } else {
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      if (seen.has(name)) continue;
      seen.add(name);
      entries.push([name, raw[i + 1]!]);
    }
  }
  for (const [name, value] of entries) {
    if (!name.startsWith(HEADER_METADATA_PREFIX)) continue;
    const key = name.slice(HEADER_METADATA_PREFIX.length);
    const printable = /^[\x20-\x7e]*$/;
    if (key === '' || !printable.test(key) || !printable.test(value)) {
      throw new HttpError(400, `invalid metadata header '${name}': keys and values must be printable ASCII`);
    }
    if (Buffer.byteLength(key) > 246) throw new HttpError(400, `metadata key '${key}' is longer than 246 bytes`);
    total += Buffer.byteLength(key) + Buffer.byteLength(value);
    if (total > 4096) throw new HttpError(400, 'metadata is larger than 4096 bytes');
    out[key] = value;
  }
  return out;
}

interface UploadResult {
  path: string;
  name: string;
  type: 'file';
  metadata?: Record<string, string>;
}

function mapWriteError(e: unknown, file: string): HttpError | unknown {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return new HttpError(507, 'not enough disk space available');
  if (code === 'EISDIR') return new HttpError(400, `path '${file}' is a directory`);
  if (code === 'ENOTDIR') return new HttpError(400, `a parent of path '${file}' is not a directory`);
  return e;
}

/** Streams `source` into `file` (mkdir -p parents chowned to the user; O_TRUNC; mode 0666 & ~umask). */
async function writeUpload(
  file: string,
  source: Readable,
  user: UserInfo,
  metadata: Record<string, string>,
): Promise<UploadResult> {
  try {
    await ensureDirs(path.dirname(file), user.uid, user.gid);
    let existed = true;
    try {
      await fsp.lstat(file);
    } catch {
      existed = false;
    }
    const fh = await fsp.open(file, C.O_WRONLY | C.O_CREAT | C.O_TRUNC, 0o666);
    try {
      if (process.getuid?.() === 0) await fh.chown(user.uid, user.gid);
    } catch (e) {
      await fh.close();
      throw e;
    }
    // The write stream owns the handle from here and closes it on finish or error.
    await pipeline(source, fh.createWriteStream());
    const result: UploadResult = { path: file, name: path.basename(file), type: 'file' };
    const hasMetadata = Object.keys(metadata).length > 0;
    if (xattrTools() && (hasMetadata || existed)) {
      const ok = await writeMetadata(file, metadata, existed);
      if (ok && hasMetadata) result.metadata = metadata;
    }
    return result;
  } catch (e) {
    source.resume();
    throw mapWriteError(e, file);
  }
}

/** How much of a refused upload's body is read and dropped before the connection is cut. */
const UPLOAD_DRAIN_LIMIT = 8 << 20;

/** `POST /files`: multipart (every `file` part) or raw octet-stream body, optionally gzip-encoded. */
export async function handleUpload(
  req: IncomingMessage,
  res: ServerResponse,
  query: URLSearchParams,
  state: AgentState,
): Promise<void> {
  let responded = false;
  const fail = (e: unknown) => {
    if (responded) return;
    responded = true;
    const status = e instanceof HttpError ? e.status : 500;
    if (!(e instanceof HttpError)) log.warn('upload failed', { error: errorMessage(e) });
    let sent = false;
    const answer = (thenDestroy: boolean): void => {
      if (sent) return;
      sent = true;
      clearTimeout(timer);
      sendError(res, status, errorMessage(e), { Connection: 'close' });
      if (thenDestroy) res.once('finish', () => req.destroy());
    };
    // Read (and drop) what the client is still sending, within bounds, so it reads this
    // answer instead of a connection reset; past the bounds, answer and cut the connection.
    const timer = setTimeout(() => answer(true), 2000);
    if (req.complete || req.readableEnded) { answer(false); return; }
    let drained = 0;
    req.on('data', (chunk: Buffer) => { drained += chunk.length; if (drained > UPLOAD_DRAIN_LIMIT) answer(true); });
    req.once('end', () => answer(false));
    req.once('error', () => answer(true));
    req.resume();
  };

  const denied = checkFilesAccess(req, query, 'write', state.accessToken);
  if (denied) return fail(new HttpError(401, denied));

  let user: UserInfo;
  let metadata: Record<string, string>;
  let body: Readable = req;
  try {
    user = resolveFilesUser(state, query);
    metadata = parseMetadataHeaders(req);
    const enc = (req.headers['content-encoding'] ?? '').trim().toLowerCase();
    if (enc === 'gzip' || enc === 'x-gzip') {
      const gunzip = zlib.createGunzip();
      req.on('error', (e) => gunzip.destroy(e));
      body = req.pipe(gunzip);
    } else if (enc !== '' && enc !== 'identity') {
      throw new HttpError(400, `unsupported Content-Encoding '${enc}'`);
    }
  } catch (e) {
    return fail(e);
  }

  const queryPath = query.get('path');
  const contentType = (req.headers['content-type'] ?? '').toLowerCase();

  if (!contentType.startsWith('multipart/form-data')) {
    if (queryPath === null || queryPath === '') return fail(new HttpError(400, 'missing path query parameter for octet-stream upload'));
    try {
      const file = resolveFilesPath(queryPath, user, state);
      const result = await writeUpload(file, body, user, metadata);
      responded = true;
      sendJson(res, 200, [result]);
    } catch (e) {
      fail(e instanceof Error && 'code' in e && (e as NodeJS.ErrnoException).code === 'Z_DATA_ERROR' ? new HttpError(400, `invalid gzip body: ${e.message}`) : e);
    }
    return;
  }

  let bb: busboy.Busboy;
  try {
    bb = busboy({
      headers: req.headers,
      preservePath: true,
      defParamCharset: 'utf8',
      limits: { fieldSize: MAX_FIELD_FILE_BYTES },
    });
  } catch (e) {
    return fail(new HttpError(400, `invalid multipart request: ${errorMessage(e)}`));
  }

  const targets = new Set<string>();
  const tasks: Array<Promise<UploadResult>> = [];
  const addTask = (name: string | undefined, source: Readable): void => {
    const raw = queryPath || name;
    if (!raw) {
      source.resume();
      throw new HttpError(400, 'file part has no filename and no path query parameter was given');
    }
    const file = resolveFilesPath(raw, user, state);
    if (targets.has(file)) {
      source.resume();
      throw new HttpError(400, `multiple files resolve to the same path '${file}'`);
    }
    targets.add(file);
    const t = writeUpload(file, source, user, metadata);
    t.catch(fail);
    tasks.push(t);
  };

  bb.on('file', (name, stream, info) => {
    if (responded || name !== 'file') {
      stream.resume();
      return;
    }
    try {
      addTask(info.filename, stream);
    } catch (e) {
      fail(e);
    }
  });
  bb.on('field', (name, value, info) => {
    if (responded || name !== 'file') return;
    try {
      if (info.valueTruncated) throw new HttpError(400, `form field 'file' without filename is larger than ${MAX_FIELD_FILE_BYTES} bytes`);
      addTask(undefined, Readable.from([Buffer.from(value, 'utf8')]));
    } catch (e) {
      fail(e);
    }
  });
  bb.on('error', (e) => fail(new HttpError(400, `invalid multipart body: ${errorMessage(e)}`)));
  bb.on('close', () => {
    void Promise.all(tasks).then(
      (results) => {
        if (responded) return;
        if (results.length === 0) return fail(new HttpError(400, "no 'file' parts in multipart body"));
        responded = true;
        sendJson(res, 200, results);
      },
      () => undefined, // already reported through fail()
    );
  });
  body.on('error', (e) => {
    fail((e as NodeJS.ErrnoException).code?.startsWith('Z_') ? new HttpError(400, `invalid gzip body: ${e.message}`) : e);
    bb.destroy();
  });
  body.pipe(bb);
}
