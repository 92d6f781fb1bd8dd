// Kernel state owned by the daemon, through the netlink layer (control/netlink/; no `ip` here).
//
// What the daemon owns (docs/DESIGN.md §1, §4 "Kernel state"):
// - its TAP device: MAC, MTU, admin state, and its IPv4 address <node subnet network>/32;
// - one route per remote node in the main table,
//     <peer subnet> via <peer subnet network> dev <tap> onlink proto 118
//   tagged with VXMESH_RTPROT, so routes of any other protocol are never touched;
// - one permanent neighbour per remote node on the TAP,
//     <peer subnet network> lladdr <peer VTEP MAC> dev <tap> nud permanent.
//
// Pure core, thin shell: `diffPeers` computes what to change from desired and actual lists and
// does no I/O; `HostPlumbing` dumps the kernel state, asks `diffPeers`, and applies the plan.
// The rtnetlink socket works in the network namespace of the process that opened it.

import {
  formatIpv4,
  formatMac,
  formatSubnet,
  prefixMask,
  type Ipv4,
  type MacAddr,
  type Subnet,
} from "../encap/types";
import { Rtnl, NetlinkError, RTN_UNICAST, RT_TABLE_MAIN, VXMESH_RTPROT, errnoCode, type LinkInfo } from "./netlink";
import { Serial } from "./serial";

export { VXMESH_RTPROT } from "./netlink";

// ---------------------------------------------------------------------------------------------
// Public shapes

export interface TapSettings {
  ifname: string;
  mac: MacAddr;
  mtu: number;
  /** The node subnet's network address, configured as <address>/32; undefined while the node has no subnet. */
  address: Ipv4 | undefined;
}

export interface PeerRoute {
  /** The remote node's pod subnet. */
  subnet: Subnet;
  /** The remote node's VTEP MAC (its TAP's MAC). */
  vtepMac: MacAddr;
}

export interface PlumbingSummary {
  routesAdded: number;
  routesRemoved: number;
  /** Neighbours created or replaced. */
  neighboursSet: number;
  /** Of neighboursSet, those that replaced an entry with another MAC (or none). */
  neighboursReplaced: number;
  neighboursRemoved: number;
}

export interface RemoveAllSummary extends PlumbingSummary {
  addressesRemoved: number;
  /** False when the device no longer existed (everything on it went with it). */
  deviceFound: boolean;
}

/** A route the kernel holds that is ours: protocol VXMESH_RTPROT, main table, out the TAP. */
export interface ActualRoute {
  dst: Subnet;
  /** RTA_GATEWAY, null when the route has none. */
  gateway: Ipv4 | null;
  onlink: boolean;
  /** RTA_PRIORITY (metric); 0 when absent. */
  priority: number;
  tos: number;
  /** rtm_type (1 = unicast). */
  type: number;
}

/** A permanent neighbour on the TAP. */
export interface ActualNeighbour {
  ip: Ipv4;
  /** null when the entry has no link-layer address. */
  mac: MacAddr | null;
}

/** What the kernel does with a packet to one address (RTM_GETROUTE, like `ip route get`). */
export interface RouteLookup {
  /** With fibMatch, the matching FIB entry's prefix; else the address itself (/32). */
  dst: Subnet;
  gateway: Ipv4 | null;
  /** Output device; null for routes without one (unreachable, multipath). */
  oif: number | null;
  ifname: string | null;
  protocol: number;
  /** rtm_type: 1 unicast, 2 local, 6 prohibit, 7 unreachable … */
  type: number;
  table: number;
  onlink: boolean;
  /** A path MTU the kernel learned for this destination (a cached exception); undefined when none. */
  pathMtu: number | undefined;
}

export interface PeerPlan {
  /** Routes to add: `<subnet> via <subnet.network> onlink`. */
  addRoutes: Subnet[];
  /** Routes of ours that are not wanted (stale peers, or a wanted prefix in the wrong shape). */
  removeRoutes: ActualRoute[];
  /** Neighbours to create or replace (NLM_F_CREATE|NLM_F_REPLACE). */
  setNeighbours: { ip: Ipv4; mac: MacAddr }[];
  /** Permanent neighbours on the TAP that are not wanted. */
  removeNeighbours: ActualNeighbour[];
}

/** The Error thrown when some kernel operations failed; the rest were still applied. */
export interface PlumbingError extends Error {
  /** errno name of the (first) failure, e.g. "EEXIST". */
  code?: string;
  failures?: Error[];
  summary?: PlumbingSummary;
}

// ---------------------------------------------------------------------------------------------
// Pure core

