/** docs/configuration.md lists every hearthd setting and every HEARTH_* variable of src/daemon/config.ts. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { defaultConfig } from '../../src/daemon/config.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

test('the configuration reference names every setting and environment variable', () => {
  const doc = readFileSync(join(PACKAGE_ROOT, 'docs', 'configuration.md'), 'utf8');
  const source = readFileSync(join(PACKAGE_ROOT, 'src', 'daemon', 'config.ts'), 'utf8');
  const keys = [...Object.keys(defaultConfig()), 'storage'];
  const vars = [...new Set([...source.matchAll(/\b(HEARTH_[A-Z0-9_]+): '/g)].map((m) => m[1]!))];
  assert.ok(vars.length > 20, 'found the ENV table');
  assert.deepEqual(keys.filter((k) => !doc.includes(`\`${k}\``)), [], 'settings missing from docs/configuration.md');
  assert.deepEqual(vars.filter((v) => !doc.includes(`\`${v}\``)), [], 'variables missing from docs/configuration.md');
});

test('the configuration reference gives each setting\'s default', () => {
  const doc = readFileSync(join(PACKAGE_ROOT, 'docs', 'configuration.md'), 'utf8').split('\n');
  const wrong: string[] = [];
  for (const [k, v] of Object.entries(defaultConfig())) {
    const row = doc.find((l) => l.startsWith('|') && l.split('|')[1]!.includes(`\`${k}\``));
    if (!row) { wrong.push(`${k}: no row`); continue; }
    const shown = v === '' ? "''" : Array.isArray(v) ? JSON.stringify(v) : String(v);
    const cells = row.split('|').map((c) => c.trim());
    if (!cells.includes(`\`${shown}\``)) wrong.push(`${k}: default ${shown} not in "${row.slice(0, 120)}"`);
  }
  assert.deepEqual(wrong, []);
});
