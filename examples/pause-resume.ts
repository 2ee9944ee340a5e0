// Pause a sandbox with a process running in it, resume it, and see the process carry on.
// Run: HEARTH_URL=http://127.0.0.1:3030 node --import tsx examples/pause-resume.ts
import { Sandbox } from '../src/sdk/index.js';

const sbx = await Sandbox.create();
try {
  const pid = (await sbx.commands.run(`setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done' >/dev/null 2>&1 < /dev/null & echo $!`)).stdout.trim();
  await new Promise((r) => setTimeout(r, 1000));
  const before = (await sbx.commands.run('cat /tmp/n')).stdout.trim();
  await sbx.pause();
  console.log(`paused at count ${before}; state: ${(await sbx.getInfo()).state}`);
  await sbx.resume();
  const after = (await sbx.commands.run('cat /tmp/n')).stdout.trim();
  const alive = (await sbx.commands.run(`kill -0 ${pid} && echo yes`)).stdout.trim();
  console.log(`resumed at count ${after}; loop pid ${pid} alive: ${alive}`);
} finally {
  await sbx.kill();
}
