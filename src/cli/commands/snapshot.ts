import { parseArgs } from 'node:util';
import { Sandbox } from '../../sdk/index.js';
import { age, printJson, printTable, UsageError } from '../output.js';

export async function snapshotCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { sandbox: { type: 'string' }, json: { type: 'boolean' } } });
  switch (sub) {
    case 'ls': case 'list': {
      const items = await Sandbox.listSnapshots(values.sandbox ? { sandboxId: values.sandbox } : {});
      if (values.json) { printJson(items); return 0; }
      printTable(items.map((s) => ({ id: s.snapshotID, name: s.names.join(','), sandbox: s.sandboxID, shape: `${s.cpuCount}c/${s.memoryMB}M`, size: `${Math.round(s.sizeBytes / 1048576)}M`, age: age(s.createdAt) })),
        ['id', 'name', 'sandbox', 'shape', 'size', 'age']);
      return 0;
    }
    case 'rm': case 'delete': {
      if (positionals.length === 0) throw new UsageError('usage: hearth snapshot rm <id|name>...');
      for (const id of positionals) await Sandbox.deleteSnapshot(id);
      if (values.json) printJson(positionals.map((id) => ({ snapshot: id, deleted: true })));
      return 0;
    }
    case undefined: throw new UsageError('usage: hearth snapshot ls|rm; `hearth snapshot --help` says more');
    default: throw new UsageError(`unknown command "snapshot ${sub}"; \`hearth snapshot --help\` lists them`);
  }
}
