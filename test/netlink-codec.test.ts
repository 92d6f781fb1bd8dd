// control/netlink/: the message serializer and parsers, the error, the event decoder (pure: no
// socket, no root). What the kernel makes of these messages is tested in netlink-lab.test.ts.

import { describe, expect, it } from "vitest";
import { parseIpv4, parseMac, type Ipv4, type MacAddr } from "../encap/types";
import { newAddr, parseAddr } from "../control/netlink/address";
import { attr, ifinfomsg, nested, parseAttrs, str, u32 } from "../control/netlink/codec";
import { AF_INET, IFF_UP, IFLA, IFLA_INFO, RTM, RTNH_F_ONLINK, RT_TABLE_MAIN, VXMESH_RTPROT } from "../control/netlink/constants";
import { NetlinkError, errnoCode } from "../control/netlink/errors";
import { parseEvent } from "../control/netlink/events";
import { parseLink, setLink } from "../control/netlink/link";
import { parseNeighbour, permanentNeighbour } from "../control/netlink/neighbour";
import { deleteRoute, newRoute, parseRoute } from "../control/netlink/route";

const ip = (t: string): Ipv4 => { const r = parseIpv4(t); if (!r.ok) throw new Error(r.error); return r.value; };
const mac = (t: string): MacAddr => { const r = parseMac(t); if (!r.ok) throw new Error(r.error); return r.value; };

describe("netlink codec", () => {
  it("pads attributes to 4 bytes and reads them back, nested ones included", () => {
    const b = Buffer.concat([attr(IFLA.IFNAME, str("eth0")), nested(IFLA.LINKINFO, [attr(IFLA_INFO.KIND, str("veth"))]), attr(IFLA.MTU, u32(1450))]);
    expect(b.length % 4).toBe(0);
    const a = parseAttrs(b, 0);
    expect(a.get(IFLA.IFNAME)?.toString("utf8")).toBe("eth0\0");
    expect(parseAttrs(a.get(IFLA.LINKINFO) ?? Buffer.alloc(0), 0).get(IFLA_INFO.KIND)?.toString("utf8")).toBe("veth\0");
    expect(a.get(IFLA.MTU)?.readUInt32LE(0)).toBe(1450);
  });

  it("stops at a truncated attribute instead of reading past the end", () => {
    const b = Buffer.concat([attr(IFLA.MTU, u32(1500)), Buffer.from([0x20, 0x00, 0x03, 0x00])]);
    expect([...parseAttrs(b, 0).keys()]).toEqual([IFLA.MTU]);
  });

  it("a link: index, name, MAC, MTU, up, kind", () => {
    const data = Buffer.concat([
      ifinfomsg(0, 7, IFF_UP),
      attr(IFLA.IFNAME, str("vxmesh0")), attr(IFLA.ADDRESS, Buffer.from([2, 0x7a, 0x3c, 0x11, 0, 1])), attr(IFLA.MTU, u32(1450)),
      nested(IFLA.LINKINFO, [attr(IFLA_INFO.KIND, str("tun"))]),
    ]);
    expect(parseLink(data)).toEqual({ index: 7, name: "vxmesh0", mac: mac("02:7a:3c:11:00:01"), mtu: 1450, up: true, master: undefined, alias: undefined, kind: "tun" });
  });

  it("SETLINK sends only what changes, and up in both flags and change", () => {
    const b = setLink(3, { mtu: 1400, up: true });
    expect(b.readInt32LE(4)).toBe(3);
    expect(b.readUInt32LE(8)).toBe(IFF_UP);
    expect(b.readUInt32LE(12)).toBe(IFF_UP);
    expect([...parseAttrs(b, 16).keys()]).toEqual([IFLA.MTU]);
  });

  it("a route vxmesh adds reads back as one of ours: proto 118, main table, onlink, unicast", () => {
    const r = parseRoute(newRoute({ dst: ip("10.244.5.0"), dstLen: 24, gateway: ip("10.244.5.0"), oif: 9, protocol: VXMESH_RTPROT, onlink: true }));
    expect(r).toMatchObject({ dst: ip("10.244.5.0"), dstLen: 24, gateway: ip("10.244.5.0"), oif: 9, table: RT_TABLE_MAIN, protocol: VXMESH_RTPROT, type: 1, onlink: true, priority: undefined });
    const def = parseRoute(newRoute({ dst: 0, dstLen: 0, gateway: ip("10.244.1.1"), oif: 2, protocol: 3 }));
    expect(def).toMatchObject({ dst: 0, dstLen: 0, gateway: ip("10.244.1.1"), onlink: false, protocol: 3 });
  });

  it("a route to delete carries its metric only when it has one", () => {
    const base = { dst: ip("10.244.5.0"), dstLen: 24, tos: 0, protocol: VXMESH_RTPROT, oif: 9, gateway: ip("10.244.5.0") };
    expect(parseRoute(deleteRoute({ ...base, priority: 0 }))?.priority).toBeUndefined();
    expect(parseRoute(deleteRoute({ ...base, priority: 20 }))?.priority).toBe(20);
    expect(parseRoute(deleteRoute({ ...base, priority: 20 }))?.onlink).toBe(false);
  });

  it("addresses carry a broadcast below /31, and other families are skipped", () => {
    const a = newAddr(4, ip("10.244.1.1"), 24);
    expect(parseAddr(a)).toEqual({ index: 4, prefixLen: 24, local: ip("10.244.1.1") });
    expect(parseAttrs(a, 8).get(4)?.readUInt32BE(0)).toBe(ip("10.244.1.255"));
    expect(parseAttrs(newAddr(4, ip("10.244.1.0"), 32), 8).has(4)).toBe(false);
    const v6 = Buffer.from(a);
    v6.writeUInt8(10, 0);
    expect(parseAddr(v6)).toBeUndefined();
  });

  it("a permanent neighbour reads back with its MAC and state", () => {
    expect(parseNeighbour(permanentNeighbour(5, ip("10.244.5.0"), mac("02:7a:3c:11:00:02")))).toEqual({
      ifindex: 5, ip: ip("10.244.5.0"), mac: mac("02:7a:3c:11:00:02"), state: 0x80, permanent: true,
    });
  });
});

