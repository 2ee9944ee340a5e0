/**
 * Every command's usage, options and examples, in one table: `hearth <command> --help` (or
 * `hearth help <command>`) prints the entry for the longest command path it names, so every
 * leaf and group has help without each command parsing `--help` itself.
 */
import { VERSION } from '../version.js';

interface Entry {
  usage: string;
  summary: string;
  options?: [string, string][];
  examples?: string[];
  /** A group: its subcommands (keys of HELP under it) are listed. */
  group?: boolean;
  notes?: string;
}

const JSON_OPT: [string, string] = ['--json', 'print JSON (errors too, as {"error": {...}} on stderr)'];
const USER_OPT: [string, string] = ['-u, --user USER', 'run as this guest user (default: the template\'s, "user")'];
const DAEMON_OPTS: [string, string][] = [
  ['--port PORT', 'listen port (default 3030, HEARTH_PORT)'],
  ['--host ADDR', 'listen address (default 127.0.0.1, HEARTH_HOST); other than loopback, API keys are required'],
  ['--data-dir DIR', 'data directory (default /var/lib/hearth, HEARTH_DATA_DIR)'],
];

export const HELP: Record<string, Entry> = {
  up: {
    usage: 'hearth up [--foreground] [--port PORT] [--host ADDR] [--data-dir DIR] [--json]',
    summary: 'build the default guest image if missing, then start hearthd and print its URL',
    options: [['--foreground', 'run hearthd in this process (logs to stdout; what the systemd unit runs)'], ...DAEMON_OPTS, JSON_OPT],
    examples: ['hearth up', 'hearth up --port 3031 --data-dir /srv/hearth', 'hearth up --foreground'],
    notes: 'The first run builds the guest image (about a minute). Settings: docs/configuration.md.',
  },
  down: {
    usage: 'hearth down [--data-dir DIR]',
    summary: 'stop the hearthd that `hearth up` started (sandboxes keep running and are adopted on the next start)',
    options: [['--data-dir DIR', 'the data directory it was started with']],
    examples: ['hearth down'],
  },
  doctor: {
    usage: 'hearth doctor [--json]',
    summary: 'what this host can do (KVM, QEMU, Firecracker, reflinks, network namespaces) and what Hearth uses',
    options: [...DAEMON_OPTS, JSON_OPT],
    examples: ['hearth doctor', 'hearth doctor --json | jq .chosen'],
    notes: 'Asks the running hearthd; probes the host itself when none runs.',
  },
  image: { usage: 'hearth image <command>', summary: 'guest images', group: true },
  'image build': {
    usage: 'hearth image build [--data-dir DIR] [--json]',
    summary: 'build (or reuse) the default guest image: kernel, initramfs, rootfs with Node and the agent',
    options: [['--data-dir DIR', 'where images live (default /var/lib/hearth)'], JSON_OPT],
    examples: ['hearth image build'],
  },
  'image kernel': {
    usage: 'hearth image kernel --firecracker [--json]',
    summary: 'build the Firecracker guest kernel from Debian\'s linux-source (tens of minutes)',
    options: [['--firecracker', 'required: the kernel is for Firecracker'], JSON_OPT],
    examples: ['hearth image kernel --firecracker'],
  },
  storage: { usage: 'hearth storage <command>', summary: 'sandbox disk storage', group: true },
  'storage init': {
    usage: 'hearth storage init [--data-dir DIR] [--size-gib N] [--json]',
    summary: 'give the data dir reflinks: a sparse XFS image on a loop device mounted there (when its filesystem has none)',
    options: [['--data-dir DIR', 'the data directory'], ['--size-gib N', 'size of the sparse image (default 64; it uses only what is written)'], JSON_OPT],
    examples: ['hearth storage init', 'hearth storage init --size-gib 200'],
  },
  keys: { usage: 'hearth keys <command>', summary: 'API keys (required when hearthd listens beyond loopback); run on the host as the daemon\'s user. With databaseUrl in its configuration: the cluster\'s keys, in PostgreSQL', group: true },
  'keys create': {
    usage: 'hearth keys create [--name NAME] [--data-dir DIR] [--json]',
    summary: 'create an API key and print it (shown only once; only its hash is stored)',
    options: [['--name NAME', 'a label (default "default")'], ['--data-dir DIR', 'hearthd\'s data directory'], JSON_OPT],
    examples: ['export HEARTH_API_KEY=$(hearth keys create --name ci)'],
  },
  'keys ls': {
    usage: 'hearth keys ls [--data-dir DIR] [--json]',
    summary: 'list API keys (id, name, created, last used)',
    options: [['--data-dir DIR', 'hearthd\'s data directory'], JSON_OPT],
    examples: ['hearth keys ls'],
  },
  'keys rm': {
    usage: 'hearth keys rm <key-id> [--data-dir DIR] [--json]',
    summary: 'delete an API key (clients using it get 401 at once; in cluster mode on every node within a heartbeat)',
    options: [['--data-dir DIR', 'hearthd\'s data directory'], JSON_OPT],
    examples: ['hearth keys rm k1a2b3c4d5e6'],
  },
  service: { usage: 'hearth service <command>', summary: 'run hearthd as a systemd service (logs in journald)', group: true },
  'service install': {
    usage: 'hearth service install [--port PORT] [--host ADDR] [--data-dir DIR] [--env NAME=VALUE]... [--no-enable] [--root DIR] [--dry-run] [--json]',
    summary: 'write /etc/systemd/system/hearth.service (running `hearth up --foreground`) and enable and start it',
    options: [
      ...DAEMON_OPTS,
      ['--env NAME=VALUE', 'an Environment= line for the unit (e.g. HEARTH_EGRESS_INTERFACE=eth0); repeatable'],
      ['--no-enable', 'write the unit only; do not run systemctl'],
      ['--root DIR', 'write under DIR instead of / (for packaging and tests; implies --no-enable)'],
      ['--dry-run', 'print the unit and what would be run; change nothing'],
      JSON_OPT,
    ],
    examples: ['sudo hearth service install', 'sudo hearth service install --env HEARTH_EGRESS_INTERFACE=eth0', 'hearth service install --dry-run', 'journalctl -u hearth -f'],
    notes: 'KillMode=process: stopping the service stops hearthd, not the sandboxes; the next start adopts them (as with `hearth down`).',
  },
  'service uninstall': {
    usage: 'hearth service uninstall [--root DIR] [--dry-run] [--json]',
    summary: 'stop and disable the service and remove its unit file (the data dir is kept)',
    options: [['--root DIR', 'remove under DIR instead of /'], ['--dry-run', 'print what would be done'], JSON_OPT],
    examples: ['sudo hearth service uninstall'],
  },
  'service status': {
    usage: 'hearth service status',
    summary: 'systemctl status hearth',
    examples: ['hearth service status', 'journalctl -u hearth --since -1h'],
  },
  config: { usage: 'hearth config <command>', summary: `this user's CLI settings: hearthd's URL and API key (in $XDG_CONFIG_HOME/hearth/config.json, default ~/.config/hearth/config.json)`, group: true },
  'config show': {
    usage: 'hearth config show [--json]',
    summary: 'the URL and API key the CLI uses, and where each comes from (the key is masked)',
    options: [JSON_OPT],
    examples: ['hearth config show'],
  },
  'config set': {
    usage: 'hearth config set url|api-key <value>',
    summary: 'save a setting in the config file (mode 0600); HEARTH_URL / HEARTH_API_KEY still win over it',
    examples: ['hearth config set url http://10.0.0.5:3030', 'hearth config set api-key e2b_0123…'],
  },
  'config unset': {
    usage: 'hearth config unset url|api-key',
    summary: 'remove a setting from the config file',
    examples: ['hearth config unset api-key'],
  },
  sandbox: { usage: 'hearth sandbox <command>', summary: 'create, inspect, pause, snapshot, fork and destroy sandboxes (alias: sb)', group: true,
    notes: 'Sandbox ids may be shortened to any unambiguous prefix.' },
  'sandbox create': {
    usage: 'hearth sandbox create [--template ID | --snapshot ID|NAME] [--cpu N] [--memory MB] [--timeout SECONDS] [--env K=V]... [--meta K=V]... [--no-internet] [--allow-out CIDR]... [--deny-out CIDR]... [--private-ports] [--json]',
    summary: 'create a sandbox (a running VM, agent ready) and print its id',
    options: [
      ['-t, --template ID', 'template (default "base"; `hearth template ls`)'],
      ['--snapshot ID|NAME', 'start from a named snapshot instead (shows progress)'],
      ['--cpu N', 'vCPUs (default: the template\'s)'],
      ['--memory MB', 'memory in MB (default: the template\'s)'],
      ['--timeout SECONDS', 'lifetime; it is destroyed after this (default 300; `hearth sandbox timeout` extends it)'],
      ['-e, --env K=V', 'an environment variable for every process in it; repeatable'],
      ['--meta K=V', 'metadata (shown in `sandbox ls`, filterable with `sandbox ls --meta`); repeatable'],
      ['--no-internet', 'no egress beyond --allow-out'],
      ['--allow-out CIDR', 'an address or range it may reach; repeatable'],
      ['--deny-out CIDR', 'an address or range it may never reach (deny wins); repeatable'],
      ['--private-ports', 'its ports need the traffic token (header e2b-traffic-access-token)'],
      JSON_OPT,
    ],
    examples: ['id=$(hearth sandbox create)', 'hearth sandbox create --cpu 2 --memory 2048 --timeout 3600 --env FOO=bar --meta owner=ci', 'hearth sandbox create --snapshot s1'],
  },
  'sandbox ls': {
    usage: 'hearth sandbox ls [--all] [--state S1,S2] [--meta K=V]... [--json]',
    summary: 'list sandboxes (default: all but destroyed ones), newest first',
    options: [
      ['-a, --all', 'include ended (destroyed, failed) sandboxes, kept for endedRetentionHours'],
      ['--state LIST', 'only these states: creating, running, pausing, paused, resuming, destroying, destroyed, failed'],
      ['--meta K=V', 'only sandboxes with this metadata; repeatable (all must match)'],
      JSON_OPT,
    ],
    examples: ['hearth sandbox ls', 'hearth sandbox ls --state paused', 'hearth sandbox ls --meta owner=ci --json'],
  },
  'sandbox get': {
    usage: 'hearth sandbox get <id> [--json]',
    summary: 'show one sandbox: state, resources, times, network, metadata (also an ended one, with why it ended)',
    options: [JSON_OPT],
    examples: ['hearth sandbox get i3kz', 'hearth sandbox get i3kz --json | jq .state'],
  },
  'sandbox rm': {
    usage: 'hearth sandbox rm <id>... [--json]',
    summary: 'destroy sandboxes (nothing of them is left on the host)',
    options: [JSON_OPT],
    examples: ['hearth sandbox rm i3kz', 'hearth sandbox rm $(hearth sandbox ls --json | jq -r \'.[].sandboxID\')'],
  },
  'sandbox timeout': {
    usage: 'hearth sandbox timeout <id> <seconds> [--json]',
    summary: 'end the sandbox that many seconds from now (extends or shortens its life)',
    options: [JSON_OPT],
    examples: ['hearth sandbox timeout i3kz 3600'],
  },
  'sandbox pause': {
    usage: 'hearth sandbox pause <id> [--json]',
    summary: 'pause: memory and disk kept on the host, no VM process, no CPU; paused sandboxes do not expire',
    options: [JSON_OPT],
    examples: ['hearth sandbox pause i3kz'],
  },
  'sandbox resume': {
    usage: 'hearth sandbox resume <id> [--timeout SECONDS] [--json]',
    summary: 'resume a paused sandbox exactly where it was (processes, memory, open files)',
    options: [['--timeout SECONDS', 'its lifetime from now (default 300)'], JSON_OPT],
    examples: ['hearth sandbox resume i3kz', 'hearth sandbox resume i3kz --timeout 3600'],
  },
  'sandbox snapshot': {
    usage: 'hearth sandbox snapshot <id> [--name NAME] [--json]',
    summary: 'capture memory and disk as a named snapshot; the sandbox keeps running after a short freeze',
    options: [['--name NAME', 'a name to start from later ([A-Za-z0-9._-])'], JSON_OPT],
    examples: ['hearth sandbox snapshot i3kz --name s1', 'hearth sandbox create --snapshot s1'],
  },
  'sandbox fork': {
    usage: 'hearth sandbox fork <id> [--count N] [--timeout SECONDS] [--json]',
    summary: 'N new sandboxes from its current state (it keeps running); prints their ids',
    options: [['-n, --count N', 'how many (default 1, at most 100)'], ['--timeout SECONDS', 'lifetime of each fork'], JSON_OPT],
    examples: ['hearth sandbox fork i3kz --count 3'],
  },
  'sandbox network': {
    usage: 'hearth sandbox network <id> [--internet on|off] [--allow-out CIDR]... [--deny-out CIDR]... [--json]',
    summary: 'show its egress policy and what it can really reach from this host; with options, replace the policy (at once while running)',
    options: [
      ['--internet on|off', 'egress to destinations not on --allow-out'],
      ['--allow-out CIDR', 'may reach; repeatable'],
      ['--deny-out CIDR', 'may never reach (deny wins); repeatable'],
      JSON_OPT,
    ],
    examples: ['hearth sandbox network i3kz', 'hearth sandbox network i3kz --internet off --allow-out 203.0.113.0/24'],
  },
  'sandbox metrics': {
    usage: 'hearth sandbox metrics <id> [--since 10m | --all] [--watch] [--json]',
    summary: 'CPU, memory and disk over time, from the guest (its agent) and from the host (its VMM process, its disk\'s blocks)',
    options: [['--since DURATION', 'samples of the last 30s, 10m (default), 2h, 1d'], ['--all', 'every sample kept (the sandbox\'s whole life)'], ['-w, --watch', 'then print each new sample (every 5 s) until it ends'], JSON_OPT],
    examples: ['hearth sandbox metrics i3kz', 'hearth sandbox metrics i3kz --watch', 'hearth sandbox metrics i3kz --all --json'],
    notes: 'CPU is % of the sandbox\'s vCPUs as the guest sees it; HOST CPU the same for its VMM process seen from the host (emulation can pass 100%).',
  },
  'sandbox url': {
    usage: 'hearth sandbox url <id> <port> [--path]',
    summary: 'the URL of a port it listens on, through hearthd\'s port proxy (its own origin <port>-<id>.<domain>)',
    options: [['--path', 'the path form /sandboxes/<id>/ports/<port>/ instead (for scripts)']],
    examples: ['curl "$(hearth sandbox url i3kz 8000)"'],
    notes: 'Prints just the URL (no --json); the traffic token, when needed, goes to stderr.',
  },
  snapshot: { usage: 'hearth snapshot <command>', summary: 'named snapshots', group: true },
  'snapshot ls': {
    usage: 'hearth snapshot ls [--sandbox ID] [--json]',
    summary: 'list named snapshots',
    options: [['--sandbox ID', 'only those taken from this sandbox'], JSON_OPT],
    examples: ['hearth snapshot ls'],
  },
  'snapshot rm': {
    usage: 'hearth snapshot rm <id|name>... [--json]',
    summary: 'delete snapshots (sandboxes started from them are unaffected)',
    options: [JSON_OPT],
    examples: ['hearth snapshot rm s1'],
  },
  template: { usage: 'hearth template <command>', summary: 'templates: build your own (a recipe or a Dockerfile), inspect, delete; their warm (per-shape) snapshots', group: true, notes: 'Recipes, the Dockerfile subset and the build cache: docs/templates.md.' },
  'template ls': {
    usage: 'hearth template ls [--json]',
    summary: 'list templates with their aliases, source, default shape and image',
    options: [JSON_OPT],
    examples: ['hearth template ls'],
  },
  'template get': {
    usage: 'hearth template get <id> [--json]',
    summary: 'one template (id or alias): its source, shape, user, workdir, start command and layers',
    options: [JSON_OPT],
    examples: ['hearth template get py-data', 'hearth template get py-data --json | jq .layers'],
  },
  'template rm': {
    usage: 'hearth template rm <id>... [--json]',
    summary: 'delete templates and the layers no other template needs (refused while sandboxes, snapshots or templates use one)',
    options: [JSON_OPT],
    examples: ['hearth template rm py-data'],
  },
  'template build': {
    usage: 'hearth template build <dir> [--name N] [--file F] [--alias A]... [--cpu N] [--memory MB] [--disk MB] [--json] [--no-follow]',
    summary: 'build a template from a directory: its recipe (hearth.template.json) or Dockerfile, the directory as the build context; follows the build',
    options: [
      ['--name N', 'the template id (default: the directory\'s name, lower-case); a build of an existing name replaces it once it succeeds'],
      ['-f, --file F', 'the recipe (JSON) or Dockerfile (default: <dir>/hearth.template.json, else <dir>/Dockerfile)'],
      ['--alias A', 'another name for the template; repeatable'],
      ['--cpu N', 'default vCPUs of its sandboxes (else the recipe\'s, else the base\'s)'],
      ['--memory MB', 'default memory of its sandboxes'],
      ['--disk MB', 'root disk size (larger than the base grows the filesystem)'],
      ['--no-follow', 'print the build and return at once (follow it with `hearth template logs <id> <build> -f`)'],
      JSON_OPT,
    ],
    examples: ['hearth template build ./py-data', 'hearth template build . --name web --file Dockerfile.hearth --alias web-latest', 'hearth template build . --json | jq .status'],
    notes: 'The context is the directory without .git, node_modules and what its .hearthignore lists (globs: *, **, ?; a trailing / for directories only). '
      + 'On a terminal each step shows as it runs (cached, done with its time, failed) with its output dimmed; otherwise plain lines prefixed with the step\'s number. '
      + 'Exit codes: 0 ready; 1 failed (its error printed); 130 on Ctrl-C, which cancels the build.',
  },
  'template create': {
    usage: 'hearth template create <name> --from-sandbox <id> | --from-snapshot <id> [--alias A]... [--cpu N] [--memory MB] [--disk MB] [--json] [--no-follow]',
    summary: 'make a template of a sandbox\'s or a named snapshot\'s disk as it is (then its warm snapshot); follows the build',
    options: [
      ['--from-sandbox ID', 'the sandbox (an id prefix is enough)'],
      ['--from-snapshot ID', 'the named snapshot (id or name)'],
      ['--alias A', 'another name for the template; repeatable'],
      ['--cpu N', 'default vCPUs of its sandboxes'],
      ['--memory MB', 'default memory of its sandboxes'],
      ['--disk MB', 'root disk size'],
      ['--no-follow', 'print the build and return at once'],
      JSON_OPT,
    ],
    examples: ['hearth template create my-env --from-sandbox i3kz', 'hearth template create my-env --from-snapshot s1'],
    notes: 'Exit codes as `hearth template build`: 0 ready, 1 failed, 130 on Ctrl-C (the build is cancelled).',
  },
  'template builds': {
    usage: 'hearth template builds <id> [--json]',
    summary: 'a template\'s builds, newest first: status, steps (and how many were cached), duration, error',
    options: [JSON_OPT],
    examples: ['hearth template builds py-data'],
  },
  'template logs': {
    usage: 'hearth template logs <id> <build-id> [-f] [--json]',
    summary: 'a build\'s log; with -f, then each new line until the build ends',
    options: [['-f, --follow', 'follow the build until it ends (Ctrl-C stops following; the build goes on)'], ['--json', 'the entries as JSON; with -f, one event a line ({"type": "log"|"step"|"end", ...})']],
    examples: ['hearth template logs py-data b1a2b3c4', 'hearth template logs py-data b1a2b3c4 -f'],
  },
  'template snapshots': {
    usage: 'hearth template snapshots <template> [--json] | hearth template snapshots rm <template> <snapshot>...',
    summary: 'a template\'s warm snapshots (one per vCPU/memory shape, at most warmShapesPerTemplate); rm removes some (rebuilt on the next create of that shape)',
    options: [JSON_OPT],
    examples: ['hearth template snapshots base', 'hearth template snapshots rm base t1234abcd'],
  },
  exec: {
    usage: 'hearth exec [--env K=V]... [--cwd DIR] [--user USER] [--timeout SECONDS] [--shell] <id> -- <command> [args...]',
    summary: 'run a command in a sandbox; streams its output; exits with its exit code',
    options: [
      ['-e, --env K=V', 'environment variable; repeatable'],
      ['--cwd DIR', 'working directory'],
      USER_OPT,
      ['--timeout SECONDS', 'kill it after this long and exit 124 (as timeout(1)); default: no limit'],
      ['--shell', 'join the words and run them with bash -l -c (pipes, $VARS, globs)'],
      JSON_OPT,
    ],
    examples: ['hearth exec i3kz -- uname -a', 'echo hi | hearth exec i3kz -- cat', 'hearth exec i3kz --shell -- \'ls /etc | wc -l\'', 'hearth exec i3kz --timeout 10 -- make test'],
    notes: 'A paused sandbox is resumed first (said on stderr). Stdin is forwarded when it is not a terminal. Exit codes: the command\'s; 124 on --timeout; 130 on Ctrl-C (the command is killed); 137 when it was killed otherwise; 127 when the command does not exist.',
  },
  shell: {
    usage: 'hearth shell [-t|-T] [--env K=V]... [--cwd DIR] [--user USER] <id> [-- <command> [args...]]',
    summary: 'an interactive terminal in a sandbox (login shell on a PTY, resizes with yours); exits with its exit code',
    options: [
      ['-t, --tty', 'allocate a PTY even when stdin is not a terminal'],
      ['-T, --no-tty', 'never allocate a PTY'],
      ['-e, --env K=V', 'environment variable; repeatable'],
      ['--cwd DIR', 'working directory'],
      USER_OPT,
    ],
    examples: ['hearth shell i3kz', 'hearth shell i3kz -- python3', 'hearth shell i3kz < script.sh   # no PTY: the script runs in a login shell'],
    notes: 'A paused sandbox is resumed first. As with ssh and docker, a PTY is allocated only when stdin is a terminal: piped input runs without one, so output is not mangled by terminal echo and CR/LF.',
  },
  files: { usage: 'hearth files <command> <id> ...', summary: 'files in a sandbox (streamed both ways)', group: true, notes: 'A paused sandbox is resumed first (also by `hearth cp`).' },
  'files ls': {
    usage: 'hearth files ls <id> <path> [--depth N] [--user USER] [--json]',
    summary: 'list a directory',
    options: [['--depth N', 'recurse N levels (default 1)'], USER_OPT, JSON_OPT],
    examples: ['hearth files ls i3kz /home/user'],
  },
  'files stat': { usage: 'hearth files stat <id> <path> [--json]', summary: 'show one entry (type, size, mode, owner, modified)', options: [USER_OPT, JSON_OPT], examples: ['hearth files stat i3kz /etc/hostname'] },
  'files cat': { usage: 'hearth files cat <id> <path>', summary: 'print a file (streamed)', options: [USER_OPT], examples: ['hearth files cat i3kz /etc/os-release'] },
  'files get': {
    usage: 'hearth files get <id> <path> <local-file> [--json]',
    summary: 'download a file (streamed; progress with bytes and rate on a terminal)',
    options: [USER_OPT, JSON_OPT],
    examples: ['hearth files get i3kz /home/user/out.tar ./out.tar'],
  },
  'files put': {
    usage: 'hearth files put <id> <local-file|-> <path> [--json]',
    summary: 'upload a file, or stdin with - (streamed; progress with bytes and rate on a terminal)',
    options: [USER_OPT, JSON_OPT],
    examples: ['hearth files put i3kz ./data.csv /home/user/data.csv', 'tar c . | hearth files put i3kz - /tmp/src.tar'],
  },
  'files mkdir': { usage: 'hearth files mkdir <id> <path> [--json]', summary: 'create a directory and its parents (mkdir -p)', options: [USER_OPT, JSON_OPT], examples: ['hearth files mkdir i3kz /home/user/a/b'] },
  'files rm': { usage: 'hearth files rm <id> <path> [--json]', summary: 'remove a file or a directory tree (rm -rf)', options: [USER_OPT, JSON_OPT], examples: ['hearth files rm i3kz /tmp/scratch'] },
  'files mv': { usage: 'hearth files mv <id> <from> <to> [--json]', summary: 'rename or move', options: [USER_OPT, JSON_OPT], examples: ['hearth files mv i3kz /tmp/a /tmp/b'] },
  cp: {
    usage: 'hearth cp <local-file|-> <id>:<path>   |   hearth cp <id>:<path> <local-file|->',
    summary: 'copy a file into or out of a sandbox (- is stdin/stdout; progress on a terminal)',
    options: [USER_OPT, JSON_OPT],
    examples: ['hearth cp ./app.py i3kz:/home/user/app.py', 'hearth cp i3kz:/var/log/syslog - | less'],
  },
  completion: {
    usage: 'hearth completion bash',
    summary: 'print a bash completion script (commands, subcommands, sandbox ids)',
    examples: ['source <(hearth completion bash)'],
  },
  version: { usage: 'hearth version [--json]', summary: 'print the version', options: [JSON_OPT], examples: ['hearth version'] },
  logs: {
    usage: 'hearth logs <id> [-f] [-n N] [--since DURATION] [--source console,agent,hearth] [--json]',
    summary: 'a sandbox\'s logs: its console, its agent, and what hearthd did to it (ended sandboxes too, while their record is kept)',
    options: [
      ['-f, --follow', 'then print new lines as they come, until the sandbox ends (Ctrl-C stops)'],
      ['-n, --lines N', 'the last N lines (default 1000)'],
      ['--since DURATION', 'lines of the last 30s, 10m, 2h, 1d'],
      ['-s, --source LIST', 'only console (the guest\'s serial console), agent, hearth (lifecycle: state changes with their cause, step timings)'],
      JSON_OPT,
    ],
    examples: ['hearth logs i3kz', 'hearth logs i3kz -f', 'hearth logs i3kz --source hearth -n 20'],
    notes: 'Secrets (the sandbox\'s tokens, env values of 8 or more characters) are redacted.',
  },
  events: {
    usage: 'hearth events [--sandbox ID] [--json]',
    summary: 'follow hearthd\'s events: sandboxes created, paused, resumed, destroyed, failed, with the reason and the API key id that caused it',
    options: [['--sandbox ID', 'only this sandbox\'s'], JSON_OPT],
    examples: ['hearth events', 'hearth events --json | jq .type'],
  },
  help: { usage: 'hearth help [command...]', summary: 'this help, or a command\'s', examples: ['hearth help', 'hearth help sandbox create'] },
};

