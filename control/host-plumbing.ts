// Kernel state owned by the daemon, through rtnetlink (the `netlink` npm package; no `ip` here).
//
// What the daemon owns (DESIGN.md §1, §4 "Kernel state"):
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
//
// Notes on netlink@0.3.0 (what this file relies on):
// - addresses and MACs are raw Buffers in attributes (4 bytes network order / 6 bytes);
// - RTNH_F_ONLINK (4) has no name in `RouteFlags`; it goes through `flags.__unknown`;
// - parsed enums come back as names when known ("UNICAST", "LINK") and as numbers otherwise
//   (protocol 118 stays 118, but 4 becomes "STATIC"): routes are read through rtnl-values.ts;
// - a rejected request surfaces as `Error("Request rejected: EEXIST")` without an errno, so
//   requests go through the lower `NetlinkSocket.request` with `checkError: false` and the
//   NLMSG_ERROR payload is decoded here into `code` and a strerror-style message.

import { getSystemErrorMap, getSystemErrorName } from "node:util";
import {
  AttrStream,
  FlagsNew,
  createRtNetlink,
  parseError,
  rt,
  type NetlinkMessage,
  type RtNetlinkSocket,
} from "netlink";
import type { LinkAttrs } from "netlink/dist/rt/ifla";
import {
  formatIpv4,
  formatMac,
  formatSubnet,
  prefixMask,
  readMac,
  writeMac,
  type Ipv4,
  type MacAddr,
  type Subnet,
} from "../encap/types";
import { AF_INET, bufIpv4, routeProtocol, routeTable, routeType } from "./rtnl-values";

/** vxmesh's route protocol number (rtm_protocol); `ip route show proto 118`. */
export const VXMESH_RTPROT = 118;

const RT_TABLE_MAIN = 254;
const RTN_UNICAST = 1;
const RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_NOWHERE = 255;
const RTNH_F_ONLINK = 4;
const NUD_PERMANENT = 0x80;
const NLMSG_ERROR = 2;
const NLM_F_DUMP = 0x300;

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

// strerror(3) texts for what rtnetlink answers here; libuv's texts are the fallback.
const STRERROR: Record<string, string> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  ESRCH: "No such process",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  E2BIG: "Argument list too long",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  ENODEV: "No such device",
  EINVAL: "Invalid argument",
  ENOSPC: "No space left on device",
  ERANGE: "Numerical result out of range",
  EMSGSIZE: "Message too long",
  EPROTONOSUPPORT: "Protocol not supported",
  EOPNOTSUPP: "Operation not supported",
  EAFNOSUPPORT: "Address family not supported by protocol",
  EADDRINUSE: "Address already in use",
  EADDRNOTAVAIL: "Cannot assign requested address",
  ENETDOWN: "Network is down",
  ENETUNREACH: "Network is unreachable",
  ENOBUFS: "No buffer space available",
  EHOSTUNREACH: "No route to host",
};

class NetlinkError extends Error {
  constructor(
    readonly errno: number,
    readonly code: string,
  ) {
    super(STRERROR[code] ?? getSystemErrorMap().get(errno)?.[1] ?? code);
  }
}

function errnoError(errno: number): NetlinkError {
  const neg = errno > 0 ? -errno : errno;
  let code = `errno ${-neg}`;
  try {
    code = getSystemErrorName(neg);
  } catch {
    /* unknown errno: keep the number */
  }
  return new NetlinkError(neg, code);
}

function codeOf(e: unknown): string | undefined {
  return e instanceof NetlinkError ? e.code : (e as { code?: unknown })?.code as string | undefined;
}

/** Wraps a failure into "<what>: <reason>", keeping the errno name as `code`. */
function wrap(what: string, e: unknown): PlumbingError {
  const reason = e instanceof Error ? e.message : String(e);
  const err: PlumbingError = new Error(`${what}: ${reason}`, { cause: e });
  const code = codeOf(e);
  if (code !== undefined) err.code = code;
  return err;
}

const GONE = new Set(["ENOENT", "ESRCH", "ENODEV", "EADDRNOTAVAIL", "ENXIO"]);

