import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Lifecycle, SandboxNetPolicy, SandboxRecord, SandboxState, SnapshotKind, SnapshotRecord, Template, TemplateSource } from '../core/types.js';
import type { TemplateRuntime } from '../templates/types.js';
import type { BuildRow, BuildStepRow } from '../templates/build-record.js';
import { MIGRATIONS } from './migrations.js';

type Row = Record<string, unknown>;

/** An idempotency key of a create, and what became of the create it was first used for. */
export interface IdempotencyRow {
  /** The key's owner (the API key's id), '' when requests are not authenticated. */
  scope: string;
  key: string;
  /** Hash of the canonical request it was first used with; null for keys stored before hashes were. */
  requestHash: string | null;
  sandboxId: string;
  /** pending: that create is in flight; created: it succeeded; failed: it failed with errorCode/errorMessage. */
  state: 'pending' | 'created' | 'failed';
  errorCode: string | null;
  errorMessage: string | null;
  createdAt: string;
}

/** A template's warm snapshot with the last time a create used it. */
export type TemplateSnapshotRow = SnapshotRecord & { lastUsedAt: string };

export interface JournalEntry {
  id: number;
  sandboxId: string;
  op: string;
  step: string;
  startedAt: string;
  updatedAt: string;
}

/**
 * SQLite (WAL) store: templates, sandboxes, and the operation journal.
 * Synchronous on purpose (better-sqlite3): each call is one short transaction,
 * and a crash between two calls leaves the journal row that says where we were.
 */
