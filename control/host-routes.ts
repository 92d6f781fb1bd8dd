// Reads the IPv4 routes of this network namespace with rtnetlink, with device names, for the
// pod-CIDR overlap check (cidr-overlap.ts). Read only.

import type { HostRoute } from "./cidr-overlap";
import { Rtnl } from "./netlink";

export async function readHostRoutes(): Promise<HostRoute[]> {
  const nl = Rtnl.open();
  try {
    const names = new Map<number, string>();
    for (const l of await nl.links()) names.set(l.index, l.name);
    return (await nl.routes()).map((r) => ({
      dst: { family: 4, network: r.dst, prefixLen: r.dstLen },
      dev: r.oif === undefined ? undefined : (names.get(r.oif) ?? `if${r.oif}`),
      gateway: r.gateway ?? null,
      protocol: r.protocol,
      table: r.table,
      type: r.type,
    }));
  } finally {
    nl.close();
  }
}
