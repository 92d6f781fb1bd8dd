// IPv4 addresses (RTM_*ADDR).

import type { Ipv4 } from "../../encap/types";
import { attr, ifaddrmsg, ipv4, parseAttrs, readIpv4 } from "./codec";
import { AF_INET, IFA } from "./constants";

export interface AddrInfo {
  /** The link's index. */
  index: number;
  prefixLen: number;
  /** IFA_LOCAL, else IFA_ADDRESS. */
  local: Ipv4;
}

/** One IPv4 address; undefined for another family or without an address. */
export function parseAddr(data: Buffer): AddrInfo | undefined {
  if (data.readUInt8(0) !== AF_INET) return undefined;
  const a = parseAttrs(data, 8);
  const local = readIpv4(a.get(IFA.LOCAL) ?? a.get(IFA.ADDRESS));
  if (local === undefined) return undefined;
  return { index: data.readUInt32LE(4), prefixLen: data.readUInt8(1), local };
}

/** RTM_GETADDR dump body (IPv4). */
export function allAddrs(): Buffer {
  return ifaddrmsg(AF_INET, 0, 0);
}

/** RTM_NEWADDR body: `ip/prefixLen` on link `index`, with its broadcast below /31. */
export function newAddr(index: number, ip: number, prefixLen: number): Buffer {
  const attrs = [attr(IFA.LOCAL, ipv4(ip)), attr(IFA.ADDRESS, ipv4(ip))];
  if (prefixLen < 31) {
    const host = prefixLen === 0 ? 0xffffffff : (1 << (32 - prefixLen)) - 1;
    attrs.push(attr(IFA.BROADCAST, ipv4((ip | host) >>> 0)));
  }
  return Buffer.concat([ifaddrmsg(AF_INET, prefixLen, index), ...attrs]);
}

/** RTM_DELADDR body: `ip/prefixLen` on link `index`. */
export function deleteAddr(index: number, ip: number, prefixLen: number): Buffer {
  return Buffer.concat([ifaddrmsg(AF_INET, prefixLen, index), attr(IFA.LOCAL, ipv4(ip))]);
}
