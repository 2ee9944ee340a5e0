/**
 * The cluster's PostgreSQL store against a real PostgreSQL (no VMs): a
 * transaction's client that errors while checked out (the server went away
 * mid-transaction) must not become an uncaught exception, and is not reused.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterStore } from '../../src/cluster/pg-store.js';
import { postgresAvailable, startPostgres, type TestPostgres } from '../helpers/postgres.js';

describe('cluster store on a real PostgreSQL', { skip: !postgresAvailable() && 'PostgreSQL 15 (Debian) is not installed' }, () => {
  let pg: TestPostgres;
  let store: ClusterStore;

  before(async () => { pg = await startPostgres(); store = new ClusterStore(pg.url); });
  after(async () => { await store?.close(); await pg?.stop(); });

  test('a client erroring during a transaction is absorbed and destroyed, not returned to the pool', async () => {
    // pg emits 'error' on a checked-out client when its connection breaks, besides failing its queries;
    // unheard, node:test fails this test with the uncaught exception (as the 3-node test did on a restart).
    const inject = (c: { emit(e: string, err: Error): boolean }): void => { setImmediate(() => c.emit('error', new Error('server gone (injected)'))); };
    store.pool.once('acquire', inject);
    assert.ok(await store.migrate() > 0, 'the transaction itself went through');
    await new Promise((r) => setImmediate(r));
    assert.equal(store.pool.totalCount, 0, 'the client that errored was destroyed, not returned to the pool');
    await store.migrate();
    assert.equal(store.pool.idleCount, 1, 'a new client served the next transaction and went back to the pool');
  });
});
