/**
 * The SDK's own interfaces (src/sdk/types.ts, so the package needs nothing of the daemon's)
 * must describe what the API answers: every field the API's schema has, with a compatible type.
 * Checked by the compiler (tsconfig.test.json typechecks this file); the test itself only
 * makes the check visible in the unit run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Static } from 'typebox';
import type { NetworkPolicy as ApiNetworkPolicy, SandboxDetail, SandboxListItem, SnapshotInfo as ApiSnapshotInfo } from '../../src/api/schemas.js';
import type { NetworkPolicy, SandboxInfo, SandboxSummary, SnapshotInfo } from '../../src/sdk/types.js';

/** true when the API's answer type is assignable to the SDK's and the SDK names every field the API has. */
type Describes<Sdk, Api> = [Api] extends [Sdk] ? (Exclude<keyof Api, keyof Sdk> extends never ? true : false) : false;
const checks: [
  Describes<SandboxInfo, SandboxDetail>,
  Describes<SandboxSummary, SandboxListItem>,
  Describes<SnapshotInfo, Static<typeof ApiSnapshotInfo>>,
  Describes<NetworkPolicy, ApiNetworkPolicy>,
] = [true, true, true, true];

test('the SDK\'s types match the API\'s schemas', () => {
  assert.deepEqual(checks, [true, true, true, true]);
});
