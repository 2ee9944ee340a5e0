/**
 * The API side of cluster mode (docs/cluster.md): which requests another node
 * answers, and carrying them there. src/api/server.ts calls in at three points:
 * every request (admit, then route a sandbox's requests to its owner), the
 * create and list routes (placement and fan-out), and upgrades.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import type { Store } from '../store/store.js';
import type { ClusterNode, PullFirst } from './node.js';
import { admitClusterHeaders, forwardedHeaders, MOVED_HEADER, NODE_HEADER } from './credential.js';
import { fetchJson, forwardHttp, forwardUpgrade, requestJson, unknownBody, unknownListItem } from './forward.js';
import type { SandboxMover } from './move.js';
import type { TemplatePuller } from './pull.js';
import type { NodeInfo } from './types.js';
import { decodeCursor, encodeCursor, pageLimit } from '../api/routes/sandboxes.js';
import { RegistryApi } from './registry-api.js';

export interface Admitted { fromNode: boolean; scopeLocal: boolean; keyId: string | null; by: string | null }

export interface ClusterGatewayOptions {
  node: ClusterNode;
  token: string;
  store: Store;
  log: FastifyBaseLogger;
  /** Nodes with less free disk are not chosen for creates (MiB). */
  minFreeDiskMib: number;
  /** Moves paused sandboxes to other nodes (a resume on a full node). */
  mover: SandboxMover;
  /** Copies custom templates from the nodes that hold them (a create no holder has room for). */
  puller: TemplatePuller;
  /** Why this host cannot start a sandbox of this much memory now, or null (the manager's admission). */
  admissionRefusal: (memoryMib: number) => string | null;
}

const NOT_ADMITTED: Admitted = { fromNode: false, scopeLocal: false, keyId: null, by: null };

export class ClusterGateway {
  private readonly admitted = new WeakMap<IncomingMessage, Admitted>();
  /** Templates and snapshots over the cluster (GET lists, single GETs, DELETEs). */
  readonly registry: RegistryApi;

  constructor(private readonly o: ClusterGatewayOptions) {
    this.registry = new RegistryApi({ node: o.node, headers: (req, keyId) => this.headers(req, keyId, true) });
  }

  get nodeId(): string { return this.o.node.nodeId; }
  get node(): ClusterNode { return this.o.node; }

  /** First thing on every request and upgrade: verify or strip the cluster headers, and name the answering node. */
  admit(req: IncomingMessage, res?: ServerResponse): Admitted {
    const a = admitClusterHeaders(req.headers, this.o.token);
    this.admitted.set(req, a);
    res?.setHeader(NODE_HEADER, this.o.node.nodeId);
    return a;
  }

  info(req: IncomingMessage): Admitted {
    return this.admitted.get(req) ?? NOT_ADMITTED;
  }

  /** Does this node own the sandbox (its own SQLite has it)? */
  owns(id: string): boolean {
    return this.o.store.getSandbox(id) !== undefined;
  }

  private headers(req: IncomingMessage, keyId: string | null, scopeLocal: boolean): Record<string, string | string[]> {
    return forwardedHeaders(req.headers, this.o.token, this.o.node.nodeId, keyId, scopeLocal);
  }

  /**
   * A request for a sandbox this node does not own: forwarded to its owner when
   * PostgreSQL places it on an up node ('handled'); 503 with state unknown when
   * that node is down, or when PostgreSQL cannot say; 'local' when no node has
   * it (this node answers: 404).
   */
  async route(req: IncomingMessage, res: ServerResponse, sandboxId: string, keyId: string | null, hijack: () => void): Promise<'local' | 'handled'> {
    let p: Awaited<ReturnType<ClusterNode['placement']>>;
    try {
      p = await this.o.node.placement(sandboxId);
    } catch (err) {
      hijack();
      this.sendJson(res, 503, { code: 503, error_code: 'unavailable', message: `sandbox ${sandboxId} is not on node ${this.nodeId}, and the cluster database cannot say where it is: ${err instanceof Error ? err.message : String(err)}` });
      return 'handled';
    }
    if (!p || p.nodeId === this.nodeId) return 'local';
    hijack();
    if (p.node.state !== 'up') { this.sendJson(res, 503, unknownBody(p, p.node)); return 'handled'; }
    forwardHttp(req, res, p.node.address, req.url ?? '/', this.headers(req, keyId, true));
    return 'handled';
  }

