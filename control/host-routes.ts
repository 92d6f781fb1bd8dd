// Reads the IPv4 routes of this network namespace with rtnetlink, with device names, for the
// pod-CIDR overlap check (cidr-overlap.ts). Read only.

import { createRtNetlink, rt } from "netlink";
import type { Ipv4 } from "../encap/types";
import type { HostRoute } from "./cidr-overlap";

const AF_INET = 2;

function bufIpv4(b: Buffer | undefined): Ipv4 | null {
  return b === undefined || b.length !== 4 ? null : (b.readUInt32BE(0) as Ipv4);
}

/** netlink@0.3.0 turns known enum values into names ("STATIC"); back to numbers. */
function enumNumber(mapping: unknown, v: string | number | undefined): number {
  if (v === undefined) return 0;
  if (typeof v === "number") return v;
  const n = (mapping as Record<string, string | number>)[v];
  return typeof n === "number" ? n : Number.NaN;
}

export async function readHostRoutes(): Promise<HostRoute[]> {
  const nl = createRtNetlink();
  try {
    const links = await nl.getLinks();
    const names = new Map<number, string>();
    for (const l of links) if (l.data.index !== undefined && l.attrs.ifname !== undefined) names.set(l.data.index, l.attrs.ifname);
    const routes = await nl.getRoutes({ family: AF_INET });
    const out: HostRoute[] = [];
    for (const m of routes) {
      if (m.data.family !== AF_INET) continue;
      const oif = m.attrs.oif;
      out.push({
        dst: { family: 4, network: (bufIpv4(m.attrs.dst) ?? 0) as Ipv4, prefixLen: m.data.dstLen ?? 0 },
        dev: oif === undefined ? undefined : (names.get(oif) ?? `if${oif}`),
        gateway: bufIpv4(m.attrs.gateway),
        protocol: enumNumber(rt.RouteProtocol, m.data.protocol),
        table: m.attrs.table ?? m.data.table ?? 0,
        type: enumNumber(rt.RouteType, m.data.type),
      });
    }
    return out;
  } finally {
    nl.socket.close();
  }
}
