import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DockerfileError, dockerfileToRecipe } from '../../src/templates/dockerfile.js';
import { parseRecipe, RecipeError } from '../../src/templates/recipe.js';
import type { Recipe, RecipeStep } from '../../src/templates/types.js';

const SUPPORTED = 'FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT, EXPOSE, HEALTHCHECK CMD, LABEL';

/** Asserts a DockerfileError at `line` whose message (after the line prefix) matches `problem`. */
function refuses(text: string, line: number, problem: RegExp): void {
  assert.throws(() => dockerfileToRecipe(text), (e: unknown) => {
    assert.ok(e instanceof DockerfileError, `not a DockerfileError: ${String(e)}`);
    assert.equal(e.line, line, e.message);
    assert.ok(e.message.startsWith(`Dockerfile line ${line}: `), e.message);
    assert.match(e.message.slice(`Dockerfile line ${line}: `.length), problem);
    return true;
  });
}

/** The steps of `FROM base` followed by `body`. */
function steps(body: string): RecipeStep[] {
  return dockerfileToRecipe(`FROM base\n${body}`).steps;
}

function startOf(body: string): Recipe['start'] {
  return dockerfileToRecipe(`FROM base\n${body}`).start;
}

describe('Dockerfile and recipe give the same recipe', () => {
  it('a Dockerfile deep-equals its hand-written recipe', () => {
    const dockerfile = [
      '# syntax=docker/dockerfile:1',
      'FROM base',
      'LABEL org.opencontainers.image.title="py data"',
      'RUN apt-get update && \\',
      '    apt-get install -y curl',
      'COPY --chown=user:user --chmod=0755 ./app/ /home/user/app/',
      'COPY requirements.txt setup.py ./',
      'ENV MPLBACKEND=Agg GREETING="hello world"',
      'WORKDIR /home/user',
      'WORKDIR app',
      'USER user',
      'RUN ["python3", "-m", "venv", "/home/user/venv"]',
      'CMD python3 -m http.server 8000',
      'EXPOSE 8000',
    ].join('\n');
    const handWritten = parseRecipe({
      from: 'base',
      steps: [
        { run: 'apt-get update && apt-get install -y curl' },
        { copy: { src: 'app/', dest: '/home/user/app/', owner: 'user:user', mode: '0755' } },
        { copy: { src: 'requirements.txt', dest: './' } },
        { copy: { src: 'setup.py', dest: './' } },
        { env: { MPLBACKEND: 'Agg', GREETING: 'hello world' } },
        { workdir: '/home/user' },
        { workdir: '/home/user/app' },
        { user: 'user' },
        { run: "'python3' '-m' 'venv' '/home/user/venv'" },
      ],
      start: { command: 'python3 -m http.server 8000', ready: { port: 8000 } },
    });
    assert.deepEqual(dockerfileToRecipe(dockerfile), handWritten);
  });

  it('never produces resources, and the result is a valid recipe', () => {
    const r = dockerfileToRecipe('FROM base\nRUN true\nCMD ["srv"]\n');
    assert.equal('resources' in r, false);
    assert.deepEqual(parseRecipe(r), r);
  });

  it('DockerfileError is a RecipeError (a 400)', () => {
    assert.throws(() => dockerfileToRecipe('FROM base\nADD x /y'), (e: unknown) => e instanceof RecipeError && e.code === 'invalid_argument');
  });
});

