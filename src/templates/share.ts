/**
 * A custom template copied to another node (docs/cluster.md, "Pulling a
 * template"): what the node that has it describes, and how the node that pulls
 * it registers what it received. A template's disk is its last layer (each
 * layer is a whole image), so one layer directory travels; the kernel is the
 * parent's on the receiving node, which must hold the parent at the same image.
 */
import { stat } from 'node:fs/promises';
import { ConflictError, NotFoundError } from '../core/errors.js';
import type { Template } from '../core/types.js';
import type { Store } from '../store/store.js';
import type { LayerMeta, LayerStore } from './layers.js';

/** What another node needs to register a copy of a template. */
export interface TemplateExport {
  template: Template;
  /** Its last layer (the disk): key and layer.json. */
  layer: LayerMeta;
  /** The parent's image hash here: the receiving node must have the parent at the same one. */
  parentImageHash: string;
  /** The disk's file (in the layer's directory) and its size. */
  files: { name: string; size: number }[];
}

/** Describes a template of this node for a pull; only custom templates (with a layer) travel: image templates every node builds itself. */
export async function describeTemplate(store: Store, layers: LayerStore, idOrAlias: string): Promise<{ exp: TemplateExport; dir: string }> {
  const t = store.getTemplate(idOrAlias);
  if (!t) throw new NotFoundError(`template ${idOrAlias} does not exist on this node`);
  const key = t.layers.at(-1);
  if (!key || !t.parentId) throw new ConflictError(`template ${t.id} is an image template: every node builds its own`);
  const parent = store.getTemplate(t.parentId);
  if (!parent) throw new ConflictError(`template ${t.id}'s parent ${t.parentId} no longer exists on this node`);
  const layer = await layers.meta(key);
  if (!layer || layers.diskPath(key) !== t.rootfsPath) throw new ConflictError(`template ${t.id}'s disk is not its last layer on this node`);
  const size = (await stat(t.rootfsPath)).size;
  return { exp: { template: t, layer, parentImageHash: parent.imageHash, files: [{ name: 'rootfs.ext4', size }] }, dir: layers.dirOf(key) };
}

/** Why this node cannot register the template described (409 text), or null. Its parent must be here at the same image. */
export function templateImportRefusal(store: Store, exp: TemplateExport): string | null {
  const t = exp.template;
  const have = store.getTemplate(t.id);
  if (have && have.id === t.id && have.imageHash === t.imageHash) return null; // already here: nothing to do
  if (have) return `a different template ${t.id} (image ${have.imageHash.slice(0, 12)}) exists on this node`;
  const parent = t.parentId ? store.getTemplate(t.parentId) : undefined;
  if (!parent || parent.id !== t.parentId) return `template ${t.id} needs its parent ${t.parentId ?? '?'} on this node first`;
  if (parent.imageHash !== exp.parentImageHash) return `template ${t.id} needs parent ${parent.id} at image ${exp.parentImageHash.slice(0, 12)}; this node has ${parent.imageHash.slice(0, 12)}`;
  return null;
}

/**
 * Registers a pulled template: `receive` writes its disk into a staged layer
 * directory, which is committed under the layer's key (a layer already there is
 * identical by construction), then the template is stored with this node's
 * paths: its disk in this node's layers, the parent's kernel and initrd here.
 */
export async function importTemplate(store: Store, layers: LayerStore, exp: TemplateExport, receive: (dir: string) => Promise<void>): Promise<Template> {
  const refused = templateImportRefusal(store, exp);
  if (refused) throw new ConflictError(refused);
  const existing = store.getTemplate(exp.template.id);
  if (existing) return existing;
  const parent = store.getTemplate(exp.template.parentId!)!;
  const staged = await layers.stage();
  try {
    await receive(staged.dir);
    await layers.commit(staged, exp.layer);
  } catch (err) {
    await layers.discard(staged);
    throw err;
  }
  const rootfsPath = layers.diskPath(exp.layer.key);
  const t: Template = {
    ...exp.template,
    kernelPath: parent.kernelPath, initrdPath: parent.initrdPath,
    rootfsPath, rootfsSizeBytes: (await stat(rootfsPath)).size,
    // The build that made it ran on another node: its log is there.
    buildId: null,
  };
  store.upsertTemplate(t);
  return t;
}