function subnetKey(s: Subnet): string {
  return formatSubnet(s);
}

/**
 * What must change so that our routes and neighbours on the TAP are exactly `desired`.
 * `actualRoutes` are the kernel's routes that are ours (protocol VXMESH_RTPROT, main table,
 * out the TAP) and `actualNeighbours` the permanent neighbours on the TAP; nothing else is
 * given to this function, so nothing else can end up in a removal.
 *
 * Throws when `desired` contradicts itself (a subnet with host bits, or one network address
 * asked to carry two different MACs).
 */
export function diffPeers(
  desired: readonly PeerRoute[],
  actualRoutes: readonly ActualRoute[],
  actualNeighbours: readonly ActualNeighbour[],
): PeerPlan {
  const wantRoutes = new Map<string, Subnet>();
  const wantNeigh = new Map<number, MacAddr>();
  for (const p of desired) {
    const { subnet, vtepMac } = p;
    if (subnet.family !== 4 || !Number.isInteger(subnet.prefixLen) || subnet.prefixLen < 0 || subnet.prefixLen > 32) {
      throw new Error(`peer subnet ${JSON.stringify(subnet)} is not an IPv4 subnet`);
    }
    if (((subnet.network & ~prefixMask(subnet.prefixLen)) >>> 0) !== 0) {
      throw new Error(`peer subnet ${formatSubnet(subnet)} has host bits set`);
    }
    wantRoutes.set(subnetKey(subnet), subnet);
    const prev = wantNeigh.get(subnet.network);
    if (prev !== undefined && prev !== vtepMac) {
      throw new Error(
        `peers disagree on ${formatIpv4(subnet.network)}: VTEP MAC ${formatMac(prev)} and ${formatMac(vtepMac)}`,
      );
    }
    wantNeigh.set(subnet.network, vtepMac);
  }

  const kept = new Set<string>();
  const removeRoutes: ActualRoute[] = [];
  for (const r of actualRoutes) {
    const key = subnetKey(r.dst);
    const want = wantRoutes.get(key);
    const exact =
      want !== undefined &&
      !kept.has(key) &&
      r.gateway === want.network &&
      r.onlink &&
      r.priority === 0 &&
      r.tos === 0 &&
      r.type === RTN_UNICAST;
    if (exact) kept.add(key);
    else removeRoutes.push(r);
  }
  const addRoutes = [...wantRoutes.entries()].filter(([k]) => !kept.has(k)).map(([, s]) => s);

  const haveNeigh = new Map<number, MacAddr | null>();
  for (const n of actualNeighbours) haveNeigh.set(n.ip, n.mac);
  const setNeighbours: { ip: Ipv4; mac: MacAddr }[] = [];
  for (const [ip, mac] of wantNeigh) {
    if (haveNeigh.get(ip) !== mac) setNeighbours.push({ ip: ip as Ipv4, mac });
  }
  const seen = new Set<number>();
  const removeNeighbours = actualNeighbours.filter((n) => {
    if (wantNeigh.has(n.ip) || seen.has(n.ip)) return false;
    seen.add(n.ip);
    return true;
  });

  return { addRoutes, removeRoutes, setNeighbours, removeNeighbours };
}

export function describeRoute(dst: Subnet, gateway: Ipv4 | null, ifname: string): string {
  return `${formatSubnet(dst)}${gateway === null ? "" : ` via ${formatIpv4(gateway)}`} dev ${ifname}`;
}

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * Wraps a failure into "<what>: <reason>" (the strerror text for a refused request), keeping
 * the errno name as `code`.
 */
function wrap(what: string, e: unknown): PlumbingError {
  const reason = e instanceof NetlinkError ? e.reason : e instanceof Error ? e.message : String(e);
  const err: PlumbingError = new Error(`${what}: ${reason}`, { cause: e });
  const code = errnoCode(e);
  if (code !== undefined) err.code = code;
  return err;
}

/** Runs `op`, turning a failure into wrap(what, …). */
async function wrapped<T>(what: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (e) {
    throw wrap(what, e);
  }
}

const GONE = new Set(["ENOENT", "ESRCH", "ENODEV", "EADDRNOTAVAIL", "ENXIO"]);

function gone(e: unknown): boolean {
  return GONE.has(errnoCode(e) ?? "");
}

function combine(failures: Error[], summary: PlumbingSummary): PlumbingError {
  const first = failures[0] as PlumbingError;
  const err: PlumbingError =
    failures.length === 1
      ? new Error(first.message, { cause: first.cause })
      : new Error(`${failures.length} kernel changes failed: ${failures.map((f) => f.message).join("; ")}`);
  if (first.code !== undefined) err.code = first.code;
  err.failures = failures;
  err.summary = summary;
  return err;
}

