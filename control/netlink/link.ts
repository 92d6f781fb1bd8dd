// Links (RTM_*LINK): the requests vxmesh sends about network devices, and what it reads back.

import type { MacAddr } from "../../encap/types";
import { attr, ifinfomsg, mac, nested, parseAttrs, readMacAttr, readStr, readU32, str, u32, u8 } from "./codec";
import { AF_BRIDGE, AF_UNSPEC, IFF_UP, IFLA, IFLA_BRPORT_MODE, IFLA_INFO, VETH_INFO_PEER } from "./constants";

export interface LinkInfo {
  index: number;
  name: string;
  /** IFLA_ADDRESS when it is 6 bytes long. */
  mac: MacAddr | undefined;
  mtu: number | undefined;
  up: boolean;
  master: number | undefined;
  alias: string | undefined;
  /** IFLA_INFO_KIND ("bridge", "veth", "tun", …). */
  kind: string | undefined;
}

export function parseLink(data: Buffer): LinkInfo {
  const index = data.readInt32LE(4);
  const flags = data.readUInt32LE(8);
  const a = parseAttrs(data, 16);
  const linkinfo = a.get(IFLA.LINKINFO);
  return {
    index,
    name: readStr(a.get(IFLA.IFNAME)) ?? "",
    mac: readMacAttr(a.get(IFLA.ADDRESS)),
    mtu: readU32(a.get(IFLA.MTU)),
    up: (flags & IFF_UP) !== 0,
    master: readU32(a.get(IFLA.MASTER)),
    alias: readStr(a.get(IFLA.IFALIAS)),
    kind: linkinfo === undefined ? undefined : readStr(parseAttrs(linkinfo, 0).get(IFLA_INFO.KIND)),
  };
}

/** RTM_GETLINK body for one link by name. */
export function linkByName(name: string): Buffer {
  return Buffer.concat([ifinfomsg(AF_UNSPEC, 0), attr(IFLA.IFNAME, str(name))]);
}

/** RTM_GETLINK body for one link by index. */
export function linkByIndex(index: number): Buffer {
  return ifinfomsg(AF_UNSPEC, index);
}

/** RTM_GETLINK dump body. */
export function allLinks(): Buffer {
  return ifinfomsg(AF_UNSPEC, 0);
}

/** RTM_NEWLINK body: a bridge. */
export function newBridge(name: string, mtu: number, address: MacAddr): Buffer {
  return Buffer.concat([
    ifinfomsg(AF_UNSPEC, 0),
    attr(IFLA.IFNAME, str(name)),
    attr(IFLA.MTU, u32(mtu)),
    attr(IFLA.ADDRESS, mac(address)),
    nested(IFLA.LINKINFO, [attr(IFLA_INFO.KIND, str("bridge"))]),
  ]);
}

/**
 * RTM_NEWLINK body: a veth pair, `hostName` in the socket's namespace and its peer `peerName`
 * created directly inside the namespace the descriptor `peerNsFd` refers to. Both ends get
 * `mtu`; the peer gets `peerMac` when given.
 */
export function newVeth(hostName: string, peerName: string, peerNsFd: number, mtu: number, peerMac?: MacAddr): Buffer {
  const peer = Buffer.concat([
    ifinfomsg(AF_UNSPEC, 0),
    attr(IFLA.IFNAME, str(peerName)),
    attr(IFLA.MTU, u32(mtu)),
    ...(peerMac === undefined ? [] : [attr(IFLA.ADDRESS, mac(peerMac))]),
    attr(IFLA.NET_NS_FD, u32(peerNsFd)),
  ]);
  return Buffer.concat([
    ifinfomsg(AF_UNSPEC, 0),
    attr(IFLA.IFNAME, str(hostName)),
    attr(IFLA.MTU, u32(mtu)),
    nested(IFLA.LINKINFO, [
      attr(IFLA_INFO.KIND, str("veth")),
      nested(IFLA_INFO.DATA, [nested(VETH_INFO_PEER, [peer])]),
    ]),
  ]);
}

/** What one RTM_SETLINK changes; anything left out stays as it is. */
export interface LinkChange {
  /** Enslave to the link with this index. */
  master?: number;
  /** Set the alias (the kernel ignores it on RTM_NEWLINK, so it is set here). */
  alias?: string;
  /** Link-layer address. Setting it, even to the same value, flushes the link's neighbours. */
  mac?: MacAddr;
  mtu?: number;
  /** true: bring the link up. */
  up?: boolean;
}

/** RTM_SETLINK body for `change` on link `index`. */
export function setLink(index: number, change: LinkChange): Buffer {
  const attrs: Buffer[] = [];
  if (change.mac !== undefined) attrs.push(attr(IFLA.ADDRESS, mac(change.mac)));
  if (change.mtu !== undefined) attrs.push(attr(IFLA.MTU, u32(change.mtu)));
  if (change.master !== undefined) attrs.push(attr(IFLA.MASTER, u32(change.master)));
  if (change.alias !== undefined) attrs.push(attr(IFLA.IFALIAS, str(change.alias)));
  const up = change.up === true ? IFF_UP : 0;
  return Buffer.concat([ifinfomsg(AF_UNSPEC, index, up, up), ...attrs]);
}

/** RTM_SETLINK body: link `index` into device group `group`. */
export function setGroup(index: number, group: number): Buffer {
  return Buffer.concat([ifinfomsg(AF_UNSPEC, index), attr(IFLA.GROUP, u32(group))]);
}

/** RTM_DELLINK body for one link. */
export function deleteLink(index: number): Buffer {
  return ifinfomsg(AF_UNSPEC, index);
}

/** RTM_DELLINK body for every link of device group `group`. */
export function deleteGroup(group: number): Buffer {
  return Buffer.concat([ifinfomsg(AF_UNSPEC, 0), attr(IFLA.GROUP, u32(group))]);
}

/** RTM_SETLINK body: hairpin mode on a bridge port (what `bridge link set dev X hairpin on` sends). */
export function setHairpin(index: number, on: boolean): Buffer {
  return Buffer.concat([ifinfomsg(AF_BRIDGE, index), nested(IFLA.PROTINFO, [attr(IFLA_BRPORT_MODE, u8(on ? 1 : 0))])]);
}
