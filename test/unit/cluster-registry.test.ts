/** The template and snapshot registry's pure parts (docs/cluster.md, "Templates and snapshots"): resolution, the placement filter, the partial items. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseNode } from '../../src/cluster/placement.js';
import { registryFingerprint, snapshotHolders, sourceOfCreate, templatesNamed, withLocal, type NodeRegistry, type RegistrySnapshot, type RegistryTemplate } from '../../src/cluster/registry.js';
import { partialSnapshot, partialTemplate } from '../../src/cluster/registry-api.js';
import type { NodeInfo } from '../../src/cluster/types.js';

function node(id: string, over: Partial<NodeInfo> = {}): NodeInfo {
  return {
    id, address: `http://127.0.0.1:1/${id}`, state: 'up', memoryTotalMib: 16384, memoryUsedMib: 0, memoryAvailableMib: 20000, diskFreeMib: 100_000,
    loadPerCpu: 0.5, cpus: 4, sandboxes: 0, warmTemplates: [], version: 't', heartbeatAt: new Date().toISOString(), downSince: null, ...over,
  };
}

function tpl(nodeId: string, templateId: string, over: Partial<RegistryTemplate> = {}): RegistryTemplate {
  return { nodeId, templateId, aliases: [], imageHash: 'h1', source: 'build', vcpus: 2, memoryMib: 1024, createdAt: '2026-01-01T00:00:00.000Z', ...over };
}

function snap(nodeId: string, snapshotId: string, over: Partial<RegistrySnapshot> = {}): RegistrySnapshot {
  return { nodeId, snapshotId, name: null, sandboxId: 'sbx1', templateId: 'base', vcpus: 1, memoryMib: 384, createdAt: '2026-01-01T00:00:00.000Z', ...over };
}

const reg = (templates: RegistryTemplate[], snapshots: RegistrySnapshot[] = []): NodeRegistry => ({ templates, snapshots });
const base = ['a', 'b', 'c'].map((n) => tpl(`node-${n}`, 'base', { source: 'image', imageHash: `img-${n}`, memoryMib: 512 }));

test('placement filter: only the listed nodes are candidates, even when another has far more room', () => {
  const nodes = [node('a', { memoryUsedMib: 8000 }), node('b'), node('c', { memoryUsedMib: 4000 })];
  const req = { templateId: 't', memoryMib: 512, minFreeDiskMib: 0 };
  assert.equal(chooseNode(nodes, req)?.id, 'b', 'no filter: the most free memory');
  assert.equal(chooseNode(nodes, { ...req, nodes: ['a', 'c'] })?.id, 'c', 'the best of the holders');
  assert.equal(chooseNode(nodes, { ...req, nodes: ['a'] })?.id, 'a');
  assert.equal(chooseNode(nodes, { ...req, nodes: null })?.id, 'b', 'null: any node');
  assert.equal(chooseNode(nodes, { ...req, nodes: [] }), null, 'no holder: no node');
  assert.equal(chooseNode([node('a', { state: 'down' }), node('b')], { ...req, nodes: ['a'] }), null, 'a holder that is down is never chosen');
  assert.equal(chooseNode([node('a', { memoryUsedMib: 16000 }), node('b')], { ...req, nodes: ['a'] }), null, 'a holder without room: none (capacity rules still apply)');
});

test('resolution: the default image\'s template is everywhere (no filter), whatever image each node built', () => {
  assert.deepEqual(sourceOfCreate('base', reg(base)), { kind: 'anywhere', templateId: 'base', memoryMib: 512 });
});

test('resolution: a custom template on one node goes only there; the same id and image hash on several counts on each', () => {
  const one = sourceOfCreate('py', reg([...base, tpl('node-b', 'py')]));
  assert.deepEqual(one, { kind: 'nodes', what: 'template', id: 'py', imageHash: 'h1', nodes: ['node-b'], memoryMib: 1024 });
  const two = sourceOfCreate('py', reg([...base, tpl('node-c', 'py'), tpl('node-a', 'py')]));
  assert.equal(two.kind, 'nodes');
  assert.deepEqual(two.kind === 'nodes' && two.nodes, ['node-a', 'node-c']);
});

test('resolution: versions of one id with different image hashes: the newest is meant, only its nodes count', () => {
  const r = reg([tpl('node-a', 'py', { imageHash: 'old', createdAt: '2026-01-01T00:00:00.000Z' }), tpl('node-b', 'py', { imageHash: 'new', createdAt: '2026-02-01T00:00:00.000Z' }),
    tpl('node-c', 'py', { imageHash: 'new', createdAt: '2026-01-15T00:00:00.000Z' })]);
  const src = sourceOfCreate('py', r);
  assert.equal(src.kind === 'nodes' && src.imageHash, 'new');
  assert.deepEqual(src.kind === 'nodes' && src.nodes, ['node-b', 'node-c']);
});

test('resolution: by alias, and an id beats an alias (as on one host)', () => {
  const r = reg([tpl('node-a', 'python-3', { aliases: ['py'] }), tpl('node-b', 'zz', { aliases: ['py'] })]);
  assert.deepEqual(templatesNamed('py', r.templates).map((t) => t.nodeId), ['node-a'], 'the lowest template id having the alias');
  const src = sourceOfCreate('py', r);
  assert.equal(src.kind === 'nodes' && src.id, 'python-3');
  const withId = sourceOfCreate('py', reg([...r.templates, tpl('node-c', 'py')]));
  assert.deepEqual(withId.kind === 'nodes' && [withId.id, withId.nodes], ['py', ['node-c']]);
});

test('resolution: a named snapshot by id or name (the newest with that name) goes to its node; templates win over snapshots', () => {
  const snaps = [snap('node-a', 's1', { name: 'ckpt', createdAt: '2026-01-01T00:00:00.000Z', memoryMib: 768 }), snap('node-c', 's2', { name: 'ckpt', createdAt: '2026-03-01T00:00:00.000Z' })];
  assert.deepEqual(sourceOfCreate('s1', reg(base, snaps)), { kind: 'nodes', what: 'snapshot', id: 's1', imageHash: null, nodes: ['node-a'], memoryMib: 768 });
  const byName = sourceOfCreate('ckpt', reg(base, snaps));
  assert.deepEqual(byName.kind === 'nodes' && [byName.id, byName.nodes], ['s2', ['node-c']]);
  const shadowed = sourceOfCreate('ckpt', reg([...base, tpl('node-b', 'ckpt')], snaps));
  assert.deepEqual(shadowed.kind === 'nodes' && [shadowed.what, shadowed.nodes], ['template', ['node-b']]);
  assert.deepEqual(snapshotHolders('ckpt', snaps)?.snapshotId, 's2');
  assert.equal(snapshotHolders('nope', snaps), null);
});

test('resolution: a name no node holds is missing', () => {
  assert.deepEqual(sourceOfCreate('nope', reg(base, [snap('node-a', 's1')])), { kind: 'missing' });
});

test('the entry node\'s own rows come from its SQLite, not from the (possibly stale) mirror', () => {
  const shared = reg([tpl('node-a', 'gone'), tpl('node-b', 'py')], [snap('node-a', 'old')]);
  const local = reg([tpl('node-a', 'fresh')], [snap('node-a', 'new')]);
  const merged = withLocal(shared, local, 'node-a');
  assert.deepEqual(merged.templates.map((t) => `${t.nodeId}/${t.templateId}`).sort(), ['node-a/fresh', 'node-b/py']);
  assert.deepEqual(merged.snapshots.map((s) => s.snapshotId), ['new']);
  assert.equal(sourceOfCreate('gone', merged).kind, 'missing', 'deleted here a moment ago: not placed here');
});

test('the fingerprint ignores order and changes with any field', () => {
  const a = reg([tpl('n', 'x'), tpl('n', 'y')], [snap('n', 's1'), snap('n', 's2')]);
  const b = reg([tpl('n', 'y'), tpl('n', 'x')], [snap('n', 's2'), snap('n', 's1')]);
  assert.equal(registryFingerprint(a), registryFingerprint(b));
  assert.notEqual(registryFingerprint(a), registryFingerprint(reg([tpl('n', 'x'), tpl('n', 'y', { aliases: ['z'] })], a.snapshots)));
  assert.notEqual(registryFingerprint(a), registryFingerprint(reg(a.templates, [snap('n', 's1')])));
});

test('partial items (records of down nodes) have the list items\' fields and say so', () => {
  const t = partialTemplate([tpl('node-c', 'py', { aliases: ['p'] }), tpl('node-a', 'py', { aliases: ['p'] })]);
  assert.deepEqual([t['templateID'], t['imageHash'], t['cpuCount'], t['memoryMB'], t['aliases'], t['nodes'], t['partial']], ['py', 'h1', 2, 1024, ['p'], ['node-a', 'node-c'], true]);
  for (const k of ['diskSizeMB', 'createdAt', 'source', 'from', 'buildID', 'envVars', 'user', 'workdir', 'startCommand', 'readyCheck', 'layers']) assert.ok(k in t, k);
  const s = partialSnapshot([snap('node-b', 's1', { name: 'ckpt' })]);
  assert.deepEqual(s, { snapshotID: 's1', names: ['ckpt'], sandboxID: 'sbx1', templateID: 'base', cpuCount: 1, memoryMB: 384, createdAt: '2026-01-01T00:00:00.000Z', sizeBytes: 0, nodes: ['node-b'], partial: true });
});
