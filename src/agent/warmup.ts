import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '../gen/process/process_pb.js';

/**
 * Runs what a user's first `commands.run('true')` runs, through the agent's own HTTP server
 * (loopback), once when the agent starts and before `/health` reports it ready: a login shell
 * (`/bin/bash -l -c true`) as the default user, with the binary codec (Hearth's SDK) and the
 * JSON one (E2B's SDKs). The template snapshot is taken after the agent answers, so every
 * sandbox restored from it starts with what this touched already in guest memory: the
 * programs and files in the page cache (no virtual-disk reads) and V8's compiled code for the
 * request path. Under software emulation that is most of what a first command cost.
 */
export async function warmCommandPath(host: string, port: number, timeoutMs = 60_000): Promise<void> {
  const target = host === '0.0.0.0' || host === '::' || host === '' ? '127.0.0.1' : host;
  for (const useBinaryFormat of [true, false]) {
    const transport = createConnectTransport({ baseUrl: `http://${target.includes(':') ? `[${target}]` : target}:${port}`, httpVersion: '1.1', useBinaryFormat, nodeOptions: { agent: false } });
    const stream = createClient(Process, transport).start(
      { process: { cmd: '/bin/bash', args: ['-l', '-c', 'true'], envs: {} }, stdin: false },
      { timeoutMs },
    );
    for await (const ev of stream) void ev;
  }
}
