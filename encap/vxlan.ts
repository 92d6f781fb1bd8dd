// RFC 7348 VXLAN header codec.
//
//  0                   1                   2                   3
//  |R|R|R|R|I|R|R|R|            Reserved                           |
//  |                VXLAN Network Identifier (VNI) |   Reserved    |

import type { Vni } from "./types";

export const VXLAN_HEADER_LEN = 8;
const VXLAN_FLAG_I = 0x08;
export const VXLAN_DEFAULT_PORT = 4789;
/** The port Linux used before IANA assigned 4789; flannel still defaults to it. */
export const VXLAN_LINUX_LEGACY_PORT = 8472;

/** Writes the 8-byte header at `off`: I flag set, every reserved bit zero. */
export function writeVxlanHeader(buf: Uint8Array, off: number, vni: Vni): void {
  buf[off] = VXLAN_FLAG_I;
  buf[off + 1] = 0;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  buf[off + 4] = (vni >>> 16) & 0xff;
  buf[off + 5] = (vni >>> 8) & 0xff;
  buf[off + 6] = vni & 0xff;
  buf[off + 7] = 0;
}

export function readVni(buf: Uint8Array, off: number): Vni {
  return (((buf[off + 4] as number) << 16) | ((buf[off + 5] as number) << 8) | (buf[off + 6] as number)) as Vni;
}

export const enum VxlanVerdict {
  Ok = 0,
  /** Shorter than a VXLAN header plus an Ethernet header. */
  Runt = 1,
  /** The I flag is clear: the VNI field is not valid. */
  MissingIFlag = 2,
  /** A reserved bit is set (flags byte other than I, or reserved bytes non-zero). */
  ReservedBits = 3,
  WrongVni = 4,
}

const ETHERNET_HEADER_LEN = 14;

/**
 * Checks a received datagram strictly: exactly our header, our VNI, room for an inner
 * Ethernet header. Never throws.
 */
export function checkVxlan(buf: Uint8Array, off: number, len: number, vni: Vni): VxlanVerdict {
  if (len < VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN) return VxlanVerdict.Runt;
  const flags = buf[off] as number;
  if ((flags & VXLAN_FLAG_I) === 0) return VxlanVerdict.MissingIFlag;
  if (flags !== VXLAN_FLAG_I || buf[off + 1] !== 0 || buf[off + 2] !== 0 || buf[off + 3] !== 0 || buf[off + 7] !== 0) {
    return VxlanVerdict.ReservedBits;
  }
  if (readVni(buf, off) !== vni) return VxlanVerdict.WrongVni;
  return VxlanVerdict.Ok;
}
