// The node's data plane as one unit: the TAP, the underlay sockets, the forwarder thread and
// the kernel state (address, routes, neighbours). The control plane tells it the node's subnet
// and the peers; it applies changes one at a time and removes everything on stop.

import { writeFileSync } from "node:fs";
import { Forwarder } from "../encap/forwarder";
import type { Peer } from "../encap/fdb";
import { loadNative, type NativeShim } from "../encap/native";
import { TUN_F_CSUM, TUN_F_TSO4 } from "../encap/offload";
import { offloadBatches } from "../encap/offload-core";
import { formatIpv4, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";
import { HostPlumbing, diffPeers, type ActualNeighbour, type ActualRoute, type PeerPlan, type PlumbingError, type PlumbingSummary } from "../control/host-plumbing";
import { KernelWatch } from "../control/kernel-watch";
import { CleanupStack } from "./cleanup-stack";
import type { Logger } from "./log";
import type { ChangeTrigger, KernelChanges } from "./status";
import { StartupError } from "./startup-error";
import type { KernelFacts } from "./trace";
import type { BatchHistogram, PeerTraffic } from "../encap/counters";
import { Serial } from "../control/serial";

const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
/** How often the kernel state (routes, neighbours; iptables rules too) is re-checked against what the daemon wants. */
export const RECONCILE_INTERVAL_MS = 10_000;

export interface DataPlaneOptions {
  underlayIp: Ipv4;
  vxlanPort: number;
  vni: Vni;
  tap: string;
  vtepMac: MacAddr;
  mtu: number;
  batch: number;
  sourcePorts: number;
  offload: boolean;
  busyPollUs: number;
}

function noChanges(): KernelChanges {
  return { route: { added: 0, removed: 0 }, neighbour: { added: 0, replaced: 0, removed: 0 } };
}

export class DataPlane {
  private subnet: Subnet | undefined;
  private readonly changes: Record<ChangeTrigger, KernelChanges> = { change: noChanges(), repair: noChanges() };
  private peers: readonly Peer[] = [];
  /** Changes run one after another; each starts from the last one's result. */
  private readonly queue = new Serial();

  private constructor(
    readonly tapName: string,
    readonly mtu: number,
    private readonly vtepMac: MacAddr,
    private readonly forwarder: Forwarder,
    private readonly plumbing: HostPlumbing,
    private readonly cleanups: CleanupStack,
  ) {}

  static async start(o: DataPlaneOptions, log: Logger): Promise<DataPlane> {
    const native = loadNative();
    const cleanups = new CleanupStack(log);
    try {
      const tap = openTap(native, o.tap, o.offload);
      cleanups.push(() => native.close(tap.fd));
      // With checksum and TSO offload on, the kernel hands the TAP 64 KB TCP super-frames and
      // leaves checksums partial; the forwarder segments and completes them.
      if (o.offload) native.tapSetOffload(tap.fd, TUN_F_CSUM | TUN_F_TSO4);
      disableIpv6(tap.name, log);
      const udpFd = openUdp(native, o);
      cleanups.push(() => native.close(udpFd));
      if (o.offload) native.udpSetGro(udpFd, true);
      const sendFds: number[] = [];
      for (let i = 0; i < o.sourcePorts; i++) {
        // Port 0: the kernel picks from its ephemeral range, as it does for its own VXLAN.
        const fd = native.udpOpen(o.underlayIp, 0, 0, SOCKET_BUFFER_BYTES);
        cleanups.push(() => native.close(fd));
        sendFds.push(fd);
      }

      const plumbing = await HostPlumbing.open();
      cleanups.push(() => plumbing.close());
      cleanups.push(() => plumbing.removeAll(tap.name).then(() => undefined));
      try {
        await plumbing.configureTap({ ifname: tap.name, mac: o.vtepMac, mtu: o.mtu, address: undefined });
      } catch (err) {
        throw new StartupError(`configuring ${tap.name}: ${(err as Error).message}`);
      }

      const forwarder = await Forwarder.start({
        tapFd: tap.fd, udpFd, sendFds, peers: [],
        core: { vni: o.vni, port: o.vxlanPort, mtu: o.mtu, batch: o.batch, sourcePorts: o.sourcePorts },
        offload: o.offload ? offloadBatches(o.batch) : undefined, busyPollUs: o.busyPollUs,
      });
      cleanups.push(() => forwarder.stop());
      const dp = new DataPlane(tap.name, o.mtu, o.vtepMac, forwarder, plumbing, cleanups);
      const repair = (): void => {
        void dp.reconcile().then((sum) => {
          if (sum.routesAdded + sum.routesRemoved + sum.neighboursSet + sum.neighboursRemoved > 0) {
            log.warn(sum, "kernel state had drifted from what vxmesh owns; repaired");
          }
        }, (err: unknown) => log.warn({ err }, "reconcile failed"));
      };
      // Someone deleting our route or neighbour is repaired within a moment (netlink events);
      // the periodic pass is the safety net for events the socket missed.
      const watch = await KernelWatch.open(tap.name, repair);
      cleanups.push(() => watch.close());
      const periodic = setInterval(repair, RECONCILE_INTERVAL_MS);
      cleanups.push(() => clearInterval(periodic));
      return dp;
    } catch (err) {
      await cleanups.unwind();
      throw err;
    }
  }

  /** Gives the TAP the node subnet's network address (/32); undefined removes it. */
  setSubnet(subnet: Subnet | undefined): Promise<void> {
    return this.serial(async () => {
      this.subnet = subnet;
      await this.plumbing.configureTap({ ifname: this.tapName, mac: this.vtepMac, mtu: this.mtu, address: subnet?.network });
      // Changing the address can take routes through the TAP with it: put them back.
      await this.tracked("change", () => this.plumbing.setPeers(this.tapName, this.peers.map(toRoute)));
    });
  }

  /** Forwards to exactly these peers: forwarding table, routes and neighbours. */
  setPeers(peers: readonly Peer[]): Promise<PlumbingSummary> {
    return this.serial(async () => {
      this.peers = peers;
      await this.forwarder.setPeers(peers);
      return this.tracked("change", () => this.plumbing.setPeers(this.tapName, peers.map(toRoute)));
    });
  }

  /** Re-applies the current peers, repairing anything removed behind our back. */
  reconcile(): Promise<PlumbingSummary> {
    return this.serial(() => this.tracked("repair", () => this.plumbing.setPeers(this.tapName, this.peers.map(toRoute))));
  }

  /** Kernel changes made so far, by what triggered them. */
  kernelChanges(): Record<ChangeTrigger, KernelChanges> {
    return structuredClone(this.changes);
  }

  /** Our routes and neighbours as the kernel holds them now, and how they differ from what we want. */
  async kernelState(): Promise<{ routes: ActualRoute[]; neighbours: ActualNeighbour[]; drift: PeerPlan }> {
    const routes = await this.plumbing.listRoutes(this.tapName);
    const neighbours = await this.plumbing.listNeighbours(this.tapName);
    return { routes, neighbours, drift: diffPeers(this.peers.map(toRoute), routes, neighbours) };
  }

  /** What the kernel does with `ip` now, and (for a remote owner) with its underlay address. */
  async kernelFacts(ip: Ipv4, ownerUnderlay: Ipv4 | undefined): Promise<KernelFacts> {
    const { routes, neighbours } = await this.kernelState();
    const lookup = await this.plumbing.lookupRoute(ip, true).catch((err: unknown) => ({ error: lookupFailure(err) }));
    let underlayPath: KernelFacts["underlayPath"];
    if (ownerUnderlay !== undefined) {
      try {
        const l = await this.plumbing.lookupRoute(ownerUnderlay, false);
        const deviceMtu = l.oif === null ? undefined : (await this.plumbing.linkByIndex(l.oif)).mtu;
        underlayPath = { lookup: l, deviceMtu };
      } catch (err) {
        underlayPath = { error: lookupFailure(err) };
      }
    }
    return { routes, neighbours, lookup, ...(underlayPath === undefined ? {} : { underlayPath }) };
  }

  peerTraffic(name: string): PeerTraffic | undefined {
    return this.forwarder.peerTraffic(name);
  }

  batchSizes(): { tap: BatchHistogram; underlay: BatchHistogram } {
    return this.forwarder.batchSizes();
  }

  /** Runs a plumbing pass and counts what it changed, also when part of it failed. */
  private async tracked(trigger: ChangeTrigger, pass: () => Promise<PlumbingSummary>): Promise<PlumbingSummary> {
    try {
      return this.count(trigger, await pass());
    } catch (err) {
      const partial = (err as PlumbingError).summary;
      if (partial !== undefined) this.count(trigger, partial);
      throw err;
    }
  }

  private count(trigger: ChangeTrigger, s: PlumbingSummary): PlumbingSummary {
    const c = this.changes[trigger];
    c.route.added += s.routesAdded;
    c.route.removed += s.routesRemoved;
    c.neighbour.added += s.neighboursSet - s.neighboursReplaced;
    c.neighbour.replaced += s.neighboursReplaced;
    c.neighbour.removed += s.neighboursRemoved;
    return s;
  }

  get currentPeers(): readonly Peer[] {
    return this.peers;
  }

  get currentSubnet(): Subnet | undefined {
    return this.subnet;
  }

  counters(): Record<string, number> {
    return this.forwarder.counters();
  }

  onFailure(callback: (err: Error) => void): void {
    this.forwarder.onFailure(callback);
  }

  /** Removes everything: forwarder stopped, routes, neighbours and address removed, TAP closed. */
  stop(): Promise<void> {
    return this.queue.run(() => this.cleanups.unwind());
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    return this.queue.run(fn);
  }
}

/** The kernel answers a route lookup that hits a route of a dropping type with that type's errno. */
function lookupFailure(err: unknown): string {
  const what: Record<string, string> = {
    EINVAL: "a blackhole route drops it", EHOSTUNREACH: "an unreachable route rejects it", EACCES: "a prohibit route rejects it",
    ENETUNREACH: "no route matches",
  };
  const code = (err as { code?: string }).code;
  const hint = code === undefined ? undefined : what[code];
  return hint === undefined ? (err as Error).message : `${hint} (${code})`;
}

function toRoute(p: Peer): { subnet: Subnet; vtepMac: MacAddr } {
  return { subnet: p.subnet, vtepMac: p.vtepMac };
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

function openUdp(native: NativeShim, o: DataPlaneOptions): number {
  try {
    return native.udpOpen(o.underlayIp, o.vxlanPort, SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") {
      throw new StartupError(`--vxlan-port ${o.vxlanPort}: UDP ${formatIpv4(o.underlayIp)}:${o.vxlanPort} is already in use (a kernel VXLAN device or another daemon?)`);
    }
    throw err;
  }
}
