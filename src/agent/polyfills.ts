/**
 * Must be the first import of the agent's entry points.
 *
 * protobuf-es serializes `bytes` fields to JSON with the native ES2026
 * `Uint8Array.prototype.toBase64` when the engine has it (captured when the module loads), and
 * otherwise with a JS encoder that builds the string one character at a time. Node 18/20 lack the
 * native method; for process output (32 KiB per event) the JS path dominated the agent's CPU
 * (base64 + flattening the resulting rope in JSON.stringify + GC). This installs a spec-shaped
 * `toBase64` backed by Buffer's native encoder when the engine has none.
 */
type ToBase64Options = { alphabet?: 'base64' | 'base64url'; omitPadding?: boolean };

const proto = Uint8Array.prototype as unknown as { toBase64?: (o?: ToBase64Options) => string };

if (typeof proto.toBase64 !== 'function') {
  Object.defineProperty(Uint8Array.prototype, 'toBase64', {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function toBase64(this: Uint8Array, options?: ToBase64Options): string {
      const alphabet = options?.alphabet ?? 'base64';
      if (alphabet !== 'base64' && alphabet !== 'base64url') throw new TypeError('invalid alphabet');
      const omitPadding = options?.omitPadding === true;
      const buf = Buffer.from(this.buffer, this.byteOffset, this.byteLength);
      let s = buf.toString(alphabet);
      if (alphabet === 'base64' && omitPadding) s = s.replace(/=+$/, '');
      if (alphabet === 'base64url' && !omitPadding && s.length % 4 !== 0) s += '='.repeat(4 - (s.length % 4));
      return s;
    },
  });
}

export {};