export class Store {
  readonly db: Database.Database;

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    // Deleted and overwritten content is zeroed, so a dropped token or env value does not linger in free space.
    this.db.pragma('secure_delete = ON');
    this.migrate();
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    for (let v = version; v < MIGRATIONS.length; v++) {
      const sql = MIGRATIONS[v]!;
      this.db.transaction(() => {
        this.db.exec(sql);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  close(): void { this.db.close(); }

  // ---- templates

  upsertTemplate(t: Template): void {
    this.db.prepare(`
      INSERT INTO templates (id, image_hash, kernel_path, initrd_path, rootfs_path, rootfs_size_bytes, kernel_args, vcpus, memory_mib, created_at,
        source, runtime, aliases, parent_id, build_id, layers)
      VALUES (@id, @imageHash, @kernelPath, @initrdPath, @rootfsPath, @rootfsSizeBytes, @kernelArgs, @vcpus, @memoryMib, @createdAt,
        @source, @runtime, @aliases, @parentId, @buildId, @layers)
      ON CONFLICT(id) DO UPDATE SET image_hash=excluded.image_hash, kernel_path=excluded.kernel_path,
        initrd_path=excluded.initrd_path, rootfs_path=excluded.rootfs_path, rootfs_size_bytes=excluded.rootfs_size_bytes,
        kernel_args=excluded.kernel_args, vcpus=excluded.vcpus, memory_mib=excluded.memory_mib, created_at=excluded.created_at,
        source=excluded.source, runtime=excluded.runtime, aliases=excluded.aliases, parent_id=excluded.parent_id,
        build_id=excluded.build_id, layers=excluded.layers
    `).run({ ...t, runtime: t.runtime ? JSON.stringify(t.runtime) : null, aliases: JSON.stringify(t.aliases), layers: JSON.stringify(t.layers) });
  }

  /** By id, else by alias. */
  getTemplate(idOrAlias: string): Template | undefined {
    const row = (this.db.prepare('SELECT * FROM templates WHERE id = ?').get(idOrAlias)
      ?? this.db.prepare('SELECT t.* FROM templates t, json_each(t.aliases) a WHERE a.value = ? ORDER BY t.id LIMIT 1').get(idOrAlias)) as Row | undefined;
    return row ? templateFromRow(row) : undefined;
  }

  deleteTemplate(id: string): void {
    this.db.prepare('DELETE FROM templates WHERE id = ?').run(id);
  }

  // ---- template builds

  insertBuild(b: BuildRow): void {
    this.db.prepare(`INSERT INTO builds (id, template_id, status, phase, request, steps, error, created_at, finished_at)
      VALUES (@id, @templateId, @status, @phase, @request, @steps, @error, @createdAt, @finishedAt)`).run(buildToRow(b));
  }

  updateBuild(b: BuildRow): void {
    this.db.prepare(`UPDATE builds SET status=@status, phase=@phase, steps=@steps, error=@error, finished_at=@finishedAt WHERE id=@id`).run(buildToRow(b));
  }

  getBuild(id: string): BuildRow | undefined {
    const row = this.db.prepare('SELECT * FROM builds WHERE id = ?').get(id) as Row | undefined;
    return row ? buildFromRow(row) : undefined;
  }

  listBuilds(templateId?: string): BuildRow[] {
    const rows = templateId === undefined
      ? this.db.prepare('SELECT * FROM builds ORDER BY created_at DESC, id').all()
      : this.db.prepare('SELECT * FROM builds WHERE template_id = ? ORDER BY created_at DESC, id').all(templateId);
    return (rows as Row[]).map(buildFromRow);
  }

  deleteBuilds(templateId: string): void {
    this.db.prepare('DELETE FROM builds WHERE template_id = ?').run(templateId);
  }

  listTemplates(): Template[] {
    return (this.db.prepare('SELECT * FROM templates ORDER BY id').all() as Row[]).map(templateFromRow);
  }

  // ---- sandboxes

  insertSandbox(s: SandboxRecord): void {
    this.db.prepare(`
      INSERT INTO sandboxes (id, template_id, state, vcpus, memory_mib, env_vars, metadata, created_at, started_at, end_at,
        ended_at, end_reason, agent_token, agent, vmm, disk, network, timings, snapshot_id, paused_at, lifecycle, net_policy)
      VALUES (@id, @templateId, @state, @vcpus, @memoryMib, @envVars, @metadata, @createdAt, @startedAt, @endAt,
        @endedAt, @endReason, @agentToken, @agent, @vmm, @disk, @network, @timings, @snapshotId, @pausedAt, @lifecycle, @netPolicy)
    `).run(sandboxToRow(s));
  }

  /**
   * Writes every field of the record but its state: a state changes only
   * through transitionSandbox (the manager's transition(), which checks the
   * state table first).
   */
  updateSandbox(s: SandboxRecord): void {
    const res = this.db.prepare(`
      UPDATE sandboxes SET template_id=@templateId, vcpus=@vcpus, memory_mib=@memoryMib, env_vars=@envVars,
        metadata=@metadata, created_at=@createdAt, started_at=@startedAt, end_at=@endAt, ended_at=@endedAt,
        end_reason=@endReason, agent_token=@agentToken, agent=@agent, vmm=@vmm, disk=@disk, network=@network, timings=@timings,
        snapshot_id=@snapshotId, paused_at=@pausedAt, lifecycle=@lifecycle, net_policy=@netPolicy
      WHERE id=@id
    `).run(sandboxToRow(s));
    if (res.changes !== 1) throw new Error(`store: sandbox ${s.id} does not exist`);
  }

  /**
   * Moves a sandbox from state `from` to `s.state` and writes every other field
   * with it, in one statement; refuses (throws) if the row is no longer in
   * `from`. Only src/core/state.ts's transition() calls this.
   */
  transitionSandbox(s: SandboxRecord, from: SandboxState): void {
    const res = this.db.prepare(`
      UPDATE sandboxes SET template_id=@templateId, state=@state, vcpus=@vcpus, memory_mib=@memoryMib, env_vars=@envVars,
        metadata=@metadata, created_at=@createdAt, started_at=@startedAt, end_at=@endAt, ended_at=@endedAt,
        end_reason=@endReason, agent_token=@agentToken, agent=@agent, vmm=@vmm, disk=@disk, network=@network, timings=@timings,
        snapshot_id=@snapshotId, paused_at=@pausedAt, lifecycle=@lifecycle, net_policy=@netPolicy
      WHERE id=@id AND state=@from
    `).run({ ...sandboxToRow(s), from });
    if (res.changes !== 1) throw new Error(`store: sandbox ${s.id} is not ${from} (or does not exist); it cannot become ${s.state}`);
  }

  getSandbox(id: string): SandboxRecord | undefined {
    const row = this.db.prepare('SELECT * FROM sandboxes WHERE id = ?').get(id) as Row | undefined;
    return row ? sandboxFromRow(row) : undefined;
  }

  listSandboxes(filter: { states?: readonly SandboxState[] } = {}): SandboxRecord[] {
    let rows: Row[];
    if (filter.states && filter.states.length > 0) {
      const marks = filter.states.map(() => '?').join(',');
      rows = this.db.prepare(`SELECT * FROM sandboxes WHERE state IN (${marks}) ORDER BY created_at DESC, id`).all(...filter.states) as Row[];
    } else {
      rows = this.db.prepare('SELECT * FROM sandboxes ORDER BY created_at DESC, id').all() as Row[];
    }
    return rows.map(sandboxFromRow);
  }

  deleteSandbox(id: string): void {
    this.db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
  }

  /**
   * Deletes every row of a sandbox that moved to another node (record, holdings,
   * journal, idempotency keys): nothing of it is this node's any more.
   */
  deleteSandboxRows(id: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM holdings WHERE sandbox_id = ?').run(id);
      this.db.prepare('DELETE FROM journal WHERE sandbox_id = ?').run(id);
      this.db.prepare('DELETE FROM idempotency WHERE sandbox_id = ?').run(id);
      this.db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
    })();
  }

  // ---- retention: an ended sandbox loses its secrets at once (sandboxToRow) and its rows after a while

  /**
   * Delete the sandboxes that ended (destroyed, or failed with nothing left on
   * the host) at or before `endedBefore` (ISO time), with their journal and
   * idempotency rows, except those `skip` names (busy). Snapshots taken from
   * them stay: they are the user's. Also rewrites ended rows that still hold
   * secrets (written before secrets were dropped at the end), then checkpoints
   * the WAL so the old page images go too. Returns the ids deleted.
   */
  purgeEndedSandboxes(endedBefore: string, skip: (id: string) => boolean = () => false): { purged: string[]; scrubbed: number } {
    const out = this.db.transaction(() => {
      const stale = this.db.prepare(`SELECT * FROM sandboxes WHERE state IN ('destroyed', 'failed')
        AND (agent_token != '' OR env_vars != '{}' OR json_extract(net_policy, '$.trafficToken') != '')`).all() as Row[];
      for (const r of stale) this.updateSandbox(sandboxFromRow(r));
      const due = this.db.prepare(`SELECT id FROM sandboxes WHERE ${PURGEABLE} AND COALESCE(ended_at, created_at) <= ?`)
        .all(endedBefore) as { id: string }[];
      const purged = due.map((r) => r.id).filter((id) => !skip(id) && this.purgeRows(id));
      return { purged, scrubbed: stale.length };
    })();
    this.db.pragma('wal_checkpoint(TRUNCATE)');
    return out;
  }

  /** Delete one ended sandbox now (retention 0), if it has ended and holds nothing on the host. */
  purgeEndedSandbox(id: string): boolean {
    return this.db.transaction(() => this.purgeRows(id))();
  }

  private purgeRows(id: string): boolean {
    if (this.db.prepare(`DELETE FROM sandboxes WHERE id = ? AND ${PURGEABLE}`).run(id).changes !== 1) return false;
    this.db.prepare('DELETE FROM journal WHERE sandbox_id = ?').run(id);
    this.db.prepare('DELETE FROM idempotency WHERE sandbox_id = ?').run(id);
    return true;
  }

  // ---- snapshots

  insertSnapshot(s: SnapshotRecord): void {
    this.db.prepare(`
      INSERT INTO snapshots (id, name, kind, sandbox_id, template_id, image_hash, dir, vcpus, memory_mib, agent_token, env_vars, created_at, last_used_at, compat)
      VALUES (@id, @name, @kind, @sandboxId, @templateId, @imageHash, @dir, @vcpus, @memoryMib, @agentToken, @envVars, @createdAt, @createdAt, @compat)
    `).run({ ...s, envVars: JSON.stringify(s.envVars), compat: s.compat ?? null });
  }

  /** Record that a create used this snapshot now (template snapshots are dropped least recently used first). */
  touchSnapshot(id: string, at = new Date().toISOString()): void {
    this.db.prepare('UPDATE snapshots SET last_used_at = ? WHERE id = ?').run(at, id);
  }

  /** A template's warm snapshots (every image and shape), least recently used first. */
  listTemplateSnapshots(templateId: string): TemplateSnapshotRow[] {
    return (this.db.prepare(`SELECT * FROM snapshots WHERE kind = 'template' AND template_id = ?
      ORDER BY COALESCE(last_used_at, created_at), created_at, id`).all(templateId) as Row[])
      .map((r) => ({ ...snapshotFromRow(r), lastUsedAt: (r['last_used_at'] as string | null) ?? (r['created_at'] as string) }));
  }

  getSnapshot(id: string): SnapshotRecord | undefined {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as Row | undefined;
    return row ? snapshotFromRow(row) : undefined;
  }

  /** A named snapshot by id or by name (newest first when a name was reused). */
  findSnapshot(idOrName: string): SnapshotRecord | undefined {
    const row = this.db.prepare(`SELECT * FROM snapshots WHERE kind = 'named' AND (id = ? OR name = ?) ORDER BY created_at DESC LIMIT 1`)
      .get(idOrName, idOrName) as Row | undefined;
    return row ? snapshotFromRow(row) : undefined;
  }

  listSnapshots(filter: { kind?: SnapshotKind; sandboxId?: string; templateId?: string } = {}): SnapshotRecord[] {
    const where: string[] = [];
    const args: string[] = [];
    if (filter.kind) { where.push('kind = ?'); args.push(filter.kind); }
    if (filter.sandboxId) { where.push('sandbox_id = ?'); args.push(filter.sandboxId); }
    if (filter.templateId) { where.push('template_id = ?'); args.push(filter.templateId); }
    const sql = `SELECT * FROM snapshots ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id`;
    return (this.db.prepare(sql).all(...args) as Row[]).map(snapshotFromRow);
  }

  /** The warm-start snapshot of a template for one VM shape, if built for the current image. */
  findTemplateSnapshot(templateId: string, imageHash: string, vcpus: number, memoryMib: number): SnapshotRecord | undefined {
    const row = this.db.prepare(`SELECT * FROM snapshots WHERE kind = 'template' AND template_id = ? AND image_hash = ? AND vcpus = ? AND memory_mib = ?
      ORDER BY created_at DESC LIMIT 1`).get(templateId, imageHash, vcpus, memoryMib) as Row | undefined;
    return row ? snapshotFromRow(row) : undefined;
  }

  deleteSnapshot(id: string): void {
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
  }

  // ---- API keys (only hashes are stored)

  insertApiKey(k: { id: string; name: string; hash: string }): void {
    this.db.prepare('INSERT INTO api_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)').run(k.id, k.name, k.hash, new Date().toISOString());
  }

  listApiKeys(): { id: string; name: string; hash: string; createdAt: string; lastUsedAt: string | null }[] {
    return (this.db.prepare('SELECT * FROM api_keys ORDER BY created_at').all() as Row[]).map((r) => ({
      id: r['id'] as string, name: r['name'] as string, hash: r['hash'] as string,
      createdAt: r['created_at'] as string, lastUsedAt: (r['last_used_at'] as string | null) ?? null,
    }));
  }

  touchApiKey(id: string): void {
    this.db.prepare('UPDATE api_keys SET last_used_at = ? WHERE id = ?').run(new Date().toISOString(), id);
  }

  deleteApiKey(id: string): boolean {
    return this.db.prepare('DELETE FROM api_keys WHERE id = ?').run(id).changes === 1;
  }

  // ---- idempotency keys (create)

  /**
   * Claim `key` (in `scope`) for a create of `sandboxId` with a request whose
   * hash is `requestHash`: null when claimed, else the row that holds it. Keys
   * created before `expiredBefore` (ISO time) are deleted first. Atomic.
   */
  claimIdempotencyKey(c: { scope: string; key: string; requestHash: string; sandboxId: string }, expiredBefore: string): IdempotencyRow | null {
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM idempotency WHERE created_at < ?').run(expiredBefore);
      const res = this.db.prepare(`INSERT OR IGNORE INTO idempotency (scope, key, request_hash, sandbox_id, state, created_at)
        VALUES (?, ?, ?, ?, 'pending', ?)`).run(c.scope, c.key, c.requestHash, c.sandboxId, new Date().toISOString());
      if (res.changes === 1) return null;
      return this.getIdempotencyKey(c.scope, c.key) ?? null;
    })();
  }

  getIdempotencyKey(scope: string, key: string): IdempotencyRow | undefined {
    const r = this.db.prepare('SELECT * FROM idempotency WHERE scope = ? AND key = ?').get(scope, key) as Row | undefined;
    if (!r) return undefined;
    return {
      scope: r['scope'] as string,
      key: r['key'] as string,
      requestHash: (r['request_hash'] as string | null) ?? null,
      sandboxId: r['sandbox_id'] as string,
      state: r['state'] as IdempotencyRow['state'],
      errorCode: (r['error_code'] as string | null) ?? null,
      errorMessage: (r['error_message'] as string | null) ?? null,
      createdAt: r['created_at'] as string,
    };
  }

  /** The create a key was claimed for ended: record how (only while `sandboxId` still holds the key). */
  settleIdempotencyKey(scope: string, key: string, sandboxId: string, outcome: { state: 'created' } | { state: 'failed'; errorCode: string; errorMessage: string }): void {
    this.db.prepare('UPDATE idempotency SET state = ?, error_code = ?, error_message = ? WHERE scope = ? AND key = ? AND sandbox_id = ?')
      .run(outcome.state, outcome.state === 'failed' ? outcome.errorCode : null, outcome.state === 'failed' ? outcome.errorMessage : null, scope, key, sandboxId);
  }

  /** Give a key back (its create never started, or was cancelled): the next request with it creates anew. */
  releaseIdempotencyKey(scope: string, key: string, sandboxId: string): void {
    this.db.prepare('DELETE FROM idempotency WHERE scope = ? AND key = ? AND sandbox_id = ?').run(scope, key, sandboxId);
  }

  // ---- holdings ledger (src/core/holdings.ts owns the meaning of `detail`)

  insertHolding(sandboxId: string, kind: string, detail: string): number {
    const res = this.db.prepare('INSERT INTO holdings (sandbox_id, kind, detail, recorded_at) VALUES (?, ?, ?, ?)')
      .run(sandboxId, kind, detail, new Date().toISOString());
    return Number(res.lastInsertRowid);
  }

  updateHolding(id: number, detail: string): void {
    if (this.db.prepare('UPDATE holdings SET detail = ? WHERE id = ?').run(detail, id).changes !== 1) throw new Error(`store: holding ${id} does not exist`);
  }

  deleteHolding(id: number): void {
    this.db.prepare('DELETE FROM holdings WHERE id = ?').run(id);
  }

  /** A sandbox's holdings in the order they were recorded. */
  listHoldings(sandboxId: string): { id: number; kind: string; detail: string; recordedAt: string }[] {
    return (this.db.prepare('SELECT * FROM holdings WHERE sandbox_id = ? ORDER BY id').all(sandboxId) as Row[]).map((r) => ({
      id: r['id'] as number, kind: r['kind'] as string, detail: r['detail'] as string, recordedAt: r['recorded_at'] as string,
    }));
  }

  /** Runs `fn` in one transaction (ledger rows and the sandbox row change together). */
  atomically<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  // ---- journal (a row before touching the host, updated per step, deleted at the end)

  journalBegin(sandboxId: string, op: string, step: string): number {
    const now = new Date().toISOString();
    const res = this.db.prepare('INSERT INTO journal (sandbox_id, op, step, started_at, updated_at) VALUES (?, ?, ?, ?, ?)')
      .run(sandboxId, op, step, now, now);
    return Number(res.lastInsertRowid);
  }

  journalStep(id: number, step: string): void {
    this.db.prepare('UPDATE journal SET step = ?, updated_at = ? WHERE id = ?').run(step, new Date().toISOString(), id);
  }

  journalEnd(id: number): void {
    this.db.prepare('DELETE FROM journal WHERE id = ?').run(id);
  }

  listJournal(): JournalEntry[] {
    return (this.db.prepare('SELECT * FROM journal ORDER BY id').all() as Row[]).map((r) => ({
      id: r['id'] as number,
      sandboxId: r['sandbox_id'] as string,
      op: r['op'] as string,
      step: r['step'] as string,
      startedAt: r['started_at'] as string,
      updatedAt: r['updated_at'] as string,
    }));
  }
}

