/** A custom template described on one node and registered on another (src/templates/share.ts; docs/cluster.md, "Pulling a template"). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Store } from '../../src/store/store.js';
import { IMAGE_TEMPLATE_FIELDS, type Template } from '../../src/core/types.js';
import { LayerStore } from '../../src/templates/layers.js';
import { describeTemplate, importTemplate, templateImportRefusal } from '../../src/templates/share.js';

const KEY = 'ab'.repeat(32);

function node(name: string) {
  const dir = mkdtempSync(join(tmpdir(), `hearth-share-${name}-`));
  const store = new Store(':memory:');
  const base: Template = {
    ...IMAGE_TEMPLATE_FIELDS, id: 'base', imageHash: 'img1', kernelPath: `/${name}/vmlinuz`, initrdPath: `/${name}/initrd`, rootfsPath: `/${name}/rootfs.ext4`,
    rootfsSizeBytes: 1 << 20, kernelArgs: 'console=ttyS0', vcpus: 1, memoryMib: 256, createdAt: new Date().toISOString(),
  };
  store.upsertTemplate(base);
  return { dir, store, layers: new LayerStore(join(dir, 'layers')), base, done: () => { store.close(); rmSync(dir, { recursive: true, force: true }); } };
}

async function withCustom(a: ReturnType<typeof node>): Promise<Template> {
  const staged = await a.layers.stage();
  writeFileSync(staged.disk, 'DISK CONTENT');
  await a.layers.commit(staged, { key: KEY, parent: null, step: 'RUN x', buildId: 'b1', createdAt: new Date().toISOString() });
  const t: Template = {
    ...a.base, id: 'custom', imageHash: 'custom1', rootfsPath: a.layers.diskPath(KEY), rootfsSizeBytes: 12, source: 'build', aliases: ['c'], parentId: 'base', buildId: 'b1', layers: [KEY],
    runtime: { env: { A: '1' }, user: 'user', workdir: '/home/user', start: null },
  };
  a.store.upsertTemplate(t);
  return t;
}

test('a pulled template gets this node\'s paths: its disk in this node\'s layers, the parent\'s kernel here; no build id', async () => {
  const a = node('a');
  const b = node('b');
  try {
    await withCustom(a);
    const { exp, dir } = await describeTemplate(a.store, a.layers, 'c');
    assert.equal(exp.template.id, 'custom', 'found by alias');
    assert.equal(dir, a.layers.dirOf(KEY));
    assert.equal(templateImportRefusal(b.store, exp), null);
    const t = await importTemplate(b.store, b.layers, exp, async (into) => { writeFileSync(join(into, 'rootfs.ext4'), readFileSync(join(dir, 'rootfs.ext4'))); });
    assert.equal(t.rootfsPath, b.layers.diskPath(KEY));
    assert.equal(t.kernelPath, '/b/vmlinuz');
    assert.equal(t.initrdPath, '/b/initrd');
    assert.equal(t.buildId, null);
    assert.deepEqual(t.runtime, exp.template.runtime);
    assert.equal(readFileSync(t.rootfsPath, 'utf8'), 'DISK CONTENT');
    assert.ok(await b.layers.has(KEY), 'committed as a layer, with layer.json');
    assert.deepEqual(b.store.getTemplate('c')?.id, 'custom', 'its alias works here');
  } finally {
    a.done();
    b.done();
  }
});

test('refused: an image template (never travels), another parent image, a missing parent, a different template of that id; a failed receive leaves nothing', async () => {
  const a = node('a');
  const b = node('b');
  try {
    await assert.rejects(describeTemplate(a.store, a.layers, 'base'), /image template/);
    await withCustom(a);
    const { exp } = await describeTemplate(a.store, a.layers, 'custom');
    b.store.upsertTemplate({ ...b.base, imageHash: 'img2' });
    assert.match(templateImportRefusal(b.store, exp) ?? '', /needs parent base at image img1/);
    b.store.upsertTemplate(b.base);
    assert.match(templateImportRefusal(b.store, { ...exp, template: { ...exp.template, parentId: 'other' } }) ?? '', /needs its parent other/);
    b.store.upsertTemplate({ ...exp.template, imageHash: 'someone-else' });
    assert.match(templateImportRefusal(b.store, exp) ?? '', /a different template custom/);
    b.store.deleteTemplate('custom');
    await assert.rejects(importTemplate(b.store, b.layers, exp, async () => { throw new Error('cut'); }), /cut/);
    assert.equal(b.store.getTemplate('custom'), undefined);
    assert.equal(await b.layers.has(KEY), false);
  } finally {
    a.done();
    b.done();
  }
});
