// SWIM membership with the Lifeguard refinements, as a pure state machine.
//
// No timers, sockets, clocks or Math.random here: time comes in as milliseconds (monotonic,
// never going back), randomness through an injected Rng, and I/O leaves as returned effects
// (datagrams, push-pull streams, member events). The shell calls tick(now) at nextDeadline()
// (or later) and feeds received datagrams and streams to receive()/receiveStream().
//
// The protocol follows hashicorp/memberlist (state.go, suspicion.go, awareness.go, queue.go):
// - one member probed per probe interval, in a shuffled round-robin; no ack within the probe
//   timeout → ping-req through k helpers who answer with a nack if the target stays silent;
//   no ack by the end of the interval → suspect; a suspect's probe carries the suspicion;
// - suspicion timeout from max down to min as independent confirmations arrive;
// - local health awareness: missed nacks and refutations raise a score that stretches this
//   node's own probe interval and (as in the Lifeguard paper, unlike memberlist) probe timeout;
// - a member refutes suspicion (or a death notice) of itself by raising its incarnation;
// - updates ride on every datagram and on gossip rounds, each sent a limited number of times,
//   a newer update about a member replacing the older one;
// - push-pull anti-entropy with one random member, scaled past 32 members; dead members kept
//   (deadRetention) so stale news cannot resurrect them; a leave is a death notice from self.
//
// Additions, each small and each aimed at a failure the simulator showed (gossip reaches each
// member with high probability, not certainty; at 10% loss and N = 50 a missed refutation
// turned into a false death every few runs):
// - helpers nack at 80% of the probe timeout (Lifeguard paper) so the nack arrives in time;
// - a suspicion of a newer incarnation restarts the timer instead of confirming the old one;
// - a suspicion that runs out gets one last probe (direct with the suspicion attached, and
//   through helpers) before the member is declared dead;
// - a refutation also goes straight back to whoever passed the accusation on; stale death
//   notices (and stale suspicions of ourselves) are answered with the alive we hold;
// - a ping from a member we hold dead is answered with that news, so it refutes to us; a ping
//   from a member we do not know triggers a push-pull with it (rate-limited);
// - a leave notice goes straight to every live member, besides the gossip;
// - as serf adds on top of memberlist: a periodic push-pull with one random failed member, so
//   the two sides of a healed partition merge again.

import {
  makeConfig, pushPullScale, retransmitLimit, suspicionTimeout, type MembershipConfig,
} from "./config";
import { BroadcastQueue } from "./broadcast-queue";
import { randomInt, shuffle } from "./rng";
import { Suspicion } from "./suspicion";
import {
  sameAddress, sameBytes,
  type Address, type AliveMsg, type DeadMsg, type Effect, type GossipMsg, type MemberChange, type MemberState,
  type MemberView, type Message, type PushPullEntry, type PushPullMsg, type Rng, type SuspectMsg,
} from "./types";
import { MAX_MESSAGES_PER_PACKET, MESSAGE_OVERHEAD, NAME_MAX_BYTES, PACKET_HEADER, packetSize, utf8Length } from "./wire";

export interface SelfInfo {
  readonly name: string;
  readonly address: Address;
  readonly meta: Uint8Array;
  /** Starting incarnation (default 1). A fresh process may start anywhere; refutation fixes it. */
  readonly incarnation?: number;
}

/** Counters for metrics and tests. */
export interface MembershipStats {
  probes: number;
  probesFailed: number;
  indirectProbes: number;
  nacksReceived: number;
  refutations: number;
  suspicionsStarted: number;
  confirmations: number;
  deathsDeclared: number;
  addressConflicts: number;
  corrections: number;
  verificationsAnswered: number;
  pushPulls: number;
  reconnects: number;
  reaped: number;
}

interface Member {
  readonly name: string;
  address: Address;
  meta: Uint8Array;
  incarnation: number;
  state: MemberState;
  stateChange: number;
  suspicion: Suspicion | null;
  /** The gossip update pending about this member (owned by the broadcast queue). */
  queued: object | null;
  /** Last answer to stale news about this member: when, and to whom (rate limit). */
  correctedAt: number;
  correctedTo: Address | null;
}

interface Probe {
  readonly seq: number;
  readonly target: Member;
  readonly incarnation: number;
  readonly ackDeadline: number;
  readonly end: number;
  indirectSent: boolean;
  expectedNacks: number;
  nacks: number;
}

interface Relay {
  readonly origSeq: number;
  readonly origin: Address;
  readonly nack: boolean;
  readonly deadline: number;
}

