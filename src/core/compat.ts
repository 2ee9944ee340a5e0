/**
 * Snapshot compatibility keys (docs/ARCHITECTURE.md, "Snapshot compatibility"):
 * `VmmDriver.snapshotCompat` gives `name=value` pairs separated by spaces; a
 * snapshot or paused capture records the key it was made under, and is loaded
 * only under the same key.
 */

function pairs(key: string): Map<string, string> {
  return new Map(key.split(' ').filter(Boolean).map((p) => [p.split('=')[0]!, p.slice(p.indexOf('=') + 1)]));
}

/** Each pair that differs, as `name was → now` (`(none)` for a missing one); empty when the keys agree. */
export function compatDifferences(was: string, now: string): string[] {
  if (was === now) return [];
  const a = pairs(was);
  const b = pairs(now);
  return [...new Set([...a.keys(), ...b.keys()])].filter((k) => a.get(k) !== b.get(k)).map((k) => `${k} ${a.get(k) ?? '(none)'} → ${b.get(k) ?? '(none)'}`);
}
