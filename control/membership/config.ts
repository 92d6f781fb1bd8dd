// Tunables of the membership protocol and the formulas that scale them with cluster size.
// Defaults are hashicorp/memberlist's DefaultLANConfig; WAN and Local are its DefaultWANConfig
// and DefaultLocalConfig (the three profiles `--gossip-profile` selects). The formulas follow
// memberlist's util.go so the simulator's figures can be put beside what memberlist predicts.

import type { Parsed } from "../../encap/types";

export interface MembershipConfig {
  /** Time between two probes of this node (before the awareness multiplier). */
  readonly probeInterval: number;
  /** Wait for a direct ack before asking helpers (before the awareness multiplier). */
  readonly probeTimeout: number;
  /** Helpers asked to probe indirectly when the direct ack does not come. */
  readonly indirectChecks: number;
  readonly gossipInterval: number;
  /** Random members each gossip round sends pending updates to. */
  readonly gossipNodes: number;
  /** Each update is sent retransmitMult × ⌈log10(N+1)⌉ times. */
  readonly retransmitMult: number;
  /** Minimum suspicion timeout = suspicionMult × max(1, log10 N) × probeInterval. */
  readonly suspicionMult: number;
  /** Maximum suspicion timeout (no confirmations) = this × the minimum. */
  readonly suspicionMaxTimeoutMult: number;
  /** Awareness score ranges over 0 … this−1; timeouts scale by (score + 1). */
  readonly awarenessMaxMultiplier: number;
  /** Full-state exchange with one random member; scaled up past 32 members. */
  readonly pushPullInterval: number;
  /** Dead members still receive gossip this long after they were declared dead. */
  readonly gossipToTheDeadTime: number;
  /**
   * Not memberlist (serf does it on top): every reconnectInterval (scaled like push-pull) a
   * push-pull with one random member we consider failed, so a healed partition re-merges.
   * 0 turns it off.
   */
  readonly reconnectInterval: number;
  /**
   * Dead and left members are kept (and a failed one retried by reconnect) this long before
   * they are forgotten, so stale alive gossip with an old incarnation cannot bring them back.
   */
  readonly deadRetention: number;
  /** Bytes of one datagram's payload: 1400 − the keyring's envelope (33 bytes). */
  readonly datagramBudget: number;
  /** Largest meta blob a member may carry. */
  readonly metaMaxBytes: number;
}

const DATAGRAM_MAX = 1400;
/** The keyring's seal (version, key id, nonce, tag) around every datagram. */
export { ENVELOPE_OVERHEAD } from "../keyring";
import { ENVELOPE_OVERHEAD } from "../keyring";
export const DATAGRAM_PAYLOAD_BUDGET = DATAGRAM_MAX - ENVELOPE_OVERHEAD;
export const META_MAX_BYTES = 512;

export const LAN_CONFIG: MembershipConfig = Object.freeze({
  probeInterval: 1000,
  probeTimeout: 500,
  indirectChecks: 3,
  gossipInterval: 200,
  gossipNodes: 3,
  retransmitMult: 4,
  suspicionMult: 4,
  suspicionMaxTimeoutMult: 6,
  awarenessMaxMultiplier: 8,
  pushPullInterval: 30_000,
  gossipToTheDeadTime: 30_000,
  reconnectInterval: 30_000,
  deadRetention: 3_600_000,
  datagramBudget: DATAGRAM_PAYLOAD_BUDGET,
  metaMaxBytes: META_MAX_BYTES,
});

/*
 * memberlist's other two profiles, as config.go defines them (hashicorp/memberlist at
 * 1b4c746c0e53bce51547d38f14d4772f85da2708, config.go: DefaultLANConfig, DefaultWANConfig,
 * DefaultLocalConfig). Each starts from DefaultLANConfig and overrides:
 *
 *   WAN:   ProbeInterval 5 s, ProbeTimeout 3 s, SuspicionMult 6, PushPullInterval 60 s,
 *          GossipNodes 4, GossipInterval 500 ms, GossipToTheDeadTime 60 s (TCPTimeout 30 s)
 *   Local: ProbeInterval 1 s, ProbeTimeout 200 ms, IndirectChecks 1, RetransmitMult 2,
 *          SuspicionMult 3, PushPullInterval 15 s, GossipInterval 100 ms,
 *          GossipToTheDeadTime 15 s (TCPTimeout 1 s)
 *
 * Everything else (SuspicionMaxTimeoutMult 6, AwarenessMaxMultiplier 8, …) stays LAN's, as in
 * memberlist. TCPTimeout is not a membership tunable here: the gossip transport's stream
 * timeout is LAN's 10 s in every profile. reconnectInterval and deadRetention are not
 * memberlist's (serf's, which keeps them whatever the profile), so they stay LAN's too.
 */
