// A TEST DOUBLE of BatchIo: the TAP and the underlay are queues in memory and time is a
// virtual clock, so the whole forwarder loop runs in a test without root, namespaces or a
// worker thread. The daemon never uses it. It allocates freely and throws for misuse (a slab
// too small for the slots asked for, a loop that would sleep with nothing left to happen);
// neither is how the native I/O behaves.
//
// What it models of the kernel, as the native calls see it:
// - the TAP: frames queued in tapIn are read one per slot (a frame longer than the slot comes
//   back TRUNCATED); writes land in tapOut, with their virtio_net_hdr when one was given;
//   tapWriteRoom entries fit per call (the rest is EAGAIN), tapDown refuses every write (EIO).
// - the underlay: datagrams queued in underlayIn are received one per entry, or, when the loop
//   asks for segment sizes and gro is on, as UDP_GRO runs (consecutive equal-size datagrams from
//   one sender, a shorter one may end a run, at most 64 and 64 KB); sends land in `sent`, an
//   entry with a segment size cut into datagrams as UDP_SEGMENT would; sendRoom entries fit per
//   call; a destination in `unreachable` fails (EHOSTUNREACH) and is skipped.
// - poll: level-triggered readiness of the two queues and the wake-up; busy-polling and
//   sleeping move the virtual clock to the next scheduled event or to the end of the window.

import { NATIVE_BATCH_MAX, Ready, type BatchIo, type Clock, type ControlChannel, type FromForwarder, type ToForwarder } from "./batch-io";
import { TRUNCATED } from "./forwarder-core";

/** A datagram as the underlay delivers it. */
export interface MemoryDatagram {
  bytes: Uint8Array;
  srcIp: number;
  srcPort: number;
}

/** A datagram as it left a send socket (a UDP_SEGMENT entry becomes several). */
export interface SentDatagram extends MemoryDatagram {
  socket: number;
  dstIp: number;
  dstPort: number;
  /** The sendmmsg entry it came from, counted over the life of the I/O. */
  entry: number;
}

/** A frame written to the TAP. */
export interface TapWrite {
  frame: Uint8Array;
  /** Its virtio_net_hdr, when the loop gave one. */
  hdr: Uint8Array | undefined;
}

/** One call of wait: when, with what, and what it found. */
export interface WaitRecord {
  atMs: number;
  timeoutMs: number;
  spinUs: number;
  /** Ready bits returned. */
  ready: number;
  /** The virtual time it returned at. */
  doneMs: number;
}

export interface MemoryIoOptions {
  /** Send sockets (one per source port); default 1. */
  sendSockets?: number;
  /** Coalesce received datagrams like UDP_GRO when the loop asks for segment sizes; default true. */
  gro?: boolean;
  /** Underlay address the sent datagrams come from, for deliverTo; default 0. */
  localIp?: number;
  /** Source port of send socket 0 (socket s uses basePort + s), for deliverTo; default 40000. */
  basePort?: number;
  /** Waits after which the double throws, so that a loop that never stops fails a test instead of hanging it; default 100,000. */
  maxWaits?: number;
}

/** UDP_GRO's limits: segments per run and bytes of a run. */
const GRO_MAX_SEGMENTS = 64;
const GRO_MAX_BYTES = 65535;

export class VirtualClock implements Clock {
  ms = 0;
  nowMs(): number {
    return this.ms;
  }
}

/** Both ends of the control channel: the test sends as the daemon would, the loop receives. */
export class MemoryControl implements ControlChannel {
  readonly inbox: ToForwarder[] = [];
  /** What the loop posted, in order. */
  readonly replies: FromForwarder[] = [];

  constructor(private readonly signal: () => void) {}

  /** The daemon's side: queue a message and signal the wake-up, as Forwarder.send does. */
  send(msg: ToForwarder): void {
    this.inbox.push(msg);
    this.signal();
  }

  receive(): ToForwarder | undefined {
    return this.inbox.shift();
  }

  post(msg: FromForwarder): void {
    this.replies.push(msg);
  }
}

interface Scheduled {
  atMs: number;
  seq: number;
  action: () => void;
}

