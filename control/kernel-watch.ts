// Wakes the reconciler when the kernel state around the TAP changes: a route, neighbour,
// address or link event that concerns the TAP (or a route of ours anywhere). The periodic
// reconcile stays as the safety net; this makes repairs prompt.

import { createRtNetlink, type RtNetlinkSocket, type rt } from "netlink";
import { VXMESH_RTPROT } from "./host-plumbing";

const GROUPS = ["LINK", "NEIGH", "IPV4_IFADDR", "IPV4_ROUTE"] as const;

export class KernelWatch {
  private timer: NodeJS.Timeout | undefined;

  private constructor(private readonly nl: RtNetlinkSocket) {}

  /** Calls `onChange` (at most once per `debounceMs`) after events that concern `ifname`. */
  static async open(ifname: string, onChange: () => void, debounceMs = 200): Promise<KernelWatch> {
    const nl = createRtNetlink();
    const links = await nl.getLinks();
    const ifindex = links.find((l) => l.attrs.ifname === ifname)?.data.index;
    if (ifindex === undefined) {
      nl.socket.close();
      throw new Error(`watching ${ifname}: no such device`);
    }
    const w = new KernelWatch(nl);
    for (const g of GROUPS) nl.addMembership(g);
    nl.on("message", (msgs: rt.Message[]) => {
      if (!msgs.some((m) => concerns(m, ifindex))) return;
      if (w.timer !== undefined) return;
      w.timer = setTimeout(() => {
        w.timer = undefined;
        onChange();
      }, debounceMs);
    });
    nl.socket.unref();
    return w;
  }

  close(): void {
    clearTimeout(this.timer);
    this.nl.socket.close();
  }
}

function concerns(m: rt.Message, ifindex: number): boolean {
  switch (m.kind) {
    case "route":
      return m.attrs.oif === ifindex || Number(m.data.protocol) === VXMESH_RTPROT;
    case "neighbor":
      return m.data.ifindex === ifindex;
    case "address":
      return m.data.index === ifindex;
    case "link":
      return m.data.index === ifindex;
    default:
      return false;
  }
}
