// The forwarding decisions of one batch, over preallocated slabs; no I/O, no allocation per
// packet. The worker fills the slabs through the native shim and hands the results back to it.
//
// TAP → underlay: frame i is read at tapSlab[i*tapStride + VXLAN_HEADER_LEN], leaving headroom
// so the VXLAN header is written in place in front of it; the datagram is then
// tapSlab[i*tapStride .. +8+len).
// Underlay → TAP: datagram i is received at udpSlab[i*udpStride]; after the checks, the inner
// frame is written to the TAP straight from udpSlab[i*udpStride + 8].

import { BatchSource, Counter, PeerCounter, countBatch } from "./counters";
import type { FdbEntry, ForwardingTable } from "./fdb";
import { ETH_HEADER_LEN, ETHERTYPE_IPV4, MIN_IPV4_FRAME, dstMac, etherType, flowHash, ipv4Src, isGroupDestination } from "./frame";
import type { Vni } from "./types";
import { VXLAN_HEADER_LEN, VxlanVerdict, checkVxlan, writeVxlanHeader } from "./vxlan";

export interface ForwarderCoreOptions {
  vni: Vni;
  /** Destination UDP port of the datagrams we send. */
  port: number;
  /** MTU of the TAP: the largest inner IP packet. */
  mtu: number;
  /** Frames per batch. */
  batch: number;
  /**
   * Number of underlay sockets datagrams leave from, each with its own source port; a flow
   * always uses the same one. This is how the outer source port carries the inner flow's
   * entropy for ECMP (a socket cannot choose a source port per datagram).
   */
  sourcePorts: number;
}

/** Datagrams bound for one source socket, ready for a sendmmsg. */
export interface SendQueue {
  readonly offs: Uint32Array;
  readonly lens: Uint32Array;
  readonly ips: Uint32Array;
  readonly ports: Uint16Array;
  /** Per entry: 0 for one datagram, else the UDP_SEGMENT size of a run (fast path only). */
  readonly segSizes: Uint16Array;
  count: number;
}

/** One queue per source socket, each with room for `capacity` entries. */
export function newSendQueues(sourcePorts: number, capacity: number): SendQueue[] {
  return Array.from({ length: Math.max(1, sourcePorts) }, () => ({
    offs: new Uint32Array(capacity), lens: new Uint32Array(capacity), ips: new Uint32Array(capacity),
    ports: new Uint16Array(capacity), segSizes: new Uint16Array(capacity), count: 0,
  }));
}

/** Marks a datagram the kernel truncated because it was longer than the slot (see native.ts). */
export const TRUNCATED = 0xffffffff;

const VLAN_TAG_LEN = 4;

/** The largest plain inner frame for a pod MTU: Ethernet header, one VLAN tag, the packet. */
export function maxInnerFrame(mtu: number): number {
  return ETH_HEADER_LEN + VLAN_TAG_LEN + mtu;
}

/** Slab slots start on 64-byte (cache line) boundaries. */
export function align64(bytes: number): number {
  return Math.ceil(bytes / 64) * 64;
}

export class ForwarderCore {
  readonly batch: number;
  readonly vni: Vni;
  readonly port: number;
  /** Largest inner frame accepted in either direction. */
  readonly maxFrame: number;

  readonly tapStride: number;
  readonly tapSlab: Uint8Array;
  readonly tapLens: Uint32Array;
  /** One queue per source socket. */
  readonly sendQueues: readonly SendQueue[];

  readonly udpStride: number;
  readonly udpSlab: Uint8Array;
  readonly udpLens: Uint32Array;
  readonly udpSrcIps: Uint32Array;
  readonly udpSrcPorts: Uint16Array;
  readonly writeOffs: Uint32Array;
  readonly writeLens: Uint32Array;

  constructor(
    options: ForwarderCoreOptions,
    public table: ForwardingTable,
    readonly counters: Float64Array,
  ) {
    this.batch = options.batch;
    this.vni = options.vni;
    this.port = options.port;
    this.maxFrame = maxInnerFrame(options.mtu);
    // One extra slot's worth of slack so a frame longer than maxFrame is seen as such
    // (and dropped) instead of running into the next slot's headroom.
    this.tapStride = align64(VXLAN_HEADER_LEN + this.maxFrame + 64);
    this.udpStride = align64(VXLAN_HEADER_LEN + this.maxFrame + 64);
    const b = options.batch;
    // The last slot's frame starts VXLAN_HEADER_LEN in, so the slab runs that far past b slots.
    this.tapSlab = new Uint8Array(b * this.tapStride + VXLAN_HEADER_LEN);
    this.tapLens = new Uint32Array(b);
    this.sendQueues = newSendQueues(options.sourcePorts, b);
    this.udpSlab = new Uint8Array(b * this.udpStride);
    this.udpLens = new Uint32Array(b);
    this.udpSrcIps = new Uint32Array(b);
    this.udpSrcPorts = new Uint16Array(b);
    this.writeOffs = new Uint32Array(b);
    this.writeLens = new Uint32Array(b);
  }