interface Outgoing {
  readonly to: Address;
  readonly messages: Message[];
  /** Encoded size once known (gossip packets), else −1. */
  size: number;
  /** Fill the rest of the datagram with queued updates when flushing. */
  readonly piggyback: boolean;
}

export class Membership {
  readonly config: MembershipConfig;
  readonly stats: MembershipStats = {
    probes: 0, probesFailed: 0, indirectProbes: 0, nacksReceived: 0, refutations: 0, suspicionsStarted: 0,
    confirmations: 0, deathsDeclared: 0, addressConflicts: 0, corrections: 0, verificationsAnswered: 0, pushPulls: 0, reconnects: 0, reaped: 0,
  };

  private readonly rng: Rng;
  private readonly me: Member;
  private readonly byName = new Map<string, Member>();
  /** Probe order (shuffled at each wrap); holds every known member, this node included. */
  private list: Member[] = [];
  private probeIndex = 0;
  private readonly queue = new BroadcastQueue();
  private readonly suspects = new Set<Member>();
  /** Earliest suspicion deadline, or NaN when it must be recomputed. */
  private suspectDeadline = Infinity;
  private readonly failed = new Set<Member>();
  private readonly relays = new Map<number, Relay>();
  /** Last-chance probes of suspects whose timer ran out, by seq. */
  private readonly verifies = new Map<number, Member>();
  /** Members alive or suspect, this node included. */
  private live = 1;
  private awareness = 0;
  private seq = 0;
  private probe: Probe | null = null;

  private started = false;
  private startedAt = 0;
  /** Random phase of the first push-pull within its (cluster-size-scaled) interval. */
  private pushPullPhase = 0;
  private firstPushPull = true;
  private nextProbeAt = 0;
  private nextGossipAt = 0;
  private nextPushPullAt = 0;
  private nextReconnectAt = 0;

  private lastUnknownSync = -Infinity;
  private leaving = false;
  private leaveBroadcastDone = false;

  private outgoing: Outgoing[] = [];
  private effects: Effect[] = [];

  constructor(config: Partial<MembershipConfig>, self: SelfInfo, rng: Rng) {
    this.config = makeConfig(config);
    this.rng = rng;
    const nameLen = utf8Length(self.name);
    if (nameLen < 1 || nameLen > NAME_MAX_BYTES) throw new RangeError(`member name must be 1…${NAME_MAX_BYTES} UTF-8 bytes`);
    this.checkMeta(self.meta);
    const inc = self.incarnation ?? 1;
    if (!Number.isInteger(inc) || inc < 0 || inc > 0xfffffffe) throw new RangeError(`incarnation ${inc} out of range`);
    this.me = {
      name: self.name, address: self.address, meta: self.meta, incarnation: inc,
      state: "alive", stateChange: 0, suspicion: null, correctedAt: -Infinity, correctedTo: null, queued: null,
    };
    this.byName.set(this.me.name, this.me);
    this.list.push(this.me);
    this.queue.enqueue(this.me, this.aliveOf(this.me));
  }

  // ---------------------------------------------------------------- public surface

  get incarnation(): number {
    return this.me.incarnation;
  }

  /** Lifeguard's local health score: 0 is healthy, up to awarenessMaxMultiplier − 1. */
  get healthScore(): number {
    return this.awareness;
  }

  /** Members alive or suspect, this node included (the N of the scaling formulas). */
  get liveMembers(): number {
    return this.live;
  }

  /** True once leave() has been called and its notice has been sent its full count. */
  get leaveComplete(): boolean {
    return this.leaving && this.leaveBroadcastDone;
  }

  /** Asks each seed for its full state (push-pull over a stream); merging the replies joins. */
  join(seeds: readonly Address[], now: number): Effect[] {
    this.start(now);
    for (const to of seeds) {
      this.stats.pushPulls++;
      this.effects.push({ kind: "stream", to, message: this.localState(true, false) });
    }
    return this.flush();
  }

  /**
   * Installs a known membership silently: no gossip, no events. For simulators and tests that
   * start from a converged cluster; a real node joins through join().
   */
  preload(members: readonly PushPullEntry[], now: number): void {
    this.start(now);
    for (const e of members) {
      if (e.name === this.me.name || this.byName.has(e.name)) continue;
      const m: Member = {
        name: e.name, address: e.address, meta: e.meta, incarnation: e.incarnation,
        state: "dead", stateChange: now, suspicion: null, correctedAt: -Infinity, correctedTo: null, queued: null,
      };
      this.insert(m);
      this.setState(m, e.state === "suspect" ? "alive" : e.state, now);
    }
  }

