// A small rtnetlink client for the CNI handler: links, addresses and routes, on the node side
// and inside a pod's network namespace.
//
// Why our own message encoding: the pieces ADD needs (a veth whose peer is created straight
// inside the pod namespace through IFLA_NET_NS_FD, a nested IFLA_LINKINFO, hairpin through an
// AF_BRIDGE IFLA_PROTINFO) are not covered by the typed formatters of netlink@0.3.0, and a few
// fixed-layout headers plus TLV attributes are simpler to write than to coax out of them. The
// package still provides the socket, sequence numbers and multipart handling.
//
// Pod namespace: an rtnetlink socket acts on the namespace it was created in, and netlink@0.3.0
// cannot adopt a descriptor made elsewhere (its native constructor always calls socket() itself).
// So `Rtnl.openIn(nsPath)` creates the socket inside the pod's namespace by running the
// (synchronous) constructor under the native `inNetns`, which setns()es the calling thread there
// and back around it. No thread pool, no `ip netns exec`, no extra process.

import { getSystemErrorName } from "node:util";
import { createNetlink, type NetlinkMessage, type NetlinkSocket } from "netlink";
import { loadNative } from "../encap/native";

const NETLINK_ROUTE = 0;
const REQUEST_TIMEOUT_MS = 10_000;

export const RTM = {
  NEWLINK: 16, DELLINK: 17, GETLINK: 18, SETLINK: 19,
  NEWADDR: 20, DELADDR: 21, GETADDR: 22,
  NEWROUTE: 24, DELROUTE: 25, GETROUTE: 26,
} as const;

export const NLM_F = { ROOT: 0x100, MATCH: 0x200, DUMP: 0x300, REPLACE: 0x100, EXCL: 0x200, CREATE: 0x400 } as const;

const NLMSG_ERROR = 2;
const NLA_F_NESTED = 0x8000;

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;
const IFF_UP = 1;

const IFLA = { ADDRESS: 1, IFNAME: 3, MTU: 4, MASTER: 10, PROTINFO: 12, LINKINFO: 18, IFALIAS: 20, GROUP: 27, NET_NS_FD: 28 } as const;
const IFLA_INFO = { KIND: 1, DATA: 2 } as const;
const VETH_INFO_PEER = 1;
const IFLA_BRPORT_MODE = 4; // hairpin
const IFA = { ADDRESS: 1, LOCAL: 2, BROADCAST: 4 } as const;
const RTA = { DST: 1, OIF: 4, GATEWAY: 5, PRIORITY: 6, TABLE: 15 } as const;
export const RT_TABLE_MAIN = 254;
const RTPROT_BOOT = 3;
const RT_SCOPE_UNIVERSE = 0;
const RTN_UNICAST = 1;

// ---------------------------------------------------------------------------------------------
// Errors

/** A request the kernel refused; `code` is the errno name ("EEXIST"). */
export class NetlinkError extends Error {
  override readonly name = "NetlinkError";
  constructor(readonly errno: number, readonly code: string, what: string) {
    super(`${what}: ${code}`);
  }
}

export function errnoCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === "string" ? c : undefined;
}

// ---------------------------------------------------------------------------------------------
// Encoding

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** One attribute: 2-byte length, 2-byte type, payload, padded to 4 bytes. */
function attr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const b = Buffer.alloc(align4(len));
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  payload.copy(b, 4);
  return b;
}

function nested(type: number, children: Buffer[]): Buffer {
  return attr(type | NLA_F_NESTED, Buffer.concat(children));
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0, 0);
  return b;
}

function u8(v: number): Buffer {
  return Buffer.from([v & 0xff]);
}

function str(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, "utf8"), Buffer.alloc(1)]);
}

function ipv4(ip: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ip >>> 0, 0);
  return b;
}

/** struct ifinfomsg (16 bytes). */
function ifinfomsg(family: number, index: number, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(family, 0);
  b.writeInt32LE(index, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  b.writeUInt32LE(change >>> 0, 12);
  return b;
}

/** struct ifaddrmsg (8 bytes). */
function ifaddrmsg(family: number, prefixLen: number, index: number, scope = RT_SCOPE_UNIVERSE): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(family, 0);
  b.writeUInt8(prefixLen, 1);
  b.writeUInt8(scope, 3);
  b.writeUInt32LE(index, 4);
  return b;
}

