// Merging consecutive UDPv4 datagrams of one flow into one GSO_UDP_L4 super-frame for the TAP,
// the way the kernel's GRO does for forwarded UDP: the TAP write — one syscall and one trip
// through the host stack per frame — is the receive path's largest per-frame cost, and a
// super-frame pays it once for up to MAX_GSO_SEGMENTS datagrams. The kernel cuts it back into
// the original datagrams (same payloads, fresh lengths and checksums) before the pod sees it.

import { readU16, writeU16 } from "./bytes";
import { ETH_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_UDP, etherType } from "./frame";
import { InPlaceCoalescer, MAX_GSO_SEGMENTS } from "./offload";

export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
const UDP_HEADER_LEN = 8;
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
 * Merges consecutive UDPv4 datagrams of one flow (see InPlaceCoalescer): feed it datagrams that
 * udp4HeaderLength accepts and whose checksum verified.
 */
export class UdpCoalescer extends InPlaceCoalescer {
  protected readonly protocol = IPPROTO_UDP;
  protected readonly gsoType = VIRTIO_NET_HDR_GSO_UDP_L4;
  protected readonly csumOffset = 6;
  private nextId = 0;

  open(slab: Uint8Array, frame: number, len: number, hdrLen: number): void {
    const ip = this.begin(slab, frame, len, hdrLen);
    this.nextId = (readU16(slab, ip + 4) + 1) & 0xffff;
    this.closedForMore = this.segSize === 0;
  }

  /**
   * Appends the datagram at slab[frame .. frame+len) if it continues the open super-frame:
   * the same Ethernet, IP (but id, length, checksum) and UDP ports, the same payload size (a
   * shorter one may come last), IP ids that the kernel's segmentation will reproduce (the next
   * id, or DF set, where the id carries no meaning), and room left.
   */
  offer(slab: Uint8Array, frame: number, len: number, hdrLen: number): boolean {
    if (this.start < 0 || this.closedForMore || hdrLen !== this.hdrLen || this.segments >= MAX_GSO_SEGMENTS) return false;
    const payload = len - hdrLen;
    if (!this.sameFlow(slab, frame, payload)) return false;
    const df = ((slab[this.start + ETH_HEADER_LEN + 6] as number) & IP_FLAG_DF) !== 0;
    if (!df && readU16(slab, frame + ETH_HEADER_LEN + 4) !== this.nextId) return false;
    this.append(slab, frame, len);
    this.nextId = (this.nextId + 1) & 0xffff;
    if (payload < this.segSize) this.closedForMore = true;
    return true;
  }

  protected writeL4Length(slab: Uint8Array, udp: number, l4Len: number): void {
    writeU16(slab, udp + 4, l4Len);
  }
}
