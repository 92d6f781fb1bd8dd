// Pod subnet allocation without a central store (docs/DESIGN.md §4), as a pure state machine: the caller
// passes its state, what it currently sees of the other nodes' claims, the quarantine list and
// the time; `step` returns the next state, what to do, and when to call again at the latest.
//
// Order: a static subnet; else the lease persisted in the state dir if nobody else holds it;
// else a claim on the first free /len of the cluster CIDR in an order seeded by the node name.
// A claim is announced (lease state "claiming"), becomes "confirmed" once `confirmAfterMs`
// (one anti-entropy round) has passed without a conflict it loses, and is then defended.
//
// Conflict rule between two claims on overlapping subnets:
//   1. a confirmed claim beats a claiming one (so a node whose clock runs behind cannot take a
//      subnet that is already confirmed by claiming it "earlier");
//   2. otherwise the earlier claim stamp wins (a static subnet carries stamp 0, so it beats
//      every dynamic claim);
//   3. equal stamps: the lower node name wins.
// The loser claims again. A confirmed claim can only lose to another confirmed claim (two sides
// of a partition both confirmed one subnet, or a newly configured static subnet): the step then
// reports `lost.wasConfirmed` so the daemon logs it loudly and counts it.
//
// Released claims and quarantined subnets never contend, but no new claim picks them; a
// quarantine entry owned by this node does not block it (its own lease comes back on restart).

import { createHash } from "node:crypto";
import { formatSubnet, subnetInside, subnetsOverlap, type Ipv4, type Parsed, type Subnet } from "../encap/types";
import { checkNodeName, MAX_CLAIM_SEQ, type LeaseState, type NodeRecord } from "./node-record";

// The defaults the daemon's flags show and apply (daemon/config.ts: --subnet-len, its upper
// limit, and --claim-wait in seconds) are these; they are not written down anywhere else.
export const DEFAULT_SUBNET_LEN = 24;
export const MAX_SUBNET_LEN = 30;
/** One push-pull anti-entropy round at memberlist's LAN default. */
export const DEFAULT_CONFIRM_AFTER_MS = 30_000;
const DEFAULT_QUARANTINE_MS = 10 * 60_000;
/** The claim stamp of a static subnet: earlier than any dynamic claim. */
const STATIC_CLAIM_STAMP = 0;

/** This node's claim on its subnet (what goes into the node record, and what is persisted). */
export interface Lease {
  readonly subnet: Subnet;
  readonly state: LeaseState;
  readonly stamp: number;
  readonly seq: number;
}

/** A claim seen from another node. */
export interface PeerClaim {
  readonly name: string;
  readonly subnet: Subnet;
  readonly stamp: number;
  readonly state: LeaseState;
}

/** A subnet whose owner released it or died at `releasedAt`; not reused for `quarantineMs`. */
export interface QuarantinedSubnet {
  readonly subnet: Subnet;
  readonly owner: string;
  readonly releasedAt: number;
}

export interface AllocatorOptions {
  readonly clusterCidr: Subnet;
  readonly subnetLen?: number;
  readonly nodeName: string;
  readonly staticSubnet?: Subnet | null;
  readonly confirmAfterMs?: number;
  readonly quarantineMs?: number;
}

/** What the node currently sees; `peers` may include this node's own name (it is ignored). */
export interface AllocatorView {
  readonly now: number;
  readonly peers: readonly PeerClaim[];
  readonly quarantine: readonly QuarantinedSubnet[];
}

export type AllocatorState =
  | { readonly phase: "start"; readonly persisted: Lease | null }
  | { readonly phase: "claiming"; readonly lease: Lease; readonly confirmableAt: number }
  | { readonly phase: "confirmed"; readonly lease: Lease }
  | { readonly phase: "exhausted"; readonly seq: number; readonly error: string }
  | { readonly phase: "static-conflict"; readonly lease: Lease; readonly error: string };

