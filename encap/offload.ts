// Segmentation and coalescing for the fast path (docs/DESIGN.md §3). With IFF_VNET_HDR and
// TUNSETOFFLOAD the TAP hands us TCP super-frames of up to 64 KB, each behind a
// virtio_net_hdr; we cut them into MSS-sized segments laid out back to back as VXLAN datagrams
// (sent with one UDP_SEGMENT sendmsg). On receive, UDP_GRO hands us runs of datagrams; we
// validate each, merge consecutive segments of one TCP flow into one super-frame and give it
// to the TAP with a virtio_net_hdr saying GSO TCPv4. Pure functions over slabs; no I/O.

import { readU16, readU32, writeU16, writeU32 } from "./bytes";
import { fold, pseudoHeaderSum, writeIpv4HeaderChecksum, type ChecksumSpans, type SumManyFn } from "./checksum";
import { ETH_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_TCP, etherType } from "./frame";

/** struct virtio_net_hdr (without num_buffers): the TAP's default vnet header size. */
export const VNET_HDR_LEN = 10;
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** TUNSETOFFLOAD flags (linux/if_tun.h). */
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;

const TCP_FLAG_FIN = 0x01;
const TCP_FLAG_PSH = 0x08;
const TCP_FLAG_CWR = 0x80;
/** Largest UDP payload of one IPv4 datagram, and so of one UDP_SEGMENT send. */
export const MAX_UDP_PAYLOAD = 65507;
/** The kernel's UDP_MAX_SEGMENTS on the kernels we support. */
export const MAX_GSO_SEGMENTS = 64;
const MAX_IPV4_TOTAL = 65535;

