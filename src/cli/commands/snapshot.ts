import { parseArgs } from 'node:util';
import { Sandbox } from '../../sdk/index.js';
import { age, printJson, printTable, UsageError } from '../output.js';

const HELP = `Usage: hearth snapshot <command>

  ls [--sandbox ID]        list named snapshots
  rm <id|name>...          delete snapshots (sandboxes started from them are unaffected)

Take one with \`hearth sandbox snapshot <id> --name NAME\`; start from one with
\`hearth sandbox create --snapshot NAME\`.`;

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
      return 0;
    }
    case undefined: case 'help': case '--help': process.stdout.write(`${HELP}\n`); return sub ? 0 : 2;
    default: throw new UsageError(`unknown command "snapshot ${sub}"\n\n${HELP}`);
  }
}
