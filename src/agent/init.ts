import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { headerValue, safeEqual } from './auth.js';
import { BodyTooLargeError, readBody, sendError, sendJson } from './http-util.js';
import { errorMessage, log } from './log.js';
import { ENVD_VERSION, HEADER_ACCESS_TOKEN, UNAUTHORIZED_MESSAGE, type InitRequestBody } from './protocol.js';
import type { AgentState } from './state.js';
import type { SysHelper } from './sys-helper.js';
import { lookupUser } from './users.js';

/** The guest clock is set from `/init` only when it is off by more than this. */
export const CLOCK_DRIFT_TOLERANCE_MS = 50;
const MAX_INIT_BODY = 16 * 1024 * 1024;

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

class InitInputError extends Error {}

interface ParsedInit {
  accessToken?: string | null;
  envVars?: Record<string, string>;
  defaultUser?: string;
  defaultWorkdir?: string | null;
  timestampMs?: number;
  sandboxId?: string;
  entropy?: Buffer;
}

/** Validates the body before anything is applied, so a 400 leaves the state untouched. */
function parseInit(raw: unknown): ParsedInit {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new InitInputError('body must be a JSON object');
  const b = raw as InitRequestBody & Record<string, unknown>;
  const out: ParsedInit = {};
  if (b.accessToken !== undefined && b.accessToken !== null) {
    if (typeof b.accessToken !== 'string') throw new InitInputError('accessToken must be a string');
    out.accessToken = b.accessToken === '' ? null : b.accessToken;
  }
  if (b.envVars !== undefined && b.envVars !== null) {
    if (typeof b.envVars !== 'object' || Array.isArray(b.envVars)) throw new InitInputError('envVars must be an object');
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(b.envVars)) {
      if (typeof v !== 'string') throw new InitInputError(`envVars.${k} must be a string`);
      if (k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')) {
        throw new InitInputError(`invalid environment variable '${k}'`);
      }
      env[k] = v;
    }
    out.envVars = env;
  }
  if (b.defaultUser !== undefined && b.defaultUser !== null && b.defaultUser !== '') {
    if (typeof b.defaultUser !== 'string') throw new InitInputError('defaultUser must be a string');
    if (!lookupUser(b.defaultUser)) throw new InitInputError(`default user '${b.defaultUser}' does not exist`);
    out.defaultUser = b.defaultUser;
  }
  if (b.defaultWorkdir !== undefined && b.defaultWorkdir !== null) {
    if (typeof b.defaultWorkdir !== 'string') throw new InitInputError('defaultWorkdir must be a string');
    out.defaultWorkdir = b.defaultWorkdir === '' ? null : b.defaultWorkdir;
  }
  if (b.timestamp !== undefined && b.timestamp !== null) {
    const ms = typeof b.timestamp === 'string' ? Date.parse(b.timestamp) : NaN;
    if (!Number.isFinite(ms)) throw new InitInputError('timestamp must be an RFC 3339 date-time');
    out.timestampMs = ms;
  }
  const h = b.hearth;
  if (h !== undefined && h !== null && typeof h === 'object') {
    if (typeof h.sandboxId === 'string') out.sandboxId = h.sandboxId;
    if (typeof h.entropy === 'string' && h.entropy !== '') out.entropy = Buffer.from(h.entropy, 'base64');
  }
  return out;
}

/**
 * Fallback when the sys helper (sys-helper.ts) is not running: ioctl(RNDRESEEDCRNG) on
 * /dev/urandom. Node has no ioctl; perl (perl-base is
 * Essential in Debian, so every image has it) does. 0x5207 = _IO('R', 0x07).
 */
function reseedCrng(): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('perl', ['-e', 'open(my $f, "<", "/dev/urandom") or die "open: $!"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!";'], { timeout: 5000 }, (err, _o, stderr) => {
      if (err) reject(new Error(`reseed failed: ${String(stderr).trim() || err.message}`));
      else resolve();
    });
  });
}

function setClock(dateBin: string, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(dateBin, ['-s', `@${(ms / 1000).toFixed(3)}`], { timeout: 5000 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`${dateBin} -s failed: ${String(stderr).trim() || err.message}`));
      else resolve();
    });
  });
}

