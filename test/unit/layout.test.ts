/**
 * src/core/layout.ts: every path under the data dir, and where the files a
 * VMM reports for a snapshot are placed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DATA_FILES, DataLayout, SNAPSHOT_FILES, isStagingName, isWarmDirName, pausedAt, placeSnapshotFiles, snapshotAt } from '../../src/core/layout.js';

const L = new DataLayout('/var/lib/hearth');

test('the data dir\'s top-level files and directories', () => {
  assert.equal(L.db, '/var/lib/hearth/hearth.db');
  assert.equal(L.configFile, '/var/lib/hearth/config.json');
  assert.equal(L.pidFile, '/var/lib/hearth/hearthd.pid');
  assert.equal(L.logFile, '/var/lib/hearth/hearthd.log');
  assert.equal(L.imagesDir, '/var/lib/hearth/images');
  assert.equal(L.sandboxesDir, '/var/lib/hearth/sandboxes');
  assert.equal(L.snapshotsDir, '/var/lib/hearth/snapshots');
  assert.equal(L.templatesDir, '/var/lib/hearth/templates');
  assert.deepEqual(Object.values(DATA_FILES), ['hearth.db', 'config.json', 'hearthd.pid', 'hearthd.log']);
});

test('a sandbox, its paused capture and its pause staging', () => {
  assert.deepEqual(L.sandbox('iabc'), {
    dir: '/var/lib/hearth/sandboxes/iabc',
    console: '/var/lib/hearth/sandboxes/iabc/console.log',
    memory: '/var/lib/hearth/sandboxes/iabc/memory',
    pauseStaging: '/var/lib/hearth/sandboxes/iabc/pause-staging',
    paused: {
      dir: '/var/lib/hearth/sandboxes/iabc/paused',
      state: '/var/lib/hearth/sandboxes/iabc/paused/vmstate',
      memory: '/var/lib/hearth/sandboxes/iabc/paused/memory',
      meta: '/var/lib/hearth/sandboxes/iabc/paused/meta.json',
    },
  });
  assert.deepEqual(pausedAt('/x/paused'), { dir: '/x/paused', state: '/x/paused/vmstate', memory: '/x/paused/memory', meta: '/x/paused/meta.json' });
  assert.equal(L.ownsRunDir('/var/lib/hearth/sandboxes/iabc'), true);
  assert.equal(L.ownsRunDir('/var/lib/other/sandboxes/iabc'), false, 'another data dir\'s VM');
  assert.equal(L.ownsRunDir('/var/lib/hearth/sandboxes/iabc/fc'), false);
  assert.equal(L.ownsRunDir(undefined), false);
});

test('named snapshots, their staging, and warm template snapshots', () => {
  assert.deepEqual(L.snapshot('s1'), {
    dir: '/var/lib/hearth/snapshots/s1',
    staging: '/var/lib/hearth/snapshots/s1.staging',
    state: '/var/lib/hearth/snapshots/s1/vmstate',
    memory: '/var/lib/hearth/snapshots/s1/memory',
    rootfs: '/var/lib/hearth/snapshots/s1/rootfs.ext4',
  });
  assert.equal(L.templateDir('base'), '/var/lib/hearth/templates/base');
  const warm = L.warmSnapshot('base', '0123456789abcdef0123456789abcdef', 2, 512, 'k3x9');
  assert.equal(warm.dir, '/var/lib/hearth/templates/base/0123456789abcdef-2c-512m-k3x9');
  assert.deepEqual(snapshotAt(warm.dir), warm);
  assert.equal(isWarmDirName('0123456789abcdef-2c-512m-k3x9'), true);
  assert.equal(isWarmDirName('0123456789abcdef-2c-512m'), true, 'older warm dirs had no suffix');
  assert.equal(isWarmDirName('0123456789abcdef-2c-512m-k3x9.staging'), true);
  assert.equal(isWarmDirName('notes'), false);
  assert.equal(isStagingName('s1.staging'), true);
  assert.equal(isStagingName('s1'), false);
});

test('placeSnapshotFiles: state and memory under the core\'s names, every other reported file under its own', () => {
  // QEMU: memory is the VM's own file, outside the snapshot dir.
  assert.deepEqual(placeSnapshotFiles('/d/paused', {
    statePath: '/d/pause-staging/vmstate', memoryPath: '/d/memory',
    files: ['/d/pause-staging/vmstate', '/d/memory', '/d/pause-staging/vmstate.json'],
  }), [
    { from: '/d/pause-staging/vmstate', to: '/d/paused/vmstate' },
    { from: '/d/memory', to: '/d/paused/memory' },
    { from: '/d/pause-staging/vmstate.json', to: '/d/paused/vmstate.json' },
  ]);
  // A driver with names of its own: renamed to the layout's.
  assert.deepEqual(placeSnapshotFiles('/s', { statePath: '/t/snap.bin', memoryPath: '/t/mem.bin', files: ['/t/snap.bin', '/t/mem.bin', '/t/firecracker.json'] }).map((f) => f.to),
    ['/s/vmstate', '/s/memory', '/s/firecracker.json']);
  assert.equal(SNAPSHOT_FILES.state, 'vmstate');
  // Two reported files that would land on one name, or on a name the core writes, are refused.
  assert.throws(() => placeSnapshotFiles('/s', { statePath: '/t/a', memoryPath: '/t/b', files: ['/t/a', '/t/b', '/u/vmstate'] }), /two snapshot files named vmstate/);
  assert.throws(() => placeSnapshotFiles('/s', { statePath: '/t/a', memoryPath: '/t/b', files: ['/t/a', '/t/b', '/t/meta.json'] }), /meta\.json/);
});
