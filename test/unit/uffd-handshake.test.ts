import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseHandshake, parseJsonBig } from '../../src/memory/uffd/handshake.js';
import { mergeWorkingSet } from '../../src/memory/uffd/working-set.js';
import { summarizeLatency } from '../../src/memory/uffd/page-server.js';

test('integers beyond 2^53 survive as BigInt', () => {
  const v = parseJsonBig('[{"a":18446744073709551615,"b":-3,"c":1.5,"d":"x\\"y","e":[true,false,null]}]') as Array<Record<string, unknown>>;
  assert.equal(v[0]!.a, 18446744073709551615n);
  assert.equal(v[0]!.b, -3n);
  assert.equal(v[0]!.c, 1.5);
  assert.equal(v[0]!.d, 'x"y');
  assert.deepEqual(v[0]!.e, [true, false, null]);
  assert.throws(() => parseJsonBig('[1,]'), SyntaxError);
  assert.throws(() => parseJsonBig('[1] x'), SyntaxError);
});

test('Firecracker ≥1.12 region list (page_size and page_size_kib, both in bytes)', () => {
  const json = '[{"base_host_virt_addr":140245008322560,"size":3221225472,"offset":0,"page_size":4096,"page_size_kib":4096},' +
    '{"base_host_virt_addr":9223372036854779904,"size":1073741824,"offset":3221225472,"page_size":4096,"page_size_kib":4096}]';
  const hs = parseHandshake(json, 4294967296n);
  assert.equal(hs.pageSize, 4096);
  assert.equal(hs.regions.length, 2);
  assert.equal(hs.regions[1]!.base, 9223372036854779904n); // 2^63 + 4096: far beyond 2^53
  assert.equal(hs.totalBytes, 4294967296n);
});

test('page_size_kib alone (1.7–1.11) holds bytes; neither field means 4 KiB', () => {
  assert.equal(parseHandshake('[{"base_host_virt_addr":2097152,"size":4194304,"offset":0,"page_size_kib":2097152}]').pageSize, 2097152);
  assert.equal(parseHandshake('[{"base_host_virt_addr":4096,"size":8192,"offset":0}]').pageSize, 4096);
});

test('bad region lists are refused with a reason', () => {
  const r = (o: object) => JSON.stringify([o]);
  assert.throws(() => parseHandshake('{}'), /non-empty JSON array/);
  assert.throws(() => parseHandshake('[]'), /non-empty JSON array/);
  assert.throws(() => parseHandshake(r({ base_host_virt_addr: 4097, size: 4096, offset: 0 })), /not aligned/);
  assert.throws(() => parseHandshake(r({ base_host_virt_addr: 4096, size: 4096, offset: 0, page_size: 3000 })), /power of two/);
  assert.throws(() => parseHandshake(r({ base_host_virt_addr: 4096, size: 4096, offset: 4096 })), /does not follow/);
  assert.throws(() => parseHandshake(r({ base_host_virt_addr: '4096', size: 4096, offset: 0 })), /unsigned 64-bit/);
  assert.throws(() => parseHandshake(r({ base_host_virt_addr: 4096, size: 8192, offset: 0 }), 4096), /wrong snapshot/);
  assert.throws(() => parseHandshake(JSON.stringify([
    { base_host_virt_addr: 4096, size: 8192, offset: 0 }, { base_host_virt_addr: 8192, size: 4096, offset: 8192 },
  ])), /overlap/);
  assert.throws(() => parseHandshake(JSON.stringify([
    { base_host_virt_addr: 4096, size: 4096, offset: 0, page_size: 4096 }, { base_host_virt_addr: 2097152, size: 2097152, offset: 4096, page_size: 2097152 },
  ])), /disagree/);
});

test('working sets merge in first-touch order without duplicates', () => {
  assert.deepEqual([...mergeWorkingSet(undefined, Uint32Array.from([5, 3, 5, 9]))], [5, 3, 9]);
  assert.deepEqual([...mergeWorkingSet(Uint32Array.from([1, 2]), Uint32Array.from([2, 7, 1, 8]))], [1, 2, 7, 8]);
});

test('latency summary from power-of-two buckets', () => {
  const hist = new Array<number>(40).fill(0);
  hist[10] = 90; // ~1-2 µs
  hist[14] = 10; // ~16-32 µs
  const s = summarizeLatency(hist, 100 * 2000, 30000);
  assert.equal(s.count, 100);
  assert.equal(s.p50Us, 2.048);
  assert.equal(s.p90Us, 2.048);
  assert.equal(s.p99Us, 30);
  assert.equal(s.maxUs, 30);
  assert.equal(summarizeLatency([], 0, 0).count, 0);
});