  /** Runs whatever is due at `now`: probe steps, suspicion timeouts, gossip, push-pull. */
  tick(now: number): Effect[] {
    this.start(now);
    const c = this.config;

    const p = this.probe;
    if (p !== null) {
      if (!p.indirectSent && now >= p.ackDeadline) this.sendIndirect(p);
      if (now >= p.end) this.probeFailed(p, now);
    }

    if (this.relays.size > 0) {
      for (const [seq, r] of this.relays) {
        if (now < r.deadline) continue;
        this.relays.delete(seq);
        if (r.nack) this.send(r.origin, [{ type: "nack", seq: r.origSeq }]);
      }
    }

    if (this.suspects.size > 0 && now >= this.earliestSuspicion()) {
      const due: Member[] = [];
      for (const m of this.suspects) if (m.suspicion !== null && now >= m.suspicion.deadline) due.push(m);
      for (const m of due) {
        if ((m.suspicion as Suspicion).verifySeq === 0) {
          this.verifySuspect(m, now);
          continue;
        }
        this.stats.deathsDeclared++;
        this.deadNode({ type: "dead", incarnation: m.incarnation, name: m.name, from: this.me.name }, now);
      }
    }

    if (this.probe === null && !this.leaving && now >= this.nextProbeAt) this.startProbe(now);

    if (now >= this.nextGossipAt) {
      this.gossip(now);
      this.nextGossipAt = advance(this.nextGossipAt, c.gossipInterval, now);
    }

    if (!this.leaving && now >= this.nextPushPullAt && this.firstPushPullDue(now)) {
      this.nextPushPullAt = now + pushPullScale(c.pushPullInterval, this.live);
      const [target] = this.randomMembers(1, (m) => m === this.me || m.state !== "alive");
      if (target !== undefined) {
        this.stats.pushPulls++;
        this.effects.push({ kind: "stream", to: target.address, message: this.localState(false, false) });
      }
    }

    if (!this.leaving && c.reconnectInterval > 0 && now >= this.nextReconnectAt) {
      this.nextReconnectAt = now + pushPullScale(c.reconnectInterval, this.live);
      const target = this.randomFailed();
      if (target !== undefined) {
        this.stats.reconnects++;
        this.effects.push({ kind: "stream", to: target.address, message: this.localState(false, false) });
      }
    }

    return this.flush();
  }

  /** Handles one received datagram (already decoded and authenticated). */
  receive(from: Address, messages: readonly Message[], now: number): Effect[] {
    this.start(now);
    for (const m of messages) this.handle(from, m, now);
    return this.flush();
  }

  /** Handles a push-pull received over a stream: answers a request, then merges. */
  receiveStream(from: Address, msg: PushPullMsg, now: number): Effect[] {
    this.start(now);
    if (!msg.reply) this.effects.push({ kind: "stream", to: from, message: this.localState(msg.join, true) });
    this.merge(msg.members, now);
    return this.flush();
  }

  /**
   * Leaves gracefully: a dead notice about itself (seen by others as "left"), sent at once to
   * every live member and gossiped. Keep ticking until leaveComplete (or a timeout).
   */
  leave(now: number): Effect[] {
    this.start(now);
    if (this.leaving) return this.flush();
    this.leaving = true;
    this.probe = null;
    if (this.live <= 1) this.leaveBroadcastDone = true;
    const notice: DeadMsg = { type: "dead", incarnation: this.me.incarnation, name: this.me.name, from: this.me.name };
    this.deadNode(notice, now);
    // Not in memberlist: the notice goes straight to every live member too (one small datagram
    // each, once), so no member misses it and later takes the silence for a failure.
    const size = packetSize([notice]);
    for (const m of this.list) {
      if (m !== this.me && (m.state === "alive" || m.state === "suspect")) {
        this.outgoing.push({ to: m.address, messages: [notice], piggyback: false, size });
      }
    }
    return this.flush();
  }

  /** Replaces this node's meta; gossiped as an alive message with a higher incarnation. */
  updateMeta(meta: Uint8Array, now: number): void {
    this.start(now);
    this.checkMeta(meta);
    if (this.leaving) return;
    this.me.meta = meta;
    this.me.incarnation++;
    this.queue.enqueue(this.me, this.aliveOf(this.me));
  }

  /** Every known member, this node included, sorted by name. */
  members(): MemberView[] {
    const out: MemberView[] = [];
    for (const m of this.byName.values()) out.push(view(m));
    out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return out;
  }

