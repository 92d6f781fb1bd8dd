// Wakes the reconciler when the kernel state around the TAP changes: a route, neighbour,
// address or link event that concerns the TAP (or a route of ours anywhere). The periodic
// reconcile stays as the safety net; this makes repairs prompt.

import { RTNLGRP, Rtnl, VXMESH_RTPROT, type RtEvent } from "./netlink";

const GROUPS = [RTNLGRP.LINK, RTNLGRP.NEIGH, RTNLGRP.IPV4_IFADDR, RTNLGRP.IPV4_ROUTE];

export class KernelWatch {
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(private readonly nl: Rtnl) {}

  /** Calls `onChange` (at most once per `debounceMs`) after events that concern `ifname`. */
  static async open(ifname: string, onChange: () => void, debounceMs = 200): Promise<KernelWatch> {
    const nl = Rtnl.open();
    let ifindex: number | undefined;
    try {
      ifindex = (await nl.links()).find((l) => l.name === ifname)?.index;
    } catch (e) {
      nl.close();
      throw e;
    }
    if (ifindex === undefined) {
      nl.close();
      throw new Error(`watching ${ifname}: no such device`);
    }
    const w = new KernelWatch(nl);
    const tap = ifindex;
    const soon = (): void => {
      if (w.closed || w.timer !== undefined) return;
      w.timer = setTimeout(() => {
        w.timer = undefined;
        onChange();
      }, debounceMs);
    };
    // A socket error (a notification overrun) may have cost events: reconcile as if one came.
    nl.watch(GROUPS, (events) => {
      if (events.some((e) => concerns(e, tap))) soon();
    }, soon);
    return w;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.nl.close();
  }
}

function concerns(e: RtEvent, ifindex: number): boolean {
  return e.kind === "route" ? e.oif === ifindex || e.protocol === VXMESH_RTPROT : e.ifindex === ifindex;
}