  /** An upgrade for a sandbox another node owns: spliced to it. False: answer here. */
  async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, sandboxId: string): Promise<boolean> {
    if (this.owns(sandboxId)) return false;
    const p = await this.o.node.placement(sandboxId).catch(() => null);
    if (!p || p.nodeId === this.nodeId || p.node.state !== 'up') return false;
    forwardUpgrade(req, socket, head, p.node.address, this.headers(req, null, true));
    return true;
  }

  /**
   * POST /sandboxes (and /v2/sandboxes) from a client: placed by free capacity
   * and warm-template locality among the nodes that hold its template or
   * snapshot (the registry; the default image's template is everywhere), and
   * carried out by the chosen node. 404 when no node holds it, or only down
   * ones; 503 when its holders (this node not among them) have no room.
   * 'local' when this node wins, when none has room and this node may take it
   * (its own admission answers 503), or when PostgreSQL does not answer
   * (creates then stay on the node asked).
   */
  async placeCreate(req: IncomingMessage, res: ServerResponse, body: { templateID?: string; memoryMB?: number }, keyId: string | null, hijack: () => void): Promise<'local' | 'handled'> {
    const d = await this.o.node.decideCreate(body.templateID ?? 'base', body.memoryMB, this.o.minFreeDiskMib);
    // No node that holds the template has room: the chosen node pulls it first (docs/cluster.md, "Pulling a template").
    const pullFailed = (pull: PullFirst, err: unknown): 'handled' => {
      hijack();
      this.sendJson(res, 503, { code: 503, error_code: 'capacity', message: `no node holding template ${pull.templateId} has room, and copying it to one that has failed: ${err instanceof Error ? err.message : String(err)}` });
      return 'handled';
    };
    if (d.kind === 'local') {
      if (d.pull) {
        try { await this.o.puller.pull(d.pull.templateId, { from: d.pull.from }); } catch (err) { return pullFailed(d.pull, err); }
      }
      return 'local';
    }
    if (d.kind === 'forward' && d.pull) {
      try { await this.remotePull(req, d.node, d.pull, keyId); } catch (err) { return pullFailed(d.pull, err); }
    }
    hijack();
    if (d.kind === 'refuse') {
      this.sendJson(res, d.status, { code: d.status, error_code: d.errorCode, message: d.message });
      return 'handled';
    }
    const headers = this.headers(req, keyId, true);
    headers['content-type'] = 'application/json';
    forwardHttp(req, res, d.node.address, req.url ?? '/sandboxes', headers, Buffer.from(JSON.stringify(body), 'utf8'));
    return 'handled';
  }

  get mover(): SandboxMover { return this.o.mover; }
  get puller(): TemplatePuller { return this.o.puller; }

  /** Asks `node` to pull a template (POST /templates/{id}/pull as a node) and waits for it. */
  private async remotePull(req: IncomingMessage, node: NodeInfo, pull: PullFirst, keyId: string | null): Promise<void> {
    const headers: Record<string, string | string[]> = { ...this.headers(req, keyId, true), 'content-type': 'application/json' };
    const r = await requestJson(node.address, 'POST', `/templates/${encodeURIComponent(pull.templateId)}/pull`, headers, 600_000, JSON.stringify({ from: pull.from }));
    if (r.status !== 200) throw new Error(`node ${node.id} answered ${r.status}: ${(r.body as { message?: string } | null)?.message ?? ''}`);
  }

  /**
   * A resume (or connect) of a paused sandbox of this node when this host has
   * no room to run it (docs/cluster.md, "Moving a paused sandbox"): the sandbox
   * moves to a node that has, and the request follows it there ('handled').
   * 'local' when it fits here, is not paused here, was just moved here, or no
   * node takes it (the local resume then answers with its own 503 and reason).
   */
  async resumeElsewhere(req: IncomingMessage, res: ServerResponse, id: string, body: unknown, keyId: string | null, hijack: () => void): Promise<'local' | 'handled'> {
    const rec = this.o.store.getSandbox(id);
    if (rec?.state !== 'paused' || req.headers[MOVED_HEADER] === '1') return 'local';
    const full = this.o.admissionRefusal(rec.memoryMib);
    if (!full) return 'local';
    let moved: Awaited<ReturnType<SandboxMover['moveOut']>>;
    try {
      moved = await this.o.mover.moveOut(id);
    } catch (err) {
      this.o.log.warn({ sandbox: id, err: err instanceof Error ? err.message : String(err) }, 'cluster: this node is full and the sandbox could not move; resuming here is refused');
      return 'local';
    }
    const target = (await this.o.node.nodes().catch(() => [])).find((n) => n.id === moved.node);
    if (!target) return 'local'; // cannot happen short of PostgreSQL vanishing: the local 404 says it is not here
    this.o.log.info({ sandbox: id, node: target.id, reason: full }, 'cluster: resuming a paused sandbox on another node (this one is full)');
    hijack();
    // keyId is the request's actor: for a forwarded request, the key id the forwarding node verified.
    const headers = this.headers(req, keyId, true);
    headers[MOVED_HEADER] = '1';
    headers['content-type'] = 'application/json';
    forwardHttp(req, res, target.address, req.url ?? `/sandboxes/${id}/resume`, headers, Buffer.from(JSON.stringify(body ?? {}), 'utf8'));
    return 'handled';
  }

  /**
   * The same GET (this request's URL) asked of every up node as a node, with
   * scope local. Null when PostgreSQL cannot say which nodes exist (a 503 was
   * sent). A node that does not answer in 10 s, or not with a JSON array
   * (a 400 aside: the query's fault, given back as it is), is `missing`.
   */
  private async askEveryNode(req: IncomingMessage, res: ServerResponse, keyId: string | null): Promise<{ nodes: NodeInfo[]; answers: { node: NodeInfo; status: number; items: Record<string, unknown>[]; headers: Record<string, unknown> }[]; missing: string[] } | null> {
    let nodes: NodeInfo[];
    try {
      nodes = await this.o.node.nodes();
    } catch (err) {
      this.sendJson(res, 503, { code: 503, error_code: 'unavailable', message: `the cluster database does not answer: ${err instanceof Error ? err.message : String(err)}` });
      return null;
    }
    const headers = this.headers(req, keyId, true);
    const missing: string[] = [];
    const answers = (await Promise.all(nodes.filter((n) => n.state === 'up').map(async (n) => {
      try {
        const r = await fetchJson(n.address, req.url ?? '/', headers, 10_000);
        if (r.status === 400) return { node: n, status: 400, items: [r.body as Record<string, unknown>], headers: r.headers };
        if (r.status !== 200 || !Array.isArray(r.body)) throw new Error(`status ${r.status}`);
        return { node: n, status: 200, items: r.body as Record<string, unknown>[], headers: r.headers };
      } catch {
        missing.push(n.id);
        return null;
      }
    }))).filter((a) => a !== null);
    return { nodes, answers, missing };
  }

  /**
   * GET /sandboxes from a client: every up node's own list (asked with scope
   * local), each item with its `node`, plus the placements on down nodes as
   * state `unknown`. A node that does not answer is left out and named in the
   * X-Hearth-Missing-Nodes header.
   */
  async list(req: IncomingMessage, res: ServerResponse, keyId: string | null): Promise<void> {
    const asked = await this.askEveryNode(req, res, keyId);
    if (!asked) return;
    const refusal = asked.answers.find((a) => a.status === 400);
    if (refusal) { this.sendJson(res, 400, refusal.items[0]); return; }
    const parts = asked.answers.map((a) => a.items.map((x) => ({ ...x, node: a.node.id })));
    const down = new Set(asked.nodes.filter((n) => n.state !== 'up').map((n) => n.id));
    const query = new URLSearchParams((req.url ?? '').split('?')[1] ?? '');
    const states = query.get('state')?.split(',');
    let unknown: Record<string, unknown>[] = [];
    if (down.size > 0 && (!states || states.includes('unknown'))) {
      unknown = (await this.o.node.placements().catch(() => []))
        .filter((p) => down.has(p.nodeId) && p.state === 'unknown')
        .map(unknownListItem);
    }
    if (asked.missing.length) res.setHeader('x-hearth-missing-nodes', asked.missing.join(','));
    this.sendJson(res, 200, [...parts.flat(), ...unknown]);
  }

  /**
   * GET /v2/sandboxes from a client (E2B's paged list): every up node's page
   * for the same query (its filters, `limit`, `order` and `nextToken`), merged
   * in start-time order and cut to `limit`. The cursor is (start time, id), so
   * each node's page after it holds every item of the merged page that is on
   * that node: the pages are exact, not approximate. E2B's list has no
   * `unknown` state: sandboxes of down nodes are left out, and those nodes are
   * named in X-Hearth-Missing-Nodes (as nodes that do not answer).
   */
  async listPaged(req: IncomingMessage, res: ServerResponse, keyId: string | null): Promise<void> {
    const query = new URLSearchParams((req.url ?? '').split('?')[1] ?? '');
    let limit: number;
    try {
      limit = pageLimit(query.get('limit') ?? undefined);
      const token = query.get('nextToken');
      if (token) decodeCursor(token);
    } catch (err) {
      this.sendJson(res, 400, { code: 400, error_code: 'invalid_argument', message: err instanceof Error ? err.message : String(err) });
      return;
    }
    const dir = query.get('order') === 'asc' ? 1 : -1;
    const asked = await this.askEveryNode(req, res, keyId);
    if (!asked) return;
    const refusal = asked.answers.find((a) => a.status === 400);
    if (refusal) { this.sendJson(res, 400, refusal.items[0]); return; }
    const more = asked.answers.some((a) => a.headers['x-next-token']);
    const parts = asked.answers.map((a) => a.items);
    // E2B's list has no `unknown`: down nodes are named as missing.
    const missing = [...asked.nodes.filter((n) => n.state !== 'up').map((n) => n.id), ...asked.missing];
    const key = (x: Record<string, unknown>): [string, string] => [String(x['startedAt']), String(x['sandboxID'])];
    const cmp = (a: [string, string], b: [string, string]): number => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0);
    const all = parts.flat().sort((a, b) => dir * cmp(key(a), key(b)));
    const out = all.slice(0, limit);
    const last = out.at(-1);
    if ((more || all.length > limit) && last) res.setHeader('x-next-token', encodeCursor(...key(last)));
    if (missing.length) res.setHeader('x-hearth-missing-nodes', missing.join(','));
    this.sendJson(res, 200, out);
  }

  private sendJson(res: ServerResponse, status: number, body: unknown): void {
    if (res.headersSent) { res.destroy(); return; }
    const data = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(data) });
    res.end(data);
  }
}