export class MemoryBatchIo implements BatchIo {
  readonly sendSockets: number;
  readonly clock = new VirtualClock();
  readonly control: MemoryControl;
  /** Frames the kernel hands the forwarder (behind a virtio_net_hdr on the fast path). */
  readonly tapIn: Uint8Array[] = [];
  readonly tapOut: TapWrite[] = [];
  readonly underlayIn: MemoryDatagram[] = [];
  readonly sent: SentDatagram[] = [];
  readonly waits: WaitRecord[] = [];
  /** Entries one writeTap call takes before the TAP's queue is full. */
  tapWriteRoom = Infinity;
  /** The TAP is down: every write is refused. */
  tapDown = false;
  /** Entries one sendUnderlay call takes before the socket's queue is full. */
  sendRoom = Infinity;
  /** Destinations whose sends fail. */
  readonly unreachable = new Set<number>();
  private readonly gro: boolean;
  private readonly localIp: number;
  private readonly basePort: number;
  private readonly maxWaits: number;
  private wakes = 0;
  private seq = 0;
  private entries = 0;
  private readonly timeline: Scheduled[] = [];

  constructor(options: MemoryIoOptions = {}) {
    this.sendSockets = options.sendSockets ?? 1;
    this.gro = options.gro ?? true;
    this.localIp = options.localIp ?? 0;
    this.basePort = options.basePort ?? 40000;
    this.maxWaits = options.maxWaits ?? 100_000;
    this.control = new MemoryControl(() => { this.wakes++; });
  }

  /** Runs `action` when the virtual clock reaches atMs (in order of scheduling for equal times). */
  at(atMs: number, action: () => void): void {
    this.timeline.push({ atMs, seq: this.seq++, action });
    this.timeline.sort((a, b) => a.atMs - b.atMs || a.seq - b.seq);
  }

  /** Moves everything sent so far into `to`'s underlay, from this I/O's address and ports. */
  deliverTo(to: MemoryBatchIo): void {
    for (const d of this.sent.splice(0)) to.underlayIn.push({ bytes: d.bytes, srcIp: this.localIp, srcPort: this.basePort + d.socket });
  }

  wait(timeoutMs: number, spinUs: number): number {
    if (this.waits.length >= this.maxWaits) throw new Error(`MemoryBatchIo: ${this.maxWaits} waits and the loop has not stopped`);
    const atMs = this.clock.ms;
    let ready = this.runUntil(atMs);
    if (ready === 0 && spinUs > 0) ready = this.runUntil(atMs + spinUs / 1000);
    const busy = ready !== 0 && spinUs > 0;
    if (ready === 0) {
      if (this.timeline.length === 0) throw new Error("MemoryBatchIo: the loop would sleep with nothing scheduled (stop it, or schedule traffic)");
      ready = this.runUntil(this.clock.ms + timeoutMs);
    }
    const result = ready | (busy ? Ready.BusyPolled : 0);
    this.waits.push({ atMs, timeoutMs, spinUs, ready: result, doneMs: this.clock.ms });
    return result;
  }

  drainWake(): void {
    this.wakes = 0;
  }

  readTap(slab: Uint8Array, base: number, stride: number, max: number, lens: Uint32Array): number {
    const n = Math.min(max, NATIVE_BATCH_MAX, this.tapIn.length);
    checkSlots(slab, base, stride, Math.min(max, NATIVE_BATCH_MAX));
    for (let i = 0; i < n; i++) {
      const f = this.tapIn.shift() as Uint8Array;
      slab.set(f.subarray(0, stride), base + i * stride);
      lens[i] = f.length > stride ? TRUNCATED : f.length;
    }
    return n;
  }

  writeTap(slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, count: number, errors: Uint32Array,
    hdrs?: Uint8Array, hdrLen?: number): number {
    const n = Math.min(count, this.tapWriteRoom);
    const h = hdrs === undefined ? 0 : hdrLen ?? 0;
    for (let i = 0; i < n; i++) {
      if (this.tapDown) {
        lens[i] = 0;
        errors[0] = (errors[0] as number) + 1;
        continue;
      }
      const off = offs[i] as number;
      this.tapOut.push({ frame: slab.slice(off, off + (lens[i] as number)), hdr: h === 0 ? undefined : hdrs?.slice(i * h, (i + 1) * h) });
    }
    return n;
  }

