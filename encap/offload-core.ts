// Forwarding decisions of the fast path (docs/DESIGN.md §3): the TAP speaks virtio-net headers with
// TSO, the underlay socket uses UDP_SEGMENT on send and UDP_GRO on receive. Like
// ForwarderCore it does no I/O and allocates nothing per packet; everything lives in one slab
// so payload moves with copyWithin.
//
// Slab layout:
//   [0, 8)           the VXLAN header every segment starts with (our VNI)
//   TAP slots        tapBatch × tapStride: [virtio_net_hdr][frame], up to 64 KB per frame
//   segment areas    tapBatch × segStride: a super-frame's segments as back-to-back datagrams
//   receive slots    rxBatch × rxStride: a datagram or a UDP_GRO run of them

import { NATIVE_BATCH_MAX } from "./batch-io";
import { ChecksumSpans, pseudoHeaderSum, type SumManyFn } from "./checksum";
import { readU16, writeU16 } from "./bytes";
import { BatchSource, Counter, PeerCounter, countBatch } from "./counters";
import type { ForwardingTable } from "./fdb";
import { acceptDatagram, align64, maxInnerFrame, newSendQueues, routeFrame, TRUNCATED, type SendQueue } from "./forwarder-core";
import { ETH_HEADER_LEN, IPPROTO_TCP, IPPROTO_UDP, flowHash } from "./frame";
import {
  TcpCoalescer, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN, partialChecksumFits, readVnetHeader, segmentTcp4,
  segmentsPerSend, tcp4HeaderLength, writeVnetHeader, MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD, type SegmentPlan, type VnetHeader,
} from "./offload";
import type { Vni } from "./types";
import { UdpCoalescer, udp4HeaderLength } from "./udp-coalescer";
import { VXLAN_HEADER_LEN, writeVxlanHeader } from "./vxlan";

export interface OffloadCoreOptions {
  vni: Vni;
  port: number;
  mtu: number;
  /** TAP reads (super-frames) per wake. */
  tapBatch: number;
  /** recvmmsg entries (each up to a 64 KB GRO run) per wake. */
  rxBatch: number;
  sourcePorts: number;
}

const MAX_FRAME_BYTES = 65535 + ETH_HEADER_LEN;
/** Segments a super-frame may be cut into; more is refused (and counted as bad offload). */
const MAX_SEGMENTS_PER_FRAME = 1024;
/** Datagrams per receive entry checked for merging; later ones in a longer run go out alone. */
const MAX_VERIFIED_PER_ENTRY = 1024;
const PARTIAL_NONE = 0;
const PARTIAL_DONE = 1;
const PARTIAL_BAD = 2;
const MERGE_NONE = 0;
const MERGE_TCP = 1;
const MERGE_UDP = 2;
/** Sends per super-frame we leave room for (a 64 KB frame at MSS ≥ 536 needs at most 3). */
const SENDS_PER_FRAME = 4;

/** The fast path's batch sizes. */
export interface OffloadSettings {
  /** TAP reads (up to 64 KB super-frames) per wake. */
  tapBatch: number;
  /** recvmmsg entries (up to 64 KB GRO runs) per wake. */
  rxBatch: number;
}

/**
 * The most TAP reads per wake: a read may become SENDS_PER_FRAME send entries, and one
 * sendmmsg takes at most NATIVE_BATCH_MAX (more would be counted as a full queue).
 */
export const MAX_OFFLOAD_TAP_BATCH = NATIVE_BATCH_MAX / SENDS_PER_FRAME;
/** The most GRO runs per recvmmsg: each slot holds 64 KB, so 16 are 1 MB of receive slab. */
export const MAX_OFFLOAD_RX_BATCH = 16;

/**
 * The fast path's batches for `--batch n`: n TAP reads and n receive entries per wake, each up
 * to MAX_OFFLOAD_TAP_BATCH and MAX_OFFLOAD_RX_BATCH (the default 64 gives 64 and 16).
 */
export function offloadBatches(batch: number): OffloadSettings {
  const n = Math.max(1, Math.floor(batch));
  return { tapBatch: Math.min(n, MAX_OFFLOAD_TAP_BATCH), rxBatch: Math.min(n, MAX_OFFLOAD_RX_BATCH) };
}

export class OffloadCore {
  readonly slab: Uint8Array;
  readonly vni: Vni;
  readonly port: number;
  /** Largest plain (non-GSO) inner frame. */
  readonly maxFrame: number;