export interface VnetHeader {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/** Reads a virtio_net_hdr (little-endian fields) into a reused object. */
export function readVnetHeader(slab: Uint8Array, off: number, out: VnetHeader): void {
  out.flags = slab[off] as number;
  out.gsoType = slab[off + 1] as number;
  out.hdrLen = (slab[off + 2] as number) | ((slab[off + 3] as number) << 8);
  out.gsoSize = (slab[off + 4] as number) | ((slab[off + 5] as number) << 8);
  out.csumStart = (slab[off + 6] as number) | ((slab[off + 7] as number) << 8);
  out.csumOffset = (slab[off + 8] as number) | ((slab[off + 9] as number) << 8);
}

export function writeVnetHeader(slab: Uint8Array, off: number, flags: number, gsoType: number, hdrLen: number, gsoSize: number, csumStart: number, csumOffset: number): void {
  slab[off] = flags;
  slab[off + 1] = gsoType;
  slab[off + 2] = hdrLen & 0xff; slab[off + 3] = hdrLen >>> 8;
  slab[off + 4] = gsoSize & 0xff; slab[off + 5] = gsoSize >>> 8;
  slab[off + 6] = csumStart & 0xff; slab[off + 7] = csumStart >>> 8;
  slab[off + 8] = csumOffset & 0xff; slab[off + 9] = csumOffset >>> 8;
}

/**
 * Whether a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM) fits a frame of
 * `len` bytes: the field at csumStart + csumOffset holds the pseudo-header sum, and the sum runs
 * from csumStart to the end of the frame.
 */
export function partialChecksumFits(len: number, csumStart: number, csumOffset: number): boolean {
  return csumStart < len && csumStart + csumOffset + 2 <= len;
}

/** Where the headers of an Ethernet + IPv4 + TCP frame end; 0 if it is not one we can segment. */
export function tcp4HeaderLength(slab: Uint8Array, frame: number, len: number): number {
  if (len < ETH_HEADER_LEN + 20 + 20 || etherType(slab, frame) !== ETHERTYPE_IPV4) return 0;
  const ip = frame + ETH_HEADER_LEN;
  const vihl = slab[ip] as number;
  if (vihl >> 4 !== 4) return 0;
  const ihl = (vihl & 0x0f) * 4;
  if (ihl < 20 || slab[ip + 9] !== IPPROTO_TCP) return 0;
  const thl = ((slab[ip + ihl + 12] as number) >> 4) * 4;
  if (thl < 20) return 0;
  const hdr = ETH_HEADER_LEN + ihl + thl;
  return hdr <= len ? hdr : 0;
}

export interface SegmentPlan {
  /** Bytes of one datagram: VXLAN header + inner headers + MSS. */
  segSize: number;
  segments: number;
  /** Bytes of all datagrams together (the last one may be short). */
  totalBytes: number;
}

/**
 * Cuts the TCPv4 super-frame slab[frame .. frame+len) into MSS-sized segments, each written
 * as [VXLAN header][Ethernet][IPv4][TCP][payload] back to back from `out` (in the same slab,
 * so payload moves with copyWithin and nothing is allocated). IP length/id/checksum and TCP
 * sequence/flags/checksum are fixed per segment. The VXLAN header of each segment is copied
 * from vxlanHdr (8 bytes at that offset). Fills `plan` and returns true, or false if the
 * frame cannot be segmented or would not fit in outCapacity bytes (the caller drops and
 * counts it).
 */
export function segmentTcp4(slab: Uint8Array, frame: number, len: number, mss: number, out: number, outCapacity: number, vxlanHdr: number,
  sumMany: SumManyFn, spans: ChecksumSpans, plan: SegmentPlan): boolean {
  const hdrLen = tcp4HeaderLength(slab, frame, len);
  if (hdrLen === 0 || mss === 0) return false;
  const ip = frame + ETH_HEADER_LEN;
  const ihl = ((slab[ip] as number) & 0x0f) * 4;
  const tcp = ip + ihl;
  const thl = hdrLen - ETH_HEADER_LEN - ihl;
  const payload = len - hdrLen;
  const segments = Math.max(1, Math.ceil(payload / mss));
  const segSize = 8 + hdrLen + mss;
  const totalBytes = segments * (8 + hdrLen) + payload;
  if (totalBytes > outCapacity || segments > spans.capacity) return false;
  const id0 = readU16(slab, ip + 4);
  const seq0 = readU32(slab, tcp + 4);
  const flags = slab[tcp + 13] as number;

  spans.count = 0;
  for (let k = 0; k < segments; k++) {
    const chunk = k === segments - 1 ? payload - k * mss : mss;
    const d = out + k * segSize;
    slab.copyWithin(d, vxlanHdr, vxlanHdr + 8);
    slab.copyWithin(d + 8, frame, frame + hdrLen);
    slab.copyWithin(d + 8 + hdrLen, frame + hdrLen + k * mss, frame + hdrLen + k * mss + chunk);
    const dip = d + 8 + ETH_HEADER_LEN;
    const dtcp = dip + ihl;
    writeU16(slab, dip + 2, ihl + thl + chunk);
    writeU16(slab, dip + 4, (id0 + k) & 0xffff);
    writeIpv4HeaderChecksum(slab, dip, ihl);
    writeU32(slab, dtcp + 4, (seq0 + k * mss) >>> 0);
    let f = flags;
    if (k !== segments - 1) f &= ~(TCP_FLAG_FIN | TCP_FLAG_PSH);
    if (k !== 0) f &= ~TCP_FLAG_CWR;
    slab[dtcp + 13] = f;
    slab[dtcp + 16] = 0;
    slab[dtcp + 17] = 0;
    spans.add(dtcp, thl + chunk, pseudoHeaderSum(slab, dip, IPPROTO_TCP, thl + chunk));
  }
  // Every segment's TCP checksum in one call.
  spans.run(sumMany, slab);
  for (let k = 0; k < segments; k++) writeU16(slab, (spans.offs[k] as number) + 16, ~(spans.sums[k] as number) & 0xffff);
  plan.segSize = segSize;
  plan.segments = segments;
  plan.totalBytes = totalBytes;
  return true;
}

/** Segments per UDP_SEGMENT send for datagrams of segSize bytes. */
export function segmentsPerSend(segSize: number): number {
  return Math.max(1, Math.min(MAX_GSO_SEGMENTS, Math.floor(MAX_UDP_PAYLOAD / segSize)));
}

/**
 * What merging consecutive packets of one flow in place (within one receive slot) shares,
 * whatever the protocol: the open super-frame's place, length and segment count, the header
 * comparison, moving payload, and finishing the IP header and virtio_net_hdr. Only packets whose
 * checksum verified may be fed (merged ones lose theirs). Reused across batches; allocates
 * nothing per packet.
 */
export abstract class InPlaceCoalescer {
  /** Frame offset of the open super-frame, -1 if none. */
  start = -1;
  /** Bytes of the open super-frame so far. */
  length = 0;
  /** Packets merged into it. */
  segments = 0;
  protected hdrLen = 0;
  protected ihl = 0;
  /** Payload bytes of the first packet: the GSO size; only the last may be shorter. */
  protected segSize = 0;
  protected closedForMore = false;

  protected abstract readonly protocol: number;
  protected abstract readonly gsoType: number;
  /** Where the checksum field lies in the transport header. */
  protected abstract readonly csumOffset: number;

  /** Begins a super-frame with an eligible packet; returns the offset of its IP header. */
  protected begin(slab: Uint8Array, frame: number, len: number, hdrLen: number): number {
    const ip = frame + ETH_HEADER_LEN;
    this.start = frame;
    this.length = len;
    this.segments = 1;
    this.hdrLen = hdrLen;
    this.ihl = ((slab[ip] as number) & 0x0f) * 4;
    this.segSize = len - hdrLen;
    this.closedForMore = false;
    return ip;
  }

  /**
   * Whether the packet at `frame` has the open super-frame's Ethernet header, IP header (but
   * length, id and checksum) and ports, and `payload` more bytes fit.
   */
  protected sameFlow(slab: Uint8Array, frame: number, payload: number): boolean {
    if (payload === 0 || payload > this.segSize || this.length + payload > ETH_HEADER_LEN + MAX_IPV4_TOTAL) return false;
    const a = this.start;
    for (let i = 0; i < ETH_HEADER_LEN; i++) if (slab[a + i] !== slab[frame + i]) return false;
    const ipA = a + ETH_HEADER_LEN;
    const ipB = frame + ETH_HEADER_LEN;
    // Version/IHL, TOS, flags/fragment, TTL, protocol, addresses, options; then the ports.
    if (slab[ipA] !== slab[ipB] || slab[ipA + 1] !== slab[ipB + 1]) return false;
    for (let i = 6; i < 10; i++) if (slab[ipA + i] !== slab[ipB + i]) return false;
    for (let i = 12; i < this.ihl + 4; i++) if (slab[ipA + i] !== slab[ipB + i]) return false;
    return true;
  }

