import { pino, type Logger as PinoLogger } from 'pino';

/** The subset of pino the core uses, so tests can pass a silent or capturing logger. */
export type Logger = Pick<PinoLogger, 'info' | 'warn' | 'error' | 'debug' | 'child'>;

export function createLogger(level: string = process.env['HEARTH_LOG_LEVEL'] ?? 'info'): PinoLogger {
  return pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime });
}

export function silentLogger(): PinoLogger {
  return pino({ level: 'silent' });
}