export interface LostClaim {
  readonly subnet: Subnet;
  readonly winner: string;
  readonly winnerStamp: number;
  /** The lost claim had been confirmed: the partition case. Log loudly, count it. */
  readonly wasConfirmed: boolean;
}

export type AllocatorAction =
  /** Publish this new claim (state "claiming") in the node record and persist it. */
  | { readonly kind: "announce"; readonly lease: Lease; readonly lost: LostClaim | null; readonly note: string | null }
  /** The lease is confirmed: publish and persist it, hand the subnet to CNI, report ready. */
  | { readonly kind: "confirm"; readonly lease: Lease; readonly via: "static" | "persisted" | "claim" }
  /** Claiming; nothing new. */
  | { readonly kind: "wait" }
  /** Confirmed; nothing new. */
  | { readonly kind: "hold" }
  /** No subnet: stay not ready, retry when the view changes or at `wakeAt`. */
  | { readonly kind: "exhausted"; readonly error: string }
  /** The static subnet loses to another node's static subnet: a configuration error. */
  | { readonly kind: "static-conflict"; readonly error: string };

export interface AllocatorStep {
  readonly state: AllocatorState;
  readonly action: AllocatorAction;
  /** Call `step` again at this time at the latest (also whenever the view changes); null = only on change. */
  readonly wakeAt: number | null;
}

interface Rankable {
  readonly name: string;
  readonly stamp: number;
  readonly state: LeaseState;
}

/** Whether claim `a` beats claim `b` on an overlapping subnet. Released claims never contend. */
export function claimBeats(a: Rankable, b: Rankable): boolean {
  if (a.state === "released") return false;
  if (b.state === "released") return true;
  if (a.state !== b.state) return a.state === "confirmed";
  if (a.stamp !== b.stamp) return a.stamp < b.stamp;
  return a.name < b.name;
}

/** The claims a node record makes. */
export function claimsOf(record: NodeRecord): PeerClaim[] {
  const lease = record.lease;
  if (lease === null) return [];
  return record.podSubnets.map((subnet) => ({ name: record.name, subnet, stamp: lease.stamp, state: lease.state }));
}

/** Checks `--subnet-len` against the cluster CIDR. */
export function checkSubnetLen(clusterCidr: Subnet, subnetLen: number): Parsed<number> {
  if (!Number.isInteger(subnetLen) || subnetLen < clusterCidr.prefixLen || subnetLen > MAX_SUBNET_LEN) {
    return {
      ok: false,
      error: `--subnet-len ${subnetLen} is not valid with --cluster-cidr ${formatSubnet(clusterCidr)}: ` +
        `it must be an integer from ${clusterCidr.prefixLen} (the cluster CIDR's prefix length) to ${MAX_SUBNET_LEN}`,
    };
  }
  return { ok: true, value: subnetLen };
}

type Range = readonly [number, number];

export class SubnetAllocator {
  readonly clusterCidr: Subnet;
  readonly subnetLen: number;
  readonly nodeName: string;
  readonly staticSubnet: Subnet | null;
  readonly confirmAfterMs: number;
  readonly quarantineMs: number;
  /** How many /subnetLen subnets the cluster CIDR holds. */
  readonly candidateCount: number;
  private readonly bits: number;
  private readonly mask: number;
  private readonly size: number;
  private readonly seed: readonly [number, number, number, number];

  private constructor(o: Required<AllocatorOptions> & { subnetLen: number }) {
    this.clusterCidr = o.clusterCidr;
    this.subnetLen = o.subnetLen;
    this.nodeName = o.nodeName;
    this.staticSubnet = o.staticSubnet;
    this.confirmAfterMs = o.confirmAfterMs;
    this.quarantineMs = o.quarantineMs;
    this.bits = o.subnetLen - o.clusterCidr.prefixLen;
    this.candidateCount = 2 ** this.bits;
    this.mask = this.bits === 0 ? 0 : (1 << this.bits) - 1;
    this.size = 2 ** (32 - o.subnetLen);
    const h = createHash("sha256").update("vxmesh-subnet-order\0").update(o.nodeName).digest();
    this.seed = [h.readInt32BE(0), h.readInt32BE(4), h.readInt32BE(8), h.readInt32BE(12)];
  }

