// Value types of the membership core: addresses, protocol messages, effects and views.
// Everything here is plain data so the state machine, the wire codec, the simulator and the
// socket shell can share it without depending on one another.

import type { Ipv4 } from "../../encap/types";

/** Where a member's gossip socket listens. IPv4 for now; the wire keeps a family byte. */
export interface Address {
  readonly ip: Ipv4;
  readonly port: number;
}

export type MemberState = "alive" | "suspect" | "dead" | "left";

/** A member as the state machine shows it to the outside (a copy; safe to keep). */
export interface MemberView {
  readonly name: string;
  readonly address: Address;
  /** Opaque bytes owned by another module (the encoded node record). */
  readonly meta: Uint8Array;
  readonly incarnation: number;
  readonly state: MemberState;
  /** Virtual or real time (ms) of the last state change as this node saw it. */
  readonly stateChangedAt: number;
}

// ---- datagram messages (UDP-like, unreliable) ----

/** Direct probe. `target` is the name the prober expects to answer; others ignore it. */
export interface PingMsg {
  readonly type: "ping";
  readonly seq: number;
  readonly target: string;
  readonly source: Address;
  readonly sourceName: string;
}

/** Asks a helper to probe `target` on the requester's behalf (SWIM indirect probe). */
export interface PingReqMsg {
  readonly type: "pingReq";
  readonly seq: number;
  readonly target: string;
  readonly targetAddress: Address;
  /** Lifeguard: the helper answers with a nack when the target stays silent. */
  readonly nack: boolean;
  readonly source: Address;
  readonly sourceName: string;
}

export interface AckMsg {
  readonly type: "ack";
  readonly seq: number;
}

export interface NackMsg {
  readonly type: "nack";
  readonly seq: number;
}

export interface AliveMsg {
  readonly type: "alive";
  readonly incarnation: number;
  readonly name: string;
  readonly address: Address;
  readonly meta: Uint8Array;
}

export interface SuspectMsg {
  readonly type: "suspect";
  readonly incarnation: number;
  readonly name: string;
  /** Who suspects; distinct `from`s are the independent confirmations of Lifeguard. */
  readonly from: string;
}

/** A failure declaration, or a graceful leave when `from === name`. */
export interface DeadMsg {
  readonly type: "dead";
  readonly incarnation: number;
  readonly name: string;
  readonly from: string;
}

export type GossipMsg = AliveMsg | SuspectMsg | DeadMsg;
export type Message = PingMsg | PingReqMsg | AckMsg | NackMsg | GossipMsg;

// ---- stream messages (TCP-like, reliable, length-prefixed on the wire) ----

export interface PushPullEntry {
  readonly name: string;
  readonly address: Address;
  readonly meta: Uint8Array;
  readonly incarnation: number;
  readonly state: MemberState;
}

/** Full-state exchange (anti-entropy, and the way a node joins through a seed). */
export interface PushPullMsg {
  readonly type: "pushPull";
  /** Sent by a joining node (informative; the merge is the same). */
  readonly join: boolean;
  /** An answer to a pushPull; it is merged but never answered again. */
  readonly reply: boolean;
  readonly members: readonly PushPullEntry[];
}

// ---- effects: what the state machine asks its shell to do ----

export type MemberChange = "alive" | "suspect" | "dead" | "left" | "updated";

export type Effect =
  /**
   * One datagram holding `messages` (a compound packet); `size` is its encoded length, within
   * the datagram budget.
   */
  | { readonly kind: "send"; readonly to: Address; readonly messages: readonly Message[]; readonly size: number }
  /**
   * A push-pull over a stream. A request (`reply: false`) opens a connection to `to`; a reply
   * goes back on the connection the request came in on (`to` is then the request's source).
   */
  | { readonly kind: "stream"; readonly to: Address; readonly message: PushPullMsg }
  /** A change in this node's view of another member. */
  | { readonly kind: "member"; readonly change: MemberChange; readonly member: MemberView };

export type MemberEffect = Extract<Effect, { kind: "member" }>;

/** A source of uniform numbers in [0, 1). Inject a seeded one (see rng.ts). */
export type Rng = () => number;

export function sameAddress(a: Address, b: Address): boolean {
  return a.ip === b.ip && a.port === b.port;
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
