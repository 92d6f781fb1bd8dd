// What the membership means for this node, as pure functions: which members are peers to
// forward to (and on which subnet), which claims the allocator must respect, and which
// subnets are in quarantine. Members' meta bytes are their encoded node records.

import type { Peer } from "../encap/fdb";
import { subnetsOverlap, type Subnet, type Vni } from "../encap/types";
import type { MemberState, MemberView } from "./membership";
import { decodeNodeRecord, type NodeRecord } from "./node-record";
import { claimBeats, claimsOf, type PeerClaim, type QuarantinedSubnet } from "./subnet-allocator";

export interface ClusterMember {
  readonly name: string;
  readonly state: MemberState;
  readonly incarnation: number;
  readonly stateChangedAt: number;
  /** undefined when the meta does not decode or names another node. */
  readonly record: NodeRecord | undefined;
  readonly recordError: string | undefined;
}

export function decodeMembers(views: readonly MemberView[]): ClusterMember[] {
  return views.map((v) => {
    const r = decodeNodeRecord(v.meta);
    let record: NodeRecord | undefined;
    let recordError: string | undefined;
    if (!r.ok) recordError = r.error;
    else if (r.value.name !== v.name) recordError = `record names ${r.value.name}, member is ${v.name}`;
    else record = r.value;
    return { name: v.name, state: v.state, incarnation: v.incarnation, stateChangedAt: v.stateChangedAt, record, recordError };
  });
}

const live = (m: ClusterMember): boolean => m.state === "alive" || m.state === "suspect";

/** Claims of live members other than `self`, for the allocator. */
export function claimsFrom(members: readonly ClusterMember[], self: string): PeerClaim[] {
  const out: PeerClaim[] = [];
  for (const m of members) {
    if (m.name === self || !live(m) || m.record === undefined) continue;
    out.push(...claimsOf(m.record));
  }
  return out;
}

export interface PeerSelection {
  readonly peers: Peer[];
  /** Members left out, and why (wrong VNI, lost subnet conflict …), for status and logs. */
  readonly skipped: { readonly name: string; readonly why: string }[];
}

/**
 * The peers to forward to: live members with a confirmed lease on the same VNI and VXLAN port.
 * Where two members' subnets overlap (two sides of a healed partition) only the winning claim
 * is routed; a subnet overlapping this node's own is never routed.
 */
export function peersFrom(members: readonly ClusterMember[], self: { name: string; subnet: Subnet | undefined; vni: Vni; vxlanPort: number }): PeerSelection {
  const skipped: { name: string; why: string }[] = [];
  const candidates: { m: ClusterMember; r: NodeRecord; subnet: Subnet }[] = [];
  for (const m of members) {
    if (m.name === self.name || !live(m)) continue;
    const r = m.record;
    if (r === undefined) {
      skipped.push({ name: m.name, why: m.recordError ?? "no record" });
      continue;
    }
    const subnet = r.podSubnets[0];
    if (r.lease === null || r.lease.state !== "confirmed" || subnet === undefined) continue;
    if (r.vni !== self.vni || r.vxlanPort !== self.vxlanPort) {
      skipped.push({ name: m.name, why: `uses VNI ${r.vni} port ${r.vxlanPort}, this node VNI ${self.vni} port ${self.vxlanPort}` });
      continue;
    }
    if (self.subnet !== undefined && subnetsOverlap(subnet, self.subnet)) {
      skipped.push({ name: m.name, why: "its subnet overlaps this node's" });
      continue;
    }
    candidates.push({ m, r, subnet });
  }
  const peers: Peer[] = [];
  for (const c of candidates) {
    const lease = c.r.lease as NonNullable<NodeRecord["lease"]>;
    const beaten = candidates.some((o) => o !== c && subnetsOverlap(o.subnet, c.subnet) &&
      claimBeats({ name: o.m.name, ...(o.r.lease as NonNullable<NodeRecord["lease"]>) }, { name: c.m.name, ...lease }));
    if (beaten) {
      skipped.push({ name: c.m.name, why: "another node's claim on an overlapping subnet wins" });
      continue;
    }
    peers.push({ name: c.m.name, underlayIp: c.r.underlay.ip, subnet: c.subnet, vtepMac: c.r.vtepMac, path: "vxlan" });
  }
  // Unique VTEP MACs and underlay addresses keep the forwarding table unambiguous.
  const seenMac = new Set<number>();
  const seenIp = new Set<number>();
  const unique: Peer[] = [];
  for (const p of peers.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (seenMac.has(p.vtepMac) || seenIp.has(p.underlayIp)) {
      skipped.push({ name: p.name, why: "its VTEP MAC or underlay address is another member's" });
      continue;
    }
    seenMac.add(p.vtepMac);
    seenIp.add(p.underlayIp);
    unique.push(p);
  }
  return { peers: unique, skipped };
}

/** Adds the subnets of members that just died or left; drops entries older than `quarantineMs`. */
export function updateQuarantine(
  quarantine: readonly QuarantinedSubnet[], gone: readonly ClusterMember[], now: number, quarantineMs: number,
): QuarantinedSubnet[] {
  const out = quarantine.filter((q) => now - q.releasedAt < quarantineMs);
  for (const m of gone) {
    for (const subnet of m.record?.podSubnets ?? []) {
      if (!out.some((q) => q.owner === m.name && subnetsOverlap(q.subnet, subnet))) out.push({ subnet, owner: m.name, releasedAt: now });
    }
  }
  return out;
}

export function samePeers(a: readonly Peer[], b: readonly Peer[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((p, i) => {
    const q = b[i] as Peer;
    return p.name === q.name && p.underlayIp === q.underlayIp && p.vtepMac === q.vtepMac &&
      p.subnet.network === q.subnet.network && p.subnet.prefixLen === q.subnet.prefixLen;
  });
}
