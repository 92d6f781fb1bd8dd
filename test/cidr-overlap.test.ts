// control/cidr-overlap.ts: which pod CIDRs collide with service CIDRs and host routes (pure).

import { describe, expect, it } from "vitest";
import {
  describeHostRoute, hostRouteOverlapMessage, hostRouteOverlaps, serviceOverlaps,
  type HostRoute, type LabelledCidr,
} from "../control/cidr-overlap";
import { RT_TABLE_MAIN, VXMESH_RTPROT } from "../control/netlink/constants";
import { parseIpv4, parseSubnet, type Ipv4, type Subnet } from "../encap/types";

function subnet(text: string): Subnet {
  const r = parseSubnet(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}
function ip(text: string): Ipv4 {
  const r = parseIpv4(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}
const cidr = (text: string, label = text): LabelledCidr => ({ subnet: subnet(text), label });
function route(dst: string, over: Partial<HostRoute> = {}): HostRoute {
  return { dst: subnet(dst), dev: "eth0", gateway: null, protocol: 4, table: RT_TABLE_MAIN, type: 1, ...over };
}

describe("serviceOverlaps", () => {
  const cluster = cidr("10.244.0.0/16", "--cluster-cidr 10.244.0.0/16");

  it("finds a service CIDR inside, around or equal to the pod CIDR", () => {
    for (const svc of ["10.244.128.0/20", "10.0.0.0/8", "10.244.0.0/16", "10.244.255.255/32"]) {
      expect(serviceOverlaps([cluster], [cidr(svc)]).map((o) => o.other.label), svc).toEqual([svc]);
    }
  });

  it("leaves neighbours alone, including the adjacent blocks", () => {
    expect(serviceOverlaps([cluster], [cidr("10.96.0.0/12"), cidr("10.243.0.0/16"), cidr("10.245.0.0/16")])).toEqual([]);
    expect(serviceOverlaps([], [cidr("0.0.0.0/0")])).toEqual([]);
  });

  it("reports every pair, in pod order", () => {
    const pods = [cidr("10.244.1.0/24", "a"), cidr("10.244.2.0/24", "b")];
    const found = serviceOverlaps(pods, [cidr("10.244.0.0/23", "s1"), cidr("10.244.2.0/25", "s2")]);
    expect(found.map((o) => `${o.pod.label}/${o.other.label}`)).toEqual(["a/s1", "b/s2"]);
  });
});

describe("hostRouteOverlaps", () => {
  const pods = [cidr("10.244.0.0/16", "--cluster-cidr 10.244.0.0/16")];
  const own = { devices: ["vxmesh0", "vxmesh-br"], nodeSubnets: [] };

  it("finds a route inside or around the pod CIDR, of any type, with or without a device", () => {
    const routes = [
      route("10.244.5.0/24", { dev: "eth1" }),
      route("10.0.0.0/8", { gateway: ip("192.0.2.1") }),
      route("10.244.0.0/16", { dev: undefined, type: 6 }),
    ];
    expect(hostRouteOverlaps(pods, routes, own).map((o) => describeHostRoute(o.other))).toEqual([
      "10.244.5.0/24 dev eth1 proto static",
      "10.0.0.0/8 via 192.0.2.1 dev eth0 proto static",
      "blackhole 10.244.0.0/16 proto static",
    ]);
  });

  it("ignores vxmesh's own routes, routes on the TAP and the pod bridge, default routes and other tables", () => {
    const routes = [
      route("10.244.2.0/24", { protocol: VXMESH_RTPROT, dev: "vxmesh0", gateway: ip("10.244.2.0") }),
      route("10.244.3.0/24", { protocol: VXMESH_RTPROT, dev: "somewhere" }),
      route("10.244.9.0/24", { dev: "vxmesh0" }),
      route("10.244.1.0/24", { dev: "vxmesh-br", protocol: 2 }),
      route("0.0.0.0/0", { gateway: ip("192.0.2.1") }),
      route("10.244.7.0/24", { table: 100 }),
      route("192.0.2.0/24", { protocol: 2 }),
    ];
    expect(hostRouteOverlaps(pods, routes, own)).toEqual([]);
  });

  it("a device route inside this node's own subnet is its pod bridge, whatever made it; anything that could take other nodes' traffic is not", () => {
    const withNode = { ...own, nodeSubnets: [subnet("10.244.13.0/24")] };
    const bridge = route("10.244.13.0/24", { dev: "cni0", protocol: 2 });
    const narrower = route("10.244.13.128/25", { dev: "br0", protocol: 2 });
    expect(hostRouteOverlaps(pods, [bridge, narrower], withNode)).toEqual([]);
    // Without knowing the node's subnet, the same route is a conflict (today's message).
    expect(hostRouteOverlaps(pods, [bridge], own).map((o) => describeHostRoute(o.other))).toEqual(["10.244.13.0/24 dev cni0 proto kernel"]);
    const others = [
      route("10.244.14.0/24", { dev: "cni0", protocol: 2 }),                     // another node's subnet
      route("10.244.12.0/23", { dev: "cni0", protocol: 2 }),                     // wider than ours
      route("10.244.13.0/24", { dev: "eth1", gateway: ip("192.0.2.1") }),       // ours, but through a router
    ];
    expect(hostRouteOverlaps(pods, others, withNode).map((o) => describeHostRoute(o.other))).toEqual([
      "10.244.14.0/24 dev cni0 proto kernel",
      "10.244.12.0/23 dev cni0 proto kernel",
      "10.244.13.0/24 via 192.0.2.1 dev eth1 proto static",
    ]);
  });

  it("says which pod CIDR meets which route, on which device", () => {
    const [o] = hostRouteOverlaps(pods, [route("10.244.5.0/24", { dev: "eth1", protocol: 4 })], own);
    expect(o).toBeDefined();
    if (o === undefined) return;
    expect(hostRouteOverlapMessage(o)).toBe(
      "--cluster-cidr 10.244.0.0/16 overlaps the host route 10.244.5.0/24 dev eth1 proto static (device eth1): pod traffic would be misrouted; remove that route or choose pod addresses clear of 10.244.5.0/24");
  });
});