describe('Dockerfile lines', () => {
  it('skips comments, blank lines and parser directives; accepts CRLF and a BOM', () => {
    const r = dockerfileToRecipe('\uFEFF# syntax=docker/dockerfile:1\r\n\r\n  # indented comment\r\nFROM base\r\n\r\nRUN echo hi # not a comment\r\n');
    assert.deepEqual(r, { from: 'base', steps: [{ run: 'echo hi # not a comment' }] });
  });

  it('joins continuations with one space after trimming, skipping comment and blank lines inside', () => {
    const r = steps(['RUN apt-get update \\', '    # the packages', '', '    && apt-get install -y \\', '       curl   \\  ', '       git'].join('\n'));
    assert.deepEqual(r, [{ run: 'apt-get update && apt-get install -y curl git' }]);
  });

  it('accepts a continuation on the last line', () => {
    assert.deepEqual(steps('RUN echo a \\'), [{ run: 'echo a' }]);
  });

  it('counts line numbers through continuations, comments and blank lines', () => {
    const text = ['FROM base', 'RUN a \\', '  b \\', '  # c', '  d', '', '# x', 'VOLUME /data'].join('\n');
    refuses(text, 8, /^VOLUME is not supported/);
    refuses(['FROM base', 'RUN a \\', '  b', 'STOPSIGNAL \\', '  SIGTERM'].join('\n'), 4, /^STOPSIGNAL is not supported/);
  });

  it('refuses the escape directive (it would change what "\\" means)', () => {
    refuses('# escape=`\nFROM base\nRUN dir c:\\', 1, /escape parser directive/);
    assert.deepEqual(steps('# escape=`\nRUN true'), [{ run: 'true' }], 'after an instruction it is a comment');
  });

  it('treats instructions case-insensitively', () => {
    const r = dockerfileToRecipe('from base\nrun true\nWorkDir /x\nuser user\nenv A=1\ncopy a /b\ncmd srv\nexpose 80\nlabel a=b\n');
    assert.deepEqual(r, {
      from: 'base',
      steps: [{ run: 'true' }, { workdir: '/x' }, { user: 'user' }, { env: { A: '1' } }, { copy: { src: 'a', dest: '/b' } }],
      start: { command: 'srv', ready: { port: 80 } },
    });
  });
});

describe('unsupported instructions', () => {
  for (const name of ['ARG', 'ONBUILD', 'STOPSIGNAL', 'SHELL', 'VOLUME', 'MAINTAINER', 'FOO']) {
    it(`${name} names its line and the supported list`, () => {
      assert.throws(() => dockerfileToRecipe(`FROM base\nRUN true\n\n${name} something`), (e: unknown) =>
        e instanceof DockerfileError
        && e.message === `Dockerfile line 4: ${name} is not supported by Hearth's Dockerfile subset (supported: ${SUPPORTED})`);
    });
  }

  it('names the instruction in upper case and refuses it even before FROM', () => {
    assert.throws(() => dockerfileToRecipe('arg V=1\nFROM base'), {
      message: `Dockerfile line 1: ARG is not supported by Hearth's Dockerfile subset (supported: ${SUPPORTED})`,
    });
  });

  it('ADD says to use COPY', () => {
    refuses('FROM base\nADD https://example.com/x.tgz /opt/', 2, /^ADD is not supported.*use COPY/);
  });
});

describe('FROM', () => {
  it('takes one Hearth template', () => {
    assert.equal(dockerfileToRecipe('FROM py-data\n').from, 'py-data');
  });

  it('refuses everything else, naming the line', () => {
    refuses('', 1, /no FROM/);
    refuses('# only a comment\n', 1, /no FROM/);
    refuses('RUN true\nFROM base', 1, /first instruction must be FROM/);
    refuses('LABEL a=b\nFROM base', 1, /first instruction must be FROM/);
    refuses('FROM base\nRUN true\nFROM other', 3, /only one FROM/);
    refuses('FROM base AS build', 1, /AS is not supported/);
    refuses('FROM base as build', 1, /AS is not supported/);
    refuses('FROM --platform=linux/amd64 base', 1, /--platform/);
    refuses('FROM debian:bookworm', 1, /tags and digests/);
    refuses('FROM base@sha256:abcd', 1, /tags and digests/);
    refuses('FROM scratch', 1, /scratch/);
    refuses('FROM', 1, /needs a Hearth template/);
    refuses('FROM a b', 1, /exactly one/);
    refuses('\nFROM Base', 2, /^from: must be a template id/);
    refuses('FROM $BASE', 1, /variable references \(\$BASE\)/);
  });
});

