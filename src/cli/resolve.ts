import { NotFoundError, Sandbox, type SandboxSummary } from '../sdk/index.js';
import { UsageError } from './output.js';

const ALL_STATES = ['creating', 'running', 'pausing', 'paused', 'resuming', 'destroying', 'destroyed', 'failed'];

/**
 * A sandbox id from what the user typed: the id itself, or an unambiguous prefix of one
 * (live sandboxes first; ended ones only when no live one matches).
 */
export async function resolveSandboxId(typed: string): Promise<string> {
  if (!/^[a-z0-9]{1,64}$/.test(typed)) throw new UsageError(`"${typed}" is not a sandbox id (ids are lower-case letters and digits)`, 1);
  const all = await Sandbox.list({ query: { state: ALL_STATES } }).all();
  if (all.some((s) => s.sandboxID === typed)) return typed;
  const matches = (list: SandboxSummary[]): SandboxSummary[] => list.filter((s) => s.sandboxID.startsWith(typed));
  const live = matches(all.filter((s) => s.state !== 'destroyed' && s.state !== 'failed'));
  const found = live.length ? live : matches(all);
  if (found.length === 1) return found[0]!.sandboxID;
  if (found.length === 0) throw new NotFoundError(`no sandbox ${typed} (nor one whose id starts with it); \`hearth sandbox ls --all\` lists them`, 404, 'not_found');
  throw new UsageError(`"${typed}" is ambiguous: it starts ${found.length} sandbox ids (${found.slice(0, 5).map((s) => s.sandboxID).join(', ')}${found.length > 5 ? ', …' : ''}); type more of it`, 1);
}

/**
 * A Sandbox object for `id`. `work: true` (exec, shell, files, cp) resumes a paused sandbox, as
 * E2B's connect does, and says so on stderr; otherwise a paused one stays paused.
 */
export async function attach(id: string, opts: { user?: string | undefined; work?: boolean } = {}): Promise<Sandbox> {
  const before = opts.work ? (await Sandbox.getInfo(id)).state : undefined;
  const sbx = await Sandbox.connect(id, { ...(opts.user ? { user: opts.user } : {}), resume: opts.work === true });
  if (before === 'paused' && sbx.info.state === 'running') process.stderr.write(`hearth: ${id} was paused; resumed it\n`);
  return sbx;
}
