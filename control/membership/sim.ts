// A deterministic discrete-event simulator for the membership state machine: N nodes on a
// virtual network with loss, delay, partitions, one-way link cuts, crashes, restarts and
// graceful leaves. One seeded PRNG drives the network and seeds every node's PRNG, so the same
// seed gives the same run. Time is virtual (ms); nothing here waits.
//
// Datagrams either pass through the real wire codec (encode at the sender, decode at the
// receiver: `wire: true`) or are handed over as objects with their size taken from the codec's
// exact size functions (`wire: false`, faster). Byte counts are the codec's in both modes.

import type { Ipv4 } from "../../encap/types";
import type { MembershipConfig } from "./config";
import { ENVELOPE_OVERHEAD } from "./config";
import { Membership } from "./membership";
import { randomInt, seededRng } from "./rng";
import type { Address, Effect, MemberEffect, MemberState, Message, PushPullEntry, PushPullMsg, Rng } from "./types";
import { decodePacket, decodePushPull, encodePacket, encodePushPull, pushPullSize } from "./wire";

export interface SimOptions {
  seed: number;
  /** Probability that a datagram is lost (each datagram independently). */
  loss?: number;
  /** One-way delay of a datagram, uniform in [delayMin, delayMax] ms. */
  delayMin?: number;
  delayMax?: number;
  config?: Partial<MembershipConfig>;
  /** Pass every datagram and stream through the wire codec. */
  wire?: boolean;
  /** Size of each node's meta blob (stands in for the encoded node record). */
  metaBytes?: number;
  /** Called for every member event any node emits. */
  onEvent?: (observer: number, event: MemberEffect, now: number) => void;
}

export interface SimNode {
  readonly index: number;
  readonly name: string;
  readonly address: Address;
  meta: Uint8Array;
  up: boolean;
  /** Bumped at each crash/restart so events of a former life are dropped. */
  epoch: number;
  m: Membership | null;
  scheduledAt: number;
  udpPackets: number;
  udpBytes: number;
  streamBytes: number;
  streams: number;
}

const enum Kind { Timer, Datagram, Stream, Action }

interface Ev {
  t: number;
  seq: number;
  kind: Kind;
  node: number;
  epoch: number;
  from: Address | null;
  payload: unknown;
}

class EventHeap {
  private readonly a: Ev[] = [];
  get size(): number {
    return this.a.length;
  }
  push(e: Ev): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const pe = a[p] as Ev;
      if (before(pe, e)) break;
      a[i] = pe;
      i = p;
    }
    a[i] = e;
  }
  peek(): Ev | undefined {
    return this.a[0];
  }
  pop(): Ev | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (top === undefined || last === undefined || a.length === 0) return top;
    let i = 0;
    const n = a.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      let c = l;
      if (r < n && before(a[r] as Ev, a[l] as Ev)) c = r;
      if (before(last, a[c] as Ev)) break;
      a[i] = a[c] as Ev;
      i = c;
    }
    a[i] = last;
    return top;
  }
}

function before(x: Ev, y: Ev): boolean {
  return x.t < y.t || (x.t === y.t && x.seq < y.seq);
}

const SIM_PORT = 7946;
const BASE_IP = 0x0a000000;

export class Simulator {
  now = 0;
  readonly nodes: SimNode[] = [];
  /** Datagrams dropped by loss, partition, link cuts or a down receiver. */
  dropped = 0;
  delivered = 0;
  /** Events processed (for performance reporting). */
  steps = 0;
  /** Largest datagram payload any node sent. */
  maxDatagram = 0;

  private readonly rng: Rng;
  private readonly heap = new EventHeap();
  private seq = 0;
  private readonly byIp = new Map<number, SimNode>();
  private readonly loss: number;
  private readonly delayMin: number;
  private readonly delayMax: number;
  private readonly wire: boolean;
  private readonly metaBytes: number;
  /** Group id per node while partitioned; nodes in different groups cannot talk. */
  private group: Int8Array | null = null;
  private readonly cut = new Set<number>();
  private sameTimeTicks = 0;
  private lastTickKey = "";

