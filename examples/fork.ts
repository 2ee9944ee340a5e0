// Prepare a sandbox once, then fork it: each copy starts from the same state and diverges.
// Run: HEARTH_URL=http://127.0.0.1:3030 node --import tsx examples/fork.ts
import { Sandbox } from '../src/sdk/index.js';

const base = await Sandbox.create();
const forks: Sandbox[] = [];
try {
  await base.files.write('/home/user/setup.txt', 'expensive setup done\n');
  forks.push(...await base.fork(2));
  await Promise.all(forks.map((f, i) => f.files.write('/home/user/mine.txt', `fork ${i}\n`)));
  for (const f of forks) {
    const r = await f.commands.run('cat /home/user/setup.txt /home/user/mine.txt');
    console.log(`${f.id}: ${r.stdout.trim().split('\n').join(' | ')}`);
  }
} finally {
  await Promise.all([base.kill(), ...forks.map((f) => f.kill())]);
}
