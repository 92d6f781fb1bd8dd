// Reads the IPv4 routes of this network namespace with rtnetlink, with device names, for the
// pod-CIDR overlap check (cidr-overlap.ts). Read only.

import { createRtNetlink } from "netlink";
import type { Ipv4 } from "../encap/types";
import type { HostRoute } from "./cidr-overlap";
import { AF_INET, bufIpv4, routeProtocol, routeTable, routeType } from "./rtnl-values";

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
        protocol: routeProtocol(m),
        table: routeTable(m),
        type: routeType(m),
      });
    }
    return out;
  } finally {
    nl.socket.close();
  }
}