// ---------------------------------------------------------------------------------------------
// Buffers

function ipv4Buf(ip: Ipv4 | number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ip >>> 0, 0);
  return b;
}

function macBuf(mac: MacAddr): Buffer {
  const b = Buffer.alloc(6);
  writeMac(b, 0, mac);
  return b;
}

function bufMac(b: Buffer | undefined): MacAddr | null {
  if (b === undefined || b.length !== 6) return null;
  return readMac(b, 0);
}

function routeFlagBits(f: rt.RouteFlags | undefined): number {
  return f === undefined ? 0 : rt.formatRouteFlags(f);
}

// ---------------------------------------------------------------------------------------------
// Shell

type Formatter = (out: AttrStream) => void;

export class HostPlumbing {
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(private readonly sock: RtNetlinkSocket) {}

  /** Opens an rtnetlink socket in the calling process's network namespace. */
  static async open(): Promise<HostPlumbing> {
    let sock: RtNetlinkSocket;
    try {
      sock = createRtNetlink();
    } catch (e) {
      throw wrap("opening rtnetlink socket", e);
    }
    return new HostPlumbing(sock);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.chain.catch(() => undefined);
    this.sock.socket.close();
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
      let msgs: rt.Message[];
      try {
        msgs = await this.request(rt.MessageType.GETLINK, (out) =>
          rt.formatLinkMessage({ kind: "link", data: { index }, attrs: {} }, out),
        );
      } catch (e) {
        throw wrap(`looking up link #${index}`, e);
      }
      const link = msgs.find((m): m is rt.LinkMessage => m.kind === "link");
      if (link?.attrs.ifname === undefined) throw new Error(`looking up link #${index}: no answer from the kernel`);
      return { ifname: link.attrs.ifname, mtu: link.attrs.mtu };
    });
  }

  // -- operations ------------------------------------------------------------------------------

  private async doLookupRoute(ip: Ipv4, fibMatch: boolean): Promise<RouteLookup> {
    let msgs: rt.Message[];
    try {
      msgs = await this.request(rt.MessageType.GETROUTE, (out) =>
        rt.formatRouteMessage({
          kind: "route",
          data: { family: AF_INET, dstLen: 32, flags: fibMatch ? { fibMatch: true } : {} },
          attrs: { dst: ipv4Buf(ip) },
        }, out),
      );
    } catch (e) {
      throw wrap(`looking up the route to ${formatIpv4(ip)}`, e);
    }
    const m = msgs.find((x): x is rt.RouteMessage => x.kind === "route");
    if (m === undefined) throw new Error(`looking up the route to ${formatIpv4(ip)}: no answer from the kernel`);
    const oif = m.attrs.oif ?? null;
    let ifname: string | null = null;
    if (oif !== null) {
      const links = await this.request(rt.MessageType.GETLINK, (out) =>
        rt.formatLinkMessage({ kind: "link", data: { index: oif }, attrs: {} }, out)).catch((): rt.Message[] => []);
      ifname = links.find((l): l is rt.LinkMessage => l.kind === "link")?.attrs.ifname ?? null;
    }
    const mtu = m.attrs.metrics?.mtu;
    return {
      dst: { family: 4, network: (bufIpv4(m.attrs.dst) ?? 0) as Ipv4, prefixLen: m.data.dstLen ?? 0 },
      gateway: bufIpv4(m.attrs.gateway),
      oif,
      ifname,
      protocol: routeProtocol(m),
      type: routeType(m),
      table: routeTable(m),
      onlink: (routeFlagBits(m.data.flags) & RTNH_F_ONLINK) !== 0,
      // RTAX_MTU is a host-order u32; every platform we run on is little-endian.
      pathMtu: mtu !== undefined && mtu.length === 4 ? mtu.readUInt32LE(0) : undefined,
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
    const linkAttrs: LinkAttrs = {};
    if (link.mac !== mac) linkAttrs.address = macBuf(mac);
    if (link.mtu !== mtu) linkAttrs.mtu = mtu;
    if (linkAttrs.address !== undefined || linkAttrs.mtu !== undefined || !link.up) {
      try {
        await this.request(rt.MessageType.SETLINK, (out) =>
          rt.formatLinkMessage(
            { kind: "link", data: { family: 0, index, flags: { up: true }, change: { up: true } }, attrs: linkAttrs },
            out,
          ),
        );
      } catch (e) {
        throw wrap(`setting link ${ifname} address ${formatMac(mac)} mtu ${mtu} up`, e);
      }
    }

    if (address !== undefined) await this.addTapAddress(index, ifname, address);

    // The TAP carries exactly that address: drop a stale one (say, from an earlier subnet).
    for (const a of await this.addresses(index)) {
      if (a.local === address && a.prefixLen === 32) continue;
      await this.deleteAddress(index, ifname, a.local, a.prefixLen, true);
    }
  }

  private async addTapAddress(index: number, ifname: string, address: Ipv4): Promise<void> {
    const what = `adding address ${formatIpv4(address)}/32 to ${ifname}`;
    try {
      await this.request(
        rt.MessageType.NEWADDR,
        (out) =>
          rt.formatAddressMessage(
            {
              kind: "address",
              data: { family: AF_INET, prefixlen: 32, index, scope: RT_SCOPE_UNIVERSE },
              attrs: { local: ipv4Buf(address), address: ipv4Buf(address) },
            },
            out,
          ),
        FlagsNew.CREATE | FlagsNew.REPLACE,
      );
    } catch (e) {
      throw wrap(what, e);
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
      if (codeOf(e) === "ENODEV") {
        return { routesAdded: 0, routesRemoved: 0, neighboursSet: 0, neighboursReplaced: 0, neighboursRemoved: 0, addressesRemoved: 0, deviceFound: false };
      }
      throw e;
    }
    const plan = diffPeers([], await this.ourRoutes(index), await this.permanentNeighbours(index));
    const failures: Error[] = [];
    let summary: PlumbingSummary = { routesAdded: 0, routesRemoved: 0, neighboursSet: 0, neighboursReplaced: 0, neighboursRemoved: 0 };
    try {
      summary = await this.apply(index, ifname, plan, true);
    } catch (e) {
      const pe = e as PlumbingError;
      failures.push(...(pe.failures ?? [pe]));
      summary = pe.summary ?? summary;
    }
    let addressesRemoved = 0;
    for (const a of await this.addresses(index).catch((e: unknown) => {
      if (GONE.has(codeOf(e) ?? "")) return [];
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
    const summary: PlumbingSummary = { routesAdded: 0, routesRemoved: 0, neighboursSet: 0, neighboursReplaced: 0, neighboursRemoved: 0 };
    const failures: Error[] = [];
    const attempt = async (what: string, op: () => Promise<void>, count: () => void, gone = false): Promise<void> => {
      try {
        await op();
        count();
      } catch (e) {
        if (gone && GONE.has(codeOf(e) ?? "")) return;
        failures.push(wrap(what, e));
      }
    };

    for (const n of plan.setNeighbours) {
      await attempt(
        `setting neighbour ${formatIpv4(n.ip)} lladdr ${formatMac(n.mac)} dev ${ifname} nud permanent`,
        () =>
          this.request(
            rt.MessageType.NEWNEIGH,
            (out) =>
              rt.formatNeighborMessage(
                {
                  kind: "neighbor",
                  data: { family: AF_INET, ifindex: index, state: { permanent: true } },
                  attrs: { dst: ipv4Buf(n.ip), lladdr: macBuf(n.mac) },
                },
                out,
              ),
            FlagsNew.CREATE | FlagsNew.REPLACE,
          ).then(() => undefined),
        () => {
          summary.neighboursSet++;
          if (existingNeighbours.has(n.ip)) summary.neighboursReplaced++;
        },
      );
    }

    for (const r of plan.removeRoutes) {
      await attempt(
        `removing route ${describeRoute(r.dst, r.gateway, ifname)} proto ${VXMESH_RTPROT}`,
        () =>
          this.request(rt.MessageType.DELROUTE, (out) =>
            rt.formatRouteMessage(
              {
                kind: "route",
                data: {
                  family: AF_INET,
                  dstLen: r.dst.prefixLen,
                  tos: r.tos,
                  table: RT_TABLE_MAIN,
                  protocol: VXMESH_RTPROT as rt.RouteProtocol,
                  scope: RT_SCOPE_NOWHERE,
                },
                attrs: {
                  dst: r.dst.prefixLen > 0 ? ipv4Buf(r.dst.network) : undefined,
                  oif: index,
                  gateway: r.gateway === null ? undefined : ipv4Buf(r.gateway),
                  priority: r.priority === 0 ? undefined : r.priority,
                  table: RT_TABLE_MAIN,
                },
              },
              out,
            ),
          ).then(() => undefined),
        () => summary.routesRemoved++,
        true,
      );
    }

    for (const dst of plan.addRoutes) {
      await attempt(
        `adding route ${describeRoute(dst, dst.network, ifname)}`,
        () =>
          this.request(
            rt.MessageType.NEWROUTE,
            (out) =>
              rt.formatRouteMessage(
                {
                  kind: "route",
                  data: {
                    family: AF_INET,
                    dstLen: dst.prefixLen,
                    table: RT_TABLE_MAIN,
                    protocol: VXMESH_RTPROT as rt.RouteProtocol,
                    scope: RT_SCOPE_UNIVERSE,
                    type: RTN_UNICAST,
                    flags: { __unknown: RTNH_F_ONLINK },
                  },
                  attrs: {
                    dst: dst.prefixLen > 0 ? ipv4Buf(dst.network) : undefined,
                    gateway: ipv4Buf(dst.network),
                    oif: index,
                    table: RT_TABLE_MAIN,
                  },
                },
                out,
              ),
            FlagsNew.CREATE | FlagsNew.EXCL,
          ).then(() => undefined),
        () => summary.routesAdded++,
      );
    }

    for (const n of plan.removeNeighbours) {
      await attempt(
        `removing neighbour ${formatIpv4(n.ip)} dev ${ifname}`,
        () =>
          this.request(rt.MessageType.DELNEIGH, (out) =>
            rt.formatNeighborMessage(
              { kind: "neighbor", data: { family: AF_INET, ifindex: index }, attrs: { dst: ipv4Buf(n.ip) } },
              out,
            ),
          ).then(() => undefined),
        () => summary.neighboursRemoved++,
        true,
      );
    }

    if (failures.length > 0 && !(tolerateGone && failures.every((f) => GONE.has(codeOf(f) ?? "")))) {
      throw combine(failures, summary);
    }
    return summary;
  }

  // -- kernel reads ----------------------------------------------------------------------------

  private async ifindex(ifname: string): Promise<number> {
    return (await this.link(ifname)).index;
  }

  private async link(ifname: string): Promise<{ index: number; mac: MacAddr | null; mtu: number | undefined; up: boolean }> {
    let msgs: rt.Message[];
    try {
      msgs = await this.request(rt.MessageType.GETLINK, (out) =>
        rt.formatLinkMessage({ kind: "link", data: {}, attrs: { ifname } }, out),
      );
    } catch (e) {
      throw wrap(`looking up link ${ifname}`, e);
    }
    const link = msgs.find((m): m is rt.LinkMessage => m.kind === "link");
    if (link?.data.index === undefined) throw new Error(`looking up link ${ifname}: no answer from the kernel`);
    return {
      index: link.data.index,
      mac: bufMac(link.attrs.address),
      mtu: link.attrs.mtu,
      up: link.data.flags?.up === true,
    };
  }

  private async ourRoutes(index: number): Promise<ActualRoute[]> {
    let msgs: rt.Message[];
    try {
      msgs = await this.request(
        rt.MessageType.GETROUTE,
        (out) => rt.formatRouteMessage({ kind: "route", data: { family: AF_INET }, attrs: {} }, out),
        NLM_F_DUMP,
      );
    } catch (e) {
      throw wrap("listing IPv4 routes", e);
    }
    const routes: ActualRoute[] = [];
    for (const m of msgs) {
      if (m.kind !== "route" || m.data.family !== AF_INET) continue;
      if (routeTable(m) !== RT_TABLE_MAIN) continue;
      if (routeProtocol(m) !== VXMESH_RTPROT) continue;
      if (m.attrs.oif !== index) continue;
      const dstLen = m.data.dstLen ?? 0;
      routes.push({
        dst: { family: 4, network: (bufIpv4(m.attrs.dst) ?? 0) as Ipv4, prefixLen: dstLen },
        gateway: bufIpv4(m.attrs.gateway),
        onlink: (routeFlagBits(m.data.flags) & RTNH_F_ONLINK) !== 0,
        priority: m.attrs.priority ?? 0,
        tos: m.data.tos ?? 0,
        type: routeType(m),
      });
    }
    return routes;
  }

  private async permanentNeighbours(index: number): Promise<ActualNeighbour[]> {
    let msgs: rt.Message[];
    try {
      msgs = await this.request(
        rt.MessageType.GETNEIGH,
        (out) => rt.formatNeighborMessage({ kind: "neighbor", data: { family: AF_INET }, attrs: {} }, out),
        NLM_F_DUMP,
      );
    } catch (e) {
      throw wrap("listing IPv4 neighbours", e);
    }
    const out: ActualNeighbour[] = [];
    for (const m of msgs) {
      if (m.kind !== "neighbor" || m.data.family !== AF_INET || m.data.ifindex !== index) continue;
      if ((rt.formatNeighborState(m.data.state ?? {}) & NUD_PERMANENT) === 0) continue;
      const ip = bufIpv4(m.attrs.dst);
      if (ip === null) continue;
      out.push({ ip, mac: bufMac(m.attrs.lladdr) });
    }
    return out;
  }

  private async addresses(index: number): Promise<{ local: Ipv4; prefixLen: number }[]> {
    const msgs = await this.request(
      rt.MessageType.GETADDR,
      (out) => rt.formatAddressMessage({ kind: "address", data: { family: AF_INET }, attrs: {} }, out),
      NLM_F_DUMP,
    );
    const out: { local: Ipv4; prefixLen: number }[] = [];
    for (const m of msgs) {
      if (m.kind !== "address" || m.data.family !== AF_INET || m.data.index !== index) continue;
      const local = bufIpv4(m.attrs.local ?? m.attrs.address);
      if (local !== null) out.push({ local, prefixLen: m.data.prefixlen ?? 32 });
    }
    return out;
  }

  /** Deletes one address; returns false when it was already gone. */
  private async deleteAddress(index: number, ifname: string, local: Ipv4, prefixLen: number, tolerateGone: boolean): Promise<boolean> {
    try {
      await this.request(rt.MessageType.DELADDR, (out) =>
        rt.formatAddressMessage(
          {
            kind: "address",
            data: { family: AF_INET, prefixlen: prefixLen, index },
            attrs: { local: ipv4Buf(local) },
          },
          out,
        ),
      );
      return true;
    } catch (e) {
      if (tolerateGone && GONE.has(codeOf(e) ?? "")) return false;
      throw wrap(`removing address ${formatIpv4(local)}/${prefixLen} from ${ifname}`, e);
    }
  }

  // -- plumbing --------------------------------------------------------------------------------

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error("host plumbing: the netlink socket is closed"));
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * One request with NLM_F_REQUEST|NLM_F_ACK (+ `flags`). Resolves with the parsed answer
   * (empty for a plain ACK); rejects with a NetlinkError carrying the errno.
   */
  private async request(type: rt.MessageType, format: Formatter, flags = 0): Promise<rt.Message[]> {
    const stream = new AttrStream();
    format(stream);
    const [msgs] = await this.sock.socket.request(type, stream.bufs, { flags, checkError: false });
    const first: NetlinkMessage | undefined = msgs[0];
    if (first !== undefined && first.type === NLMSG_ERROR) {
      const { errno } = parseError(first.data, first.flags);
      if (errno !== 0) throw errnoError(errno);
      return [];
    }
    return msgs.map((m) => rt.parseMessage(m.type, m.data));
  }
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
