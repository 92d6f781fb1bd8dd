// Just enough Ethernet and IPv4 parsing for forwarding decisions. Offsets are into a slab;
// nothing here allocates.

import { readU32 } from "./bytes";
import { readMac } from "./types";

export const ETH_HEADER_LEN = 14;
export const ETHERTYPE_IPV4 = 0x0800;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

export function etherType(buf: Uint8Array, frameOff: number): number {
  return ((buf[frameOff + 12] as number) << 8) | (buf[frameOff + 13] as number);
}

/** True when the destination MAC has the group bit set (broadcast or multicast). */
export function isGroupDestination(buf: Uint8Array, frameOff: number): boolean {
  return ((buf[frameOff] as number) & 1) !== 0;
}

/** Destination MAC as a 48-bit number, without allocating. */
export function dstMac(buf: Uint8Array, frameOff: number): number {
  return readMac(buf, frameOff);
}

/** Minimum bytes for an Ethernet frame carrying an IPv4 header without options. */
export const MIN_IPV4_FRAME = ETH_HEADER_LEN + 20;

/** IPv4 source address of the packet in an Ethernet frame (caller checked the ethertype and length). */
export function ipv4Src(buf: Uint8Array, frameOff: number): number {
  return readU32(buf, frameOff + ETH_HEADER_LEN + 12);
}

/**
 * A 16-bit hash of the inner flow (addresses, protocol, and ports for TCP/UDP of an
 * unfragmented packet), used to give each flow its own outer source port so underlay ECMP
 * can spread flows the way the kernel's VXLAN does.
 */
export function flowHash(buf: Uint8Array, frameOff: number, frameLen: number): number {
  let h = 0x811c9dc5;
  if (frameLen >= MIN_IPV4_FRAME && etherType(buf, frameOff) === ETHERTYPE_IPV4) {
    const ip = frameOff + ETH_HEADER_LEN;
    const ihl = ((buf[ip] as number) & 0x0f) * 4;
    const proto = buf[ip + 9] as number;
    for (let i = 12; i < 20; i++) h = Math.imul(h ^ (buf[ip + i] as number), 0x01000193);
    h = Math.imul(h ^ proto, 0x01000193);
    const fragOff = (((buf[ip + 6] as number) & 0x1f) << 8) | (buf[ip + 7] as number);
    if ((proto === 6 || proto === 17) && fragOff === 0 && frameLen >= ETH_HEADER_LEN + ihl + 4) {
      for (let i = 0; i < 4; i++) h = Math.imul(h ^ (buf[ip + ihl + i] as number), 0x01000193);
    }
  } else {
    for (let i = 0; i < 12; i++) h = Math.imul(h ^ (buf[frameOff + i] as number), 0x01000193);
  }
  return ((h >>> 16) ^ h) & 0xffff;
}
