// The composition root for `vxmesh daemon`: checks, the data plane, the peer source (a static
// file or gossip), the control socket and the run-dir hand-off, and a shutdown that removes
// everything it made.

import type { Server } from "node:net";
import type { Peer } from "../encap/fdb";
import type { BatchHistogram, PeerTraffic } from "../encap/counters";
import { formatIpv4, formatMac, formatSubnet, parseIpv4, type Subnet } from "../encap/types";
import { describeRoute } from "../control/host-plumbing";
import { loadKeyring, type Keyring } from "../control/keyring";
import { findUnderlayInterface } from "../control/underlay";
import { hostRouteOverlapMessage, hostRouteOverlaps, type OwnRoutes } from "../control/cidr-overlap";
import { readHostRoutes } from "../control/host-routes";
import { ensureIpForwarding } from "../control/sysctl";
import { IPV4_OVERHEAD, MIN_MTU, podCidrs, readPeersFile, serviceCidrConflict, type DaemonConfig } from "./config";
import { closeControl, controlInUse, controlSocketPath, listenControl } from "./control-socket";
import { DataPlane, RECONCILE_INTERVAL_MS, type ChangeTrigger, type KernelChanges } from "./dataplane";
import { EgressRules, prepareEgress } from "../control/iptables";
import { GossipController } from "./gossip-controller";
import { removeHandoff, writeHandoff } from "./handoff";
import { readLease } from "./lease-file";
import { serveMetrics } from "./metrics";
import type { Logger } from "./log";
import { StartupError } from "./startup-error";
import { findOwner, traceIp, type TraceRecord, type TraceState } from "./trace";
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
  peers: { name: string; underlayIp: string; subnet: string; vtepMac: string; path: string; traffic?: PeerTraffic }[];
  counters: Record<string, number>;
  /** Entries per forwarder read, by source. */
  batchSizes?: { tap: BatchHistogram; underlay: BatchHistogram };
  /** Routes and neighbours the daemon added, replaced or removed, by trigger. */
  kernelChanges?: Record<ChangeTrigger, KernelChanges>;
  /** Our routes and neighbours as the kernel holds them (the control socket's status only). */
  kernel?: KernelStatus;
  /** Why `kernel` is missing, when reading it failed. */
  kernelError?: string;
  gossip?: object;
}

export interface KernelStatus {
  /** Routes of protocol 118 out of the TAP. */
  routes: string[];
  /** Permanent neighbours on the TAP. */
  neighbours: string[];
  /** What the next reconcile would change; empty lists when the kernel is as wanted. */
  drift: { missingRoutes: string[]; unexpectedRoutes: string[]; missingOrWrongNeighbours: string[]; unexpectedNeighbours: string[] };
}

