import { runCommand, type CommandRunner } from '../../util/exec.js';

/**
 * The runner slot set-up uses by default: the shared `runCommand` (which
 * ignores EPIPE on stdin, so the many short-lived `ip` commands of set-up and
 * teardown can exit before reading it). Tests inject their own runner.
 */
export const netRunner: CommandRunner = runCommand;
