/**
 * Request and response bodies of Firecracker's API, generated from the
 * Swagger 2.0 spec (api/firecracker-v1.16.1.yaml) by `npm run gen` into
 * src/gen/firecracker/api.ts. Nothing here is written by hand except the
 * aliases and the path-level helpers used by the typed client.
 */
import type { definitions, operations, paths } from '../../gen/firecracker/api.js';

export type { definitions, operations, paths };

export type BootSource = definitions['BootSource'];
export type MachineConfiguration = definitions['MachineConfiguration'];
export type Drive = definitions['Drive'];
export type NetworkInterface = definitions['NetworkInterface'];
export type Vsock = definitions['Vsock'];
export type EntropyDevice = definitions['EntropyDevice'];
export type MmdsConfig = definitions['MmdsConfig'];
export type MmdsContents = definitions['MmdsContentsObject'];
export type Logger = definitions['Logger'];
export type Metrics = definitions['Metrics'];
export type InstanceActionInfo = definitions['InstanceActionInfo'];
export type InstanceInfo = definitions['InstanceInfo'];
export type Vm = definitions['Vm'];
export type SnapshotCreateParams = definitions['SnapshotCreateParams'];
export type SnapshotLoadParams = definitions['SnapshotLoadParams'];
export type MemoryBackend = definitions['MemoryBackend'];
export type NetworkOverride = definitions['NetworkOverride'];
export type VsockOverride = definitions['VsockOverride'];
export type FirecrackerVersion = definitions['FirecrackerVersion'];
export type FullVmConfiguration = definitions['FullVmConfiguration'];
export type ApiError = definitions['Error'];

export type HttpMethod = 'get' | 'put' | 'patch' | 'delete';
export type ApiPath = keyof paths;
/** Methods the spec defines for a path. */
export type MethodOf<P extends ApiPath> = Extract<keyof paths[P], HttpMethod>;
type OperationOf<P extends ApiPath, M extends MethodOf<P>> = paths[P][M];
/** The body parameter's schema (the spec names each body parameter; there is at most one). */
export type RequestBody<P extends ApiPath, M extends MethodOf<P>> =
  OperationOf<P, M> extends { parameters: { body: infer B } } ? B[keyof B] : undefined;
/** Path parameters, e.g. { drive_id } for /drives/{drive_id}. */
export type PathParams<P extends ApiPath, M extends MethodOf<P>> =
  OperationOf<P, M> extends { parameters: { path: infer X } } ? X : undefined;
/** The 200 response schema; void for 204-only operations. */
export type ResponseBody<P extends ApiPath, M extends MethodOf<P>> =
  OperationOf<P, M> extends { responses: { 200: { schema: infer S } } } ? S : void;