export const WAN_CONFIG: MembershipConfig = Object.freeze({
  ...LAN_CONFIG,
  probeInterval: 5000,
  probeTimeout: 3000,
  suspicionMult: 6,
  pushPullInterval: 60_000,
  gossipNodes: 4,
  gossipInterval: 500,
  gossipToTheDeadTime: 60_000,
});

export const LOCAL_CONFIG: MembershipConfig = Object.freeze({
  ...LAN_CONFIG,
  probeInterval: 1000,
  probeTimeout: 200,
  indirectChecks: 1,
  retransmitMult: 2,
  suspicionMult: 3,
  pushPullInterval: 15_000,
  gossipInterval: 100,
  gossipToTheDeadTime: 15_000,
});

/** memberlist's three profiles, by the name `--gossip-profile` takes. */
export const GOSSIP_PROFILES = Object.freeze({ lan: LAN_CONFIG, wan: WAN_CONFIG, local: LOCAL_CONFIG });

export type GossipProfile = keyof typeof GOSSIP_PROFILES;

export function parseGossipProfile(text: string): Parsed<GossipProfile> {
  return text === "lan" || text === "wan" || text === "local"
    ? { ok: true, value: text }
    : { ok: false, error: "lan, wan or local (memberlist's DefaultLANConfig, DefaultWANConfig, DefaultLocalConfig)" };
}

/** Fills in LAN defaults and rejects values the protocol cannot work with. */
export function makeConfig(partial: Partial<MembershipConfig> = {}): MembershipConfig {
  const c: MembershipConfig = { ...LAN_CONFIG, ...partial };
  const positive: (keyof MembershipConfig)[] = [
    "probeInterval", "probeTimeout", "gossipInterval", "retransmitMult", "suspicionMult",
    "suspicionMaxTimeoutMult", "awarenessMaxMultiplier", "pushPullInterval", "datagramBudget",
  ];
  for (const k of positive) {
    const v = c[k];
    if (!Number.isFinite(v) || v <= 0) throw new RangeError(`membership config ${k}=${v}: must be a positive number`);
  }
  const nonNegative: (keyof MembershipConfig)[] = [
    "indirectChecks", "gossipNodes", "gossipToTheDeadTime", "reconnectInterval", "deadRetention", "metaMaxBytes",
  ];
  for (const k of nonNegative) {
    const v = c[k];
    if (!Number.isFinite(v) || v < 0) throw new RangeError(`membership config ${k}=${v}: must be zero or more`);
  }
  if (c.probeTimeout > c.probeInterval) {
    throw new RangeError(`membership config probeTimeout=${c.probeTimeout}: must not exceed probeInterval=${c.probeInterval}`);
  }
  if (c.datagramBudget < 576 || c.datagramBudget > 65_000) {
    throw new RangeError(`membership config datagramBudget=${c.datagramBudget}: must be 576…65000`);
  }
  if (c.metaMaxBytes > META_MAX_BYTES) {
    throw new RangeError(`membership config metaMaxBytes=${c.metaMaxBytes}: at most ${META_MAX_BYTES}`);
  }
  return Object.freeze(c);
}

/** memberlist suspicionTimeout: suspicionMult × max(1, log10 n) × probeInterval (ms, floored). */
export function suspicionTimeout(suspicionMult: number, n: number, probeInterval: number): number {
  const nodeScale = Math.max(1, Math.log10(Math.max(1, n)));
  return Math.floor((suspicionMult * Math.floor(nodeScale * 1000) * probeInterval) / 1000);
}

/** memberlist retransmitLimit: retransmitMult × ⌈log10(n + 1)⌉. */
export function retransmitLimit(retransmitMult: number, n: number): number {
  return retransmitMult * Math.ceil(Math.log10(n + 1));
}

/** memberlist pushPullScale: ×(⌈log2 n − log2 32⌉ + 1) once n > 32. */
export function pushPullScale(interval: number, n: number): number {
  if (n <= 32) return interval;
  return (Math.ceil(Math.log2(n) - Math.log2(32)) + 1) * interval;
}
