// The composition root for `vxmesh daemon`: checks, the data plane, the peer source (a static
// file or gossip), the control socket and the run-dir hand-off, and a shutdown that removes
// everything it made.

import type { Server } from "node:net";
import type { Peer } from "../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, type Subnet } from "../encap/types";
import { loadKeyring, type Keyring } from "../control/keyring";
import { findUnderlayInterface } from "../control/underlay";
import { IPV4_OVERHEAD, MIN_MTU, readPeersFile, type DaemonConfig } from "./config";
import { closeControl, controlInUse, controlSocketPath, listenControl } from "./control-socket";
import { DataPlane } from "./dataplane";
import { GossipController } from "./gossip-controller";
import { removeHandoff, writeHandoff } from "./handoff";
import { serveMetrics } from "./metrics";
import type { Logger } from "./log";
import { StartupError } from "./startup-error";
import { createCniHandler, isCniRequest } from "../cni/handler";
import { capNames, dropCapabilities, netAdminMissing, readThreadCaps } from "./capabilities";

export { StartupError } from "./startup-error";

/** The node bridge pods attach to (DESIGN §1). */
export const POD_BRIDGE = "vxmesh-br";

export interface RunningDaemon {
  status(): DaemonStatus;
  /** Leaves nothing behind: cluster left, forwarder stopped, routes and neighbours removed, TAP closed. */
  stop(): Promise<void>;
  /** Resolves if the forwarder thread dies on its own (a bug); the daemon must then exit. */
  readonly failed: Promise<Error>;
  /** Re-reads the key file (SIGHUP): how keys rotate without a restart. */
  reloadKeys(): string | undefined;
}

export interface DaemonStatus {
  node: string;
  mode: "static" | "gossip";
  ready: boolean;
  underlayIp: string;
  subnet: string | null;
  vtepMac: string;
  vni: number;
  vxlanPort: number;
  tap: string;
  mtu: number;
  peers: { name: string; underlayIp: string; subnet: string; vtepMac: string; path: string }[];
  counters: Record<string, number>;
  gossip?: object;
}

