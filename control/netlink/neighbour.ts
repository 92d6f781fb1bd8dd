// IPv4 neighbours (RTM_*NEIGH).

import type { Ipv4, MacAddr } from "../../encap/types";
import { attr, ipv4, mac, ndmsg, parseAttrs, readIpv4, readMacAttr } from "./codec";
import { AF_INET, NDA, NUD_PERMANENT } from "./constants";

export interface NeighbourInfo {
  ifindex: number;
  ip: Ipv4;
  /** NDA_LLADDR; undefined when the entry has none. */
  mac: MacAddr | undefined;
  /** NUD_* bits. */
  state: number;
  permanent: boolean;
}

/** One IPv4 neighbour; undefined for another family or without an address. */
export function parseNeighbour(data: Buffer): NeighbourInfo | undefined {
  if (data.readUInt8(0) !== AF_INET) return undefined;
  const a = parseAttrs(data, 12);
  const ip = readIpv4(a.get(NDA.DST));
  if (ip === undefined) return undefined;
  const state = data.readUInt16LE(8);
  return { ifindex: data.readInt32LE(4), ip, mac: readMacAttr(a.get(NDA.LLADDR)), state, permanent: (state & NUD_PERMANENT) !== 0 };
}

/** RTM_GETNEIGH dump body (IPv4). */
export function allNeighbours(): Buffer {
  return ndmsg(AF_INET, 0);
}

/** RTM_NEWNEIGH body: a permanent `ip lladdr mac` on link `ifindex`. */
export function permanentNeighbour(ifindex: number, ip: number, lladdr: MacAddr): Buffer {
  return Buffer.concat([ndmsg(AF_INET, ifindex, NUD_PERMANENT), attr(NDA.DST, ipv4(ip)), attr(NDA.LLADDR, mac(lladdr))]);
}

/** RTM_DELNEIGH body: `ip` on link `ifindex`. */
export function deleteNeighbour(ifindex: number, ip: number): Buffer {
  return Buffer.concat([ndmsg(AF_INET, ifindex), attr(NDA.DST, ipv4(ip))]);
}