  constructor(readonly options: SimOptions) {
    this.rng = seededRng(options.seed);
    this.loss = options.loss ?? 0;
    this.delayMin = options.delayMin ?? 1;
    this.delayMax = options.delayMax ?? 5;
    this.wire = options.wire ?? false;
    this.metaBytes = options.metaBytes ?? 40;
    if (this.delayMax < this.delayMin) throw new RangeError("delayMax < delayMin");
  }

  // ---------------------------------------------------------------- building the cluster

  /** Adds a node (not started). Names are node-0000, node-0001, …; addresses 10.0.x.y:7946. */
  addNode(name?: string): number {
    const index = this.nodes.length;
    const n: SimNode = {
      index,
      name: name ?? `node-${String(index).padStart(4, "0")}`,
      address: { ip: ((BASE_IP + index + 1) >>> 0) as Ipv4, port: SIM_PORT },
      meta: this.makeMeta(index, 0),
      up: false, epoch: 0, m: null, scheduledAt: Infinity,
      udpPackets: 0, udpBytes: 0, streamBytes: 0, streams: 0,
    };
    this.nodes.push(n);
    this.byIp.set(n.address.ip, n);
    return index;
  }

  addNodes(count: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < count; i++) out.push(this.addNode());
    return out;
  }

  /** Starts the given nodes as an already converged cluster (each knows all the others). */
  startWarm(indices: readonly number[]): void {
    const entries: PushPullEntry[] = indices.map((i) => {
      const n = this.node(i);
      return { name: n.name, address: n.address, meta: n.meta, incarnation: 1, state: "alive" as MemberState };
    });
    for (const i of indices) {
      const n = this.boot(i);
      (n.m as Membership).preload(entries, this.now);
      this.reschedule(n);
    }
  }

  /** Starts node i fresh and has it join through the given seed nodes. */
  startJoin(i: number, seeds: readonly number[]): void {
    const n = this.boot(i);
    this.apply(n, (n.m as Membership).join(seeds.map((s) => this.node(s).address), this.now));
  }

  /** Stops node i without a word (kill -9). */
  crash(i: number): void {
    const n = this.node(i);
    n.up = false;
    n.m = null;
    n.epoch++;
    n.scheduledAt = Infinity;
  }

  /** A fresh process with the same name and address, joining through `seeds`. */
  restart(i: number, seeds: readonly number[]): void {
    if (this.node(i).up) this.crash(i);
    this.startJoin(i, seeds);
  }

  /** Graceful leave; the node keeps running until its notice is out, then stops. */
  leave(i: number, stopAfter = 5_000): void {
    const n = this.node(i);
    if (n.m === null) return;
    this.apply(n, n.m.leave(this.now));
    const epoch = n.epoch;
    const deadline = this.now + stopAfter;
    const check = (): void => {
      if (n.epoch !== epoch || !n.up) return;
      if (n.m?.leaveComplete === true || this.now >= deadline) this.crash(i);
      else this.at(this.now + 100, check);
    };
    this.at(this.now + 100, check);
  }

  updateMeta(i: number, meta: Uint8Array): void {
    const n = this.node(i);
    n.meta = meta;
    if (n.m === null) return;
    n.m.updateMeta(meta, this.now);
    this.reschedule(n);
  }

  /** Splits the network: nodes in `groupA` and all others cannot exchange anything. */
  partition(groupA: Iterable<number>): void {
    const g = new Int8Array(this.nodes.length + 1024);
    for (const i of groupA) g[i] = 1;
    this.group = g;
  }

  heal(): void {
    this.group = null;
  }

  /** Drops everything sent from `from` to `to` (one direction only). */
  cutLink(from: number, to: number): void {
    this.cut.add(from * 1_000_003 + to);
  }

  restoreLink(from: number, to: number): void {
    this.cut.delete(from * 1_000_003 + to);
  }

  /** Delivers `messages` to node `to` now, as if node `from` had sent them. */
  inject(to: number, messages: readonly Message[], from: number): void {
    const n = this.node(to);
    if (n.m === null) return;
    this.apply(n, n.m.receive(this.node(from).address, messages, this.now));
  }

  /** Runs `fn` at virtual time `t`. */
  at(t: number, fn: () => void): void {
    this.push(Math.max(t, this.now), Kind.Action, -1, 0, null, fn);
  }

  // ---------------------------------------------------------------- running

  runUntil(t: number): void {
    for (;;) {
      const e = this.heap.peek();
      if (e === undefined || e.t > t) break;
      this.heap.pop();
      this.now = e.t;
      this.steps++;
      this.dispatch(e);
    }
    this.now = t;
  }

  runFor(d: number): void {
    this.runUntil(this.now + d);
  }

  // ---------------------------------------------------------------- queries

  node(i: number): SimNode {
    const n = this.nodes[i];
    if (n === undefined) throw new RangeError(`no node ${i}`);
    return n;
  }

  membership(i: number): Membership {
    const m = this.node(i).m;
    if (m === null) throw new Error(`node ${i} is down`);
    return m;
  }

  /** How node `observer` sees node `subject` (undefined if unknown or the observer is down). */
  stateAt(observer: number, subject: number): MemberState | undefined {
    return this.node(observer).m?.stateOf(this.node(subject).name);
  }

  upNodes(): number[] {
    return this.nodes.filter((n) => n.up).map((n) => n.index);
  }

  /**
   * True when every running node sees every running node alive and no stopped node alive or
   * suspect. With `incarnations`, they must also agree on each running node's incarnation.
   * With `suspectIsAlive`, a running node seen as suspect counts (it is still a member).
   */
  converged(opts: { incarnations?: boolean; suspectIsAlive?: boolean } = {}): boolean {
    const up = this.nodes.filter((n) => n.up);
    for (const o of up) {
      const m = o.m as Membership;
      for (const s of this.nodes) {
        if (s === o) continue;
        const st = m.stateOf(s.name);
        if (s.up) {
          if (st !== "alive" && !(opts.suspectIsAlive === true && st === "suspect")) return false;
          if (opts.incarnations === true && m.member(s.name)?.incarnation !== (s.m as Membership).incarnation) return false;
        } else if (st === "alive" || st === "suspect") return false;
      }
    }
    return true;
  }

  // ---------------------------------------------------------------- internals

  private makeMeta(index: number, version: number): Uint8Array {
    const b = new Uint8Array(this.metaBytes);
    for (let i = 0; i < b.length; i++) b[i] = (index * 31 + i * 7 + version) & 0xff;
    return b;
  }

  private boot(i: number): SimNode {
    const n = this.node(i);
    n.up = true;
    n.epoch++;
    n.scheduledAt = Infinity;
    const seed = Math.floor(this.rng() * 2 ** 32);
    n.m = new Membership(this.options.config ?? {}, { name: n.name, address: n.address, meta: n.meta }, seededRng(seed));
    return n;
  }

  private push(t: number, kind: Kind, node: number, epoch: number, from: Address | null, payload: unknown): void {
    this.heap.push({ t, seq: this.seq++, kind, node, epoch, from, payload });
  }

  private dispatch(e: Ev): void {
    switch (e.kind) {
      case Kind.Action:
        (e.payload as () => void)();
        return;
      case Kind.Timer: {
        const n = this.nodes[e.node] as SimNode;
        if (!n.up || n.epoch !== e.epoch || n.scheduledAt !== e.t || n.m === null) return;
        n.scheduledAt = Infinity;
        const key = `${e.node}@${e.t}`;
        if (key === this.lastTickKey) {
          if (++this.sameTimeTicks > 1000) throw new Error(`node ${n.name} ticks forever at ${e.t}`);
        } else {
          this.lastTickKey = key;
          this.sameTimeTicks = 0;
        }
        this.apply(n, n.m.tick(this.now));
        return;
      }
      case Kind.Datagram: {
        const n = this.nodes[e.node] as SimNode;
        if (!n.up || n.m === null) {
          this.dropped++;
          return;
        }
        let messages: readonly Message[];
        if (this.wire) {
          const d = decodePacket(e.payload as Uint8Array);
          if (!d.ok) throw new Error(`simulated datagram failed to decode: ${d.error}`);
          messages = d.value;
        } else {
          messages = e.payload as Message[];
        }
        this.delivered++;
        this.apply(n, n.m.receive(e.from as Address, messages, this.now));
        return;
      }
      case Kind.Stream: {
        const n = this.nodes[e.node] as SimNode;
        if (!n.up || n.m === null) return;
        let msg: PushPullMsg;
        if (this.wire) {
          const d = decodePushPull(e.payload as Uint8Array);
          if (!d.ok) throw new Error(`simulated stream failed to decode: ${d.error}`);
          msg = d.value;
        } else {
          msg = e.payload as PushPullMsg;
        }
        this.apply(n, n.m.receiveStream(e.from as Address, msg, this.now));
        return;
      }
    }
  }

  private apply(n: SimNode, effects: readonly Effect[]): void {
    for (const fx of effects) {
      switch (fx.kind) {
        case "send":
          this.sendDatagram(n, fx.to, fx.messages, fx.size);
          break;
        case "stream":
          this.sendStream(n, fx.to, fx.message);
          break;
        case "member":
          this.options.onEvent?.(n.index, fx, this.now);
          break;
      }
    }
    this.reschedule(n);
  }

  private reschedule(n: SimNode): void {
    if (!n.up || n.m === null) return;
    const d = Math.max(n.m.nextDeadline(), this.now);
    if (d < n.scheduledAt) {
      n.scheduledAt = d;
      this.push(d, Kind.Timer, n.index, n.epoch, null, null);
    }
  }

  private blocked(src: SimNode, dst: SimNode): boolean {
    if (this.group !== null && this.group[src.index] !== this.group[dst.index]) return true;
    return this.cut.size > 0 && this.cut.has(src.index * 1_000_003 + dst.index);
  }

  private delay(): number {
    return this.delayMin + this.rng() * (this.delayMax - this.delayMin);
  }

  private sendDatagram(src: SimNode, to: Address, messages: readonly Message[], size: number): void {
    let payload: unknown = messages;
    if (this.wire) {
      const bytes = encodePacket(messages);
      if (bytes.length !== size) throw new Error(`send effect says ${size} bytes, the codec made ${bytes.length}`);
      payload = bytes;
    }
    src.udpPackets++;
    src.udpBytes += size;
    if (size > this.maxDatagram) this.maxDatagram = size;
    const lost = this.rng() < this.loss;
    const delay = this.delay();
    const dst = this.byIp.get(to.ip);
    if (dst === undefined || lost || this.blocked(src, dst)) {
      this.dropped++;
      return;
    }
    this.push(this.now + delay, Kind.Datagram, dst.index, 0, src.address, payload);
  }

  private sendStream(src: SimNode, to: Address, msg: PushPullMsg): void {
    const dst = this.byIp.get(to.ip);
    // A stream to a host that is down or cut off fails at connect: no payload moves.
    if (dst === undefined || !dst.up || this.blocked(src, dst) || this.blocked(dst, src)) return;
    let payload: unknown = msg;
    let size: number;
    if (this.wire) {
      const bytes = encodePushPull(msg);
      payload = bytes;
      size = bytes.length;
    } else {
      size = pushPullSize(msg);
    }
    src.streams++;
    src.streamBytes += size;
    // Connect (a round trip) and the transfer; TCP hides loss, so streams are reliable.
    const delay = 3 * this.delay();
    this.push(this.now + delay, Kind.Stream, dst.index, 0, src.address, payload);
  }
}

