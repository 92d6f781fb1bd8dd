// The rtnetlink message serializer: the fixed-layout headers (ifinfomsg, ifaddrmsg, rtmsg,
// ndmsg) and TLV attributes, written and read here and nowhere else. Pure: Buffers in, Buffers
// and numbers out. Multi-byte header fields and attributes are host order (little-endian on
// every platform vxmesh runs on); IPv4 addresses are network order.

import { readMac, writeMac, type Ipv4, type MacAddr } from "../../encap/types";
import { NLA_F_NESTED, RT_SCOPE_UNIVERSE } from "./constants";

function align4(n: number): number {
  return (n + 3) & ~3;
}

// ---------------------------------------------------------------------------------------------
// Writing

/** One attribute: 2-byte length, 2-byte type, payload, padded to 4 bytes. */
export function attr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const b = Buffer.alloc(align4(len));
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  payload.copy(b, 4);
  return b;
}

export function nested(type: number, children: Buffer[]): Buffer {
  return attr(type | NLA_F_NESTED, Buffer.concat(children));
}

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0, 0);
  return b;
}

export function u8(v: number): Buffer {
  return Buffer.from([v & 0xff]);
}

/** A NUL-terminated string. */
export function str(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, "utf8"), Buffer.alloc(1)]);
}

export function ipv4(ip: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(ip >>> 0, 0);
  return b;
}

export function mac(m: MacAddr): Buffer {
  const b = Buffer.alloc(6);
  writeMac(b, 0, m);
  return b;
}

/** struct ifinfomsg (16 bytes). */
export function ifinfomsg(family: number, index: number, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(family, 0);
  b.writeInt32LE(index, 4);
  b.writeUInt32LE(flags >>> 0, 8);
  b.writeUInt32LE(change >>> 0, 12);
  return b;
}

/** struct ifaddrmsg (8 bytes). */
export function ifaddrmsg(family: number, prefixLen: number, index: number, scope = RT_SCOPE_UNIVERSE): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(family, 0);
  b.writeUInt8(prefixLen, 1);
  b.writeUInt8(scope, 3);
  b.writeUInt32LE(index, 4);
  return b;
}

export interface RtmsgFields {
  family: number;
  dstLen?: number;
  tos?: number;
  table?: number;
  protocol?: number;
  scope?: number;
  type?: number;
  flags?: number;
}

/** struct rtmsg (12 bytes). */
export function rtmsg(o: RtmsgFields): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(o.family, 0);
  b.writeUInt8(o.dstLen ?? 0, 1);
  b.writeUInt8(o.tos ?? 0, 3);
  b.writeUInt8(o.table ?? 0, 4);
  b.writeUInt8(o.protocol ?? 0, 5);
  b.writeUInt8(o.scope ?? 0, 6);
  b.writeUInt8(o.type ?? 0, 7);
  b.writeUInt32LE((o.flags ?? 0) >>> 0, 8);
  return b;
}

/** struct ndmsg (12 bytes). */
export function ndmsg(family: number, ifindex: number, state = 0): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(family, 0);
  b.writeInt32LE(ifindex, 4);
  b.writeUInt16LE(state, 8);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Reading

/** Attributes by type (the first of each type), from `off` to the end of `b`. */
export type Attrs = Map<number, Buffer>;

export function parseAttrs(b: Buffer, off: number): Attrs {
  const out: Attrs = new Map();
  while (off + 4 <= b.length) {
    const len = b.readUInt16LE(off);
    const type = b.readUInt16LE(off + 2) & ~NLA_F_NESTED & 0x7fff;
    if (len < 4 || off + len > b.length) break;
    if (!out.has(type)) out.set(type, b.subarray(off + 4, off + len));
    off += align4(len);
  }
  return out;
}

export function readStr(b: Buffer | undefined): string | undefined {
  if (b === undefined) return undefined;
  const nul = b.indexOf(0);
  return b.toString("utf8", 0, nul < 0 ? b.length : nul);
}

export function readU32(b: Buffer | undefined): number | undefined {
  return b !== undefined && b.length >= 4 ? b.readUInt32LE(0) : undefined;
}

export function readIpv4(b: Buffer | undefined): Ipv4 | undefined {
  return b !== undefined && b.length === 4 ? (b.readUInt32BE(0) as Ipv4) : undefined;
}

export function readMacAttr(b: Buffer | undefined): MacAddr | undefined {
  return b !== undefined && b.length === 6 ? readMac(b, 0) : undefined;
}
