import { Code, ConnectError, createClient, type Client, type Interceptor } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process, type ProcessEvent } from '../gen/process/process_pb.js';
import { Filesystem } from '../gen/filesystem/filesystem_pb.js';
import {
  AuthenticationError, InvalidArgumentError, NotFoundError, SandboxError, SandboxGoneError, SandboxPausedError, TimeoutError, ConflictError, CapacityError,
} from './errors.js';

/** Where a sandbox's agent is reached: hearthd's envd proxy for that sandbox. */
export interface EnvdTarget {
  /** e.g. http://127.0.0.1:3030/sandboxes/<id>/envd */
  baseUrl: string;
  accessToken: string;
  /**
   * The sandbox's state from the API (undefined if it cannot be had): asked when its agent
   * cannot be reached, to tell a paused sandbox (SandboxPausedError) from a gone one.
   */
  state?: () => Promise<string | undefined>;
}

/** Metadata key an unreachable agent's error carries when the API says the sandbox is paused. */
const STATE_KEY = 'x-hearth-sandbox-state';
const PAUSED_STATES = new Set(['pausing', 'paused', 'resuming']);

/** Adds the sandbox's state to an Unavailable error (the envd proxy answers 502 for a sandbox that is not running). */
export async function annotateUnavailable(err: unknown, target: EnvdTarget): Promise<unknown> {
  if (!(err instanceof ConnectError) || err.code !== Code.Unavailable || !target.state) return err;
  const state = await target.state().catch(() => undefined);
  if (state) err.metadata.set(STATE_KEY, state);
  return err;
}

export interface EnvdClients {
  process: Client<typeof Process>;
  filesystem: Client<typeof Filesystem>;
}

/**
 * Connect clients for a sandbox's agent. Hearth's SDK uses the binary protobuf
 * codec (the agent speaks both; E2B's SDKs use JSON): output bytes are not
 * base64-encoded in the guest, which matters under software emulation.
 */
export function envdClients(target: EnvdTarget, user?: string): EnvdClients {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set('x-access-token', target.accessToken);
    if (user) req.header.set('authorization', `Basic ${Buffer.from(`${user}:`).toString('base64')}`);
    try {
      return await next(req);
    } catch (err) {
      throw await annotateUnavailable(err, target);
    }
  };
  const transport = createConnectTransport({ baseUrl: target.baseUrl, httpVersion: '1.1', useBinaryFormat: true, interceptors: [auth] });
  return { process: createClient(Process, transport), filesystem: createClient(Filesystem, transport) };
}

/** Connect codes to SDK errors, as E2B's SDK maps them (docs/agent.md, "Error codes"). */
export function mapConnectError(err: unknown): Error {
  if (!(err instanceof ConnectError)) return err instanceof Error ? err : new Error(String(err));
  const msg = err.rawMessage;
  switch (err.code) {
    case Code.NotFound: return new NotFoundError(msg, 404, 'not_found');
    case Code.InvalidArgument: return new InvalidArgumentError(msg, 400, 'invalid_argument');
    case Code.Unauthenticated: return new AuthenticationError(msg, 401, 'unauthenticated');
    case Code.AlreadyExists: return new ConflictError(msg, 409, 'already_exists');
    case Code.ResourceExhausted: return new CapacityError(msg, 429, 'resource_exhausted');
    case Code.DeadlineExceeded: return new TimeoutError(`${msg} (the command exceeded its timeout)`, 504, 'deadline_exceeded');
    case Code.Canceled: return new TimeoutError(msg, 499, 'canceled');
    case Code.Unavailable: {
      const state = err.metadata.get(STATE_KEY);
      if (state && PAUSED_STATES.has(state)) {
        return new SandboxPausedError(`the sandbox is ${state}: resume it (sandbox.resume() or Sandbox.connect(id)) to reach it again`, 409, 'paused');
      }
      return new SandboxGoneError(`the sandbox is not running${state ? ` (it is ${state})` : ''}: ${msg}`, 502, 'unavailable');
    }
    default: return new SandboxError(`${Code[err.code]}: ${msg}`);
  }
}

/** Reads the start event off a Start/Connect stream; returns the pid and the remaining events. */
export async function openStream(
  stream: AsyncIterable<{ event?: ProcessEvent }>,
): Promise<{ pid: number; events: AsyncIterator<ProcessEvent | undefined> }> {
  const it = stream[Symbol.asyncIterator]();
  let pid: number;
  try {
    const first = await it.next();
    const ev = first.done ? undefined : first.value.event?.event;
    if (ev?.case !== 'start') throw new Error('expected a start event first');
    pid = ev.value.pid;
  } catch (err) {
    throw mapConnectError(err);
  }
  return {
    pid,
    events: {
      next: async () => {
        const n = await it.next();
        return n.done ? { done: true, value: undefined } : { done: false, value: n.value.event };
      },
      // Connect releases a call's deadline timer only when its stream is read to the end (its
      // iterator has no return()): read what is left, which after the end event is nothing.
      return: async () => {
        try {
          for (let n = await it.next(); !n.done; n = await it.next()) { /* drain */ }
        } catch { /* the call failed or was aborted: Connect cleaned up */ }
        return { done: true, value: undefined };
      },
    },
  };
}
