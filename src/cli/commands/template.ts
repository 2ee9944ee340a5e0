import { parseArgs } from 'node:util';
import { HearthApi } from '../../sdk/index.js';
import { age, printJson, printTable, UsageError } from '../output.js';

interface TemplateInfo { templateID: string; cpuCount: number; memoryMB: number; diskSizeMB: number; imageHash: string; createdAt: string }
interface TemplateSnapshotInfo {
  snapshotID: string; templateID: string; cpuCount: number; memoryMB: number; sizeBytes: number;
  createdAt: string; lastUsedAt: string; current: boolean; inUse: number;
}

const path = (...parts: string[]): string => `/${parts.map(encodeURIComponent).join('/')}`;

/** `hearth template`: templates and their warm snapshots. */
export async function templateCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const api = new HearthApi();
  switch (sub) {
    case 'ls': case 'list': {
      const items = await api.request<TemplateInfo[]>('GET', '/templates');
      if (values.json) { printJson(items); return 0; }
      printTable(items.map((t) => ({ id: t.templateID, shape: `${t.cpuCount}c/${t.memoryMB}M`, disk: `${t.diskSizeMB}M`, image: t.imageHash.slice(0, 12), age: age(t.createdAt) })),
        ['id', 'shape', 'disk', 'image', 'age']);
      return 0;
    }
    case 'snapshots': case 'snapshot': {
      if (positionals[0] === 'rm' || positionals[0] === 'delete') {
        const [, template, ...snaps] = positionals;
        if (!template || snaps.length === 0) throw new UsageError('usage: hearth template snapshots rm <template> <snapshot>...');
        for (const snap of snaps) await api.request<void>('DELETE', path('templates', template, 'snapshots', snap));
        if (values.json) printJson(snaps.map((s) => ({ template, snapshot: s, deleted: true })));
        return 0;
      }
      const [template] = positionals;
      if (!template || positionals.length > 1) throw new UsageError('usage: hearth template snapshots <template> | hearth template snapshots rm <template> <snapshot>...');
      const items = await api.request<TemplateSnapshotInfo[]>('GET', path('templates', template, 'snapshots'));
      if (values.json) { printJson(items); return 0; }
      printTable(items.map((s) => ({
        id: s.snapshotID, shape: `${s.cpuCount}c/${s.memoryMB}M`, size: `${Math.round(s.sizeBytes / 1048576)}M`, age: age(s.createdAt),
        used: `${age(s.lastUsedAt)} ago`, state: !s.current ? 'outdated' : s.inUse > 0 ? `in use (${s.inUse})` : 'ready',
      })), ['id', 'shape', 'size', 'age', 'used', 'state']);
      return 0;
    }
    case undefined: throw new UsageError('usage: hearth template ls|snapshots; `hearth template --help` says more');
    default: throw new UsageError(`unknown command "template ${sub}"; \`hearth template --help\` lists them`);
  }
}
