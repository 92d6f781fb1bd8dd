// Finds the underlay interface that holds the node's underlay address.

import { createRtNetlink } from "netlink";
import { formatIpv4, type Ipv4, type Parsed } from "../encap/types";

export interface UnderlayInterface {
  ifname: string;
  ifindex: number;
  mtu: number;
}

const AF_INET = 2;

export async function findUnderlayInterface(ip: Ipv4): Promise<Parsed<UnderlayInterface>> {
  const nl = createRtNetlink();
  try {
    const addrs = await nl.getAddresses({ family: AF_INET });
    const match = addrs.find((a) => {
      const local = a.attrs.local ?? a.attrs.address;
      return local !== undefined && local.length === 4 && local.readUInt32BE(0) === ip;
    });
    if (match === undefined || match.data.index === undefined) {
      return { ok: false, error: `--underlay-ip ${formatIpv4(ip)} is not assigned to any interface in this network namespace` };
    }
    const links = await nl.getLink({ index: match.data.index });
    const link = links[0];
    if (link === undefined) return { ok: false, error: `interface ${match.data.index} holding ${formatIpv4(ip)} vanished` };
    return { ok: true, value: { ifname: link.attrs.ifname ?? `if${match.data.index}`, ifindex: match.data.index, mtu: link.attrs.mtu ?? 1500 } };
  } finally {
    nl.socket.close();
  }
}
