import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AbortedError, TimeoutError } from '../../src/core/errors.js';
import { QmpClient, QmpClosedError, QmpCommandError } from '../../src/vmm/qemu/qmp.js';

type Handler = (msg: Record<string, unknown>, sock: net.Socket) => void;

/** A fake QMP server: greets, then hands each request to `handler`. */
class FakeQmp {
  server: net.Server;
  sockets = new Set<net.Socket>();
  received: Record<string, unknown>[] = [];
  handler: Handler = (msg, sock) => reply(sock, msg, {});
  greet = true;
  constructor(readonly path: string) {
    this.server = net.createServer((sock) => {
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
      if (this.greet) {
        sock.write(JSON.stringify({ QMP: { version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'test' }, capabilities: ['oob'] } }) + '\r\n');
      }
      let buf = '';
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const msg = JSON.parse(line) as Record<string, unknown>;
          this.received.push(msg);
          if (msg['execute'] === 'qmp_capabilities') reply(sock, msg, {});
          else this.handler(msg, sock);
        }
      });
      sock.on('error', () => {});
    });
  }
  listen(): Promise<void> { return new Promise((r) => this.server.listen(this.path, r)); }
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
  event(name: string, data?: Record<string, unknown>): void {
    for (const s of this.sockets) s.write(JSON.stringify({ event: name, data, timestamp: { seconds: 1, microseconds: 2 } }) + '\r\n');
  }
}

function reply(sock: net.Socket, msg: Record<string, unknown>, ret: unknown): void {
  sock.write(JSON.stringify({ return: ret, id: msg['id'] }) + '\r\n');
}