  readonly tapBatch: number;
  readonly tapBase = 64;
  readonly tapStride = align64(VNET_HDR_LEN + MAX_FRAME_BYTES + 1);
  readonly tapLens: Uint32Array;
  readonly segBase: number;
  readonly segStride: number;
  readonly sendQueues: readonly SendQueue[];

  readonly rxBatch: number;
  readonly rxBase: number;
  readonly rxStride = align64(65536 + 64);
  readonly rxLens: Uint32Array;
  readonly rxSrcIps: Uint32Array;
  readonly rxSrcPorts: Uint16Array;
  readonly rxSegSizes: Uint16Array;
  readonly writeOffs: Uint32Array;
  readonly writeLens: Uint32Array;
  /** The virtio_net_hdr for each frame to write, VNET_HDR_LEN bytes apart. */
  readonly writeHdrs: Uint8Array;

  // Per send queue, the plain datagram (or run of them) its last entry holds, so the next
  // plain datagram of the same size to the same peer can join it as one UDP_SEGMENT send:
  // the entry index (-1: the last entry is not a plain one), its TAP slot (whose segment area
  // the run is gathered in), and the run's datagram size, count and end offset.
  private readonly runEntry: Int32Array;
  private readonly runSlot: Uint32Array;
  private readonly runSize: Uint32Array;
  private readonly runCount: Uint32Array;
  private readonly runEnd: Uint32Array;

  private readonly vh: VnetHeader = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
  private readonly plan: SegmentPlan = { segSize: 0, segments: 0, totalBytes: 0 };
  /** Checksums of a super-frame's segments, summed in one call. */
  private readonly segmentSpans = new ChecksumSpans(MAX_SEGMENTS_PER_FRAME);
  // Plain TAP frames whose checksum the kernel left partial: summed in one call per batch
  // before any frame moves. partialState[i]: PARTIAL_NONE, _DONE or _BAD (offsets outside it).
  private readonly partialSpans: ChecksumSpans;
  private readonly partialField: Uint32Array;
  private readonly partialState: Uint8Array;
  // Per datagram of the receive entry being decapsulated: whether it may join a super-frame
  // (its TCP or UDP checksum verified; summed in one call per entry) and its header length.
  private readonly rxSpans = new ChecksumSpans(MAX_VERIFIED_PER_ENTRY);
  private readonly rxKind = new Uint8Array(MAX_VERIFIED_PER_ENTRY);
  private readonly rxHdrLen = new Uint16Array(MAX_VERIFIED_PER_ENTRY);
  private readonly tcpCoalescer: TcpCoalescer;
  private readonly udpCoalescer: UdpCoalescer;

  constructor(
    options: OffloadCoreOptions,
    public table: ForwardingTable,
    readonly counters: Float64Array,
    private readonly sumMany: SumManyFn,
  ) {
    this.vni = options.vni;
    this.port = options.port;
    this.maxFrame = maxInnerFrame(options.mtu);
    this.tapBatch = options.tapBatch;
    this.rxBatch = options.rxBatch;
    // A super-frame's segments: its payload plus one VXLAN + header copy per segment
    // (at most 128 segments of ≤ 8 + 14 + 60 + 60 header bytes at MSS ≥ 512).
    this.segStride = align64(MAX_FRAME_BYTES + 128 * (8 + 14 + 60 + 60));
    this.segBase = this.tapBase + this.tapBatch * this.tapStride;
    this.rxBase = this.segBase + this.tapBatch * this.segStride;
    this.slab = new Uint8Array(this.rxBase + this.rxBatch * this.rxStride);
    writeVxlanHeader(this.slab, 0, this.vni);

    this.tapLens = new Uint32Array(this.tapBatch);
    const cap = this.tapBatch * SENDS_PER_FRAME;
    this.sendQueues = newSendQueues(options.sourcePorts, cap);
    const nQueues = this.sendQueues.length;
    this.runEntry = new Int32Array(nQueues);
    this.runSlot = new Uint32Array(nQueues);
    this.runSize = new Uint32Array(nQueues);
    this.runCount = new Uint32Array(nQueues);
    this.runEnd = new Uint32Array(nQueues);

    this.rxLens = new Uint32Array(this.rxBatch);
    this.rxSrcIps = new Uint32Array(this.rxBatch);
    this.rxSrcPorts = new Uint16Array(this.rxBatch);
    this.rxSegSizes = new Uint16Array(this.rxBatch);
    const writes = this.rxBatch * MAX_GSO_SEGMENTS;
    this.writeOffs = new Uint32Array(writes);
    this.writeLens = new Uint32Array(writes);
    this.writeHdrs = new Uint8Array(writes * VNET_HDR_LEN);
    this.tcpCoalescer = new TcpCoalescer();
    this.udpCoalescer = new UdpCoalescer();
    this.partialSpans = new ChecksumSpans(this.tapBatch);
    this.partialField = new Uint32Array(this.tapBatch);
    this.partialState = new Uint8Array(this.tapBatch);
  }