  /**
   * Encapsulates `count` frames read from the TAP into the send queues (one per source
   * socket, chosen by the inner flow's hash) and returns how many datagrams to send.
   */
  encapsulate(count: number): number {
    const c = this.counters;
    const slab = this.tapSlab;
    const table = this.table;
    const queues = this.sendQueues;
    const nQueues = queues.length;
    for (let q = 0; q < nQueues; q++) (queues[q] as SendQueue).count = 0;
    let out = 0;
    c[Counter.TapReadBatches]! += 1;
    countBatch(c, BatchSource.Tap, count);
    for (let i = 0; i < count; i++) {
      const len = this.tapLens[i] as number;
      const slot = i * this.tapStride;
      const entry = routeFrame(c, table, slab, slot + VXLAN_HEADER_LEN, len, this.maxFrame);
      if (entry === undefined) continue;
      c[entry.traffic + PeerCounter.TxFrames]! += 1;
      c[entry.traffic + PeerCounter.TxBytes]! += len;
      writeVxlanHeader(slab, slot, this.vni);
      const queue = queues[nQueues === 1 ? 0 : flowHash(slab, slot + VXLAN_HEADER_LEN, len) % nQueues] as SendQueue;
      const n = queue.count++;
      queue.offs[n] = slot;
      queue.lens[n] = VXLAN_HEADER_LEN + len;
      queue.ips[n] = entry.underlayIp;
      queue.ports[n] = this.port;
      out++;
    }
    return out;
  }

  /**
   * Validates and decapsulates `count` datagrams received from the underlay. Fills
   * writeOffs/writeLens and returns how many frames to write to the TAP. Every datagram
   * that is not exactly ours is counted by reason and dropped; this never throws.
   */
  decapsulate(count: number): number {
    const c = this.counters;
    const slab = this.udpSlab;
    const table = this.table;
    const vni = this.vni;
    let out = 0;
    c[Counter.UdpRecvBatches]! += 1;
    c[Counter.UdpRxReads]! += count;
    countBatch(c, BatchSource.Underlay, count);
    for (let i = 0; i < count; i++) {
      const len = this.udpLens[i] as number;
      const off = i * this.udpStride;
      if (!acceptDatagram(c, table, vni, slab, off, len, this.udpSrcIps[i] as number, this.maxFrame)) continue;
      this.writeOffs[out] = off + VXLAN_HEADER_LEN;
      this.writeLens[out] = len - VXLAN_HEADER_LEN;
      out++;
    }
    return out;
  }
}

/**
 * The checks on a frame read from the TAP: returns the peer it goes to, or counts why it is
 * dropped and returns undefined.
 */
export function routeFrame(c: Float64Array, table: ForwardingTable, slab: Uint8Array, frame: number, len: number, maxFrame: number): FdbEntry | undefined {
  c[Counter.TapRxFrames]! += 1;
  c[Counter.TapRxBytes]! += len;
  if (len < ETH_HEADER_LEN) {
    c[Counter.DropRunt]! += 1;
    return undefined;
  }
  if (len > maxFrame) {
    c[Counter.DropTruncated]! += 1;
    return undefined;
  }
  if (isGroupDestination(slab, frame)) {
    // ARP and IPv6 neighbour discovery: the control plane programs neighbours, so
    // nothing needs flooding across the overlay.
    c[Counter.DropGroupDestination]! += 1;
    return undefined;
  }
  const entry = table.byVtepMac(dstMac(slab, frame));
  if (entry === undefined) c[Counter.DropNoRoute]! += 1;
  return entry;
}

/**
 * The checks on one datagram from the underlay at slab[off .. off+len): true when it is exactly
 * ours and its inner frame (at off + 8) may go to the TAP; otherwise the reason is counted.
 * Never throws.
 */
export function acceptDatagram(c: Float64Array, table: ForwardingTable, vni: Vni, slab: Uint8Array, off: number, len: number, srcIp: number, maxFrame: number): boolean {
  c[Counter.UdpRxDatagrams]! += 1;
  if (len === TRUNCATED || len - VXLAN_HEADER_LEN > maxFrame) {
    c[Counter.DropTruncated]! += 1;
    return false;
  }
  c[Counter.UdpRxBytes]! += len;
  switch (checkVxlan(slab, off, len, vni)) {
    case VxlanVerdict.Ok:
      break;
    case VxlanVerdict.Runt:
      c[Counter.DropRunt]! += 1;
      return false;
    case VxlanVerdict.MissingIFlag:
      c[Counter.DropMissingIFlag]! += 1;
      return false;
    case VxlanVerdict.ReservedBits:
      c[Counter.DropReservedBits]! += 1;
      return false;
    case VxlanVerdict.WrongVni:
      c[Counter.DropWrongVni]! += 1;
      return false;
  }
  const entry = table.byUnderlayIp(srcIp);
  if (entry === undefined) {
    c[Counter.DropUnknownVtep]! += 1;
    return false;
  }
  const frame = off + VXLAN_HEADER_LEN;
  if (etherType(slab, frame) !== ETHERTYPE_IPV4) {
    c[Counter.DropUnsupportedInner]! += 1;
    return false;
  }
  if (len - VXLAN_HEADER_LEN < MIN_IPV4_FRAME) {
    c[Counter.DropRunt]! += 1;
    return false;
  }
  // A peer speaks only for its own pod subnet; anything else would let it inject
  // traffic that looks like it came from another node's pods.
  if (((ipv4Src(slab, frame) & entry.mask) >>> 0) !== entry.network) {
    c[Counter.DropSpoofedSource]! += 1;
    return false;
  }
  c[entry.traffic + PeerCounter.RxFrames]! += 1;
  c[entry.traffic + PeerCounter.RxBytes]! += len - VXLAN_HEADER_LEN;
  return true;
}
