/**
 * Schema migrations, applied in order at open. Append only: never edit a
 * migration that has shipped; add a new one.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    image_hash TEXT NOT NULL,
    kernel_path TEXT NOT NULL,
    initrd_path TEXT,
    rootfs_path TEXT NOT NULL,
    rootfs_size_bytes INTEGER NOT NULL,
    kernel_args TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    state TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    env_vars TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    end_at TEXT NOT NULL,
    ended_at TEXT,
    end_reason TEXT,
    agent_token TEXT NOT NULL,
    agent TEXT,
    vmm TEXT,
    disk TEXT,
    network TEXT,
    timings TEXT
  );
  CREATE INDEX sandboxes_state ON sandboxes(state);
  CREATE TABLE journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL,
    op TEXT NOT NULL,
    step TEXT NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE INDEX journal_sandbox ON journal(sandbox_id);
  `,
  `
  ALTER TABLE sandboxes ADD COLUMN snapshot_id TEXT;
  ALTER TABLE sandboxes ADD COLUMN paused_at TEXT;
  CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    name TEXT,
    kind TEXT NOT NULL,
    sandbox_id TEXT,
    template_id TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    dir TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    agent_token TEXT NOT NULL,
    env_vars TEXT NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE INDEX snapshots_template ON snapshots(template_id, kind);
  `,
  `
  ALTER TABLE sandboxes ADD COLUMN lifecycle TEXT;
  CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT
  );
  CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    created_at TEXT NOT NULL
  );
  `,
  // 4: per-sandbox network settings; the netns slot pool's rows (slot numbers persist across restarts).
  `
  ALTER TABLE sandboxes ADD COLUMN net_policy TEXT;
  CREATE TABLE network_slots (
    n INTEGER PRIMARY KEY,
    netns TEXT NOT NULL,
    host_if TEXT NOT NULL,
    host_addr TEXT NOT NULL,
    ns_addr TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('free', 'used')),
    generation INTEGER NOT NULL,
    policy TEXT
  );
  `,
  // 5: idempotency keys scoped to their owner, with the hash of the request they were first used
  // with and the outcome of its create (a failed create answers its replays with the failure);
  // template (warm) snapshots record their last use, so the least recently used shape goes first.
  `
  CREATE TABLE idempotency_v5 (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT,
    sandbox_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'created', 'failed')),
    error_code TEXT,
    error_message TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (scope, key)
  );
  INSERT INTO idempotency_v5 (scope, key, request_hash, sandbox_id, state, created_at)
    SELECT '', key, NULL, sandbox_id, 'created', created_at FROM idempotency;
  DROP TABLE idempotency;
  ALTER TABLE idempotency_v5 RENAME TO idempotency;
  CREATE INDEX idempotency_created ON idempotency(created_at);
  CREATE INDEX idempotency_sandbox ON idempotency(sandbox_id);
  ALTER TABLE snapshots ADD COLUMN last_used_at TEXT;
  UPDATE snapshots SET last_used_at = created_at;
  `,
  // 6: the holdings ledger (src/core/holdings.ts): what each sandbox holds on the host, one row per
  // acquisition in the order taken, written as it is taken (intent rows before a VMM is spawned).
  `
  CREATE TABLE holdings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    recorded_at TEXT NOT NULL
  );
  CREATE INDEX holdings_sandbox ON holdings(sandbox_id, id);
  `,
  // 7: the VMM's snapshot-compatibility key each snapshot was taken with (VmmDriver.snapshotCompat).
  `
  ALTER TABLE snapshots ADD COLUMN compat TEXT;
  `,
  // 8: custom templates (docs/templates.md): where a template came from, what its sandboxes get,
  // its aliases and layer chain; and the builds that make them.
  `
  ALTER TABLE templates ADD COLUMN source TEXT NOT NULL DEFAULT 'image';
  ALTER TABLE templates ADD COLUMN runtime TEXT;
  ALTER TABLE templates ADD COLUMN aliases TEXT NOT NULL DEFAULT '[]';
  ALTER TABLE templates ADD COLUMN parent_id TEXT;
  ALTER TABLE templates ADD COLUMN build_id TEXT;
  ALTER TABLE templates ADD COLUMN layers TEXT NOT NULL DEFAULT '[]';
  CREATE TABLE builds (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('building', 'ready', 'failed', 'cancelled')),
    phase TEXT NOT NULL,
    request TEXT NOT NULL,
    steps TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT
  );
  CREATE INDEX builds_template ON builds(template_id, created_at);
  `,
];
