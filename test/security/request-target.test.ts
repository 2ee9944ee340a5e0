// The one request-target normaliser (src/util/request-target.ts) and the envd proxy's decision on it:
// walk-arounds of the control-plane block (dot segments, %2e, fragments, `//`), the accepted forms,
// and a property-based fuzz against WHATWG URL parsing (what the agent used to route on).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { CONTROL_PLANE_PATHS, isControlPlanePath, normaliseTarget } from '../../src/util/request-target.js';
import { proxyTargetOf } from '../../src/api/proxy.js';
import { AGENT_PORT, PATH_ENVS, PATH_FILES, PATH_HEALTH, PATH_INIT, PATH_METRICS } from '../../src/agent/protocol.js';

const SBX = 'sbx0123';

type Decision = { kind: 'reject'; message: string } | { kind: 'blocked'; path: string } | { kind: 'forward'; target: string };

/** What hearthd's envd proxy does with a target: refuse (400), block (404), or forward this exact string. */
function proxyDecision(url: string, headers: Record<string, string> = {}): Decision {
  const t = proxyTargetOf(url, headers);
  assert.ok(t, `${url} is envd traffic`);
  assert.equal(t.sandboxId, SBX);
  if (t.invalid !== undefined) return { kind: 'reject', message: t.invalid };
  // proxyToSandbox normalises again and decides on that (idempotent, so the same).
  const n = normaliseTarget(t.path);
  assert.ok(n.ok, `proxyTargetOf gave a canonical target: ${t.path}`);
  assert.equal(n.path + n.query, t.path);
  return isControlPlanePath(n.path) ? { kind: 'blocked', path: n.path } : { kind: 'forward', target: t.path };
}

const pathForm = (envdTarget: string): Decision => proxyDecision(`/sandboxes/${SBX}/envd${envdTarget}`);
const headerForm = (envdTarget: string): Decision => proxyDecision(envdTarget, { 'e2b-sandbox-id': SBX });

/** The route the agent (src/agent/server.ts) takes for a target it receives. */
function agentRoute(target: string): string {
  const n = normaliseTarget(target);
  if (!n.ok) return 'reject';
  // The agent builds its URL by concatenation; the pathname must be the path it routes on.
  assert.equal(new URL('http://agent' + n.path + n.query).pathname, n.path, `URL keeps ${n.path}`);
  const known = [PATH_HEALTH, PATH_FILES, PATH_INIT, PATH_ENVS, PATH_METRICS, ...CONTROL_PLANE_PATHS];
  return known.includes(n.path) ? n.path : 'connect';
}

/** Percent-decodes escapes of unreserved characters only (RFC 3986 §6.2.2.2), as the normaliser does. */
function decodeUnreserved(s: string): string {
  return s.replace(/%([0-9A-Fa-f]{2})/g, (all, hex: string) => {
    const c = String.fromCharCode(parseInt(hex, 16));
    return /[A-Za-z0-9\-._~]/.test(c) ? c : all;
  });
}