describe('RUN', () => {
  it('keeps the shell form as written', () => {
    assert.deepEqual(steps('RUN  echo "$HOME" && ls   -l'), [{ run: 'echo "$HOME" && ls   -l' }]);
  });

  it('single-quotes the exec form', () => {
    assert.deepEqual(steps(`RUN ["sh", "-c", "echo it's $HOME"]`), [{ run: `'sh' '-c' 'echo it'\\''s $HOME'` }]);
  });

  it('runs an unparsable "[..." as shell form, as Docker', () => {
    assert.deepEqual(steps('RUN [ -f /etc/os-release ] && echo ok'), [{ run: '[ -f /etc/os-release ] && echo ok' }]);
    assert.deepEqual(steps('RUN ["a", 1]'), [{ run: '["a", 1]' }]);
  });

  it('refuses flags, heredocs and an empty command', () => {
    refuses('FROM base\nRUN --mount=type=cache,target=/root/.cache pip install x', 2, /^RUN --mount is not supported/);
    refuses('FROM base\nRUN --network=none true', 2, /^RUN --network is not supported/);
    refuses('FROM base\nRUN <<EOF\necho hi\nEOF', 2, /heredoc/);
    refuses('FROM base\nRUN python3 <<-"PY"', 2, /heredoc/);
    assert.deepEqual(steps('RUN echo $((1<<4)) "a<<b"'), [{ run: 'echo $((1<<4)) "a<<b"' }]);
    refuses('FROM base\nRUN', 2, /RUN needs a command/);
    refuses('FROM base\nRUN []', 2, /RUN needs a command/);
  });

  it('maps recipe validation errors to the line', () => {
    refuses(`FROM base\nRUN true\nRUN ${'x'.repeat(65537)}`, 3, /^steps\[1\]\.run: must be at most 65536 bytes/);
  });
});

describe('COPY', () => {
  it('one copy step per source, with --chown and --chmod on each', () => {
    assert.deepEqual(steps('COPY --chown=1000:1000 --chmod=644 a.txt b/ ./c /dst/'), [
      { copy: { src: 'a.txt', dest: '/dst/', owner: '1000:1000', mode: '644' } },
      { copy: { src: 'b/', dest: '/dst/', owner: '1000:1000', mode: '644' } },
      { copy: { src: 'c', dest: '/dst/', owner: '1000:1000', mode: '644' } },
    ]);
  });

  it('accepts the JSON form and a relative dest', () => {
    assert.deepEqual(steps('COPY ["my file.txt", "."]'), [{ copy: { src: 'my file.txt', dest: '.' } }]);
    assert.deepEqual(steps('COPY . app'), [{ copy: { src: '.', dest: 'app' } }]);
  });

  it('refuses what it cannot reproduce', () => {
    refuses('FROM base\nCOPY a b /dst', 2, /several sources needs a destination ending in "\/"/);
    refuses('FROM base\nCOPY --from=build /out /app', 2, /COPY --from is not supported/);
    refuses('FROM base\nCOPY --link a /b', 2, /COPY --link is not supported \(supported flags: --chown, --chmod\)/);
    refuses('FROM base\nCOPY --chown a /b', 2, /--chown needs a value/);
    refuses('FROM base\nCOPY *.py /app/', 2, /wildcards/);
    refuses('FROM base\nCOPY onlyone', 2, /at least one source and a destination/);
    refuses('FROM base\nCOPY <<EOF /x', 2, /heredoc/);
    refuses('FROM base\nCOPY $SRC /x', 2, /variable references/);
  });

  it('maps recipe validation errors to the line', () => {
    refuses('FROM base\nRUN true\n\nCOPY ../secret /x', 4, /^steps\[1\]\.copy\.src: must be a relative path inside the build context/);
    refuses('FROM base\nCOPY a b /x/\nCOPY --chmod=u+x c /d', 3, /^steps\[2\]\.copy\.mode: must be an octal string/);
    refuses('FROM base\nCOPY --chown=Root a /d', 2, /^steps\[0\]\.copy\.owner/);
  });
});

