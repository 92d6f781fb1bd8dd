// The forwarder thread: waits on the TAP, the underlay socket and a wake eventfd, and moves
// batches between them. It never returns to its event loop while running; control messages
// (a new table, stop) are pulled synchronously when the wake fd fires.

import { parentPort, receiveMessageOnPort, workerData } from "node:worker_threads";
import { Counter } from "./counters";
import { ForwardingTable } from "./fdb";
import { ForwarderCore } from "./forwarder-core";
import { loadNative } from "./native";
import type { ForwarderWorkerData, ToWorker } from "./forwarder";

const POLL_TIMEOUT_MS = 1000;

function main(): void {
  const port = parentPort;
  if (port === null) throw new Error("forwarder-worker must run as a worker thread");
  const data = workerData as ForwarderWorkerData;
  const native = loadNative();
  const counters = new Float64Array(data.counters);
  const initial = ForwardingTable.build(data.peers);
  if (!initial.ok) throw new Error(initial.error);
  const core = new ForwarderCore(data.core, initial.table, counters);
  const fds = Int32Array.of(data.tapFd, data.udpFd, data.wakeFd);
  const revents = new Int32Array(3);
  const sendErrors = new Uint32Array(1);

  port.postMessage({ type: "ready" });

  let running = true;
  while (running) {
    native.pollIn(fds, revents, POLL_TIMEOUT_MS);

    if (revents[2] !== 0) {
      native.eventfdDrain(data.wakeFd);
      for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
        const msg = m.message as ToWorker;
        if (msg.type === "stop") running = false;
        else if (msg.type === "peers") {
          const built = ForwardingTable.build(msg.peers);
          // The daemon validated the peers before sending; a failure here is a bug, and the
          // old table stays in force rather than forwarding on an ambiguous one.
          if (built.ok) core.table = built.table;
          port.postMessage({ type: "peers-applied", generation: msg.generation, error: built.ok ? undefined : built.error });
        }
      }
      if (!running) break;
    }

    if (revents[0] !== 0) {
      const n = native.readFrames(data.tapFd, core.tapSlab, 8, core.tapStride, core.batch, core.tapLens);
      if (n > 0) {
        const k = core.encapsulate(n);
        if (k > 0) {
          sendErrors[0] = 0;
          const sent = native.sendBatch(data.udpFd, core.tapSlab, core.sendOffs, core.sendLens,
            core.sendIps, core.sendPorts, k, sendErrors);
          countSent(counters, core.sendLens, sent, sendErrors[0] as number);
          if (sent < k) counters[Counter.DropUdpQueueFull]! += k - sent;
        }
      }
    }

    if (revents[1] !== 0) {
      const n = native.recvBatch(data.udpFd, core.udpSlab, 0, core.udpStride, core.batch,
        core.udpLens, core.udpSrcIps, core.udpSrcPorts);
      if (n > 0) {
        const k = core.decapsulate(n);
        if (k > 0) {
          const written = native.writeFrames(data.tapFd, core.udpSlab, core.writeOffs, core.writeLens, k);
          for (let i = 0; i < written; i++) {
            counters[Counter.TapTxFrames]! += 1;
            counters[Counter.TapTxBytes]! += core.writeLens[i] as number;
          }
          if (written < k) counters[Counter.DropTapQueueFull]! += k - written;
        }
      }
    }
  }
  port.postMessage({ type: "stopped" });
}

/** sendBatch consumed `sent` entries, of which `errors` were skipped after a send error. */
function countSent(counters: Float64Array, lens: Uint32Array, sent: number, errors: number): void {
  counters[Counter.UdpTxDatagrams]! += sent - errors;
  counters[Counter.DropSendError]! += errors;
  let bytes = 0;
  for (let i = 0; i < sent; i++) bytes += lens[i] as number;
  counters[Counter.UdpTxBytes]! += bytes;
}

main();
