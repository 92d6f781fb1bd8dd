// `vxmesh trace <pod-ip>`, the pure part: given a snapshot of the daemon's state and what the
// kernel holds right now, where does a packet to that pod IP go, and is every piece of the
// path in place? No I/O here; daemon.ts gathers the snapshot, trace-command.ts prints.

import type { ActualNeighbour, ActualRoute, RouteLookup } from "../control/host-plumbing";
import { VXMESH_RTPROT } from "../control/host-plumbing";
import type { MemberState } from "../control/membership";
import type { LeaseState } from "../control/node-record";
import type { PeerTraffic } from "../encap/counters";
import type { Peer } from "../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, subnetInside, type Ipv4, type MacAddr, type Subnet } from "../encap/types";
import { IPV4_OVERHEAD } from "./config";
import type { SourceKind } from "./status";

export interface TraceNode {
  name: string;
  mode: SourceKind;
  subnet: Subnet | undefined;
  /** The cluster's pod network (gossip, Kubernetes); undefined with static peers. */
  clusterCidr: Subnet | undefined;
  underlayIp: Ipv4;
  vtepMac: MacAddr;
  vni: number;
  vxlanPort: number;
  tap: string;
  tapMtu: number;
}

export interface TraceMember {
  name: string;
  state: MemberState;
  underlayIp: Ipv4 | undefined;
  vtepMac: MacAddr | undefined;
  subnet: Subnet | undefined;
  lease: LeaseState | undefined;
  /** Since gossip last came from it directly (Kubernetes: since the watch last spoke); undefined when it never has. */
  heardAgoMs: number | undefined;
  /** Since its state last changed, as this node saw it. */
  stateForMs: number;
  /** Where it is known from: a gossip member (the default) or a Node object. */
  via?: "gossip" | "kubernetes";
}

export interface TraceState {
  node: TraceNode;
  /** The peers the data plane forwards to. */
  peers: readonly Peer[];
  peerTraffic: ReadonlyMap<string, PeerTraffic>;
  /** Gossip members, this node included; undefined with static peers. */
  members: readonly TraceMember[] | undefined;
  /** Members left out of the peers, and why. */
  skipped: readonly { name: string; why: string }[];
  counters: Readonly<Record<string, number>>;
}

/** What the kernel holds, read with netlink at the time of the trace. */
export interface KernelFacts {
  /** Our routes (protocol 118, main table, out the TAP). */
  routes: readonly ActualRoute[];
  /** Permanent neighbours on the TAP. */
  neighbours: readonly ActualNeighbour[];
  /** The FIB entry the kernel matches for the pod IP. */
  lookup: RouteLookup | { error: string };
  /** The route to the owner's underlay address and its device's MTU (remote owners only). */
  underlayPath?: { lookup: RouteLookup; deviceMtu: number | undefined } | { error: string };
}

export type Owner =
  | { kind: "local" }
  | { kind: "peer"; peer: Peer; member: TraceMember | undefined }
  | { kind: "not-routed"; member: TraceMember; why: string }
  | { kind: "unowned" }
  | { kind: "outside-cluster"; clusterCidr: Subnet };

export type Verdict = "local" | "remote" | "not-routed" | "unowned" | "outside-cluster";

export type Presence = "present" | "missing" | "differs";

export interface TraceRecord {
  ip: string;
  verdict: Verdict;
  /** One sentence: the answer. */
  summary: string;
  node: { name: string; subnet: string | null; tap: string };
  owner?: {
    name: string;
    subnet: string | null;
    underlayIp: string | null;
    vtepMac: string | null;
    /** The member's state, or "static peer". */
    state: string;
    stateForSeconds: number | null;
    lastHeard: { from: "gossip" | "kubernetes" | "static peer"; secondsAgo: number | null };
    /** Why the node is not a peer (verdict not-routed). */
    notRoutedBecause?: string;
  };
  kernel: {
    /** The route the kernel matches for the IP, as `ip route` would print it. */
    uses: string;
    route?: { expected: string; state: Presence; actual: string[] };
    neighbour?: { expected: string; state: Presence; actual: string | null };
  };
  mtu: {
    tap: number;
    underlayDevice?: string | null;
    underlayDeviceMtu?: number | null;
    /** A path MTU the kernel learned for the owner's underlay address; null when none. */
    learnedPathMtu?: number | null;
    /** The largest inner packet that fits the path: (learned path MTU, else device MTU) − 50. */
    innerFits?: number | null;
  };
  encap?: { udpDstPort: number; vni: number; underlayDst: string };
  /** Frames and bytes to and from the owner (this node's forwarder, since it started). */
  peerTraffic?: PeerTraffic;
  /** The forwarder's drop counters: node-wide, not per path. */
  drops: { scope: "node-wide"; byReason: Record<string, number> };
  problems: string[];
}

