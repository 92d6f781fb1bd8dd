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
  /** A virtio_net_hdr asked for something we cannot do (bad offsets, unsupported GSO type). */
  DropBadOffload,
}

export const COUNTER_COUNT = Object.keys(Counter).filter((k) => Number.isNaN(Number(k))).length;

/** Names used in status output and metrics (snake_case of the enum member). */
export const COUNTER_NAMES: readonly string[] = Array.from({ length: COUNTER_COUNT }, (_, i) =>
  (Counter[i] as string).replace(/([a-z0-9])([A-Z])/g, "$1_$2").toLowerCase(),
);

export function newCounterBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(COUNTER_COUNT * 8);
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
