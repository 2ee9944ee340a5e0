/**
 * Templates and named snapshots over the cluster (docs/cluster.md, "Templates
 * and snapshots"): the lists gathered from every up node, each item with the
 * `nodes` that hold it; single-record GETs and DELETEs carried to the node
 * that holds the record. Records on a node that is down (or does not answer)
 * come from the registry in PostgreSQL, marked `partial`.
 */
import type { IncomingMessage } from 'node:http';
import { encodeCursor, page, pageLimit } from '../api/routes/sandboxes.js';
import type { ClusterNode } from './node.js';
import { requestJson } from './forward.js';
import { snapshotHolders, templatesNamed, withLocal, type NodeRegistry, type RegistrySnapshot, type RegistryTemplate } from './registry.js';
import type { NodeInfo } from './types.js';

/** An answer the API sends as is (JSON text, so the route's response schema does not strip `nodes`). */
export interface RegistryAnswer { status: number; body: unknown; headers?: Record<string, string> }

/** Either the local route answers (with these `nodes` added to a 200), or this answer is sent. */
export type RegistryResult = { local: true; nodes: string[] | null } | { local: false; answer: RegistryAnswer };

const LOCAL_PLAIN: RegistryResult = { local: true, nodes: null };
const FAN_OUT_TIMEOUT_MS = 10_000;

type Item = Record<string, unknown>;

export interface RegistryApiOptions {
  node: ClusterNode;
  /** The headers of a node-to-node request for `req` (scope local). */
  headers(req: IncomingMessage, keyId: string | null): Record<string, string | string[]>;
}

function cmp(a: string, b: string): number { return a < b ? -1 : a > b ? 1 : 0; }
const sorted = (ids: Iterable<string>): string[] => [...new Set(ids)].sort(cmp);

/** A template known only from the registry (its node is down): the fields the registry holds, the rest empty. */
export function partialTemplate(rows: readonly RegistryTemplate[]): Item {
  const t = rows[0]!;
  return {
    templateID: t.templateId, imageHash: t.imageHash, cpuCount: t.vcpus, memoryMB: t.memoryMib, diskSizeMB: 0, createdAt: t.createdAt, aliases: t.aliases,
    source: t.source, from: null, buildID: null, envVars: {}, user: null, workdir: null, startCommand: null, readyCheck: null, layers: [],
    nodes: sorted(rows.map((r) => r.nodeId)), partial: true,
  };
}

/** A named snapshot known only from the registry. */
export function partialSnapshot(rows: readonly RegistrySnapshot[]): Item {
  const s = rows[0]!;
  return {
    snapshotID: s.snapshotId, names: s.name ? [s.name] : [], sandboxID: s.sandboxId, templateID: s.templateId, cpuCount: s.vcpus, memoryMB: s.memoryMib,
    createdAt: s.createdAt, sizeBytes: 0, nodes: sorted(rows.map((r) => r.nodeId)), partial: true,
  };
}

/** The newest version of the template a name resolves to, and every node's row of that id (all versions). */
function templateVersion(name: string, reg: NodeRegistry): { id: string; imageHash: string; holders: RegistryTemplate[]; all: RegistryTemplate[]; image: boolean } | null {
  const rows = templatesNamed(name, reg.templates);
  if (rows.length === 0) return null;
  const newest = [...rows].sort((a, b) => cmp(b.createdAt, a.createdAt) || cmp(b.imageHash, a.imageHash))[0]!;
  return { id: newest.templateId, imageHash: newest.imageHash, holders: rows.filter((r) => r.imageHash === newest.imageHash), all: rows, image: rows.some((r) => r.source === 'image') };
}

function unavailable(message: string): RegistryAnswer {
  return { status: 503, body: { code: 503, error_code: 'unavailable', message } };
}

export class RegistryApi {
  constructor(private readonly o: RegistryApiOptions) {}

  private get self(): string { return this.o.node.nodeId; }

