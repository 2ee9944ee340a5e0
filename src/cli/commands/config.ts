import { parseArgs } from 'node:util';
import { printJson, UsageError } from '../output.js';
import { applyUserConfig, readUserConfig, SETTINGS, userConfigPath, writeUserConfig } from '../user-config.js';

const mask = (k: string | undefined): string => (!k ? '-' : k.length <= 10 ? '****' : `${k.slice(0, 6)}…${k.slice(-4)}`);

/** `hearth config show|set|unset`: the CLI's URL and API key (src/cli/user-config.ts). */
export async function configCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const path = userConfigPath();
  switch (sub ?? 'show') {
    case 'show': {
      const eff = applyUserConfig({ ...process.env });
      if (values.json) { printJson({ file: path, url: eff.url, urlFrom: eff.urlFrom, apiKeySet: Boolean(eff.apiKey), apiKeyFrom: eff.apiKeyFrom }); return 0; }
      process.stdout.write(`file      ${path}\nurl       ${eff.url}  (from ${eff.urlFrom})\napi key   ${mask(eff.apiKey)}  (from ${eff.apiKeyFrom})\n`);
      return 0;
    }
    case 'set': case 'unset': {
      const [name, value] = positionals;
      const key = name ? SETTINGS[name] : undefined;
      if (!key) throw new UsageError(`usage: hearth config ${sub} url|api-key${sub === 'set' ? ' <value>' : ''}`);
      const cfg = readUserConfig(path);
      if (sub === 'set') {
        if (!value) throw new UsageError(`usage: hearth config set ${name} <value>`);
        if (key === 'url' && !/^https?:\/\/[^/]+/.test(value)) throw new UsageError(`url must look like http://host:port, got "${value}"`);
        cfg[key] = key === 'url' ? value.replace(/\/+$/, '') : value;
      } else delete cfg[key];
      writeUserConfig(cfg, path);
      if (values.json) printJson({ file: path, [key]: key === 'apiKey' ? Boolean(cfg[key]) : cfg[key] ?? null });
      else process.stderr.write(`${sub === 'set' ? 'saved' : 'removed'} ${name} in ${path}\n`);
      return 0;
    }
    default: throw new UsageError(`unknown command "config ${sub}"; see \`hearth config --help\``);
  }
}
