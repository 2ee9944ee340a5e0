import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { AddressInfo } from 'node:net';
import { deadlineSignal, withDeadline } from '../../src/util/signal.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

test('a deadline aborts a fetch to a server that never answers, even with garbage collections running', { timeout: 10_000 }, async () => {
  const srv = createServer(() => { /* never answers */ }).listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as AddressInfo;
  const collector = setInterval(gc, 20);
  const outer = new AbortController(); // long-lived, never aborted: like a request's signal
  const t0 = performance.now();
  try {
    await assert.rejects(
      withDeadline(outer.signal, 300, (s) => fetch(`http://127.0.0.1:${port}/`, { signal: s })),
      (err: Error) => err.name === 'TimeoutError',
    );
    const ms = performance.now() - t0;
    assert.ok(ms >= 280 && ms < 3000, `aborted after ${Math.round(ms)} ms`);
  } finally {
    clearInterval(collector);
    srv.closeAllConnections();
    srv.close();
  }
});

test('the parent aborting aborts the deadline signal with the parent\'s reason; clear() detaches from the parent', () => {
  const parent = new AbortController();
  const d = deadlineSignal(parent.signal, 60_000);
  parent.abort(new Error('cancelled by the caller'));
  assert.equal(d.signal.aborted, true);
  assert.equal((d.signal.reason as Error).message, 'cancelled by the caller');
  d.clear();

  const parent2 = new AbortController();
  const d2 = deadlineSignal(parent2.signal, 60_000);
  d2.clear();
  parent2.abort();
  assert.equal(d2.signal.aborted, false, 'a cleared deadline no longer follows its parent');

  const already = deadlineSignal(AbortSignal.abort(new Error('gone')), 60_000);
  assert.equal(already.signal.aborted, true);
  already.clear();
});