  /** The registry with this node's own rows from its SQLite; null when PostgreSQL does not answer. */
  private async registry(name?: string): Promise<NodeRegistry | null> {
    try {
      const shared = name === undefined ? await this.o.node.registry() : await this.o.node.registryNamed(name);
      return withLocal(shared, this.o.node.localRegistry(), this.self);
    } catch {
      return null;
    }
  }

  private async upNodes(): Promise<Map<string, NodeInfo>> {
    return new Map((await this.o.node.nodes()).filter((n) => n.state === 'up').map((n) => [n.id, n]));
  }

  /**
   * Asks every up node for its own answer to `path` (scope local). Nodes that
   * fail are named in `missing`; their records then come from the registry.
   */
  private async gather(req: IncomingMessage, keyId: string | null, path: string, up: Map<string, NodeInfo>): Promise<{ parts: { node: string; items: Item[]; more: boolean }[]; missing: string[] }> {
    const headers = this.o.headers(req, keyId);
    const missing: string[] = [];
    const parts = await Promise.all([...up.values()].map(async (n) => {
      try {
        const r = await requestJson(n.address, 'GET', path, headers, FAN_OUT_TIMEOUT_MS);
        if (r.status !== 200 || !Array.isArray(r.body)) throw new Error(`status ${r.status}`);
        return { node: n.id, items: r.body as Item[], more: typeof r.headers['x-next-token'] === 'string' };
      } catch {
        missing.push(n.id);
        return null;
      }
    }));
    return { parts: parts.filter((p) => p !== null), missing: missing.sort(cmp) };
  }

  /** GET /templates: every node's templates; one item per template id and image hash, with the nodes that hold it. */
  async listTemplates(req: IncomingMessage, keyId: string | null): Promise<RegistryAnswer> {
    const reg = await this.registry();
    if (!reg) return unavailable('the cluster database does not answer; GET /templates needs it to list every node\'s templates');
    const up = await this.upNodes();
    const { parts, missing } = await this.gather(req, keyId, req.url ?? '/templates', up);
    const byKey = new Map<string, Item & { nodes: string[] }>();
    const keyOf = (id: unknown, hash: unknown): string => `${String(id)}\0${String(hash)}`;
    for (const p of parts) {
      for (const it of p.items) {
        const k = keyOf(it['templateID'], it['imageHash']);
        const had = byKey.get(k);
        if (had) had.nodes = sorted([...had.nodes, p.node]); else byKey.set(k, { ...it, nodes: [p.node] });
      }
    }
    // Nodes that did not answer (down, or missing): their records from the registry.
    const answered = new Set(parts.map((p) => p.node));
    const rest = new Map<string, RegistryTemplate[]>();
    for (const t of reg.templates) {
      if (answered.has(t.nodeId)) continue;
      const k = keyOf(t.templateId, t.imageHash);
      const had = byKey.get(k);
      if (had) { had.nodes = sorted([...had.nodes, t.nodeId]); continue; }
      rest.set(k, [...(rest.get(k) ?? []), t]);
    }
    for (const [k, rows] of rest) byKey.set(k, partialTemplate(rows) as Item & { nodes: string[] });
    const items = [...byKey.values()].sort((a, b) => cmp(String(a['templateID']), String(b['templateID'])) || cmp(String(a['createdAt']), String(b['createdAt'])));
    return { status: 200, body: items, ...(missing.length ? { headers: { 'x-hearth-missing-nodes': missing.join(',') } } : {}) };
  }

