/**
 * Pulling a custom template from another node (docs/cluster.md, "Pulling a
 * template"): its disk (the last layer) and its warm snapshots, each streamed
 * in the move format (src/cluster/transfer.ts: sparse, checksummed per file)
 * from a node that holds it. A node pulls when a create of the template is
 * placed on it because no holder has room, or when asked
 * (POST /templates/{id}/pull). Parents are pulled first; warm snapshots made
 * under another set-up are skipped (this node then builds its own on the
 * first create, as after any build).
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import type { SandboxManager, WarmExport } from '../core/manager.js';
import { ConflictError, HearthError, HostFailureError, NotFoundError } from '../core/errors.js';
import type { Template } from '../core/types.js';
import type { Store } from '../store/store.js';
import type { LayerStore } from '../templates/layers.js';
import { describeTemplate, importTemplate, type TemplateExport } from '../templates/share.js';
import { answerMessage, nodeCredential } from './credential.js';
import type { ClusterNode } from './node.js';
import { encodeTransfer, TransferReader } from './transfer.js';
import type { NodeInfo } from './types.js';

/** Node-to-node routes (cluster token only). */
export const templateExportPath = (id: string): string => `/cluster/templates/${encodeURIComponent(id)}/export`;
export const warmListPath = (id: string): string => `/cluster/templates/${encodeURIComponent(id)}/warm`;
export const warmExportPath = (id: string, snapshotId: string): string => `/cluster/templates/${encodeURIComponent(id)}/warm/${encodeURIComponent(snapshotId)}/export`;

/** How deep a chain of custom templates a pull follows (parents first). */
const MAX_DEPTH = 8;

export interface PullResult { templateID: string; from: string; pulled: string[]; warmSnapshots: number; bytes: number; ms: number }

export interface TemplatePullerOptions {
  manager: SandboxManager;
  store: Store;
  layers: LayerStore;
  node: ClusterNode;
  token: string;
  log: FastifyBaseLogger;
}

export class TemplatePuller {
  /** Pulls in flight by template id: concurrent creates of one template share one pull. */
  private readonly inFlight = new Map<string, Promise<PullResult>>();

  constructor(private readonly o: TemplatePullerOptions) {}

  // ---- the holder's side

  /** The template's disk as a transfer stream (manifest: its TemplateExport). */
  async exportTemplate(id: string): Promise<Readable> {
    const { exp, dir } = await describeTemplate(this.o.store, this.o.layers, id);
    return encodeTransfer(exp, dir, exp.files.map((f) => f.name));
  }

  warmList(id: string, signal: AbortSignal): Promise<WarmExport[]> {
    return this.o.manager.warmExports(id, signal);
  }

  /** One warm snapshot as a transfer stream (manifest: its WarmExport). */
  async exportWarm(id: string, snapshotId: string, signal: AbortSignal): Promise<Readable> {
    const exp = (await this.o.manager.warmExports(id, signal)).find((w) => w.snapshot.id === snapshotId);
    if (!exp) throw new NotFoundError(`no warm snapshot ${snapshotId} of template ${id} on this node`);
    return encodeTransfer(exp, this.o.manager.warmDir(id, snapshotId), exp.files.map((f) => f.name));
  }

  // ---- the puller's side

  /**
   * Makes `id` (and its parents) a template of this node, with its warm
   * snapshots, copied from `from` or from an up node that holds it. Nothing to
   * do when this node has it already.
   */
  pull(id: string, opts: { from?: string; signal?: AbortSignal } = {}): Promise<PullResult> {
    const running = this.inFlight.get(id);
    if (running) return running;
    const p = this.doPull(id, opts.from, opts.signal ?? AbortSignal.timeout(600_000)).finally(() => this.inFlight.delete(id));
    this.inFlight.set(id, p);
    return p;
  }

  private async doPull(id: string, from: string | undefined, signal: AbortSignal): Promise<PullResult> {
    const t0 = Date.now();
    const have = this.o.store.getTemplate(id);
    if (have) return { templateID: have.id, from: this.o.node.nodeId, pulled: [], warmSnapshots: 0, bytes: 0, ms: 0 };
    const holder = await this.holder(id, from);
    const result: PullResult = { templateID: id, from: holder.id, pulled: [], warmSnapshots: 0, bytes: 0, ms: 0 };
    await this.pullChain(id, holder, result, 0, signal);
    result.ms = Date.now() - t0;
    this.o.log.info(result, `cluster: template ${id} pulled from node ${holder.id}`);
    return result;
  }

