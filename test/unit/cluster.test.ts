/** Cluster mode's pure parts (docs/cluster.md): placement, expiry, the node credential, header stripping, config. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseNode, freeMemoryMib, heartbeatExpired } from '../../src/cluster/placement.js';
import { admitClusterHeaders, clusterTokenMatches, CLUSTER_TOKEN_HEADER, forwardedHeaders } from '../../src/cluster/credential.js';
import { sandboxOfApiPath } from '../../src/cluster/forward.js';
import { loadConfig } from '../../src/daemon/config.js';
import type { NodeInfo } from '../../src/cluster/types.js';

function node(id: string, over: Partial<NodeInfo> = {}): NodeInfo {
  return {
    id, address: `http://127.0.0.1:1/${id}`, state: 'up', memoryTotalMib: 16384, memoryUsedMib: 0, memoryAvailableMib: 20000, diskFreeMib: 100_000,
    loadPerCpu: 0.5, cpus: 4, sandboxes: 0, warmTemplates: [], version: 't', heartbeatAt: new Date().toISOString(), downSince: null, ...over,
  };
}
const req = { templateId: 'base', memoryMib: 512, minFreeDiskMib: 1000 };

test('placement: the node with the most free memory wins', () => {
  const n = chooseNode([node('a', { memoryUsedMib: 4096 }), node('b', { memoryUsedMib: 1024 }), node('c', { memoryUsedMib: 8192 })], req);
  assert.equal(n?.id, 'b');
});

test('placement: free memory is bounded by what the host really has available', () => {
  assert.equal(freeMemoryMib(node('a', { memoryAvailableMib: 700 })), 700);
  const n = chooseNode([node('a', { memoryAvailableMib: 700 }), node('b', { memoryUsedMib: 8000 })], req);
  assert.equal(n?.id, 'b');
});

test('placement: on a tie, the node with the template\'s warm snapshot, then the lowest load, then fewer sandboxes, then the id', () => {
  assert.equal(chooseNode([node('a'), node('b', { warmTemplates: ['base'] }), node('c')], req)?.id, 'b', 'within the tie band, warm wins');
  assert.equal(chooseNode([node('a', { loadPerCpu: 1.5 }), node('b', { loadPerCpu: 0.2 })], req)?.id, 'b');
  assert.equal(chooseNode([node('a', { sandboxes: 3 }), node('b', { sandboxes: 1 })], req)?.id, 'b');
  assert.equal(chooseNode([node('b'), node('a')], req)?.id, 'a');
  assert.equal(chooseNode([node('a', { warmTemplates: ['base'] }), node('b', { memoryUsedMib: -2000 })], req)?.id, 'b', 'much more memory beats warm');
});

test('placement: down nodes, full nodes and nodes short of disk are never chosen', () => {
  assert.equal(chooseNode([node('a', { state: 'down' }), node('b', { memoryUsedMib: 16000 }), node('c', { diskFreeMib: 10 })], req), null);
  assert.equal(chooseNode([], req), null);
});

test('expiry: a heartbeat older than the expiry has expired', () => {
  const now = Date.parse('2026-01-01T00:00:10Z');
  assert.equal(heartbeatExpired({ heartbeatAt: '2026-01-01T00:00:05Z' }, now, 10_000), false);
  assert.equal(heartbeatExpired({ heartbeatAt: '2025-12-31T23:59:59Z' }, now, 10_000), true);
});

const TOKEN = 'k'.repeat(40);

test('credential: only the exact token matches; absent, empty, arrays and no configured token never do', () => {
  assert.equal(clusterTokenMatches(TOKEN, TOKEN), true);
  assert.equal(clusterTokenMatches(TOKEN, TOKEN + 'x'), false);
  assert.equal(clusterTokenMatches(TOKEN, TOKEN.slice(1)), false);
  assert.equal(clusterTokenMatches(TOKEN, undefined), false);
  assert.equal(clusterTokenMatches(TOKEN, ''), false);
  assert.equal(clusterTokenMatches(TOKEN, [TOKEN, TOKEN]), false);
  assert.equal(clusterTokenMatches(null, TOKEN), false);
});

test('credential: every cluster header is stripped from a client request whose token does not verify', () => {
  for (const presented of [undefined, 'wrong', '']) {
    const h: Record<string, string> = { 'x-hearth-cluster-scope': 'local', 'x-hearth-forwarded-key-id': 'k1', 'x-hearth-forwarded-by': 'n', 'x-api-key': 'user' };
    if (presented !== undefined) h[CLUSTER_TOKEN_HEADER] = presented;
    const a = admitClusterHeaders(h, TOKEN);
    assert.deepEqual(a, { fromNode: false, scopeLocal: false, keyId: null, by: null });
    assert.deepEqual(h, { 'x-api-key': 'user' });
  }
  const ok = { [CLUSTER_TOKEN_HEADER]: TOKEN, 'x-hearth-cluster-scope': 'local', 'x-hearth-forwarded-key-id': 'k1', 'x-hearth-forwarded-by': 'node-a' };
  assert.deepEqual(admitClusterHeaders(ok, TOKEN), { fromNode: true, scopeLocal: true, keyId: 'k1', by: 'node-a' });
  // Cluster mode off: nothing is a node.
  const off = { [CLUSTER_TOKEN_HEADER]: TOKEN };
  assert.equal(admitClusterHeaders(off, null).fromNode, false);
  assert.deepEqual(off, {});
});

test('forwarded headers carry the node credential, never the client\'s API key or its cluster headers', () => {
  const h = forwardedHeaders({ 'x-api-key': 'secret', 'x-hearth-forwarded-key-id': 'forged', 'x-access-token': 'sbx', host: 'h' }, TOKEN, 'node-a', 'key1', true);
  assert.deepEqual(h, { 'x-access-token': 'sbx', host: 'h', [CLUSTER_TOKEN_HEADER]: TOKEN, 'x-hearth-forwarded-by': 'node-a', 'x-hearth-forwarded-key-id': 'key1', 'x-hearth-cluster-scope': 'local' });
  assert.equal(forwardedHeaders({}, TOKEN, 'node-a', null, false)['x-hearth-forwarded-key-id'], undefined);
});

test('the sandbox an API path names', () => {
  assert.equal(sandboxOfApiPath('/sandboxes/abc123'), 'abc123');
  assert.equal(sandboxOfApiPath('/sandboxes/abc123/envd/files?path=x'), 'abc123');
  assert.equal(sandboxOfApiPath('/v2/sandboxes/abc/connect'), 'abc');
  assert.equal(sandboxOfApiPath('/sandboxes/abc?x=1'), 'abc');
  assert.equal(sandboxOfApiPath('/sandboxes'), null);
  assert.equal(sandboxOfApiPath('/sandboxesx/abc'), null);
});

test('config: cluster mode needs a long cluster token and a postgres URL; ids and addresses are checked', () => {
  const base = { dataDir: '/tmp/x' };
  assert.throws(() => loadConfig({ ...base, databaseUrl: 'postgres://h/db' }, {}), /clusterToken/);
  assert.throws(() => loadConfig({ ...base, databaseUrl: 'postgres://h/db', clusterToken: 'short' }, {}), /clusterToken/);
  assert.throws(() => loadConfig({ ...base, databaseUrl: 'mysql://h/db', clusterToken: TOKEN }, {}), /postgres/);
  assert.throws(() => loadConfig({ ...base, nodeId: 'Bad_Id' }, {}), /nodeId/);
  assert.throws(() => loadConfig({ ...base, nodeAddress: 'https://x:1' }, {}), /nodeAddress/);
  assert.throws(() => loadConfig({ ...base, clusterHeartbeatMs: 2000, clusterNodeExpiryMs: 4000 }, {}), /clusterNodeExpiryMs/);
  const c = loadConfig(base, { HEARTH_DATABASE_URL: 'postgresql://u@h/db', HEARTH_CLUSTER_TOKEN: TOKEN, HEARTH_NODE_ID: 'n1', HEARTH_CLUSTER_HEARTBEAT_MS: '500', HEARTH_CLUSTER_NODE_EXPIRY_MS: '3000' });
  assert.equal(c.databaseUrl, 'postgresql://u@h/db');
  assert.equal(c.nodeId, 'n1');
  assert.equal(c.clusterHeartbeatMs, 500);
  assert.equal(loadConfig(base, {}).databaseUrl, null, 'single host by default');
});