function json<T>(v: unknown): T | null {
  return typeof v === 'string' ? (JSON.parse(v) as T) : null;
}

function templateFromRow(r: Row): Template {
  return {
    id: r['id'] as string,
    imageHash: r['image_hash'] as string,
    kernelPath: r['kernel_path'] as string,
    initrdPath: (r['initrd_path'] as string | null) ?? null,
    rootfsPath: r['rootfs_path'] as string,
    rootfsSizeBytes: r['rootfs_size_bytes'] as number,
    kernelArgs: r['kernel_args'] as string,
    vcpus: r['vcpus'] as number,
    memoryMib: r['memory_mib'] as number,
    createdAt: r['created_at'] as string,
    source: ((r['source'] as string | null) ?? 'image') as TemplateSource,
    runtime: json<TemplateRuntime>(r['runtime']),
    aliases: json<string[]>(r['aliases']) ?? [],
    parentId: (r['parent_id'] as string | null) ?? null,
    buildId: (r['build_id'] as string | null) ?? null,
    layers: json<string[]>(r['layers']) ?? [],
  };
}

function buildToRow(b: BuildRow): Record<string, unknown> {
  return { ...b, request: JSON.stringify(b.request), steps: JSON.stringify(b.steps) };
}

function buildFromRow(r: Row): BuildRow {
  return {
    id: r['id'] as string,
    templateId: r['template_id'] as string,
    status: r['status'] as BuildRow['status'],
    phase: r['phase'] as BuildRow['phase'],
    request: json<BuildRow['request']>(r['request']) ?? {},
    steps: json<BuildStepRow[]>(r['steps']) ?? [],
    error: (r['error'] as string | null) ?? null,
    createdAt: r['created_at'] as string,
    finishedAt: (r['finished_at'] as string | null) ?? null,
  };
}

