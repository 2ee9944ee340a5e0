import { mkdir, readdir, readFile, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomId } from '../core/ids.js';
import { removeTree, writeFileAtomic } from '../util/fs.js';

/** What `layer.json` records beside a layer's disk. */
export interface LayerMeta {
  key: string;
  /** The key it was built on (null: the first layer over a template's image). */
  parent: string | null;
  /** The step that made it, as the build showed it. */
  step: string;
  buildId: string;
  createdAt: string;
}

const DISK = 'rootfs.ext4';
const META = 'layer.json';

/**
 * Template layers on disk: `<dataDir>/layers/<key>/{rootfs.ext4, layer.json}`.
 * A layer is written in a hidden staging directory and renamed into place
 * with its layer.json already inside, so a directory under its key is always
 * complete; staging leftovers of a crashed build are removed by `sweep`.
 */
export class LayerStore {
  constructor(readonly dir: string) {}

  private at(key: string): string {
    if (!/^[0-9a-f]{64}$/.test(key)) throw new Error(`bad layer key ${key}`);
    return join(this.dir, key);
  }

  diskPath(key: string): string { return join(this.at(key), DISK); }

  /** The directory of a layer (its disk and layer.json). */
  dirOf(key: string): string { return this.at(key); }

  async has(key: string): Promise<boolean> {
    try {
      const meta = JSON.parse(await readFile(join(this.at(key), META), 'utf8')) as LayerMeta;
      return meta.key === key && (await stat(this.diskPath(key))).isFile();
    } catch {
      return false;
    }
  }

  async meta(key: string): Promise<LayerMeta | null> {
    try { return JSON.parse(await readFile(join(this.at(key), META), 'utf8')) as LayerMeta; } catch { return null; }
  }

  /** A fresh staging directory; the caller writes the disk at `disk` and then commits or discards it. */
  async stage(): Promise<{ dir: string; disk: string }> {
    const dir = join(this.dir, `.staging-${process.pid}-${randomId(8)}`);
    await mkdir(dir, { recursive: true });
    return { dir, disk: join(dir, DISK) };
  }

  /** Move a staged disk into place under `meta.key` (a layer already there wins: it is identical by construction). */
  async commit(staged: { dir: string }, meta: LayerMeta): Promise<void> {
    await writeFileAtomic(join(staged.dir, META), JSON.stringify(meta, null, 2));
    try {
      await rename(staged.dir, this.at(meta.key));
    } catch (err) {
      if (!(await this.has(meta.key))) throw err;
      await removeTree(staged.dir);
    }
  }

  async discard(staged: { dir: string }): Promise<void> { await removeTree(staged.dir); }

  async remove(key: string): Promise<void> { await removeTree(this.at(key)); }

  /** Allocated bytes of a layer's disk (st_blocks*512: a reflinked layer counts its own extents and shared ones alike). */
  async sizeBytes(key: string): Promise<number> {
    try { return (await stat(this.diskPath(key))).blocks * 512; } catch { return 0; }
  }

  async keys(): Promise<string[]> {
    try { return (await readdir(this.dir)).filter((n) => /^[0-9a-f]{64}$/.test(n)); } catch { return []; }
  }

  /** Remove staging directories no running build owns (a crashed hearthd's). */
  async sweep(): Promise<void> {
    let names: string[] = [];
    try { names = await readdir(this.dir); } catch { return; }
    for (const n of names) {
      const m = /^\.staging-(\d+)-/.exec(n);
      if (m && Number(m[1]) !== process.pid) await removeTree(join(this.dir, n));
    }
  }
}
