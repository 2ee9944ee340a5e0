/**
 * Moving a paused sandbox to another node (docs/cluster.md, "Moving a paused
 * sandbox"). The node that has it streams its paused capture (sparse,
 * checksummed per file: src/cluster/transfer.ts) to the chosen node in one
 * request; that node checks it can resume it (same template image, a disk
 * backend that can attach it, room), writes the files and the record, and
 * claims the sandbox in PostgreSQL (the commit point: a conditional update
 * that succeeds only while the sender still owns it). Only then does the sender
 * forget its copy. A failure anywhere before the claim leaves the sandbox
 * paused where it was; a crash after it leaves a stale copy on the sender that
 * its next re-publish finds and drops (ClusterNode's onMovedAway).
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { SandboxManager } from '../core/manager.js';
import { ConflictError, HearthError, HostFailureError, NotFoundError, InvalidArgumentError } from '../core/errors.js';
import type { PausedExport } from '../core/flows/move.js';
import type { SandboxRecord } from '../core/types.js';
import type { FastifyBaseLogger } from 'fastify';
import type { ClusterNode } from './node.js';
import { chooseNode } from './placement.js';
import { answerMessage, nodeCredential } from './credential.js';
import { encodeTransfer, TransferError, TransferReader, validName } from './transfer.js';
import type { NodeInfo } from './types.js';

/** The content type of a move's body (the transfer stream). */
export const MOVE_CONTENT_TYPE = 'application/vnd.hearth.move';
/** Where a node sends a sandbox it moves (node-to-node only). */
export const IMPORT_PATH = '/cluster/imports';

/** The transfer's manifest: who sends, and what (the core's description of the paused sandbox). */
interface MoveManifest { version: 1; from: string; sandbox: PausedExport }

export interface MoveResult {
  sandboxID: string;
  from: string;
  node: string;
  /** Bytes of file content sent (holes excluded). */
  bytes: number;
  ms: number;
}

export interface SandboxMoverOptions {
  manager: SandboxManager;
  node: ClusterNode;
  token: string;
  log: FastifyBaseLogger;
  /** Nodes with less free disk are not chosen (MiB). */
  minFreeDiskMib: number;
}

/** Nodes tried at most for one move (each refusal names why). */
const MAX_TRIES = 3;

export class SandboxMover {
  constructor(private readonly o: SandboxMoverOptions) {}

  /**
   * Moves a paused sandbox of this node to `to`, or to the node placement
   * chooses (most free memory among those that are up, trying the next one if a
   * node refuses). Throws 409 when it is not paused or no node takes it.
   */
  async moveOut(id: string, opts: { to?: string; signal?: AbortSignal } = {}): Promise<MoveResult> {
    const rec = this.o.manager.get(id);
    if (rec.state !== 'paused') throw new ConflictError(`sandbox ${id} is ${rec.state}; only a paused sandbox can move to another node`);
    const self = this.o.node.nodeId;
    const up = (await this.o.node.nodes()).filter((n) => n.state === 'up' && n.id !== self);
    let candidates: NodeInfo[];
    if (opts.to !== undefined) {
      if (opts.to === self) throw new ConflictError(`sandbox ${id} is already on node ${self}`);
      const target = up.find((n) => n.id === opts.to);
      if (!target) throw new NotFoundError(`no up node ${opts.to} (GET /nodes lists them)`);
      candidates = [target];
    } else {
      candidates = up;
    }
    const refusals: string[] = [];
    for (let i = 0; i < MAX_TRIES && candidates.length > 0; i++) {
      const target = opts.to !== undefined ? candidates[0]! : chooseNode(candidates, { templateId: rec.templateId, memoryMib: rec.memoryMib, minFreeDiskMib: this.o.minFreeDiskMib });
      if (!target) break;
      candidates = candidates.filter((n) => n.id !== target.id);
      const t0 = Date.now();
      let bytes = 0;
      try {
        await this.o.manager.moveOut(id, async (exp, dir) => { bytes = await this.send(target, exp, dir, opts.signal); });
        const result = { sandboxID: id, from: self, node: target.id, bytes, ms: Date.now() - t0 };
        this.o.log.info(result, `cluster: sandbox ${id} moved to node ${target.id}`);
        return result;
      } catch (err) {
        // This node's own refusals (busy, not paused) end the move; a target's refusal tries the next node.
        if (!(err instanceof MoveRefused)) throw err;
        refusals.push(`${target.id}: ${err.message}`);
        this.o.log.warn({ sandbox: id, node: target.id, err: err.message }, 'cluster: a node refused a moved sandbox');
      }
    }
    throw new ConflictError(`no node took sandbox ${id}${refusals.length ? `: ${refusals.join('; ')}` : ' (no other node is up with room)'}`);
  }