  member(name: string): MemberView | undefined {
    const m = this.byName.get(name);
    return m === undefined ? undefined : view(m);
  }

  /** The state of `name` as this node sees it, without building a view. */
  stateOf(name: string): MemberState | undefined {
    return this.byName.get(name)?.state;
  }

  /** The earliest time tick() has work to do (0 before the first call that gives a time). */
  nextDeadline(): number {
    if (!this.started) return 0;
    let t = this.nextGossipAt;
    const p = this.probe;
    if (p !== null) t = Math.min(t, p.indirectSent ? p.end : p.ackDeadline);
    else if (!this.leaving) t = Math.min(t, this.nextProbeAt);
    if (!this.leaving) {
      t = Math.min(t, this.nextPushPullAt);
      if (this.config.reconnectInterval > 0 && this.failed.size > 0) t = Math.min(t, this.nextReconnectAt);
    }
    for (const r of this.relays.values()) if (r.deadline < t) t = r.deadline;
    if (this.suspects.size > 0) t = Math.min(t, this.earliestSuspicion());
    return t;
  }

  // ---------------------------------------------------------------- scheduling

  private start(now: number): void {
    if (this.started) return;
    this.started = true;
    this.startedAt = now;
    const c = this.config;
    this.me.stateChange = now;
    // Random phases, so a cluster started at one instant does not probe and gossip in lockstep.
    this.nextProbeAt = now + this.rng() * c.probeInterval;
    this.nextGossipAt = now + this.rng() * c.gossipInterval;
    this.pushPullPhase = this.rng();
    this.nextPushPullAt = now + this.pushPullPhase * c.pushPullInterval;
    this.nextReconnectAt = now + this.rng() * Math.max(1, c.reconnectInterval);
  }

  private earliestSuspicion(): number {
    if (Number.isNaN(this.suspectDeadline)) {
      let t = Infinity;
      for (const m of this.suspects) if (m.suspicion !== null && m.suspicion.deadline < t) t = m.suspicion.deadline;
      this.suspectDeadline = t;
    }
    return this.suspectDeadline;
  }

  /**
   * The first push-pull keeps its random phase within the interval as scaled for the cluster
   * we know by then (a node that just joined a big cluster does not exchange state at once).
   */
  private firstPushPullDue(now: number): boolean {
    if (!this.firstPushPull) return true;
    this.firstPushPull = false;
    const at = this.startedAt + this.pushPullPhase * pushPullScale(this.config.pushPullInterval, this.live);
    if (now >= at) return true;
    this.nextPushPullAt = at;
    return false;
  }

  private scaled(t: number): number {
    return t * (this.awareness + 1);
  }

