import type { SandboxRecord, SandboxState } from '../core/types.js';
import { currentActor } from './actor.js';

/**
 * hearthd's event stream (`GET /events`): one event per sandbox state change,
 * in the order they were stored. `type` names the lifecycle milestones
 * (created, paused, resumed, destroyed, failed); every other change is
 * `sandbox.state` (creating → running is `sandbox.created`, pausing → running a
 * pause that was undone, and so on; `from` and `to` always say which).
 */
export type EventType = 'sandbox.created' | 'sandbox.paused' | 'sandbox.resumed' | 'sandbox.destroyed' | 'sandbox.failed' | 'sandbox.state';

export interface SandboxEvent {
  /** Increasing per hearthd process (SSE `id:`; `Last-Event-ID` resumes after it). */
  id: number;
  type: EventType;
  timestamp: string;
  sandboxID: string;
  templateID: string;
  from: SandboxState;
  to: SandboxState;
  /** Why: the end reason of an ended sandbox, else the request that caused it, or what hearthd did on its own. */
  reason: string;
  /** The API key whose request caused it (null: no key was presented, or hearthd acted on its own). */
  keyId: string | null;
  /** The metadata the sandbox was created with (the dashboard filters on it; never secrets). */
  metadata: Record<string, string>;
}

export function eventType(from: SandboxState, to: SandboxState): EventType {
  if (to === 'running' && from === 'creating') return 'sandbox.created';
  if (to === 'running' && from === 'resuming') return 'sandbox.resumed';
  if (to === 'paused' && from === 'pausing') return 'sandbox.paused';
  if (to === 'destroyed') return 'sandbox.destroyed';
  if (to === 'failed') return 'sandbox.failed';
  return 'sandbox.state';
}

/** What hearthd itself does without a request, named for the reason of an event. */
function ownReason(from: SandboxState, to: SandboxState): string {
  if (to === 'pausing' || (to === 'paused' && from === 'pausing')) return 'hearthd: the timeout paused it (lifecycle onTimeout pause), or recovery';
  if (to === 'resuming' || (to === 'running' && from === 'resuming')) return 'hearthd: resumed by proxied traffic (autoResume), or recovery';
  if (to === 'destroying') return 'hearthd: timeout or retention';
  return 'hearthd';
}

/** The event of one stored transition; the actor is the current request's, if any. */
export function eventOf(id: number, rec: SandboxRecord, from: SandboxState, to: SandboxState, at: Date = new Date()): SandboxEvent {
  const actor = currentActor();
  const ended = to === 'destroyed' || to === 'failed';
  const reason = ended && rec.endReason ? rec.endReason
    : actor ? `${actor.method} ${actor.route}` : ownReason(from, to);
  return {
    id, type: eventType(from, to), timestamp: at.toISOString(), sandboxID: rec.id, templateID: rec.templateId,
    from, to, reason, keyId: actor?.keyId ?? null, metadata: { ...rec.metadata },
  };
}

/** A bounded backlog of recent events and the live subscribers. */
export class EventBus {
  private readonly backlog: SandboxEvent[] = [];
  private readonly subs = new Set<(e: SandboxEvent) => void>();
  private next = 1;

  constructor(private readonly keep = 1000) {}

  publish(make: (id: number) => SandboxEvent): SandboxEvent {
    const e = make(this.next++);
    this.backlog.push(e);
    if (this.backlog.length > this.keep) this.backlog.shift();
    for (const fn of [...this.subs]) {
      try { fn(e); } catch { /* a subscriber's failure is its own */ }
    }
    return e;
  }

  /** Events after `afterId` still in the backlog, oldest first. */
  since(afterId: number): SandboxEvent[] {
    return this.backlog.filter((e) => e.id > afterId);
  }

  get lastId(): number { return this.next - 1; }

  subscribe(fn: (e: SandboxEvent) => void): () => void {
    this.subs.add(fn);
    return () => { this.subs.delete(fn); };
  }

  get subscribers(): number { return this.subs.size; }
}
