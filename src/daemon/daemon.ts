import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { dirname } from 'node:path';
import { totalmem } from 'node:os';
import type { FastifyInstance } from 'fastify';
import type { Logger as PinoLogger } from 'pino';
import { buildApi } from '../api/server.js';
import { TemplateBuilder } from '../templates/builder.js';
import { AgentControl } from '../client/agent-rest.js';
import { SandboxManager } from '../core/manager.js';
import { FileRootfsBackend, cloneFile } from '../storage/file/file-backend.js';
import { chooseRootfsBackend } from '../storage/select.js';
import { createDmBackend, DmRootfsBackend } from '../storage/dm/index.js';
import { LIVE_STATES } from '../core/types.js';
import { DataLayout } from '../core/layout.js';
import { QemuDriver } from '../vmm/qemu/driver.js';
import { Store } from '../store/store.js';
import { AGENT_PORT } from '../agent/protocol.js';
import { admissionThresholds, type HearthConfig } from './config.js';
import { hostHeadroom } from '../core/headroom.js';
import { runDoctor } from './doctor.js';
import { createNetwork, type DaemonNetwork } from './network.js';
import { chooseVmm } from './vmm.js';
import { FirecrackerDriver } from '../vmm/firecracker/index.js';
import type { VmmDriver } from '../vmm/types.js';
import type { Template } from '../core/types.js';
import { VERSION } from '../version.js';
import { isLoopback } from '../api/auth.js';
import { SqliteKeyStore, type ApiKeyStore } from '../api/key-store.js';
import { dualProtocolServer } from '../api/tls.js';
import { Observability } from '../observability/hub.js';
import { ClusterNode } from '../cluster/node.js';
import { ClusterGateway } from '../cluster/gateway.js';
import { SandboxMover } from '../cluster/move.js';
import { TemplatePuller } from '../cluster/pull.js';
import { clusterNodeId } from './config.js';

/** The parts of a built guest image a template needs (src/images produces it). */
export interface BuiltImage {
  hash: string;
  kernelPath: string;
  initrdPath: string | null;
  rootfsPath: string;
  kernelArgs: string;
}

export interface Daemon {
  app: FastifyInstance;
  manager: SandboxManager;
  store: Store;
  network: DaemonNetwork;
  url: string;
  /** Cluster mode (docs/cluster.md): this node's membership; null on a single host. */
  cluster: ClusterNode | null;
  /** Stop serving; sandboxes keep running and slots stay for the next start (removeNetwork: remove the slots too). */
  close(opts?: { removeNetwork?: boolean }): Promise<void>;
}

export const DEFAULT_TEMPLATE = 'base';

/** In the data dir, cluster mode: this node's copy of the cluster's API key hashes (src/cluster/keys.ts). */
export const CLUSTER_KEYS_FILE = 'cluster-keys.json';

/** How often hearthd purges the ended sandboxes whose retention (endedRetentionHours) passed. */
export const PURGE_INTERVAL_MS = 10 * 60_000;

/** (Re)register the default template from the current image; a changed image gives a new version. */
export async function registerTemplate(store: Store, id: string, image: BuiltImage, cfg: HearthConfig): Promise<Template> {
  const existing = store.getTemplate(id);
  const t: Template = {
    id,
    imageHash: image.hash,
    kernelPath: image.kernelPath,
    initrdPath: image.initrdPath,
    rootfsPath: image.rootfsPath,
    rootfsSizeBytes: (await stat(image.rootfsPath)).size,
    kernelArgs: image.kernelArgs,
    vcpus: cfg.defaultVcpus,
    memoryMib: cfg.defaultMemoryMib,
    createdAt: existing && existing.imageHash === image.hash ? existing.createdAt : new Date().toISOString(),
    source: 'image',
    runtime: null,
    aliases: existing?.aliases ?? [],
    parentId: null,
    buildId: null,
    layers: [],
  };
  store.upsertTemplate(t);
  return t;
}

/**
 * Wire hearthd: store, drivers chosen from host probes, manager, API. Used by
 * `hearthd` itself and by integration tests (which run it in-process).
 */