  /** Validates the options; every error names the setting and what would be valid. */
  static create(options: AllocatorOptions): Parsed<SubnetAllocator> {
    const cidr = options.clusterCidr;
    if (cidr.family !== 4) return { ok: false, error: "--cluster-cidr must be an IPv4 CIDR" };
    const len = checkSubnetLen(cidr, options.subnetLen ?? DEFAULT_SUBNET_LEN);
    if (!len.ok) return len;
    const nameProblem = checkNodeName(options.nodeName);
    if (nameProblem !== null) return { ok: false, error: `--node-name: ${nameProblem}` };
    const st = options.staticSubnet ?? null;
    if (st !== null && !subnetInside(st, cidr)) {
      return { ok: false, error: `--subnet ${formatSubnet(st)} is not inside --cluster-cidr ${formatSubnet(cidr)}` };
    }
    const confirmAfterMs = options.confirmAfterMs ?? DEFAULT_CONFIRM_AFTER_MS;
    const quarantineMs = options.quarantineMs ?? DEFAULT_QUARANTINE_MS;
    if (!Number.isFinite(confirmAfterMs) || confirmAfterMs < 0) return { ok: false, error: `confirm delay ${confirmAfterMs} ms must be a non-negative number` };
    if (!Number.isFinite(quarantineMs) || quarantineMs < 0) return { ok: false, error: `quarantine ${quarantineMs} ms must be a non-negative number` };
    return {
      ok: true,
      value: new SubnetAllocator({ clusterCidr: cidr, subnetLen: len.value, nodeName: options.nodeName, staticSubnet: st, confirmAfterMs, quarantineMs }),
    };
  }

  /** The state to start from, with the lease read from the state dir, if any. */
  initialState(persisted: Lease | null = null): AllocatorState {
    return { phase: "start", persisted };
  }

  /** The i-th subnet this node tries, i in [0, candidateCount): a permutation seeded by the node name. */
  candidate(i: number): Subnet {
    return this.subnetAt(this.permute(i));
  }

  /** Advances the state machine. Pure: same inputs, same outputs. */
  step(state: AllocatorState, view: AllocatorView): AllocatorStep {
    if (this.staticSubnet !== null) return this.stepStatic(state, view);
    const now = view.now;
    switch (state.phase) {
      case "start":
        return this.restore(state.persisted, view);
      case "claiming": {
        const winner = this.strongestWinner(state.lease, view);
        if (winner !== null) return this.claimNew(state.lease.seq, view, null, lostTo(state.lease, winner));
        if (now >= state.confirmableAt) {
          const lease: Lease = { ...state.lease, state: "confirmed" };
          return { state: { phase: "confirmed", lease }, action: { kind: "confirm", lease, via: "claim" }, wakeAt: null };
        }
        return { state, action: { kind: "wait" }, wakeAt: state.confirmableAt };
      }
      case "confirmed": {
        const winner = this.strongestWinner(state.lease, view);
        if (winner !== null) return this.claimNew(state.lease.seq, view, null, lostTo(state.lease, winner));
        return { state, action: { kind: "hold" }, wakeAt: null };
      }
      case "exhausted":
        return this.claimNew(state.seq, view, null, null);
      case "static-conflict":
        // Only reachable when the static subnet was removed from the config between steps.
        return this.claimNew(state.lease.seq, view, null, null);
    }
  }

