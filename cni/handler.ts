// The CNI side of the daemon: the native shim `vxmesh-cni` forwards each CNI call (its
// environment and stdin) over the control socket as {"op":"cni", env, stdin}; the daemon
// answers with what the shim prints and its exit code.
//
// createCniHandler runs the verbs (cni/core.ts) in a worker thread of their own (cni/worker.ts):
// rtnetlink requests block the thread that sends them, deleting a veth for ~20 ms each, and
// the daemon's event loop carries the gossip timers. The worker is restarted if it dies; its
// state is on disk (the address store, the DEL queue) and in the kernel.

import { Worker } from "node:worker_threads";
import { workerScript } from "../encap/artefacts";
import type { Subnet } from "../encap/types";
import type { CniRequest, CniResponse, FromWorker, LogSink, QueuedDelSummary, ToWorker, WorkerData } from "./protocol";
import { CniError, ErrorCode, errorVersion, formatError } from "./spec";

/** How a pod's host veth is named and labelled, for tools and tests that look for it. */
export { hostVethAlias, hostVethName } from "./core";

export interface CniHandlerOptions {
  /**
   * This node's confirmed pod subnet; pods get addresses from it, the gateway is its first.
   * A function is asked at every call (gossip mode: undefined until the subnet is confirmed;
   * meanwhile ADD answers 11 and STATUS 50).
   */
  nodeSubnet: Subnet | (() => Subnet | undefined);
  /** Pod MTU: the TAP's. */
  mtu: number;
  /** The node bridge pods attach to. */
  bridge: string;
  /** Where the address store and the DEL queue live (survives restarts). */
  stateDir: string;
  /** The daemon's logger (pino's has these methods); the worker's log records come out here. */
  log: LogSink;
}

export interface CniHandler {
  handle(request: CniRequest): Promise<CniResponse>;
  /**
   * Completes the DELs the shim queued while the daemon was unreachable. Call it at start
   * before serving CNI calls, and once more right after (for DELs queued during the start).
   * A queued DEL is also completed before any later call for the same attachment.
   */
  completeQueuedDels(): Promise<QueuedDelSummary>;
  /** Waits for calls in progress, then stops the worker thread. */
  close(): Promise<void>;
}

export function isCniRequest(req: { op: string }): req is CniRequest {
  const r = req as Partial<CniRequest>;
  return r.op === "cni" && typeof r.stdin === "string" && typeof r.env === "object" && r.env !== null;
}

export function createCniHandler(options: CniHandlerOptions): CniHandler {
  if (!Number.isInteger(options.mtu) || options.mtu < 68 || options.mtu > 65535) {
    throw new Error(`CNI handler: MTU ${options.mtu} is not an integer from 68 to 65535`);
  }
  if (!/^[^/\s:]{1,15}$/.test(options.bridge)) throw new Error(`CNI handler: bridge name ${JSON.stringify(options.bridge)} is not a valid interface name`);
  return new ThreadedHandler(options);
}

class ThreadedHandler implements CniHandler {
  private worker: Worker | undefined;
  private starting: Promise<Worker> | undefined;
  private readonly pending = new Map<number, (value: unknown) => void>();
  private nextId = 1;
  private closed = false;

  constructor(private readonly opts: CniHandlerOptions) {
    // Start now, so a problem (an unwritable state dir) shows in the log at daemon start.
    this.ensure().catch(() => undefined);
  }

  private subnet(): Subnet | null {
    const s = this.opts.nodeSubnet;
    return (typeof s === "function" ? s() : s) ?? null;
  }

  private ensure(): Promise<Worker> {
    if (this.worker !== undefined) return Promise.resolve(this.worker);
    this.starting ??= new Promise<Worker>((resolve, reject) => {
      const data: WorkerData = { mtu: this.opts.mtu, bridge: this.opts.bridge, stateDir: this.opts.stateDir };
      const w = new Worker(workerScript("cni", "worker"), { workerData: data });
      let ready = false;
      w.on("message", (m: FromWorker) => {
        switch (m.type) {
          case "ready":
            ready = true;
            this.worker = w;
            this.starting = undefined;
            resolve(w);
            break;
          case "failed":
            this.starting = undefined;
            this.opts.log.error({}, `the CNI handler could not start: ${m.message}`);
            reject(new Error(m.message));
            void w.terminate();
            break;
          case "log":
            this.opts.log[m.level](m.obj, m.msg);
            break;
          case "response": {
            const done = this.pending.get(m.id);
            this.pending.delete(m.id);
            done?.(m.response);
            break;
          }
          case "closed":
            break;
        }
      });
      w.on("error", (err) => this.opts.log.error({ err }, "the CNI handler thread failed"));
      w.on("exit", (code) => {
        if (this.worker === w) this.worker = undefined;
        if (!ready) {
          this.starting = undefined;
          reject(new Error(`the CNI handler thread exited during start (${code})`));
        }
        // Calls in flight get "try again"; the next call starts a new thread.
        for (const [id, done] of this.pending) {
          this.pending.delete(id);
          done(undefined);
        }
        if (!this.closed && ready) this.opts.log.error({ code }, "the CNI handler thread exited; it restarts with the next call");
      });
    });
    return this.starting;
  }

  private async call(make: (id: number) => ToWorker): Promise<unknown> {
    const w = await this.ensure();
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      w.postMessage(make(id));
    });
  }

  async handle(request: CniRequest): Promise<CniResponse> {
    const fail = (e: CniError): CniResponse => ({ exitCode: 1, stdout: formatError(errorVersion(request.stdin), e.code, e.message, e.details) });
    if (this.closed) return fail(new CniError(ErrorCode.TryAgainLater, "the vxmesh daemon is shutting down; try again later"));
    let response: unknown;
    try {
      response = await this.call((id) => ({ type: "request", id, request: { op: "cni", env: request.env, stdin: request.stdin }, subnet: this.subnet() }));
    } catch (e) {
      return fail(new CniError(ErrorCode.TryAgainLater, "the vxmesh CNI handler is not running; try again later", (e as Error).message));
    }
    if (response === undefined) return fail(new CniError(ErrorCode.TryAgainLater, "the vxmesh CNI handler stopped during the call; try again later"));
    return response as CniResponse;
  }

  async completeQueuedDels(): Promise<QueuedDelSummary> {
    const r = (await this.call((id) => ({ type: "queued", id }))) as (QueuedDelSummary & { error?: string }) | undefined;
    if (r === undefined) throw new Error("the CNI handler thread stopped while completing queued DELs");
    if (r.error !== undefined) throw new Error(`completing queued DELs: ${r.error}`);
    return r;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const w = this.worker ?? (await this.starting?.catch(() => undefined));
    if (w === undefined) return;
    const exited = new Promise<void>((resolve) => w.once("exit", () => resolve()));
    const closedMsg = new Promise<void>((resolve) => w.on("message", (m: FromWorker) => {
      if (m.type === "closed") resolve();
    }));
    w.postMessage({ type: "close" } satisfies ToWorker);
    await Promise.race([closedMsg, exited, new Promise((r) => setTimeout(r, 10_000))]);
    await w.terminate();
    await exited;
  }
}