  recvUnderlay(slab: Uint8Array, base: number, stride: number, max: number, lens: Uint32Array,
    srcIps: Uint32Array, srcPorts: Uint16Array, segSizes?: Uint16Array): number {
    const limit = Math.min(max, NATIVE_BATCH_MAX);
    checkSlots(slab, base, stride, limit);
    let n = 0;
    for (; n < limit && this.underlayIn.length > 0; n++) {
      const first = this.underlayIn.shift() as MemoryDatagram;
      const slot = base + n * stride;
      srcIps[n] = first.srcIp;
      srcPorts[n] = first.srcPort;
      if (segSizes !== undefined) segSizes[n] = 0;
      slab.set(first.bytes.subarray(0, stride), slot);
      if (first.bytes.length > stride) {
        lens[n] = TRUNCATED;
        continue;
      }
      const len = segSizes !== undefined && this.gro ? this.coalesce(first, slab, slot, stride) : first.bytes.length;
      lens[n] = len;
      if (segSizes !== undefined && len > first.bytes.length) segSizes[n] = first.bytes.length;
    }
    return n;
  }

  /** Appends the datagrams UDP_GRO would merge with `first` (already at slab[slot]); returns the run's length. */
  private coalesce(first: MemoryDatagram, slab: Uint8Array, slot: number, stride: number): number {
    const size = first.bytes.length;
    let len = size;
    for (let k = 1; k < GRO_MAX_SEGMENTS && size > 0; k++) {
      const next = this.underlayIn[0];
      if (next === undefined || next.srcIp !== first.srcIp || next.srcPort !== first.srcPort) break;
      const l = next.bytes.length;
      if (l === 0 || l > size || len + l > Math.min(stride, GRO_MAX_BYTES)) break;
      slab.set(next.bytes, slot + len);
      len += l;
      this.underlayIn.shift();
      if (l < size) break;
    }
    return len;
  }

  sendUnderlay(socket: number, slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, dstIps: Uint32Array,
    dstPorts: Uint16Array, count: number, errors: Uint32Array, segSizes: Uint16Array): number {
    if (socket < 0 || socket >= this.sendSockets) throw new Error(`MemoryBatchIo: no send socket ${socket}`);
    const n = Math.min(count, NATIVE_BATCH_MAX, this.sendRoom);
    for (let i = 0; i < n; i++) {
      const entry = this.entries++;
      const dstIp = dstIps[i] as number;
      if (this.unreachable.has(dstIp)) {
        errors[0] = (errors[0] as number) + 1;
        continue;
      }
      const off = offs[i] as number;
      const len = lens[i] as number;
      const seg = (segSizes[i] as number) > 0 && len > (segSizes[i] as number) ? segSizes[i] as number : len;
      for (let o = 0; o < len; o += seg) {
        this.sent.push({ socket, dstIp, dstPort: dstPorts[i] as number, entry, srcIp: this.localIp, srcPort: this.basePort + socket,
          bytes: slab.slice(off + o, off + Math.min(len, o + seg)) });
      }
    }
    return n;
  }

  /** Runs the scheduled actions due by untilMs until something is ready; the clock ends at the ready moment or untilMs. */
  private runUntil(untilMs: number): number {
    for (;;) {
      const ready = this.readiness();
      if (ready !== 0) return ready;
      const next = this.timeline[0];
      if (next === undefined || next.atMs > untilMs) break;
      this.timeline.shift();
      this.clock.ms = Math.max(this.clock.ms, next.atMs);
      next.action();
    }
    this.clock.ms = Math.max(this.clock.ms, untilMs);
    return 0;
  }

  private readiness(): number {
    return (this.tapIn.length > 0 ? Ready.Tap : 0) | (this.underlayIn.length > 0 ? Ready.Underlay : 0) | (this.wakes > 0 ? Ready.Wake : 0);
  }
}

/** The native shim refuses slots that run past the slab; so does the double, loudly. */
function checkSlots(slab: Uint8Array, base: number, stride: number, n: number): void {
  if (base + n * stride > slab.length) throw new Error(`MemoryBatchIo: ${n} slots of ${stride} bytes from ${base} run past a slab of ${slab.length}`);
}