  /** Streams the capture to `target`; resolves with the bytes sent once it owns the sandbox. */
  private send(target: NodeInfo, exp: PausedExport, dir: string, signal?: AbortSignal): Promise<number> {
    const manifest: MoveManifest = { version: 1, from: this.o.node.nodeId, sandbox: exp };
    const body = encodeTransfer(manifest, dir, exp.files.map((f) => f.name));
    let bytes = 0;
    body.on('data', (c: Buffer) => { bytes += c.length; });
    const u = new URL(target.address);
    return new Promise<number>((resolve, reject) => {
      const req = httpRequest({
        host: u.hostname, port: u.port || 80, method: 'POST', path: IMPORT_PATH, signal,
        headers: { 'content-type': MOVE_CONTENT_TYPE, ...nodeCredential(this.o.token, this.o.node.nodeId) },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const message = answerMessage(Buffer.concat(chunks).toString('utf8'));
          if (res.statusCode === 200) resolve(bytes);
          // 4xx/503: the node looked and said no (its image, backend or room): try another. Other answers: unknown outcome.
          else if (res.statusCode !== undefined && (res.statusCode < 500 || res.statusCode === 503)) reject(new MoveRefused(message));
          else reject(new HostFailureError(`node ${target.id} failed to take sandbox ${exp.record.id} (${res.statusCode ?? '?'}): ${message}`));
        });
      });
      req.on('error', (err) => reject(new MoveRefused(`could not send to ${target.address}: ${err.message}`)));
      body.on('error', (err) => { req.destroy(err); reject(err); });
      body.pipe(req);
    });
  }

  /**
   * The receiving side (POST /cluster/imports from another node): takes the
   * sandbox if this host can resume it, and claims it in PostgreSQL. Errors are
   * HearthErrors (their status goes back to the sender).
   */
  async receive(req: IncomingMessage): Promise<{ sandboxID: string; node: string; from: string }> {
    const reader = new TransferReader(req);
    let manifest: MoveManifest;
    try {
      manifest = checkManifest(await reader.manifest());
    } catch (err) {
      throw err instanceof HearthError ? err : new InvalidArgumentError(`bad move: ${(err as Error).message}`);
    }
    const exp = manifest.sandbox;
    const expected = new Map(exp.files.map((f) => [f.name, f.size]));
    await this.o.manager.importPaused(exp, async (dir) => {
      try {
        await reader.files(dir, expected);
      } catch (err) {
        throw err instanceof TransferError ? new InvalidArgumentError(`move of ${exp.record.id} refused: ${err.message}`) : err;
      }
    }, async () => {
      const rec: SandboxRecord = { ...exp.record, state: 'paused' };
      if (!(await this.o.node.claim(rec, manifest.from))) {
        throw new ConflictError(`sandbox ${exp.record.id} is no longer node ${manifest.from}'s in the cluster; not taken`);
      }
    });
    return { sandboxID: exp.record.id, node: this.o.node.nodeId, from: manifest.from };
  }
}

/** A node said no to a sandbox (its image, backend or room), or could not be reached: the next node may take it. */
class MoveRefused extends Error {}

const ID = /^[a-z0-9]{1,64}$/;

/** The manifest's shape, checked before a byte of file is written (the sender is a node, but a move is still input). */
function checkManifest(m: unknown): MoveManifest {
  const bad = (why: string): never => { throw new InvalidArgumentError(`bad move manifest: ${why}`); };
  if (!m || typeof m !== 'object') bad('not an object');
  const x = m as Partial<MoveManifest>;
  if (x.version !== 1) bad(`version ${String(x.version)} (this node reads 1)`);
  if (typeof x.from !== 'string' || !x.from) bad('from');
  const s = x.sandbox;
  if (!s || typeof s !== 'object') return bad('sandbox');
  const r = s.record as Partial<SandboxRecord> | undefined;
  if (!r || typeof r.id !== 'string' || !ID.test(r.id)) bad('record.id');
  if (r!.state !== 'paused') bad(`record.state ${String(r!.state)}: only paused sandboxes move`);
  if (typeof r!.templateId !== 'string' || typeof r!.memoryMib !== 'number' || typeof r!.vcpus !== 'number' || typeof r!.agentToken !== 'string') bad('record fields');
  if (!s.template || typeof s.template.id !== 'string' || typeof s.template.imageHash !== 'string') bad('template');
  if (!['dm', 'reflink', 'copy'].includes(s.backend)) bad('backend');
  if (typeof s.memory !== 'boolean') bad('memory');
  if (!Array.isArray(s.files) || s.files.length === 0 || s.files.length > 64) bad('files');
  const names = new Set<string>();
  for (const f of s.files) {
    if (!f || typeof f.name !== 'string' || !validName(f.name) || names.has(f.name) || !Number.isSafeInteger(f.size) || f.size < 0) bad(`file ${JSON.stringify(f)}`);
    names.add(f.name);
  }
  if (!names.has('meta.json')) bad('no meta.json');
  return x as MoveManifest;
}
