/**
 * Firecracker's Uffd handshake (docs/uffd.md, "The handshake"): a JSON array with one object
 * per guest memory region, in memory-file order:
 *
 *   [{"base_host_virt_addr":140245008322560,"size":3221225472,"offset":0,
 *     "page_size":4096,"page_size_kib":4096}, …]
 *
 * Addresses are u64 and exceed 2^53, so integers are parsed as BigInt (a
 * plain JSON.parse would round them). `page_size` (≥1.12) is in bytes;
 * `page_size_kib` (1.7–1.11, deprecated) holds the same byte value despite
 * its name; neither (older) means 4 KiB.
 */
import { HostFailureError } from '../../core/errors.js';

export interface UffdRegion {
  /** Start of the region in Firecracker's address space. */
  base: bigint;
  size: bigint;
  /** Where the region's contents start in the memory file (not a guest-physical address). */
  offset: bigint;
}

export interface UffdHandshake {
  regions: UffdRegion[];
  /** Bytes: 4096, or 2 MiB for hugetlbfs-backed guests. */
  pageSize: number;
  /** Sum of the region sizes. */
  totalBytes: bigint;
}

export type BigJson = null | boolean | string | number | bigint | BigJson[] | { [k: string]: BigJson };

/** JSON.parse, except that integer literals become BigInt (fractions and exponents stay numbers). */
export function parseJsonBig(text: string): BigJson {
  let i = 0;
  const fail = (what: string): never => { throw new SyntaxError(`${what} at offset ${i} of the handshake`); };
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++; };
  const value = (): BigJson => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const o: { [k: string]: BigJson } = {};
      ws();
      if (text[i] === '}') { i++; return o; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const k = str();
        ws();
        if (text[i] !== ':') fail('expected ":"');
        i++;
        o[k] = value();
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return o; }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const a: BigJson[] = [];
      ws();
      if (text[i] === ']') { i++; return a; }
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return a; }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') return str();
    if (text.startsWith('true', i)) { i += 4; return true; }
    if (text.startsWith('false', i)) { i += 5; return false; }
    if (text.startsWith('null', i)) { i += 4; return null; }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) return fail('unexpected character');
    i += m[0].length;
    return m[2] || m[3] ? Number(m[0]) : BigInt(m[0]);
  };
  const str = (): string => {
    const start = i;
    i++;
    let esc = false;
    for (; i < text.length; i++) {
      const ch = text[i];
      if (esc) { esc = false; continue; }
      if (ch === '\\') { esc = true; continue; }
      if (ch === '"') { i++; return JSON.parse(text.slice(start, i)) as string; }
    }
    return fail('unterminated string');
  };
  const v = value();
  ws();
  if (i !== text.length) fail('trailing data');
  return v;
}

const U64_MAX = (1n << 64n) - 1n;

function u64(v: BigJson | undefined, field: string, idx: number): bigint {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) {
    throw new HostFailureError(`uffd handshake: region ${idx}: ${field} must be an unsigned 64-bit integer, got ${JSON.stringify(typeof v === 'bigint' ? v.toString() : v)}`);
  }
  return v;
}

/** Parses and validates the region list. `memoryFileBytes`, when given, must equal the regions' total. */
export function parseHandshake(json: string, memoryFileBytes?: bigint | number): UffdHandshake {
  let doc: BigJson;
  try { doc = parseJsonBig(json); } catch (err) {
    throw new HostFailureError(`uffd handshake is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(doc) || doc.length === 0) throw new HostFailureError('uffd handshake must be a non-empty JSON array of regions');
  let pageSize: bigint | undefined;
  const regions: UffdRegion[] = [];
  doc.forEach((r, idx) => {
    if (!r || typeof r !== 'object' || Array.isArray(r)) throw new HostFailureError(`uffd handshake: region ${idx} is not an object`);
    const base = u64(r.base_host_virt_addr, 'base_host_virt_addr', idx);
    const size = u64(r.size, 'size', idx);
    const offset = u64(r.offset, 'offset', idx);
    const ps = r.page_size !== undefined ? u64(r.page_size, 'page_size', idx)
      : r.page_size_kib !== undefined ? u64(r.page_size_kib, 'page_size_kib', idx) // bytes, despite the name
        : 4096n;
    if (ps < 4096n || (ps & (ps - 1n)) !== 0n) throw new HostFailureError(`uffd handshake: region ${idx}: page size ${ps} is not a power of two >= 4096`);
    if (pageSize !== undefined && ps !== pageSize) throw new HostFailureError(`uffd handshake: regions disagree on the page size (${pageSize} vs ${ps})`);
    pageSize = ps;
    if (size === 0n) throw new HostFailureError(`uffd handshake: region ${idx} is empty`);
    if (base % ps || size % ps || offset % ps) throw new HostFailureError(`uffd handshake: region ${idx} is not aligned to the ${ps}-byte page size`);
    if (base + size > U64_MAX + 1n) throw new HostFailureError(`uffd handshake: region ${idx} wraps the address space`);
    regions.push({ base, size, offset });
  });
  // Regions are laid out back to back in the memory file.
  const byOffset = [...regions].sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0));
  let expected = 0n;
  for (const r of byOffset) {
    if (r.offset !== expected) throw new HostFailureError(`uffd handshake: region at file offset ${r.offset} does not follow the previous one (expected ${expected})`);
    expected += r.size;
  }
  const byBase = [...regions].sort((a, b) => (a.base < b.base ? -1 : a.base > b.base ? 1 : 0));
  for (let k = 1; k < byBase.length; k++) {
    if (byBase[k - 1]!.base + byBase[k - 1]!.size > byBase[k]!.base) throw new HostFailureError('uffd handshake: regions overlap');
  }
  if (memoryFileBytes !== undefined && BigInt(memoryFileBytes) !== expected) {
    throw new HostFailureError(`uffd handshake: the regions total ${expected} bytes but the memory file has ${memoryFileBytes}: wrong snapshot for this VM?`);
  }
  return { regions, pageSize: Number(pageSize!), totalBytes: expected };
}