describe('ENV', () => {
  it('one env step per instruction, with Docker quoting and escapes', () => {
    assert.deepEqual(steps(`ENV A=1 B="two words" C='single $HOME' D=a\\ b E="q\\"uote" F="back\\\\slash\\n" G=\\$LIT H=`), [{
      env: { A: '1', B: 'two words', C: 'single $HOME', D: 'a b', E: 'q"uote', F: 'back\\slash\\n', G: '$LIT', H: '' },
    }]);
    assert.deepEqual(steps('ENV A=1\nENV B=2'), [{ env: { A: '1' } }, { env: { B: '2' } }]);
  });

  it('accepts the legacy ENV KEY value form (the rest of the line)', () => {
    assert.deepEqual(steps('ENV GREETING hello   big world'), [{ env: { GREETING: 'hello   big world' } }]);
    assert.deepEqual(steps('ENV Q "quoted value"'), [{ env: { Q: 'quoted value' } }]);
  });

  it('refuses variable references it cannot expand, a missing "=" and bad names', () => {
    refuses('FROM base\nENV PATH=/opt/bin:$PATH', 2, /variable references \(\$PATH\).*escape/);
    refuses('FROM base\nENV X="${HOME}/x"', 2, /variable references \(\$\{HOME\}\)/);
    assert.deepEqual(steps('ENV PRICE="$ 5"'), [{ env: { PRICE: '$ 5' } }], 'a "$" that names nothing is literal');
    refuses('FROM base\nENV A=1 B', 2, /ENV B: expected NAME=value/);
    refuses('FROM base\nENV ONLYKEY', 2, /ENV needs NAME=value/);
    refuses('FROM base\nENV A="open', 2, /unterminated double quote/);
    refuses("FROM base\nENV A='open", 2, /unterminated single quote/);
    refuses('FROM base\nRUN true\nENV 1A=x', 3, /^steps\[1\]\.env\["1A"\]: is not a variable name/);
    refuses('FROM base\nENV A=1 __proto__=x', 2, /^steps\[0\]\.env\.__proto__: is reserved/);
  });
});

describe('WORKDIR and USER', () => {
  it('resolves a relative WORKDIR against the previous one, starting at "/"', () => {
    assert.deepEqual(steps('WORKDIR app\nWORKDIR sub/\nWORKDIR ../other\nWORKDIR /abs//x/'), [
      { workdir: '/app' }, { workdir: '/app/sub' }, { workdir: '/app/other' }, { workdir: '/abs/x' },
    ]);
    assert.deepEqual(steps('WORKDIR "/my dir"'), [{ workdir: '/my dir' }]);
  });

  it('refuses WORKDIR with variables or no path', () => {
    refuses('FROM base\nWORKDIR $HOME/app', 2, /variable references \(\$HOME\)/);
    refuses('FROM base\nWORKDIR', 2, /WORKDIR needs a path/);
  });

  it('USER takes a name or uid; a group is refused', () => {
    assert.deepEqual(steps('USER user\nUSER 1000'), [{ user: 'user' }, { user: '1000' }]);
    refuses('FROM base\nUSER user:staff', 2, /group is not supported/);
    refuses('FROM base\nUSER 1000:1000', 2, /group is not supported/);
    refuses('FROM base\nUSER Admin', 2, /^steps\[0\]\.user: must be a user name/);
  });
});