function emptySummary(): PlumbingSummary {
  return { routesAdded: 0, routesRemoved: 0, neighboursSet: 0, neighboursReplaced: 0, neighboursRemoved: 0 };
}

/**
 * The changes of one plan as they are made: each one is attempted, counted when it succeeds,
 * and collected when it fails, so one failure does not stop the others.
 */
class PlanRun {
  readonly summary = emptySummary();
  readonly failures: Error[] = [];

  /** With `toleratesGone`, a failure saying the thing is already gone is no failure. */
  async attempt(what: string, op: () => Promise<void>, count: (s: PlumbingSummary) => void, toleratesGone = false): Promise<void> {
    try {
      await op();
      count(this.summary);
    } catch (e) {
      if (toleratesGone && gone(e)) return;
      this.failures.push(wrap(what, e));
    }
  }

  /** The summary; throws the failures combined unless there are none (or, with `tolerateGone`, only gone ones). */
  finish(tolerateGone: boolean): PlumbingSummary {
    if (this.failures.length > 0 && !(tolerateGone && this.failures.every(gone))) throw combine(this.failures, this.summary);
    return this.summary;
  }
}

// ---------------------------------------------------------------------------------------------
// Shell

export class HostPlumbing {
  private readonly ops = new Serial();
  private closed = false;

  private constructor(private readonly nl: Rtnl) {}

  /** Opens an rtnetlink socket in the calling process's network namespace. */
  static async open(): Promise<HostPlumbing> {
    let nl: Rtnl;
    try {
      nl = Rtnl.open();
    } catch (e) {
      throw wrap("opening rtnetlink socket", e);
    }
    return new HostPlumbing(nl);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.ops.idle();
    this.nl.close();
  }

  /**
   * Gives the (already created) TAP its MAC and MTU, sets it up, and gives it <address>/32
   * (NLM_F_REPLACE: no error when it is already there); any other IPv4 address on the TAP is
   * removed. Only what differs is changed. Kernel note: a MAC change flushes every neighbour on
   * the device, so call setPeers after this.
   */
  configureTap(settings: TapSettings): Promise<void> {
    return this.serial(() => this.doConfigureTap(settings));
  }

  /** Makes our routes and permanent neighbours on `ifname` exactly `peers`. */
  setPeers(ifname: string, peers: readonly PeerRoute[]): Promise<PlumbingSummary> {
    return this.serial(() => this.doSetPeers(ifname, peers));
  }

  /**
   * Shutdown: removes our routes and permanent neighbours on the device and its IPv4
   * addresses (the TAP is the daemon's own). Things already gone, including the device, are fine.
   * Kernel note: once the last IPv4 address of a device goes, the kernel itself flushes every
   * route out of that device, including routes of other protocols that someone put on the TAP.
   */
  removeAll(ifname: string): Promise<RemoveAllSummary> {
    return this.serial(() => this.doRemoveAll(ifname));
  }

  /** Our routes on the device as the kernel holds them (for status and tests). */
  listRoutes(ifname: string): Promise<ActualRoute[]> {
    return this.serial(async () => this.ourRoutes(await this.ifindex(ifname)));
  }

  /** Permanent neighbours on the device. */
  listNeighbours(ifname: string): Promise<ActualNeighbour[]> {
    return this.serial(async () => this.permanentNeighbours(await this.ifindex(ifname)));
  }

  /**
   * The route the kernel uses for `ip` right now: with `fibMatch` the FIB entry that matches
   * (its prefix and protocol, `ip route get fibmatch`), else the resolved route with any
   * learned path MTU. Throws with code ENETUNREACH (etc.) when the kernel has no route.
   */
  lookupRoute(ip: Ipv4, fibMatch: boolean): Promise<RouteLookup> {
    return this.serial(() => this.doLookupRoute(ip, fibMatch));
  }

  /** A device's name and MTU by index. */
  linkByIndex(index: number): Promise<{ ifname: string; mtu: number | undefined }> {
    return this.serial(async () => {
      const what = `looking up link #${index}`;
      const link = await wrapped(what, () => this.nl.getLink(index, what));
      if (link === undefined) throw new Error(`${what}: no answer from the kernel`);
      return { ifname: link.name, mtu: link.mtu };
    });
  }

  // -- operations ------------------------------------------------------------------------------

