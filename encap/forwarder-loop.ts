// The forwarder loop: waits on the TAP, the underlay socket and the wake-up, and moves batches
// between them through a BatchIo (batch-io.ts). It never returns to its event loop while
// running; control messages (a new table, stop) are pulled synchronously when the wake-up fires.
// The worker thread (forwarder-worker.ts) runs it over the native shim; tests run it over
// queues in memory (batch-io-memory.ts).
//
// Hot path: batches, no allocation per packet, counters rather than logs; nothing here throws
// once the loop runs (the BatchIo throws only for a vanished descriptor, which ends the thread).

import { Ready, type BatchIo, type Clock, type ControlChannel, type ToForwarder } from "./batch-io";
import type { SumManyFn } from "./checksum";
import { Counter } from "./counters";
import { ForwardingTable, type Peer } from "./fdb";
import { ForwarderCore, type ForwarderCoreOptions, type SendQueue } from "./forwarder-core";
import { OffloadCore, type OffloadSettings } from "./offload-core";
import { VNET_HDR_LEN } from "./offload";
import { SpinPolicy } from "./spin-policy";

/** How long one sleep in wait lasts at most; nothing depends on it but how often an idle loop turns. */
export const POLL_TIMEOUT_MS = 1000;

export interface ForwarderLoopOptions {
  core: ForwarderCoreOptions;
  /** Present when the TAP speaks virtio-net headers with TSO and the socket has UDP_GRO. */
  offload: OffloadSettings | undefined;
  /** µs to keep polling without sleeping after traffic; 0 sleeps at once. */
  busyPollUs: number;
  peers: readonly Peer[];
  /** Traffic counter slot of each of `peers`. */
  slots: readonly number[];
}

/** What the loop runs against. */
export interface ForwarderLoopEnv {
  io: BatchIo;
  control: ControlChannel;
  clock: Clock;
  /** The counter view (encap/counters.ts) the loop counts into. */
  counters: Float64Array;
  /** Sums many checksum spans in one call (the native shim's checksumMany in production). */
  sumMany: SumManyFn;
}

/** One direction-pair of work per wake; both cores implement it. */
interface Pump {
  table: ForwardingTable;
  fromTap(): void;
  fromUnderlay(): void;
}

export class ForwarderLoop {
  private readonly io: BatchIo;
  private readonly control: ControlChannel;
  private readonly clock: Clock;
  private readonly counters: Float64Array;
  private readonly pump: Pump;
  // Busy-polling starts after a wake with traffic and lasts until spinUs pass without any.
  private readonly spin: SpinPolicy;
  private spinUs = 0;

  /** Builds the first table and the slabs; throws for a table or socket count that cannot work. */
  constructor(options: ForwarderLoopOptions, env: ForwarderLoopEnv) {
    this.io = env.io;
    this.control = env.control;
    this.clock = env.clock;
    this.counters = env.counters;
    const initial = ForwardingTable.build(options.peers, options.slots);
    if (!initial.ok) throw new Error(initial.error);
    if (env.io.sendSockets !== Math.max(1, options.core.sourcePorts)) throw new Error("one send socket per source port is needed");
    const c = env.counters;
    this.pump = options.offload
      ? offloadPump(env.io, new OffloadCore({ ...options.core, tapBatch: options.offload.tapBatch, rxBatch: options.offload.rxBatch },
        initial.table, c, env.sumMany), c)
      : plainPump(env.io, new ForwarderCore(options.core, initial.table, c), c);
    this.spin = new SpinPolicy(options.busyPollUs);
  }

  /** Says it is ready, then runs wake-ups until told to stop, and says so. */
  run(): void {
    this.control.post({ type: "ready" });
    while (this.wake()) { /* one wake-up per turn */ }
    this.control.post({ type: "stopped" });
  }

  /** One wake-up: waits, applies control messages, moves what the TAP and underlay hold. False once told to stop. */
  wake(): boolean {
    const ready = this.io.wait(POLL_TIMEOUT_MS, this.spinUs);
    if ((ready & Ready.Wake) !== 0) {
      this.io.drainWake();
      if (!this.applyControl()) return false;
    }
    const traffic = (ready & (Ready.Tap | Ready.Underlay)) !== 0;
    this.spinUs = traffic ? this.spin.afterTraffic(this.clock.nowMs()) : 0;
    if (!traffic) return true;
    this.counters[(ready & Ready.BusyPolled) !== 0 ? Counter.WakeupsBusyPoll : Counter.WakeupsSleep]! += 1;
    if ((ready & Ready.Tap) !== 0) this.pump.fromTap();
    if ((ready & Ready.Underlay) !== 0) this.pump.fromUnderlay();
    return true;
  }

  /** The µs the next wait busy-polls before it sleeps. */
  get nextSpinUs(): number {
    return this.spinUs;
  }

