// The CNI handler's thread (started by createCniHandler in cni/handler.ts): runs CniCore, so
// that rtnetlink requests, which block the thread sending them, never stall the daemon's event
// loop. Messages (their types are in cni/protocol.ts): {type:"request", id, request, subnet} →
// {type:"response", id, response}; {type:"queued", id} → {type:"response", id, response:
// QueuedDelSummary}; {type:"close"} → {type:"closed"}; log records go up as
// {type:"log", level, obj, msg}.

import { parentPort, workerData } from "node:worker_threads";
import { CniCore } from "./core";
import type { FromWorker, LogSink, ToWorker, WorkerData } from "./protocol";

/** Log fields as plain data (errors become {message, code, stack}). */
function plain(obj: object): object {
  return JSON.parse(JSON.stringify(obj, (_k, v: unknown) => {
    if (v instanceof Error) return { message: v.message, code: (v as NodeJS.ErrnoException).code, stack: v.stack };
    return v;
  })) as object;
}

function main(): void {
  const port = parentPort;
  if (port === null) throw new Error("cni/worker.js runs as a worker thread");
  const post = (m: FromWorker): void => port.postMessage(m);
  const sink = (level: "debug" | "info" | "warn" | "error") => (obj: object, msg: string): void => post({ type: "log", level, obj: plain(obj), msg });
  const log: LogSink = { debug: sink("debug"), info: sink("info"), warn: sink("warn"), error: sink("error") };
  let core: CniCore;
  try {
    core = new CniCore({ ...(workerData as WorkerData), log });
  } catch (e) {
    post({ type: "failed", message: (e as Error).message });
    return;
  }
  port.on("message", (m: ToWorker) => {
    switch (m.type) {
      case "request":
        void core.handle(m.request, m.subnet ?? undefined).then((response) => post({ type: "response", id: m.id, response }));
        break;
      case "queued":
        void core.completeQueuedDels().then((response) => post({ type: "response", id: m.id, response }),
          (e: unknown) => post({ type: "response", id: m.id, response: { completed: 0, failed: -1, error: (e as Error).message } }));
        break;
      case "close":
        void core.close().then(() => post({ type: "closed" }));
        break;
    }
  });
  post({ type: "ready" });
}

main();
