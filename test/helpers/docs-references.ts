/**
 * The repository documents itself: every fact the code relies on is in docs/, and
 * code and docs point at it as `docs/<name>.md`, optionally with a section:
 *
 *   docs/<name>.md, "Section"                  a heading of that file (case-insensitive;
 *   docs/<name>.md, "One" and "Other"          "Ended sandboxes" matches "Ended sandboxes: …")
 *   docs/<name>.md#anchor                      a GitHub heading anchor
 *
 * Inside docs/, relative Markdown links (`[x](other.md#anchor)`, `[x](#anchor)`) are
 * checked too. No file may cite documents that are not part of the repository (the
 * forbidden strings below), nor use numbered `§` citations other than RFCs'.
 * The patterns are assembled from pieces so that this file does not trip over itself.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

/** Where references are looked for (folders and single files, relative to the repository). */
export const SCAN_ROOTS = ['src', 'test', 'bench', 'scripts', 'examples', 'docs', 'native', 'proto', 'packages', '.ci', 'bin', 'README.md', 'package.json'];

/** Generated or third-party trees that are never scanned (when git cannot say what is ignored). */
const SKIP_DIRS = new Set(['node_modules', 'dist', 'build', '.git', 'gen']);

const SECTION = '\u00a7';

/** Strings naming documents outside the repository, or an absolute path of one machine. */
export const FORBIDDEN: readonly string[] = [
  ['DESIGN', ' ', SECTION],
  ['PROTOCOL', ' ', SECTION],
  ['..', '/shared/'],
  ['/wo', 'rk/'],
  ['shared', '/protocols/'],
  ['shared', '/firecracker/'],
  ['DESIGN', '.md'],
  ['PROTOCOL', '.md'],
  ['envd', '.md'],
].map((parts) => parts.join(''));

export interface Problem {
  file: string;
  line: number;
  message: string;
}

export interface Heading {
  text: string;
  anchor: string;
}

