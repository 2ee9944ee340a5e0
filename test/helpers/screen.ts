/** A terminal's output as text, for PTY tests (test/integration/pty.test.ts, cluster.test.ts). */

/** Collects terminal output and lets a test wait for a pattern in what arrived since a mark. */
export class Screen {
  text = '';
  private waiters: (() => void)[] = [];
  readonly onData = (bytes: Uint8Array): void => {
    this.text += Buffer.from(bytes).toString('utf8');
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  };

  async waitFor(re: RegExp, from = 0, ms = 60_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = re.exec(this.text.slice(from));
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re}; output: ${JSON.stringify(this.text.slice(-2000))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 1000));
        this.waiters.push(() => { clearTimeout(t); r(); });
      });
    }
  }
}