  private async doLookupRoute(ip: Ipv4, fibMatch: boolean): Promise<RouteLookup> {
    const what = `looking up the route to ${formatIpv4(ip)}`;
    const r = await wrapped(what, () => this.nl.lookupRoute(ip, fibMatch, what));
    if (r === undefined) throw new Error(`${what}: no answer from the kernel`);
    const oif = r.oif ?? null;
    let ifname: string | null = null;
    if (oif !== null) ifname = (await this.nl.getLink(oif, `looking up link #${oif}`).catch(() => undefined))?.name ?? null;
    return {
      dst: { family: 4, network: r.dst, prefixLen: r.dstLen },
      gateway: r.gateway ?? null,
      oif,
      ifname,
      protocol: r.protocol,
      type: r.type,
      table: r.table,
      onlink: r.onlink,
      pathMtu: r.pathMtu,
    };
  }

  private async doConfigureTap(s: TapSettings): Promise<void> {
    const { ifname, mac, mtu, address } = s;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) {
      throw new Error(`configuring ${ifname}: MTU ${mtu} is not an integer from 68 to 65535`);
    }
    const link = await this.link(ifname);
    const index = link.index;
    // Only what differs is sent: setting the link address, even to the same value, makes the
    // kernel flush every neighbour on the device, permanent ones included.
    const change = { mac: link.mac !== mac ? mac : undefined, mtu: link.mtu !== mtu ? mtu : undefined, up: true };
    if (change.mac !== undefined || change.mtu !== undefined || !link.up) {
      const what = `setting link ${ifname} address ${formatMac(mac)} mtu ${mtu} up`;
      await wrapped(what, () => this.nl.configureLink(index, change, what));
    }

    if (address !== undefined) {
      const what = `adding address ${formatIpv4(address)}/32 to ${ifname}`;
      await wrapped(what, () => this.nl.addAddress(index, address, 32, true, what));
    }

