// The forwarder thread's entry: builds the native batch I/O over the descriptors the daemon
// handed over and runs the forwarder loop (forwarder-loop.ts) on it until told to stop.

import { parentPort, workerData } from "node:worker_threads";
import { NativeBatchIo, PortControl, performanceClock } from "./batch-io-native";
import { ForwarderLoop } from "./forwarder-loop";
import { loadNative } from "./native";
import type { ForwarderWorkerData } from "./forwarder";

function main(): void {
  const port = parentPort;
  if (port === null) throw new Error("forwarder-worker must run as a worker thread");
  const data = workerData as ForwarderWorkerData;
  const native = loadNative();
  const loop = new ForwarderLoop(
    { core: data.core, offload: data.offload, busyPollUs: data.busyPollUs, peers: data.peers, slots: data.slots },
    { io: new NativeBatchIo(native, data), control: new PortControl(port), clock: performanceClock,
      counters: new Float64Array(data.counters), sumMany: native.checksumMany },
  );
  loop.run();
}

main();
