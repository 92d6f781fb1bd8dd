// Merging consecutive UDPv4 datagrams of one flow into one GSO_UDP_L4 super-frame for the TAP,
// the way the kernel's GRO does for forwarded UDP: the TAP write — one syscall and one trip
// through the host stack per frame — is the receive path's largest per-frame cost, and a
// super-frame pays it once for up to MAX_GSO_SEGMENTS datagrams. The kernel cuts it back into
// the original datagrams (same payloads, fresh lengths and checksums) before the pod sees it.

import { readU16, writeU16 } from "./bytes";
import { fold, pseudoHeaderSum, writeIpv4HeaderChecksum } from "./checksum";
import { ETH_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_UDP, etherType } from "./frame";
import { MAX_GSO_SEGMENTS, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, writeVnetHeader } from "./offload";

export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
const UDP_HEADER_LEN = 8;
const MAX_IPV4_TOTAL = 65535;
const IP_FLAG_DF = 0x40;

/**
 * Ethernet + IPv4 + UDP header bytes of a frame that can join a UDP super-frame, else 0: an
 * unfragmented IPv4 UDP datagram whose lengths agree with the frame and which carries a
 * checksum (a datagram sent without one keeps going out alone, so it is not given one).
 */
export function udp4HeaderLength(slab: Uint8Array, frame: number, len: number): number {
  if (len < ETH_HEADER_LEN + 20 + UDP_HEADER_LEN || etherType(slab, frame) !== ETHERTYPE_IPV4) return 0;
  const ip = frame + ETH_HEADER_LEN;
  const vihl = slab[ip] as number;
  if (vihl >> 4 !== 4) return 0;
  const ihl = (vihl & 0x0f) * 4;
  if (ihl < 20 || slab[ip + 9] !== IPPROTO_UDP) return 0;
  if (((slab[ip + 6] as number) & 0x3f) !== 0 || slab[ip + 7] !== 0) return 0; // a fragment
  const hdr = ETH_HEADER_LEN + ihl + UDP_HEADER_LEN;
  if (hdr > len || readU16(slab, ip + 2) !== len - ETH_HEADER_LEN) return 0;
  const udp = ip + ihl;
  if (readU16(slab, udp + 4) !== len - ETH_HEADER_LEN - ihl || readU16(slab, udp + 6) === 0) return 0;
  return hdr;
}

/**
 * Feed it frames in order: `open` starts a super-frame with an eligible datagram (see
 * udp4HeaderLength; its checksum must verify), `offer` answers whether the next one joined, `close`
 * finalizes it. Works in place within one receive slot; allocates nothing per packet.
 */
export class UdpCoalescer {
  /** Frame offset of the open super-frame, -1 if none. */
  start = -1;
  /** Bytes of the open super-frame so far. */
  length = 0;
  /** Datagrams merged into it. */
  segments = 0;
  private hdrLen = 0;
  private ihl = 0;
  private payloadSize = 0;
  private nextId = 0;
  private closedForMore = false;

  open(slab: Uint8Array, frame: number, len: number, hdrLen: number): void {
    const ip = frame + ETH_HEADER_LEN;
    this.start = frame;
    this.length = len;
    this.segments = 1;
    this.hdrLen = hdrLen;
    this.ihl = ((slab[ip] as number) & 0x0f) * 4;
    this.payloadSize = len - hdrLen;
    this.nextId = (readU16(slab, ip + 4) + 1) & 0xffff;
    this.closedForMore = this.payloadSize === 0;
  }

  /**
   * Appends the datagram at slab[frame .. frame+len) if it continues the open super-frame:
   * the same Ethernet, IP (but id, length, checksum) and UDP ports, the same payload size (a
   * shorter one may come last), IP ids that the kernel's segmentation will reproduce (the next
   * id, or DF set, where the id carries no meaning), and room left. Moves its payload to the
   * end of the super-frame.
   */
  offer(slab: Uint8Array, frame: number, len: number, hdrLen: number): boolean {
    if (this.start < 0 || this.closedForMore || hdrLen !== this.hdrLen || this.segments >= MAX_GSO_SEGMENTS) return false;
    const payload = len - hdrLen;
    if (payload === 0 || payload > this.payloadSize || this.length + payload > ETH_HEADER_LEN + MAX_IPV4_TOTAL) return false;
    const a = this.start;
    const ipA = a + ETH_HEADER_LEN;
    const ipB = frame + ETH_HEADER_LEN;
    for (let i = 0; i < ETH_HEADER_LEN; i++) if (slab[a + i] !== slab[frame + i]) return false;
    // Version/IHL, TOS, flags/fragment, TTL, protocol, addresses, options.
    if (slab[ipA] !== slab[ipB] || slab[ipA + 1] !== slab[ipB + 1]) return false;
    for (let i = 6; i < 10; i++) if (slab[ipA + i] !== slab[ipB + i]) return false;
    for (let i = 12; i < this.ihl; i++) if (slab[ipA + i] !== slab[ipB + i]) return false;
    const df = ((slab[ipA + 6] as number) & IP_FLAG_DF) !== 0;
    if (!df && readU16(slab, ipB + 4) !== this.nextId) return false;
    const uA = ipA + this.ihl;
    const uB = ipB + this.ihl;
    for (let i = 0; i < 4; i++) if (slab[uA + i] !== slab[uB + i]) return false;

    slab.copyWithin(a + this.length, frame + hdrLen, frame + len);
    this.length += payload;
    this.segments++;
    this.nextId = (this.nextId + 1) & 0xffff;
    if (payload < this.payloadSize) this.closedForMore = true;
    return true;
  }

  /**
   * Finalizes the open super-frame and writes its virtio_net_hdr at hdrs[hdrOff]. A single
   * datagram goes out untouched with an empty header; a merged one gets its IP and UDP lengths
   * and IP checksum fixed and a UDP checksum left partial for the kernel (NEEDS_CSUM).
   */
  close(slab: Uint8Array, hdrs: Uint8Array, hdrOff: number): void {
    if (this.segments <= 1) {
      writeVnetHeader(hdrs, hdrOff, 0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0);
    } else {
      const ip = this.start + ETH_HEADER_LEN;
      const l4 = this.length - ETH_HEADER_LEN - this.ihl;
      writeU16(slab, ip + 2, this.ihl + l4);
      writeIpv4HeaderChecksum(slab, ip, this.ihl);
      const udp = ip + this.ihl;
      writeU16(slab, udp + 4, l4);
      writeU16(slab, udp + 6, fold(pseudoHeaderSum(slab, ip, IPPROTO_UDP, l4)));
      writeVnetHeader(hdrs, hdrOff, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, this.hdrLen,
        this.payloadSize, ETH_HEADER_LEN + this.ihl, 6);
    }
    this.start = -1;
  }
}
