export { UffdPageServer, summarizeLatency, type PageServerOptions, type PageServerExit, type PageServerExitReason, type PageServerStats, type LatencySummary } from './page-server.js';
export { parseHandshake, parseJsonBig, type UffdHandshake, type UffdRegion } from './handshake.js';
export { readWorkingSet, writeWorkingSet, mergeWorkingSet, WORKING_SET_FILE, type WorkingSet } from './working-set.js';
export { loadUffdAddon, uffdAddonAvailable } from './native.js';
