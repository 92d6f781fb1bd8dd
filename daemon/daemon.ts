// The composition root for `vxmesh daemon`: TAP + underlay socket + host plumbing +
// forwarder thread + control socket, and a shutdown that removes everything it made.

import { writeFileSync } from "node:fs";
import type { Server } from "node:net";
import { Forwarder } from "../encap/forwarder";
import type { Peer } from "../encap/fdb";
import { loadNative, type NativeShim } from "../encap/native";
import { formatIpv4, formatMac, formatSubnet } from "../encap/types";
import { HostPlumbing } from "../control/host-plumbing";
import { findUnderlayInterface } from "../control/underlay";
import { TUN_F_CSUM, TUN_F_TSO4 } from "../encap/offload";
import { IPV4_OVERHEAD, MIN_MTU, readPeersFile, type DaemonConfig } from "./config";
import { closeControl, controlInUse, controlSocketPath, listenControl } from "./control-socket";
import { removeHandoff, writeHandoff } from "./handoff";
import type { Logger } from "./log";

const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
/** The node bridge pods attach to (DESIGN §1). */
export const POD_BRIDGE = "vxmesh-br";
/** Super-frames per TAP read burst and GRO runs per recvmmsg (each up to 64 KB). */
const OFFLOAD_BATCHES = { tapBatch: 16, rxBatch: 16 };

/** A start-up failure the operator can fix; its message is the whole story. */
export class StartupError extends Error {
  override readonly name = "StartupError";
}

export interface RunningDaemon {
  status(): DaemonStatus;
  /** Leaves nothing behind: forwarder stopped, routes and neighbours removed, TAP closed. */
  stop(): Promise<void>;
  /** Resolves if the forwarder thread dies on its own (a bug); the daemon must then exit. */
  readonly failed: Promise<Error>;
}

export interface DaemonStatus {
  node: string;
  underlayIp: string;
  subnet: string;
  vtepMac: string;
  vni: number;
  vxlanPort: number;
  tap: string;
  mtu: number;
  peers: { name: string; underlayIp: string; subnet: string; vtepMac: string; path: string }[];
  counters: Record<string, number>;
}

