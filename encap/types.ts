// Value types shared by the data plane, the control plane and the tools. Addresses keep their
// family in the type so IPv6 can join later without reshaping records and tables.

import { createHash } from "node:crypto";

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** A VXLAN network identifier, 0 … 2^24−1. */
export type Vni = Brand<number, "Vni">;
/** A MAC address as a 48-bit integer (safe in a JS number). */
export type MacAddr = Brand<number, "MacAddr">;
/** An IPv4 address as an unsigned 32-bit integer, 192.0.2.1 = 0xC0000201. */
export type Ipv4 = Brand<number, "Ipv4">;

export interface Ipv4Subnet {
  readonly family: 4;
  /** Network address (host bits zero). */
  readonly network: Ipv4;
  readonly prefixLen: number;
}
export type Subnet = Ipv4Subnet;

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

export const VNI_MAX = 0xffffff;

export function parseVni(text: string): Parsed<Vni> {
  if (!/^\d+$/.test(text)) return { ok: false, error: "an integer from 0 to 16777215" };
  const n = Number(text);
  if (n > VNI_MAX) return { ok: false, error: "an integer from 0 to 16777215" };
  return { ok: true, value: n as Vni };
}

export function parseIpv4(text: string): Parsed<Ipv4> {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (m === null) return { ok: false, error: "a dotted-quad IPv4 address such as 192.0.2.10" };
  let v = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i] as string;
    if (part.length > 1 && part.startsWith("0")) return { ok: false, error: "a dotted-quad IPv4 address without leading zeros" };
    const o = Number(part);
    if (o > 255) return { ok: false, error: "a dotted-quad IPv4 address with octets 0-255" };
    v = v * 256 + o;
  }
  return { ok: true, value: v as Ipv4 };
}

export function formatIpv4(ip: Ipv4 | number): string {
  return `${(ip >>> 24) & 255}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

export function prefixMask(prefixLen: number): number {
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/** Parses "10.244.1.0/24". Host bits must be zero, so a typo is not silently widened. */
export function parseSubnet(text: string): Parsed<Subnet> {
  const slash = text.indexOf("/");
  if (slash < 0) return { ok: false, error: "an IPv4 CIDR such as 10.244.1.0/24" };
  const ip = parseIpv4(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (!ip.ok || !/^\d{1,2}$/.test(lenText)) return { ok: false, error: "an IPv4 CIDR such as 10.244.1.0/24" };
  const prefixLen = Number(lenText);
  if (prefixLen > 32) return { ok: false, error: "an IPv4 CIDR with a prefix length 0-32" };
  const mask = prefixMask(prefixLen);
  if (((ip.value & ~mask) >>> 0) !== 0) {
    const network = formatIpv4((ip.value & mask) >>> 0);
    return { ok: false, error: `a network address with host bits zero (did you mean ${network}/${prefixLen}?)` };
  }
  return { ok: true, value: { family: 4, network: ip.value, prefixLen } };
}

export function formatSubnet(s: Subnet): string {
  return `${formatIpv4(s.network)}/${s.prefixLen}`;
}

export function subnetContains(s: Subnet, ip: Ipv4 | number): boolean {
  return ((ip & prefixMask(s.prefixLen)) >>> 0) === s.network;
}

export function subnetsOverlap(a: Subnet, b: Subnet): boolean {
  const len = Math.min(a.prefixLen, b.prefixLen);
  const mask = prefixMask(len);
  return ((a.network & mask) >>> 0) === ((b.network & mask) >>> 0);
}

/** True when `inner` lies entirely inside `outer`. */
export function subnetInside(inner: Subnet, outer: Subnet): boolean {
  return inner.prefixLen >= outer.prefixLen && subnetsOverlap(inner, outer);
}

/** The n-th address of a subnet (0 = network address). */
export function subnetAddress(s: Subnet, n: number): Ipv4 {
  return ((s.network + n) >>> 0) as Ipv4;
}

export function parseMac(text: string): Parsed<MacAddr> {
  const m = /^([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})$/.exec(text);
  if (m === null) return { ok: false, error: "a MAC address such as 02:00:5e:10:00:01" };
  let v = 0;
  for (let i = 1; i <= 6; i++) v = v * 256 + parseInt(m[i] as string, 16);
  const first = Math.floor(v / 2 ** 40);
  if ((first & 1) !== 0) return { ok: false, error: "a unicast MAC address (lowest bit of the first octet clear)" };
  if (v === 0) return { ok: false, error: "a non-zero MAC address" };
  return { ok: true, value: v as MacAddr };
}

export function formatMac(mac: MacAddr | number): string {
  const parts: string[] = [];
  let v = mac;
  for (let i = 0; i < 6; i++) {
    parts.unshift((v % 256).toString(16).padStart(2, "0"));
    v = Math.floor(v / 256);
  }
  return parts.join(":");
}

/** Reads a MAC from six bytes at `off`. */
export function readMac(buf: Uint8Array, off: number): MacAddr {
  return ((buf[off] as number) * 2 ** 40 + (buf[off + 1] as number) * 2 ** 32 +
    (((buf[off + 2] as number) << 24) >>> 0) + ((buf[off + 3] as number) << 16) +
    ((buf[off + 4] as number) << 8) + (buf[off + 5] as number)) as MacAddr;
}

export function writeMac(buf: Uint8Array, off: number, mac: MacAddr): void {
  let v: number = mac;
  for (let i = 5; i >= 0; i--) {
    buf[off + i] = v % 256;
    v = Math.floor(v / 256);
  }
}

/**
 * The VTEP MAC a node gets when none is configured: a locally administered unicast address
 * derived from the node name, so it is stable across restarts and distinct per name.
 */
export function vtepMacFor(nodeName: string): MacAddr {
  const h = createHash("sha256").update("vxmesh-vtep:" + nodeName).digest();
  h[0] = ((h[0] as number) & 0xfc) | 0x02;
  return readMac(h, 0);
}
