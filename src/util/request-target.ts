/**
 * The one canonical form of an HTTP request target, used alike by hearthd (its
 * edge and the envd proxy) and the in-guest agent (which bundles this file
 * and runs it on Node 18, so: no imports, nothing newer than ES2022).
 *
 * Why one function: a proxy that blocks `/init` by comparing one string while
 * the server behind it routes on another (say, WHATWG's `new URL()` pathname,
 * which resolves `.`/`..` and `%2e`) can be walked around with `/./init`,
 * `/%2e/init` or `/x/../init`. Both sides decide on the output of
 * normaliseTarget, and the proxy forwards exactly that output, so there is no
 * second interpretation left to disagree with.
 *
 * The rule (docs/api.md, "Request targets"):
 *  - accepted forms: origin-form `/a/b?q` and absolute-form `http(s)://host[:port]/a?q`
 *    (only the path and query are kept; an empty path means `/`);
 *  - refused: asterisk-form, authority-form, a `#` anywhere, control characters,
 *    spaces or non-ASCII anywhere, and in the path a backslash (raw or `%5C`),
 *    an encoded slash `%2F`, `%00`, a malformed percent escape, or a `..` that
 *    would climb above the root;
 *  - in the path: escapes of unreserved characters (ALPHA, DIGIT, `-._~`) are
 *    decoded, every other escape gets upper-case hex (RFC 3986 §6.2.2.1-2),
 *    characters RFC 3986 does not allow in a path (" < > [ ] ^ { | } and backquote) are
 *    percent-encoded, runs of `/` become one `/`, then `.` and `..` segments
 *    are resolved (RFC 3986 §5.2.4; `%2e` is a dot once decoded);
 *  - the query is kept byte for byte.
 * The result is a fixed point: normalising `path + query` again gives the same.
 */

export type NormalisedTarget =
  | { ok: true; path: string; /** '' or starting with '?' */ query: string }
  | { ok: false; message: string };

/** Agent routes that only hearthd's control path may call; the envd proxy never forwards them. */
export const CONTROL_PLANE_PATHS: ReadonlySet<string> = new Set([
  '/init', '/freeze', '/unfreeze', '/collapse', '/fsfreeze', '/fsthaw', '/upgrade',
]);

/** True for a (normalised) path that is reachable only from hearthd's control path. */
export function isControlPlanePath(path: string): boolean {
  return CONTROL_PLANE_PATHS.has(path);
}

function refuse(message: string): NormalisedTarget {
  return { ok: false, message };
}

function isUnreserved(code: number): boolean {
  return (code >= 0x41 && code <= 0x5a) // A-Z
    || (code >= 0x61 && code <= 0x7a) // a-z
    || (code >= 0x30 && code <= 0x39) // 0-9
    || code === 0x2d || code === 0x2e || code === 0x5f || code === 0x7e; // - . _ ~
}

/** Characters a path may hold literally besides unreserved ones: sub-delims, ':' and '@' (RFC 3986 pchar), and '/'. */
const PATH_LITERAL = "!$&'()*+,;=:@/";

function isHex(code: number): boolean {
  return (code >= 0x30 && code <= 0x39) || (code >= 0x41 && code <= 0x46) || (code >= 0x61 && code <= 0x66);
}

function hexByte(code: number): string {
  return '%' + code.toString(16).toUpperCase().padStart(2, '0');
}

/** `host[:port]` of an absolute-form target: a registered name or IPv4 address, or an IPv6 literal; no user info. */
const AUTHORITY = /^(?:[A-Za-z0-9\-._~!$&'()*+,;=]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?$/;

const ABSOLUTE_FORM = /^(https?):\/\/([^/?]*)(.*)$/i;

/** Escapes canonicalised, other characters checked or encoded; '/' runs not yet collapsed. */
function canonicalEscapes(rawPath: string): { ok: true; path: string } | { ok: false; message: string } {
  let out = '';
  for (let i = 0; i < rawPath.length; i++) {
    const ch = rawPath[i]!;
    const code = ch.charCodeAt(0);
    if (ch === '%') {
      const h1 = rawPath.charCodeAt(i + 1);
      const h2 = rawPath.charCodeAt(i + 2);
      if (!isHex(h1) || !isHex(h2)) {
        return { ok: false, message: `malformed percent escape '${rawPath.slice(i, i + 3)}' in the path` };
      }
      const byte = parseInt(rawPath.slice(i + 1, i + 3), 16);
      if (byte === 0x2f) return { ok: false, message: 'an encoded slash (%2F) is not allowed in the path' };
      if (byte === 0x5c) return { ok: false, message: 'an encoded backslash (%5C) is not allowed in the path' };
      if (byte === 0x00) return { ok: false, message: 'an encoded NUL (%00) is not allowed in the path' };
      out += isUnreserved(byte) ? String.fromCharCode(byte) : hexByte(byte);
      i += 2;
    } else if (ch === '\\') {
      return { ok: false, message: 'a backslash is not allowed in the path' };
    } else if (isUnreserved(code) || PATH_LITERAL.includes(ch)) {
      out += ch;
    } else {
      out += hexByte(code); // printable ASCII a path may not hold literally: " < > [ ] ^ ` { | }
    }
  }
  return { ok: true, path: out };
}

/**
 * RFC 3986 §5.2.4 on a path that starts with '/' and has no empty segment
 * except possibly the last; null when a `..` would climb above the root.
 */
function resolveDots(path: string): string | null {
  const segments = path.slice(1).split('/');
  const out: string[] = [];
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '.') {
      if (last) out.push('');
    } else if (seg === '..') {
      if (out.length === 0) return null;
      out.pop();
      if (last) out.push('');
    } else {
      out.push(seg);
    }
  }
  return '/' + out.join('/');
}

/** The canonical path and query of a request target, or why it is refused (see the module comment). */
export function normaliseTarget(raw: string): NormalisedTarget {
  if (typeof raw !== 'string' || raw.length === 0) return refuse('empty request target');
  for (let i = 0; i < raw.length; i++) {
    const code = raw.charCodeAt(i);
    if (code <= 0x1f || code === 0x7f) return refuse(`control character ${hexByte(code)} in the request target`);
    if (code === 0x20) return refuse('space in the request target');
    if (code > 0x7f) return refuse('non-ASCII character in the request target (percent-encode it)');
  }
  if (raw.includes('#')) return refuse('a fragment (#) is not allowed in a request target');

  let rest: string;
  if (raw.startsWith('/')) {
    rest = raw;
  } else if (raw === '*') {
    return refuse('asterisk-form request target (*) is not accepted');
  } else {
    const m = ABSOLUTE_FORM.exec(raw);
    if (!m) return refuse('request target must be origin-form (/path) or absolute-form (http://host/path)');
    if (!AUTHORITY.test(m[2]!)) return refuse(`invalid authority '${m[2]}' in an absolute-form request target`);
    rest = m[3]!;
    if (!rest.startsWith('/')) rest = '/' + rest; // empty path (possibly followed by a query) means '/'
  }

  const q = rest.indexOf('?');
  const rawPath = q === -1 ? rest : rest.slice(0, q);
  const query = q === -1 ? '' : rest.slice(q);

  const escaped = canonicalEscapes(rawPath);
  if (!escaped.ok) return escaped;
  const resolved = resolveDots(escaped.path.replace(/\/{2,}/g, '/'));
  if (resolved === null) return refuse("'..' would climb above the root of the path");
  return { ok: true, path: resolved, query };
}
