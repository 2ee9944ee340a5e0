import { ENVD_VERSION } from '../agent/protocol.js';
import type { SandboxRecord, Template } from '../core/types.js';
import type { NetworkPolicy, SandboxDetail, SandboxListItem } from './schemas.js';
import type { EgressPolicy } from '../network/types.js';
import type { Static } from 'typebox';
import type { TemplateSchema } from './schemas.js';

const CLIENT_ID = '6532622b';

/** `domain`: the sandbox domain E2B's SDKs build `<port>-<id>.<domain>` from (null: none announced). */
export function presentListItem(s: SandboxRecord, template: Template | undefined, domain: string | null = null): SandboxListItem {
  return {
    sandboxID: s.id,
    templateID: s.templateId,
    clientID: CLIENT_ID,
    envdVersion: ENVD_VERSION,
    state: s.state,
    cpuCount: s.vcpus,
    memoryMB: s.memoryMib,
    diskSizeMB: template ? Math.round(template.rootfsSizeBytes / 1048576) : 0,
    metadata: s.metadata,
    createdAt: s.createdAt,
    startedAt: s.startedAt ?? s.createdAt,
    endAt: s.endAt,
    endedAt: s.endedAt,
    endReason: s.endReason,
    domain,
  };
}

/** Egress in E2B's terms. */
export function presentEgress(e: EgressPolicy): NetworkPolicy {
  return { allow_internet_access: e.internet, allowOut: e.allow, denyOut: e.deny };
}

/**
 * A sandbox's detail. An ended one (destroyed or failed) shows no secrets: its
 * record no longer holds them (the store drops them as it ends), and this never
 * shows them for an ended state whatever the record says.
 */
export function presentDetail(
  s: SandboxRecord, template: Template | undefined, diskUsageBytes: number | null, egress: EgressPolicy | null, portDomain: string | null = null, domain: string | null = null,
  pausedWithMemory: boolean | null = null,
): SandboxDetail {
  const ended = s.state === 'destroyed' || s.state === 'failed';
  return {
    ...presentListItem(s, template, domain),
    envdAccessToken: ended ? '' : s.agentToken,
    envVars: ended ? {} : s.envVars,
    lifecycle: { onTimeout: s.lifecycle.onTimeout, keepMemory: s.lifecycle.keepMemory, autoResume: s.lifecycle.autoResume, autoExtend: s.lifecycle.autoExtend },
    pausedWithMemory: s.state === 'paused' ? pausedWithMemory : null,
    vmm: s.vmm ? { kind: s.vmm.kind, pid: s.vmm.pid } : null,
    diskUsageBytes,
    timings: s.timings ? { op: s.timings.op, steps: s.timings.steps.map(([step, ms]) => ({ step, ms })) } : null,
    network: egress ? presentEgress(egress) : null,
    allowInternetAccess: egress ? egress.internet : null,
    allowPublicTraffic: s.netPolicy.trafficToken === null,
    trafficAccessToken: ended ? null : s.netPolicy.trafficToken,
    portDomain,
  };
}

export function presentTemplate(t: Template): Static<typeof TemplateSchema> {
  return {
    templateID: t.id,
    imageHash: t.imageHash,
    cpuCount: t.vcpus,
    memoryMB: t.memoryMib,
    diskSizeMB: Math.round(t.rootfsSizeBytes / 1048576),
    createdAt: t.createdAt,
    aliases: t.aliases,
    source: t.source,
    from: t.parentId,
    buildID: t.buildId,
    envVars: t.runtime?.env ?? {},
    user: t.runtime?.user ?? null,
    workdir: t.runtime?.workdir ?? null,
    startCommand: t.runtime?.start?.command ?? null,
    readyCheck: t.runtime?.start?.ready ?? null,
    layers: [],
  };
}