/** Whether a verdict is a path the packet can take (exit 0) or not (exit 1). */
export function verdictIsReachable(v: Verdict): boolean {
  return v === "local" || v === "remote";
}

function contains(s: Subnet, ip: Ipv4): boolean {
  return subnetInside({ family: 4, network: ip, prefixLen: 32 }, s);
}

const LIVE_FIRST: Record<MemberState, number> = { alive: 0, suspect: 1, left: 2, dead: 3 };

/** Who owns `ip`: this node, a peer, a member that is not routed (and why), or nobody. */
export function findOwner(state: TraceState, ip: Ipv4): Owner {
  const { node } = state;
  if (node.subnet !== undefined && contains(node.subnet, ip)) return { kind: "local" };
  const peer = state.peers.find((p) => contains(p.subnet, ip));
  if (peer !== undefined) return { kind: "peer", peer, member: state.members?.find((m) => m.name === peer.name) };
  const holders = (state.members ?? [])
    .filter((m) => m.name !== node.name && m.subnet !== undefined && contains(m.subnet, ip))
    .sort((a, b) => LIVE_FIRST[a.state] - LIVE_FIRST[b.state]);
  const member = holders[0];
  if (member !== undefined) return { kind: "not-routed", member, why: notRoutedBecause(state, member) };
  if (node.clusterCidr !== undefined && !contains(node.clusterCidr, ip)) return { kind: "outside-cluster", clusterCidr: node.clusterCidr };
  return { kind: "unowned" };
}

function notRoutedBecause(state: TraceState, m: TraceMember): string {
  if (m.state === "dead") return `it is dead (for ${seconds(m.stateForMs)} s); its subnet is quarantined, not routed`;
  if (m.state === "left") return `it left the cluster ${seconds(m.stateForMs)} s ago`;
  if (m.lease !== "confirmed") return `its claim on ${m.subnet === undefined ? "the subnet" : formatSubnet(m.subnet)} is not confirmed yet`;
  const skipped = state.skipped.find((s) => s.name === m.name);
  if (skipped !== undefined) return skipped.why;
  return "it is not among this node's peers yet (membership still settling)";
}

function seconds(ms: number): number {
  return Math.round(ms / 100) / 10;
}

