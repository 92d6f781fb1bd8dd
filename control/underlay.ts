// Finds the underlay interface that holds the node's underlay address.

import { formatIpv4, type Ipv4, type Parsed } from "../encap/types";
import { Rtnl } from "./netlink";

export interface UnderlayInterface {
  ifname: string;
  ifindex: number;
  mtu: number;
}

export async function findUnderlayInterface(ip: Ipv4): Promise<Parsed<UnderlayInterface>> {
  const nl = Rtnl.open();
  try {
    const match = (await nl.addresses()).find((a) => a.local === ip);
    if (match === undefined) {
      return { ok: false, error: `--underlay-ip ${formatIpv4(ip)} is not assigned to any interface in this network namespace` };
    }
    const link = await nl.getLink(match.index, `looking up link #${match.index}`);
    if (link === undefined) return { ok: false, error: `interface ${match.index} holding ${formatIpv4(ip)} vanished` };
    return { ok: true, value: { ifname: link.name || `if${match.index}`, ifindex: match.index, mtu: link.mtu ?? 1500 } };
  } finally {
    nl.close();
  }
}
