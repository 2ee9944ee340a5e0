import { randomBytes } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** Random [a-z0-9] string; rejection sampling keeps the distribution uniform. */
export function randomId(length: number): string {
  let out = '';
  while (out.length < length) {
    for (const b of randomBytes(length * 2)) {
      if (b < 252 && out.length < length) out += ALPHABET[b % 36];
    }
  }
  return out;
}

/** Sandbox ids follow E2B's shape ("i" + 20 chars of [a-z0-9]): no '-', so `<port>-<id>` host routing works. */
export function newSandboxId(): string { return `i${randomId(20)}`; }

/** Per-sandbox agent access token (envd X-Access-Token). */
export function newAgentToken(): string { return randomBytes(24).toString('base64url'); }

/** Per-sandbox port-proxy token (E2B's traffic access token), for sandboxes not open to all. */
export function newTrafficToken(): string { return randomBytes(24).toString('base64url'); }

export const SANDBOX_ID_PATTERN = /^[a-z0-9]{1,64}$/;