  /**
   * Turns `count` TAP reads into send-queue entries: plain frames in place (the VXLAN header
   * over the end of the virtio_net_hdr), TCP super-frames cut into segments. Returns the
   * number of entries queued.
   */
  encapsulate(count: number): number {
    const c = this.counters;
    const slab = this.slab;
    const vh = this.vh;
    const plan = this.plan;
    const queues = this.sendQueues;
    const nQueues = queues.length;
    for (let q = 0; q < nQueues; q++) {
      (queues[q] as SendQueue).count = 0;
      this.runEntry[q] = -1;
    }
    c[Counter.TapReadBatches]! += 1;
    countBatch(c, BatchSource.Tap, count);
    this.completePartialChecksums(count);
    let out = 0;
    for (let i = 0; i < count; i++) {
      const slot = this.tapBase + i * this.tapStride;
      const len = this.tapLens[i] as number;
      if (len === TRUNCATED || len < VNET_HDR_LEN) {
        c[Counter.DropTruncated]! += 1;
        continue;
      }
      readVnetHeader(slab, slot, vh);
      const frame = slot + VNET_HDR_LEN;
      const flen = len - VNET_HDR_LEN;
      const gso = vh.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
      const entry = routeFrame(c, this.table, slab, frame, flen, gso === VIRTIO_NET_HDR_GSO_NONE ? this.maxFrame : MAX_FRAME_BYTES);
      if (entry === undefined) continue;
      const q = nQueues === 1 ? 0 : flowHash(slab, frame, flen) % nQueues;
      const queue = queues[q] as SendQueue;

      if (gso === VIRTIO_NET_HDR_GSO_NONE) {
        if (this.partialState[i] === PARTIAL_BAD) {
          c[Counter.DropBadOffload]! += 1;
          continue;
        }
        writeVxlanHeader(slab, frame - VXLAN_HEADER_LEN, this.vni);
        c[entry.traffic + PeerCounter.TxFrames]! += 1;
        c[entry.traffic + PeerCounter.TxBytes]! += flen;
        if (this.joinRun(q, queue, frame - VXLAN_HEADER_LEN, flen + VXLAN_HEADER_LEN, entry.underlayIp)) continue;
        this.runEntry[q] = queue.count;
        this.runSlot[q] = i;
        this.runSize[q] = flen + VXLAN_HEADER_LEN;
        this.runCount[q] = 1;
        this.enqueue(queue, frame - VXLAN_HEADER_LEN, flen + VXLAN_HEADER_LEN, 0, entry.underlayIp);
        out++;
        continue;
      }
      this.runEntry[q] = -1;
      const segOut = this.segBase + i * this.segStride;
      if (gso !== VIRTIO_NET_HDR_GSO_TCPV4 || !segmentTcp4(slab, frame, flen, vh.gsoSize, segOut, this.segStride, 0, this.sumMany, this.segmentSpans, plan)) {
        c[Counter.DropBadOffload]! += 1;
        continue;
      }
      c[Counter.TapRxSuperFrames]! += 1;
      c[entry.traffic + PeerCounter.TxFrames]! += plan.segments;
      c[entry.traffic + PeerCounter.TxBytes]! += plan.totalBytes - plan.segments * VXLAN_HEADER_LEN;
      const per = segmentsPerSend(plan.segSize);
      let remainingBytes = plan.totalBytes;
      for (let s = 0; s < plan.segments; s += per) {
        const bytes = Math.min(remainingBytes, per * plan.segSize);
        if (queue.count === queue.offs.length) {
          c[Counter.DropUdpQueueFull]! += 1;
          break;
        }
        this.enqueue(queue, segOut + s * plan.segSize, bytes, plan.segSize, entry.underlayIp);
        remainingBytes -= bytes;
        out++;
      }
    }
    return out;
  }

