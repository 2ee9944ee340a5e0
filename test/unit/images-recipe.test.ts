import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalJson, recipeHash, uuidFromHash, type ImageRecipe } from '../../src/images/recipe.js';

const base: ImageRecipe = {
  builderVersion: 1,
  kernel: { packageName: 'linux-image-6.1.0-56-cloud-amd64', packageVersion: '6.1.192-2', release: '6.1.0-56-cloud-amd64' },
  debootstrap: { suite: 'bookworm', mirror: 'http://deb.debian.org/debian', arch: 'amd64', variant: 'minbase', packages: ['nodejs', 'tini', 'sudo'] },
  initramfs: { key: 'a'.repeat(64) },
  busyboxSha256: 'b'.repeat(64),
  guestFiles: { 'hearth-init': 'c'.repeat(64), 'initramfs-init': 'd'.repeat(64) },
  agentSha256: 'e'.repeat(64),
  node: { source: 'host', version: 'v20.20.2', sha256: 'f'.repeat(64), modules: ['npm@11.19.1'] },
  rootfsSizeMiB: 2048,
  hostname: 'hearth',
};

function clone(r: ImageRecipe): ImageRecipe {
  return JSON.parse(JSON.stringify(r)) as ImageRecipe;
}

describe('image recipe hash', () => {
  it('is a stable sha256 for the same recipe', () => {
    const h = recipeHash(base);
    assert.match(h, /^[0-9a-f]{64}$/);
    assert.equal(recipeHash(clone(base)), h);
  });

  it('does not depend on object key order or package order or duplicates', () => {
    const r = clone(base);
    const reordered = {
      rootfsSizeMiB: r.rootfsSizeMiB,
      hostname: r.hostname,
      node: r.node,
      agentSha256: r.agentSha256,
      guestFiles: { 'initramfs-init': r.guestFiles['initramfs-init']!, 'hearth-init': r.guestFiles['hearth-init']! },
      busyboxSha256: r.busyboxSha256,
      initramfs: r.initramfs,
      debootstrap: { ...r.debootstrap, packages: ['sudo', 'tini', 'nodejs', 'tini'] },
      kernel: r.kernel,
      builderVersion: r.builderVersion,
    } as ImageRecipe;
    assert.equal(recipeHash(reordered), recipeHash(base));
  });

  const changes: [string, (r: ImageRecipe) => void][] = [
    ['the agent bundle', (r) => { r.agentSha256 = '0'.repeat(64); }],
    ['a guest script', (r) => { r.guestFiles['hearth-init'] = '1'.repeat(64); }],
    ['a new guest file', (r) => { r.guestFiles['extra'] = '2'.repeat(64); }],
    ['the package list', (r) => { r.debootstrap.packages.push('python3'); }],
    ['the mirror', (r) => { r.debootstrap.mirror = 'http://mirror.example/debian'; }],
    ['the suite', (r) => { r.debootstrap.suite = 'trixie'; }],
    ['the kernel package version', (r) => { r.kernel.packageVersion = '6.1.193-1'; }],
    ['the initramfs', (r) => { r.initramfs.key = '3'.repeat(64); }],
    ['busybox', (r) => { r.busyboxSha256 = '4'.repeat(64); }],
    ['the builder version', (r) => { r.builderVersion = 2; }],
    ['the rootfs size', (r) => { r.rootfsSizeMiB = 4096; }],
    ['the hostname', (r) => { r.hostname = 'box'; }],
    ['the guest Node', (r) => { r.node = { source: 'debian' }; }],
  ];
  for (const [what, change] of changes) {
    it(`changes when ${what} changes`, () => {
      const r = clone(base);
      change(r);
      assert.notEqual(recipeHash(r), recipeHash(base));
    });
  }

  it('canonicalJson sorts keys at every level and drops undefined', () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [2, { y: 1, x: 2 }], c: undefined } }), '{"a":{"d":[2,{"x":2,"y":1}]},"b":1}');
  });

  it('derives a stable RFC 4122 shaped UUID from the hash', () => {
    const u = uuidFromHash(recipeHash(base));
    assert.match(u, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(uuidFromHash(recipeHash(base)), u);
  });
});
