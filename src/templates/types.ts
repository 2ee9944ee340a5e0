/**
 * The template recipe: what `hearth.template.json` holds, what the SDK's
 * builder and the Dockerfile subset produce, and what the builder runs.
 * docs/templates.md is the user-facing description; keep them together.
 */

/** A command that runs in the build sandbox. `user` defaults to the recipe's current user (root at the start). */
export interface RunStep { run: string; user?: string }
/**
 * Files from the build context (the client's upload) into the image.
 * `src`: a context-relative file or directory ("." = all of it); `dest`: an
 * absolute guest path, or relative to the current workdir. A `dest` ending in
 * "/" (or an existing directory) receives `src` inside it, as Docker's COPY.
 */
export interface CopyStep { copy: { src: string; dest: string; owner?: string; mode?: string } }
/** Variables for later steps and for every sandbox from the template. */
export interface EnvStep { env: Record<string, string> }
/** The working directory of later steps and of every sandbox's commands (created if missing). */
export interface WorkdirStep { workdir: string }
/** The user later steps run as, and the sandboxes' default user. */
export interface UserStep { user: string }
/**
 * Debian packages. The host's apt resolves and downloads them (against the
 * image's own dpkg status), the build sandbox installs them offline: no guest
 * egress needed.
 */
export interface AptStep { apt: string[] }
/** Python packages: `python3 -m pip install` in the guest (needs egress to the index, or local paths). */
export interface PipStep { pip: string[] }

export type RecipeStep = RunStep | CopyStep | EnvStep | WorkdirStep | UserStep | AptStep | PipStep;

/** When the start command counts as ready: a command exiting 0, or a TCP port accepting connections. */
export type ReadyCheck = { command: string } | { port: number };

export interface StartSpec {
  /** A long-running service (shell command line) started in every sandbox: before the warm snapshot, so restores have it running. */
  command: string;
  ready?: ReadyCheck;
  /** How long the ready check may take (default 60). */
  timeoutSec?: number;
}

export interface RecipeResources {
  cpuCount?: number;
  memoryMB?: number;
  /** The root disk's size; larger than the base grows the filesystem (never smaller). */
  diskSizeMB?: number;
}

export interface Recipe {
  /** A Hearth template id or alias to build on (default "base"). */
  from?: string;
  steps: RecipeStep[];
  start?: StartSpec;
  resources?: RecipeResources;
}

/** What a finished template hands every sandbox: the recipe's final env, user and workdir, and its start command. */
export interface TemplateRuntime {
  env: Record<string, string>;
  user: string | null;
  workdir: string | null;
  start: StartSpec | null;
}
