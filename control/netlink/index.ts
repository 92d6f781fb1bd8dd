// The netlink layer (control/netlink/): the only place in the product that speaks rtnetlink.
// client.ts is the socket and the operations; constants.ts, errors.ts, codec.ts and the
// per-object modules (link, address, route, neighbour, events) are what it is made of.

export { Rtnl } from "./client";
export * from "./constants";
export { NetlinkError, errnoCode } from "./errors";
export type { AddrInfo } from "./address";
export type { RtEvent } from "./events";
export type { LinkChange, LinkInfo } from "./link";
export type { NeighbourInfo } from "./neighbour";
export type { NewRoute, OldRoute, RouteInfo } from "./route";
