import { parseArgs } from 'node:util';
import { loadConfig } from '../../daemon/config.js';
import { Store } from '../../store/store.js';
import { createApiKey } from '../../api/auth.js';
import { age, printJson, printTable, UsageError } from '../output.js';
import { DataLayout } from '../../core/layout.js';

const USAGE = 'usage: hearth keys create [--name NAME] | ls | rm <id>   (works on the data dir directly: run it on the host, as the daemon\'s user)';

/** API keys live in the daemon's database; only their hashes are stored, the key is printed once. */
export async function keysCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { name: { type: 'string' }, 'data-dir': { type: 'string' }, json: { type: 'boolean' } } });
  const cfg = loadConfig(values['data-dir'] ? { dataDir: values['data-dir'] } : {});
  const store = new Store(new DataLayout(cfg.dataDir).db);
  try {
    switch (sub) {
      case 'create': {
        const k = createApiKey(store, values.name ?? 'default');
        if (values.json) printJson(k);
        else { process.stdout.write(`${k.key}\n`); process.stderr.write(`key ${k.id} created; it is shown only now. Use it as HEARTH_API_KEY (or E2B_API_KEY).\n`); }
        return 0;
      }
      case 'ls': case 'list': {
        const keys = store.listApiKeys().map(({ hash: _h, ...k }) => k);
        if (values.json) printJson(keys);
        else printTable(keys.map((k) => ({ id: k.id, name: k.name, created: age(k.createdAt), used: k.lastUsedAt ? `${age(k.lastUsedAt)} ago` : 'never' })), ['id', 'name', 'created', 'used']);
        return 0;
      }
      case 'rm': case 'delete': {
        const id = positionals[0];
        if (!id) throw new UsageError(USAGE);
        if (!store.deleteApiKey(id)) throw new UsageError(`no API key ${id}`, 1);
        if (values.json) printJson({ id, deleted: true });
        return 0;
      }
      default: throw new UsageError(USAGE);
    }
  } finally {
    store.close();
  }
}
