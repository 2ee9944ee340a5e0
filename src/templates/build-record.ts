/** A template build as the store keeps it and the API shows it (docs/templates.md, "API"). */

export type BuildStatus = 'building' | 'ready' | 'failed' | 'cancelled';
/** steps → snapshot (start command, ready check, warm snapshot) → done. */
export type BuildPhase = 'steps' | 'snapshot' | 'done';
export type BuildStepStatus = 'pending' | 'cached' | 'running' | 'done' | 'failed' | 'cancelled' | 'skipped';

export interface BuildStepRow {
  index: number;
  description: string;
  /** The layer key after this step (env/user steps: the key they fold into the next one). */
  key: string;
  status: BuildStepStatus;
  cached: boolean;
  durationMs: number | null;
  exitCode: number | null;
}

/** What was asked, minus the build context's bytes (kept on disk while the build runs). */
export interface BuildRequestSummary {
  kind?: 'recipe' | 'dockerfile' | 'sandbox' | 'snapshot';
  from?: string;
  fromSandbox?: string;
  fromSnapshot?: string;
  aliases?: string[];
  files?: number;
  contextBytes?: number;
}

export interface BuildRow {
  id: string;
  templateId: string;
  status: BuildStatus;
  phase: BuildPhase;
  request: BuildRequestSummary;
  steps: BuildStepRow[];
  error: string | null;
  createdAt: string;
  finishedAt: string | null;
}

/** A build as the API shows it (docs/templates.md, "API"). */
export interface BuildInfo {
  buildID: string;
  templateID: string;
  status: BuildStatus;
  phase: BuildPhase;
  createdAt: string;
  finishedAt: string | null;
  durationMs: number | null;
  error: string | null;
  steps: BuildStepRow[];
  request: BuildRequestSummary;
}

export function presentBuild(b: BuildRow): BuildInfo {
  return {
    buildID: b.id,
    templateID: b.templateId,
    status: b.status,
    phase: b.phase,
    createdAt: b.createdAt,
    finishedAt: b.finishedAt,
    durationMs: b.finishedAt ? Date.parse(b.finishedAt) - Date.parse(b.createdAt) : null,
    error: b.error,
    steps: b.steps.map((s) => ({ ...s })),
    request: b.request,
  };
}