// ==================================================================== measurement scenario

export interface MeasureOptions {
  nodes: number;
  seed: number;
  loss: number;
  /** Virtual duration of the whole run (ms). */
  duration: number;
  delayMin?: number;
  delayMax?: number;
  wire?: boolean;
  metaBytes?: number;
  config?: Partial<MembershipConfig>;
  /** When the newcomer joins (ms); the cluster before it is started converged. */
  joinAt?: number;
  /** When the victim crashes (ms). */
  crashAt?: number;
}

export interface Percentiles {
  p50: number;
  p99: number;
  max: number;
  count: number;
  of: number;
}

export interface Traffic {
  udpPackets: number;
  udpPayloadBytes: number;
  /** Payload plus the keyring's encryption envelope (ENVELOPE_OVERHEAD bytes) per datagram. */
  udpWireBytes: number;
  streamBytes: number;
}

export interface MeasureResult {
  options: Required<Omit<MeasureOptions, "config">> & { config: Partial<MembershipConfig> };
  /** (a) ms after the join until each running node learned of the newcomer. */
  join: Percentiles;
  /** (b) ms after the crash until the first/last running node declared the victim dead. */
  crash: { firstSuspect: number; firstDead: number; lastDead: number; declared: number; of: number };
  /**
   * (c) dead declarations about running nodes: (observer, subject) events and distinct
   * subjects; suspicion events about running nodes, and distinct (member, incarnation)
   * suspicions among them (the episodes that had to be refuted).
   */
  falseDeaths: { events: number; subjects: number; falseSuspicions: number; falseSuspicionsStarted: number };
  /** (d) per node per second, between joinAt and the end (the join and the crash included). */
  traffic: Traffic;
  /** (d) per node per second once things are quiet: from crashAt + 30 s (quietAt) to the end. */
  quietTraffic: Traffic;
  convergedAtEnd: boolean;
  virtualMs: number;
  realMs: number;
  steps: number;
}