  /**
   * Finishes the checksums the kernel left partial in the batch's plain frames, all summed in
   * one call, and notes in partialState which frames had offsets that do not fit.
   */
  private completePartialChecksums(count: number): void {
    const slab = this.slab;
    const vh = this.vh;
    const spans = this.partialSpans;
    spans.count = 0;
    for (let i = 0; i < count; i++) {
      this.partialState[i] = PARTIAL_NONE;
      const slot = this.tapBase + i * this.tapStride;
      const len = this.tapLens[i] as number;
      if (len === TRUNCATED || len < VNET_HDR_LEN) continue;
      readVnetHeader(slab, slot, vh);
      if ((vh.gsoType & ~VIRTIO_NET_HDR_GSO_ECN) !== VIRTIO_NET_HDR_GSO_NONE || (vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) === 0) continue;
      const frame = slot + VNET_HDR_LEN;
      const flen = len - VNET_HDR_LEN;
      if (!partialChecksumFits(flen, vh.csumStart, vh.csumOffset)) {
        this.partialState[i] = PARTIAL_BAD;
        continue;
      }
      this.partialState[i] = PARTIAL_DONE;
      this.partialField[spans.count] = frame + vh.csumStart + vh.csumOffset;
      spans.add(frame + vh.csumStart, flen - vh.csumStart, 0);
    }
    spans.run(this.sumMany, slab);
    for (let k = 0; k < spans.count; k++) writeU16(slab, this.partialField[k] as number, ~(spans.sums[k] as number) & 0xffff);
  }

  /**
   * Appends a plain datagram to the queue's last entry when that is a run of plain datagrams of
   * the same size to the same peer with room left: the kernel then sends the run with one
   * UDP_SEGMENT pass through the stack instead of one per datagram, and a UDP_GRO receiver gets
   * it as one read. A shorter datagram may end a run. The first datagram of a run stays in its
   * TAP slot until a second one joins; then both are gathered in that slot's segment area.
   */
  private joinRun(q: number, queue: SendQueue, off: number, len: number, ip: number): boolean {
    const e = this.runEntry[q] as number;
    if (e < 0 || queue.ips[e] !== ip) return false;
    const size = this.runSize[q] as number;
    const count = this.runCount[q] as number;
    if (len > size || count >= MAX_GSO_SEGMENTS || (count + 1) * size > MAX_UDP_PAYLOAD) return false;
    const slab = this.slab;
    if (count === 1) {
      const area = this.segBase + (this.runSlot[q] as number) * this.segStride;
      slab.copyWithin(area, queue.offs[e] as number, (queue.offs[e] as number) + size);
      queue.offs[e] = area;
      queue.segSizes[e] = size;
      this.runEnd[q] = area + size;
    }
    const end = this.runEnd[q] as number;
    slab.copyWithin(end, off, off + len);
    this.runEnd[q] = end + len;
    queue.lens[e] = (queue.lens[e] as number) + len;
    this.runCount[q] = count + 1;
    // Only the last datagram of a UDP_SEGMENT send may be shorter than the others.
    if (len < size) this.runEntry[q] = -1;
    return true;
  }

  private enqueue(queue: SendQueue, off: number, len: number, segSize: number, ip: number): void {
    const n = queue.count++;
    queue.offs[n] = off;
    queue.lens[n] = len;
    queue.ips[n] = ip;
    queue.ports[n] = this.port;
    queue.segSizes[n] = segSize;
  }

