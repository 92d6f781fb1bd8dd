// The seam between "who are my peers, and what is my subnet" and the data plane, as flannel's
// subnet manager and Backend are: a source runs on its own (a file read once, SWIM gossip, a
// Kubernetes watch …) and tells the daemon this node's subnet and the complete set of peers
// through PeerEvents; the daemon passes them on to the data plane and the CNI hand-off
// (source-link.ts) and never asks which kind of source it holds. sources.ts picks the one the
// configuration names; each implementation lives in its own file (static-source.ts,
// gossip-source.ts, kubernetes-source.ts).

import type { Peer } from "../encap/fdb";
import type { Subnet } from "../encap/types";
import type { LabelledCidr } from "../control/cidr-overlap";
import type { SourceKind, SourceStatus } from "./status";
import type { TraceMember } from "./trace";

/** What a source tells the daemon. Each call resolves once the data plane has applied it. */
export interface PeerEvents {
  /**
   * This node's subnet is confirmed: the TAP gets its address and CNI may hand out addresses
   * from it. `undefined`: it is lost (a conflict lost), CNI stops until another is confirmed.
   */
  subnetChanged(subnet: Subnet | undefined): Promise<void>;
  /** The peers to forward to from now on: the whole set, not a change to it. */
  peersChanged(peers: readonly Peer[]): Promise<void>;
  /** The source cannot go on (its configuration contradicts the cluster's): the daemon stops with this message. */
  fatal(message: string): void;
}

/** The source's own view for `vxmesh trace`. */
export interface SourceTrace {
  /** Members (gossip) or Nodes (Kubernetes) as the source sees them, this node included; undefined with static peers. */
  members: readonly TraceMember[] | undefined;
  /** Nodes the source knows of but does not route, and why. */
  skipped: readonly { name: string; why: string }[];
}

export interface PeerSource {
  readonly kind: SourceKind;
  /** The pod network subnets come from, when the source has one (the hand-off's VXMESH_NETWORK, trace). */
  readonly clusterCidr: Subnet | undefined;
  /**
   * The pod addresses as they stand, labelled for messages: the start-up route check asks it
   * before `start`, the iptables rules on every pass (so they follow changed peers).
   */
  podCidrs(): readonly LabelledCidr[];
  /**
   * Starts the source; from here on it may call `events` at any time. A StartupError when it
   * cannot run (a port in use, the kernel refusing a static peer's route); undone by `stop`.
   */
  start(events: PeerEvents): Promise<void>;
  /** Stops calling `events` and leaves (gossip: announces the leave). Idempotent. */
  stop(): Promise<void>;
  /** Whether the node can take pods: its subnet is confirmed and the source is in touch. */
  readonly ready: boolean;
  /** Why not ready, for the operator; undefined when ready. */
  readonly notReadyBecause: string | undefined;
  /** The source's section of `vxmesh status` and the metrics. */
  status(): SourceStatus;
  trace(): SourceTrace;
  /** SIGHUP: re-reads what the source reads from files; the error, or undefined when done. */
  reload(): string | undefined;
  /** What the start-up log line says about the source. */
  logFields(): Record<string, unknown>;
}