const PROTOCOL_NAMES: Record<number, string> = { 2: "kernel", 3: "boot", 4: "static", 16: "dhcp", [VXMESH_RTPROT]: String(VXMESH_RTPROT) };
const TYPE_NAMES: Record<number, string> = { 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw" };

function describeLookup(r: RouteLookup): string {
  const type = r.type === 1 ? "" : `${TYPE_NAMES[r.type] ?? `type ${r.type}`} `;
  const dst = r.dst.prefixLen === 0 ? "default" : formatSubnet(r.dst);
  const parts = [`${type}${dst}`];
  if (r.gateway !== null) parts.push(`via ${formatIpv4(r.gateway)}`);
  if (r.ifname !== null) parts.push(`dev ${r.ifname}`);
  if (r.onlink) parts.push("onlink");
  if (r.protocol !== 0) parts.push(`proto ${PROTOCOL_NAMES[r.protocol] ?? r.protocol}`);
  if (r.table !== 254 && r.table !== 0) parts.push(`table ${r.table}`);
  return parts.join(" ");
}

function describeOurRoute(r: ActualRoute, tap: string): string {
  const extra = [r.priority !== 0 ? `metric ${r.priority}` : "", r.tos !== 0 ? `tos ${r.tos}` : "", r.type !== 1 ? `type ${r.type}` : ""].filter((x) => x !== "");
  return [formatSubnet(r.dst), r.gateway === null ? "" : `via ${formatIpv4(r.gateway)}`, `dev ${tap}`, r.onlink ? "onlink" : "",
    `proto ${VXMESH_RTPROT}`, ...extra].filter((x) => x !== "").join(" ");
}

function sameSubnet(a: Subnet, b: Subnet): boolean {
  return a.network === b.network && a.prefixLen === b.prefixLen;
}

/** The trace record for `ip`. `kernel` is what the shell read for it (see KernelFacts). */
export function traceIp(state: TraceState, ip: Ipv4, kernel: KernelFacts): TraceRecord {
  const { node } = state;
  const owner = findOwner(state, ip);
  const ipText = formatIpv4(ip);
  const drops: Record<string, number> = {};
  for (const [k, v] of Object.entries(state.counters)) if (k.startsWith("drop_")) drops[k.slice(5)] = v;
  const problems: string[] = [];
  const uses = "error" in kernel.lookup ? `no route: ${kernel.lookup.error}` : describeLookup(kernel.lookup);
  const base = {
    ip: ipText,
    node: { name: node.name, subnet: node.subnet === undefined ? null : formatSubnet(node.subnet), tap: node.tap },
    drops: { scope: "node-wide" as const, byReason: drops },
  };

  switch (owner.kind) {
    case "local":
      return {
        ...base, verdict: "local", problems,
        summary: `${ipText} is local: in this node's subnet ${formatSubnet(node.subnet as Subnet)} (${node.name})`,
        kernel: { uses }, mtu: { tap: node.tapMtu },
      };
    case "outside-cluster":
      return {
        ...base, verdict: "outside-cluster", problems,
        summary: `${ipText} is not in the cluster's pod network ${formatSubnet(owner.clusterCidr)}: not a pod IP of this cluster`,
        kernel: { uses }, mtu: { tap: node.tapMtu },
      };
    case "unowned":
      return {
        ...base, verdict: "unowned", problems,
        summary: node.clusterCidr === undefined
          ? `${ipText} is in no node's subnet: neither this node's nor any static peer's`
          : `${ipText} is in the pod network ${formatSubnet(node.clusterCidr)} but no ${node.mode === "kubernetes" ? "Node" : "member"} holds a subnet containing it`,
        kernel: { uses }, mtu: { tap: node.tapMtu },
      };
    case "not-routed": {
      const m = owner.member;
      return {
        ...base, verdict: "not-routed", problems,
        summary: `${ipText} belongs to ${m.name}'s subnet ${m.subnet === undefined ? "?" : formatSubnet(m.subnet)}, which this node does not route: ${owner.why}`,
        owner: {
          ...memberFields(m), notRoutedBecause: owner.why,
        },
        kernel: { uses }, mtu: { tap: node.tapMtu },
      };
    }
    case "peer":
      return remoteRecord(state, owner.peer, owner.member, ipText, kernel, uses, base, problems);
  }
}

function memberFields(m: TraceMember): NonNullable<TraceRecord["owner"]> {
  return {
    name: m.name,
    subnet: m.subnet === undefined ? null : formatSubnet(m.subnet),
    underlayIp: m.underlayIp === undefined ? null : formatIpv4(m.underlayIp),
    vtepMac: m.vtepMac === undefined ? null : formatMac(m.vtepMac),
    state: m.state,
    stateForSeconds: seconds(m.stateForMs),
    lastHeard: { from: m.via ?? "gossip", secondsAgo: m.heardAgoMs === undefined ? null : seconds(m.heardAgoMs) },
  };
}

function remoteRecord(
  state: TraceState, peer: Peer, member: TraceMember | undefined, ipText: string, kernel: KernelFacts, uses: string,
  base: Pick<TraceRecord, "ip" | "node" | "drops">, problems: string[],
): TraceRecord {
  const { node } = state;
  const expectedRoute = describeOurRoute({ dst: peer.subnet, gateway: peer.subnet.network, onlink: true, priority: 0, tos: 0, type: 1 }, node.tap);
  const ours = kernel.routes.filter((r) => sameSubnet(r.dst, peer.subnet));
  const exact = ours.some((r) => r.gateway === peer.subnet.network && r.onlink && r.priority === 0 && r.tos === 0 && r.type === 1);
  const routeState: Presence = exact ? "present" : ours.length === 0 ? "missing" : "differs";
  if (routeState === "missing") problems.push(`the route ${expectedRoute} is missing from the kernel (the daemon re-adds it on its next reconcile)`);
  if (routeState === "differs") problems.push(`the kernel's route to ${formatSubnet(peer.subnet)} is not the expected ${expectedRoute}`);

  const neigh = kernel.neighbours.find((n) => n.ip === peer.subnet.network);
  const expectedNeigh = `${formatIpv4(peer.subnet.network)} lladdr ${formatMac(peer.vtepMac)} dev ${node.tap} PERMANENT`;
  const neighState: Presence = neigh === undefined ? "missing" : neigh.mac === peer.vtepMac ? "present" : "differs";
  if (neighState === "missing") problems.push(`the neighbour ${expectedNeigh} is missing from the kernel`);
  if (neighState === "differs") problems.push(`the neighbour ${formatIpv4(peer.subnet.network)} has MAC ${neigh?.mac === null || neigh === undefined ? "none" : formatMac(neigh.mac)}, expected ${formatMac(peer.vtepMac)}`);

  if (!("error" in kernel.lookup)) {
    const l = kernel.lookup;
    const viaOverlay = l.ifname === node.tap && l.protocol === VXMESH_RTPROT && sameSubnet(l.dst, peer.subnet);
    if (!viaOverlay && routeState === "present") problems.push(`the kernel matches ${uses} for ${ipText}, not vxmesh's route: a more specific route or a rule takes it elsewhere`);
    else if (!viaOverlay) problems.push(`the kernel sends ${ipText} by ${uses}, not through ${node.tap}`);
  } else {
    problems.push(`the kernel has no route to ${ipText} (${kernel.lookup.error})`);
  }

  const mtu: TraceRecord["mtu"] = { tap: node.tapMtu };
  const path = kernel.underlayPath;
  if (path !== undefined && !("error" in path)) {
    mtu.underlayDevice = path.lookup.ifname;
    mtu.underlayDeviceMtu = path.deviceMtu ?? null;
    mtu.learnedPathMtu = path.lookup.pathMtu ?? null;
    const pathMtu = path.lookup.pathMtu ?? path.deviceMtu;
    mtu.innerFits = pathMtu === undefined ? null : pathMtu - IPV4_OVERHEAD;
    if (pathMtu !== undefined && node.tapMtu > pathMtu - IPV4_OVERHEAD) {
      problems.push(`the TAP MTU ${node.tapMtu} does not fit the path to ${peer.name}: MTU ${pathMtu} − ${IPV4_OVERHEAD} = ${pathMtu - IPV4_OVERHEAD}; full-size packets are dropped`);
    }
  } else if (path !== undefined) {
    problems.push(`the kernel has no route to ${peer.name}'s underlay address ${formatIpv4(peer.underlayIp)} (${path.error})`);
  }

  const ownerFields: NonNullable<TraceRecord["owner"]> = member === undefined
    ? { name: peer.name, subnet: null, underlayIp: null, vtepMac: null, state: "static peer", stateForSeconds: null, lastHeard: { from: "static peer", secondsAgo: null } }
    : memberFields(member);
  // The peer as the data plane uses it wins over the member's gossip record.
  ownerFields.subnet = formatSubnet(peer.subnet);
  ownerFields.underlayIp = formatIpv4(peer.underlayIp);
  ownerFields.vtepMac = formatMac(peer.vtepMac);
  if (member !== undefined && member.state === "suspect") problems.push(`${peer.name} is suspected of having failed (for ${seconds(member.stateForMs)} s)`);

  const traffic = state.peerTraffic.get(peer.name);
  return {
    ...base,
    verdict: "remote",
    summary: `${ipText} is on ${peer.name} (${formatSubnet(peer.subnet)}), reached through VXLAN to ${formatIpv4(peer.underlayIp)}:${node.vxlanPort} VNI ${node.vni}`,
    owner: ownerFields,
    kernel: {
      uses,
      route: { expected: expectedRoute, state: routeState, actual: ours.map((r) => describeOurRoute(r, node.tap)) },
      neighbour: { expected: expectedNeigh, state: neighState, actual: neigh === undefined ? null : neigh.mac === null ? "no lladdr" : formatMac(neigh.mac) },
    },
    mtu,
    encap: { udpDstPort: node.vxlanPort, vni: node.vni, underlayDst: formatIpv4(peer.underlayIp) },
    ...(traffic === undefined ? {} : { peerTraffic: traffic }),
    problems,
  };
}

/** The trace as text for a terminal. */
export function formatTrace(t: TraceRecord): string {
  const lines = [t.summary, ""];
  const o = t.owner;
  if (o !== undefined) {
    lines.push(`owner      ${o.name}  subnet ${o.subnet ?? "?"}  underlay ${o.underlayIp ?? "?"}  vtep ${o.vtepMac ?? "?"}`);
    if (o.lastHeard.from === "kubernetes") {
      const watch = o.lastHeard.secondsAgo === null ? "the watch has not spoken yet" : `the watch last spoke ${o.lastHeard.secondsAgo} s ago`;
      lines.push(`node       a Node on the API server; ${watch}`);
    } else {
      const heard = o.lastHeard.from === "static peer" ? "static peer (no gossip)"
        : o.lastHeard.secondsAgo === null ? "never heard from directly" : `last heard ${o.lastHeard.secondsAgo} s ago (gossip)`;
      lines.push(`member     ${o.state}${o.stateForSeconds === null ? "" : ` for ${o.stateForSeconds} s`}; ${heard}`);
    }
    if (o.notRoutedBecause !== undefined) lines.push(`not routed ${o.notRoutedBecause}`);
  }
  lines.push(`kernel     uses ${t.kernel.uses}`);
  if (t.kernel.route !== undefined) {
    const r = t.kernel.route;
    lines.push(`route      ${r.state.toUpperCase()}  expected ${r.expected}${r.state === "differs" ? `; kernel has ${r.actual.join(", ")}` : ""}`);
  }
  if (t.kernel.neighbour !== undefined) {
    const n = t.kernel.neighbour;
    lines.push(`neighbour  ${n.state.toUpperCase()}  expected ${n.expected}${n.state === "differs" ? `; kernel has ${n.actual ?? "none"}` : ""}`);
  }
  const m = t.mtu;
  lines.push(`mtu        tap ${m.tap}` + (m.underlayDevice === undefined ? "" :
    `; underlay ${m.underlayDevice ?? "?"} mtu ${m.underlayDeviceMtu ?? "?"}, learned path mtu ${m.learnedPathMtu ?? "none"}, inner fits ${m.innerFits ?? "?"}`));
  if (t.encap !== undefined) lines.push(`encap      VXLAN to ${t.encap.underlayDst} udp dst port ${t.encap.udpDstPort}, VNI ${t.encap.vni}`);
  if (t.peerTraffic !== undefined) {
    const p = t.peerTraffic;
    lines.push(`traffic    out ${p.txFrames} frames ${p.txBytes} bytes; in ${p.rxFrames} frames ${p.rxBytes} bytes (this peer)`);
  }
  const drops = Object.entries(t.drops.byReason).filter(([, v]) => v !== 0);
  lines.push(`drops      node-wide, all paths: ${drops.length === 0 ? "none" : drops.map(([k, v]) => `${k} ${v}`).join(", ")}`);
  if (t.problems.length > 0) lines.push("", "problems:", ...t.problems.map((p) => `  - ${p}`));
  return lines.join("\n") + "\n";
}