/** struct rtmsg (12 bytes). */
function rtmsg(o: { family: number; dstLen?: number; table?: number; protocol?: number; scope?: number; type?: number }): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(o.family, 0);
  b.writeUInt8(o.dstLen ?? 0, 1);
  b.writeUInt8(o.table ?? 0, 4);
  b.writeUInt8(o.protocol ?? 0, 5);
  b.writeUInt8(o.scope ?? 0, 6);
  b.writeUInt8(o.type ?? 0, 7);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Decoding

type Attrs = Map<number, Buffer>;

function parseAttrs(b: Buffer, off: number): Attrs {
  const out: Attrs = new Map();
  while (off + 4 <= b.length) {
    const len = b.readUInt16LE(off);
    const type = b.readUInt16LE(off + 2) & ~NLA_F_NESTED & 0x7fff;
    if (len < 4 || off + len > b.length) break;
    if (!out.has(type)) out.set(type, b.subarray(off + 4, off + len));
    off += align4(len);
  }
  return out;
}

function cstr(b: Buffer | undefined): string | undefined {
  if (b === undefined) return undefined;
  const nul = b.indexOf(0);
  return b.toString("utf8", 0, nul < 0 ? b.length : nul);
}

function readU32(b: Buffer | undefined): number | undefined {
  return b !== undefined && b.length >= 4 ? b.readUInt32LE(0) : undefined;
}

function readIpv4(b: Buffer | undefined): number | undefined {
  return b !== undefined && b.length === 4 ? b.readUInt32BE(0) : undefined;
}

export function formatMacBytes(b: Buffer | undefined): string | undefined {
  if (b === undefined || b.length !== 6) return undefined;
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}

export interface LinkInfo {
  index: number;
  name: string;
  mac: string | undefined;
  mtu: number | undefined;
  up: boolean;
  master: number | undefined;
  alias: string | undefined;
  kind: string | undefined;
}

function parseLink(data: Buffer): LinkInfo {
  const index = data.readInt32LE(4);
  const flags = data.readUInt32LE(8);
  const a = parseAttrs(data, 16);
  const linkinfo = a.get(IFLA.LINKINFO);
  const kind = linkinfo === undefined ? undefined : cstr(parseAttrs(linkinfo, 0).get(IFLA_INFO.KIND));
  return {
    index,
    name: cstr(a.get(IFLA.IFNAME)) ?? "",
    mac: formatMacBytes(a.get(IFLA.ADDRESS)),
    mtu: readU32(a.get(IFLA.MTU)),
    up: (flags & IFF_UP) !== 0,
    master: readU32(a.get(IFLA.MASTER)),
    alias: cstr(a.get(IFLA.IFALIAS)),
    kind,
  };
}

export interface AddrInfo {
  index: number;
  prefixLen: number;
  local: number;
}

function parseAddr(data: Buffer): AddrInfo | undefined {
  if (data.readUInt8(0) !== AF_INET) return undefined;
  const a = parseAttrs(data, 8);
  const local = readIpv4(a.get(IFA.LOCAL) ?? a.get(IFA.ADDRESS));
  if (local === undefined) return undefined;
  return { index: data.readUInt32LE(4), prefixLen: data.readUInt8(1), local };
}

export interface RouteInfo {
  dst: number;
  dstLen: number;
  gateway: number | undefined;
  oif: number | undefined;
  table: number;
}

function parseRoute(data: Buffer): RouteInfo | undefined {
  if (data.readUInt8(0) !== AF_INET) return undefined;
  const a = parseAttrs(data, 12);
  return {
    dst: readIpv4(a.get(RTA.DST)) ?? 0,
    dstLen: data.readUInt8(1),
    gateway: readIpv4(a.get(RTA.GATEWAY)),
    oif: readU32(a.get(RTA.OIF)),
    table: readU32(a.get(RTA.TABLE)) ?? data.readUInt8(4),
  };
}

// ---------------------------------------------------------------------------------------------
// The socket

export class Rtnl {
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(private readonly sock: NetlinkSocket) {}

  /** A socket in the calling process's network namespace. */
  static open(): Rtnl {
    return new Rtnl(createNetlink(NETLINK_ROUTE));
  }