  private stepStatic(state: AllocatorState, view: AllocatorView): AllocatorStep {
    const lease: Lease = { subnet: this.staticSubnet as Subnet, state: "confirmed", stamp: STATIC_CLAIM_STAMP, seq: 0 };
    const winner = this.strongestWinner(lease, view);
    if (winner !== null) {
      const error = `static --subnet ${formatSubnet(lease.subnet)} overlaps node ${winner.name}'s static subnet ${formatSubnet(winner.subnet)}, ` +
        `which wins (lower node name); give one of the two nodes another subnet`;
      return { state: { phase: "static-conflict", lease, error }, action: { kind: "static-conflict", error }, wakeAt: null };
    }
    if (state.phase === "confirmed") return { state, action: { kind: "hold" }, wakeAt: null };
    return { state: { phase: "confirmed", lease }, action: { kind: "confirm", lease, via: "static" }, wakeAt: null };
  }

  private restore(persisted: Lease | null, view: AllocatorView): AllocatorStep {
    if (persisted === null) return this.claimNew(0, view, null, null);
    const s = persisted.subnet;
    if (!subnetInside(s, this.clusterCidr)) {
      return this.claimNew(persisted.seq, view, `persisted lease ${formatSubnet(s)} is not inside --cluster-cidr ${formatSubnet(this.clusterCidr)}; claiming anew`, null);
    }
    const holder = this.otherHolder(s, view);
    if (holder !== null) return this.claimNew(persisted.seq, view, `persisted lease ${formatSubnet(s)} is ${holder}; claiming anew`, null);
    if (persisted.state === "claiming") {
      const lease: Lease = { ...persisted };
      const confirmableAt = view.now + this.confirmAfterMs;
      return {
        state: { phase: "claiming", lease, confirmableAt },
        action: { kind: "announce", lease, lost: null, note: `resuming the claim on ${formatSubnet(s)} made before the restart` },
        wakeAt: confirmableAt,
      };
    }
    // A lease persisted while the subnet was static carries stamp 0, which would keep outranking
    // every dynamic claim; as a dynamic lease it takes the restart time instead.
    const stamp = persisted.stamp === STATIC_CLAIM_STAMP ? Math.max(1, Math.floor(view.now)) : persisted.stamp;
    const lease: Lease = { ...persisted, state: "confirmed", stamp };
    return { state: { phase: "confirmed", lease }, action: { kind: "confirm", lease, via: "persisted" }, wakeAt: null };
  }

  private claimNew(prevSeq: number, view: AllocatorView, note: string | null, lost: LostClaim | null): AllocatorStep {
    const seq = prevSeq >= MAX_CLAIM_SEQ ? 1 : prevSeq + 1;
    const blocked = this.blockedRanges(view);
    let inUse = 0;
    for (const [lo, hi] of blocked) inUse += hi - lo + 1;
    let found = -1;
    if (inUse < this.candidateCount) {
      for (let i = 0; i < this.candidateCount; i++) {
        const idx = this.permute(i);
        if (!isBlocked(blocked, idx)) {
          found = idx;
          break;
        }
      }
    }
    if (found < 0) {
      const error = `cluster CIDR ${formatSubnet(this.clusterCidr)} has no free /${this.subnetLen} left: ${inUse} in use or quarantined`;
      return { state: { phase: "exhausted", seq: prevSeq, error }, action: { kind: "exhausted", error }, wakeAt: this.nextQuarantineExpiry(view) };
    }
    const lease: Lease = { subnet: this.subnetAt(found), state: "claiming", stamp: Math.max(1, Math.floor(view.now)), seq };
    const confirmableAt = view.now + this.confirmAfterMs;
    return { state: { phase: "claiming", lease, confirmableAt }, action: { kind: "announce", lease, lost, note }, wakeAt: confirmableAt };
  }

  /** The strongest other claim that overlaps `lease` and beats it, or null. */
  private strongestWinner(lease: Lease, view: AllocatorView): PeerClaim | null {
    const mine: Rankable = { name: this.nodeName, stamp: lease.stamp, state: lease.state };
    let best: PeerClaim | null = null;
    for (const p of view.peers) {
      if (p.name === this.nodeName || !subnetsOverlap(p.subnet, lease.subnet)) continue;
      if (!claimBeats(p, mine)) continue;
      if (best === null || claimBeats(p, best)) best = p;
    }
    return best;
  }

