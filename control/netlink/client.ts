// The one rtnetlink client of the product: a socket in this network namespace or inside a pod's,
// one request at a time, the kernel's refusals as NetlinkError, and the link, address, route and
// neighbour operations vxmesh needs. Host plumbing, host-route reading, the kernel watch, the
// underlay lookup and the CNI handler all speak netlink through it.
//
// Transport: the `netlink` npm package (netlink@0.3.0) provides the socket (its native part),
// sequence numbers, multipart assembly and multicast membership; the messages themselves are
// written and read by our own codec (codec.ts and the per-object modules), because the pieces
// the CNI needs (a veth whose peer is created straight inside the pod namespace through
// IFLA_NET_NS_FD, a nested IFLA_LINKINFO, hairpin through an AF_BRIDGE IFLA_PROTINFO) are not
// covered by the package's typed formatters, its parsed enums come back as names or numbers
// depending on the value, and a rejected request loses its errno unless it is read from the
// NLMSG_ERROR payload here.
//
// Network namespaces: an rtnetlink socket acts on the namespace it was created in, and
// netlink@0.3.0 cannot adopt a descriptor made elsewhere (its native constructor always calls
// socket() itself). So `Rtnl.openIn(nsPath)` creates the socket inside the pod's namespace by
// running the (synchronous) constructor under the native `inNetns`, which setns()es the calling
// thread there and back around it. No thread pool, no `ip netns exec`, no extra process.

import { createNetlink, type NetlinkMessage, type NetlinkSocket } from "netlink";
import type { MacAddr } from "../../encap/types";
import { loadNative } from "../../encap/native";
import { Serial } from "../serial";
import { allAddrs, deleteAddr, newAddr, parseAddr, type AddrInfo } from "./address";
import { NETLINK_ROUTE, NLM_F, NLMSG_ERROR, RTM } from "./constants";
import { NetlinkError, errnoCode } from "./errors";
import { parseEvent, type RtEvent } from "./events";
import * as linkMsg from "./link";
import { allNeighbours, deleteNeighbour, parseNeighbour, permanentNeighbour, type NeighbourInfo } from "./neighbour";
import { allRoutes, deleteRoute, newRoute, parseRoute, routeTo, type NewRoute, type OldRoute, type RouteInfo } from "./route";

const REQUEST_TIMEOUT_MS = 10_000;

function defined<T>(x: T | undefined): x is T {
  return x !== undefined;
}

export class Rtnl {
  /** netlink@0.3.0 assembles multipart answers in a single slot per socket: requests go one at a time. */
  private readonly queue = new Serial();
  private closed = false;

  private errorListeners: ((err: Error) => void)[] = [];
  /** Socket errors seen (an overrun of a watch socket, ENOBUFS, drops notifications). */
  socketErrors = 0;

  private constructor(private readonly sock: NetlinkSocket) {
    // An EventEmitter's "error" without a listener throws: a receive overrun must not end the
    // daemon. Requests in flight still time out; a watch is told (its events may be lost).
    sock.on("error", (err: Error) => {
      this.socketErrors++;
      for (const l of this.errorListeners) l(err);
    });
  }

  /** A socket in the calling process's network namespace. */
  static open(): Rtnl {
    return new Rtnl(createNetlink(NETLINK_ROUTE));
  }

