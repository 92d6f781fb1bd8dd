// The composition root for `vxmesh daemon`, in three steps: preflight (every check that can be
// made before the kernel is touched, and the peer source the configuration names), assemble
// (the data plane, the iptables rules, the source started and linked to the data plane and the
// CNI hand-off, the CNI handler) and serve (the control socket, metrics, the capability drop).
// Whatever kind of source runs, this file does not ask (peer-source.ts). Stop removes
// everything it made, last made first.

import type { Peer } from "../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, parseIpv4 } from "../encap/types";
import { describeRoute } from "../control/host-plumbing";
import { findUnderlayInterface, type UnderlayInterface } from "../control/underlay";
import { hostRouteOverlapMessage, hostRouteOverlaps, type OwnRoutes } from "../control/cidr-overlap";
import { readHostRoutes } from "../control/host-routes";
import { ensureIpForwarding } from "../control/sysctl";
import { EgressRules, prepareEgress, type PreparedEgress } from "../control/iptables";
import { createCniHandler, isCniRequest, type CniHandler } from "../cni/handler";
import { capNames, dropCapabilities, netAdminMissing, readThreadCaps } from "./capabilities";
import { CleanupStack } from "./cleanup-stack";
import { IPV4_OVERHEAD, MIN_MTU, type DaemonConfig } from "./config";
import { closeControl, controlInUse, controlSocketPath, listenControl, type ControlHandler } from "./control-socket";
import { DataPlane, RECONCILE_INTERVAL_MS } from "./dataplane";
import { removeHandoff, writeHandoff } from "./handoff";
import type { Logger } from "./log";
import { serveMetrics } from "./metrics";
import type { PeerSource } from "./peer-source";
import { SourceLink, type HandoffTarget } from "./source-link";
import { choosePeerSource, knownSubnet } from "./sources";
import { StartupError } from "./startup-error";
import type { DaemonStatus, KernelStatus, PeerStatus } from "./status";
import { findOwner, traceIp, type TraceRecord, type TraceState } from "./trace";

export { StartupError } from "./startup-error";
export type { DaemonStatus, KernelStatus } from "./status";

/** The node bridge pods attach to (docs/DESIGN.md §1). */
export const POD_BRIDGE = "vxmesh-br";

export interface RunningDaemon {
  status(): DaemonStatus;
  /** Leaves nothing behind: cluster left, forwarder stopped, routes and neighbours removed, TAP closed. */
  stop(): Promise<void>;
  /** Resolves if the forwarder thread dies on its own (a bug) or the source gives up; the daemon must then exit. */
  readonly failed: Promise<Error>;
  /** Re-reads the key file (SIGHUP): how keys rotate without a restart. */
  reloadKeys(): string | undefined;
}

/** What preflight found: the source to run, and the host facts the rest is built on. */
interface Checked {
  readonly source: PeerSource;
  readonly underlay: UnderlayInterface;
  readonly mtu: number;
  /** The iptables programs for --ip-masq/--forward-accept; undefined when both are off. */
  readonly egress: PreparedEgress | undefined;
}

/** What assemble made, for serve. */
interface Assembled {
  readonly dp: DataPlane;
  readonly link: SourceLink;
  readonly cni: CniHandler;
}

export async function startDaemon(config: DaemonConfig, log: Logger): Promise<RunningDaemon> {
  const checked = await preflight(config, log);
  const made = new CleanupStack(log);
  try {
    const parts = await assemble(config, checked, made, log);
    return await serve(config, checked, parts, made, log);
  } catch (err) {
    await made.unwind();
    throw err;
  }
}

/** Every check that needs no change to the host, then the two that make none that matters. */
async function preflight(config: DaemonConfig, log: Logger): Promise<Checked> {
  // The source's own checks (the peers file, the key file) come first: they need nothing else.
  const source = choosePeerSource(config, log);
  if (await controlInUse(config.runDir)) {
    throw new StartupError(`--run-dir ${config.runDir}: another vxmesh daemon is serving ${controlSocketPath(config.runDir)}; give this one its own --run-dir`);
  }
  const underlay = await findUnderlayInterface(config.underlayIp);
  if (!underlay.ok) throw new StartupError(underlay.error);
  const mtu = tapMtu(config, underlay.value);
  const routeConflict = hostRouteOverlaps(source.podCidrs(), await readHostRoutes(), ownRoutes(config))[0];
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
  return { source, underlay: underlay.value, mtu, egress: egress.value };
}

/** The TAP's MTU: --mtu, else the underlay's less VXLAN's overhead; either must fit. */
function tapMtu(config: DaemonConfig, underlay: UnderlayInterface): number {
  const maxMtu = underlay.mtu - IPV4_OVERHEAD;
  if (config.mtu !== undefined && config.mtu > maxMtu) {
    throw new StartupError(`--mtu ${config.mtu} is too large: the underlay ${underlay.ifname} has MTU ${underlay.mtu}, so at most ${maxMtu} fits inside VXLAN`);
  }
  const mtu = config.mtu ?? maxMtu;
  if (mtu < MIN_MTU) {
    throw new StartupError(`the underlay ${underlay.ifname} has MTU ${underlay.mtu}, leaving ${mtu} for pods, below the minimum ${MIN_MTU}`);
  }
  return mtu;
}

