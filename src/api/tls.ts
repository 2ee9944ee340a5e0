/**
 * HTTP and HTTPS on one listener. When the operator gives a certificate,
 * hearthd's port answers both: a connection whose first byte is a TLS
 * handshake record (0x16) is wrapped in TLS, any other is plain HTTP, and both
 * go to the same HTTP server (its routes, edge checks and limits). So one
 * sandbox domain (`<port>-<id>.<domain>`, with the listener's port in it)
 * works for `http://` and `https://` alike: E2B's SDKs build `https://` URLs
 * when they have no E2B_SANDBOX_URL, browsers and scripts may use either.
 */
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { Server as HttpServer } from 'node:http';
import { createSecureContext, TLSSocket } from 'node:tls';

export interface TlsFiles {
  /** PEM certificate chain (the sandbox domain's names, e.g. `*.sandbox.example.com`). */
  cert: string | Buffer;
  /** PEM private key. */
  key: string | Buffer;
}

const TLS_HANDSHAKE = 0x16;

/**
 * A listener that feeds `http` both plain and TLS connections. `firstByteTimeoutMs`
 * bounds how long a connection may stay silent before it is told apart (after
 * that, the HTTP server's own header timeout applies).
 */
export function dualProtocolServer(http: HttpServer, tls: TlsFiles, firstByteTimeoutMs: number): NetServer {
  const secureContext = createSecureContext({ cert: tls.cert, key: tls.key });
  return createNetServer((socket: Socket) => {
    const onError = (): void => { socket.destroy(); };
    socket.on('error', onError);
    socket.setTimeout(firstByteTimeoutMs, () => socket.destroy());
    socket.once('readable', () => {
      const first = socket.read(1) as Buffer | null;
      socket.setTimeout(0);
      socket.removeListener('error', onError);
      if (first === null) { socket.destroy(); return; }
      socket.unshift(first);
      if (first[0] === TLS_HANDSHAKE) {
        // TLSSocket takes the bytes already buffered on `socket` (the one unshifted) as the start of the handshake.
        const secure = new TLSSocket(socket, { isServer: true, secureContext, ALPNProtocols: ['http/1.1'] });
        secure.on('error', () => secure.destroy());
        http.emit('connection', secure);
      } else {
        http.emit('connection', socket);
      }
    });
  });
}