  /** Applies queued control messages; false when asked to stop. */
  private applyControl(): boolean {
    for (let msg = this.control.receive(); msg !== undefined; msg = this.control.receive()) {
      if (msg.type === "stop") return false;
      if (msg.type === "peers") this.applyPeers(msg);
    }
    return true;
  }

  private applyPeers(msg: Extract<ToForwarder, { type: "peers" }>): void {
    const built = ForwardingTable.build(msg.peers, msg.slots);
    // The daemon validated the peers before sending; a failure here is a bug, and the
    // old table stays in force rather than forwarding on an ambiguous one.
    if (built.ok) this.pump.table = built.table;
    this.control.post({ type: "peers-applied", generation: msg.generation, error: built.ok ? undefined : built.error });
  }
}

function plainPump(io: BatchIo, core: ForwarderCore, counters: Float64Array): Pump {
  const sendErrors = new Uint32Array(1);
  const tapErrors = new Uint32Array(1);
  return {
    get table() { return core.table; },
    set table(t: ForwardingTable) { core.table = t; },
    fromTap() {
      const n = io.readTap(core.tapSlab, 8, core.tapStride, core.batch, core.tapLens);
      if (n === 0 || core.encapsulate(n) === 0) return;
      sendAll(io, core.tapSlab, core.sendQueues, sendErrors, counters);
    },
    fromUnderlay() {
      const n = io.recvUnderlay(core.udpSlab, 0, core.udpStride, core.batch, core.udpLens, core.udpSrcIps, core.udpSrcPorts);
      if (n === 0) return;
      const k = core.decapsulate(n);
      if (k === 0) return;
      writeToTap(io, core.udpSlab, core.writeOffs, core.writeLens, k, undefined, tapErrors, counters);
    },
  };
}

function offloadPump(io: BatchIo, core: OffloadCore, counters: Float64Array): Pump {
  const sendErrors = new Uint32Array(1);
  const tapErrors = new Uint32Array(1);
  return {
    get table() { return core.table; },
    set table(t: ForwardingTable) { core.table = t; },
    fromTap() {
      const n = io.readTap(core.slab, core.tapBase, core.tapStride, core.tapBatch, core.tapLens);
      if (n === 0 || core.encapsulate(n) === 0) return;
      sendAll(io, core.slab, core.sendQueues, sendErrors, counters);
    },
    fromUnderlay() {
      const n = io.recvUnderlay(core.slab, core.rxBase, core.rxStride, core.rxBatch,
        core.rxLens, core.rxSrcIps, core.rxSrcPorts, core.rxSegSizes);
      if (n === 0) return;
      const k = core.decapsulate(n);
      writeToTap(io, core.slab, core.writeOffs, core.writeLens, k, core.writeHdrs, tapErrors, counters);
    },
  };
}

/** Sends each queue from its own socket. */
function sendAll(io: BatchIo, slab: Uint8Array, queues: readonly SendQueue[], errors: Uint32Array, counters: Float64Array): void {
  for (let q = 0; q < queues.length; q++) sendQueue(io, q, slab, queues[q] as SendQueue, errors, counters);
}

/** Sends one queue; counts wire datagrams (a UDP_SEGMENT entry is several). */
function sendQueue(io: BatchIo, socket: number, slab: Uint8Array, queue: SendQueue, errors: Uint32Array, counters: Float64Array): void {
  if (queue.count === 0) return;
  errors[0] = 0;
  const consumed = io.sendUnderlay(socket, slab, queue.offs, queue.lens, queue.ips, queue.ports, queue.count, errors, queue.segSizes);
  let datagrams = 0;
  let bytes = 0;
  for (let i = 0; i < consumed; i++) {
    const len = queue.lens[i] as number;
    const seg = queue.segSizes[i] as number;
    datagrams += seg > 0 ? Math.ceil(len / seg) : 1;
    bytes += len;
  }
  const failed = errors[0] as number;
  counters[Counter.UdpTxDatagrams]! += datagrams - failed;
  counters[Counter.UdpTxBytes]! += bytes;
  counters[Counter.DropSendError]! += failed;
  if (consumed < queue.count) counters[Counter.DropUdpQueueFull]! += queue.count - consumed;
}

/**
 * Writes `count` decapsulated frames to the TAP (with their virtio_net_hdrs on the fast path)
 * and counts what was written, refused and left behind by a full queue.
 */
function writeToTap(io: BatchIo, slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, count: number,
  hdrs: Uint8Array | undefined, errors: Uint32Array, counters: Float64Array): void {
  if (count === 0) return;
  errors[0] = 0;
  const consumed = io.writeTap(slab, offs, lens, count, errors, hdrs, hdrs === undefined ? undefined : VNET_HDR_LEN);
  const refused = errors[0] as number;
  let bytes = 0;
  for (let i = 0; i < consumed; i++) bytes += lens[i] as number;
  counters[Counter.TapTxFrames]! += consumed - refused;
  counters[Counter.TapTxBytes]! += bytes;
  counters[Counter.DropTapWriteError]! += refused;
  counters[Counter.DropTapQueueFull]! += count - consumed;
}
