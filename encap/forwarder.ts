// The daemon's handle on the forwarder thread.

import { Worker } from "node:worker_threads";
import { workerScript } from "./artefacts";
import {
  BatchSource, newCounterBuffer, resetPeerTraffic, snapshotBatchHistogram, snapshotCounters, snapshotPeerTraffic,
  type BatchHistogram, type PeerTraffic,
} from "./counters";
import { ForwardingTable, type Peer } from "./fdb";
import { PeerSlots } from "./peer-slots";
import type { ForwarderCoreOptions } from "./forwarder-core";
import type { FromForwarder, ToForwarder } from "./batch-io";
import type { NativeIoFds } from "./batch-io-native";
import type { ForwarderLoopOptions } from "./forwarder-loop";
import { loadNative } from "./native";
import type { OffloadSettings } from "./offload-core";

/** What the forwarder thread starts with: its descriptors (one send socket per core.sourcePorts), the loop's settings, the counters. */
export interface ForwarderWorkerData extends NativeIoFds, ForwarderLoopOptions {
  counters: SharedArrayBuffer;
}

export interface ForwarderOptions {
  tapFd: number;
  udpFd: number;
  sendFds: readonly number[];
  core: ForwarderCoreOptions;
  offload?: OffloadSettings;
  /** µs to keep polling without sleeping after traffic (default 0: sleep at once). */
  busyPollUs?: number;
  peers: readonly Peer[];
}

export class Forwarder {
  private generation = 0;
  private readonly pending = new Map<number, (error?: string) => void>();
  private exited = false;
  private stopping = false;
  /** Names in the table the thread uses, and in tables sent but not yet acknowledged. */
  private appliedNames: ReadonlySet<string>;
  private readonly sentNames = new Map<number, ReadonlySet<string>>();

  private constructor(
    private readonly worker: Worker,
    private readonly wakeFd: number,
    private readonly counterView: Float64Array,
    private readonly slots: PeerSlots,
    initial: readonly Peer[],
  ) {
    this.appliedNames = new Set(initial.map((p) => p.name));
    worker.on("message", (msg: FromForwarder) => {
      if (msg.type === "peers-applied") {
        const names = this.sentNames.get(msg.generation);
        if (msg.error === undefined && names !== undefined) this.appliedNames = names;
        this.sentNames.delete(msg.generation);
        this.pending.get(msg.generation)?.(msg.error);
        this.pending.delete(msg.generation);
      }
    });
  }

  /** Starts the forwarder thread; resolves once it is polling. */
  static async start(options: ForwarderOptions): Promise<Forwarder> {
    const built = ForwardingTable.build(options.peers);
    if (!built.ok) throw new Error(built.error);
    const native = loadNative();
    const wakeFd = native.eventfdOpen();
    const counters = newCounterBuffer();
    const slots = new PeerSlots();
    const data: ForwarderWorkerData = {
      tapFd: options.tapFd, udpFd: options.udpFd, sendFds: options.sendFds, wakeFd, counters, core: options.core,
      offload: options.offload, busyPollUs: options.busyPollUs ?? 0, peers: options.peers, slots: slots.assign(options.peers.map((p) => p.name), new Set()).slots,
    };
    const worker = new Worker(workerScript("encap", "forwarder-worker"), { workerData: data });
    const forwarder = new Forwarder(worker, wakeFd, new Float64Array(counters), slots, options.peers);
    await new Promise<void>((resolve, reject) => {
      const onMessage = (msg: FromForwarder): void => {
        if (msg.type === "ready") { cleanup(); resolve(); }
      };
      const onError = (err: Error): void => { cleanup(); reject(err); };
      const onExit = (code: number): void => { cleanup(); reject(new Error(`forwarder thread exited with code ${code} before it started`)); };
      const cleanup = (): void => {
        worker.off("message", onMessage);
        worker.off("error", onError);
        worker.off("exit", onExit);
      };
      worker.on("message", onMessage);
      worker.on("error", onError);
      worker.on("exit", onExit);
    });
    worker.on("exit", () => { forwarder.exited = true; });
    return forwarder;
  }

  /** Swaps in a new forwarding table; resolves when the thread uses it. */
  setPeers(peers: readonly Peer[]): Promise<void> {
    const built = ForwardingTable.build(peers);
    if (!built.ok) return Promise.reject(new Error(built.error));
    const generation = ++this.generation;
    const inUse = new Set(this.appliedNames);
    for (const names of this.sentNames.values()) for (const n of names) inUse.add(n);
    const { slots, reset } = this.slots.assign(peers.map((p) => p.name), inUse);
    for (const slot of reset) resetPeerTraffic(this.counterView, slot);
    this.sentNames.set(generation, new Set(peers.map((p) => p.name)));
    return new Promise((resolve, reject) => {
      this.pending.set(generation, (error) => (error === undefined ? resolve() : reject(new Error(error))));
      this.send({ type: "peers", generation, peers, slots });
    });
  }

  counters(): Record<string, number> {
    return snapshotCounters(this.counterView);
  }

  /** Frames and bytes to and from a peer, by name; undefined for a peer without a slot. */
  peerTraffic(name: string): PeerTraffic | undefined {
    const slot = this.slots.slotOf(name);
    return slot === undefined ? undefined : snapshotPeerTraffic(this.counterView, slot);
  }

  batchSizes(): { tap: BatchHistogram; underlay: BatchHistogram } {
    return { tap: snapshotBatchHistogram(this.counterView, BatchSource.Tap), underlay: snapshotBatchHistogram(this.counterView, BatchSource.Underlay) };
  }

  get counterArray(): Float64Array {
    return this.counterView;
  }

  /** Calls back once if the thread dies without being asked to stop. */
  onFailure(callback: (err: Error) => void): void {
    this.worker.once("error", callback);
    this.worker.once("exit", (code) => {
      if (!this.stopping) callback(new Error(`forwarder thread exited with code ${code}`));
    });
  }

  /** Stops the thread; the TAP and socket stay open (the caller owns them). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (!this.exited) {
      const exited = new Promise<void>((resolve) => this.worker.once("exit", () => resolve()));
      this.send({ type: "stop" });
      await exited;
    }
    loadNative().close(this.wakeFd);
  }

  private send(msg: ToForwarder): void {
    this.worker.postMessage(msg);
    loadNative().eventfdSignal(this.wakeFd);
  }
}
