// The forwarder thread: waits on the TAP, the underlay socket and a wake eventfd, and moves
// batches between them. It never returns to its event loop while running; control messages
// (a new table, stop) are pulled synchronously when the wake fd fires.

import { parentPort, receiveMessageOnPort, workerData, type MessagePort } from "node:worker_threads";
import { Counter } from "./counters";
import { ForwardingTable } from "./fdb";
import { ForwarderCore, type SendQueue } from "./forwarder-core";
import { loadNative, type NativeShim } from "./native";
import { OffloadCore } from "./offload-core";
import { VNET_HDR_LEN } from "./offload";
import { SpinPolicy } from "./spin-policy";
import type { ForwarderWorkerData, ToWorker } from "./forwarder";

const POLL_TIMEOUT_MS = 1000;

/** One direction-pair of work per wake; both cores implement it. */
interface Pump {
  table: ForwardingTable;
  fromTap(): void;
  fromUnderlay(): void;
}

function main(): void {
  const port = parentPort;
  if (port === null) throw new Error("forwarder-worker must run as a worker thread");
  const data = workerData as ForwarderWorkerData;
  const native = loadNative();
  const counters = new Float64Array(data.counters);
  const initial = ForwardingTable.build(data.peers, data.slots);
  if (!initial.ok) throw new Error(initial.error);
  if (data.sendFds.length !== Math.max(1, data.core.sourcePorts)) throw new Error("one send socket per source port is needed");

  const pump = data.offload
    ? offloadPump(native, data, new OffloadCore({ ...data.core, tapBatch: data.offload.tapBatch, rxBatch: data.offload.rxBatch },
      initial.table, counters, native.checksumMany), counters)
    : plainPump(native, data, new ForwarderCore(data.core, initial.table, counters), counters);

  const fds = Int32Array.of(data.tapFd, data.udpFd, data.wakeFd);
  const revents = new Int32Array(3);
  port.postMessage({ type: "ready" });

  // Busy-polling starts after a wake with traffic and lasts until spinUs pass without any.
  const spin = new SpinPolicy(data.busyPollUs);
  let spinUs = 0;
  while (true) {
    const ready = native.pollIn(fds, revents, POLL_TIMEOUT_MS, spinUs);
    if (revents[2] !== 0) {
      native.eventfdDrain(data.wakeFd);
      if (!handleMessages(port, pump)) break;
    }
    const traffic = revents[0] !== 0 || revents[1] !== 0;
    spinUs = traffic ? spin.afterTraffic(performance.now()) : 0;
    if (!traffic) continue;
    counters[ready < 0 ? Counter.WakeupsBusyPoll : Counter.WakeupsSleep]! += 1;
    if (revents[0] !== 0) pump.fromTap();
    if (revents[1] !== 0) pump.fromUnderlay();
  }
  port.postMessage({ type: "stopped" });
}

/** Applies queued control messages; false when asked to stop. */
function handleMessages(port: MessagePort, pump: Pump): boolean {
  for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
    const msg = m.message as ToWorker;
    if (msg.type === "stop") return false;
    if (msg.type === "peers") {
      const built = ForwardingTable.build(msg.peers, msg.slots);
      // The daemon validated the peers before sending; a failure here is a bug, and the
      // old table stays in force rather than forwarding on an ambiguous one.
      if (built.ok) pump.table = built.table;
      port.postMessage({ type: "peers-applied", generation: msg.generation, error: built.ok ? undefined : built.error });
    }
  }
  return true;
}

function plainPump(native: NativeShim, data: ForwarderWorkerData, core: ForwarderCore, counters: Float64Array): Pump {
  const sendErrors = new Uint32Array(1);
  const tapErrors = new Uint32Array(1);
  return {
    get table() { return core.table; },
    set table(t: ForwardingTable) { core.table = t; },
    fromTap() {
      const n = native.readFrames(data.tapFd, core.tapSlab, 8, core.tapStride, core.batch, core.tapLens);
      if (n === 0 || core.encapsulate(n) === 0) return;
      sendAll(native, data.sendFds, core.tapSlab, core.sendQueues, sendErrors, counters);
    },
    fromUnderlay() {
      const n = native.recvBatch(data.udpFd, core.udpSlab, 0, core.udpStride, core.batch, core.udpLens, core.udpSrcIps, core.udpSrcPorts);
      if (n === 0) return;
      const k = core.decapsulate(n);
      if (k === 0) return;
      writeToTap(native, data.tapFd, core.udpSlab, core.writeOffs, core.writeLens, k, undefined, tapErrors, counters);
    },
  };
}

function offloadPump(native: NativeShim, data: ForwarderWorkerData, core: OffloadCore, counters: Float64Array): Pump {
  const sendErrors = new Uint32Array(1);
  const tapErrors = new Uint32Array(1);
  return {
    get table() { return core.table; },
    set table(t: ForwardingTable) { core.table = t; },
    fromTap() {
      const n = native.readFrames(data.tapFd, core.slab, core.tapBase, core.tapStride, core.tapBatch, core.tapLens);
      if (n === 0 || core.encapsulate(n) === 0) return;
      sendAll(native, data.sendFds, core.slab, core.sendQueues, sendErrors, counters);
    },
    fromUnderlay() {
      const n = native.recvBatch(data.udpFd, core.slab, core.rxBase, core.rxStride, core.rxBatch,
        core.rxLens, core.rxSrcIps, core.rxSrcPorts, core.rxSegSizes);
      if (n === 0) return;
      const k = core.decapsulate(n);
      writeToTap(native, data.tapFd, core.slab, core.writeOffs, core.writeLens, k, core.writeHdrs, tapErrors, counters);
    },
  };
}

/** Sends each queue from its own socket. */
function sendAll(native: NativeShim, fds: readonly number[], slab: Uint8Array, queues: readonly SendQueue[],
  errors: Uint32Array, counters: Float64Array): void {
  for (let q = 0; q < queues.length; q++) sendQueue(native, fds[q] as number, slab, queues[q] as SendQueue, errors, counters);
}

/** Sends one queue; counts wire datagrams (a UDP_SEGMENT entry is several). */
function sendQueue(native: NativeShim, fd: number, slab: Uint8Array, queue: SendQueue, errors: Uint32Array, counters: Float64Array): void {
  if (queue.count === 0) return;
  errors[0] = 0;
  const consumed = native.sendBatch(fd, slab, queue.offs, queue.lens, queue.ips, queue.ports, queue.count, errors, queue.segSizes);
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
function writeToTap(native: NativeShim, fd: number, slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, count: number,
  hdrs: Uint8Array | undefined, errors: Uint32Array, counters: Float64Array): void {
  if (count === 0) return;
  errors[0] = 0;
  const consumed = native.writeFrames(fd, slab, offs, lens, count, errors, hdrs, hdrs === undefined ? undefined : VNET_HDR_LEN);
  const refused = errors[0] as number;
  let bytes = 0;
  for (let i = 0; i < consumed; i++) bytes += lens[i] as number;
  counters[Counter.TapTxFrames]! += consumed - refused;
  counters[Counter.TapTxBytes]! += bytes;
  counters[Counter.DropTapWriteError]! += refused;
  counters[Counter.DropTapQueueFull]! += count - consumed;
}

main();