/** The data plane, the iptables rules, the source driving the data plane, the CNI handler; each undo on `made`. */
async function assemble(config: DaemonConfig, c: Checked, made: CleanupStack, log: Logger): Promise<Assembled> {
  const dp = await DataPlane.start({
    underlayIp: config.underlayIp, vxlanPort: config.vxlanPort, vni: config.vni, tap: config.tap, vtepMac: config.vtepMac,
    mtu: c.mtu, batch: config.batch, sourcePorts: config.sourcePorts, offload: config.offload, busyPollUs: config.busyPoll,
  }, log);
  made.push(() => dp.stop());

  // The hand-off tells CNI the subnet once it is confirmed, and is withdrawn when it is not. A
  // crashed run's hand-off may name a subnet this run will not get: withdrawn until confirmed.
  const handoff = runDirHandoff(config, c);
  handoff.withdraw();
  made.push(() => handoff.withdraw());
  const link = new SourceLink(dp, handoff, log);

  // Egress and FORWARD rules for the pod addresses (asked on every pass, so they follow the
  // source's peers); removed after the source has stopped (a gossip leave).
  if (c.egress !== undefined) {
    const rules = await EgressRules.start(c.egress, {
      masquerade: config.ipMasq, forwardAccept: config.forwardAccept, intervalMs: RECONCILE_INTERVAL_MS,
      cidrs: () => c.source.podCidrs().map((p) => p.subnet),
    }, log);
    if (!rules.ok) throw new StartupError(rules.error);
    made.push(() => rules.value.stop().then(() => undefined));
  }
  made.push(() => c.source.stop());
  await c.source.start(link);

  // CNI calls arrive on the control socket; ADD answers "try again later" (11) until the
  // subnet is confirmed. DELs queued on disk while the daemon was down are finished now.
  const cni = createCniHandler({
    nodeSubnet: () => link.confirmedSubnet, mtu: c.mtu, bridge: POD_BRIDGE, stateDir: config.stateDir,
    log: log.child({ component: "cni" }),
  });
  made.push(() => cni.close());
  try {
    await cni.completeQueuedDels();
  } catch (err) {
    throw new StartupError(`--state-dir ${config.stateDir}: the CNI handler could not start: ${(err as Error).message}`);
  }
  return { dp, link, cni };
}

function runDirHandoff(config: DaemonConfig, c: Checked): HandoffTarget {
  return {
    write: (subnet) => writeHandoff(config.runDir, {
      clusterNetwork: c.source.clusterCidr, nodeSubnet: subnet, mtu: c.mtu, bridge: POD_BRIDGE, controlSocket: controlSocketPath(config.runDir),
    }),
    withdraw: () => removeHandoff(config.runDir),
  };
}

/** Opens the node to its users (the hand-off, the control socket, metrics), then drops what it no longer needs. */
async function serve(config: DaemonConfig, c: Checked, parts: Assembled, made: CleanupStack, log: Logger): Promise<RunningDaemon> {
  const { dp, link, cni } = parts;
  const status = (): DaemonStatus => daemonStatus(config, c, dp);
  link.serve();
  const server = await listenControl(config.runDir, controlHandler(config, c, dp, cni));
  made.push(() => closeControl(server, config.runDir));
  if (config.metricsAddr !== undefined) {
    const addr = config.metricsAddr;
    const metrics = await serveMetrics(addr, status).catch((err: NodeJS.ErrnoException) => {
      throw err.code === "EADDRINUSE" || err.code === "EADDRNOTAVAIL"
        ? new StartupError(`--metrics-addr ${addr.host}:${addr.port}: ${err.code === "EADDRINUSE" ? "already in use" : "not an address of this host"} (or --metrics-addr off)`)
        : err;
    });
    made.push(() => new Promise<void>((resolve) => metrics.close(() => resolve())));
  }
  // Set-up is done (every socket bound, every thread started): keep only what is still needed.
  keepOnlyNeededCaps(config, c.egress, log);
  // A DEL the shim queued between the first pass and the socket opening.
  void cni.completeQueuedDels().catch((err: unknown) => log.warn({ err }, "completing queued CNI DELs failed"));

  log.info({
    node: config.nodeName, mode: c.source.kind, vtepMac: formatMac(config.vtepMac), underlay: `${formatIpv4(config.underlayIp)} (${c.underlay.ifname})`,
    vni: config.vni, vxlanPort: config.vxlanPort, tap: dp.tapName, mtu: c.mtu, offload: config.offload, busyPollUs: config.busyPoll,
    controlSocket: controlSocketPath(config.runDir), ...c.source.logFields(),
  }, "vxmesh forwarding");

  const failed = Promise.race([
    new Promise<Error>((resolve) => dp.onFailure((err) => resolve(new Error(`the forwarder thread failed: ${err.message}`)))),
    link.failed,
  ]);
  let stopping: Promise<void> | undefined;
  return { status, failed, reloadKeys: () => c.source.reload(), stop: () => (stopping ??= made.unwind()) };
}

