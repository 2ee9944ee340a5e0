/**
 * The template and snapshot registry (docs/cluster.md, "What lives where"):
 * which templates and named snapshots exist on which node. Each node's SQLite
 * stays the truth about its own records; PostgreSQL holds a mirror that every
 * node reads to place creates and to answer the cluster-wide lists. Pure
 * parts only (the records, what a node publishes, which nodes a create may
 * go to); pg-store.ts stores them, node.ts publishes them.
 */
import type { TemplateSource } from '../core/types.js';
import type { Store } from '../store/store.js';

/** One template on one node. */
export interface RegistryTemplate {
  nodeId: string;
  templateId: string;
  aliases: string[];
  imageHash: string;
  source: TemplateSource;
  vcpus: number;
  memoryMib: number;
  createdAt: string;
}

/** One named snapshot on one node. */
export interface RegistrySnapshot {
  nodeId: string;
  snapshotId: string;
  name: string | null;
  sandboxId: string | null;
  templateId: string;
  vcpus: number;
  memoryMib: number;
  createdAt: string;
}

export interface NodeRegistry { templates: RegistryTemplate[]; snapshots: RegistrySnapshot[] }

/** What a node has, read from its own SQLite (templates of every source; named snapshots only, never warm or fork ones). */
export function localRegistry(store: Store, nodeId: string): NodeRegistry {
  return {
    templates: store.listTemplates().map((t) => ({
      nodeId, templateId: t.id, aliases: [...t.aliases].sort(), imageHash: t.imageHash, source: t.source, vcpus: t.vcpus, memoryMib: t.memoryMib, createdAt: t.createdAt,
    })),
    snapshots: store.listSnapshots({ kind: 'named' }).map((s) => ({
      nodeId, snapshotId: s.id, name: s.name, sandboxId: s.sandboxId, templateId: s.templateId, vcpus: s.vcpus, memoryMib: s.memoryMib, createdAt: s.createdAt,
    })),
  };
}

/** A stable fingerprint of a node's registry: publishing happens only when it changes (or on a resync). */
export function registryFingerprint(r: NodeRegistry): string {
  const t = [...r.templates].sort((a, b) => cmp(a.templateId, b.templateId));
  const s = [...r.snapshots].sort((a, b) => cmp(a.snapshotId, b.snapshotId));
  return JSON.stringify([t, s]);
}

/**
 * The registry as the entry node sees it: PostgreSQL's rows, except that its
 * own rows come from its SQLite (a template built here a moment ago counts here
 * before the next heartbeat publishes it).
 */
export function withLocal(shared: NodeRegistry, local: NodeRegistry, selfId: string): NodeRegistry {
  return {
    templates: [...shared.templates.filter((t) => t.nodeId !== selfId), ...local.templates],
    snapshots: [...shared.snapshots.filter((s) => s.nodeId !== selfId), ...local.snapshots],
  };
}

function cmp(a: string, b: string): number { return a < b ? -1 : a > b ? 1 : 0; }

/**
 * What a create's `templateID` names, cluster-wide, and which nodes can carry
 * it out:
 * - `anywhere`: the default image's template (each node has its own): no filter;
 * - `nodes`: a custom template or a named snapshot: only the nodes that hold it;
 * - `missing`: no node has it.
 */
export type CreateSource =
  | { kind: 'anywhere'; templateId: string; memoryMib: number }
  | { kind: 'nodes'; what: 'template' | 'snapshot'; id: string; imageHash: string | null; nodes: string[]; memoryMib: number }
  | { kind: 'missing' };

/**
 * The template rows a name resolves to, as a single host's store resolves it:
 * by id first, else by alias (the lowest template id when several have it).
 */
export function templatesNamed(name: string, rows: readonly RegistryTemplate[]): RegistryTemplate[] {
  const byId = rows.filter((t) => t.templateId === name);
  if (byId.length > 0) return byId;
  const byAlias = rows.filter((t) => t.aliases.includes(name));
  if (byAlias.length === 0) return [];
  const id = byAlias.map((t) => t.templateId).sort(cmp)[0]!;
  return byAlias.filter((t) => t.templateId === id);
}

/**
 * Resolves a create's name over the registry, as SandboxManager.resolveSource
 * does on one host (a template by id or alias first, then a named snapshot by
 * id or name, the newest when a name was reused). Template versions: the nodes
 * holding the same id AND image hash hold the same template; when nodes hold
 * different versions of one id, the newest (`createdAt`, then the image hash)
 * is the one meant, so every entry node decides the same.
 */
export function sourceOfCreate(name: string, reg: NodeRegistry): CreateSource {
  const templates = templatesNamed(name, reg.templates);
  if (templates.length > 0) {
    const image = templates.find((t) => t.source === 'image');
    if (image) return { kind: 'anywhere', templateId: image.templateId, memoryMib: image.memoryMib };
    const newest = [...templates].sort((a, b) => cmp(b.createdAt, a.createdAt) || cmp(b.imageHash, a.imageHash))[0]!;
    const nodes = templates.filter((t) => t.imageHash === newest.imageHash).map((t) => t.nodeId);
    return { kind: 'nodes', what: 'template', id: newest.templateId, imageHash: newest.imageHash, nodes: [...new Set(nodes)].sort(cmp), memoryMib: newest.memoryMib };
  }
  const snaps = reg.snapshots.filter((s) => s.snapshotId === name || s.name === name);
  if (snaps.length > 0) {
    const newest = [...snaps].sort((a, b) => cmp(b.createdAt, a.createdAt) || cmp(b.snapshotId, a.snapshotId))[0]!;
    const nodes = snaps.filter((s) => s.snapshotId === newest.snapshotId).map((s) => s.nodeId);
    return { kind: 'nodes', what: 'snapshot', id: newest.snapshotId, imageHash: null, nodes: [...new Set(nodes)].sort(cmp), memoryMib: newest.memoryMib };
  }
  return { kind: 'missing' };
}

/** The nodes holding a named snapshot (by id, or by name: the newest with that name), or null. */
export function snapshotHolders(name: string, rows: readonly RegistrySnapshot[]): { snapshotId: string; nodes: string[]; rows: RegistrySnapshot[] } | null {
  const src = sourceOfCreate(name, { templates: [], snapshots: [...rows] });
  if (src.kind !== 'nodes') return null;
  return { snapshotId: src.id, nodes: src.nodes, rows: rows.filter((s) => s.snapshotId === src.id) };
}