  /**
   * A socket inside the network namespace at `nsPath`. Throws with `code` ENOENT when the path
   * does not exist and EINVAL when it is not a network namespace.
   */
  static openIn(nsPath: string): Rtnl {
    return new Rtnl(loadNative().inNetns(nsPath, () => createNetlink(NETLINK_ROUTE)));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.sock.close();
    } catch {
      /* already closed */
    }
  }

  /**
   * One request (NLM_F_REQUEST|NLM_F_ACK + flags). Requests on one socket go one at a time:
   * netlink@0.3.0 assembles multipart answers in a single slot per socket.
   */
  request(type: number, body: Buffer, flags: number, what: string): Promise<Buffer[]> {
    if (this.closed) return Promise.reject(new Error(`${what}: the netlink socket is closed`));
    const run = async (): Promise<Buffer[]> => {
      const [msgs] = await this.sock.request(type, body, { flags, checkError: false, timeout: REQUEST_TIMEOUT_MS });
      const first: NetlinkMessage | undefined = msgs[0];
      if (first !== undefined && first.type === NLMSG_ERROR) {
        const errno = first.data.length >= 4 ? first.data.readInt32LE(0) : 0;
        if (errno !== 0) {
          let code = `errno ${-errno}`;
          try {
            code = getSystemErrorName(errno);
          } catch {
            /* unknown: keep the number */
          }
          throw new NetlinkError(errno, code, what);
        }
        return [];
      }
      return msgs.map((m) => m.data);
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  // -- links -----------------------------------------------------------------------------------

  /** The link called `name`, or undefined when there is none. */
  async link(name: string): Promise<LinkInfo | undefined> {
    try {
      const [data] = await this.request(RTM.GETLINK, Buffer.concat([ifinfomsg(AF_UNSPEC, 0), attr(IFLA.IFNAME, str(name))]), 0, `looking up link ${name}`);
      return data === undefined ? undefined : parseLink(data);
    } catch (e) {
      if (errnoCode(e) === "ENODEV") return undefined;
      throw e;
    }
  }

  async links(): Promise<LinkInfo[]> {
    const msgs = await this.request(RTM.GETLINK, ifinfomsg(AF_UNSPEC, 0), NLM_F.DUMP, "listing links");
    return msgs.map(parseLink);
  }

  async createBridge(name: string, mtu: number, mac: Buffer): Promise<void> {
    await this.request(RTM.NEWLINK, Buffer.concat([
      ifinfomsg(AF_UNSPEC, 0),
      attr(IFLA.IFNAME, str(name)),
      attr(IFLA.MTU, u32(mtu)),
      attr(IFLA.ADDRESS, mac),
      nested(IFLA.LINKINFO, [attr(IFLA_INFO.KIND, str("bridge"))]),
    ]), NLM_F.CREATE | NLM_F.EXCL, `creating bridge ${name}`);
  }

  /**
   * A veth pair: `hostName` here, its peer `peerName` created directly inside the namespace the
   * descriptor `peerNsFd` refers to. Both ends get `mtu`; the peer gets `peerMac` when given.
   */
  async createVeth(hostName: string, peerName: string, peerNsFd: number, mtu: number, peerMac?: Buffer): Promise<void> {
    const peer = Buffer.concat([
      ifinfomsg(AF_UNSPEC, 0),
      attr(IFLA.IFNAME, str(peerName)),
      attr(IFLA.MTU, u32(mtu)),
      ...(peerMac === undefined ? [] : [attr(IFLA.ADDRESS, peerMac)]),
      attr(IFLA.NET_NS_FD, u32(peerNsFd)),
    ]);
    await this.request(RTM.NEWLINK, Buffer.concat([
      ifinfomsg(AF_UNSPEC, 0),
      attr(IFLA.IFNAME, str(hostName)),
      attr(IFLA.MTU, u32(mtu)),
      nested(IFLA.LINKINFO, [
        attr(IFLA_INFO.KIND, str("veth")),
        nested(IFLA_INFO.DATA, [nested(VETH_INFO_PEER, [peer])]),
      ]),
    ]), NLM_F.CREATE | NLM_F.EXCL, `creating veth ${hostName} with peer ${peerName}`);
  }

  async deleteLink(index: number, what: string): Promise<void> {
    await this.request(RTM.DELLINK, ifinfomsg(AF_UNSPEC, index), 0, what);
  }

  /** Puts a link into device group `group` (for deleting several links in one request). */
  async setGroup(index: number, group: number, what: string): Promise<void> {
    await this.request(RTM.SETLINK, Buffer.concat([ifinfomsg(AF_UNSPEC, index), attr(IFLA.GROUP, u32(group))]), 0, what);
  }

  /**
   * Deletes every link of device group `group` in one request: the kernel unregisters them
   * together and waits for that once (~20 ms) instead of once per link.
   */
  async deleteGroup(group: number, what: string): Promise<void> {
    await this.request(RTM.DELLINK, Buffer.concat([ifinfomsg(AF_UNSPEC, 0), attr(IFLA.GROUP, u32(group))]), 0, what);
  }

  /**
   * One SETLINK: any of enslaving to `master`, setting the alias (which the kernel ignores on
   * RTM_NEWLINK, so it is set here), and bringing the link up.
   */
  async configureLink(index: number, o: { master?: number; alias?: string; up?: boolean }, what: string): Promise<void> {
    const attrs: Buffer[] = [];
    if (o.master !== undefined) attrs.push(attr(IFLA.MASTER, u32(o.master)));
    if (o.alias !== undefined) attrs.push(attr(IFLA.IFALIAS, str(o.alias)));
    const up = o.up === true ? IFF_UP : 0;
    await this.request(RTM.SETLINK, Buffer.concat([ifinfomsg(AF_UNSPEC, index, up, up), ...attrs]), 0, what);
  }

  async setUp(index: number, what: string): Promise<void> {
    await this.request(RTM.SETLINK, ifinfomsg(AF_UNSPEC, index, IFF_UP, IFF_UP), 0, what);
  }

  /** Hairpin mode on a bridge port (what `bridge link set dev X hairpin on` sends). */
  async setHairpin(index: number, on: boolean, what: string): Promise<void> {
    await this.request(RTM.SETLINK, Buffer.concat([
      ifinfomsg(AF_BRIDGE, index),
      nested(IFLA.PROTINFO, [attr(IFLA_BRPORT_MODE, u8(on ? 1 : 0))]),
    ]), 0, what);
  }

  // -- addresses -------------------------------------------------------------------------------

  /** Adds (or, with `replace`, keeps) `ip/prefixLen` with its broadcast on link `index`. */
  async addAddress(index: number, ip: number, prefixLen: number, replace: boolean, what: string): Promise<void> {
    const attrs = [attr(IFA.LOCAL, ipv4(ip)), attr(IFA.ADDRESS, ipv4(ip))];
    if (prefixLen < 31) {
      const host = prefixLen === 0 ? 0xffffffff : (1 << (32 - prefixLen)) - 1;
      attrs.push(attr(IFA.BROADCAST, ipv4((ip | host) >>> 0)));
    }
    await this.request(RTM.NEWADDR, Buffer.concat([ifaddrmsg(AF_INET, prefixLen, index), ...attrs]),
      NLM_F.CREATE | (replace ? NLM_F.REPLACE : NLM_F.EXCL), what);
  }

  async addresses(): Promise<AddrInfo[]> {
    const msgs = await this.request(RTM.GETADDR, ifaddrmsg(AF_INET, 0, 0), NLM_F.DUMP, "listing addresses");
    return msgs.map(parseAddr).filter((a): a is AddrInfo => a !== undefined);
  }

  // -- routes ----------------------------------------------------------------------------------

  /** `dst/dstLen via gateway dev index` in the main table (the default route when dstLen is 0). */
  async addRoute(dst: number, dstLen: number, gateway: number, index: number, what: string): Promise<void> {
    const attrs = [attr(RTA.GATEWAY, ipv4(gateway)), attr(RTA.OIF, u32(index))];
    if (dstLen > 0) attrs.unshift(attr(RTA.DST, ipv4(dst)));
    await this.request(RTM.NEWROUTE, Buffer.concat([
      rtmsg({ family: AF_INET, dstLen, table: RT_TABLE_MAIN, protocol: RTPROT_BOOT, scope: RT_SCOPE_UNIVERSE, type: RTN_UNICAST }),
      ...attrs,
    ]), NLM_F.CREATE | NLM_F.EXCL, what);
  }

  async routes(): Promise<RouteInfo[]> {
    const msgs = await this.request(RTM.GETROUTE, rtmsg({ family: AF_INET }), NLM_F.DUMP, "listing routes");
    return msgs.map(parseRoute).filter((r): r is RouteInfo => r !== undefined);
  }
}
