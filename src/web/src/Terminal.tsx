import { useEffect, useRef, useState } from 'react';
import { Terminal as XTerm } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { decodeBytes, killProcess, resizePty, sendPtyInput, startProcess, type EnvdTarget } from './api.js';
import { errMsg } from './util.js';

/** xterm.js over a PTY process: Start with `pty` (output in data.pty), SendInput input.pty, Update to resize. */
export default function Terminal({ target }: { target: EnvdTarget }) {
  const el = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState('starting…');
  const [error, setError] = useState<string>();
  useEffect(() => {
    const term = new XTerm({ cursorBlink: true, rows: 24, fontSize: 13, fontFamily: 'ui-monospace, Menlo, Consolas, monospace', theme: { background: '#0f1115' }, convertEol: false });
    term.open(el.current!);
    const ac = new AbortController();
    let pid: number | undefined;
    const enc = new TextEncoder();
    // Fit to the container's width (24 rows), again whenever it changes size.
    const fitAddon = new FitAddon();
    term.loadAddon(fitAddon);
    const fit = () => {
      const dims = fitAddon.proposeDimensions();
      if (dims && Number.isFinite(dims.cols) && dims.cols > 0 && dims.cols !== term.cols) term.resize(Math.max(20, dims.cols), 24);
    };
    fit();
    const ro = new ResizeObserver(() => fit());
    ro.observe(el.current!);
    term.onResize(({ cols, rows }) => { if (pid !== undefined) void resizePty(target, pid, cols, rows).catch(() => undefined); });
    // Keystrokes go out in order, none lost: one SendInput in flight at a time, carrying
    // everything typed since the previous one was sent. Keys typed before the shell's pid is
    // known wait for it. A failed send is retried (same bytes, still first in line).
    let pending = '';
    let sending = false;
    const flush = async () => {
      if (sending) return;
      sending = true;
      try {
        let failures = 0;
        while (pending && pid !== undefined && !ac.signal.aborted) {
          const data = pending;
          try {
            await sendPtyInput(target, pid, enc.encode(data));
            pending = pending.slice(data.length);
            failures = 0;
          } catch (e) {
            if (ac.signal.aborted) return;
            if (++failures >= 5) { setError(`Keystrokes could not be delivered: ${errMsg(e)}`); pending = ''; return; }
            await new Promise((r) => setTimeout(r, 100 * failures));
          }
        }
      } finally { sending = false; }
    };
    term.onData((d) => { pending += d; void flush(); });
    const dec = new TextDecoder();
    startProcess(target, { cmd: '/bin/bash', args: ['-i', '-l'], envs: { TERM: 'xterm-256color' }, pty: { cols: term.cols, rows: term.rows }, stdin: true }, (ev) => {
      if (ev.start) { pid = ev.start.pid; setStatus(`shell running (pid ${pid})`); term.focus(); void flush(); }
      if (ev.data?.pty) term.write(dec.decode(decodeBytes(ev.data.pty), { stream: true }));
      if (ev.end) { setStatus(`the shell exited (${ev.end.exitCode ?? 0})`); term.write('\r\n[process exited]\r\n'); }
    }, ac.signal).catch((e) => {
      if (ac.signal.aborted) return;
      setStatus('unavailable');
      setError(/pty|PTY/.test(errMsg(e)) ? `PTY sessions are not available on this sandbox's agent yet (${errMsg(e)}). Use "Run a command" above.` : errMsg(e));
    });
    return () => {
      ro.disconnect();
      ac.abort();
      if (pid !== undefined) void killProcess(target, pid).catch(() => undefined);
      term.dispose();
    };
  }, [target.id, target.token]); // eslint-disable-line react-hooks/exhaustive-deps
  return <div>
    <p className="muted small" data-testid="terminal-status">{status}</p>
    {error && <div className="error" role="alert" data-testid="terminal-error">{error}</div>}
    <div className="terminal" ref={el} data-testid="terminal" hidden={status === 'unavailable'} />
  </div>;
}
