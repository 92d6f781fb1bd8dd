// control/netlink/client.ts against a real kernel: a socket opened inside a throwaway network
// namespace with Rtnl.openIn (the native inNetns), links, addresses, routes, neighbours, a route
// lookup and notifications, each checked against what `ip` shows. Needs root.

import { execFileSync, spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Rtnl, RTNLGRP, RTPROT_BOOT, VXMESH_RTPROT, errnoCode, type RtEvent } from "../control/netlink";
import { KernelWatch } from "../control/kernel-watch";
import { parseIpv4, parseMac, type Ipv4, type MacAddr } from "../encap/types";

const ip = (t: string): Ipv4 => { const r = parseIpv4(t); if (!r.ok) throw new Error(r.error); return r.value; };
const mac = (t: string): MacAddr => { const r = parseMac(t); if (!r.ok) throw new Error(r.error); return r.value; };

const NS = `vxnl-${process.pid}`;
const NS_PATH = `/run/netns/${NS}`;
const inNs = (...args: string[]): string => execFileSync("ip", ["-n", NS, ...args], { encoding: "utf8" });

describe.skipIf(process.getuid?.() !== 0)("the netlink client in a network namespace (root)", () => {
  let nl: Rtnl;

  beforeAll(() => {
    spawnSync("ip", ["netns", "del", NS], { stdio: "ignore" });
    execFileSync("ip", ["netns", "add", NS]);
    inNs("link", "add", "dummy0", "type", "veth", "peer", "name", "dummy0p");
    inNs("link", "set", "dummy0p", "up");
    nl = Rtnl.openIn(NS_PATH);
  });

  afterAll(() => {
    nl?.close();
    spawnSync("ip", ["netns", "del", NS], { stdio: "ignore" });
  });

  it("openIn refuses a missing path (ENOENT) and a file that is not a namespace (EINVAL)", () => {
    expect(() => Rtnl.openIn(`/run/netns/vxnl-none-${process.pid}`)).toThrow(expect.objectContaining({ code: "ENOENT" }));
    expect(() => Rtnl.openIn("/etc/hostname")).toThrow(expect.objectContaining({ code: "EINVAL" }));
  });

  it("sees the namespace's own links, not the host's", async () => {
    expect((await nl.links()).map((l) => l.name).sort()).toEqual(["dummy0", "dummy0p", "lo"]);
    expect(await nl.link("eth-none")).toBeUndefined();
    await expect(nl.getLink("eth-none", "looking up eth-none")).rejects.toMatchObject({ code: "ENODEV", message: "looking up eth-none: ENODEV", reason: "No such device" });
  });

  it("configures a link, its address, a route and a neighbour as `ip` then shows them", async () => {
    const dummy = await nl.link("dummy0");
    if (dummy === undefined) throw new Error("no dummy0");
    await nl.configureLink(dummy.index, { mac: mac("02:7a:3c:11:00:09"), mtu: 1400, up: true }, "configuring dummy0");
    await nl.addAddress(dummy.index, ip("10.99.0.1"), 24, false, "adding 10.99.0.1/24");
    await expect(nl.addAddress(dummy.index, ip("10.99.0.1"), 24, false, "again")).rejects.toMatchObject({ code: "EEXIST" });
    await nl.addAddress(dummy.index, ip("10.99.0.1"), 24, true, "replacing");
    await nl.addRoute({ dst: ip("10.244.5.0"), dstLen: 24, gateway: ip("10.244.5.0"), oif: dummy.index, protocol: VXMESH_RTPROT, onlink: true }, "adding a route");
    await nl.setPermanentNeighbour(dummy.index, ip("10.244.5.0"), mac("02:7a:3c:11:00:05"), "adding a neighbour");

    expect(inNs("-br", "link", "show", "dummy0")).toMatch(/02:7a:3c:11:00:09/);
    expect(inNs("link", "show", "dummy0")).toMatch(/mtu 1400/);
    expect(inNs("-4", "-br", "addr", "show", "dummy0")).toMatch(/10\.99\.0\.1\/24/);
    expect(inNs("route", "show", "proto", "118").trim()).toBe("10.244.5.0/24 via 10.244.5.0 dev dummy0 onlink");
    expect(inNs("neigh", "show", "dev", "dummy0").trim()).toBe("10.244.5.0 lladdr 02:7a:3c:11:00:05 PERMANENT");

    const link = await nl.link("dummy0");
    expect(link).toMatchObject({ mac: mac("02:7a:3c:11:00:09"), mtu: 1400, up: true, kind: "veth" });
    expect((await nl.addresses()).filter((a) => a.index === dummy.index)).toEqual([{ index: dummy.index, prefixLen: 24, local: ip("10.99.0.1") }]);
    const ours = (await nl.routes()).filter((r) => r.protocol === VXMESH_RTPROT);
    expect(ours).toEqual([expect.objectContaining({ dst: ip("10.244.5.0"), dstLen: 24, gateway: ip("10.244.5.0"), oif: dummy.index, table: 254, onlink: true, type: 1 })]);
    expect((await nl.neighbours()).filter((n) => n.ifindex === dummy.index)).toEqual([
      { ifindex: dummy.index, ip: ip("10.244.5.0"), mac: mac("02:7a:3c:11:00:05"), state: 0x80, permanent: true },
    ]);
    expect(await nl.lookupRoute(ip("10.244.5.7"), true, "looking up")).toMatchObject({ dst: ip("10.244.5.0"), dstLen: 24, protocol: VXMESH_RTPROT, oif: dummy.index });
    await expect(nl.lookupRoute(ip("192.0.2.1"), false, "looking up 192.0.2.1")).rejects.toMatchObject({ code: "ENETUNREACH" });

    await nl.deleteNeighbour(dummy.index, ip("10.244.5.0"), "removing the neighbour");
    await nl.deleteRoute({ dst: ip("10.244.5.0"), dstLen: 24, tos: 0, protocol: VXMESH_RTPROT, oif: dummy.index, gateway: ip("10.244.5.0"), priority: 0 }, "removing the route");
    await nl.addRoute({ dst: 0, dstLen: 0, gateway: ip("10.99.0.254"), oif: dummy.index, protocol: RTPROT_BOOT }, "adding a default route");
    expect(inNs("route", "show", "proto", "118").trim()).toBe("");
    expect(inNs("route", "show", "default").trim()).toBe("default via 10.99.0.254 dev dummy0"); // proto boot is not shown
    expect((await nl.routes()).filter((r) => r.dstLen === 0)).toEqual([expect.objectContaining({ gateway: ip("10.99.0.254"), protocol: RTPROT_BOOT, table: 254 })]);
    await nl.deleteAddress(dummy.index, ip("10.99.0.1"), 24, "removing the address");
    expect(inNs("-4", "addr", "show", "dummy0").trim()).toBe("");
    await expect(nl.deleteAddress(dummy.index, ip("10.99.0.1"), 24, "again")).rejects.toSatisfy((e) => errnoCode(e) === "EADDRNOTAVAIL");
  });

  it("delivers notifications of changes in its namespace", async () => {
    const watcher = Rtnl.openIn(NS_PATH);
    try {
      const got: RtEvent[] = [];
      watcher.watch([RTNLGRP.LINK, RTNLGRP.IPV4_ROUTE], (events) => got.push(...events));
      inNs("link", "add", "dummy1", "type", "veth", "peer", "name", "dummy1p");
      const index = (await nl.link("dummy1"))?.index;
      for (let i = 0; i < 100 && !got.some((e) => e.kind === "link" && e.ifindex === index); i++) await new Promise((r) => setTimeout(r, 10));
      expect(got).toContainEqual({ kind: "link", ifindex: index });
    } finally {
      watcher.close();
    }
  });

  it("a socket error (a notification overrun) neither throws nor goes unheard: the watch is told, requests still work", async () => {
    const watcher = Rtnl.openIn(NS_PATH);
    try {
      const errors: Error[] = [];
      watcher.watch([RTNLGRP.LINK], () => undefined, (err) => errors.push(err));
      // What the netlink package emits when recvmsg fails (ENOBUFS after an overrun).
      const sock = (watcher as unknown as { sock: NodeJS.EventEmitter }).sock;
      expect(() => sock.emit("error", Object.assign(new Error("recvmsg ENOBUFS"), { code: "ENOBUFS" }))).not.toThrow();
      expect(errors.map((e) => e.message)).toEqual(["recvmsg ENOBUFS"]);
      expect(watcher.socketErrors).toBe(1);
      expect((await watcher.links()).some((l) => l.name === "lo")).toBe(true);
    } finally {
      watcher.close();
    }
  });

  it("the kernel watch treats a socket error as a change (events may be lost): the reconciler is woken", async () => {
    let woken = 0;
    const w = await KernelWatch.open("lo", () => woken++, 10);
    try {
      const sock = (w as unknown as { nl: { sock: NodeJS.EventEmitter } }).nl.sock;
      sock.emit("error", Object.assign(new Error("recvmsg ENOBUFS"), { code: "ENOBUFS" }));
      for (let i = 0; i < 100 && woken === 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(woken).toBe(1);
    } finally {
      w.close();
    }
  });

  it("a closed client refuses requests", async () => {
    const c = Rtnl.openIn(NS_PATH);
    c.close();
    await expect(c.links()).rejects.toThrow("listing links: the netlink socket is closed");
  });
});
