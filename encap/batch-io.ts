// The forwarder loop's I/O seam: everything one wake-up of the loop asks of the outside world,
// as batches over caller-owned slabs. Production runs it over the native shim
// (batch-io-native.ts: the same calls as the loop made before there was a seam); tests run it
// over queues in memory with a virtual clock (batch-io-memory.ts), without root. The loop never
// knows which one it has.
//
// Every method has the semantics of the native call it stands for (encap/native.ts): slabs are
// filled and read in place, batched calls return how many entries they moved and never throw
// for EAGAIN, a frame or datagram longer than its slot comes back with length TRUNCATED.

import type { Peer } from "./fdb";

/** Bits of BatchIo.wait's answer. */
export enum Ready {
  /** The TAP has frames to read. */
  Tap = 1,
  /** The underlay socket has datagrams to receive. */
  Underlay = 2,
  /** The wake-up was signalled: control messages are waiting. */
  Wake = 4,
  /** Found while busy-polling (no sleep was paid); only with spinUs > 0. */
  BusyPolled = 8,
}

/** The batch I/O of one forwarder: a TAP, an underlay socket to receive on, sockets to send from, a wake-up. */
export interface BatchIo {
  /** How many sockets datagrams leave from; sendUnderlay's `socket` is below this. */
  readonly sendSockets: number;

  /**
   * Waits until the TAP, the underlay socket or the wake-up is readable, at most timeoutMs.
   * With spinUs > 0 it first busy-polls for up to spinUs µs, yielding the CPU to any runnable
   * thread between polls, and only then sleeps. Returns Ready bits; 0 after a timeout.
   */
  wait(timeoutMs: number, spinUs: number): number;

  /** Resets the wake-up after wait reported Ready.Wake. */
  drainWake(): void;

  /**
   * Reads up to `max` frames from the TAP: frame i at slab[base + i*stride] (with its
   * virtio_net_hdr in front when the TAP speaks them), its length in lens[i]. Returns the count.
   */
  readTap(slab: Uint8Array, base: number, stride: number, max: number, lens: Uint32Array): number;

  /**
   * Writes frame i = slab[offs[i] .. +lens[i]) to the TAP for i < count, each behind
   * hdrs[i*hdrLen .. +hdrLen) when hdrs is given. Returns the entries consumed (fewer when the
   * TAP's queue is full); a frame the kernel refuses gets lens[i] = 0 and adds one to errors[0].
   */
  writeTap(slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, count: number, errors: Uint32Array,
    hdrs?: Uint8Array, hdrLen?: number): number;

  /**
   * Receives up to `max` entries from the underlay: entry i at slab[base + i*stride], its length
   * in lens[i], its sender in srcIps[i]:srcPorts[i]; with segSizes, the size of the equal
   * datagrams UDP_GRO coalesced into entry i (0 for a single datagram). Returns the count.
   */
  recvUnderlay(slab: Uint8Array, base: number, stride: number, max: number, lens: Uint32Array,
    srcIps: Uint32Array, srcPorts: Uint16Array, segSizes?: Uint16Array): number;

  /**
   * Sends entry i = slab[offs[i] .. +lens[i]) to dstIps[i]:dstPorts[i] for i < count from socket
   * `socket`; an entry longer than segSizes[i] > 0 leaves as datagrams of that size (UDP_SEGMENT).
   * Returns the entries consumed (fewer when the socket's queue is full); entries skipped after
   * an error add to errors[0].
   */
  sendUnderlay(socket: number, slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, dstIps: Uint32Array,
    dstPorts: Uint16Array, count: number, errors: Uint32Array, segSizes: Uint16Array): number;
}

/** Where the loop reads the time (ms, monotonic) that the busy-poll policy needs. */
export interface Clock {
  nowMs(): number;
}

/** Messages to the forwarder loop. A sender signals the wake-up after each. */
export type ToForwarder =
  | { type: "stop" }
  | { type: "peers"; generation: number; peers: readonly Peer[]; slots: readonly number[] };

/** Messages from the forwarder loop. */
export type FromForwarder =
  | { type: "ready" }
  | { type: "stopped" }
  | { type: "peers-applied"; generation: number; error?: string };

/** The loop's side of its control channel. */
export interface ControlChannel {
  /** The next queued message, undefined when none; never blocks. */
  receive(): ToForwarder | undefined;
  post(msg: FromForwarder): void;
}

/** The most entries one batched native call moves (BATCH_MAX in encap/native/vxmesh_native.c). */
export const NATIVE_BATCH_MAX = 256;