export async function startDaemon(config: DaemonConfig, log: Logger): Promise<RunningDaemon> {
  const src = config.source;
  // Everything that can be checked without touching the kernel is checked first.
  let staticPeers: Peer[] = [];
  if (src.kind === "static") {
    const parsed = readPeersFile(src.peersFile, { ...config, subnet: src.subnet });
    if (!parsed.ok) throw new StartupError(parsed.error);
    staticPeers = parsed.value;
  }
  let keyring: Keyring | undefined;
  if (src.kind === "gossip") {
    const loaded = loadKeyring(src.keyFile);
    if (!loaded.ok) throw new StartupError(`--key-file: ${loaded.error}`);
    keyring = loaded.value;
  }
  if (await controlInUse(config.runDir)) {
    throw new StartupError(`--run-dir ${config.runDir}: another vxmesh daemon is serving ${controlSocketPath(config.runDir)}; give this one its own --run-dir`);
  }
  const underlay = await findUnderlayInterface(config.underlayIp);
  if (!underlay.ok) throw new StartupError(underlay.error);
  const maxMtu = underlay.value.mtu - IPV4_OVERHEAD;
  if (config.mtu !== undefined && config.mtu > maxMtu) {
    throw new StartupError(`--mtu ${config.mtu} is too large: the underlay ${underlay.value.ifname} has MTU ${underlay.value.mtu}, so at most ${maxMtu} fits inside VXLAN`);
  }
  const mtu = config.mtu ?? maxMtu;
  if (mtu < MIN_MTU) {
    throw new StartupError(`the underlay ${underlay.value.ifname} has MTU ${underlay.value.mtu}, leaving ${mtu} for pods, below the minimum ${MIN_MTU}`);
  }

  // Before anything is made: without CAP_NET_ADMIN nothing below can work.
  const noNetAdmin = netAdminMissing(readThreadCaps("self").find((t) => t.tid === process.pid)?.effective ?? 0n);
  if (noNetAdmin !== undefined) throw new StartupError(noNetAdmin);

  const cleanups: (() => Promise<void> | void)[] = [];
  const undo = async (): Promise<void> => {
    for (const fn of cleanups.splice(0).reverse()) {
      try { await fn(); } catch (err) { log.warn({ err }, "cleanup step failed"); }
    }
  };

  try {
    const dp = await DataPlane.start({
      underlayIp: config.underlayIp, vxlanPort: config.vxlanPort, vni: config.vni, tap: config.tap, vtepMac: config.vtepMac,
      mtu, batch: config.batch, sourcePorts: config.sourcePorts, offload: config.offload,
    }, log);
    cleanups.push(() => dp.stop());

    // The hand-off tells CNI the subnet once it is confirmed, and is withdrawn when it is not.
    let confirmedSubnet: Subnet | undefined;
    const handoff = (subnet: Subnet | undefined): void => {
      confirmedSubnet = subnet;
      if (subnet === undefined) removeHandoff(config.runDir);
      else writeHandoff(config.runDir, {
        clusterNetwork: src.kind === "gossip" ? src.clusterCidr : undefined, nodeSubnet: subnet, mtu, bridge: POD_BRIDGE,
        controlSocket: controlSocketPath(config.runDir),
      });
    };
    cleanups.push(() => removeHandoff(config.runDir));

    let gossip: GossipController | undefined;
    if (src.kind === "static") {
      await applyOrRefuse(() => dp.setSubnet(src.subnet, config.vtepMac));
      await applyOrRefuse(() => dp.setPeers(staticPeers));
    } else {
      gossip = await GossipController.start({
        nodeName: config.nodeName, underlayIp: config.underlayIp, gossipPort: src.gossipPort, vtepMac: config.vtepMac,
        vni: config.vni, vxlanPort: config.vxlanPort, seeds: src.join, keyring: keyring as Keyring,
        clusterCidr: src.clusterCidr, subnetLen: src.subnetLen, staticSubnet: src.subnet, claimWaitMs: src.claimWaitMs,
        stateDir: config.stateDir, onSubnet: handoff,
      }, dp, log);
      const g = gossip;
      cleanups.push(() => g.stop());
    }

    const status = (): DaemonStatus => ({
      node: config.nodeName,
      mode: src.kind,
      ready: gossip === undefined ? true : gossip.ready,
      underlayIp: formatIpv4(config.underlayIp),
      subnet: dp.currentSubnet === undefined ? null : formatSubnet(dp.currentSubnet),
      vtepMac: formatMac(config.vtepMac),
      vni: config.vni,
      vxlanPort: config.vxlanPort,
      tap: dp.tapName,
      mtu,
      peers: dp.currentPeers.map(describePeer),
      counters: dp.counters(),
      ...(gossip === undefined ? {} : { gossip: gossip.status() }),
    });

    // CNI calls arrive on the control socket; ADD answers "try again later" (11) until the
    // subnet is confirmed. DELs queued on disk while the daemon was down are finished now.
    const cni = createCniHandler({
      nodeSubnet: () => confirmedSubnet, mtu, bridge: POD_BRIDGE, stateDir: config.stateDir,
      log: log.child({ component: "cni" }),
    });
    cleanups.push(() => cni.close());
    try {
      await cni.completeQueuedDels();
    } catch (err) {
      throw new StartupError(`--state-dir ${config.stateDir}: the CNI handler could not start: ${(err as Error).message}`);
    }

    if (src.kind === "static") handoff(src.subnet);
    const server: Server = await listenControl(config.runDir, (req) => {
      if (req.op === "status") return status();
      if (isCniRequest(req)) return cni.handle(req);
      throw new Error(`unknown op ${JSON.stringify(req.op)}; valid: status, cni`);
    });
    cleanups.push(() => closeControl(server, config.runDir));
    if (config.metricsAddr !== undefined) {
      const addr = config.metricsAddr;
      const metrics = await serveMetrics(addr, status).catch((err: NodeJS.ErrnoException) => {
        throw err.code === "EADDRINUSE" || err.code === "EADDRNOTAVAIL"
          ? new StartupError(`--metrics-addr ${addr.host}:${addr.port}: ${err.code === "EADDRINUSE" ? "already in use" : "not an address of this host"} (or --metrics-addr off)`)
          : err;
      });
      cleanups.push(() => new Promise<void>((resolve) => metrics.close(() => resolve())));
    }
    // Set-up is done (every socket bound, every thread started): keep only what is still needed.
    if (config.keepCaps.kind !== "all") {
      const dropped = dropCapabilities(config.keepCaps);
      if (!dropped.ok) throw new StartupError(`--keep-caps: ${dropped.error}`);
      for (const note of dropped.value.notes) log.warn(note);
      log.info({ kept: capNames(dropped.value.kept), bounding: capNames(dropped.value.bounding), threads: dropped.value.threads, noNewPrivs: true }, "capabilities dropped");
    } else {
      log.warn("--keep-caps all: the daemon keeps every capability it was started with");
    }
    // A DEL the shim queued between the first pass and the socket opening.
    void cni.completeQueuedDels().catch((err: unknown) => log.warn({ err }, "completing queued CNI DELs failed"));

    log.info({
      node: config.nodeName, mode: src.kind, vtepMac: formatMac(config.vtepMac), underlay: `${formatIpv4(config.underlayIp)} (${underlay.value.ifname})`,
      vni: config.vni, vxlanPort: config.vxlanPort, tap: dp.tapName, mtu, offload: config.offload, controlSocket: controlSocketPath(config.runDir),
      ...(src.kind === "static" ? { subnet: formatSubnet(src.subnet), peers: staticPeers.length } : { gossipPort: src.gossipPort, join: src.join.map((j) => `${formatIpv4(j.ip)}:${j.port}`) }),
    }, "vxmesh forwarding");

    const failed = new Promise<Error>((resolve) => dp.onFailure(resolve));
    let stopping: Promise<void> | undefined;
    const reloadKeys = (): string | undefined => {
      if (src.kind !== "gossip" || gossip === undefined) return "static peers: there is no key file";
      const loaded = loadKeyring(src.keyFile);
      if (!loaded.ok) return loaded.error;
      gossip.setKeyring(loaded.value);
      log.info({ keys: loaded.value.keyIds, primary: loaded.value.primaryKeyId }, "gossip keyring reloaded");
      return undefined;
    };
    return { status, failed, reloadKeys, stop: () => (stopping ??= undo()) };
  } catch (err) {
    await undo();
    throw err;
  }
}

/** Kernel conflicts at start (a route someone else owns) are the operator's to fix. */
async function applyOrRefuse(fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    throw new StartupError(`programming the kernel: ${(err as Error).message}`);
  }
}

function describePeer(p: Peer): DaemonStatus["peers"][number] {
  return { name: p.name, underlayIp: formatIpv4(p.underlayIp), subnet: formatSubnet(p.subnet), vtepMac: formatMac(p.vtepMac), path: p.path };
}