    // The TAP carries exactly that address: drop a stale one (say, from an earlier subnet).
    for (const a of await this.addresses(index)) {
      if (a.local === address && a.prefixLen === 32) continue;
      await this.deleteAddress(index, ifname, a.local, a.prefixLen, true);
    }
  }

  private async doSetPeers(ifname: string, peers: readonly PeerRoute[]): Promise<PlumbingSummary> {
    const index = await this.ifindex(ifname);
    const neighbours = await this.permanentNeighbours(index);
    const plan = diffPeers(peers, await this.ourRoutes(index), neighbours);
    return this.apply(index, ifname, plan, false, new Set(neighbours.map((n) => n.ip)));
  }

  private async doRemoveAll(ifname: string): Promise<RemoveAllSummary> {
    let index: number;
    try {
      index = await this.ifindex(ifname);
    } catch (e) {
      if (errnoCode(e) === "ENODEV") return { ...emptySummary(), addressesRemoved: 0, deviceFound: false };
      throw e;
    }
    const plan = diffPeers([], await this.ourRoutes(index), await this.permanentNeighbours(index));
    const failures: Error[] = [];
    let summary = emptySummary();
    try {
      summary = await this.apply(index, ifname, plan, true);
    } catch (e) {
      const pe = e as PlumbingError;
      failures.push(...(pe.failures ?? [pe]));
      summary = pe.summary ?? summary;
    }
    let addressesRemoved = 0;
    for (const a of await this.addresses(index).catch((e: unknown) => {
      if (gone(e)) return [];
      throw wrap(`listing addresses of ${ifname}`, e);
    })) {
      try {
        if (await this.deleteAddress(index, ifname, a.local, a.prefixLen, true)) addressesRemoved++;
      } catch (e) {
        failures.push(e as Error);
      }
    }
    if (failures.length > 0) throw combine(failures, summary);
    return { ...summary, addressesRemoved, deviceFound: true };
  }

  /** Applies a plan: neighbours first (a new route never resolves by ARP), stale routes before new ones. */
  private async apply(index: number, ifname: string, plan: PeerPlan, tolerateGone: boolean, existingNeighbours: ReadonlySet<number> = new Set()): Promise<PlumbingSummary> {
    const run = new PlanRun();
    await this.setNeighbours(run, index, ifname, plan.setNeighbours, existingNeighbours);
    await this.removeRoutes(run, index, ifname, plan.removeRoutes);
    await this.addRoutes(run, index, ifname, plan.addRoutes);
    await this.removeNeighbours(run, index, ifname, plan.removeNeighbours);
    return run.finish(tolerateGone);
  }

  /** Creates or replaces permanent neighbours; one that existed before (with any MAC) counts as replaced too. */
  private async setNeighbours(run: PlanRun, index: number, ifname: string, set: PeerPlan["setNeighbours"], existing: ReadonlySet<number>): Promise<void> {
    for (const n of set) {
      const what = `setting neighbour ${formatIpv4(n.ip)} lladdr ${formatMac(n.mac)} dev ${ifname} nud permanent`;
      await run.attempt(what, () => this.nl.setPermanentNeighbour(index, n.ip, n.mac, what), (s) => {
        s.neighboursSet++;
        if (existing.has(n.ip)) s.neighboursReplaced++;
      });
    }
  }

  private async removeRoutes(run: PlanRun, index: number, ifname: string, routes: readonly ActualRoute[]): Promise<void> {
    for (const r of routes) {
      const what = `removing route ${describeRoute(r.dst, r.gateway, ifname)} proto ${VXMESH_RTPROT}`;
      await run.attempt(
        what,
        () => this.nl.deleteRoute({
          dst: r.dst.network, dstLen: r.dst.prefixLen, tos: r.tos, protocol: VXMESH_RTPROT, oif: index,
          gateway: r.gateway ?? undefined, priority: r.priority,
        }, what),
        (s) => s.routesRemoved++,
        true,
      );
    }
  }

  /** Adds `<subnet> via <subnet network> dev <tap> onlink proto 118` for each subnet. */
  private async addRoutes(run: PlanRun, index: number, ifname: string, subnets: readonly Subnet[]): Promise<void> {
    for (const dst of subnets) {
      const what = `adding route ${describeRoute(dst, dst.network, ifname)}`;
      await run.attempt(
        what,
        () => this.nl.addRoute({ dst: dst.network, dstLen: dst.prefixLen, gateway: dst.network, oif: index, protocol: VXMESH_RTPROT, onlink: true }, what),
        (s) => s.routesAdded++,
      );
    }
  }

  private async removeNeighbours(run: PlanRun, index: number, ifname: string, neighbours: readonly ActualNeighbour[]): Promise<void> {
    for (const n of neighbours) {
      const what = `removing neighbour ${formatIpv4(n.ip)} dev ${ifname}`;
      await run.attempt(what, () => this.nl.deleteNeighbour(index, n.ip, what), (s) => s.neighboursRemoved++, true);
    }
  }

  // -- kernel reads ----------------------------------------------------------------------------

  private async ifindex(ifname: string): Promise<number> {
    return (await this.link(ifname)).index;
  }

  private async link(ifname: string): Promise<LinkInfo> {
    const what = `looking up link ${ifname}`;
    const link = await wrapped(what, () => this.nl.getLink(ifname, what));
    if (link === undefined) throw new Error(`${what}: no answer from the kernel`);
    return link;
  }

  /** Our routes: protocol VXMESH_RTPROT, main table, out of link `index`. */
  private async ourRoutes(index: number): Promise<ActualRoute[]> {
    const routes = await wrapped("listing IPv4 routes", () => this.nl.routes("listing IPv4 routes"));
    return routes
      .filter((r) => r.table === RT_TABLE_MAIN && r.protocol === VXMESH_RTPROT && r.oif === index)
      .map((r) => ({
        dst: { family: 4, network: r.dst, prefixLen: r.dstLen },
        gateway: r.gateway ?? null,
        onlink: r.onlink,
        priority: r.priority ?? 0,
        tos: r.tos,
        type: r.type,
      }));
  }

  private async permanentNeighbours(index: number): Promise<ActualNeighbour[]> {
    const neighbours = await wrapped("listing IPv4 neighbours", () => this.nl.neighbours("listing IPv4 neighbours"));
    return neighbours.filter((n) => n.ifindex === index && n.permanent).map((n) => ({ ip: n.ip, mac: n.mac ?? null }));
  }

  private async addresses(index: number): Promise<{ local: Ipv4; prefixLen: number }[]> {
    return (await this.nl.addresses("listing IPv4 addresses")).filter((a) => a.index === index);
  }

  /** Deletes one address; returns false when it was already gone. */
  private async deleteAddress(index: number, ifname: string, local: Ipv4, prefixLen: number, tolerateGone: boolean): Promise<boolean> {
    const what = `removing address ${formatIpv4(local)}/${prefixLen} from ${ifname}`;
    try {
      await this.nl.deleteAddress(index, local, prefixLen, what);
      return true;
    } catch (e) {
      if (tolerateGone && gone(e)) return false;
      throw wrap(what, e);
    }
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error("host plumbing: the netlink socket is closed"));
    return this.ops.run(fn);
  }
}