describe('normaliseTarget', () => {
  // Every way around the old raw-string check of `/init`.
  const attacks = [
    '/./init', '/%2e/init', '/%2E/init', '/x/../init', '/x/%2e%2e/init', '/x/%2E%2E/init', '/x/.%2e/init', '/x/%2e./init',
    '/init#frag', '/init#', '/%2e/init#frag', '//init', '///init', '/x/..//init', '/x//../init', '/%69nit', '/in%69t', '/ini%74',
    '/init?x=1', '/./init?accessToken=x', '/x/y/../../init', '/freeze', '/./unfreeze', '/x/../collapse', '/%66sfreeze', '/y/./../fsthaw',
    '/upgrade', '/%2e%2e/init', '/../init', '/x/../../init', '/init%2f', '/x%2f..%2finit', '/x\\..\\init', '/x/%5c../init', '/x/%5C../init',
    '/init%00', '/in\tit', '/in it', '/in%zzit', '/init%', '/init%2',
  ];

  test('attack strings are refused or blocked, never forwarded, the same in path and header form', () => {
    for (const a of attacks) {
      const p = pathForm(a);
      const h = headerForm(a);
      assert.notEqual(p.kind, 'forward', `path form forwards ${JSON.stringify(a)}: ${JSON.stringify(p)}`);
      assert.deepEqual(p, h, `path and header form decide the same for ${JSON.stringify(a)}`);
    }
    // A trailing slash is another path: forwarded, and the agent does not route it to /init.
    assert.deepEqual(pathForm('/init/.'), { kind: 'forward', target: '/init/' });
    assert.equal(agentRoute('/init/'), 'connect');
    // And in absolute-form (header form only: that is where a full URL arrives).
    for (const a of ['http://h/./init', 'http://h:49983/%2e/init', 'HTTPS://h/x/../init', 'http://h/init#f', 'http://h//init']) {
      assert.notEqual(headerForm(a).kind, 'forward', a);
    }
  });

  test('what each attack becomes', () => {
    const cases: Array<[string, string | null]> = [
      ['/./init', '/init'], ['/%2e/init', '/init'], ['/%2E/init', '/init'], ['/x/../init', '/init'], ['/x/%2e%2e/init', '/init'],
      ['/x/.%2e/init', '/init'], ['//init', '/init'], ['/x/..//init', '/init'], ['/%69nit', '/init'], ['/fsthaw/.', '/fsthaw/'],
      ['/init#frag', null], ['/%2e%2e/init', null], ['/../init', null], ['/x/../../init', null], ['/init%2f', null],
      ['/x%2f..%2finit', null], ['/x\\..\\init', null], ['/x/%5c../init', null], ['/init%00', null], ['/in\tit', null],
      ['/in it', null], ['/in%zzit', null], ['/init%', null], ['/init%2', null],
    ];
    for (const [raw, path] of cases) {
      const n = normaliseTarget(raw);
      if (path === null) {
        assert.equal(n.ok, false, `${JSON.stringify(raw)} is refused`);
        assert.ok(!n.ok && n.message.length > 0);
      } else {
        assert.deepEqual(n, { ok: true, path, query: '' }, JSON.stringify(raw));
      }
    }
  });

  test('accepted forms', () => {
    const cases: Array<[string, string, string]> = [
      ['/', '/', ''],
      ['/health', '/health', ''],
      ['/process.Process/Start', '/process.Process/Start', ''],
      ['/files?path=%2Ftmp%2Fa%5Cb&username=user', '/files', '?path=%2Ftmp%2Fa%5Cb&username=user'],
      ['/files?path=/a/../b', '/files', '?path=/a/../b'],
      ['/files?', '/files', '?'],
      ['/a/./b/../c/', '/a/c/', ''],
      ['/a/.', '/a/', ''],
      ['/a/..', '/', ''],
      ['/a//b///c', '/a/b/c', ''],
      ['/%41%7e%2D%5f%2e%30', '/A~-_.0', ''],
      ['/a%c3%a9', '/a%C3%A9', ''],
      ['/a%25b', '/a%25b', ''],
      ['/a|b^c[d]{e}"f<g>`', '/a%7Cb%5Ec%5Bd%5D%7Be%7D%22f%3Cg%3E%60', ''],
      ["/a!$&'()*+,;=:@b", "/a!$&'()*+,;=:@b", ''],
      ['http://hearth.example:8080/health?x=1', '/health', '?x=1'],
      ['HTTP://h', '/', ''],
      ['http://h?x', '/', '?x'],
      ['https://[::1]:49983/envs', '/envs', ''],
      ['http://10.0.0.1/a/../b', '/b', ''],
    ];
    for (const [raw, path, query] of cases) {
      assert.deepEqual(normaliseTarget(raw), { ok: true, path, query }, raw);
    }
    // Path form: the envd target after the prefix, `/` when there is none.
    assert.deepEqual(pathForm(''), { kind: 'forward', target: '/' });
    assert.deepEqual(pathForm('?x=1'), { kind: 'forward', target: '/?x=1' });
    assert.deepEqual(pathForm('/files?path=%2Fa'), { kind: 'forward', target: '/files?path=%2Fa' });
    assert.deepEqual(headerForm('/files?path=%2Fa'), { kind: 'forward', target: '/files?path=%2Fa' });
    assert.deepEqual(headerForm('http://h/./process.Process/List'), { kind: 'forward', target: '/process.Process/List' });
    assert.deepEqual(proxyTargetOf(`/sandboxes/${SBX}/envd/health`, {}), { sandboxId: SBX, port: AGENT_PORT, path: '/health' });
    // Not envd traffic at all.
    assert.equal(proxyTargetOf(`/sandboxes/${SBX}/envdx/init`, {}), null);
    assert.equal(proxyTargetOf(`/sandboxes/${SBX}`, {}), null);
  });

  test('refused forms', () => {
    for (const raw of [
      '', '*', 'hearth.example:443', 'init', 'ftp://h/x', 'http://user@h/x', 'http:///x', 'http://h h/x', '/a\u00e9', '/a\u007f',
      '/a\nb', '/a?b#c', '/a?\u0001', '/a?b c', 'http://h/a\\b',
    ]) {
      const n = normaliseTarget(raw);
      assert.equal(n.ok, false, `${JSON.stringify(raw)} is refused`);
    }
    // The proxy answers these 400 (never forwards): path and header form.
    assert.equal(headerForm('*').kind, 'reject');
    assert.equal(headerForm('hearth.example:443').kind, 'reject');
    assert.equal(pathForm('#x').kind, 'reject');
  });

  test('isControlPlanePath', () => {
    for (const p of ['/init', '/freeze', '/unfreeze', '/collapse', '/fsfreeze', '/fsthaw', '/upgrade']) assert.ok(isControlPlanePath(p), p);
    for (const p of ['/', '/health', '/files', '/envs', '/metrics', '/init/', '/INIT', '/init;x', '/x/init', '/process.Process/Start']) {
      assert.equal(isControlPlanePath(p), false, p);
    }
  });
});

