// What a running daemon reports about itself (`vxmesh status`, /metrics, /readyz): plain types
// only, so the modules that render them (metrics, the CLI) need not import the daemon.

import type { BatchHistogram, PeerTraffic } from "../encap/counters";
import type { TransportCounters } from "../control/gossip-transport";
import type { LeaseState } from "../control/node-record";
import type { MemberState } from "../control/membership";
import type { GossipProfile } from "../control/membership/config";
import type { ReflectorCounters, SyncState } from "../control/kube/reflector";
import type { SkipReason } from "../control/kube/peer-selection";

/** Where this node's subnet and its peers come from (config.ts's `source.kind`). */
export type SourceKind = "static" | "gossip" | "kubernetes";

/** Kernel changes made, cumulative: what a change of peers or subnet asked for, and repairs of drift. */
export interface KernelChanges {
  route: { added: number; removed: number };
  neighbour: { added: number; replaced: number; removed: number };
}

export type ChangeTrigger = "change" | "repair";

export interface PeerStatus {
  name: string;
  underlayIp: string;
  subnet: string;
  vtepMac: string;
  path: string;
  traffic?: PeerTraffic;
}

/** Sections a peer source adds to the status, one per kind that has something to say. */
export interface SourceStatus {
  gossip?: GossipStatus;
  kubernetes?: KubernetesStatus;
}

export interface DaemonStatus extends SourceStatus {
  node: string;
  mode: SourceKind;
  ready: boolean;
  /** Why not ready, as the source says; absent when ready. */
  notReadyBecause?: string;
  underlayIp: string;
  subnet: string | null;
  vtepMac: string;
  vni: number;
  vxlanPort: number;
  tap: string;
  mtu: number;
  peers: PeerStatus[];
  counters: Record<string, number>;
  /** Entries per forwarder read, by source. */
  batchSizes?: { tap: BatchHistogram; underlay: BatchHistogram };
  /** Routes and neighbours the daemon added, replaced or removed, by trigger. */
  kernelChanges?: Record<ChangeTrigger, KernelChanges>;
  /** Our routes and neighbours as the kernel holds them (the control socket's status only). */
  kernel?: KernelStatus;
  /** Why `kernel` is missing, when reading it failed. */
  kernelError?: string;
}

export interface KernelStatus {
  /** Routes of protocol 118 out of the TAP. */
  routes: string[];
  /** Permanent neighbours on the TAP. */
  neighbours: string[];
  /** What the next reconcile would change; empty lists when the kernel is as wanted. */
  drift: { missingRoutes: string[]; unexpectedRoutes: string[]; missingOrWrongNeighbours: string[]; unexpectedNeighbours: string[] };
}

/** The gossip source's section. */
export interface GossipStatus {
  ready: boolean;
  notReadyBecause: string | undefined;
  /** memberlist's timing profile in use. */
  profile: GossipProfile;
  lease: { subnet: string; state: LeaseState; stamp: number } | null;
  incarnation: number | undefined;
  health: number | undefined;
  members: GossipMemberStatus[];
  skipped: readonly { name: string; why: string }[];
  gossip: TransportCounters | undefined;
  subnetConflictsLost: number;
}

export interface GossipMemberStatus {
  name: string;
  state: MemberState;
  incarnation: number;
  underlayIp: string | undefined;
  subnet: string | undefined;
  vtepMac: string | undefined;
  lease: LeaseState | undefined;
  stateForSeconds: number | undefined;
  heardSecondsAgo: number | undefined;
}

/** The Kubernetes source's section. */
export interface KubernetesStatus {
  /** The API server's URL. */
  server: string;
  /** Where the credentials came from. */
  credentials: string;
  /** The Node this daemon is. */
  node: string;
  ready: boolean;
  notReadyBecause: string | undefined;
  watch: {
    state: SyncState;
    /** Seconds in that state. */
    forSeconds: number;
    /** A complete list applied and its watch open. */
    inSync: boolean;
    resourceVersion: string;
    /** Since the last watch event, bookmarks included; null before the first. */
    lastEventSecondsAgo: number | null;
    lastError: { message: string; secondsAgo: number } | null;
  };
  /** Nodes the API server lists, this one included. */
  nodes: number;
  /** Our Node's NetworkUnavailable condition as the API server holds it; null when absent. */
  networkUnavailable: string | null;
  /** Nodes that are not peers, and why. */
  skipped: { name: string; reason: SkipReason; why: string }[];
  skippedByReason: Record<SkipReason, number>;
  counters: ReflectorCounters & { patches: { annotations: number; condition: number; failed: number } };
}