/**
 * `POST /init`: sandbox env, access token, default user/workdir, clock, and Hearth's extension
 * (sandbox id, entropy). Calls are serialized. Once a token is set, every call must present it
 * in X-Access-Token (constant-time compare), whatever the body; only the first call after a cold
 * boot, with no token yet, is accepted without one. The server's token gate checks this too;
 * the check here runs under the lock, so a tokenless call that passed the gate while the first
 * /init was still applying is refused once that /init has set the token.
 */
export function createInitHandler(state: AgentState, sys?: SysHelper): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  let lock: Promise<void> = Promise.resolve();

  const apply = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (state.accessToken !== undefined) {
      const presented = headerValue(req, HEADER_ACCESS_TOKEN);
      if (presented === undefined || !safeEqual(presented, state.accessToken)) {
        return sendJson(res, 401, { code: 401, message: UNAUTHORIZED_MESSAGE });
      }
    }
    let raw: unknown = {};
    try {
      const body = await readBody(req, MAX_INIT_BODY);
      if (body.length > 0) raw = JSON.parse(body.toString('utf8'));
    } catch (e) {
      if (e instanceof BodyTooLargeError) return sendText(res, 400, e.message);
      return sendText(res, 400, `invalid JSON body: ${errorMessage(e)}`);
    }
    let p: ParsedInit;
    try {
      p = parseInit(raw);
    } catch (e) {
      return sendText(res, 400, errorMessage(e));
    }

    // The caller presented the current token (checked above), so it may replace or clear it.
    if (p.accessToken !== undefined) state.accessToken = p.accessToken ?? undefined;
    if (p.envVars) state.envVars = p.envVars;
    if (p.defaultUser) state.defaultUser = p.defaultUser;
    if (p.defaultWorkdir !== undefined) state.defaultWorkdir = p.defaultWorkdir ?? undefined;
    if (p.sandboxId !== undefined) state.sandboxId = p.sandboxId;

    if (p.timestampMs !== undefined && p.timestampMs > state.lastTimestampMs) {
      state.lastTimestampMs = p.timestampMs;
      const drift = Math.abs(Date.now() - p.timestampMs);
      // The running sys helper sets it with clock_settime; spawning `date` is the fallback
      // (hundreds of milliseconds under software emulation).
      if (drift > CLOCK_DRIFT_TOLERANCE_MS && (sys?.available || state.config.dateBin !== '')) {
        try {
          const viaHelper = sys?.available ? await sys.setClock(p.timestampMs).then(() => true, (e: unknown) => {
            log.warn('sys helper could not set the clock', { error: errorMessage(e) });
            return false;
          }) : false;
          if (!viaHelper && state.config.dateBin !== '') await setClock(state.config.dateBin, p.timestampMs);
          log.info('clock set from /init', { driftMs: drift, viaHelper });
        } catch (e) {
          log.warn('cannot set clock', { error: errorMessage(e) });
        }
      }
    }
    if (p.entropy && p.entropy.length > 0) {
      try {
        // Writing only mixes the bytes into the input pool; the CRNG that /dev/urandom and
        // getrandom() read from keeps its state (cloned with the snapshot) until its next
        // reseed, up to a minute later. RNDRESEEDCRNG forces that reseed now: the sys helper
        // does both in one request; without it, a write here and perl for the ioctl.
        const real = state.config.urandomPath === '/dev/urandom';
        const viaHelper = real && sys?.available ? await sys.seed(p.entropy).then(() => true, (e: unknown) => {
          log.warn('sys helper could not seed the CRNG', { error: errorMessage(e) });
          return false;
        }) : false;
        if (!viaHelper) {
          await fsp.writeFile(state.config.urandomPath, p.entropy, { flag: 'a' });
          if (real) await reseedCrng();
        }
      } catch (e) {
        log.warn('cannot write entropy or reseed the CRNG', { path: state.config.urandomPath, error: errorMessage(e) });
      }
    }
    log.info('init', {
      sandboxId: state.sandboxId,
      envVars: Object.keys(state.envVars).length,
      token: state.accessToken !== undefined,
      defaultUser: state.defaultUser,
    });
    res.writeHead(204, { 'X-Envd-Version': ENVD_VERSION, 'Cache-Control': 'no-store' });
    res.end();
  };

  return (req, res) => {
    const run = lock.then(() => apply(req, res));
    lock = run.catch(() => undefined);
    return run.catch((e) => {
      log.error('/init failed', { error: errorMessage(e) });
      sendError(res, 500, errorMessage(e));
    });
  };
}