export async function startDaemon(cfg: HearthConfig, log: PinoLogger, opts: { image?: BuiltImage; listen?: boolean } = {}): Promise<Daemon> {
  const layout = new DataLayout(cfg.dataDir);
  await mkdir(layout.sandboxesDir, { recursive: true });
  const store = new Store(layout.db);
  let network: DaemonNetwork | undefined;
  let purgeTimer: NodeJS.Timeout | undefined;
  let observability: Observability | undefined;
  let builder: TemplateBuilder | undefined;
  let cluster: ClusterNode | undefined;
  try {
    network = await createNetwork(cfg, store, log);
    const [vmmChoice, storageChoice] = await Promise.all([chooseVmm(cfg, network.choice.kind), chooseRootfsBackend(cfg.dataDir, cfg.storage)]);
    log.info({ vmm: vmmChoice.kind, reason: vmmChoice.reason }, `vmm: ${vmmChoice.kind}`);
    // Firecracker boots its own kernel (virtio-mmio and drivers built in); the rootfs and initramfs are shared.
    if (opts.image) await registerTemplate(store, DEFAULT_TEMPLATE, vmmChoice.firecrackerKernel ? { ...opts.image, kernelPath: vmmChoice.firecrackerKernel } : opts.image, cfg);
    const vmm: VmmDriver = vmmChoice.kind === 'firecracker'
      ? new FirecrackerDriver({ firecrackerBinary: cfg.firecrackerBinary, memoryBackend: cfg.firecrackerMemory })
      : new QemuDriver({ accel: vmmChoice.accel.accel, privilege: { user: cfg.qemuUser }, log: (level, msg) => log[level]({ component: 'qemu' }, msg) });
    if (vmm instanceof QemuDriver) {
      const p = await vmm.privilege();
      log.info({ qemuPrivilege: p.mode }, `qemu: ${p.reason}`);
    }
    log.info({ storage: storageChoice.chosen, reason: storageChoice.reason }, `storage: ${storageChoice.chosen}`);
    const cloneKind = storageChoice.reflink ? 'reflink' : 'copy';
    const storage = storageChoice.chosen === 'dm'
      ? createDmBackend({ dataDir: cfg.dataDir, sandboxesDir: layout.sandboxesDir, imageRoots: [...new Set(store.listTemplates().map((t) => dirname(t.rootfsPath)))], log })
      : new FileRootfsBackend(storageChoice.chosen, layout.sandboxesDir);
    // dm: adopt the loop and dm devices a previous daemon left, before the manager recovers sandboxes.
    if (storage instanceof DmRootfsBackend) {
      await storage.recover(store.listSandboxes({ states: LIVE_STATES }).map((r) => r.id), AbortSignal.timeout(120_000));
    }
    // Slots before sandboxes: recover() restores the slots of the VMs it adopts.
    await network.start(AbortSignal.timeout(120_000));
    const manager = new SandboxManager({
      store,
      log,
      vmm,
      storage,
      network: network.slots,
      agent: (endpoint, token) => new AgentControl(endpoint, token),
      // Memory files: FICLONE where the data dir has reflinks, else a sparse copy.
      cloneFile: (src, dst, signal) => cloneFile(cloneKind, src, dst, signal),
      config: {
        dataDir: cfg.dataDir,
        agentPort: AGENT_PORT,
        defaultTimeoutSec: cfg.defaultTimeoutSec,
        maxTimeoutSec: cfg.maxTimeoutSec,
        bootTimeoutMs: cfg.bootTimeoutMs,
        restoreTimeoutMs: cfg.restoreTimeoutMs,
        warmTemplates: cfg.warmTemplates,
        maxConcurrentStarts: cfg.maxConcurrentStarts,
        warmShapesPerTemplate: cfg.warmShapesPerTemplate,
        limits: { maxVcpus: cfg.maxVcpus, maxMemoryMib: cfg.maxMemoryMib, minMemoryMib: cfg.minMemoryMib, maxForks: cfg.maxForks },
        capacityMemoryMib: Math.floor((totalmem() / 1048576) * cfg.memoryOvercommit),
        headroom: hostHeadroom(cfg.dataDir, admissionThresholds(cfg)),
      },
    });
    // Events, per-sandbox logs and metrics, Prometheus (docs/observability.md): before recovery, so its transitions are seen.
    observability = new Observability({
      store, manager, log, dataDir: cfg.dataDir, capacityMemoryMib: Math.floor((totalmem() / 1048576) * cfg.memoryOvercommit),
      build: { version: VERSION, vmm: vmmChoice.kind, storage: storageChoice.chosen, network: network.choice.kind, node: process.versions.node },
    });
    observability.start();
    // Before recovery, so sandboxes it fails follow the same retention (0: deleted as they end).
    manager.setEndedRetention(cfg.endedRetentionHours);
    const recovered = await manager.recover(AbortSignal.timeout(120_000));
    const report = await manager.reconcile();
    report.recovered = recovered;
    await network.finishRecovery();
    // Template builds (docs/templates.md): a build hearthd was running when it stopped is failed, its sandbox destroyed.
    builder = new TemplateBuilder({
      store, manager, log, dataDir: cfg.dataDir, cacheDir: cfg.cacheDir, warmTemplates: cfg.warmTemplates,
      cloneFile: (src, dst, signal) => cloneFile(cloneKind, src, dst, signal),
      agent: (endpoint, token) => new AgentControl(endpoint, token),
    });
    await builder.reconcile(AbortSignal.timeout(120_000));
    manager.startExpiry();
    manager.startReconciler();
    const purge = (atStart: boolean): void => {
      try {
        const n = manager.purgeEnded().length;
        if (n > 0 || atStart) log.info({ purged: n, retentionHours: cfg.endedRetentionHours }, `retention: purged ${n} sandboxes that ended more than ${cfg.endedRetentionHours} h ago`);
      } catch (err) {
        log.error({ err: String(err) }, 'retention: purging ended sandboxes failed');
      }
    };
    purge(true);
    purgeTimer = setInterval(() => purge(false), PURGE_INTERVAL_MS);
    purgeTimer.unref();
    if (cfg.warmOnStart && cfg.warmTemplates && opts.image) {
      // In the background: the API is up at once; a create that comes first waits for this build.
      const t = store.getTemplate(DEFAULT_TEMPLATE)!;
      manager.templateSnapshot(t, t.vcpus, t.memoryMib, AbortSignal.timeout(cfg.bootTimeoutMs + 120_000))
        .catch((err: unknown) => log.error({ err: String(err) }, 'warming the default template failed; creates will cold-boot'));
    }
    const tlsFiles = cfg.tlsCert && cfg.tlsKey ? { cert: await readFile(cfg.tlsCert), key: await readFile(cfg.tlsKey) } : null;
    // The sandbox domain E2B's SDKs build `<port>-<id>.<domain>` from: the proxy domain and the port
    // clients reach this listener on (known once it listens), unless the operator names one.
    let listenPort = cfg.port;
    const sandboxDomain = (): string | null => {
      if (cfg.sandboxDomain) return cfg.sandboxDomain;
      if (!cfg.proxyDomain) return null;
      const defaultPort = listenPort === 443 || (listenPort === 80 && !tlsFiles);
      return defaultPort ? cfg.proxyDomain : `${cfg.proxyDomain}:${listenPort}`;
    };
    // Cluster mode (docs/cluster.md): the node joins once it listens (its address may be known only then).
    if (cfg.databaseUrl && cfg.clusterToken) {
      cluster = new ClusterNode({
        nodeId: clusterNodeId(cfg), address: cfg.nodeAddress ?? '', databaseUrl: cfg.databaseUrl, heartbeatMs: cfg.clusterHeartbeatMs, expiryMs: cfg.clusterNodeExpiryMs,
        store, log, headroom: hostHeadroom(cfg.dataDir, admissionThresholds(cfg)), memoryTotalMib: Math.floor((totalmem() / 1048576) * cfg.memoryOvercommit), version: VERSION,
        onMovedAway: (ids) => manager.dropMovedAway(ids),
        keyCacheFile: join(cfg.dataDir, CLUSTER_KEYS_FILE),
      });
    }
    // API keys: the cluster's (PostgreSQL, with this node's copy) in cluster mode, else this host's SQLite.
    const keys: ApiKeyStore = cluster ? cluster.keys : new SqliteKeyStore(store);
    const gateway = cluster && cfg.clusterToken ? new ClusterGateway({
      node: cluster, token: cfg.clusterToken, store, log, minFreeDiskMib: cfg.admissionMinFreeDiskMib,
      mover: new SandboxMover({ manager, node: cluster, token: cfg.clusterToken, log, minFreeDiskMib: cfg.admissionMinFreeDiskMib }),
      puller: new TemplatePuller({ manager, store, layers: builder.layers, node: cluster, token: cfg.clusterToken, log }),
      admissionRefusal: (memoryMib) => manager.admissionRefusal(memoryMib),
    }) : undefined;
    const app = await buildApi({
      manager, store, builder, log, doctor: () => runDoctor(cfg), version: VERSION, requireApiKey: cfg.requireApiKey || !isLoopback(cfg.host), keys, proxyDomain: cfg.proxyDomain,
      listenHost: cfg.host, allowedHosts: cfg.allowedHosts, sandboxDomain, defaultTimeoutSec: cfg.defaultTimeoutSec, observability,
      limits: { headersTimeoutMs: cfg.headersTimeoutMs, bodyIdleTimeoutMs: cfg.bodyIdleTimeoutMs, keepAliveTimeoutMs: cfg.keepAliveTimeoutMs, maxConnectionsPerAddress: cfg.maxConnectionsPerAddress },
      ...(gateway ? { cluster: gateway } : {}),
    });
    let url = '';
    let dual: ReturnType<typeof dualProtocolServer> | null = null;
    if (opts.listen !== false && tlsFiles) {
      // HTTPS and HTTP on the same port (src/api/tls.ts).
      const server = dualProtocolServer(app.server, tlsFiles, cfg.headersTimeoutMs);
      dual = server;
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: cfg.host, port: cfg.port }, () => { server.off('error', reject); resolve(); });
      });
      listenPort = (server.address() as AddressInfo).port;
      const host = cfg.host.includes(':') ? `[${cfg.host}]` : cfg.host;
      url = `http://${host}:${listenPort}`;
      log.info(`hearthd ${VERSION} listening on ${url} and https://${host}:${listenPort} (data dir ${cfg.dataDir})`);
    } else if (opts.listen !== false) {
      url = await app.listen({ host: cfg.host, port: cfg.port });
      listenPort = (app.server.address() as AddressInfo).port;
      log.info(`hearthd ${VERSION} listening on ${url} (data dir ${cfg.dataDir})`);
    }
    if (cluster) {
      if (!cfg.nodeAddress) {
        if (!url || ['0.0.0.0', '::', ''].includes(cfg.host)) throw new Error('cluster mode: set nodeAddress (the URL other nodes reach this one at); it cannot be derived from a wildcard listen address');
        cluster.setAddress(url);
      }
      await cluster.start();
      log.info({ node: cluster.nodeId, address: cluster.address }, `cluster: node ${cluster.nodeId} joined`);
    }
    // After the node joined: in cluster mode the keys that count are the cluster's (its SQLite keys imported by now).
    if (!isLoopback(cfg.host)) {
      const n = await keys.count();
      if (n === 0) log.warn(`listening on a non-loopback address with no API keys${cluster ? ' in the cluster' : ''}: every API request will get 401 until \`hearth keys create\``);
      else if (n === null) log.warn('listening on a non-loopback address; the cluster database does not answer, so whether any API key exists is unknown (requests need one)');
    }
    const net = network;
    const obs = observability;
    const builds = builder;
    const member = cluster;
    return {
      app, manager, store, network: net, url, cluster: member ?? null,
      async close(opts = {}) {
        clearInterval(purgeTimer);
        await member?.close();
        await builds.close();
        manager.close();
        dual?.close();
        await app.close();
        obs.close();
        try {
          await (opts.removeNetwork ? net.destroyAll() : net.close());
        } finally {
          store.close();
        }
      },
    };
  } catch (err) {
    clearInterval(purgeTimer);
    await cluster?.close();
    await builder?.close();
    observability?.close();
    await network?.close().catch(() => undefined);
    store.close();
    throw err;
  }
}
