// The CNI handler's types, shared by the daemon side (cni/handler.ts), the worker thread
// (cni/worker.ts), the verbs (cni/core.ts) and the DEL queue (cni/queue.ts): the request the
// shim sends over the control socket and the answer it prints, the messages between the
// handler and its worker thread, and the logger the CNI code writes to. Types only, so that
// none of those files needs to import another for its types.

import type { Subnet } from "../encap/types";

/** One CNI call as the shim forwards it: {"op":"cni", env, stdin} on the control socket. */
export interface CniRequest {
  op: "cni";
  /** The CNI_* variables (and CNI_ARGS) the runtime set for the shim. */
  env: Record<string, string>;
  /** The network configuration the runtime wrote to the shim's stdin. */
  stdin: string;
}

export interface CniResponse {
  /** 0 on success; non-zero with a spec error object on stdout otherwise. */
  exitCode: number;
  /** What the shim prints to stdout: a result or a {cniVersion, code, msg, details} error. */
  stdout: string;
}

export interface QueuedDelSummary {
  completed: number;
  failed: number;
}

/**
 * The few logger methods the CNI code uses: pino's Logger has them (the daemon passes its own),
 * and so has the worker's bridge that posts log records up to the handler. cni/ takes this
 * interface rather than importing the daemon's logger.
 */
export interface LogSink {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** What the handler starts its worker thread with (workerData). */
export interface WorkerData {
  mtu: number;
  bridge: string;
  stateDir: string;
}

/** Handler → worker. */
export type ToWorker =
  | { type: "request"; id: number; request: CniRequest; subnet: Subnet | null }
  | { type: "queued"; id: number }
  | { type: "close" };

/** Worker → handler. */
export type FromWorker =
  | { type: "ready" }
  | { type: "failed"; message: string }
  | { type: "response"; id: number; response: unknown }
  | { type: "log"; level: "debug" | "info" | "warn" | "error"; obj: object; msg: string }
  | { type: "closed" };