/** The files to scan: what git tracks or would track (ignored files excluded), else a walk. */
export function listFiles(root: string): string[] {
  let files: string[] | null = null;
  try {
    const out = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard', '--', ...SCAN_ROOTS], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    files = out.split('\0').filter((f) => f !== '' && existsSync(path.join(root, f)));
  } catch {
    files = null;
  }
  if (files === null || files.length === 0) {
    files = [];
    const walk = (rel: string): void => {
      const abs = path.join(root, rel);
      if (!existsSync(abs)) return;
      if (statSync(abs).isDirectory()) {
        for (const name of readdirSync(abs)) if (!SKIP_DIRS.has(name)) walk(path.join(rel, name));
      } else {
        files!.push(rel);
      }
    };
    for (const r of SCAN_ROOTS) walk(r);
  }
  return files.filter((f) => !f.split('/').some((part) => part === 'node_modules')).sort();
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes. */
export function anchorOf(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
}

/** The headings of a Markdown text (outside fenced code blocks), with their anchors (duplicates numbered as GitHub does). */
export function headingsOf(markdown: string): Heading[] {
  const out: Heading[] = [];
  const seen = new Map<string, number>();
  let fence: string | null = null;
  for (const line of markdown.split('\n')) {
    const f = /^\s*(```+|~~~+)/.exec(line);
    if (f) {
      if (fence === null) fence = f[1]![0]!;
      else if (f[1]![0] === fence) fence = null;
      continue;
    }
    if (fence !== null) continue;
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const text = m[1]!;
    const base = anchorOf(text);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.push({ text, anchor: n === 0 ? base : `${base}-${n}` });
  }
  return out;
}

function normalise(s: string): string {
  return s.replace(/[`*_]/g, '').replace(/\s+/g, ' ').trim().toLowerCase();
}

/** Whether `name` names one of `headings`: the whole heading, or its beginning up to a punctuation mark. */
export function hasSection(headings: readonly Heading[], name: string): boolean {
  const want = normalise(name);
  return headings.some((h) => {
    const text = normalise(h.text);
    return text === want || (text.startsWith(want) && /^[^\p{L}\p{N}]/u.test(text.slice(want.length)));
  });
}

function lineAt(text: string, index: number): number {
  let line = 1;
  for (let i = 0; i < index; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** `docs/<name>.md` not inside another path (so `other/docs/x.md` and URLs of other projects are not ours). */
const DOC_REF = /(?<![\w/.-])docs\/([A-Za-z0-9_.-]+\.md)(#[\p{L}\p{N}_-]+)?/gu;
/** `, "Section"` right after a reference (or after its closing backtick), then any number of `and "Other"` / `, "Other"`, across a comment line break. */
const SECTIONS = /^`?,\s*"([^"\n]+)"((?:\s*(?:,|and)\s*(?:(?:\/\/|\*|#)\s*)?"[^"\n]+")*)/;
const MORE_SECTIONS = /"([^"\n]+)"/g;
/** A numbered `§` citation that is not an RFC's. */
const NUMBERED_CITATION = new RegExp(`(?<!RFC \\d+ )${SECTION}\\s*\\d`);
/** Relative Markdown links in docs. */
const MD_LINK = /\]\(([^)\s]+)\)/g;

/**
 * Every problem in the given files: forbidden strings, numbered citations, and
 * references to a docs/ file, section or anchor that does not exist.
 * `readDoc(name)` returns the text of docs/<name>, or null when there is none.
 */
export function checkTexts(files: ReadonlyMap<string, string>, readDoc: (name: string) => string | null): Problem[] {
  const problems: Problem[] = [];
  const headingCache = new Map<string, Heading[] | null>();
  const headings = (name: string): Heading[] | null => {
    if (!headingCache.has(name)) {
      const text = files.get(`docs/${name}`) ?? readDoc(name);
      headingCache.set(name, text === null ? null : headingsOf(text));
    }
    return headingCache.get(name)!;
  };
  const checkTarget = (file: string, line: number, ref: string, name: string, anchor: string | undefined, sections: string[]): void => {
    const hs = headings(name);
    if (hs === null) {
      problems.push({ file, line, message: `${ref}: docs/${name} does not exist` });
      return;
    }
    if (anchor !== undefined && anchor !== '' && !hs.some((h) => h.anchor === anchor)) {
      problems.push({ file, line, message: `${ref}: docs/${name} has no heading with anchor #${anchor}` });
    }
    for (const s of sections) {
      if (!hasSection(hs, s)) problems.push({ file, line, message: `${ref}: docs/${name} has no section "${s}"` });
    }
  };

  for (const [file, text] of files) {
    const lines = text.split('\n');
    lines.forEach((l, i) => {
      for (const f of FORBIDDEN) {
        if (l.includes(f)) problems.push({ file, line: i + 1, message: `names a document outside the repository or a machine path: "${f}" (write the fact into docs/ and point there)` });
      }
      if (NUMBERED_CITATION.test(l)) problems.push({ file, line: i + 1, message: `numbered ${SECTION} citation: point to docs/<name>.md, "Section" instead` });
      if (/docs\/[A-Za-z0-9_.-]+\.md \u00a7/.test(l)) problems.push({ file, line: i + 1, message: `write docs/<name>.md, "Section" rather than ${SECTION}Section` });
    });

    for (const m of text.matchAll(DOC_REF)) {
      const after = text.slice(m.index! + m[0].length);
      const sec = SECTIONS.exec(after);
      const sections = sec ? [sec[1]!, ...[...sec[2]!.matchAll(MORE_SECTIONS)].map((x) => x[1]!)] : [];
      checkTarget(file, lineAt(text, m.index!), m[0] + (sec ? sec[0].replace(/\s+/g, ' ') : ''), m[1]!, m[2]?.slice(1), sections);
    }

    if (file.startsWith('docs/') && file.endsWith('.md')) {
      for (const m of text.matchAll(MD_LINK)) {
        const target = m[1]!;
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // a URL
        const [pathPart, anchor] = target.split('#', 2) as [string, string | undefined];
        const line = lineAt(text, m.index!);
        if (pathPart === '') {
          checkTarget(file, line, target, path.basename(file), anchor, []);
        } else if (pathPart.endsWith('.md') && !pathPart.includes('/')) {
          checkTarget(file, line, target, pathPart, anchor, []);
        }
      }
    }
  }
  return problems;
}

/** Check the repository at `root`. */
export function checkRepository(root: string): { files: number; references: number; problems: Problem[] } {
  const texts = new Map<string, string>();
  for (const f of listFiles(root)) {
    const buf = readFileSync(path.join(root, f));
    if (buf.includes(0)) continue; // binary
    texts.set(f, buf.toString('utf8'));
  }
  const readDoc = (name: string): string | null => {
    const p = path.join(root, 'docs', name);
    return existsSync(p) ? readFileSync(p, 'utf8') : null;
  };
  let references = 0;
  for (const text of texts.values()) references += [...text.matchAll(DOC_REF)].length;
  return { files: texts.size, references, problems: checkTexts(texts, readDoc) };
}
