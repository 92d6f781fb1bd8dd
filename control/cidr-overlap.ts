// Pod addresses must be the overlay's alone: a pod CIDR that overlaps a service CIDR, or a
// route the host already has, gives a network that looks up and misroutes. Pure: the daemon and
// `vxmesh doctor` read the kernel's routes (host-routes.ts) and ask these functions.

import { formatIpv4, formatSubnet, subnetInside, subnetsOverlap, type Ipv4, type Subnet } from "../encap/types";
import { RT_TABLE_MAIN, VXMESH_RTPROT } from "./netlink/constants";

/** A CIDR with the words that name it in a message, e.g. "--cluster-cidr 10.244.0.0/16". */
export interface LabelledCidr {
  readonly subnet: Subnet;
  readonly label: string;
}

/** One IPv4 route as the kernel holds it (any table, any protocol). */
export interface HostRoute {
  readonly dst: Subnet;
  /** Output device name; undefined for routes without one (blackhole, unreachable). */
  readonly dev: string | undefined;
  readonly gateway: Ipv4 | null;
  /** rtm_protocol: 2 kernel, 3 boot, 4 static, 118 vxmesh, … */
  readonly protocol: number;
  /** Full table id (254 = main). */
  readonly table: number;
  /** rtm_type: 1 unicast, 6 blackhole, 7 unreachable, 8 prohibit, … */
  readonly type: number;
}

export interface Overlap<T> {
  readonly pod: LabelledCidr;
  readonly other: T;
}

/** Every (pod CIDR, service CIDR) pair that shares an address. */
export function serviceOverlaps(pods: readonly LabelledCidr[], services: readonly LabelledCidr[]): Overlap<LabelledCidr>[] {
  const out: Overlap<LabelledCidr>[] = [];
  for (const pod of pods) for (const svc of services) if (subnetsOverlap(pod.subnet, svc.subnet)) out.push({ pod, other: svc });
  return out;
}

/** What on this node is the overlay's own: routes here are not conflicts. */
export interface OwnRoutes {
  /** The daemon's TAP and the pod bridge, whose routes the overlay and CNI make. */
  readonly devices: readonly string[];
  /**
   * This node's own pod subnet(s), when known (static --subnet, gossip's --subnet or persisted
   * lease). A route without a gateway inside one of them is the pod bridge's connected route,
   * whatever made the bridge (the reference bridge plugin's cni0, say): the layout of the
   * Kubernetes network model, which cannot capture another node's pod traffic.
   */
  readonly nodeSubnets: readonly Subnet[];
}

/**
 * Host routes that claim pod addresses, i.e. could capture other nodes' pod traffic. Not
 * counted: routes outside the main table, vxmesh's own (protocol 118), routes out of our own
 * devices, device routes inside this node's own subnet, and default routes (they cover
 * everything by design).
 */
export function hostRouteOverlaps(
  pods: readonly LabelledCidr[],
  routes: readonly HostRoute[],
  own: OwnRoutes,
): Overlap<HostRoute>[] {
  const relevant = routes.filter((r) =>
    r.table === RT_TABLE_MAIN &&
    r.protocol !== VXMESH_RTPROT &&
    r.dst.prefixLen > 0 &&
    !(r.dev !== undefined && own.devices.includes(r.dev)) &&
    !(r.gateway === null && own.nodeSubnets.some((s) => subnetInside(r.dst, s))));
  const out: Overlap<HostRoute>[] = [];
  for (const pod of pods) for (const route of relevant) if (subnetsOverlap(pod.subnet, route.dst)) out.push({ pod, other: route });
  return out;
}

const PROTOCOL_NAMES: Record<number, string> = { 2: "kernel", 3: "boot", 4: "static", 16: "dhcp", 186: "bgp", 188: "ospf" };
const TYPE_NAMES: Record<number, string> = { 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw" };

/** As `ip route` prints it: "10.244.5.0/24 via 192.0.2.1 dev eth1 proto static". */
export function describeHostRoute(r: HostRoute): string {
  const type = TYPE_NAMES[r.type];
  return [
    ...(type === undefined ? [] : [type]),
    formatSubnet(r.dst),
    ...(r.gateway === null ? [] : ["via", formatIpv4(r.gateway)]),
    ...(r.dev === undefined ? [] : ["dev", r.dev]),
    "proto", PROTOCOL_NAMES[r.protocol] ?? String(r.protocol),
  ].join(" ");
}

/** The message for a pod CIDR that collides with a service CIDR. */
export function serviceOverlapMessage(o: Overlap<LabelledCidr>): string {
  return `${o.pod.label} overlaps ${o.other.label}: pod and service addresses must not overlap; choose pod addresses outside every service CIDR`;
}

/** The message for a pod CIDR that collides with a host route. */
export function hostRouteOverlapMessage(o: Overlap<HostRoute>): string {
  const r = o.other;
  return `${o.pod.label} overlaps the host route ${describeHostRoute(r)}${r.dev === undefined ? "" : ` (device ${r.dev})`}: ` +
    `pod traffic would be misrouted; remove that route or choose pod addresses clear of ${formatSubnet(r.dst)}`;
}
