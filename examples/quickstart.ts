// Create a sandbox, run commands with streaming output, move files, destroy it.
// Run: HEARTH_URL=http://127.0.0.1:3030 node --import tsx examples/quickstart.ts
import { Sandbox } from '../src/sdk/index.js';

const sbx = await Sandbox.create({ envs: { GREETING: 'hello from Hearth' } });
try {
  const r = await sbx.commands.run('echo "$GREETING"; uname -sr', { onStdout: (text) => process.stdout.write(`[guest] ${text}`) });
  console.log(`exit code ${r.exitCode}`);
  await sbx.files.write('/home/user/notes.txt', 'written by the SDK\n');
  const listing = await sbx.files.list('/home/user');
  console.log('files:', listing.map((e) => e.name).join(', '));
  console.log('read back:', (await sbx.files.read('/home/user/notes.txt')).trim());
} finally {
  await sbx.kill();
}
