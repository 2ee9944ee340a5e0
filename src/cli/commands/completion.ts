import { UsageError } from '../output.js';
/** `hearth completion bash`: a bash completion script (`source <(hearth completion bash)`). */
const COMMANDS: Record<string, string[]> = {
  '': ['up', 'down', 'doctor', 'image', 'storage', 'keys', 'service', 'config', 'sandbox', 'exec', 'shell', 'files', 'cp', 'snapshot', 'template', 'logs', 'events', 'completion', 'version', 'help'],
  sandbox: ['create', 'ls', 'get', 'rm', 'timeout', 'pause', 'resume', 'snapshot', 'fork', 'network', 'url', 'metrics'],
  files: ['ls', 'stat', 'cat', 'get', 'put', 'mkdir', 'rm', 'mv'],
  snapshot: ['ls', 'rm'],
  keys: ['create', 'ls', 'rm'],
  service: ['install', 'uninstall', 'status'],
  config: ['show', 'set', 'unset'],
  template: ['ls', 'get', 'rm', 'build', 'create', 'builds', 'logs', 'snapshots'],
  image: ['build', 'kernel'],
  storage: ['init'],
  completion: ['bash'],
};

/** Subcommands whose next word is a sandbox id (completed from `hearth sandbox ls --json`). */
const TAKES_ID = ['exec', 'shell', 'logs', 'metrics', 'get', 'rm', 'timeout', 'pause', 'resume', 'fork', 'network', 'url', 'ls', 'stat', 'cat', 'put', 'mkdir', 'mv'];

/** `hearth template` subcommands whose next word is a template id (completed from `hearth template ls --json`). */
const TAKES_TEMPLATE = ['get', 'rm', 'builds', 'logs', 'snapshots'];

export function completionCommand(argv: string[]): number {
  if (argv[0] !== 'bash') {
    throw new UsageError('usage: hearth completion bash   (then: source <(hearth completion bash))');
  }
  const cases = Object.entries(COMMANDS).filter(([k]) => k).map(([k, v]) => `    ${k}) words="${v.join(' ')}" ;;`).join('\n');
  process.stdout.write(`# hearth bash completion
_hearth() {
  local cur=\${COMP_WORDS[COMP_CWORD]} words=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    words="${COMMANDS['']!.join(' ')}"
  elif [ "$COMP_CWORD" -eq 2 ]; then
    case "\${COMP_WORDS[1]}" in
${cases}
    esac
  fi
  if [ "\${COMP_WORDS[1]}" = template ] && [ "$COMP_CWORD" -eq 3 ]; then
    case "\${COMP_WORDS[2]}" in
      ${TAKES_TEMPLATE.join('|')})
        words="$(hearth template ls --json 2>/dev/null | grep -o '"templateID": *"[^"]*"' | grep -o '"[^"]*"$' | tr -d '"')" ;;
    esac
  elif [ "\${COMP_WORDS[1]}" != template ] || [ "\${COMP_WORDS[COMP_CWORD-1]}" = --from-sandbox ]; then
    case " ${TAKES_ID.join(' ')} --from-sandbox " in
      *" \${COMP_WORDS[COMP_CWORD-1]} "*)
        words="$words $(hearth sandbox ls --json 2>/dev/null | grep -o '"sandboxID": *"[a-z0-9]*"' | grep -o 'i[a-z0-9]*')" ;;
    esac
  fi
  COMPREPLY=( $(compgen -W "$words" -- "$cur") )
}
complete -F _hearth hearth
`);
  return 0;
}
