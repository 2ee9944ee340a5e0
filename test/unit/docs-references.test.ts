/**
 * The repository stands on its own: every `docs/<name>.md` reference in src, test, bench,
 * scripts, examples, native, proto, README.md and docs/ names a file that exists (and the
 * section or anchor it names, if any), and no file cites documents outside the repository
 * or a machine's absolute path. Rules and forms: test/helpers/docs-references.ts.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { anchorOf, checkRepository, checkTexts, FORBIDDEN, headingsOf, type Problem } from '../helpers/docs-references.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function show(problems: readonly Problem[]): string {
  return problems.map((p) => `${p.file}:${p.line}: ${p.message}`).join('\n');
}

test('every docs/ reference in the repository resolves, and nothing cites a document outside it', () => {
  const { files, references, problems } = checkRepository(root);
  assert.ok(files > 100, `scanned only ${files} files`);
  assert.ok(references > 50, `found only ${references} docs/ references`);
  assert.equal(problems.length, 0, `\n${show(problems)}`);
});

/** The synthetic references below are built at run time, so that the repository scan does not see them. */
const d = ['docs', ''].join('/');
const DOCS: Record<string, string> = {
  'a.md': '# A\n\n## Rules\n\n### Pause order\n\n## Ended sandboxes: secrets and retention\n\n```sh\n# not a heading\n```\n\n## `dmsetup remove` retry policy\n',
};
const readDoc = (name: string): string | null => DOCS[name] ?? null;
const check = (text: string, file = 'src/x.ts'): string[] => checkTexts(new Map([[file, text]]), readDoc).map((p) => p.message);

test('the checker accepts references to existing files, sections and anchors', () => {
  assert.deepEqual(check([
    `// ${d}a.md`,
    `// (${d}a.md, "Pause order")`,
    `// ${d}a.md, "Rules" and "Pause order"`,
    ` * ${d}a.md, "Rules" and`,
    ' * "Pause order"',
    `// ${d}a.md, "Ended sandboxes"`,
    `// ${d}a.md, "dmsetup remove retry policy"`,
    `// ${d}a.md#pause-order`,
    `// (\`${d}a.md\`, "Rules")`,
    '// RFC 3986 \u00a75.2.4 is fine',
    '// https://example.org/project/docs/missing.md is another project\'s',
  ].join('\n')), []);
});

test('the checker reports missing files, sections and anchors, forbidden citations and numbered sections', () => {
  const found = check([
    `// ${d}missing.md`,
    `// ${d}a.md, "No such section"`,
    `// ${d}a.md, "Rules" and "Nor this"`,
    `// ${d}a.md#no-such-anchor`,
    `// ${d}a.md, "not a heading"`,
    `// (\`${d}a.md\`, "Quoted and missing")`,
    `// ${['DESIGN', '\u00a73'].join(' ')}`,
    `// see ${['PROTOCOL', '\u00a71.2'].join(' ')}`,
    `// ${['..', 'shared', 'x'].join('/')}`,
    `// ${['', 'work', 'main', 'x'].join('/')}`,
    '// envd \u00a72.6',
    `// ${d}a.md \u00a7Rules`,
  ].join('\n'));
  const expect = [
    /docs\/missing\.md does not exist/,
    /no section "No such section"/,
    /no section "Nor this"/,
    /no heading with anchor #no-such-anchor/,
    /no section "not a heading"/,
    /no section "Quoted and missing"/,
  ];
  for (const re of expect) assert.ok(found.some((m) => re.test(m)), `expected ${re} in:\n${found.join('\n')}`);
  assert.equal(found.filter((m) => m.startsWith('names a document outside')).length, 4, found.join('\n'));
  assert.ok(found.filter((m) => m.startsWith('numbered')).length >= 3, found.join('\n'));
  assert.ok(found.some((m) => m.includes('rather than')), found.join('\n'));
  assert.ok(!found.some((m) => m.includes('no section "Rules"')), 'an existing section next to a missing one is not reported');
});

test('relative Markdown links inside docs/ are checked too', () => {
  const found = checkTexts(new Map([[`${d}b.md`, '[ok](a.md#rules) [ok](#b) [bad](a.md#nope) [bad](gone.md) [url](https://x.test/y.md)\n# B\n']]), readDoc).map((p) => p.message);
  assert.equal(found.length, 2, found.join('\n'));
  assert.ok(found.some((m) => /anchor #nope/.test(m)));
  assert.ok(found.some((m) => /docs\/gone\.md does not exist/.test(m)));
});

test('anchors follow GitHub: lower case, punctuation dropped, spaces to dashes, duplicates numbered', () => {
  assert.equal(anchorOf('Process isolation and constant paths'), 'process-isolation-and-constant-paths');
  assert.equal(anchorOf('`POST /init` (the host\'s hook)'), 'post-init-the-hosts-hook');
  assert.deepEqual(headingsOf('# X\n## Y\n## Y\n').map((h) => h.anchor), ['x', 'y', 'y-1']);
  assert.ok(FORBIDDEN.length >= 4);
});
