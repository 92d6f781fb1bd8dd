// Reading values out of netlink@0.3.0's parsed rtnetlink messages, for every module that lists
// routes (host-plumbing.ts, host-routes.ts):
// - addresses are raw Buffers in attributes (4 bytes, network order);
// - parsed enums come back as names when the package knows the value ("UNICAST", "STATIC") and
//   as numbers otherwise (protocol 118 stays 118): compare through the numbers read here;
// - the header's table field is 8 bits; the full id is the RTA_TABLE attribute.

import { rt } from "netlink";
import type { Ipv4 } from "../encap/types";

export const AF_INET = 2;

export function bufIpv4(b: Buffer | undefined): Ipv4 | null {
  if (b === undefined || b.length !== 4) return null;
  return b.readUInt32BE(0) as Ipv4;
}

function enumValue(mapping: Record<string, string | number>, v: string | number | undefined): number {
  if (v === undefined) return 0;
  if (typeof v === "number") return v;
  const n = mapping[v];
  return typeof n === "number" ? n : Number.NaN;
}

const RouteProtocolMap = rt.RouteProtocol as unknown as Record<string, string | number>;
const RouteTypeMap = rt.RouteType as unknown as Record<string, string | number>;

export function routeProtocol(m: rt.RouteMessage): number {
  return enumValue(RouteProtocolMap, m.data.protocol);
}

export function routeType(m: rt.RouteMessage): number {
  return enumValue(RouteTypeMap, m.data.type);
}

export function routeTable(m: rt.RouteMessage): number {
  return m.attrs.table ?? m.data.table ?? 0;
}