  /**
   * GET /snapshots: every node's named snapshots, newest first, in pages. Each
   * node answers its own first page after the cursor (the cursor is a global
   * sort key), so the merged first `limit` items are the cluster's.
   */
  async listSnapshots(req: IncomingMessage, keyId: string | null, q: { sandboxID?: string; name?: string; limit?: string; nextToken?: string }): Promise<RegistryAnswer> {
    const limit = pageLimit(q.limit);
    const reg = await this.registry();
    if (!reg) return unavailable('the cluster database does not answer; GET /snapshots needs it to list every node\'s snapshots');
    const up = await this.upNodes();
    const { parts, missing } = await this.gather(req, keyId, req.url ?? '/snapshots', up);
    const byId = new Map<string, Item & { nodes: string[] }>();
    for (const p of parts) {
      for (const it of p.items) {
        const id = String(it['snapshotID']);
        const had = byId.get(id);
        if (had) had.nodes = sorted([...had.nodes, p.node]); else byId.set(id, { ...it, nodes: [p.node] });
      }
    }
    const answered = new Set(parts.map((p) => p.node));
    const rest = new Map<string, RegistrySnapshot[]>();
    for (const s of reg.snapshots) {
      if (answered.has(s.nodeId)) continue;
      if (q.sandboxID && s.sandboxId !== q.sandboxID) continue;
      if (q.name && s.name !== q.name && s.snapshotId !== q.name) continue;
      const had = byId.get(s.snapshotId);
      if (had) { had.nodes = sorted([...had.nodes, s.nodeId]); continue; }
      rest.set(s.snapshotId, [...(rest.get(s.snapshotId) ?? []), s]);
    }
    for (const [id, rows] of rest) byId.set(id, partialSnapshot(rows) as Item & { nodes: string[] });
    const keyOf = (it: Item): [string, string] => [String(it['createdAt']), String(it['snapshotID'])];
    const { items, next } = page([...byId.values()], keyOf, 'desc', limit, q.nextToken);
    // A node that had more than it gave means more pages, even when the merged list fits this one.
    const last = items.at(-1);
    const token = next ?? (parts.some((p) => p.more) && last ? encodeCursor(...keyOf(last)) : null);
    const headers: Record<string, string> = {};
    if (token) headers['x-next-token'] = token;
    if (missing.length) headers['x-hearth-missing-nodes'] = missing.join(',');
    return { status: 200, body: items, headers };
  }

  /**
   * GET /templates/{id}: the newest version of the template the name resolves to
   * (as placement decides). This node answers when it holds that version; else
   * the first up node that holds it; else the registry (partial).
   */
  async getTemplate(req: IncomingMessage, keyId: string | null, name: string): Promise<RegistryResult> {
    const reg = await this.registry(name);
    if (!reg) return LOCAL_PLAIN;
    const v = templateVersion(name, reg);
    if (!v) return LOCAL_PLAIN;
    const nodes = sorted(v.holders.map((h) => h.nodeId));
    if (nodes.includes(this.self)) return { local: true, nodes };
    return this.fromHolder(req, keyId, `/templates/${encodeURIComponent(v.id)}`, nodes, () => partialTemplate(v.holders));
  }

  /** GET /snapshots/{id}: from the node that holds it, or the registry. */
  async getSnapshot(req: IncomingMessage, keyId: string | null, name: string): Promise<RegistryResult> {
    const reg = await this.registry(name);
    if (!reg) return LOCAL_PLAIN;
    const h = snapshotHolders(name, reg.snapshots);
    if (!h) return LOCAL_PLAIN;
    if (h.nodes.includes(this.self)) return { local: true, nodes: h.nodes };
    return this.fromHolder(req, keyId, `/snapshots/${encodeURIComponent(h.snapshotId)}`, h.nodes, () => partialSnapshot(h.rows));
  }

  private async fromHolder(req: IncomingMessage, keyId: string | null, path: string, nodes: string[], partial: () => Item): Promise<RegistryResult> {
    const up = await this.upNodes().catch(() => new Map<string, NodeInfo>());
    const holder = nodes.map((id) => up.get(id)).find((n) => n !== undefined);
    if (!holder) return { local: false, answer: { status: 200, body: partial() } };
    const r = await requestJson(holder.address, 'GET', path, this.o.headers(req, keyId), FAN_OUT_TIMEOUT_MS).catch((err: unknown) => ({
      status: 502, headers: {}, body: { code: 502, error_code: 'host_failure', message: `asking node ${holder.id} failed: ${err instanceof Error ? err.message : String(err)}` },
    }));
    const body = r.status === 200 && r.body && typeof r.body === 'object' ? { ...(r.body as Item), nodes } : r.body;
    return { local: false, answer: { status: r.status, body, headers: { 'x-hearth-node': holder.id } } };
  }