/** Ended for good: nothing in the guest can be reached any more, and the row is purged after the retention time. */
export function isEnded(state: SandboxState): boolean {
  return state === 'destroyed' || state === 'failed';
}

/** Ended, and nothing on the host left to release (a failed destroy keeps its handles for the next try). */
const PURGEABLE = `state IN ('destroyed', 'failed') AND vmm IS NULL AND disk IS NULL AND network IS NULL
  AND NOT EXISTS (SELECT 1 FROM holdings h WHERE h.sandbox_id = sandboxes.id)`;

/**
 * A record without its secrets, as an ended sandbox keeps it: no agent token,
 * no env vars (names and values both go), and a traffic token of '' in place of
 * one it had (so the record still says its traffic was not public). Metadata
 * stays: it is labels, shown in listings, until the row is purged.
 */
export function withoutSecrets(s: SandboxRecord): SandboxRecord {
  return { ...s, agentToken: '', envVars: {}, netPolicy: { ...s.netPolicy, trafficToken: s.netPolicy.trafficToken === null ? null : '' } };
}

/** The row written for a record; an ended sandbox's never carries its secrets, whoever ended it. */
function sandboxToRow(rec: SandboxRecord): Row {
  const s = isEnded(rec.state) ? withoutSecrets(rec) : rec;
  return {
    ...s,
    envVars: JSON.stringify(s.envVars),
    metadata: JSON.stringify(s.metadata),
    agent: s.agent ? JSON.stringify(s.agent) : null,
    vmm: s.vmm ? JSON.stringify(s.vmm) : null,
    disk: s.disk ? JSON.stringify(s.disk) : null,
    network: s.network ? JSON.stringify(s.network) : null,
    lifecycle: JSON.stringify(s.lifecycle),
    netPolicy: JSON.stringify(s.netPolicy),
    timings: s.timings ? JSON.stringify(s.timings) : null,
  };
}

