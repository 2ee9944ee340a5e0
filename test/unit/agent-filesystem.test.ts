// Filesystem service of the in-guest agent (docs/agent.md, "Messages" and "Filesystem"), against a real agent child process.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync, renameSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { EventType, FileType, Filesystem, type FilesystemEvent } from '../../src/gen/filesystem/filesystem_pb.js';
import { startHermeticAgent, type HermeticAgent } from '../helpers/hermetic-agent.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function isCode(code: Code) {
  return (e: unknown) => e instanceof ConnectError && e.code === code;
}

/** Consumes a WatchDir stream in the background, collecting "TYPE name" strings. */
function watch(client: Client<typeof Filesystem>, dir: string, recursive: boolean) {
  const ac = new AbortController();
  const events: string[] = [];
  let started!: () => void;
  const ready = new Promise<void>((r) => (started = r));
  const done = (async () => {
    try {
      for await (const m of client.watchDir({ path: dir, recursive }, { signal: ac.signal, timeoutMs: 60_000 })) {
        if (m.event.case === 'start') started();
        if (m.event.case === 'filesystem') events.push(`${EventType[m.event.value.type]} ${m.event.value.name}`);
      }
    } catch (e) {
      if (!ac.signal.aborted) throw e;
    }
  })();
  return {
    events,
    ready,
    async waitFor(pred: (evs: string[]) => boolean, what: string) {
      for (let i = 0; i < 100; i++) {
        if (pred(events)) return;
        await sleep(30);
      }
      assert.fail(`timed out waiting for ${what}; events: ${JSON.stringify(events)}`);
    },
    async stop() {
      ac.abort();
      await done;
    },
  };
}