  /** DELETE /snapshots/{id} (and E2B's DELETE /templates/{snapshot}): on the node that holds it. */
  async deleteSnapshot(req: IncomingMessage, keyId: string | null, name: string): Promise<RegistryResult> {
    const reg = await this.registry(name);
    if (!reg) return LOCAL_PLAIN;
    const h = snapshotHolders(name, reg.snapshots);
    if (!h || h.nodes.includes(this.self)) return LOCAL_PLAIN;
    return { local: false, answer: await this.deleteOn(req, keyId, `/snapshots/${encodeURIComponent(h.snapshotId)}`, `snapshot ${name}`, h.nodes) };
  }

  /**
   * DELETE /templates/{id}: on every node that holds a template of that id (any
   * version), this node first, then by node id, stopping at the first refusal
   * (a node's own 409 while sandboxes or snapshots use it); the answer names the
   * nodes it was already deleted on. When a holder is down nothing is deleted
   * (503): it would come back with the node. A name no node has as a template
   * is E2B's snapshot delete.
   */
  async deleteTemplate(req: IncomingMessage, keyId: string | null, name: string): Promise<RegistryResult> {
    const reg = await this.registry(name);
    if (!reg) return LOCAL_PLAIN;
    const v = templateVersion(name, reg);
    if (!v) return this.deleteSnapshot(req, keyId, name);
    if (v.image) return LOCAL_PLAIN; // the default image's template: this node refuses (409), as on one host
    const nodes = sorted(v.all.map((t) => t.nodeId));
    if (nodes.length === 1 && nodes[0] === this.self) return LOCAL_PLAIN;
    const ordered = [...nodes.filter((n) => n === this.self), ...nodes.filter((n) => n !== this.self)];
    return { local: false, answer: await this.deleteOn(req, keyId, `/templates/${encodeURIComponent(v.id)}`, `template ${v.id}`, ordered) };
  }

  private async deleteOn(req: IncomingMessage, keyId: string | null, path: string, what: string, nodes: string[]): Promise<RegistryAnswer> {
    let up: Map<string, NodeInfo>;
    try { up = await this.upNodes(); } catch (err) { return unavailable(`the cluster database does not answer: ${err instanceof Error ? err.message : String(err)}`); }
    const down = nodes.filter((n) => !up.has(n));
    if (down.length > 0) return unavailable(`${what} is on node${down.length > 1 ? 's' : ''} ${down.join(', ')}, which ${down.length > 1 ? 'are' : 'is'} down; nothing was deleted (retry once ${down.length > 1 ? 'they are' : 'it is'} back)`);
    const done: string[] = [];
    const headers = this.o.headers(req, keyId);
    for (const id of nodes) {
      const n = up.get(id)!;
      let r: { status: number; body: unknown };
      try {
        r = await requestJson(n.address, 'DELETE', path, headers, 120_000);
      } catch (err) {
        r = { status: 502, body: { code: 502, error_code: 'host_failure', message: `node ${id} did not answer: ${err instanceof Error ? err.message : String(err)}` } };
      }
      if (r.status === 204) { done.push(id); continue; }
      const b = (r.body && typeof r.body === 'object' ? r.body : {}) as { message?: string; error_code?: string };
      const msg = `node ${id}: ${b.message ?? `status ${r.status}`}${done.length ? ` (already deleted on ${done.join(', ')})` : ''}`;
      return { status: r.status, body: { code: r.status, error_code: b.error_code ?? 'host_failure', message: msg }, headers: { 'x-hearth-node': id } };
    }
    return { status: 204, body: null, headers: { 'x-hearth-deleted-on': done.join(',') } };
  }
}
