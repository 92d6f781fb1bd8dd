// `vxmesh trace`: the pure lookup (daemon/trace.ts), its argument parsing, and the per-peer
// counters it reports (slots, and the forwarder core counting into them).

import { describe, expect, it } from "vitest";
import type { ActualRoute, RouteLookup } from "../control/host-plumbing";
import { newCounterView, snapshotPeerTraffic } from "../encap/counters";
import { ForwardingTable, type Peer } from "../encap/fdb";
import { ForwarderCore } from "../encap/forwarder-core";
import { PeerSlots } from "../encap/peer-slots";
import { formatMac, parseIpv4, parseSubnet, vtepMacFor, writeMac, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";
import { VXLAN_HEADER_LEN, writeVxlanHeader } from "../encap/vxlan";
import { parseTraceArgs } from "../daemon/trace-command";
import { findOwner, formatTrace, traceIp, verdictIsReachable, type KernelFacts, type TraceMember, type TraceState } from "../daemon/trace";

function ip(text: string): Ipv4 {
  const r = parseIpv4(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function subnet(text: string): Subnet {
  const s = parseSubnet(text);
  if (!s.ok) throw new Error(s.error);
  return s.value;
}

const N2: Peer = { name: "n2", underlayIp: ip("192.0.2.12"), subnet: subnet("10.244.2.0/24"), vtepMac: vtepMacFor("n2"), path: "vxlan" };

function member(name: string, over: Partial<TraceMember> = {}): TraceMember {
  return {
    name, state: "alive", underlayIp: undefined, vtepMac: vtepMacFor(name), subnet: undefined, lease: "confirmed",
    heardAgoMs: 1200, stateForMs: 60_000, ...over,
  };
}

function gossipState(): TraceState {
  return {
    node: {
      name: "n1", mode: "gossip", subnet: subnet("10.244.1.0/24"), clusterCidr: subnet("10.244.0.0/16"), underlayIp: ip("192.0.2.11"),
      vtepMac: vtepMacFor("n1"), vni: 7, vxlanPort: 4789, tap: "vxmesh0", tapMtu: 1450,
    },
    peers: [N2],
    peerTraffic: new Map([["n2", { txFrames: 3, txBytes: 294, rxFrames: 2, rxBytes: 196 }]]),
    members: [
      member("n1", { subnet: subnet("10.244.1.0/24"), heardAgoMs: 0 }),
      member("n2", { subnet: N2.subnet, underlayIp: N2.underlayIp }),
      member("n3", { state: "dead", subnet: subnet("10.244.3.0/24"), stateForMs: 5000 }),
      member("n4", { subnet: subnet("10.244.4.0/24"), lease: "claiming" }),
      member("n5", { subnet: subnet("10.244.5.0/24") }),
    ],
    skipped: [{ name: "n5", why: "uses VNI 2 port 4789, this node VNI 7 port 4789" }],
    counters: { tap_rx_frames: 10, drop_runt: 0, drop_unknown_vtep: 4 },
  };
}

function lookup(over: Partial<RouteLookup> = {}): RouteLookup {
  return {
    dst: N2.subnet, gateway: N2.subnet.network, oif: 5, ifname: "vxmesh0", protocol: 118, type: 1, table: 254, onlink: true,
    pathMtu: undefined, ...over,
  };
}

const OUR_ROUTE: ActualRoute = { dst: N2.subnet, gateway: N2.subnet.network, onlink: true, priority: 0, tos: 0, type: 1 };

function healthyKernel(over: Partial<KernelFacts> = {}): KernelFacts {
  return {
    routes: [OUR_ROUTE],
    neighbours: [{ ip: N2.subnet.network, mac: N2.vtepMac }],
    lookup: lookup(),
    underlayPath: { lookup: lookup({ dst: subnet("192.0.2.12/32"), gateway: null, ifname: "eth0", protocol: 0, onlink: false }), deviceMtu: 1500 },
    ...over,
  };
}

describe("trace: who owns a pod IP", () => {
  it("a remote pod IP: the owner, its underlay address and VTEP MAC, when it was heard from, route and neighbour present", () => {
    const t = traceIp(gossipState(), ip("10.244.2.5"), healthyKernel());
    expect(t.verdict).toBe("remote");
    expect(verdictIsReachable(t.verdict)).toBe(true);
    expect(t.owner).toMatchObject({
      name: "n2", subnet: "10.244.2.0/24", underlayIp: "192.0.2.12", vtepMac: formatMac(N2.vtepMac),
      state: "alive", stateForSeconds: 60, lastHeard: { from: "gossip", secondsAgo: 1.2 },
    });
    expect(t.kernel.route).toEqual({ expected: "10.244.2.0/24 via 10.244.2.0 dev vxmesh0 onlink proto 118", state: "present", actual: ["10.244.2.0/24 via 10.244.2.0 dev vxmesh0 onlink proto 118"] });
    expect(t.kernel.neighbour?.state).toBe("present");
    expect(t.kernel.uses).toBe("10.244.2.0/24 via 10.244.2.0 dev vxmesh0 onlink proto 118");
    expect(t.mtu).toEqual({ tap: 1450, underlayDevice: "eth0", underlayDeviceMtu: 1500, learnedPathMtu: null, innerFits: 1450 });
    expect(t.encap).toEqual({ udpDstPort: 4789, vni: 7, underlayDst: "192.0.2.12" });
    expect(t.peerTraffic).toEqual({ txFrames: 3, txBytes: 294, rxFrames: 2, rxBytes: 196 });
    expect(t.drops).toEqual({ scope: "node-wide", byReason: { runt: 0, unknown_vtep: 4 } });
    expect(t.problems).toEqual([]);
  });

  it("a route deleted by hand shows missing, and where the kernel sends the packet instead", () => {
    const t = traceIp(gossipState(), ip("10.244.2.5"), healthyKernel({
      routes: [], lookup: lookup({ dst: subnet("0.0.0.0/0"), gateway: ip("192.0.2.1"), ifname: "eth0", protocol: 4, onlink: false }),
    }));
    expect(t.verdict).toBe("remote");
    expect(t.kernel.route?.state).toBe("missing");
    expect(t.kernel.uses).toBe("default via 192.0.2.1 dev eth0 proto static");
    expect(t.problems.join("\n")).toMatch(/route 10\.244\.2\.0\/24 via 10\.244\.2\.0 dev vxmesh0 onlink proto 118 is missing/);
    expect(t.problems.join("\n")).toMatch(/sends 10\.244\.2\.5 by default via 192\.0\.2\.1 dev eth0 proto static, not through vxmesh0/);
    expect(formatTrace(t)).toMatch(/^route +MISSING/m);
  });

  it("a route of another shape, a neighbour with another MAC, and a more specific foreign route are each named", () => {
    const t = traceIp(gossipState(), ip("10.244.2.5"), healthyKernel({
      routes: [{ ...OUR_ROUTE, priority: 100 }],
      neighbours: [{ ip: N2.subnet.network, mac: vtepMacFor("other") }],
    }));
    expect(t.kernel.route).toMatchObject({ state: "differs", actual: ["10.244.2.0/24 via 10.244.2.0 dev vxmesh0 onlink proto 118 metric 100"] });
    expect(t.kernel.neighbour).toMatchObject({ state: "differs", actual: formatMac(vtepMacFor("other")) });

    const shadowed = traceIp(gossipState(), ip("10.244.2.5"), healthyKernel({
      lookup: lookup({ dst: subnet("10.244.2.0/25"), gateway: null, ifname: "eth1", protocol: 4, onlink: false }),
    }));
    expect(shadowed.kernel.route?.state).toBe("present");
    expect(shadowed.problems).toEqual([expect.stringMatching(/matches 10\.244\.2\.0\/25 dev eth1 proto static .*not vxmesh's route/)]);
  });

  it("a learned path MTU below the TAP's is a problem; a missing underlay route too", () => {
    const small = healthyKernel({ underlayPath: { lookup: lookup({ ifname: "eth0", pathMtu: 1400 }), deviceMtu: 1500 } });
    const t = traceIp(gossipState(), ip("10.244.2.5"), small);
    expect(t.mtu).toMatchObject({ learnedPathMtu: 1400, innerFits: 1350 });
    expect(t.problems).toEqual([expect.stringMatching(/TAP MTU 1450 does not fit the path to n2: MTU 1400 − 50 = 1350/)]);
    const none = traceIp(gossipState(), ip("10.244.2.5"), healthyKernel({ underlayPath: { error: "Network is unreachable" } }));
    expect(none.problems).toEqual([expect.stringMatching(/no route to n2's underlay address 192\.0\.2\.12/)]);
  });

  it("a local pod IP is local", () => {
    const t = traceIp(gossipState(), ip("10.244.1.7"), healthyKernel({ lookup: lookup({ dst: subnet("10.244.1.0/24"), ifname: "vxmesh-br", protocol: 2, gateway: null, onlink: false }) }));
    expect(t.verdict).toBe("local");
    expect(verdictIsReachable(t.verdict)).toBe(true);
    expect(t.summary).toBe("10.244.1.7 is local: in this node's subnet 10.244.1.0/24 (n1)");
    expect(t.kernel.uses).toBe("10.244.1.0/24 dev vxmesh-br proto kernel");
    expect(t.owner).toBeUndefined();
  });

  it("outside the cluster CIDR, and inside it but held by nobody: clear answers, not reachable", () => {
    const kernel = healthyKernel({ lookup: { error: "Network is unreachable" } });
    const outside = traceIp(gossipState(), ip("10.9.9.9"), kernel);
    expect(outside.verdict).toBe("outside-cluster");
    expect(outside.summary).toBe("10.9.9.9 is not in the cluster's pod network 10.244.0.0/16: not a pod IP of this cluster");
    expect(outside.kernel.uses).toBe("no route: Network is unreachable");
    const unowned = traceIp(gossipState(), ip("10.244.200.1"), kernel);
    expect(unowned.verdict).toBe("unowned");
    expect(unowned.summary).toMatch(/no member holds a subnet containing it/);
    expect(verdictIsReachable(outside.verdict) || verdictIsReachable(unowned.verdict)).toBe(false);
  });

  it("a member's subnet this node does not route says why: dead, claim not confirmed, skipped", () => {
    const s = gossipState();
    const dead = findOwner(s, ip("10.244.3.4"));
    expect(dead).toMatchObject({ kind: "not-routed", member: { name: "n3" }, why: expect.stringMatching(/dead \(for 5 s\)/) });
    expect(findOwner(s, ip("10.244.4.4"))).toMatchObject({ kind: "not-routed", why: "its claim on 10.244.4.0/24 is not confirmed yet" });
    expect(findOwner(s, ip("10.244.5.5"))).toMatchObject({ kind: "not-routed", why: "uses VNI 2 port 4789, this node VNI 7 port 4789" });
    const t = traceIp(s, ip("10.244.3.4"), healthyKernel());
    expect(t.verdict).toBe("not-routed");
    expect(verdictIsReachable(t.verdict)).toBe(false);
    expect(t.owner).toMatchObject({ name: "n3", state: "dead", notRoutedBecause: expect.stringMatching(/dead/) });
    expect(t.kernel.route).toBeUndefined();
  });

  it("with static peers: the owner is a static peer, and anything outside every subnet is owned by nobody", () => {
    const s: TraceState = { ...gossipState(), node: { ...gossipState().node, mode: "static", clusterCidr: undefined }, members: undefined, skipped: [] };
    const t = traceIp(s, ip("10.244.2.9"), healthyKernel());
    expect(t.owner).toMatchObject({ name: "n2", underlayIp: "192.0.2.12", state: "static peer", lastHeard: { from: "static peer", secondsAgo: null } });
    expect(formatTrace(t)).toMatch(/static peer \(no gossip\)/);
    expect(traceIp(s, ip("10.9.9.9"), healthyKernel()).summary).toBe("10.9.9.9 is in no node's subnet: neither this node's nor any static peer's");
  });

  it("with the Kubernetes source: the owner is a Node, a skipped Node says why, an unowned IP says no Node holds it", () => {
    const node = (name: string, over: Partial<TraceMember> = {}): TraceMember => member(name, { via: "kubernetes", stateForMs: 0, heardAgoMs: 800, ...over });
    const s: TraceState = {
      ...gossipState(),
      node: { ...gossipState().node, mode: "kubernetes" },
      members: [node("n1", { subnet: subnet("10.244.1.0/24") }), node("n2", { subnet: N2.subnet, underlayIp: N2.underlayIp }), node("plain", { subnet: subnet("10.244.9.0/24"), underlayIp: undefined })],
      skipped: [{ name: "plain", why: "no vxmesh.io/ annotations: vxmesh is not running there (yet)" }],
    };
    const t = traceIp(s, ip("10.244.2.9"), healthyKernel());
    expect(t.owner).toMatchObject({ name: "n2", lastHeard: { from: "kubernetes", secondsAgo: 0.8 } });
    expect(formatTrace(t)).toMatch(/^node +a Node on the API server; the watch last spoke 0\.8 s ago$/m);
    expect(findOwner(s, ip("10.244.9.9"))).toMatchObject({ kind: "not-routed", member: { name: "plain" }, why: "no vxmesh.io/ annotations: vxmesh is not running there (yet)" });
    expect(traceIp(s, ip("10.244.77.1"), healthyKernel()).summary).toBe("10.244.77.1 is in the pod network 10.244.0.0/16 but no Node holds a subnet containing it");
  });

  it("the record survives JSON (it crosses the control socket) and formats for a terminal", () => {
    const t = traceIp(gossipState(), ip("10.244.2.5"), healthyKernel());
    expect(JSON.parse(JSON.stringify(t))).toEqual(t);
    const text = formatTrace(t);
    expect(text).toMatch(/^owner +n2 +subnet 10\.244\.2\.0\/24 +underlay 192\.0\.2\.12 +vtep /m);
    expect(text).toMatch(/last heard 1\.2 s ago \(gossip\)/);
    expect(text).toMatch(/^encap +VXLAN to 192\.0\.2\.12 udp dst port 4789, VNI 7$/m);
    expect(text).toMatch(/^drops +node-wide, all paths: unknown_vtep 4$/m);
  });
});

describe("trace: arguments", () => {
  it("takes one IPv4 address, --run-dir and --json", () => {
    expect(parseTraceArgs(["10.244.2.5", "--run-dir", "/tmp/x", "--json"], {})).toEqual({ ok: true, value: { ip: "10.244.2.5", runDir: "/tmp/x", json: true } });
    expect(parseTraceArgs(["10.244.2.5"], { VXMESH_RUN_DIR: "/run/other" })).toEqual({ ok: true, value: { ip: "10.244.2.5", runDir: "/run/other", json: false } });
  });

  it("names what is wrong: a bad IP, none, two, an unknown flag", () => {
    expect(parseTraceArgs(["10.244.2.500"], {})).toEqual({ ok: false, error: 'pod IP "10.244.2.500" is not valid: expected a dotted-quad IPv4 address with octets 0-255' });
    expect(parseTraceArgs(["pod-a"], {})).toMatchObject({ ok: false, error: expect.stringMatching(/^pod IP "pod-a" is not valid/) });
    expect(parseTraceArgs([], {})).toMatchObject({ ok: false, error: expect.stringMatching(/pod IP is missing/) });
    expect(parseTraceArgs(["10.244.2.5", "10.244.2.6"], {})).toMatchObject({ ok: false, error: expect.stringMatching(/unexpected argument "10.244.2.6"/) });
    expect(parseTraceArgs(["10.244.2.5", "--nope"], {})).toMatchObject({ ok: false, error: expect.stringMatching(/unknown flag --nope/) });
  });
});

describe("per-peer traffic counters", () => {
  it("a peer keeps its slot by name, across leaving and coming back", () => {
    const slots = new PeerSlots(8);
    const first = slots.assign(["a", "b"], new Set());
    expect(first).toEqual({ slots: [1, 2], reset: [] });
    expect(slots.assign(["b"], new Set(["a", "b"])).slots).toEqual([2]);
    expect(slots.assign(["c", "a", "b"], new Set(["b"])).slots).toEqual([3, 1, 2]);
  });

  it("when every slot is taken, only a peer in no table the forwarder may use gives up its slot, zeroed; else the sink", () => {
    const slots = new PeerSlots(3); // slots 1 and 2; 0 is the sink
    slots.assign(["a", "b"], new Set());
    // "a" is gone from the new table but still in the one the forwarder uses: not reclaimed.
    expect(slots.assign(["b", "c"], new Set(["a", "b"]))).toEqual({ slots: [2, 0], reset: [] });
    // Once no table has "a", its slot goes to "c" and must be zeroed first.
    expect(slots.assign(["b", "c"], new Set(["b"]))).toEqual({ slots: [2, 1], reset: [1] });
    expect(slots.slotOf("a")).toBeUndefined();
  });

  it("the forwarder core counts frames and bytes out to and in from each peer in its slot", () => {
    const N3: Peer = { ...N2, name: "n3", underlayIp: ip("192.0.2.13"), subnet: subnet("10.244.3.0/24"), vtepMac: vtepMacFor("n3") };
    const built = ForwardingTable.build([N2, N3], [5, 9]);
    if (!built.ok) throw new Error(built.error);
    const c = newCounterView();
    const core = new ForwarderCore({ vni: 7 as Vni, port: 4789, mtu: 1450, batch: 8, sourcePorts: 1 }, built.table, c);
    const local = vtepMacFor("n1");
    const frames = [frame(N2.vtepMac, local, ip("10.244.1.5"), ip("10.244.2.5"), 8), frame(N2.vtepMac, local, ip("10.244.1.5"), ip("10.244.2.5"), 100),
      frame(N3.vtepMac, local, ip("10.244.1.5"), ip("10.244.3.5"), 8), frame(vtepMacFor("nobody"), local, ip("10.244.1.5"), ip("10.244.9.5"), 8)];
    frames.forEach((f, i) => {
      core.tapSlab.set(f, i * core.tapStride + VXLAN_HEADER_LEN);
      core.tapLens[i] = f.length;
    });
    expect(core.encapsulate(frames.length)).toBe(3);
    expect(snapshotPeerTraffic(c, 5)).toEqual({ txFrames: 2, txBytes: frames[0]!.length + frames[1]!.length, rxFrames: 0, rxBytes: 0 });
    expect(snapshotPeerTraffic(c, 9)).toMatchObject({ txFrames: 1, txBytes: frames[2]!.length });

    // From n3: one good datagram, one whose inner source is not n3's (spoofed, not counted for n3).
    const good = frame(local, N3.vtepMac, ip("10.244.3.5"), ip("10.244.1.5"), 20);
    const spoofed = frame(local, N3.vtepMac, ip("10.244.2.5"), ip("10.244.1.5"), 20);
    [good, spoofed].forEach((f, i) => {
      const off = i * core.udpStride;
      writeVxlanHeader(core.udpSlab, off, 7 as Vni);
      core.udpSlab.set(f, off + VXLAN_HEADER_LEN);
      core.udpLens[i] = VXLAN_HEADER_LEN + f.length;
      core.udpSrcIps[i] = N3.underlayIp;
    });
    expect(core.decapsulate(2)).toBe(1);
    expect(snapshotPeerTraffic(c, 9)).toEqual({ txFrames: 1, txBytes: frames[2]!.length, rxFrames: 1, rxBytes: good.length });
    expect(snapshotPeerTraffic(c, 5)).toMatchObject({ rxFrames: 0 });
  });
});

/** An Ethernet + IPv4 frame with `payload` zero bytes. */
function frame(dst: MacAddr, src: MacAddr, from: Ipv4, to: Ipv4, payload: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + payload);
  writeMac(f, 0, dst);
  writeMac(f, 6, src);
  f[12] = 0x08;
  f[14] = 0x45;
  const total = 20 + payload;
  f[16] = total >> 8;
  f[17] = total & 0xff;
  f[22] = 64;
  f[23] = 17;
  new DataView(f.buffer).setUint32(26, from);
  new DataView(f.buffer).setUint32(30, to);
  return f;
}