function sandboxFromRow(r: Row): SandboxRecord {
  return {
    id: r['id'] as string,
    templateId: r['template_id'] as string,
    state: r['state'] as SandboxState,
    vcpus: r['vcpus'] as number,
    memoryMib: r['memory_mib'] as number,
    envVars: json<Record<string, string>>(r['env_vars']) ?? {},
    metadata: json<Record<string, string>>(r['metadata']) ?? {},
    createdAt: r['created_at'] as string,
    startedAt: (r['started_at'] as string | null) ?? null,
    endAt: r['end_at'] as string,
    endedAt: (r['ended_at'] as string | null) ?? null,
    endReason: (r['end_reason'] as string | null) ?? null,
    agentToken: r['agent_token'] as string,
    agent: json(r['agent']),
    vmm: json(r['vmm']),
    disk: json(r['disk']),
    network: json(r['network']),
    timings: json(r['timings']),
    snapshotId: (r['snapshot_id'] as string | null) ?? null,
    pausedAt: (r['paused_at'] as string | null) ?? null,
    // Rows written before `keepMemory` existed kept memory at a timeout pause.
    lifecycle: { onTimeout: 'kill', keepMemory: true, autoResume: false, autoExtend: false, timeoutSec: 300, ...json<Lifecycle>(r['lifecycle']) },
    netPolicy: json<SandboxNetPolicy>(r['net_policy']) ?? { egress: null, trafficToken: null },
  };
}

function snapshotFromRow(r: Row): SnapshotRecord {
  return {
    id: r['id'] as string,
    name: (r['name'] as string | null) ?? null,
    kind: r['kind'] as SnapshotKind,
    sandboxId: (r['sandbox_id'] as string | null) ?? null,
    templateId: r['template_id'] as string,
    imageHash: r['image_hash'] as string,
    dir: r['dir'] as string,
    vcpus: r['vcpus'] as number,
    memoryMib: r['memory_mib'] as number,
    agentToken: r['agent_token'] as string,
    envVars: json<Record<string, string>>(r['env_vars']) ?? {},
    createdAt: r['created_at'] as string,
    compat: (r['compat'] as string | null) ?? null,
  };
}