  /** Moves the packet's payload to the end of the super-frame. */
  protected append(slab: Uint8Array, frame: number, len: number): void {
    slab.copyWithin(this.start + this.length, frame + this.hdrLen, frame + len);
    this.length += len - this.hdrLen;
    this.segments++;
  }

  /** Fixes what the transport header says about its length, if it says anything. */
  protected abstract writeL4Length(slab: Uint8Array, l4: number, l4Len: number): void;

  /**
   * Finalizes the open super-frame and writes its virtio_net_hdr at hdrs[hdrOff]. A single
   * packet goes out untouched with an empty header; a merged one gets its IP length and checksum
   * fixed and its transport checksum left partial for the kernel (NEEDS_CSUM).
   */
  close(slab: Uint8Array, hdrs: Uint8Array, hdrOff: number): void {
    if (this.segments <= 1) {
      writeVnetHeader(hdrs, hdrOff, 0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0);
    } else {
      const ip = this.start + ETH_HEADER_LEN;
      const l4Len = this.length - ETH_HEADER_LEN - this.ihl;
      writeU16(slab, ip + 2, this.ihl + l4Len);
      writeIpv4HeaderChecksum(slab, ip, this.ihl);
      this.writeL4Length(slab, ip + this.ihl, l4Len);
      writeU16(slab, ip + this.ihl + this.csumOffset, fold(pseudoHeaderSum(slab, ip, this.protocol, l4Len)));
      writeVnetHeader(hdrs, hdrOff, VIRTIO_NET_HDR_F_NEEDS_CSUM, this.gsoType, this.hdrLen, this.segSize,
        ETH_HEADER_LEN + this.ihl, this.csumOffset);
    }
    this.start = -1;
  }
}

/** Merges consecutive TCPv4 segments of one flow (see InPlaceCoalescer). */
export class TcpCoalescer extends InPlaceCoalescer {
  protected readonly protocol = IPPROTO_TCP;
  protected readonly gsoType = VIRTIO_NET_HDR_GSO_TCPV4;
  protected readonly csumOffset = 16;
  private nextSeq = 0;

  open(slab: Uint8Array, frame: number, len: number, hdrLen: number): void {
    const tcp = this.begin(slab, frame, len, hdrLen) + this.ihl;
    this.nextSeq = (readU32(slab, tcp + 4) + this.segSize) >>> 0;
    this.closedForMore = ((slab[tcp + 13] as number) & ~0x10) !== 0; // anything beyond ACK ends it
  }

  /**
   * Appends the segment at slab[frame .. frame+len) if it continues the open super-frame:
   * same flow and headers (but sequence, IP id and checksums), the next sequence number,
   * the same segment size (a shorter one may come last), and room left. Moves its payload
   * to the end of the super-frame.
   */
  offer(slab: Uint8Array, frame: number, len: number, hdrLen: number): boolean {
    if (this.start < 0 || this.closedForMore || hdrLen !== this.hdrLen) return false;
    const payload = len - hdrLen;
    if (!this.sameFlow(slab, frame, payload)) return false;
    const ipB = frame + ETH_HEADER_LEN;
    if (((slab[ipB + 6] as number) & 0x3f) !== 0 || slab[ipB + 7] !== 0) return false; // a fragment
    const tA = this.start + ETH_HEADER_LEN + this.ihl;
    const tB = ipB + this.ihl;
    // Sequence, ack, flags (PSH may end the run), options.
    if (readU32(slab, tB + 4) !== this.nextSeq) return false;
    for (let i = 8; i < 12; i++) if (slab[tA + i] !== slab[tB + i]) return false;
    const fB = slab[tB + 13] as number;
    if ((fB & ~TCP_FLAG_PSH) !== (slab[tA + 13] as number) || slab[tA + 12] !== slab[tB + 12]) return false;
    for (let i = 20; i < this.hdrLen - ETH_HEADER_LEN - this.ihl; i++) if (slab[tA + i] !== slab[tB + i]) return false;

    this.append(slab, frame, len);
    this.nextSeq = (this.nextSeq + payload) >>> 0;
    // The newest window and PSH win, as the kernel's GRO does.
    slab[tA + 14] = slab[tB + 14] as number;
    slab[tA + 15] = slab[tB + 15] as number;
    if ((fB & TCP_FLAG_PSH) !== 0 || payload < this.segSize) {
      slab[tA + 13] = (slab[tA + 13] as number) | (fB & TCP_FLAG_PSH);
      this.closedForMore = true;
    }
    return true;
  }

  protected writeL4Length(): void {
    // TCP carries no length of its own.
  }
}