  /**
   * A socket inside the network namespace at `nsPath`. Throws with `code` ENOENT when the path
   * does not exist and EINVAL when it is not a network namespace.
   */
  static openIn(nsPath: string): Rtnl {
    return new Rtnl(loadNative().inNetns(nsPath, () => createNetlink(NETLINK_ROUTE)));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.sock.close();
    } catch {
      /* already closed */
    }
  }

  /**
   * One request (NLM_F_REQUEST|NLM_F_ACK + `flags`); resolves with the answer's payloads (none
   * for a plain ACK) and rejects with a NetlinkError when the kernel refuses. `what` names the
   * request in that error.
   */
  request(type: number, body: Buffer, flags: number, what: string): Promise<Buffer[]> {
    if (this.closed) return Promise.reject(new Error(`${what}: the netlink socket is closed`));
    return this.queue.run(async () => {
      const [msgs] = await this.sock.request(type, body, { flags, checkError: false, timeout: REQUEST_TIMEOUT_MS });
      const first: NetlinkMessage | undefined = msgs[0];
      if (first !== undefined && first.type === NLMSG_ERROR) {
        const errno = first.data.length >= 4 ? first.data.readInt32LE(0) : 0;
        if (errno !== 0) throw new NetlinkError(errno, what);
        return [];
      }
      return msgs.map((m) => m.data);
    });
  }

  /**
   * Joins the multicast `groups` (RTNLGRP_*) and calls `onEvents` with each batch of
   * notifications that concern links, addresses, neighbours or routes, and `onError` when the
   * socket fails (notifications may have been lost). The socket does not keep the process alive.
   */
  watch(groups: readonly number[], onEvents: (events: RtEvent[]) => void, onError?: (err: Error) => void): void {
    if (onError !== undefined) this.errorListeners.push(onError);
    for (const g of groups) this.sock.addMembership(g);
    this.sock.on("message", (msgs: NetlinkMessage[]) => {
      const events = msgs.map((m) => parseEvent(m.type, m.data)).filter(defined);
      if (events.length > 0) onEvents(events);
    });
    this.sock.unref();
  }

  // -- links -----------------------------------------------------------------------------------

  /** The link called `name`, or undefined when there is none. */
  async link(name: string): Promise<linkMsg.LinkInfo | undefined> {
    try {
      return await this.getLink(name, `looking up link ${name}`);
    } catch (e) {
      if (errnoCode(e) === "ENODEV") return undefined;
      throw e;
    }
  }

  /**
   * The link with this name or index; rejects naming `what` when the kernel refuses (ENODEV:
   * there is none). Undefined only when the kernel answered with nothing.
   */
  async getLink(ref: string | number, what: string): Promise<linkMsg.LinkInfo | undefined> {
    const body = typeof ref === "string" ? linkMsg.linkByName(ref) : linkMsg.linkByIndex(ref);
    const [data] = await this.request(RTM.GETLINK, body, 0, what);
    return data === undefined ? undefined : linkMsg.parseLink(data);
  }

  async links(): Promise<linkMsg.LinkInfo[]> {
    return (await this.request(RTM.GETLINK, linkMsg.allLinks(), NLM_F.DUMP, "listing links")).map(linkMsg.parseLink);
  }

  async createBridge(name: string, mtu: number, mac: MacAddr): Promise<void> {
    await this.request(RTM.NEWLINK, linkMsg.newBridge(name, mtu, mac), NLM_F.CREATE | NLM_F.EXCL, `creating bridge ${name}`);
  }

  /**
   * A veth pair: `hostName` here, its peer `peerName` created directly inside the namespace the
   * descriptor `peerNsFd` refers to. Both ends get `mtu`; the peer gets `peerMac` when given.
   */
  async createVeth(hostName: string, peerName: string, peerNsFd: number, mtu: number, peerMac?: MacAddr): Promise<void> {
    await this.request(RTM.NEWLINK, linkMsg.newVeth(hostName, peerName, peerNsFd, mtu, peerMac), NLM_F.CREATE | NLM_F.EXCL,
      `creating veth ${hostName} with peer ${peerName}`);
  }

  async deleteLink(index: number, what: string): Promise<void> {
    await this.request(RTM.DELLINK, linkMsg.deleteLink(index), 0, what);
  }

  /** Puts a link into device group `group` (for deleting several links in one request). */
  async setGroup(index: number, group: number, what: string): Promise<void> {
    await this.request(RTM.SETLINK, linkMsg.setGroup(index, group), 0, what);
  }

  /**
   * Deletes every link of device group `group` in one request: the kernel unregisters them
   * together and waits for that once (~20 ms) instead of once per link.
   */
  async deleteGroup(group: number, what: string): Promise<void> {
    await this.request(RTM.DELLINK, linkMsg.deleteGroup(group), 0, what);
  }

  /** One SETLINK with everything `change` asks for (master, alias, MAC, MTU, up). */
  async configureLink(index: number, change: linkMsg.LinkChange, what: string): Promise<void> {
    await this.request(RTM.SETLINK, linkMsg.setLink(index, change), 0, what);
  }

  async setUp(index: number, what: string): Promise<void> {
    await this.request(RTM.SETLINK, linkMsg.setLink(index, { up: true }), 0, what);
  }

  /** Hairpin mode on a bridge port (what `bridge link set dev X hairpin on` sends). */
  async setHairpin(index: number, on: boolean, what: string): Promise<void> {
    await this.request(RTM.SETLINK, linkMsg.setHairpin(index, on), 0, what);
  }

  // -- addresses -------------------------------------------------------------------------------

  /** Every IPv4 address of the namespace. */
  async addresses(what = "listing addresses"): Promise<AddrInfo[]> {
    return (await this.request(RTM.GETADDR, allAddrs(), NLM_F.DUMP, what)).map(parseAddr).filter(defined);
  }

  /** Adds (or, with `replace`, keeps) `ip/prefixLen` with its broadcast on link `index`. */
  async addAddress(index: number, ip: number, prefixLen: number, replace: boolean, what: string): Promise<void> {
    await this.request(RTM.NEWADDR, newAddr(index, ip, prefixLen), NLM_F.CREATE | (replace ? NLM_F.REPLACE : NLM_F.EXCL), what);
  }

  async deleteAddress(index: number, ip: number, prefixLen: number, what: string): Promise<void> {
    await this.request(RTM.DELADDR, deleteAddr(index, ip, prefixLen), 0, what);
  }

  // -- routes ----------------------------------------------------------------------------------

  /** Every IPv4 route of the namespace, in every table. */
  async routes(what = "listing routes"): Promise<RouteInfo[]> {
    return (await this.request(RTM.GETROUTE, allRoutes(), NLM_F.DUMP, what)).map(parseRoute).filter(defined);
  }

  /**
   * The route the kernel uses for `ip` right now, or with `fibMatch` the FIB entry that matches
   * (`ip route get [fibmatch]`). Rejects with ENETUNREACH (etc.) when the kernel has no route;
   * undefined only when the kernel answered with nothing.
   */
  async lookupRoute(ip: number, fibMatch: boolean, what: string): Promise<RouteInfo | undefined> {
    return (await this.request(RTM.GETROUTE, routeTo(ip, fibMatch), 0, what)).map(parseRoute).find(defined);
  }

  /** Adds a unicast route to the main table (NLM_F_EXCL: EEXIST when it is there). */
  async addRoute(r: NewRoute, what: string): Promise<void> {
    await this.request(RTM.NEWROUTE, newRoute(r), NLM_F.CREATE | NLM_F.EXCL, what);
  }

  async deleteRoute(r: OldRoute, what: string): Promise<void> {
    await this.request(RTM.DELROUTE, deleteRoute(r), 0, what);
  }

  // -- neighbours ------------------------------------------------------------------------------

  /** Every IPv4 neighbour of the namespace. */
  async neighbours(what = "listing neighbours"): Promise<NeighbourInfo[]> {
    return (await this.request(RTM.GETNEIGH, allNeighbours(), NLM_F.DUMP, what)).map(parseNeighbour).filter(defined);
  }

  /** Creates or replaces the permanent neighbour `ip lladdr mac` on link `ifindex`. */
  async setPermanentNeighbour(ifindex: number, ip: number, mac: MacAddr, what: string): Promise<void> {
    await this.request(RTM.NEWNEIGH, permanentNeighbour(ifindex, ip, mac), NLM_F.CREATE | NLM_F.REPLACE, what);
  }

  async deleteNeighbour(ifindex: number, ip: number, what: string): Promise<void> {
    await this.request(RTM.DELNEIGH, deleteNeighbour(ifindex, ip), 0, what);
  }
}
