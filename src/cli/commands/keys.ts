import { parseArgs } from 'node:util';
import { loadConfig, type HearthConfig } from '../../daemon/config.js';
import { Store } from '../../store/store.js';
import { SqliteKeyStore, type ApiKeyStore } from '../../api/key-store.js';
import { ClusterStore } from '../../cluster/pg-store.js';
import { ClusterKeyStore, localKeys, PgKeyTable } from '../../cluster/keys.js';
import { age, printJson, printTable, UsageError } from '../output.js';
import { DataLayout } from '../../core/layout.js';
import { clusterNodeId } from '../../daemon/config.js';

const USAGE = 'usage: hearth keys create [--name NAME] | ls | rm <id>   (works on the daemon\'s key store directly: run it on the host, as the daemon\'s user;\n'
  + 'with databaseUrl in the configuration, on the cluster\'s keys in PostgreSQL)';

/**
 * The store the daemon with this configuration uses: in cluster mode (databaseUrl) the cluster's
 * keys in PostgreSQL, after this node's SQLite keys are imported as the daemon would at join
 * (so `ls` shows them even before the daemon has run); else the node's SQLite.
 */
async function openKeys(cfg: HearthConfig, store: Store): Promise<{ keys: ApiKeyStore; where: string; close(): Promise<void> }> {
  if (!cfg.databaseUrl) return { keys: new SqliteKeyStore(store), where: 'this host', close: async () => undefined };
  const db = new ClusterStore(cfg.databaseUrl);
  try {
    await db.migrate();
    const table = new PgKeyTable(db.pool, clusterNodeId(cfg));
    await table.importKeys(localKeys(store));
    return { keys: new ClusterKeyStore(table, { missIntervalMs: 0, cacheFile: null }), where: 'the cluster (PostgreSQL)', close: () => db.close() };
  } catch (err) {
    await db.close().catch(() => undefined);
    throw new UsageError(`cluster mode: the cluster database does not answer: ${err instanceof Error ? err.message : String(err)}`, 1);
  }
}

/** API keys live in the daemon's key store; only their hashes are stored, the key is printed once. */
export async function keysCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { name: { type: 'string' }, 'data-dir': { type: 'string' }, json: { type: 'boolean' } } });
  if (!['create', 'ls', 'list', 'rm', 'delete'].includes(sub ?? '')) throw new UsageError(USAGE);
  const cfg = loadConfig(values['data-dir'] ? { dataDir: values['data-dir'] } : {});
  const store = new Store(new DataLayout(cfg.dataDir).db);
  try {
    const { keys, where, close } = await openKeys(cfg, store);
    try {
      switch (sub) {
        case 'create': {
          const k = await keys.create(values.name ?? 'default');
          if (values.json) printJson({ id: k.id, key: k.key });
          else { process.stdout.write(`${k.key}\n`); process.stderr.write(`key ${k.id} created for ${where}; it is shown only now. Use it as HEARTH_API_KEY (or E2B_API_KEY).\n`); }
          return 0;
        }
        case 'ls': case 'list': {
          const list = await keys.list();
          if (values.json) printJson(list);
          else printTable(list.map((k) => ({ id: k.id, name: k.name, created: age(k.createdAt), used: k.lastUsedAt ? `${age(k.lastUsedAt)} ago` : 'never' })), ['id', 'name', 'created', 'used']);
          return 0;
        }
        default: {
          const id = positionals[0];
          if (!id) throw new UsageError(USAGE);
          if (!await keys.delete(id)) throw new UsageError(`no API key ${id}`, 1);
          if (values.json) printJson({ id, deleted: true });
          return 0;
        }
      }
    } finally {
      await close();
    }
  } finally {
    store.close();
  }
}