describe('normaliseTarget fuzz', () => {
  const segment = fc.constantFrom(
    '', '.', '..', '%2e', '%2E', '%2e%2e', '%2E%2E', '.%2e', '%2e.', '...', 'init', '%69nit', 'ini%74', 'INIT', 'x', 'files', 'health',
    'freeze', 'upgrade', 'fsthaw', 'envs', '%2f', '%2F', '%5c', '%5C', '\\', ';', 'init;a', '#f', '%23', '%00', '%41', 'a%7e', '%7E', '~',
    '%', '%g1', '%2', 'in\tit', 'in\nit', ' ', '|', '{x}', '@', ':', 'process.Process', 'Start', '%C3%A9', '%c3%a9',
  );
  const query = fc.constantFrom('', '?', '?x=1', '?path=%2Fa%2F..%2Finit', '?a=/../init', '?p=%5c', '?#f', '?a b');
  const prefix = fc.constantFrom('', 'http://h', 'https://h:1', 'http://h/');
  const raw = fc.tuple(prefix, fc.array(segment, { maxLength: 8 }), fc.boolean(), query)
    .map(([pre, segs, lead, q]) => `${pre}${lead || pre === '' ? '/' : ''}${segs.join('/')}${q}`);
  const runs = { numRuns: 5000 };

  test('(a) idempotent: normalising the canonical form gives it back', () => {
    fc.assert(fc.property(raw, (r) => {
      const n = normaliseTarget(r);
      if (!n.ok) return;
      assert.deepEqual(normaliseTarget(n.path + n.query), n);
      assert.ok(n.path.startsWith('/') && !n.path.includes('//'), n.path);
      assert.ok(n.query === '' || n.query.startsWith('?'));
    }), runs);
  });

  test('(b) whatever WHATWG URL resolves to a control-plane path is refused or becomes that path', () => {
    fc.assert(fc.property(raw, (r) => {
      let whatwg: string;
      try {
        const u = new URL(r, 'http://a');
        // `//host/…` is scheme-relative for WHATWG: another URL, not another reading of the path.
        // An HTTP origin-form target has no authority, and Hearth reads `//` as `/` everywhere ((d)).
        if (!/^https?:/i.test(r) && u.host !== 'a') return;
        whatwg = decodeUnreserved(u.pathname);
      } catch {
        return; // not a URL for WHATWG either
      }
      if (!isControlPlanePath(whatwg)) return;
      const n = normaliseTarget(r);
      if (n.ok) assert.equal(n.path, whatwg, `${JSON.stringify(r)}: WHATWG ${whatwg}, normalised ${n.path}`);
    }), runs);
  });

  test('(d) a leading `//` is an empty segment, never a host: `//Start/init` is the path /Start/init, forwarded and routed as that', () => {
    for (const [raw, path] of [['//Start/init', '/Start/init'], ['//files/init', '/files/init'], ['//init', '/init'], ['//x/../init', '/init']] as const) {
      const n = normaliseTarget(raw);
      assert.deepEqual(n, { ok: true, path, query: '' }, raw);
      const p = proxyDecision(raw, { 'e2b-sandbox-id': SBX });
      if (isControlPlanePath(path)) assert.notEqual(p.kind, 'forward', `${raw} must not be forwarded`);
      else {
        assert.equal(p.kind, 'forward', raw);
        if (p.kind === 'forward') assert.equal(agentRoute(p.target), agentRoute(path), raw);
        assert.equal(isControlPlanePath(agentRoute(raw)), false, `the agent routes ${raw} to a control path`);
      }
    }
  });

  test('(c) the agent decides on the forwarded target what the proxy decided', () => {
    fc.assert(fc.property(raw, (r) => {
      const p = proxyDecision(r, { 'e2b-sandbox-id': SBX });
      if (r.startsWith('/')) assert.deepEqual(pathForm(r), p, `path and header form of ${JSON.stringify(r)}`);
      if (p.kind !== 'forward') return;
      const route = agentRoute(p.target);
      assert.notEqual(route, 'reject', `the agent refuses what the proxy forwarded: ${p.target}`);
      assert.equal(isControlPlanePath(route), false, `the agent routes ${JSON.stringify(r)} (forwarded as ${p.target}) to ${route}`);
      assert.equal(route, agentRoute(r), `agent routes the raw and the forwarded target alike: ${JSON.stringify(r)}`);
    }), runs);
  });
});