function percentiles(values: number[], of: number): Percentiles {
  const v = [...values].sort((a, b) => a - b);
  const pick = (q: number): number => (v.length === 0 ? NaN : (v[Math.min(v.length - 1, Math.ceil(q * v.length) - 1)] as number));
  return { p50: pick(0.5), p99: pick(0.99), max: v.length === 0 ? NaN : (v[v.length - 1] as number), count: v.length, of };
}

/**
 * The benchmark scenario: N−1 nodes start converged; at joinAt a new node joins through node 0;
 * at crashAt a random node crashes; the run goes on to `duration` under the given loss.
 */
export function measure(o: MeasureOptions): MeasureResult {
  const opts = {
    nodes: o.nodes, seed: o.seed, loss: o.loss, duration: o.duration,
    delayMin: o.delayMin ?? 1, delayMax: o.delayMax ?? 5, wire: o.wire ?? true, metaBytes: o.metaBytes ?? 40,
    config: o.config ?? {}, joinAt: o.joinAt ?? 10_000, crashAt: o.crashAt ?? 20_000,
  };
  if (opts.nodes < 4) throw new RangeError("measure needs at least 4 nodes");
  if (!(opts.joinAt < opts.crashAt && opts.crashAt < opts.duration)) throw new RangeError("measure needs joinAt < crashAt < duration");
  const started = performance.now();
  const newcomer = opts.nodes - 1;
  const pick = seededRng(opts.seed ^ 0x5eed);
  const victim = 1 + randomInt(pick, opts.nodes - 2);

  const learned = new Map<number, number>();
  const deadAt = new Map<number, number>();
  let firstSuspect = NaN;
  let falseDeathEvents = 0;
  let falseSuspicions = 0;
  const falseSubjects = new Set<string>();
  const episodes = new Set<number>();
  const byName = new Map<string, number>();

  const s: Simulator = new Simulator({
    seed: opts.seed, loss: opts.loss, delayMin: opts.delayMin, delayMax: opts.delayMax,
    wire: opts.wire, metaBytes: opts.metaBytes, config: opts.config,
    onEvent: (observer, ev, now) => {
      const subject = byName.get(ev.member.name);
      if (subject === undefined) return;
      const subjectUp = s.node(subject).up;
      if (subject === newcomer && ev.change === "alive" && !learned.has(observer)) learned.set(observer, now - opts.joinAt);
      if (subject === victim && !subjectUp) {
        if (ev.change === "suspect" && Number.isNaN(firstSuspect)) firstSuspect = now - opts.crashAt;
        if (ev.change === "dead" && !deadAt.has(observer)) deadAt.set(observer, now - opts.crashAt);
      }
      if (subjectUp && ev.change === "dead") {
        falseDeathEvents++;
        falseSubjects.add(ev.member.name);
      }
      if (subjectUp && ev.change === "suspect") {
        falseSuspicions++;
        if (now >= opts.joinAt) episodes.add(subject * 2 ** 32 + ev.member.incarnation);
      }
    },
  });
  s.addNodes(opts.nodes);
  for (const n of s.nodes) byName.set(n.name, n.index);
  const initial = s.nodes.map((n) => n.index).filter((i) => i !== newcomer);
  s.startWarm(initial);

  let before: Totals = { p: 0, u: 0, st: 0 };
  let quiet: Totals = { p: NaN, u: NaN, st: NaN };
  const quietAt = quietStart(opts.crashAt);
  s.at(opts.joinAt, () => {
    before = totals(s);
    s.startJoin(newcomer, [0]);
  });
  s.at(opts.crashAt, () => s.crash(victim));
  if (quietAt < opts.duration) s.at(quietAt, () => (quiet = totals(s)));
  s.runUntil(opts.duration);

  const after = totals(s);
  const perNode = s.nodes.length;
  const observers = s.nodes.filter((n) => n.up && n.index !== newcomer).length;
  const deadTimes = [...deadAt.values()];
  return {
    options: opts,
    join: percentiles([...learned.entries()].filter(([i]) => i !== newcomer && s.node(i).up).map(([, t]) => t), observers),
    crash: {
      firstSuspect,
      firstDead: deadTimes.length ? Math.min(...deadTimes) : NaN,
      lastDead: deadTimes.length ? Math.max(...deadTimes) : NaN,
      declared: deadAt.size,
      of: s.nodes.filter((n) => n.up).length,
    },
    falseDeaths: { events: falseDeathEvents, subjects: falseSubjects.size, falseSuspicions, falseSuspicionsStarted: episodes.size },
    traffic: traffic(before, after, perNode, (opts.duration - opts.joinAt) / 1000),
    quietTraffic: traffic(quiet, after, perNode, (opts.duration - quietAt) / 1000),
    convergedAtEnd: s.converged({ suspectIsAlive: true }),
    virtualMs: opts.duration,
    realMs: performance.now() - started,
    steps: s.steps,
  };
}

/** Where the quiet traffic window of measure() starts. */
export function quietStart(crashAt: number): number {
  return crashAt + 30_000;
}

interface Totals {
  p: number;
  u: number;
  st: number;
}

function traffic(a: Totals, b: Totals, nodes: number, seconds: number): Traffic {
  return {
    udpPackets: (b.p - a.p) / nodes / seconds,
    udpPayloadBytes: (b.u - a.u) / nodes / seconds,
    udpWireBytes: (b.u - a.u + ENVELOPE_OVERHEAD * (b.p - a.p)) / nodes / seconds,
    streamBytes: (b.st - a.st) / nodes / seconds,
  };
}

function totals(s: Simulator): Totals {
  let p = 0, u = 0, st = 0;
  for (const n of s.nodes) {
    p += n.udpPackets;
    u += n.udpBytes;
    st += n.streamBytes;
  }
  return { p, u, st };
}