describe("netlink errors and events", () => {
  it("NetlinkError names the errno and keeps the strerror text apart", () => {
    const e = new NetlinkError(-17, "adding route 10.244.5.0/24");
    expect(e.message).toBe("adding route 10.244.5.0/24: EEXIST");
    expect(e).toMatchObject({ errno: -17, code: "EEXIST", reason: "File exists", name: "NetlinkError" });
    expect(errnoCode(e)).toBe("EEXIST");
    expect(errnoCode(new Error("x"))).toBeUndefined();
  });

  it("events say which device (or for routes, which device and protocol) changed", () => {
    expect(parseEvent(RTM.NEWLINK, ifinfomsg(0, 12))).toEqual({ kind: "link", ifindex: 12 });
    expect(parseEvent(RTM.DELROUTE, newRoute({ dst: 0, dstLen: 0, gateway: 1, oif: 3, protocol: VXMESH_RTPROT }))).toEqual({ kind: "route", oif: 3, protocol: VXMESH_RTPROT });
    expect(parseEvent(RTM.NEWNEIGH, permanentNeighbour(8, 1, mac("02:00:00:00:00:01")))).toEqual({ kind: "neighbour", ifindex: 8 });
    expect(parseEvent(RTM.NEWADDR, Buffer.alloc(4))).toBeUndefined();
    expect(parseEvent(3, Buffer.alloc(16))).toBeUndefined();
  });

  it("the route flag and family constants are the kernel's", () => {
    expect([AF_INET, RTNH_F_ONLINK, RT_TABLE_MAIN]).toEqual([2, 4, 254]);
  });
});