  /** `from` if it is up, else the first up node the registry says holds `id`. */
  private async holder(id: string, from: string | undefined): Promise<NodeInfo> {
    const up = (await this.o.node.nodes()).filter((n) => n.state === 'up' && n.id !== this.o.node.nodeId);
    if (from !== undefined) {
      const n = up.find((x) => x.id === from);
      if (!n) throw new NotFoundError(`no up node ${from} to pull template ${id} from`);
      return n;
    }
    const holders = new Set((await this.o.node.registryNamed(id)).templates.filter((t) => t.templateId === id).map((t) => t.nodeId));
    const n = up.find((x) => holders.has(x.id));
    if (!n) throw new NotFoundError(`no up node holds template ${id}`);
    return n;
  }

  private async pullChain(id: string, holder: NodeInfo, result: PullResult, depth: number, signal: AbortSignal): Promise<Template> {
    const have = this.o.store.getTemplate(id);
    if (have) return have;
    if (depth > MAX_DEPTH) throw new ConflictError(`template ${id}: its chain of parents is deeper than ${MAX_DEPTH}`);
    const res = await this.get(holder, templateExportPath(id), signal);
    const reader = new TransferReader(res);
    const exp = await reader.manifest() as TemplateExport;
    if (!exp?.template?.id || exp.template.id !== id || !exp.layer?.key) { res.destroy(); throw new HostFailureError(`node ${holder.id} sent a template that is not ${id}`); }
    const parentId = exp.template.parentId;
    if (parentId && !this.o.store.getTemplate(parentId)) {
      // Parents first: this stream is dropped and asked again once the parent is here.
      res.destroy();
      await this.pullChain(parentId, holder, result, depth + 1, signal);
      return this.pullChain(id, holder, result, depth, signal);
    }
    const t = await importTemplate(this.o.store, this.o.layers, exp, async (dir) => {
      const files = await reader.files(dir, new Map(exp.files.map((f) => [f.name, f.size])));
      result.bytes += files.reduce((n, f) => n + f.size, 0);
    });
    result.pulled.push(t.id);
    result.warmSnapshots += await this.pullWarm(t, holder, signal);
    return t;
  }

  /** The holder's warm snapshots of `t` this node can use; a failure costs a cold boot later, not the pull. */
  private async pullWarm(t: Template, holder: NodeInfo, signal: AbortSignal): Promise<number> {
    let n = 0;
    try {
      const list = JSON.parse(await readAll(await this.get(holder, warmListPath(t.id), signal))) as WarmExport[];
      for (const w of list) {
        const res = await this.get(holder, warmExportPath(t.id, w.snapshot.id), signal);
        const reader = new TransferReader(res);
        const exp = await reader.manifest() as WarmExport;
        const made = await this.o.manager.importWarm(exp, async (dir) => { await reader.files(dir, new Map(exp.files.map((f) => [f.name, f.size]))); }, signal)
          .finally(() => res.destroy());
        if (made) n++;
      }
    } catch (err) {
      this.o.log.warn({ template: t.id, node: holder.id, err: err instanceof Error ? err.message : String(err) }, 'cluster: warm snapshots not copied; this node builds its own');
    }
    return n;
  }

  /** A GET to another node with the cluster credential; the answer's body as a stream (an error answer becomes a HearthError). */
  private get(node: NodeInfo, path: string, signal: AbortSignal): Promise<IncomingMessage> {
    const u = new URL(node.address);
    return new Promise((resolve, reject) => {
      const req = httpRequest({
        host: u.hostname, port: u.port || 80, method: 'GET', path, signal,
        headers: nodeCredential(this.o.token, this.o.node.nodeId),
      }, (res) => {
        if (res.statusCode === 200) { resolve(res); return; }
        void readAll(res).then((text) => {
          const why = `node ${node.id} answered ${res.statusCode ?? '?'} for ${path}: ${answerMessage(text)}`;
          reject(res.statusCode === 404 ? new NotFoundError(why) : res.statusCode === 409 ? new ConflictError(why) : new HostFailureError(why));
        }, reject);
      });
      req.on('error', (err) => reject(err instanceof HearthError ? err : new HostFailureError(`could not reach node ${node.id}: ${err.message}`)));
      req.end();
    });
  }
}

async function readAll(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