  /**
   * Validates `count` receive entries datagram by datagram, merges consecutive TCP segments
   * or UDP datagrams of one flow, and fills writeOffs/writeLens/writeHdrs. Returns the frames to write.
   */
  decapsulate(count: number): number {
    const c = this.counters;
    const slab = this.slab;
    const table = this.table;
    const tco = this.tcpCoalescer;
    const uco = this.udpCoalescer;
    c[Counter.UdpRecvBatches]! += 1;
    c[Counter.UdpRxReads]! += count;
    countBatch(c, BatchSource.Underlay, count);
    let w = 0;
    for (let i = 0; i < count; i++) {
      const slot = this.rxBase + i * this.rxStride;
      const len = this.rxLens[i] as number;
      const srcIp = this.rxSrcIps[i] as number;
      if (len === TRUNCATED) {
        c[Counter.UdpRxDatagrams]! += 1;
        c[Counter.DropTruncated]! += 1;
        continue;
      }
      const seg = (this.rxSegSizes[i] as number) || len;
      if (seg < len) c[Counter.UdpRxGroRuns]! += 1;
      if (len === 0) {
        c[Counter.UdpRxDatagrams]! += 1;
        c[Counter.DropRunt]! += 1;
        continue;
      }
      this.verifyForMerging(slot, len, seg);
      for (let off = slot, k = 0; off < slot + len; off += seg, k++) {
        const dlen = Math.min(seg, slot + len - off);
        if (w >= this.writeOffs.length - 1) {
          c[Counter.DropTapQueueFull]! += 1;
          continue;
        }
        if (!acceptDatagram(c, table, this.vni, slab, off, dlen, srcIp, this.maxFrame)) continue;
        const frame = off + VXLAN_HEADER_LEN;
        const flen = dlen - VXLAN_HEADER_LEN;
        const merge = k < MAX_VERIFIED_PER_ENTRY ? this.rxKind[k] as number : MERGE_NONE;
        if (merge !== MERGE_NONE) {
          const co = merge === MERGE_TCP ? tco : uco;
          const hdrLen = this.rxHdrLen[k] as number;
          if (co.offer(slab, frame, flen, hdrLen)) continue;
          w = this.flush(w);
          co.open(slab, frame, flen, hdrLen);
          continue;
        }
        w = this.flush(w);
        writeVnetHeader(this.writeHdrs, w * VNET_HDR_LEN, 0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0);
        this.writeOffs[w] = frame;
        this.writeLens[w] = flen;
        w++;
      }
      // Merging happens in place within one receive slot.
      w = this.flush(w);
    }
    return w;
  }

  /**
   * For each datagram of the receive entry at slab[slot .. slot+len) (cut at `seg`), notes in
   * rxKind/rxHdrLen whether it is a TCP segment with payload or a UDP datagram whose checksum
   * verifies, all summed in one call. Merged datagrams lose their own checksums, so only
   * verified ones may merge; the rest go out as they came, for the pod's stack to judge.
   */
  private verifyForMerging(slot: number, len: number, seg: number): void {
    const slab = this.slab;
    const spans = this.rxSpans;
    spans.count = 0;
    let k = 0;
    for (let off = slot; off < slot + len && k < MAX_VERIFIED_PER_ENTRY; off += seg, k++) {
      this.rxKind[k] = MERGE_NONE;
      const dlen = Math.min(seg, slot + len - off);
      if (dlen <= VXLAN_HEADER_LEN) continue;
      const frame = off + VXLAN_HEADER_LEN;
      const flen = dlen - VXLAN_HEADER_LEN;
      const ip = frame + ETH_HEADER_LEN;
      const tcpHdr = tcp4HeaderLength(slab, frame, flen);
      const udpHdr = tcpHdr > 0 ? 0 : udp4HeaderLength(slab, frame, flen);
      if (tcpHdr > 0 ? flen === tcpHdr : udpHdr === 0) continue;
      const ihl = ((slab[ip] as number) & 0x0f) * 4;
      const l4 = flen - ETH_HEADER_LEN - ihl;
      if (readU16(slab, ip + 2) !== ihl + l4) continue;
      this.rxKind[k] = tcpHdr > 0 ? MERGE_TCP : MERGE_UDP;
      this.rxHdrLen[k] = tcpHdr > 0 ? tcpHdr : udpHdr;
      spans.add(ip + ihl, l4, pseudoHeaderSum(slab, ip, tcpHdr > 0 ? IPPROTO_TCP : IPPROTO_UDP, l4));
    }
    spans.run(this.sumMany, slab);
    for (let j = 0, n = 0; j < k; j++) {
      if (this.rxKind[j] === MERGE_NONE) continue;
      if (spans.sums[n++] !== 0xffff) this.rxKind[j] = MERGE_NONE;
    }
  }

  /** Emits the open super-frame, if any (at most one coalescer is open at a time). */
  private flush(w: number): number {
    const co = this.tcpCoalescer.start >= 0 ? this.tcpCoalescer : this.udpCoalescer.start >= 0 ? this.udpCoalescer : undefined;
    if (co === undefined) return w;
    if (co.segments > 1) this.counters[Counter.TapTxSuperFrames]! += 1;
    this.writeOffs[w] = co.start;
    this.writeLens[w] = co.length;
    co.close(this.slab, this.writeHdrs, w * VNET_HDR_LEN);
    return w + 1;
  }
}
