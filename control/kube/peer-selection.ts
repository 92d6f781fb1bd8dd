// Which Nodes are peers: the pure decision the Kubernetes source makes after every change
// (docs/DESIGN.md §12). Every node computes it from the same objects, so the choices between
// conflicting Nodes (overlapping pod CIDRs, a shared underlay address) are made by sort order
// and come out the same everywhere. O(n log n): 5,000 Nodes take milliseconds.

import type { Peer } from "../../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, subnetInside, subnetsOverlap, type Ipv4, type MacAddr, type Subnet, type Vni } from "../../encap/types";
import type { NodeView } from "./node-view";

/** Why a Node is not a peer, as a metric label. */
export type SkipReason =
  | "no_pod_cidr" | "bad_pod_cidr" | "outside_cluster_cidr" | "no_annotations" | "bad_annotations"
  | "other_vxlan" | "overlapping_pod_cidr" | "shared_endpoint";

export const SKIP_REASONS: readonly SkipReason[] = [
  "no_pod_cidr", "bad_pod_cidr", "outside_cluster_cidr", "no_annotations", "bad_annotations",
  "other_vxlan", "overlapping_pod_cidr", "shared_endpoint",
];

export interface SkippedNode {
  readonly name: string;
  readonly reason: SkipReason;
  readonly why: string;
}

export interface SelfView {
  readonly name: string;
  readonly subnet: Subnet | undefined;
  /** This node's own endpoint: a Node claiming it (a stale object of this machine under another name) would tunnel back here. */
  readonly underlayIp: Ipv4;
  readonly vtepMac: MacAddr;
  readonly clusterCidr: Subnet;
  readonly vni: Vni;
  readonly vxlanPort: number;
}

export interface PeerChoice {
  /** Sorted by name. */
  readonly peers: Peer[];
  readonly skipped: SkippedNode[];
}

export function selectPeers(nodes: Iterable<NodeView>, self: SelfView): PeerChoice {
  const skipped: SkippedNode[] = [];
  const skip = (name: string, reason: SkipReason, why: string): void => {
    skipped.push({ name, reason, why });
  };
  const candidates: Peer[] = [];
  for (const n of nodes) {
    if (n.name === self.name) continue;
    if (n.podCidr === undefined) {
      skip(n.name, "no_pod_cidr", "no spec.podCIDR assigned yet");
      continue;
    }
    if (!n.podCidr.ok) {
      skip(n.name, "bad_pod_cidr", n.podCidr.error);
      continue;
    }
    const subnet = n.podCidr.value;
    if (n.endpoint === undefined) {
      skip(n.name, "no_annotations", "no vxmesh.io/ annotations: vxmesh is not running there (yet)");
      continue;
    }
    if (!n.endpoint.ok) {
      skip(n.name, "bad_annotations", n.endpoint.error);
      continue;
    }
    const e = n.endpoint.value;
    if (!subnetInside(subnet, self.clusterCidr)) {
      skip(n.name, "outside_cluster_cidr", `its podCIDR ${formatSubnet(subnet)} is outside --cluster-cidr ${formatSubnet(self.clusterCidr)}`);
      continue;
    }
    if (e.vni !== self.vni || e.vxlanPort !== self.vxlanPort) {
      skip(n.name, "other_vxlan", `uses VNI ${e.vni} port ${e.vxlanPort}, this node VNI ${self.vni} port ${self.vxlanPort}`);
      continue;
    }
    if (self.subnet !== undefined && subnetsOverlap(subnet, self.subnet)) {
      skip(n.name, "overlapping_pod_cidr", `its podCIDR ${formatSubnet(subnet)} overlaps this node's ${formatSubnet(self.subnet)}`);
      continue;
    }
    if (e.underlayIp === self.underlayIp || e.vtepMac === self.vtepMac) {
      skip(n.name, "shared_endpoint", `its underlay address ${formatIpv4(e.underlayIp)} or VTEP MAC ${formatMac(e.vtepMac)} is this node's own`);
      continue;
    }
    candidates.push({ name: n.name, underlayIp: e.underlayIp, subnet, vtepMac: e.vtepMac, path: "vxlan" });
  }
  const peers = withoutConflicts(candidates, skip);
  skipped.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { peers, skipped };
}

/**
 * Drops candidates whose pod CIDR overlaps one that sorts before it (by network, then prefix
 * length, then name), then those whose underlay address or VTEP MAC a name-earlier peer has:
 * the forwarding table must map each to one peer.
 */
function withoutConflicts(candidates: Peer[], skip: (name: string, reason: SkipReason, why: string) => void): Peer[] {
  candidates.sort((a, b) => a.subnet.network - b.subnet.network || a.subnet.prefixLen - b.subnet.prefixLen || (a.name < b.name ? -1 : 1));
  const kept: Peer[] = [];
  let last: Peer | undefined;
  for (const p of candidates) {
    // Kept CIDRs do not overlap and come in network order: one overlapping any kept one overlaps the last.
    if (last !== undefined && subnetsOverlap(last.subnet, p.subnet)) {
      skip(p.name, "overlapping_pod_cidr", `its podCIDR ${formatSubnet(p.subnet)} overlaps ${last.name}'s ${formatSubnet(last.subnet)}`);
      continue;
    }
    kept.push(p);
    last = p;
  }
  kept.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const byIp = new Map<number, string>();
  const byMac = new Map<number, string>();
  const peers: Peer[] = [];
  for (const p of kept) {
    const other = byIp.get(p.underlayIp) ?? byMac.get(p.vtepMac);
    if (other !== undefined) {
      skip(p.name, "shared_endpoint", `its underlay address ${formatIpv4(p.underlayIp)} or VTEP MAC ${formatMac(p.vtepMac)} is also ${other}'s`);
      continue;
    }
    byIp.set(p.underlayIp, p.name);
    byMac.set(p.vtepMac, p.name);
    peers.push(p);
  }
  return peers;
}
