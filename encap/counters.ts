// Forwarder counters live in a SharedArrayBuffer: the worker increments, the daemon reads.
// Only the worker writes, and aligned 8-byte float stores are not torn on the platforms we
// run on, so readers need no lock. Counters, not logs, on the hot path.

export enum Counter {
  /** Frames read from the TAP. */
  TapRxFrames,
  TapRxBytes,
  /** Datagrams handed to the kernel for the underlay. */
  UdpTxDatagrams,
  UdpTxBytes,
  /** Datagrams read from the underlay socket (a UDP_GRO run counts each datagram in it). */
  UdpRxDatagrams,
  /** Reads from the underlay socket: one per datagram or per UDP_GRO run (the kernel's Udp InDatagrams). */
  UdpRxReads,
  UdpRxBytes,
  /** Frames written to the TAP after decapsulation. */
  TapTxFrames,
  TapTxBytes,
  /** Forwarder wake-ups and the frames they moved (batch size = frames / batches). */
  TapReadBatches,
  UdpRecvBatches,
  /** Fast path: TCP super-frames read from the TAP and cut into segments. */
  TapRxSuperFrames,
  /** Fast path: UDP_GRO runs received (several datagrams in one entry). */
  UdpRxGroRuns,
  /** Fast path: super-frames written to the TAP after merging segments. */
  TapTxSuperFrames,
  /** Forwarder wake-ups with work, found while busy-polling (--busy-poll) or after sleeping in poll(). */
  WakeupsBusyPoll,
  WakeupsSleep,
  // Drops, by reason.
  DropRunt,
  DropMissingIFlag,
  DropReservedBits,
  DropWrongVni,
  DropUnknownVtep,
  DropSpoofedSource,
  DropUnsupportedInner,
  DropTruncated,
  DropNoRoute,
  DropGroupDestination,
  DropTapQueueFull,
  DropUdpQueueFull,
  DropSendError,
  /** Frames the kernel refused to take from us on the TAP (EIO while it is down, EINVAL). */
  DropTapWriteError,
  /** A virtio_net_hdr asked for something we cannot do (bad offsets, unsupported GSO type). */
  DropBadOffload,
}

export const COUNTER_COUNT = Object.keys(Counter).filter((k) => Number.isNaN(Number(k))).length;

/** Names used in status output and metrics (snake_case of the enum member). */
export const COUNTER_NAMES: readonly string[] = Array.from({ length: COUNTER_COUNT }, (_, i) =>
  (Counter[i] as string).replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase(),
);

export function newCounterBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(COUNTER_BUFFER_LENGTH * 8);
}

export function snapshotCounters(view: Float64Array): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < COUNTER_COUNT; i++) out[COUNTER_NAMES[i] as string] = view[i] as number;
  return out;
}

/** Sum of every drop counter. */
export function totalDrops(view: Float64Array): number {
  let sum = 0;
  for (let i = Counter.DropRunt; i < COUNTER_COUNT; i++) sum += view[i] as number;
  return sum;
}

// Beyond the named counters the buffer holds two more regions, written by the worker only:
//   batch sizes   per source (TAP, underlay): one count per bucket, then the sum of sizes;
//   peer traffic  per peer slot: frames and bytes out to the peer, frames and bytes in from it.

/** Upper bounds of the batch-size buckets (entries per read); a last bucket takes the rest. */
export const BATCH_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

export enum BatchSource {
  /** Frames (or super-frames) per TAP read. */
  Tap,
  /** Datagrams (or UDP_GRO runs) per recvmmsg. */
  Underlay,
}

/** Buckets, the overflow bucket, and the sum. */
const HISTOGRAM_WIDTH = BATCH_BUCKETS.length + 2;
const HISTOGRAM_BASE = COUNTER_COUNT;

export enum PeerCounter {
  /** Inner frames encapsulated for the peer (each segment of a cut super-frame counts). */
  TxFrames,
  TxBytes,
  /** Inner frames from the peer that passed every check. */
  RxFrames,
  RxBytes,
}

const PEER_COUNTER_WIDTH = 4;
const PEER_BASE = HISTOGRAM_BASE + 2 * HISTOGRAM_WIDTH;
/**
 * Peer slots; slot 0 is a sink for peers without a slot of their own (tables built without
 * slots, or more peers than slots) and is never reported.
 */
export const PEER_SLOTS = 1024;

const COUNTER_BUFFER_LENGTH = PEER_BASE + PEER_SLOTS * PEER_COUNTER_WIDTH;

/** A counter view of the full layout, for tests and single-threaded use. */
export function newCounterView(): Float64Array {
  return new Float64Array(COUNTER_BUFFER_LENGTH);
}

/**
 * Counts one read of `n` entries (n ≥ 1). The buckets are powers of two, so the bucket is
 * ⌈log2 n⌉: no loop, no allocation.
 */
export function countBatch(c: Float64Array, source: BatchSource, n: number): void {
  const base = HISTOGRAM_BASE + source * HISTOGRAM_WIDTH;
  const b = n <= 1 ? 0 : 32 - Math.clz32(n - 1);
  c[base + (b < BATCH_BUCKETS.length ? b : BATCH_BUCKETS.length)]! += 1;
  c[base + HISTOGRAM_WIDTH - 1]! += n;
}

export interface BatchHistogram {
  /** Cumulative counts per upper bound, the last one "+Inf" (Prometheus' le buckets). */
  buckets: { le: string; count: number }[];
  sum: number;
  count: number;
}

export function snapshotBatchHistogram(c: Float64Array, source: BatchSource): BatchHistogram {
  const base = HISTOGRAM_BASE + source * HISTOGRAM_WIDTH;
  const buckets: BatchHistogram["buckets"] = [];
  let cumulative = 0;
  for (let i = 0; i <= BATCH_BUCKETS.length; i++) {
    cumulative += c[base + i] ?? 0;
    buckets.push({ le: i < BATCH_BUCKETS.length ? String(BATCH_BUCKETS[i]) : "+Inf", count: cumulative });
  }
  return { buckets, sum: c[base + HISTOGRAM_WIDTH - 1] ?? 0, count: cumulative };
}

/** The index of a peer slot's first counter; FdbEntry.traffic holds it for the hot path. */
export function peerCounterBase(slot: number): number {
  return PEER_BASE + slot * PEER_COUNTER_WIDTH;
}

export interface PeerTraffic {
  txFrames: number;
  txBytes: number;
  rxFrames: number;
  rxBytes: number;
}

export function snapshotPeerTraffic(c: Float64Array, slot: number): PeerTraffic {
  const b = peerCounterBase(slot);
  return {
    txFrames: c[b + PeerCounter.TxFrames] ?? 0, txBytes: c[b + PeerCounter.TxBytes] ?? 0,
    rxFrames: c[b + PeerCounter.RxFrames] ?? 0, rxBytes: c[b + PeerCounter.RxBytes] ?? 0,
  };
}

export function resetPeerTraffic(c: Float64Array, slot: number): void {
  c.fill(0, peerCounterBase(slot), peerCounterBase(slot) + PEER_COUNTER_WIDTH);
}
