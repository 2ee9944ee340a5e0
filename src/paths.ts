import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

/** The repository / package root (this file is src/paths.ts or dist/paths.js). */
export const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The guest agent bundle made by `npm run build` (scripts/bundle-agent.mjs). */
export const AGENT_BUNDLE_PATH = join(PACKAGE_ROOT, 'dist', 'agent', 'hearth-agent.cjs');
