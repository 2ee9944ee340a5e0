/**
 * The cluster's shared records in PostgreSQL (docs/cluster.md): nodes and
 * placements (API keys: src/cluster/keys.ts, on this store's pool). Cross-node decisions (marking an expired node down, placing a
 * create) run in transactions that lock the rows they decide on
 * (SELECT … FOR UPDATE), never behind in-process locks.
 */
import pg from 'pg';
import type { SandboxState } from '../core/types.js';
import { chooseNode, type PlacementRequest } from './placement.js';
import type { NodeInfo, NodeReport, Placement, PlacementState, PlacementUpdate } from './types.js';
import type { NodeRegistry, RegistrySnapshot, RegistryTemplate } from './registry.js';
import type { TemplateSource } from '../core/types.js';

/** Ordered migrations; `hearth_cluster_schema` records how many ran. Each runs once, under an advisory lock. */
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE nodes (
     id text PRIMARY KEY,
     address text NOT NULL,
     state text NOT NULL CHECK (state IN ('up', 'down')),
     memory_total_mib integer NOT NULL,
     memory_used_mib integer NOT NULL,
     memory_available_mib integer NOT NULL,
     disk_free_mib bigint NOT NULL,
     load_per_cpu real NOT NULL,
     cpus integer NOT NULL,
     sandboxes integer NOT NULL,
     warm_templates text[] NOT NULL DEFAULT '{}',
     version text NOT NULL,
     registered_at timestamptz NOT NULL DEFAULT now(),
     heartbeat_at timestamptz NOT NULL,
     down_since timestamptz
   );
   CREATE TABLE placements (
     sandbox_id text PRIMARY KEY,
     node_id text NOT NULL REFERENCES nodes (id),
     state text NOT NULL,
     last_known_state text NOT NULL,
     template_id text NOT NULL,
     memory_mib integer NOT NULL,
     vcpus integer NOT NULL,
     metadata jsonb NOT NULL DEFAULT '{}',
     created_at timestamptz NOT NULL,
     updated_at timestamptz NOT NULL DEFAULT now()
   );
   CREATE INDEX placements_node ON placements (node_id);`,
  // The template and snapshot registry (src/cluster/registry.ts): a mirror of each node's own records.
  `CREATE TABLE registry_templates (
     node_id text NOT NULL REFERENCES nodes (id),
     template_id text NOT NULL,
     aliases text[] NOT NULL DEFAULT '{}',
     image_hash text NOT NULL,
     source text NOT NULL,
     vcpus integer NOT NULL,
     memory_mib integer NOT NULL,
     created_at timestamptz NOT NULL,
     updated_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (node_id, template_id)
   );
   CREATE INDEX registry_templates_id ON registry_templates (template_id);
   CREATE TABLE registry_snapshots (
     node_id text NOT NULL REFERENCES nodes (id),
     snapshot_id text NOT NULL,
     name text,
     sandbox_id text,
     template_id text NOT NULL,
     vcpus integer NOT NULL,
     memory_mib integer NOT NULL,
     created_at timestamptz NOT NULL,
     updated_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (node_id, snapshot_id)
   );
   CREATE INDEX registry_snapshots_id ON registry_snapshots (snapshot_id);
   CREATE INDEX registry_snapshots_name ON registry_snapshots (name);`,
  // API keys for the whole cluster (src/cluster/keys.ts). A deleted key keeps its row (deleted_at set),
  // so importing a node's SQLite keys again (by id) never brings a revoked key back.
  `CREATE TABLE api_keys (
     id text PRIMARY KEY,
     name text NOT NULL,
     hash text NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now(),
     last_used_at timestamptz,
     deleted_at timestamptz,
     created_on text
   );`,
];

/** Arbitrary, fixed: serialises migrations between nodes starting together. */
const MIGRATION_LOCK = 7_418_032_118;

interface NodeRow {
  id: string; address: string; state: 'up' | 'down'; memory_total_mib: number; memory_used_mib: number; memory_available_mib: number;
  disk_free_mib: string; load_per_cpu: number; cpus: number; sandboxes: number; warm_templates: string[]; version: string;
  heartbeat_at: Date; down_since: Date | null;
}

interface PlacementRow {
  sandbox_id: string; node_id: string; state: PlacementState; last_known_state: SandboxState; template_id: string; memory_mib: number; vcpus: number;
  metadata: Record<string, string>; created_at: Date; updated_at: Date;
}

interface TemplateRow {
  node_id: string; template_id: string; aliases: string[]; image_hash: string; source: TemplateSource; vcpus: number; memory_mib: number; created_at: Date;
}

interface SnapshotRow {
  node_id: string; snapshot_id: string; name: string | null; sandbox_id: string | null; template_id: string; vcpus: number; memory_mib: number; created_at: Date;
}

function templateOf(r: TemplateRow): RegistryTemplate {
  return { nodeId: r.node_id, templateId: r.template_id, aliases: r.aliases, imageHash: r.image_hash, source: r.source, vcpus: r.vcpus, memoryMib: r.memory_mib, createdAt: r.created_at.toISOString() };
}

function snapshotOf(r: SnapshotRow): RegistrySnapshot {
  return { nodeId: r.node_id, snapshotId: r.snapshot_id, name: r.name, sandboxId: r.sandbox_id, templateId: r.template_id, vcpus: r.vcpus, memoryMib: r.memory_mib, createdAt: r.created_at.toISOString() };
}

function nodeOf(r: NodeRow): NodeInfo {
  return {
    id: r.id, address: r.address, state: r.state, memoryTotalMib: r.memory_total_mib, memoryUsedMib: r.memory_used_mib, memoryAvailableMib: r.memory_available_mib,
    diskFreeMib: Number(r.disk_free_mib), loadPerCpu: r.load_per_cpu, cpus: r.cpus, sandboxes: r.sandboxes, warmTemplates: r.warm_templates, version: r.version,
    heartbeatAt: r.heartbeat_at.toISOString(), downSince: r.down_since ? r.down_since.toISOString() : null,
  };
}

function placementOf(r: PlacementRow): Placement {
  return {
    sandboxId: r.sandbox_id, nodeId: r.node_id, state: r.state, lastKnownState: r.last_known_state, templateId: r.template_id, memoryMib: r.memory_mib, vcpus: r.vcpus,
    metadata: r.metadata, createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString(),
  };
}

/**
 * A node publishes only its own sandboxes: a row another node owns is left
 * alone (a sandbox that moved there; the old owner's late or queued changes
 * must not take it back). Ownership changes only through claim().
 */
const UPSERT_PLACEMENT = `
  INSERT INTO placements (sandbox_id, node_id, state, last_known_state, template_id, memory_mib, vcpus, metadata, created_at, updated_at)
  VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, now())
  ON CONFLICT (sandbox_id) DO UPDATE SET node_id = EXCLUDED.node_id, state = EXCLUDED.state, last_known_state = EXCLUDED.last_known_state,
    template_id = EXCLUDED.template_id, memory_mib = EXCLUDED.memory_mib, vcpus = EXCLUDED.vcpus, metadata = EXCLUDED.metadata, updated_at = now()
  WHERE placements.node_id = EXCLUDED.node_id`;

function placementParams(nodeId: string, p: PlacementUpdate): unknown[] {
  return [p.sandboxId, nodeId, p.state, p.templateId, p.memoryMib, p.vcpus, JSON.stringify(p.metadata), p.createdAt];
}

export class ClusterStore {
  readonly pool: pg.Pool;

  constructor(databaseUrl: string, opts: { connectTimeoutMs?: number; statementTimeoutMs?: number } = {}) {
    this.pool = new pg.Pool({
      connectionString: databaseUrl, max: 4, idleTimeoutMillis: 10_000,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 3000,
      statement_timeout: opts.statementTimeoutMs ?? 5000,
    });
    // An idle client whose server went away (PostgreSQL restarted) errors here; the pool drops it.
    this.pool.on('error', () => undefined);
  }

  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    // A checked-out client has no pool listener: if the server goes away mid-transaction (PostgreSQL
    // restarted), pg emits 'error' on the client besides failing its queries, which would otherwise
    // be an uncaught exception. The failed query rejects on its own; the broken client is destroyed.
    let broken: Error | undefined;
    const onError = (err: Error): void => { broken = err; };
    c.on('error', onError);
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (err) {
      if (!broken) await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.off('error', onError);
      c.release(broken);
    }
  }

  /** Runs the migrations not yet applied (idempotent; safe with several nodes starting at once). */
  async migrate(): Promise<number> {
    return this.tx(async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await c.query('CREATE TABLE IF NOT EXISTS hearth_cluster_schema (version integer NOT NULL)');
      const r = await c.query<{ version: number }>('SELECT version FROM hearth_cluster_schema');
      let version = r.rows[0]?.version ?? 0;
      if (r.rows.length === 0) await c.query('INSERT INTO hearth_cluster_schema (version) VALUES (0)');
      for (; version < MIGRATIONS.length; version++) await c.query(MIGRATIONS[version]!);
      await c.query('UPDATE hearth_cluster_schema SET version = $1', [version]);
      return version;
    });
  }

  /**
   * Registers or refreshes this node (state up, heartbeat now, by PostgreSQL's
   * clock). `wasUp` is false when the row is new or was marked down: the node
   * must then re-publish its sandboxes.
   */
  async heartbeat(n: NodeReport): Promise<{ wasUp: boolean }> {
    return this.tx(async (c) => {
      const prev = await c.query<{ state: string }>('SELECT state FROM nodes WHERE id = $1 FOR UPDATE', [n.id]);
      await c.query(`
        INSERT INTO nodes (id, address, state, memory_total_mib, memory_used_mib, memory_available_mib, disk_free_mib, load_per_cpu, cpus, sandboxes, warm_templates, version, heartbeat_at, down_since)
        VALUES ($1, $2, 'up', $3, $4, $5, $6, $7, $8, $9, $10, $11, now(), NULL)
        ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, state = 'up', memory_total_mib = EXCLUDED.memory_total_mib, memory_used_mib = EXCLUDED.memory_used_mib,
          memory_available_mib = EXCLUDED.memory_available_mib, disk_free_mib = EXCLUDED.disk_free_mib, load_per_cpu = EXCLUDED.load_per_cpu, cpus = EXCLUDED.cpus,
          sandboxes = EXCLUDED.sandboxes, warm_templates = EXCLUDED.warm_templates, version = EXCLUDED.version, heartbeat_at = now(), down_since = NULL`,
      [n.id, n.address, Math.round(n.memoryTotalMib), Math.round(n.memoryUsedMib), Math.round(n.memoryAvailableMib), Math.round(n.diskFreeMib), n.loadPerCpu, n.cpus, n.sandboxes, n.warmTemplates, n.version]);
      return { wasUp: prev.rows[0]?.state === 'up' };
    });
  }

  /**
   * Marks down every up node whose heartbeat is older than `expiryMs` (PostgreSQL's
   * clock), and reports their placements `unknown` (kept, with their last known
   * state). Row-locked, so two nodes checking at once decide once. Returns the ids marked.
   */
  async expireNodes(expiryMs: number): Promise<string[]> {
    return this.tx(async (c) => {
      const r = await c.query<{ id: string }>(
        `SELECT id FROM nodes WHERE state = 'up' AND heartbeat_at < now() - ($1::double precision * interval '1 millisecond') FOR UPDATE SKIP LOCKED`, [expiryMs]);
      const ids = r.rows.map((x) => x.id);
      if (ids.length === 0) return [];
      await c.query(`UPDATE nodes SET state = 'down', down_since = now() WHERE id = ANY($1)`, [ids]);
      await c.query(`UPDATE placements SET state = 'unknown', updated_at = now() WHERE node_id = ANY($1) AND state NOT IN ('destroyed', 'unknown')`, [ids]);
      return ids;
    });
  }

  /** One sandbox's state, as its owner publishes it. */
  async publish(nodeId: string, p: PlacementUpdate): Promise<void> {
    await this.pool.query(UPSERT_PLACEMENT, placementParams(nodeId, p));
  }

  /**
   * Re-publishes every sandbox a node has (after it registers again, or PostgreSQL
   * comes back), and removes the node's placements its store no longer has
   * (purged after their retention): the node's SQLite is the truth about its own sandboxes.
   */
  async resync(nodeId: string, all: readonly PlacementUpdate[]): Promise<void> {
    await this.tx(async (c) => {
      await c.query('SELECT id FROM nodes WHERE id = $1 FOR UPDATE', [nodeId]);
      for (const p of all) await c.query(UPSERT_PLACEMENT, placementParams(nodeId, p));
      await c.query('DELETE FROM placements WHERE node_id = $1 AND NOT (sandbox_id = ANY($2))', [nodeId, all.map((p) => p.sandboxId)]);
    });
  }

  /**
   * The commit point of a move (src/cluster/move.ts): the sandbox becomes
   * `to`'s, paused, if and only if `from` still owns it (or it was never
   * published). False: someone else owns it; the move must be undone.
   */
  async claim(p: PlacementUpdate, from: string, to: string): Promise<boolean> {
    const r = await this.pool.query(`
      INSERT INTO placements (sandbox_id, node_id, state, last_known_state, template_id, memory_mib, vcpus, metadata, created_at, updated_at)
      VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, now())
      ON CONFLICT (sandbox_id) DO UPDATE SET node_id = EXCLUDED.node_id, state = EXCLUDED.state, last_known_state = EXCLUDED.last_known_state, updated_at = now()
      WHERE placements.node_id = $9`, [...placementParams(to, p), from]);
    return r.rowCount === 1;
  }

  /** Of `ids` (sandboxes this node has), those the cluster places on another node. */
  async placedElsewhere(nodeId: string, ids: readonly string[]): Promise<string[]> {
    if (ids.length === 0) return [];
    const r = await this.pool.query<{ sandbox_id: string }>('SELECT sandbox_id FROM placements WHERE sandbox_id = ANY($1) AND node_id <> $2', [ids, nodeId]);
    return r.rows.map((x) => x.sandbox_id);
  }

  async placement(sandboxId: string): Promise<(Placement & { node: NodeInfo }) | null> {
    const r = await this.pool.query<PlacementRow & { n: NodeRow }>(
      'SELECT p.*, row_to_json(n.*) AS n FROM placements p JOIN nodes n ON n.id = p.node_id WHERE p.sandbox_id = $1', [sandboxId]);
    const row = r.rows[0];
    if (!row) return null;
    const n = row.n;
    return { ...placementOf(row), node: nodeOf({ ...n, heartbeat_at: new Date(n.heartbeat_at), down_since: n.down_since ? new Date(n.down_since) : null }) };
  }

  async placements(): Promise<Placement[]> {
    const r = await this.pool.query<PlacementRow>('SELECT * FROM placements ORDER BY created_at, sandbox_id');
    return r.rows.map(placementOf);
  }

  async nodes(): Promise<NodeInfo[]> {
    const r = await this.pool.query<NodeRow>('SELECT * FROM nodes ORDER BY id');
    return r.rows.map(nodeOf);
  }

  /**
   * Chooses the node for a create (src/cluster/placement.ts) with every up node's
   * row locked, and reserves the memory on the chosen one, so creates placed at
   * the same moment through different nodes see each other. The owner's next
   * heartbeat replaces the reservation with its real numbers.
   */
  async place(req: PlacementRequest): Promise<NodeInfo | null> {
    return this.tx(async (c) => {
      const r = await c.query<NodeRow>(`SELECT * FROM nodes WHERE state = 'up' ORDER BY id FOR UPDATE`);
      const chosen = chooseNode(r.rows.map(nodeOf), req);
      if (!chosen) return null;
      // Free memory is bounded by MemAvailable too (placement.ts): the reservation comes off both, or a node
      // whose MemAvailable is the binding figure would win every create placed before its next heartbeat.
      await c.query('UPDATE nodes SET memory_used_mib = memory_used_mib + $2, memory_available_mib = GREATEST(memory_available_mib - $2, 0), sandboxes = sandboxes + 1 WHERE id = $1', [chosen.id, req.memoryMib]);
      return chosen;
    });
  }

  /**
   * Replaces a node's registry rows with what its SQLite has now (upserts, and
   * deletes its rows for records it no longer has): published when the node's
   * records change and on every resync, like its placements.
   */
  async syncRegistry(nodeId: string, r: NodeRegistry): Promise<void> {
    await this.tx(async (c) => {
      await c.query('SELECT id FROM nodes WHERE id = $1 FOR UPDATE', [nodeId]);
      for (const t of r.templates) {
        await c.query(`
          INSERT INTO registry_templates (node_id, template_id, aliases, image_hash, source, vcpus, memory_mib, created_at, updated_at)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
          ON CONFLICT (node_id, template_id) DO UPDATE SET aliases = EXCLUDED.aliases, image_hash = EXCLUDED.image_hash, source = EXCLUDED.source,
            vcpus = EXCLUDED.vcpus, memory_mib = EXCLUDED.memory_mib, created_at = EXCLUDED.created_at, updated_at = now()`,
        [nodeId, t.templateId, t.aliases, t.imageHash, t.source, t.vcpus, t.memoryMib, t.createdAt]);
      }
      await c.query('DELETE FROM registry_templates WHERE node_id = $1 AND NOT (template_id = ANY($2))', [nodeId, r.templates.map((t) => t.templateId)]);
      for (const s of r.snapshots) {
        await c.query(`
          INSERT INTO registry_snapshots (node_id, snapshot_id, name, sandbox_id, template_id, vcpus, memory_mib, created_at, updated_at)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
          ON CONFLICT (node_id, snapshot_id) DO UPDATE SET name = EXCLUDED.name, sandbox_id = EXCLUDED.sandbox_id, template_id = EXCLUDED.template_id,
            vcpus = EXCLUDED.vcpus, memory_mib = EXCLUDED.memory_mib, created_at = EXCLUDED.created_at, updated_at = now()`,
        [nodeId, s.snapshotId, s.name, s.sandboxId, s.templateId, s.vcpus, s.memoryMib, s.createdAt]);
      }
      await c.query('DELETE FROM registry_snapshots WHERE node_id = $1 AND NOT (snapshot_id = ANY($2))', [nodeId, r.snapshots.map((s) => s.snapshotId)]);
    });
  }

  /** Every node's registry rows (down nodes' included: callers decide what a down node's record means). */
  async registry(): Promise<NodeRegistry> {
    const [t, s] = await Promise.all([
      this.pool.query<TemplateRow>('SELECT * FROM registry_templates ORDER BY template_id, node_id'),
      this.pool.query<SnapshotRow>('SELECT * FROM registry_snapshots ORDER BY created_at DESC, snapshot_id, node_id'),
    ]);
    return { templates: t.rows.map(templateOf), snapshots: s.rows.map(snapshotOf) };
  }

  /** The registry rows a create's name can resolve to (templates by id or alias, snapshots by id or name). */
  async registryNamed(name: string): Promise<NodeRegistry> {
    const [t, s] = await Promise.all([
      this.pool.query<TemplateRow>('SELECT * FROM registry_templates WHERE template_id = $1 OR $1 = ANY(aliases) ORDER BY template_id, node_id', [name]),
      this.pool.query<SnapshotRow>('SELECT * FROM registry_snapshots WHERE snapshot_id = $1 OR name = $1 ORDER BY created_at DESC, snapshot_id, node_id', [name]),
    ]);
    return { templates: t.rows.map(templateOf), snapshots: s.rows.map(snapshotOf) };
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