export async function startDaemon(config: DaemonConfig, log: Logger): Promise<RunningDaemon> {
  const peersParsed = readPeersFile(config.peersFile, config);
  if (!peersParsed.ok) throw new StartupError(peersParsed.error);
  const peers = peersParsed.value;

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

  const native = loadNative();
  const cleanups: (() => Promise<void> | void)[] = [];
  const undo = async (): Promise<void> => {
    for (const fn of cleanups.splice(0).reverse()) {
      try { await fn(); } catch (err) { log.warn({ err }, "cleanup step failed"); }
    }
  };

  try {
    const tap = openTap(native, config.tap, config.offload);
    cleanups.push(() => native.close(tap.fd));
    // With checksum and TSO offload on, the kernel hands the TAP 64 KB TCP super-frames and
    // leaves checksums partial; the forwarder segments and completes them.
    if (config.offload) native.tapSetOffload(tap.fd, TUN_F_CSUM | TUN_F_TSO4);
    disableIpv6(tap.name, log);
    const udpFd = openUdp(native, config);
    cleanups.push(() => native.close(udpFd));
    if (config.offload) native.udpSetGro(udpFd, true);
    const sendFds: number[] = [];
    for (let i = 0; i < config.sourcePorts; i++) {
      // Port 0: the kernel picks from its ephemeral range, as it does for its own VXLAN.
      const fd = native.udpOpen(config.underlayIp, 0, 0, SOCKET_BUFFER_BYTES);
      cleanups.push(() => native.close(fd));
      sendFds.push(fd);
    }

    const plumbing = await HostPlumbing.open();
    cleanups.push(() => plumbing.close());
    cleanups.push(() => plumbing.removeAll(tap.name).then(() => undefined));
    let changes;
    try {
      await plumbing.configureTap({ ifname: tap.name, mac: config.vtepMac, mtu, address: config.subnet.network });
      changes = await plumbing.setPeers(tap.name, peers.map((p) => ({ subnet: p.subnet, vtepMac: p.vtepMac })));
    } catch (err) {
      // Typically a route for a peer subnet that something else already installed: ours
      // would shadow or be shadowed by it, so refuse rather than half-work.
      throw new StartupError(`programming the kernel: ${(err as Error).message}`);
    }

    const forwarder = await Forwarder.start({
      tapFd: tap.fd, udpFd, sendFds, peers,
      core: { vni: config.vni, port: config.vxlanPort, mtu, batch: config.batch, sourcePorts: config.sourcePorts },
      offload: config.offload ? OFFLOAD_BATCHES : undefined,
    });
    cleanups.push(() => forwarder.stop());

    const status = (): DaemonStatus => ({
      node: config.nodeName,
      underlayIp: formatIpv4(config.underlayIp),
      subnet: formatSubnet(config.subnet),
      vtepMac: formatMac(config.vtepMac),
      vni: config.vni,
      vxlanPort: config.vxlanPort,
      tap: tap.name,
      mtu,
      peers: peers.map(describePeer),
      counters: forwarder.counters(),
    });

    const server: Server = await listenControl(config.runDir, (req) => {
      if (req.op === "status") return status();
      throw new Error(`unknown op ${JSON.stringify(req.op)}; valid: status`);
    });
    cleanups.push(() => closeControl(server, config.runDir));

    // Static subnet: confirmed from the start.
    writeHandoff(config.runDir, {
      clusterNetwork: undefined, nodeSubnet: config.subnet, mtu, bridge: POD_BRIDGE,
      controlSocket: controlSocketPath(config.runDir),
    });
    cleanups.push(() => removeHandoff(config.runDir));

    log.info({
      node: config.nodeName, vtepMac: formatMac(config.vtepMac), underlay: `${formatIpv4(config.underlayIp)} (${underlay.value.ifname})`,
      subnet: formatSubnet(config.subnet), vni: config.vni, vxlanPort: config.vxlanPort, tap: tap.name, mtu,
      peers: peers.length, routes: changes, controlSocket: config.runDir, offload: config.offload,
    }, "vxmesh forwarding");

    const failed = new Promise<Error>((resolve) => forwarder.onFailure(resolve));
    let stopping: Promise<void> | undefined;
    return {
      status,
      failed,
      stop: () => (stopping ??= undo()),
    };
  } catch (err) {
    await undo();
    throw err;
  }
}

function describePeer(p: Peer): DaemonStatus["peers"][number] {
  return { name: p.name, underlayIp: formatIpv4(p.underlayIp), subnet: formatSubnet(p.subnet), vtepMac: formatMac(p.vtepMac), path: p.path };
}

function openTap(native: NativeShim, name: string, vnetHdr: boolean): { fd: number; name: string } {
  try {
    return native.tapOpen(name, { vnetHdr });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EBUSY") throw new StartupError(`--tap ${name}: the device is in use by another process`);
    if (code === "EPERM" || code === "EACCES") throw new StartupError(`--tap ${name}: creating a TAP device needs CAP_NET_ADMIN (${code})`);
    if (code === "ENOENT") throw new StartupError("/dev/net/tun is missing: load the tun module (modprobe tun)");
    if (code === "EINVAL") throw new StartupError(`--tap ${name}: a device of that name exists and is not a TAP device`);
    throw err;
  }
}

/**
 * The overlay carries IPv4 only for now; without this the kernel would send IPv6 neighbour
 * discovery and MLD out of the TAP, which the forwarder can only drop.
 */
function disableIpv6(ifname: string, log: Logger): void {
  try {
    writeFileSync(`/proc/sys/net/ipv6/conf/${ifname}/disable_ipv6`, "1");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") log.warn({ err }, "could not disable IPv6 on the TAP");
  }
}

function openUdp(native: NativeShim, config: DaemonConfig): number {
  try {
    return native.udpOpen(config.underlayIp, config.vxlanPort, SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") {
      throw new StartupError(`--vxlan-port ${config.vxlanPort}: UDP ${formatIpv4(config.underlayIp)}:${config.vxlanPort} is already in use (a kernel VXLAN device or another daemon?)`);
    }
    throw err;
  }
}