  private applyAwareness(delta: number): void {
    const max = this.config.awarenessMaxMultiplier - 1;
    this.awareness = Math.max(0, Math.min(max, this.awareness + delta));
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  // ---------------------------------------------------------------- probing

  private startProbe(now: number): void {
    const interval = this.scaled(this.config.probeInterval);
    this.nextProbeAt = now + interval;
    const target = this.nextProbeTarget(now);
    if (target === null) return;
    this.stats.probes++;
    const seq = this.nextSeq();
    this.probe = {
      seq, target, incarnation: target.incarnation,
      ackDeadline: now + this.scaled(this.config.probeTimeout), end: now + interval,
      indirectSent: false, expectedNacks: 0, nacks: 0,
    };
    const msgs: Message[] = [{ type: "ping", seq, target: target.name, source: this.me.address, sourceName: this.me.name }];
    // A suspect gets the suspicion with the probe, so it can refute at once.
    if (target.state === "suspect") {
      msgs.push({ type: "suspect", incarnation: target.incarnation, name: target.name, from: this.me.name });
    }
    this.send(target.address, msgs);
  }

  private nextProbeTarget(now: number): Member | null {
    let checked = 0;
    while (checked < this.list.length) {
      if (this.probeIndex >= this.list.length) {
        this.resetList(now);
        this.probeIndex = 0;
        checked++;
        continue;
      }
      const m = this.list[this.probeIndex++] as Member;
      if (m === this.me || m.state === "dead" || m.state === "left") {
        checked++;
        continue;
      }
      return m;
    }
    return null;
  }

  /** At each wrap of the round-robin: forget long-dead members and reshuffle. */
  private resetList(now: number): void {
    const keep: Member[] = [];
    for (const m of this.list) {
      if ((m.state === "dead" || m.state === "left") && now - m.stateChange > this.config.deadRetention) {
        this.byName.delete(m.name);
        this.failed.delete(m);
        this.stats.reaped++;
        continue;
      }
      keep.push(m);
    }
    this.list = keep;
    shuffle(this.rng, this.list);
  }

  private sendIndirect(p: Probe): void {
    p.indirectSent = true;
    const helpers = this.randomMembers(this.config.indirectChecks, (m) => m === this.me || m === p.target || m.state !== "alive");
    for (const h of helpers) {
      this.stats.indirectProbes++;
      this.send(h.address, [{
        type: "pingReq", seq: p.seq, target: p.target.name, targetAddress: p.target.address, nack: true,
        source: this.me.address, sourceName: this.me.name,
      }]);
    }
    p.expectedNacks = helpers.length;
  }

  private probeFailed(p: Probe, now: number): void {
    this.probe = null;
    this.stats.probesFailed++;
    // Lifeguard: helpers that did not even nack point at our own trouble, not the target's.
    if (p.expectedNacks > 0) this.applyAwareness(Math.max(0, p.expectedNacks - p.nacks));
    else this.applyAwareness(1);
    this.suspectNode({ type: "suspect", incarnation: p.incarnation, name: p.target.name, from: this.me.name }, now);
  }

  // ---------------------------------------------------------------- receiving

  private handle(from: Address, m: Message, now: number): void {
    switch (m.type) {
      case "ping": {
        if (m.target !== this.me.name) return; // meant for whoever had this address before
        const reply: Message[] = [{ type: "ack", seq: m.seq }];
        // Not in memberlist: a member we hold dead (or gone) is probing us, so it runs and
        // missed the news about itself. Tell it on the ack, so it refutes straight back to us.
        const sender = this.byName.get(m.sourceName);
        if (sender !== undefined && sender !== this.me && (sender.state === "dead" || sender.state === "left")) {
          const from = sender.state === "left" ? sender.name : this.me.name;
          reply.push({ type: "dead", incarnation: sender.incarnation, name: sender.name, from });
        }
        this.send(m.source, reply);
        // Not in memberlist: a member we do not know probes us, so we missed its join (gossip
        // reaches each member with high probability, not certainty). Exchange state with it
        // now rather than at the next push-pull; at most once per probe interval.
        if (sender === undefined && !this.leaving && now - this.lastUnknownSync >= this.config.probeInterval) {
          this.lastUnknownSync = now;
          this.stats.pushPulls++;
          this.effects.push({ kind: "stream", to: m.source, message: this.localState(false, false) });
        }
        return;
      }
      case "pingReq": {
        const seq = this.nextSeq();
        // Lifeguard: nack at 80% of the probe timeout, so the nack reaches the prober before
        // its probe interval runs out (at 100% it would arrive just too late).
        const deadline = now + Math.floor(0.8 * this.config.probeTimeout);
        this.relays.set(seq, { origSeq: m.seq, origin: m.source, nack: m.nack, deadline });
        this.send(m.targetAddress, [{ type: "ping", seq, target: m.target, source: this.me.address, sourceName: this.me.name }]);
        return;
      }
      case "ack": {
        const p = this.probe;
        if (p !== null && p.seq === m.seq) {
          this.probe = null;
          this.applyAwareness(-1);
          return;
        }
        const v = this.verifies.get(m.seq);
        if (v !== undefined) {
          this.verifyAnswered(v, m.seq, now);
          return;
        }
        const r = this.relays.get(m.seq);
        if (r !== undefined) {
          this.relays.delete(m.seq);
          this.send(r.origin, [{ type: "ack", seq: r.origSeq }]);
        }
        return;
      }
      case "nack": {
        const p = this.probe;
        if (p !== null && p.seq === m.seq && p.nacks < p.expectedNacks) {
          p.nacks++;
          this.stats.nacksReceived++;
        }
        return;
      }
      case "alive":
        this.aliveNode(m, now);
        return;
      case "suspect":
        this.suspectNode(m, now, from);
        return;
      case "dead":
        this.deadNode(m, now, from);
        return;
    }
  }

  private merge(entries: readonly PushPullEntry[], now: number): void {
    for (const e of entries) {
      switch (e.state) {
        case "alive":
          this.aliveNode({ type: "alive", incarnation: e.incarnation, name: e.name, address: e.address, meta: e.meta }, now);
          break;
        case "left":
          this.deadNode({ type: "dead", incarnation: e.incarnation, name: e.name, from: e.name }, now);
          break;
        case "dead":
        case "suspect":
          // A remote death is only a suspicion here: the member gets its chance to refute.
          this.suspectNode({ type: "suspect", incarnation: e.incarnation, name: e.name, from: this.me.name }, now);
          break;
      }
    }
  }

  // ---------------------------------------------------------------- state transitions

  private aliveNode(a: AliveMsg, now: number): void {
    let m = this.byName.get(a.name);
    // The common case first: news we already have about a live member.
    if (m !== undefined && a.incarnation <= m.incarnation && m !== this.me && (m.state === "alive" || m.state === "suspect")) {
      if (!sameAddress(m.address, a.address)) this.stats.addressConflicts++;
      return;
    }
    const isSelf = m === this.me;
    if (isSelf && this.leaving) return;
    let isNew = false;
    let readdress = false;
    if (m === undefined) {
      if (a.meta.length > this.config.metaMaxBytes) return;
      m = { name: a.name, address: a.address, meta: a.meta, incarnation: a.incarnation, state: "dead", stateChange: now, suspicion: null, correctedAt: -Infinity, correctedTo: null, queued: null };
      this.insert(m);
      isNew = true;
    } else if (!sameAddress(m.address, a.address) && !isSelf) {
      // Another address for a known name: accepted only to replace a member that is gone.
      if (m.state === "dead" || m.state === "left") readdress = true;
      else {
        this.stats.addressConflicts++;
        return;
      }
    }

    if (isSelf) {
      if (a.incarnation < m.incarnation) return;
      if (a.incarnation === m.incarnation && sameBytes(a.meta, m.meta) && sameAddress(a.address, m.address)) return;
      // Someone speaks of us with our incarnation or newer but not as we are: a former life
      // of this node, or a rumour. Out-bid it.
      this.refute(a.incarnation, undefined);
      return;
    }
    if (!isNew && !readdress && a.incarnation <= m.incarnation) return;
    if (a.meta.length > this.config.metaMaxBytes) return;

    this.clearSuspicion(m);
    this.queue.enqueue(m, a);
    const old = isNew ? "new" : m.state;
    const metaChanged = !sameBytes(m.meta, a.meta) || !sameAddress(m.address, a.address);
    m.incarnation = a.incarnation;
    m.meta = a.meta;
    m.address = a.address;
    if (m.state !== "alive" || isNew) this.setState(m, "alive", now);
    if (old !== "alive") this.event("alive", m);
    else if (metaChanged) this.event("updated", m);
  }

  private suspectNode(s: SuspectMsg, now: number, from?: Address): void {
    const m = this.byName.get(s.name);
    if (m === undefined) return;
    if (s.incarnation < m.incarnation) {
      // Stale suspicion of ourselves (typically the buddy-system copy on a probe of a node
      // that missed our refutation): answer with our alive. About others it is harmless.
      if (from !== undefined && m === this.me) this.correct(m, from, now);
      return;
    }

    const wasSuspect = m.state === "suspect";
    if (m.suspicion !== null && s.incarnation > m.incarnation) {
      // A suspicion of a newer incarnation: the member refuted the one we hold (we missed its
      // alive) and is suspected again. Start over rather than count it as a confirmation.
      this.clearSuspicion(m);
    } else if (m.suspicion !== null) {
      if (m.suspicion.confirm(s.from)) {
        this.stats.confirmations++;
        if (m.suspicion.deadline < this.suspectDeadline) this.suspectDeadline = m.suspicion.deadline;
        this.queue.enqueue(m, s);
      }
      return;
    } else if (m.state !== "alive") return;
    if (m === this.me) {
      this.refute(s.incarnation, from);
      return;
    }

    this.queue.enqueue(m, s);
    m.incarnation = s.incarnation;
    this.setState(m, "suspect", now);
    this.stats.suspicionsStarted++;

    // Lifeguard: expect k = suspicionMult − 2 independent confirmations to reach the minimum,
    // none when the cluster is too small to provide them.
    this.startSuspicion(m, s.from, now);
    if (!wasSuspect) this.event("suspect", m);
  }

  private startSuspicion(m: Member, from: string, now: number): void {
    // Lifeguard: expect k = suspicionMult − 2 independent confirmations to reach the minimum,
    // none when the cluster is too small to provide them.
    const c = this.config;
    const n = this.live;
    let k = c.suspicionMult - 2;
    if (n - 2 < k) k = 0;
    const min = suspicionTimeout(c.suspicionMult, n, c.probeInterval);
    const max = c.suspicionMaxTimeoutMult * min;
    m.suspicion = new Suspicion(from, k, min, max, now);
    this.suspects.add(m);
    if (m.suspicion.deadline < this.suspectDeadline) this.suspectDeadline = m.suspicion.deadline;
  }

  /**
   * Not in memberlist: when a suspicion runs out, one last probe before declaring the member
   * dead — directly with the suspicion attached (so the member can refute on the ack, Lifeguard's
   * buddy system) and through indirectChecks helpers. Each update is gossiped a bounded number
   * of times, so now and then a member misses a refutation everyone else heard; this probe
   * keeps that miss from turning into a false death. A silent member is declared dead one
   * probe timeout later.
   */
  private verifySuspect(m: Member, now: number): void {
    const sus = m.suspicion as Suspicion;
    const seq = this.nextSeq();
    sus.verifySeq = seq;
    sus.deadline = now + this.scaled(this.config.probeTimeout);
    this.suspectDeadline = NaN;
    this.verifies.set(seq, m);
    this.send(m.address, [
      { type: "ping", seq, target: m.name, source: this.me.address, sourceName: this.me.name },
      { type: "suspect", incarnation: m.incarnation, name: m.name, from: this.me.name },
    ]);
    const helpers = this.randomMembers(this.config.indirectChecks, (h) => h === this.me || h === m || h.state !== "alive");
    for (const h of helpers) {
      this.send(h.address, [{
        type: "pingReq", seq, target: m.name, targetAddress: m.address, nack: false,
        source: this.me.address, sourceName: this.me.name,
      }]);
    }
  }

  /** The suspect answered the last-chance probe: not dead; suspect it afresh until it refutes. */
  private verifyAnswered(m: Member, seq: number, now: number): void {
    this.verifies.delete(seq);
    if (m.suspicion === null || m.suspicion.verifySeq !== seq) return;
    this.stats.verificationsAnswered++;
    this.clearSuspicion(m);
    this.startSuspicion(m, this.me.name, now);
  }

  private deadNode(d: DeadMsg, now: number, from?: Address): void {
    const m = this.byName.get(d.name);
    if (m === undefined) return;
    if (d.incarnation < m.incarnation) {
      if (from !== undefined) this.correct(m, from, now);
      return;
    }
    this.clearSuspicion(m);
    if (m.state === "dead" || m.state === "left") return;

    if (m === this.me) {
      if (!this.leaving) {
        this.refute(d.incarnation, from);
        return;
      }
      this.queue.enqueue(m, d, () => {
        this.leaveBroadcastDone = true;
      });
    } else {
      this.queue.enqueue(m, d);
    }
    m.incarnation = d.incarnation;
    const left = d.from === d.name;
    this.setState(m, left ? "left" : "dead", now);
    if (m !== this.me) this.event(left ? "left" : "dead", m);
  }

  /**
   * Not in memberlist: whoever sends us a death notice (or a suspicion of ourselves) older
   * than the alive we hold has missed a refutation — each update is gossiped a bounded number
   * of times, so now and then a member misses one. Send it the alive directly; the same sender
   * is answered about the same member at most once per gossip interval.
   */
  private correct(m: Member, to: Address, now: number): void {
    if (m.state !== "alive") return;
    if (m.correctedTo !== null && sameAddress(m.correctedTo, to) && now - m.correctedAt < this.config.gossipInterval) return;
    m.correctedAt = now;
    m.correctedTo = to;
    this.stats.corrections++;
    this.send(to, [this.aliveOf(m)]);
  }

  /**
   * Out-bids an accusation with a higher incarnation, gossiped; and, not in memberlist, sent
   * straight back to whoever passed the accusation on (`to`), who may otherwise be the one
   * member the gossip misses.
   */
  private refute(accused: number, to: Address | undefined): void {
    const inc = Math.max(this.me.incarnation + 1, accused + 1);
    this.me.incarnation = inc >>> 0;
    this.stats.refutations++;
    this.applyAwareness(1);
    const alive = this.aliveOf(this.me);
    this.queue.enqueue(this.me, alive);
    if (to !== undefined) this.send(to, [alive]);
  }

  private clearSuspicion(m: Member): void {
    if (m.suspicion === null) return;
    if (m.suspicion.verifySeq !== 0) this.verifies.delete(m.suspicion.verifySeq);
    if (m.suspicion.deadline <= this.suspectDeadline) this.suspectDeadline = NaN;
    m.suspicion = null;
    this.suspects.delete(m);
  }

  private setState(m: Member, state: MemberState, now: number): void {
    const wasLive = m.state === "alive" || m.state === "suspect";
    const isLive = state === "alive" || state === "suspect";
    if (wasLive !== isLive) this.live += isLive ? 1 : -1;
    if (m.state === "dead" && state !== "dead") this.failed.delete(m);
    if (state === "dead" && m !== this.me) this.failed.add(m);
    if (m.state !== state) m.stateChange = now;
    m.state = state;
  }

  /** New members go to a random place in the probe order, as memberlist does. */
  private insert(m: Member): void {
    this.byName.set(m.name, m);
    const n = this.list.length;
    const at = randomInt(this.rng, n + 1);
    this.list.push(m);
    if (at < n) {
      this.list[n] = this.list[at] as Member;
      this.list[at] = m;
    }
    // New members start out dead in the counts; setState() makes them live.
    m.state = "dead";
  }

  // ---------------------------------------------------------------- sending

  private gossip(now: number): void {
    const c = this.config;
    if (this.queue.size === 0) return;
    const targets = this.randomMembers(c.gossipNodes, (m) =>
      m === this.me || m.state === "left" || (m.state === "dead" && now - m.stateChange > c.gossipToTheDeadTime));
    const limit = retransmitLimit(c.retransmitMult, this.live);
    for (const t of targets) {
      const msgs = this.queue.take(c.datagramBudget - PACKET_HEADER, MESSAGE_OVERHEAD, MAX_MESSAGES_PER_PACKET, limit);
      if (msgs.length === 0) break;
      this.outgoing.push({ to: t.address, messages: msgs, piggyback: false, size: PACKET_HEADER + this.queue.lastTakeBytes });
    }
  }

  private send(to: Address, messages: Message[]): void {
    this.outgoing.push({ to, messages, piggyback: true, size: -1 });
  }

  /** Turns this call's pending sends into effects, piggybacking queued updates. */
  private flush(): Effect[] {
    const out = this.effects;
    if (this.outgoing.length > 0) {
      const c = this.config;
      const limit = retransmitLimit(c.retransmitMult, this.live);
      for (const o of this.outgoing) {
        let size = o.size;
        if (o.piggyback) {
          size = packetSize(o.messages);
          if (this.queue.size > 0) {
            const extra = this.queue.take(c.datagramBudget - size, MESSAGE_OVERHEAD, MAX_MESSAGES_PER_PACKET - o.messages.length, limit, o.messages);
            for (const g of extra) o.messages.push(g);
            size += this.queue.lastTakeBytes;
          }
        }
        out.push({ kind: "send", to: o.to, messages: o.messages, size });
      }
      this.outgoing = [];
    }
    this.effects = [];
    return out;
  }

  private event(change: MemberChange, m: Member): void {
    this.effects.push({ kind: "member", change, member: view(m) });
  }

  private localState(join: boolean, reply: boolean): PushPullMsg {
    const members: PushPullEntry[] = [];
    for (const m of this.list) {
      members.push({ name: m.name, address: m.address, meta: m.meta, incarnation: m.incarnation, state: m.state });
    }
    return { type: "pushPull", join, reply, members };
  }

  private aliveOf(m: Member): GossipMsg {
    return { type: "alive", incarnation: m.incarnation, name: m.name, address: m.address, meta: m.meta };
  }

  /** Up to k distinct random members not excluded (memberlist's kRandomNodes). */
  private randomMembers(k: number, exclude: (m: Member) => boolean): Member[] {
    const out: Member[] = [];
    const n = this.list.length;
    for (let i = 0; i < 3 * n && out.length < k; i++) {
      const m = this.list[randomInt(this.rng, n)] as Member;
      if (exclude(m) || out.includes(m)) continue;
      out.push(m);
    }
    return out;
  }

  private randomFailed(): Member | undefined {
    if (this.failed.size === 0) return undefined;
    let i = randomInt(this.rng, this.failed.size);
    for (const m of this.failed) if (i-- === 0) return m;
    return undefined;
  }

  private checkMeta(meta: Uint8Array): void {
    if (meta.length > this.config.metaMaxBytes) {
      throw new RangeError(`meta of ${meta.length} bytes exceeds metaMaxBytes=${this.config.metaMaxBytes}`);
    }
  }
}

function view(m: Member): MemberView {
  return { name: m.name, address: m.address, meta: m.meta, incarnation: m.incarnation, state: m.state, stateChangedAt: m.stateChange };
}

/** Next tick of a periodic timer; skips missed ticks like Go's time.Ticker. */
function advance(next: number, interval: number, now: number): number {
  const t = next + interval;
  return t > now ? t : now + interval;
}
