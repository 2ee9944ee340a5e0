import type { ExitInfo } from './types.js';

/** Whether `exited` settles within `ms` (the stop ladders of both drivers wait like this between steps). */
export async function exitedWithin(exited: Promise<ExitInfo>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const ok = await Promise.race([
    exited.then(() => true),
    new Promise<boolean>((r) => { timer = setTimeout(() => r(false), ms); }),
  ]);
  clearTimeout(timer);
  return ok;
}
