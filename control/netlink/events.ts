// Notifications (multicast RTNLGRP_* messages): what changed, read from the headers alone and
// for every address family, so a watcher learns about any change on a device.

import { parseAttrs, readU32 } from "./codec";
import { RTA, RTM } from "./constants";

export type RtEvent =
  | { kind: "link"; ifindex: number }
  | { kind: "address"; ifindex: number }
  | { kind: "neighbour"; ifindex: number }
  | { kind: "route"; oif: number | undefined; protocol: number };

/** One notification; undefined for other message types and truncated ones. */
export function parseEvent(type: number, data: Buffer): RtEvent | undefined {
  switch (type) {
    case RTM.NEWLINK: case RTM.DELLINK:
      return data.length >= 16 ? { kind: "link", ifindex: data.readInt32LE(4) } : undefined;
    case RTM.NEWADDR: case RTM.DELADDR:
      return data.length >= 8 ? { kind: "address", ifindex: data.readUInt32LE(4) } : undefined;
    case RTM.NEWNEIGH: case RTM.DELNEIGH:
      return data.length >= 12 ? { kind: "neighbour", ifindex: data.readInt32LE(4) } : undefined;
    case RTM.NEWROUTE: case RTM.DELROUTE:
      return data.length >= 12 ? { kind: "route", oif: readU32(parseAttrs(data, 12).get(RTA.OIF)), protocol: data.readUInt8(5) } : undefined;
    default:
      return undefined;
  }
}