describe('agent filesystem service', () => {
  let agent: HermeticAgent;
  let fs: Client<typeof Filesystem>;
  let tmp: string;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'hearth-agent-fs-'));
    agent = await startHermeticAgent();
    fs = agent.filesystemClient();
  });
  after(async () => {
    await agent?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('ListDir with depth 2 walks in lexical depth-first order with full paths', async () => {
    const root = path.join(tmp, 'list');
    mkdirSync(path.join(root, 'subdir1', 'subdir1_1', 'deep'), { recursive: true });
    mkdirSync(path.join(root, 'subdir1', 'subdir1_2'), { recursive: true });
    mkdirSync(path.join(root, 'subdir2'), { recursive: true });
    writeFileSync(path.join(root, 'file1.txt'), 'abcd');
    writeFileSync(path.join(root, 'subdir2', 'B.txt'), '');
    writeFileSync(path.join(root, 'subdir2', 'a.txt'), '');
    writeFileSync(path.join(root, 'subdir1', 'subdir1_1', 'deep', 'too-deep.txt'), '');
    const res = await fs.listDir({ path: root, depth: 2 });
    assert.deepEqual(
      res.entries.map((e) => path.relative(root, e.path)),
      ['file1.txt', 'subdir1', 'subdir1/subdir1_1', 'subdir1/subdir1_2', 'subdir2', 'subdir2/B.txt', 'subdir2/a.txt'],
    );
    const file1 = res.entries[0]!;
    assert.equal(file1.name, 'file1.txt');
    assert.equal(file1.type, FileType.FILE);
    assert.equal(file1.size, 4n);
    assert.equal(res.entries[1]!.type, FileType.DIRECTORY);
    // depth 0 means 1
    const one = await fs.listDir({ path: root, depth: 0 });
    assert.deepEqual(one.entries.map((e) => e.name), ['file1.txt', 'subdir1', 'subdir2']);
    await assert.rejects(fs.listDir({ path: path.join(root, 'missing') }), isCode(Code.NotFound));
    await assert.rejects(fs.listDir({ path: path.join(root, 'file1.txt') }), isCode(Code.InvalidArgument));
  });

  test('ListDir follows a top-level symlink and reports paths under the requested path', async () => {
    const real = path.join(tmp, 'real-dir');
    mkdirSync(real);
    writeFileSync(path.join(real, 'x.txt'), 'x');
    const link = path.join(tmp, 'link-dir');
    symlinkSync(real, link);
    const res = await fs.listDir({ path: link, depth: 1 });
    assert.deepEqual(res.entries.map((e) => e.path), [path.join(link, 'x.txt')]);
  });

  test('Stat: EntryInfo fields (Go permissions string, owner, group, mtime); not_found', async () => {
    const f = path.join(tmp, 'stat.txt');
    writeFileSync(f, 'hello');
    chmodSync(f, 0o640);
    const { entry } = await fs.stat({ path: f });
    assert.ok(entry);
    assert.equal(entry.name, 'stat.txt');
    assert.equal(entry.path, f);
    assert.equal(entry.type, FileType.FILE);
    assert.equal(entry.size, 5n);
    assert.equal(entry.mode, 0o640);
    assert.equal(entry.permissions, '-rw-r-----');
    assert.equal(entry.owner, 'root');
    assert.equal(entry.group, 'root');
    assert.equal(entry.symlinkTarget, undefined);
    const mtime = Number(entry.modifiedTime!.seconds) * 1000 + entry.modifiedTime!.nanos / 1e6;
    assert.ok(Math.abs(mtime - statSync(f).mtimeMs) < 1);

    const dir = await fs.stat({ path: tmp });
    assert.equal(dir.entry?.type, FileType.DIRECTORY);
    assert.match(dir.entry!.permissions, /^drwx/);
    const sticky = await fs.stat({ path: '/tmp' });
    assert.equal(sticky.entry?.permissions, 'dtrwxrwxrwx');

    const link = path.join(tmp, 'stat-link');
    symlinkSync(f, link);
    const l = await fs.stat({ path: link });
    assert.equal(l.entry?.type, FileType.FILE, 'symlink reports its target type');
    assert.equal(l.entry?.symlinkTarget, f);
    assert.equal(l.entry?.permissions, 'Lrwxrwxrwx');
    assert.equal(l.entry?.mode, 0o640);

    const dangling = path.join(tmp, 'dangling');
    symlinkSync(path.join(tmp, 'nowhere'), dangling);
    const d = await fs.stat({ path: dangling });
    assert.equal(d.entry?.type, FileType.UNSPECIFIED);
    assert.equal(d.entry?.symlinkTarget, undefined);

    await assert.rejects(fs.stat({ path: path.join(tmp, 'nope') }), isCode(Code.NotFound));
    await assert.rejects(fs.stat({ path: '~someone/x' }), isCode(Code.InvalidArgument));
  });

  test('MakeDir creates parents, then already_exists; a file in the way is invalid_argument', async () => {
    const d = path.join(tmp, 'mk', 'a', 'b');
    const res = await fs.makeDir({ path: d });
    assert.equal(res.entry?.path, d);
    assert.equal(res.entry?.type, FileType.DIRECTORY);
    assert.equal(statSync(d).mode & 0o777, 0o755);
    await assert.rejects(fs.makeDir({ path: d }), isCode(Code.AlreadyExists));
    const f = path.join(tmp, 'mk', 'file');
    writeFileSync(f, '');
    await assert.rejects(fs.makeDir({ path: f }), isCode(Code.InvalidArgument));
  });

  test('Move renames (creating destination parents) and returns the entry; missing source is not_found', async () => {
    const src = path.join(tmp, 'mv-src.txt');
    writeFileSync(src, 'moved');
    const dst = path.join(tmp, 'mv', 'deep', 'dst.txt');
    const res = await fs.move({ source: src, destination: dst });
    assert.equal(res.entry?.path, dst);
    assert.equal(res.entry?.name, 'dst.txt');
    assert.equal(readFileSync(dst, 'utf8'), 'moved');
    assert.equal(existsSync(src), false);
    await assert.rejects(fs.move({ source: src, destination: dst }), isCode(Code.NotFound));
  });

  test('Remove deletes recursively; a missing path is not an error', async () => {
    const d = path.join(tmp, 'rm');
    mkdirSync(path.join(d, 'x', 'y'), { recursive: true });
    writeFileSync(path.join(d, 'x', 'y', 'f'), '');
    await fs.remove({ path: d });
    assert.equal(existsSync(d), false);
    await fs.remove({ path: d });
  });

  test('relative paths resolve against the home directory', async () => {
    const name = `hearth-agent-fs-test-${process.pid}`;
    // The agent's /root is agent.home on the host (test/helpers/hermetic-agent.ts).
    const onHost = path.join(agent.home ?? '/root', name);
    await fs.makeDir({ path: name });
    assert.ok(existsSync(onHost));
    const st = await fs.stat({ path: `~/${name}` });
    assert.equal(st.entry?.path, path.join('/root', name));
    await fs.remove({ path: name });
    assert.equal(existsSync(onHost), false);
  });

  test('WatchDir (recursive): create, write, chmod, rename, remove, and a new subdirectory is watched', async () => {
    const root = path.join(tmp, 'watch');
    mkdirSync(path.join(root, 'existing'), { recursive: true });
    const w = watch(fs, root, true);
    await w.ready;

    writeFileSync(path.join(root, 'a.txt'), 'one');
    await w.waitFor((e) => e.includes('CREATE a.txt') && e.includes('WRITE a.txt'), 'create+write a.txt');

    writeFileSync(path.join(root, 'existing', 'in-existing.txt'), 'x');
    await w.waitFor((e) => e.includes('WRITE existing/in-existing.txt'), 'write in pre-existing subdir');

    mkdirSync(path.join(root, 'subdir'));
    await w.waitFor((e) => e.includes('CREATE subdir'), 'create subdir');
    writeFileSync(path.join(root, 'subdir', 'file'), 'data');
    await w.waitFor((e) => e.includes('WRITE subdir/file'), 'write in a new subdir');

    chmodSync(path.join(root, 'a.txt'), 0o600);
    await w.waitFor((e) => e.includes('CHMOD a.txt'), 'chmod');

    renameSync(path.join(root, 'a.txt'), path.join(root, 'b.txt'));
    await w.waitFor((e) => e.includes('RENAME a.txt') && e.includes('CREATE b.txt'), 'rename');

    rmSync(path.join(root, 'b.txt'));
    await w.waitFor((e) => e.includes('REMOVE b.txt'), 'remove');

    // Writing through /files raises WRITE.
    const up = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(path.join(root, 'subdir', 'up.txt'))}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: 'uploaded',
    });
    assert.equal(up.status, 200);
    await w.waitFor((e) => e.includes('WRITE subdir/up.txt'), 'write via /files');
    await w.stop();
  });

  test('WatchDir non-recursive ignores subdirectories; errors are EndStream errors', async () => {
    const root = path.join(tmp, 'watch-flat');
    mkdirSync(path.join(root, 'sub'), { recursive: true });
    const w = watch(fs, root, false);
    await w.ready;
    writeFileSync(path.join(root, 'sub', 'hidden.txt'), 'x');
    writeFileSync(path.join(root, 'top.txt'), 'x');
    await w.waitFor((e) => e.includes('WRITE top.txt'), 'top-level write');
    await sleep(100);
    assert.ok(!w.events.some((e) => e.includes('hidden')), JSON.stringify(w.events));
    await w.stop();

    const collect = async (p: string) => {
      for await (const _ of fs.watchDir({ path: p })) {
        // no events expected
      }
    };
    await assert.rejects(collect(path.join(tmp, 'no-such-dir')), isCode(Code.NotFound));
    await assert.rejects(collect(path.join(root, 'top.txt')), isCode(Code.InvalidArgument));
  });

  test('CreateWatcher / GetWatcherEvents / RemoveWatcher buffer and drain events', async () => {
    const root = path.join(tmp, 'poll');
    mkdirSync(root);
    const { watcherId } = await fs.createWatcher({ path: root, recursive: true, includeEntry: true });
    assert.match(watcherId, /^w/);
    writeFileSync(path.join(root, 'p.txt'), 'x');
    let events: FilesystemEvent[] = [];
    for (let i = 0; i < 50 && !events.some((e) => e.type === EventType.WRITE); i++) {
      await sleep(30);
      events = events.concat((await fs.getWatcherEvents({ watcherId })).events);
    }
    const create = events.find((e) => e.type === EventType.CREATE && e.name === 'p.txt');
    assert.ok(create, JSON.stringify(events.map((e) => e.name)));
    assert.equal(create.entry?.path, path.join(root, 'p.txt'));
    assert.deepEqual((await fs.getWatcherEvents({ watcherId })).events, []);
    await fs.removeWatcher({ watcherId });
    await assert.rejects(fs.getWatcherEvents({ watcherId }), isCode(Code.NotFound));
    await assert.rejects(fs.removeWatcher({ watcherId: 'w-unknown' }), isCode(Code.NotFound));
    await assert.rejects(fs.createWatcher({ path: path.join(tmp, 'nope') }), isCode(Code.NotFound));
  });
});
