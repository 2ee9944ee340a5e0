/**
 * Progress reporting for long image builds (debootstrap takes minutes).
 *
 * A build calls `stage(name)` when it starts a step, `info(msg)` for details
 * inside a step, and `done()` when it is finished. Three renderers:
 *  - `ttyProgress`: one live line with a spinner, the stage and its elapsed seconds;
 *  - `lineProgress`: plain timestamped lines, for CI and log files;
 *  - `silentProgress`: nothing (tests), optionally recording what was reported.
 */

export interface Progress {
  /** A new step begins; ends the previous one. */
  stage(name: string): void;
  /** A detail inside the current step (a command being run, a cache hit, …). */
  info(msg: string): void;
  /** The whole operation is over (success or failure); stops timers. */
  done(summary?: string): void;
}

export const silentProgress: Progress = {
  stage() {},
  info() {},
  done() {},
};

/** A Progress that remembers every event; for tests and for callers that want a log. */
export function recordingProgress(): Progress & { events: { kind: 'stage' | 'info' | 'done'; text: string }[] } {
  const events: { kind: 'stage' | 'info' | 'done'; text: string }[] = [];
  return {
    events,
    stage(name) { events.push({ kind: 'stage', text: name }); },
    info(msg) { events.push({ kind: 'info', text: msg }); },
    done(summary) { events.push({ kind: 'done', text: summary ?? '' }); },
  };
}

function fmtSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

/** Plain line renderer: `[images +12.3s] stage: debootstrap`, one line per event. */
export function lineProgress(out: NodeJS.WritableStream = process.stderr, prefix = 'images'): Progress {
  const t0 = Date.now();
  let stageName: string | undefined;
  let stageStart = t0;
  const line = (s: string) => out.write(`[${prefix} +${fmtSeconds(Date.now() - t0)}] ${s}\n`);
  const endStage = () => {
    if (stageName !== undefined) line(`${stageName}: done in ${fmtSeconds(Date.now() - stageStart)}`);
    stageName = undefined;
  };
  return {
    stage(name) {
      endStage();
      stageName = name;
      stageStart = Date.now();
      line(`${name}…`);
    },
    info(msg) { line(`  ${msg}`); },
    done(summary) {
      endStage();
      if (summary) line(summary);
    },
  };
}

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/**
 * Live TTY renderer: a single redrawn line `⠹ debootstrap 42.1s  <last info>`;
 * finished stages are printed as permanent lines with a check mark.
 */
export function ttyProgress(out: NodeJS.WriteStream = process.stderr): Progress {
  let stageName: string | undefined;
  let stageStart = Date.now();
  let detail = '';
  let frame = 0;
  let timer: NodeJS.Timeout | undefined;
  const cols = () => (out.columns && out.columns > 20 ? out.columns : 80);
  const clear = () => out.write('\r\x1b[2K');
  const draw = () => {
    if (stageName === undefined) return;
    const head = `${SPINNER[frame++ % SPINNER.length]} ${stageName} ${fmtSeconds(Date.now() - stageStart)}`;
    let text = detail ? `${head}  ${detail}` : head;
    if (text.length > cols() - 1) text = text.slice(0, cols() - 2) + '…';
    clear();
    out.write(text);
  };
  const endStage = () => {
    if (stageName === undefined) return;
    clear();
    out.write(`✔ ${stageName} ${fmtSeconds(Date.now() - stageStart)}\n`);
    stageName = undefined;
    detail = '';
  };
  return {
    stage(name) {
      endStage();
      stageName = name;
      stageStart = Date.now();
      if (!timer) {
        timer = setInterval(draw, 100);
        timer.unref();
      }
      draw();
    },
    info(msg) {
      detail = msg.replace(/\s+/g, ' ').trim();
      draw();
    },
    done(summary) {
      endStage();
      if (timer) clearInterval(timer);
      timer = undefined;
      if (summary) out.write(`${summary}\n`);
    },
  };
}

/** The TTY renderer on a terminal, the line renderer otherwise (CI, pipes). */
export function defaultProgress(out: NodeJS.WriteStream = process.stderr): Progress {
  return out.isTTY && !process.env.CI ? ttyProgress(out) : lineProgress(out);
}