describe('QmpClient', () => {
  let dir: string;
  let n = 0;
  const servers: FakeQmp[] = [];
  const clients: QmpClient[] = [];

  before(async () => { dir = await mkdtemp(path.join(tmpdir(), 'hearth-qmp-')); });
  after(async () => {
    for (const c of clients) c.close();
    for (const s of servers) await s.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  });

  async function setup(): Promise<{ server: FakeQmp; client: QmpClient }> {
    const server = new FakeQmp(path.join(dir, `qmp${n++}.sock`));
    servers.push(server);
    await server.listen();
    const client = await QmpClient.connect(server.path, { timeoutMs: 2000, commandTimeoutMs: 500 });
    clients.push(client);
    return { server, client };
  }

  it('reads the greeting and negotiates capabilities before anything else', async () => {
    const { server, client } = await setup();
    assert.equal(client.greeting?.version.qemu.major, 7);
    assert.equal(server.received[0]?.['execute'], 'qmp_capabilities');
  });

  it('matches replies to commands by id, even when they arrive out of order', async () => {
    const { server, client } = await setup();
    const held: { msg: Record<string, unknown>; sock: net.Socket }[] = [];
    server.handler = (msg, sock) => {
      held.push({ msg, sock });
      if (held.length === 2) {
        // answer the second first, with an event in between
        reply(sock, held[1]!.msg, { which: held[1]!.msg['execute'] });
        server.event('RESUME');
        reply(sock, held[0]!.msg, { which: held[0]!.msg['execute'] });
      }
    };
    const [a, b] = await Promise.all([client.execute('query-status'), client.execute('query-kvm')]);
    assert.deepEqual(a, { which: 'query-status' });
    assert.deepEqual(b, { which: 'query-kvm' });
    assert.deepEqual(held[0]!.msg['arguments'], undefined);
  });

  it('sends arguments and handles replies split across chunks', async () => {
    const { server, client } = await setup();
    server.handler = (msg, sock) => {
      const text = JSON.stringify({ return: { got: msg['arguments'] }, id: msg['id'] }) + '\r\n';
      sock.write(text.slice(0, 5));
      setTimeout(() => sock.write(text.slice(5)), 10);
    };
    const r = await client.execute('migrate', { uri: 'unix:/x' });
    assert.deepEqual(r, { got: { uri: 'unix:/x' } });
  });

  it('rejects with QmpCommandError carrying QMP error.desc and class', async () => {
    const { server, client } = await setup();
    server.handler = (msg, sock) => sock.write(JSON.stringify({ error: { class: 'GenericError', desc: 'Migration is disabled' }, id: msg['id'] }) + '\r\n');
    await assert.rejects(client.execute('migrate', { uri: 'x' }), (err: unknown) => {
      assert.ok(err instanceof QmpCommandError);
      assert.equal(err.desc, 'Migration is disabled');
      assert.equal(err.errorClass, 'GenericError');
      assert.equal(err.code, 'host_failure');
      assert.match(err.message, /QMP migrate failed: Migration is disabled/);
      return true;
    });
  });

  it('times out a command that gets no reply, and ignores the late reply', async () => {
    const { server, client } = await setup();
    let late: (() => void) | undefined;
    server.handler = (msg, sock) => { late = () => reply(sock, msg, { late: true }); };
    await assert.rejects(client.execute('stop', undefined, { timeoutMs: 50 }), TimeoutError);
    late?.();
    server.handler = (msg, sock) => reply(sock, msg, { ok: 1 });
    assert.deepEqual(await client.execute('cont'), { ok: 1 });
  });

  it('rejects a command when its signal aborts', async () => {
    const { server, client } = await setup();
    server.handler = () => {};
    const ac = new AbortController();
    const p = client.execute('query-migrate', undefined, { signal: ac.signal, timeoutMs: 5000 });
    setTimeout(() => ac.abort(new Error('user went away')), 20);
    await assert.rejects(p, AbortedError);
    await assert.rejects(client.execute('x', undefined, { signal: ac.signal }), AbortedError);
  });

  it('rejects every pending command when the socket closes mid-command', async () => {
    const { server, client } = await setup();
    server.handler = () => {};
    const p1 = client.execute('query-status', undefined, { timeoutMs: 5000 });
    const p2 = client.execute('quit', undefined, { timeoutMs: 5000 });
    const closed = new Promise((r) => client.once('close', r));
    setTimeout(() => { for (const s of server.sockets) s.destroy(); }, 20);
    await assert.rejects(p1, QmpClosedError);
    await assert.rejects(p2, (err: unknown) => err instanceof QmpClosedError && /QMP quit/.test(err.message));
    await closed;
    assert.equal(client.isOpen, false);
    await client.closed;
    await assert.rejects(client.execute('query-status'), QmpClosedError);
  });

  it('delivers events to listeners, waitForEvent and async iteration', async () => {
    const { server, client } = await setup();
    const seen: string[] = [];
    client.on('event', (ev) => seen.push(ev.event));
    const ac = new AbortController();
    const iterated: string[] = [];
    const iter = (async () => {
      for await (const ev of client.events(ac.signal)) {
        iterated.push(ev.event);
        if (iterated.length === 3) break;
      }
    })();
    const stop = client.waitForEvent('STOP');
    const mig = client.waitForEvent('MIGRATION', { filter: (ev) => ev.data?.['status'] === 'completed' });
    server.event('STOP');
    server.event('MIGRATION', { status: 'active' });
    server.event('MIGRATION', { status: 'completed' });
    assert.equal((await stop).event, 'STOP');
    assert.deepEqual((await mig).data, { status: 'completed' });
    await iter;
    assert.deepEqual(iterated, ['STOP', 'MIGRATION', 'MIGRATION']);
    assert.deepEqual(seen, ['STOP', 'MIGRATION', 'MIGRATION']);
    await assert.rejects(client.waitForEvent('SHUTDOWN', { timeoutMs: 30 }), TimeoutError);
  });

  it('waitForEvent rejects when the connection closes', async () => {
    const { server, client } = await setup();
    const p = client.waitForEvent('SHUTDOWN', { timeoutMs: 5000 });
    for (const s of server.sockets) s.destroy();
    await assert.rejects(p, QmpClosedError);
  });

  it('connect fails clearly when nothing listens, and times out without a greeting', async () => {
    await assert.rejects(QmpClient.connect(path.join(dir, 'nobody.sock')), (err: unknown) =>
      err instanceof QmpClosedError && /ENOENT/.test(err.message));
    const silent = new FakeQmp(path.join(dir, `silent${n++}.sock`));
    silent.greet = false;
    servers.push(silent);
    await silent.listen();
    await assert.rejects(QmpClient.connect(silent.path, { timeoutMs: 50 }), TimeoutError);
    const ac = new AbortController();
    const p = QmpClient.connect(silent.path, { timeoutMs: 5000, signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, AbortedError);
  });

  it('close() is idempotent and rejects pending commands', async () => {
    const { server, client } = await setup();
    server.handler = () => {};
    const p = client.execute('query-status', undefined, { timeoutMs: 5000 });
    client.close();
    client.close();
    await assert.rejects(p, QmpClosedError);
  });
});