describe('CMD, ENTRYPOINT, EXPOSE, HEALTHCHECK', () => {
  it('CMD shell form is the start command as written; exec form is quoted', () => {
    assert.deepEqual(startOf('CMD node server.js --port 3000'), { command: 'node server.js --port 3000' });
    assert.deepEqual(startOf('CMD ["node", "server.js"]'), { command: "'node' 'server.js'" });
  });

  it('the last CMD and the last ENTRYPOINT win; ENTRYPOINT exec takes CMD as arguments', () => {
    assert.deepEqual(startOf('CMD a\nCMD b'), { command: 'b' });
    assert.deepEqual(startOf('CMD ["--port", "80"]\nENTRYPOINT ["x"]\nENTRYPOINT ["srv"]'), { command: "'srv' '--port' '80'" });
    assert.deepEqual(startOf('ENTRYPOINT ["srv"]'), { command: "'srv'" });
    assert.deepEqual(startOf('ENTRYPOINT ["env"]\nCMD echo hi'), { command: "'env' '/bin/sh' '-c' 'echo hi'" });
  });

  it('a shell-form ENTRYPOINT ignores CMD, as Docker', () => {
    assert.deepEqual(startOf('ENTRYPOINT srv --flag\nCMD ["ignored"]'), { command: 'srv --flag' });
  });

  it('no CMD or ENTRYPOINT (or empty exec forms) means no start', () => {
    assert.equal(startOf('RUN true'), undefined);
    assert.equal(startOf('CMD []'), undefined);
    assert.equal(startOf('EXPOSE 80'), undefined, 'EXPOSE alone is documentation');
  });

  it('refuses flags and an empty CMD', () => {
    refuses('FROM base\nCMD', 2, /CMD needs a command/);
    refuses('FROM base\nENTRYPOINT --x srv', 2, /ENTRYPOINT --x is not supported/);
  });

  it('EXPOSE: the first TCP port is the ready check', () => {
    assert.deepEqual(startOf('CMD srv\nEXPOSE 8080/tcp 9090\nEXPOSE 7070'), { command: 'srv', ready: { port: 8080 } });
    assert.deepEqual(startOf('EXPOSE 3000\nCMD srv'), { command: 'srv', ready: { port: 3000 } });
    assert.deepEqual(startOf('EXPOSE 3000/TCP\nCMD srv'), { command: 'srv', ready: { port: 3000 } });
  });

  it('EXPOSE refuses UDP, ranges and bad ports', () => {
    refuses('FROM base\nCMD srv\nEXPOSE 53/udp', 3, /UDP is not supported/);
    refuses('FROM base\nEXPOSE 80 53/udp', 2, /UDP is not supported/);
    refuses('FROM base\nEXPOSE 8000-8010', 2, /port ranges are not supported/);
    refuses('FROM base\nEXPOSE 0', 2, /1 to 65535/);
    refuses('FROM base\nEXPOSE 65536', 2, /1 to 65535/);
    refuses('FROM base\nEXPOSE $PORT', 2, /variable references/);
  });

  it('HEALTHCHECK CMD is the ready command and wins over EXPOSE', () => {
    assert.deepEqual(startOf('CMD srv\nEXPOSE 80\nHEALTHCHECK CMD curl -f http://localhost/'), { command: 'srv', ready: { command: 'curl -f http://localhost/' } });
    assert.deepEqual(startOf('CMD srv\nhealthcheck cmd ["test", "-e", "/tmp/up"]'), { command: 'srv', ready: { command: "'test' '-e' '/tmp/up'" } });
    assert.deepEqual(startOf('CMD srv\nHEALTHCHECK CMD a\nHEALTHCHECK CMD b'), { command: 'srv', ready: { command: 'b' } });
  });

  it('HEALTHCHECK refuses options, NONE, other forms and a missing start command', () => {
    refuses('FROM base\nCMD srv\nHEALTHCHECK --interval=5s CMD true', 3, /options .* are not supported/);
    refuses('FROM base\nCMD srv\nHEALTHCHECK NONE', 3, /NONE is not supported/);
    refuses('FROM base\nCMD srv\nHEALTHCHECK curl x', 3, /takes CMD/);
    refuses('FROM base\nCMD srv\nHEALTHCHECK CMD', 3, /needs a command/);
    refuses('FROM base\nRUN true\nHEALTHCHECK CMD true', 3, /needs a CMD or ENTRYPOINT/);
  });

  it('maps start validation errors to the CMD line', () => {
    refuses(`FROM base\nRUN true\nCMD ${'x'.repeat(65537)}`, 3, /^start\.command: must be at most/);
  });
});