export async function startDaemon(config: DaemonConfig, log: Logger): Promise<RunningDaemon> {
  const src = config.source;
  // Everything that can be checked without touching the kernel is checked first.
  let staticPeers: Peer[] = [];
  if (src.kind === "static") {
    const parsed = readPeersFile(src.peersFile, { ...config, subnet: src.subnet });
    if (!parsed.ok) throw new StartupError(parsed.error);
    staticPeers = parsed.value;
    const conflict = serviceCidrConflict(config, staticPeers);
    if (conflict !== undefined) throw new StartupError(conflict, 2);
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
  const routeConflict = hostRouteOverlaps(podCidrs(config, staticPeers), await readHostRoutes(), ownRoutes(config))[0];
  if (routeConflict !== undefined) throw new StartupError(hostRouteOverlapMessage(routeConflict));

  // Before anything is made: without CAP_NET_ADMIN nothing below can work.
  const noNetAdmin = netAdminMissing(readThreadCaps("self").find((t) => t.tid === process.pid)?.effective ?? 0n);
  if (noNetAdmin !== undefined) throw new StartupError(noNetAdmin);
  // --ip-masq, --forward-accept: the iptables programs and the back end (reads rules, writes none).
  const egress = await prepareEgress({ masquerade: config.ipMasq, forwardAccept: config.forwardAccept, backend: config.iptablesBackend, runDir: config.runDir }, log);
  if (!egress.ok) throw new StartupError(egress.error);
  // The node routes pod traffic between the pod bridge and the TAP (left on at exit: others rely on it).
  const forwarding = ensureIpForwarding();
  if (!forwarding.ok) throw new StartupError(forwarding.error);
  if (forwarding.value.changed) log.info("turned on IPv4 forwarding (net.ipv4.ip_forward=1): the node routes pod traffic");

  const cleanups: (() => Promise<void> | void)[] = [];
  const undo = async (): Promise<void> => {
    for (const fn of cleanups.splice(0).reverse()) {
      try { await fn(); } catch (err) { log.warn({ err }, "cleanup step failed"); }
    }
  };

  try {
    const dp = await DataPlane.start({
      underlayIp: config.underlayIp, vxlanPort: config.vxlanPort, vni: config.vni, tap: config.tap, vtepMac: config.vtepMac,
      mtu, batch: config.batch, sourcePorts: config.sourcePorts, offload: config.offload, busyPollUs: config.busyPoll,
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
    // A crashed run's hand-off may name a subnet this run will not get: withdrawn until confirmed.
    removeHandoff(config.runDir);
    cleanups.push(() => removeHandoff(config.runDir));

    // Egress and FORWARD rules for the pod addresses; removed after a gossip leave at stop.
    if (egress.value !== undefined) {
      const cidrs = podCidrs(config, staticPeers).map((c) => c.subnet);
      const rules = await EgressRules.start(egress.value, {
        masquerade: config.ipMasq, forwardAccept: config.forwardAccept, intervalMs: RECONCILE_INTERVAL_MS, cidrs: () => cidrs,
      }, log);
      if (!rules.ok) throw new StartupError(rules.error);
      cleanups.push(() => rules.value.stop().then(() => undefined));
    }
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
      peers: dp.currentPeers.map((p) => ({ ...describePeer(p), traffic: dp.peerTraffic(p.name) })),
      counters: dp.counters(),
      batchSizes: dp.batchSizes(),
      kernelChanges: dp.kernelChanges(),
      ...(gossip === undefined ? {} : { gossip: gossip.status() }),
    });

    const kernelStatus = async (): Promise<KernelStatus> => {
      const k = await dp.kernelState();
      const tap = dp.tapName;
      return {
        routes: k.routes.map((r) => `${describeRoute(r.dst, r.gateway, tap)}${r.onlink ? " onlink" : ""}${r.priority !== 0 ? ` metric ${r.priority}` : ""}`),
        neighbours: k.neighbours.map((n) => `${formatIpv4(n.ip)} lladdr ${n.mac === null ? "none" : formatMac(n.mac)}`),
        drift: {
          missingRoutes: k.drift.addRoutes.map((d) => `${describeRoute(d, d.network, tap)} onlink`),
          unexpectedRoutes: k.drift.removeRoutes.map((r) => describeRoute(r.dst, r.gateway, tap)),
          missingOrWrongNeighbours: k.drift.setNeighbours.map((n) => `${formatIpv4(n.ip)} lladdr ${formatMac(n.mac)}`),
          unexpectedNeighbours: k.drift.removeNeighbours.map((n) => formatIpv4(n.ip)),
        },
      };
    };

    const traceState = (): TraceState => ({
      node: {
        name: config.nodeName, mode: src.kind, subnet: dp.currentSubnet, clusterCidr: src.kind === "gossip" ? src.clusterCidr : undefined,
        underlayIp: config.underlayIp, vtepMac: config.vtepMac, vni: config.vni, vxlanPort: config.vxlanPort, tap: dp.tapName, tapMtu: mtu,
      },
      peers: dp.currentPeers,
      peerTraffic: new Map(dp.currentPeers.flatMap((p) => {
        const t = dp.peerTraffic(p.name);
        return t === undefined ? [] : [[p.name, t] as const];
      })),
      members: gossip?.traceMembers(),
      skipped: gossip?.skippedMembers ?? [],
      counters: dp.counters(),
    });
    const trace = async (ipText: unknown): Promise<TraceRecord> => {
      const ip = typeof ipText === "string" ? parseIpv4(ipText) : undefined;
      if (ip === undefined || !ip.ok) throw new Error(`trace: ip ${JSON.stringify(ipText)} is not an IPv4 address`);
      const state = traceState();
      const owner = findOwner(state, ip.value);
      return traceIp(state, ip.value, await dp.kernelFacts(ip.value, owner.kind === "peer" ? owner.peer.underlayIp : undefined));
    };

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
      if (req.op === "status") {
        return kernelStatus().then((kernel) => ({ ...status(), kernel }), (err: unknown) => ({ ...status(), kernelError: (err as Error).message }));
      }
      if (req.op === "trace") return trace((req as { ip?: unknown }).ip);
      if (isCniRequest(req)) return cni.handle(req);
      throw new Error(`unknown op ${JSON.stringify(req.op)}; valid: status, trace, cni`);
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
      const iptablesNeeds = egress.value === undefined ? undefined : { caps: egress.value.capabilities, why: `iptables-${egress.value.tools.backend}-restore (--ip-masq, --forward-accept)` };
      const dropped = dropCapabilities(config.keepCaps, iptablesNeeds);
      if (!dropped.ok) throw new StartupError(`--keep-caps: ${dropped.error}`);
      for (const note of dropped.value.notes) log.warn(note);
      log.info({ kept: capNames(dropped.value.kept), ambient: capNames(dropped.value.ambient), bounding: capNames(dropped.value.bounding), threads: dropped.value.threads, noNewPrivs: true }, "capabilities dropped");
    } else {
      log.warn("--keep-caps all: the daemon keeps every capability it was started with");
    }
    // A DEL the shim queued between the first pass and the socket opening.
    void cni.completeQueuedDels().catch((err: unknown) => log.warn({ err }, "completing queued CNI DELs failed"));

    log.info({
      node: config.nodeName, mode: src.kind, vtepMac: formatMac(config.vtepMac), underlay: `${formatIpv4(config.underlayIp)} (${underlay.value.ifname})`,
      vni: config.vni, vxlanPort: config.vxlanPort, tap: dp.tapName, mtu, offload: config.offload, busyPollUs: config.busyPoll, controlSocket: controlSocketPath(config.runDir),
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

/**
 * What the start-up route check treats as the overlay's own: the TAP and our pod bridge, and
 * this node's subnet when it is known before gossip runs (static or pinned --subnet, else the
 * persisted lease a restart keeps), so a bridge someone else made for it is no conflict.
 */
export function ownRoutes(config: DaemonConfig): OwnRoutes {
  const src = config.source;
  const subnet = src.kind === "static" ? src.subnet : (src.subnet ?? readLease(config.stateDir)?.subnet);
  return { devices: [config.tap, POD_BRIDGE], nodeSubnets: subnet === undefined ? [] : [subnet] };
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