function keepOnlyNeededCaps(config: DaemonConfig, egress: PreparedEgress | undefined, log: Logger): void {
  if (config.keepCaps.kind === "all") {
    log.warn("--keep-caps all: the daemon keeps every capability it was started with");
    return;
  }
  const iptablesNeeds = egress === undefined ? undefined : { caps: egress.capabilities, why: `iptables-${egress.tools.backend}-restore (--ip-masq, --forward-accept)` };
  const dropped = dropCapabilities(config.keepCaps, iptablesNeeds);
  if (!dropped.ok) throw new StartupError(`--keep-caps: ${dropped.error}`);
  for (const note of dropped.value.notes) log.warn(note);
  log.info({ kept: capNames(dropped.value.kept), ambient: capNames(dropped.value.ambient), bounding: capNames(dropped.value.bounding), threads: dropped.value.threads, noNewPrivs: true }, "capabilities dropped");
}

/** The control socket's operations: status (with the kernel's view), trace, and CNI calls. */
function controlHandler(config: DaemonConfig, c: Checked, dp: DataPlane, cni: CniHandler): ControlHandler {
  return (req) => {
    if (req.op === "status") {
      const status = daemonStatus(config, c, dp);
      return kernelStatus(dp).then((kernel) => ({ ...status, kernel }), (err: unknown) => ({ ...status, kernelError: (err as Error).message }));
    }
    if (req.op === "trace") return trace(config, c, dp, (req as { ip?: unknown }).ip);
    if (isCniRequest(req)) return cni.handle(req);
    throw new Error(`unknown op ${JSON.stringify(req.op)}; valid: status, trace, cni`);
  };
}

function daemonStatus(config: DaemonConfig, c: Checked, dp: DataPlane): DaemonStatus {
  return {
    node: config.nodeName,
    mode: c.source.kind,
    ready: c.source.ready,
    ...(c.source.notReadyBecause === undefined ? {} : { notReadyBecause: c.source.notReadyBecause }),
    underlayIp: formatIpv4(config.underlayIp),
    subnet: dp.currentSubnet === undefined ? null : formatSubnet(dp.currentSubnet),
    vtepMac: formatMac(config.vtepMac),
    vni: config.vni,
    vxlanPort: config.vxlanPort,
    tap: dp.tapName,
    mtu: c.mtu,
    peers: dp.currentPeers.map((p) => ({ ...describePeer(p), traffic: dp.peerTraffic(p.name) })),
    counters: dp.counters(),
    batchSizes: dp.batchSizes(),
    kernelChanges: dp.kernelChanges(),
    ...c.source.status(),
  };
}

async function kernelStatus(dp: DataPlane): Promise<KernelStatus> {
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
}

function traceState(config: DaemonConfig, c: Checked, dp: DataPlane): TraceState {
  const seen = c.source.trace();
  return {
    node: {
      name: config.nodeName, mode: c.source.kind, subnet: dp.currentSubnet, clusterCidr: c.source.clusterCidr,
      underlayIp: config.underlayIp, vtepMac: config.vtepMac, vni: config.vni, vxlanPort: config.vxlanPort, tap: dp.tapName, tapMtu: c.mtu,
    },
    peers: dp.currentPeers,
    peerTraffic: new Map(dp.currentPeers.flatMap((p) => {
      const t = dp.peerTraffic(p.name);
      return t === undefined ? [] : [[p.name, t] as const];
    })),
    members: seen.members,
    skipped: seen.skipped,
    counters: dp.counters(),
  };
}

async function trace(config: DaemonConfig, c: Checked, dp: DataPlane, ipText: unknown): Promise<TraceRecord> {
  const ip = typeof ipText === "string" ? parseIpv4(ipText) : undefined;
  if (ip === undefined || !ip.ok) throw new Error(`trace: ip ${JSON.stringify(ipText)} is not an IPv4 address`);
  const state = traceState(config, c, dp);
  const owner = findOwner(state, ip.value);
  return traceIp(state, ip.value, await dp.kernelFacts(ip.value, owner.kind === "peer" ? owner.peer.underlayIp : undefined));
}

/**
 * What the start-up route check treats as the overlay's own: the TAP and our pod bridge, and
 * this node's subnet when it is known before the source runs (sources.ts `knownSubnet`), so a
 * bridge someone else made for it is no conflict.
 */
export function ownRoutes(config: DaemonConfig): OwnRoutes {
  const subnet = knownSubnet(config);
  return { devices: [config.tap, POD_BRIDGE], nodeSubnets: subnet === undefined ? [] : [subnet] };
}

function describePeer(p: Peer): PeerStatus {
  return { name: p.name, underlayIp: formatIpv4(p.underlayIp), subnet: formatSubnet(p.subnet), vtepMac: formatMac(p.vtepMac), path: p.path };
}
