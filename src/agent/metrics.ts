import { promises as fsp } from 'node:fs';
import os from 'node:os';
import type { AgentMetrics } from './protocol.js';

interface CpuSample {
  total: number;
  idle: number;
}

async function readCpu(): Promise<CpuSample> {
  const text = await fsp.readFile('/proc/stat', 'utf8');
  const line = text.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) throw new Error('no cpu line in /proc/stat');
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  return { total: user + nice + system + idle + iowait + irq + softirq + steal, idle: idle + iowait };
}

async function readMeminfo(): Promise<Map<string, number>> {
  const text = await fsp.readFile('/proc/meminfo', 'utf8');
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]) * (line.includes('kB') ? 1024 : 1));
  }
  return out;
}

/**
 * Guest metrics for `GET /metrics` from /proc and statfs("/"). CPU usage is measured between
 * consecutive calls (like gopsutil's cpu.Percent(0)); the first call samples over 100 ms.
 */
export class MetricsCollector {
  private last: CpuSample | undefined;

  async collect(): Promise<AgentMetrics> {
    let prev = this.last;
    if (!prev) {
      prev = await readCpu();
      await new Promise((r) => setTimeout(r, 100));
    }
    const cur = await readCpu();
    this.last = cur;
    const dTotal = cur.total - prev.total;
    const dIdle = cur.idle - prev.idle;
    const cpuPct = dTotal > 0 ? Math.max(0, Math.min(100, (100 * (dTotal - dIdle)) / dTotal)) : 0;

    const mem = await readMeminfo();
    const memTotal = mem.get('MemTotal') ?? 0;
    const available = mem.get('MemAvailable') ?? (mem.get('MemFree') ?? 0) + (mem.get('Cached') ?? 0);
    const memUsed = Math.max(0, memTotal - available);
    const memCache = mem.get('Cached') ?? 0;

    let diskTotal = 0;
    let diskUsed = 0;
    const statfs = (fsp as unknown as { statfs?: (p: string) => Promise<{ blocks: number; bfree: number; bsize: number }> }).statfs;
    if (statfs) {
      const st = await statfs('/');
      diskTotal = st.blocks * st.bsize;
      diskUsed = (st.blocks - st.bfree) * st.bsize;
    }

    const mib = 1024 * 1024;
    return {
      ts: Math.floor(Date.now() / 1000),
      cpu_count: os.cpus().length || 1,
      cpu_used_pct: Math.round(cpuPct * 100) / 100,
      mem_total: memTotal,
      mem_used: memUsed,
      mem_cache: memCache,
      mem_total_mib: Math.floor(memTotal / mib),
      mem_used_mib: Math.floor(memUsed / mib),
      disk_used: diskUsed,
      disk_total: diskTotal,
    };
  }
}