/** Words the CLI accepts for the same command: first words, then second words. */
const ALIASES: Record<string, string> = { sb: 'sandbox', sandboxes: 'sandbox', snapshots: 'snapshot', templates: 'template', '--version': 'version', '-v': 'version' };
const SUB_ALIASES: Record<string, string> = { list: 'ls', inspect: 'get', kill: 'rm', destroy: 'rm', delete: 'rm', remove: 'rm' };

export function topHelp(): string {
  const sub = (g: string): string => `${g} ${Object.keys(HELP).filter((k) => k.startsWith(`${g} `)).map((k) => k.slice(g.length + 1)).join('|')}`;
  const short = (k: string): string => HELP[k]!.summary.split(/[;(:]/)[0]!.trim();
  const rows = (pairs: [string, string][]): string => pairs.map(([l, r]) => `  ${l.padEnd(50)} ${r}`).join('\n');
  return `hearth ${VERSION}: microVM sandboxes for untrusted code

Usage: hearth <command> [options]    (hearth <command> --help: its options and examples)

Sandboxes:
${rows([
    ['sandbox create|ls|get|rm|timeout', 'create, list, inspect, destroy, extend sandboxes'],
    ['sandbox pause|resume|snapshot|fork|network|url', 'pause, capture, copy; egress; port URLs'],
    ['sandbox metrics <id> [--watch]', 'CPU, memory, disk over time'],
    ['logs <id> [-f]', 'console, agent and lifecycle logs'],
    ['events', 'follow sandbox state changes'],
    ['exec <id> -- <cmd> [args...]', short('exec')],
    ['shell <id> [-- <cmd> [args...]]', short('shell')],
    ['cp <local> <id>:<path> | <id>:<path> <local>', short('cp')],
    [sub('files'), 'files in a sandbox'],
    [sub('snapshot'), 'named snapshots'],
    [sub('template'), 'templates and their warm snapshots'],
  ])}

Host and daemon:
${rows([
    ['up [--foreground]', 'build the guest image if missing, start hearthd'],
    ['down', 'stop hearthd (sandboxes keep running)'],
    ['doctor', 'what this host can do and what Hearth uses'],
    [sub('service'), 'hearthd as a systemd service (journald logs)'],
    [sub('image'), 'guest images'],
    [sub('storage'), 'reflink storage for the data dir'],
    [sub('keys'), 'API keys'],
    [sub('config'), 'this user\'s URL and API key for the CLI'],
    ['completion bash', 'shell completion'],
    ['version | help [command...]', 'the version; this help or a command\'s'],
  ])}

Environment:
  HEARTH_URL        hearthd's URL (default http://127.0.0.1:3030; or \`hearth config set url\`)
  HEARTH_API_KEY    API key, sent as X-API-Key; needed when hearthd listens beyond loopback
                    (or \`hearth config set api-key\`; create one with \`hearth keys create\`)
  HEARTH_PORT, HEARTH_HOST, HEARTH_DATA_DIR   for up, down, doctor, keys (every daemon setting: docs/configuration.md)
  XDG_CONFIG_HOME   where the CLI's config file is (default ~/.config): hearth/config.json

Every command that prints data takes --json; with it, errors are JSON on stderr.
Sandbox ids may be shortened to an unambiguous prefix.`;
}

export function entryHelp(key: string): string {
  const e = HELP[key]!;
  const out = [`Usage: ${e.usage}`, '', e.summary.charAt(0).toUpperCase() + e.summary.slice(1) + '.'];
  if (e.group) {
    const subs = Object.keys(HELP).filter((k) => k.startsWith(`${key} `));
    out.push('', 'Commands:', ...subs.map((k) => `  ${k.padEnd(24)}${HELP[k]!.summary}`), '', `Run \`hearth ${key} <command> --help\` for one command's options and examples.`);
  }
  if (e.options?.length) {
    const w = Math.max(...e.options.map(([f]) => f.length)) + 2;
    out.push('', 'Options:', ...e.options.map(([f, d]) => `  ${f.padEnd(w)}${d}`), `  ${'-h, --help'.padEnd(w)}this help`);
  }
  if (e.notes) out.push('', e.notes);
  if (e.examples?.length) out.push('', 'Examples:', ...e.examples.map((x) => `  ${x}`));
  return out.join('\n');
}

/** Normalises aliases in the leading command words. */
export function canonicalWords(words: string[]): string[] {
  return words.map((w, i) => (i === 0 ? ALIASES[w] : i === 1 ? SUB_ALIASES[w] : undefined) ?? w);
}

/**
 * The help text `argv` asks for, or null: `hearth help [words]`, or `--help`/`-h` anywhere
 * before a `--`. Shown for the longest known command path among the leading words.
 */
export function helpFor(argv: string[]): string | null {
  const dash = argv.indexOf('--');
  const head = dash >= 0 ? argv.slice(0, dash) : argv;
  let words: string[];
  if (head[0] === 'help') {
    words = head.slice(1).filter((w) => w !== '--help' && w !== '-h');
    if (words.length === 0 && head.length > 1) return entryHelp('help');
  }
  else if (head.includes('--help') || head.includes('-h')) words = head.filter((w) => w !== '--help' && w !== '-h');
  else return null;
  const path = canonicalWords(words.filter((w) => !w.startsWith('-')));
  for (let n = Math.min(path.length, 2); n > 0; n--) {
    const key = path.slice(0, n).join(' ');
    if (HELP[key]) return entryHelp(key);
  }
  return topHelp();
}
