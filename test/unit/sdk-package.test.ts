/**
 * The SDK as users get it: `npm pack` of packages/sdk (hearth-sandbox), installed from the tarball
 * into an empty project next to nothing but its own dependencies (packed from this repo's
 * node_modules: no registry, no network), then an example is typechecked with strict settings
 * and the package is imported. The tarball holds the SDK and the protocol code only, none of
 * the daemon's. HOME and npm's cache live in a temp dir.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PACKAGE_ROOT } from '../../src/paths.js';

const run = promisify(execFile);
const DEPS = ['@bufbuild/protobuf', '@connectrpc/connect', '@connectrpc/connect-node', '@types/node', 'undici-types'];

let tmp: string;
let env: NodeJS.ProcessEnv;

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'hearth-sdk-pack-'));
  env = {
    ...process.env, HOME: tmp, XDG_CONFIG_HOME: join(tmp, '.config'), npm_config_cache: join(tmp, 'npm-cache'),
    npm_config_update_notifier: 'false', npm_config_audit: 'false', npm_config_fund: 'false', npm_config_offline: 'true',
  };
});

after(async () => { await rm(tmp, { recursive: true, force: true }); });

const EXAMPLE = `import { Sandbox, SandboxPausedError, CommandExitError, type FilesystemEvent, type SandboxInfo } from 'hearth-sandbox';

export async function main(): Promise<void> {
  const sbx = await Sandbox.create({ envs: { FOO: 'bar' }, metadata: { app: 'demo' }, timeoutMs: 60_000 });
  const r = await sbx.commands.run('echo $FOO', { onStdout: (t: string) => process.stdout.write(t) });
  const code: number = r.exitCode;
  await sbx.files.write('/tmp/x.txt', 'hello');
  const text: string = await sbx.files.read('/tmp/x.txt');
  const seen: FilesystemEvent[] = [];
  const w = await sbx.files.watchDir('/tmp', (e) => { seen.push(e); }, { recursive: true });
  const bg = await sbx.commands.run('sleep 1', { background: true });
  const again = await sbx.commands.connect(bg.pid);
  await again.wait().catch((e: unknown) => { if (e instanceof CommandExitError) return e.exitCode; throw e; });
  const metrics = await sbx.getMetrics();
  const mem: number | undefined = metrics[0]?.memUsed;
  const pages = Sandbox.list({ query: { metadata: { app: 'demo' }, state: ['running', 'paused'] }, limit: 10 });
  while (pages.hasNext) for (const s of await pages.nextItems()) console.log(s.sandboxID, s.state);
  await sbx.pause();
  try { await sbx.commands.run('true'); } catch (e) { if (!(e instanceof SandboxPausedError)) throw e; }
  const back = await Sandbox.connect(sbx.id);
  const info: SandboxInfo = await back.getInfo();
  await w.stop();
  console.log(code, text, mem, info.state, seen.length);
  await back.kill();
}
`;

test('hearth-sandbox installs from its tarball into an empty project, typechecks and imports', { timeout: 300_000 }, async () => {
  const packs = join(tmp, 'packs');
  await mkdir(packs);
  // The SDK (prepack builds it), then its dependencies from this repo's node_modules.
  await run('npm', ['pack', '--pack-destination', packs], { cwd: join(PACKAGE_ROOT, 'packages', 'sdk'), env });
  for (const dep of DEPS) await run('npm', ['pack', join(PACKAGE_ROOT, 'node_modules', dep), '--pack-destination', packs], { cwd: tmp, env });
  const tarballs = (await readdir(packs)).filter((f) => f.endsWith('.tgz'));
  const sdkTgz = tarballs.find((f) => f.startsWith('hearth-sandbox-'));
  assert.ok(sdkTgz, `packed: ${tarballs.join(', ')}`);

  const { stdout: listing } = await run('tar', ['tzf', join(packs, sdkTgz)]);
  const files = listing.trim().split('\n');
  assert.ok(files.includes('package/dist/sdk/index.js') && files.includes('package/dist/sdk/index.d.ts'));
  assert.ok(files.includes('package/LICENSE') && files.includes('package/README.md'));
  const foreign = files.filter((f) => !/^package\/(dist\/(sdk|gen\/(process|filesystem))\/|LICENSE$|README\.md$|package\.json$)/.test(f));
  assert.deepEqual(foreign, [], 'nothing of the daemon in the package');

  const project = join(tmp, 'consumer');
  await mkdir(project);
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  await run('npm', ['install', '--no-save', '--offline', ...tarballs.map((t) => join(packs, t))], { cwd: project, env });
  const installed = await readdir(join(project, 'node_modules'));
  assert.deepEqual(installed.filter((n) => !n.startsWith('.')).sort(), ['@bufbuild', '@connectrpc', '@types', 'hearth-sandbox', 'undici-types']);

  await writeFile(join(project, 'example.ts'), EXAMPLE);
  await writeFile(join(project, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, noUncheckedIndexedAccess: true, types: ['node'] },
    files: ['example.ts'],
  }));
  const tsc = join(PACKAGE_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const checked = await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: project, env }).catch((e: { stdout?: string; stderr?: string }) => e);
  assert.equal((checked as { stdout?: string }).stdout ?? '', '', 'the example typechecks against the published types');

  const { stdout } = await run(process.execPath, ['--input-type=module', '-e',
    "const m = await import('hearth-sandbox'); console.log(typeof m.Sandbox, typeof m.Sandbox.list, typeof m.SandboxPausedError);"], { cwd: project, env });
  assert.equal(stdout.trim(), 'function function function');
});