  /** Describes who else holds or quarantines `s` ("held by node-b"), or null if it is free for us. */
  private otherHolder(s: Subnet, view: AllocatorView): string | null {
    for (const p of view.peers) {
      if (p.name !== this.nodeName && subnetsOverlap(p.subnet, s)) return `held by ${p.name} (${p.state} ${formatSubnet(p.subnet)})`;
    }
    for (const q of view.quarantine) {
      if (q.owner !== this.nodeName && view.now < q.releasedAt + this.quarantineMs && subnetsOverlap(q.subnet, s)) {
        return `quarantined after ${q.owner} left`;
      }
    }
    return null;
  }

  /** Candidate index ranges that some other claim or a live quarantine entry overlaps, merged and sorted. */
  private blockedRanges(view: AllocatorView): Range[] {
    const ranges: Range[] = [];
    const add = (s: Subnet): void => {
      const r = this.indexRange(s);
      if (r !== null) ranges.push(r);
    };
    for (const p of view.peers) if (p.name !== this.nodeName) add(p.subnet);
    for (const q of view.quarantine) {
      if (q.owner !== this.nodeName && view.now < q.releasedAt + this.quarantineMs) add(q.subnet);
    }
    ranges.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const [lo, hi] of ranges) {
      const last = merged[merged.length - 1];
      if (last !== undefined && lo <= last[1] + 1) last[1] = Math.max(last[1], hi);
      else merged.push([lo, hi]);
    }
    return merged;
  }

  private nextQuarantineExpiry(view: AllocatorView): number | null {
    let next: number | null = null;
    for (const q of view.quarantine) {
      const until = q.releasedAt + this.quarantineMs;
      if (q.owner !== this.nodeName && until > view.now && (next === null || until < next)) next = until;
    }
    return next;
  }

  /** The candidate indices a subnet overlaps, or null when it lies outside the cluster CIDR. */
  private indexRange(s: Subnet): Range | null {
    const c = this.clusterCidr;
    if (!subnetsOverlap(s, c)) return null;
    if (s.prefixLen <= c.prefixLen) return [0, this.candidateCount - 1];
    const lo = Math.floor((s.network - c.network) / this.size);
    if (s.prefixLen >= this.subnetLen) return [lo, lo];
    return [lo, lo + 2 ** (this.subnetLen - s.prefixLen) - 1];
  }

  private subnetAt(idx: number): Subnet {
    return { family: 4, network: (this.clusterCidr.network + idx * this.size) as Ipv4, prefixLen: this.subnetLen };
  }

  /**
   * A bijection on [0, 2^bits) keyed by the node name: xor, odd multiply, xorshift, odd
   * multiply, xorshift, add — each step is invertible modulo 2^bits.
   */
  private permute(i: number): number {
    if (this.bits === 0) return 0;
    const m = this.mask;
    const [s0, s1, s2, s3] = this.seed;
    const shift = (this.bits + 1) >> 1;
    let x = (i ^ s0) & m;
    x = Math.imul(x, s1 | 1) & m;
    x ^= x >>> shift;
    x = Math.imul(x, s2 | 1) & m;
    x ^= x >>> shift;
    return (x + s3) & m;
  }
}

function isBlocked(ranges: readonly Range[], idx: number): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid] as Range;
    if (idx < r[0]) hi = mid - 1;
    else if (idx > r[1]) lo = mid + 1;
    else return true;
  }
  return false;
}

function lostTo(lease: Lease, winner: PeerClaim): LostClaim {
  return { subnet: lease.subnet, winner: winner.name, winnerStamp: winner.stamp, wasConfirmed: lease.state === "confirmed" };
}

/** The lease to publish in the node record now, or null while the node has none. */
export function leaseOf(state: AllocatorState): Lease | null {
  switch (state.phase) {
    case "claiming":
    case "confirmed":
    case "static-conflict":
      return state.lease;
    default:
      return null;
  }
}
