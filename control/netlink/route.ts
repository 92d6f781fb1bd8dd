// IPv4 routes (RTM_*ROUTE): dumps, lookups (`ip route get`), adds and deletes.

import type { Ipv4 } from "../../encap/types";
import { attr, ipv4, parseAttrs, readIpv4, readU32, rtmsg, u32 } from "./codec";
import {
  AF_INET, RTA, RTAX_MTU, RTM_F_FIB_MATCH, RTN_UNICAST, RTNH_F_ONLINK, RT_SCOPE_NOWHERE, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN,
} from "./constants";

/** One IPv4 route as the kernel holds it (a dump entry, or the answer of a lookup). */
export interface RouteInfo {
  /** RTA_DST; 0 for a default route. */
  dst: Ipv4;
  dstLen: number;
  gateway: Ipv4 | undefined;
  oif: number | undefined;
  /** Full table id (RTA_TABLE, else the 8-bit header field); 254 = main. */
  table: number;
  /** rtm_protocol: 2 kernel, 3 boot, 4 static, 118 vxmesh, … */
  protocol: number;
  scope: number;
  /** rtm_type: 1 unicast, 2 local, 6 blackhole, 7 unreachable, 8 prohibit, … */
  type: number;
  tos: number;
  /** RTNH_F_ONLINK set in rtm_flags. */
  onlink: boolean;
  /** RTA_PRIORITY (metric); undefined when absent. */
  priority: number | undefined;
  /** RTAX_MTU in RTA_METRICS: a path MTU the kernel learned (a lookup answer); undefined when none. */
  pathMtu: number | undefined;
}

/** One IPv4 route; undefined for another family. */
export function parseRoute(data: Buffer): RouteInfo | undefined {
  if (data.readUInt8(0) !== AF_INET) return undefined;
  const a = parseAttrs(data, 12);
  const metrics = a.get(RTA.METRICS);
  return {
    dst: readIpv4(a.get(RTA.DST)) ?? (0 as Ipv4),
    dstLen: data.readUInt8(1),
    gateway: readIpv4(a.get(RTA.GATEWAY)),
    oif: readU32(a.get(RTA.OIF)),
    table: readU32(a.get(RTA.TABLE)) ?? data.readUInt8(4),
    protocol: data.readUInt8(5),
    scope: data.readUInt8(6),
    type: data.readUInt8(7),
    tos: data.readUInt8(3),
    onlink: (data.readUInt32LE(8) & RTNH_F_ONLINK) !== 0,
    priority: readU32(a.get(RTA.PRIORITY)),
    // RTAX_MTU is a host-order u32.
    pathMtu: metrics === undefined ? undefined : readU32(parseAttrs(metrics, 0).get(RTAX_MTU)),
  };
}

/** RTM_GETROUTE dump body (IPv4, every table). */
export function allRoutes(): Buffer {
  return rtmsg({ family: AF_INET });
}

/** RTM_GETROUTE body: the route the kernel uses for `ip`, or with `fibMatch` the FIB entry that matches. */
export function routeTo(ip: number, fibMatch: boolean): Buffer {
  return Buffer.concat([rtmsg({ family: AF_INET, dstLen: 32, flags: fibMatch ? RTM_F_FIB_MATCH : 0 }), attr(RTA.DST, ipv4(ip))]);
}

/** A unicast route in the main table to add: `dst/dstLen via gateway dev oif [onlink] proto protocol`. */
export interface NewRoute {
  dst: number;
  /** 0: the default route. */
  dstLen: number;
  gateway: number;
  oif: number;
  protocol: number;
  onlink?: boolean;
}

/** RTM_NEWROUTE body for `r`. */
export function newRoute(r: NewRoute): Buffer {
  return Buffer.concat([
    rtmsg({
      family: AF_INET, dstLen: r.dstLen, table: RT_TABLE_MAIN, protocol: r.protocol, scope: RT_SCOPE_UNIVERSE, type: RTN_UNICAST,
      flags: r.onlink === true ? RTNH_F_ONLINK : 0,
    }),
    ...(r.dstLen > 0 ? [attr(RTA.DST, ipv4(r.dst))] : []),
    attr(RTA.GATEWAY, ipv4(r.gateway)),
    attr(RTA.OIF, u32(r.oif)),
    attr(RTA.TABLE, u32(RT_TABLE_MAIN)),
  ]);
}

/** A route in the main table to delete, matched on these fields. */
export interface OldRoute {
  dst: number;
  dstLen: number;
  tos: number;
  protocol: number;
  oif: number;
  gateway: number | undefined;
  /** 0 or undefined: no RTA_PRIORITY. */
  priority: number | undefined;
}

/** RTM_DELROUTE body for `r`. */
export function deleteRoute(r: OldRoute): Buffer {
  return Buffer.concat([
    rtmsg({ family: AF_INET, dstLen: r.dstLen, tos: r.tos, table: RT_TABLE_MAIN, protocol: r.protocol, scope: RT_SCOPE_NOWHERE }),
    ...(r.dstLen > 0 ? [attr(RTA.DST, ipv4(r.dst))] : []),
    attr(RTA.OIF, u32(r.oif)),
    ...(r.gateway === undefined ? [] : [attr(RTA.GATEWAY, ipv4(r.gateway))]),
    ...(r.priority === undefined || r.priority === 0 ? [] : [attr(RTA.PRIORITY, u32(r.priority))]),
    attr(RTA.TABLE, u32(RT_TABLE_MAIN)),
  ]);
}
