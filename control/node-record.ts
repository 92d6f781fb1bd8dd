// The node record: what every member tells the others about itself. Membership carries it as
// opaque bytes (its `meta`) beside the incarnation it owns; this module only encodes and
// decodes it.
//
// Wire format, version 1:
//
//   byte 0        format version (major). A decoder rejects any major it does not know.
//   then fields   type-length-value, until the end of the record:
//                   type   u8   bit 0x80 = "critical": a decoder that does not know the type
//                                must reject the record; without it, unknown types are skipped
//                   length u8   bytes of value that follow
//                   value
//
// New fields of the same major are added as new types, so older decoders skip them. Known types
// appear at most once. All integers are big-endian. Field values:
//
//   0x01 name           1..64 bytes, ASCII [A-Za-z0-9._-], first character a letter or digit
//   0x02 protocol       u16, the control protocol version the node speaks
//   0x03 underlay       family u8 (4), then the address (4 bytes for family 4)
//   0x04 gossip port    u16, 1..65535
//   0x05 VTEP MAC       6 bytes, unicast, not zero
//   0x06 VNI            u24
//   0x07 VXLAN port     u16, 1..65535
//   0x08 pod subnets    0..4 entries of: family u8, prefix length u8, network address
//                       (4 bytes for family 4; family 6 entries carry 16 bytes and are skipped
//                       by this version, so dual-stack nodes stay readable by v4-only ones)
//   0x09 lease          state u8 (1 claiming, 2 confirmed, 3 released), claim stamp u48
//                       (ms since the epoch; 0 = static subnet), claim sequence u32.
//                       Present exactly when the record carries a pod subnet.
//
// The incarnation number is not here: membership owns it.

import { readU16, readU32 } from "../encap/bytes";
import { prefixMask, readMac, writeMac, type Ipv4, type MacAddr, type Parsed, type Subnet, type Vni } from "../encap/types";

export const NODE_RECORD_FORMAT_VERSION = 1;
/** The control protocol version this build speaks (carried in every record). */
export const CONTROL_PROTOCOL_VERSION = 1;
/** Linux's HOST_NAME_MAX: the default node name is the host name. */
export const NODE_NAME_MAX_BYTES = 64;
export const MAX_POD_SUBNETS = 4;
/** Largest stamp the u48 field carries (year 10889). */
export const MAX_CLAIM_STAMP = 2 ** 48 - 1;
export const MAX_CLAIM_SEQ = 0xffffffff;

/** An underlay address, typed by family so IPv6 can join without reshaping the record. */
export type UnderlayAddr = { readonly family: 4; readonly ip: Ipv4 };

export type LeaseState = "claiming" | "confirmed" | "released";

/** The claim a node holds on its pod subnet(s). */
export interface LeaseClaim {
  readonly state: LeaseState;
  /** When the subnet was claimed, ms since the epoch by the claimer's clock; 0 for a static subnet. */
  readonly stamp: number;
  /** How many claims this node has made; informational. */
  readonly seq: number;
}

export interface NodeRecord {
  readonly name: string;
  readonly protocolVersion: number;
  readonly underlay: UnderlayAddr;
  readonly gossipPort: number;
  readonly vtepMac: MacAddr;
  readonly vni: Vni;
  readonly vxlanPort: number;
  /** Pod subnets; IPv4 only today. Empty while the node has none. */
  readonly podSubnets: readonly Subnet[];
  /** The claim on `podSubnets`; null exactly when `podSubnets` is empty. */
  readonly lease: LeaseClaim | null;
}

const T_NAME = 0x01;
const T_PROTOCOL = 0x02;
const T_UNDERLAY = 0x03;
const T_GOSSIP_PORT = 0x04;
const T_VTEP_MAC = 0x05;
const T_VNI = 0x06;
const T_VXLAN_PORT = 0x07;
const T_POD_SUBNETS = 0x08;
const T_LEASE = 0x09;
const T_CRITICAL = 0x80;

const FAMILY_V4 = 4;
const FAMILY_V6 = 6;
const LEASE_LEN = 1 + 6 + 4;
const V4_SUBNET_ENTRY_LEN = 6;
const V6_SUBNET_ENTRY_LEN = 18;

const LEASE_STATE_CODE: Record<LeaseState, number> = { claiming: 1, confirmed: 2, released: 3 };
const LEASE_STATE_BY_CODE: readonly (LeaseState | undefined)[] = [undefined, "claiming", "confirmed", "released"];

/** The largest record this version encodes (longest name, most subnets). */
export const NODE_RECORD_MAX_BYTES =
  1 + (2 + NODE_NAME_MAX_BYTES) + (2 + 2) + (2 + 5) + (2 + 2) + (2 + 6) + (2 + 3) + (2 + 2) +
  (2 + MAX_POD_SUBNETS * V4_SUBNET_ENTRY_LEN) + (2 + LEASE_LEN);

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Why `name` is not a valid node name, or null. */
export function checkNodeName(name: string): string | null {
  if (name.length === 0) return "a node name must not be empty";
  if (name.length > NODE_NAME_MAX_BYTES) return `a node name is at most ${NODE_NAME_MAX_BYTES} characters (got ${name.length})`;
  if (!NAME_RE.test(name)) return `node name ${JSON.stringify(name)} may contain only letters, digits, '.', '_' and '-', and must start with a letter or digit`;
  return null;
}

function isPort(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= 0xffff;
}

function isUint(n: number, max: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= max;
}

/** Why `r` cannot be encoded (or was decoded into something invalid), or null. */
export function checkNodeRecord(r: NodeRecord): string | null {
  const nameProblem = checkNodeName(r.name);
  if (nameProblem !== null) return nameProblem;
  if (!isUint(r.protocolVersion, 0xffff)) return `protocol version ${r.protocolVersion} is not a u16`;
  if (r.underlay.family !== FAMILY_V4) return `underlay address family ${String((r.underlay as { family: unknown }).family)} is not supported`;
  if (!isUint(r.underlay.ip, 0xffffffff)) return `underlay address ${r.underlay.ip} is not an IPv4 address`;
  if (!isPort(r.gossipPort)) return `gossip port ${r.gossipPort} is not 1-65535`;
  if (!isUint(r.vtepMac, 2 ** 48 - 1) || r.vtepMac === 0) return "VTEP MAC must be a non-zero 48-bit address";
  if (Math.floor(r.vtepMac / 2 ** 40) % 2 === 1) return "VTEP MAC must be unicast";
  if (!isUint(r.vni, 0xffffff)) return `VNI ${r.vni} is not 0-16777215`;
  if (!isPort(r.vxlanPort)) return `VXLAN port ${r.vxlanPort} is not 1-65535`;
  if (r.podSubnets.length > MAX_POD_SUBNETS) return `at most ${MAX_POD_SUBNETS} pod subnets (got ${r.podSubnets.length})`;
  for (let i = 0; i < r.podSubnets.length; i++) {
    const s = r.podSubnets[i] as Subnet;
    if (s.family !== FAMILY_V4) return `pod subnet family ${String((s as { family: unknown }).family)} is not supported`;
    if (!isUint(s.prefixLen, 32) || !isUint(s.network, 0xffffffff)) return "pod subnet is not a valid IPv4 network";
    if (((s.network & ~prefixMask(s.prefixLen)) >>> 0) !== 0) return "pod subnet has host bits set";
    for (let j = 0; j < i; j++) {
      const o = r.podSubnets[j] as Subnet;
      const m = prefixMask(Math.min(o.prefixLen, s.prefixLen));
      if (((o.network & m) >>> 0) === ((s.network & m) >>> 0)) return "pod subnets overlap";
    }
  }
  if ((r.lease === null) !== (r.podSubnets.length === 0)) return "a lease is present exactly when there is a pod subnet";
  if (r.lease !== null) {
    if (LEASE_STATE_CODE[r.lease.state] === undefined) return `lease state ${String(r.lease.state)} is unknown`;
    if (!isUint(r.lease.stamp, MAX_CLAIM_STAMP)) return `claim stamp ${r.lease.stamp} is not 0..2^48-1`;
    if (!isUint(r.lease.seq, MAX_CLAIM_SEQ)) return `claim sequence ${r.lease.seq} is not a u32`;
  }
  return null;
}

/** The encoded size of a valid record. */
export function nodeRecordLength(r: NodeRecord): number {
  return 1 + (2 + r.name.length) + (2 + 2) + (2 + 5) + (2 + 2) + (2 + 6) + (2 + 3) + (2 + 2) +
    (2 + r.podSubnets.length * V4_SUBNET_ENTRY_LEN) + (r.lease === null ? 0 : 2 + LEASE_LEN);
}

/**
 * Encodes a record. An invalid record is a bug of the caller (config is validated at start),
 * so it throws; use `checkNodeRecord` first when the record comes from outside.
 */
export function encodeNodeRecord(r: NodeRecord): Uint8Array {
  const problem = checkNodeRecord(r);
  if (problem !== null) throw new RangeError(`invalid node record: ${problem}`);
  const out = new Uint8Array(nodeRecordLength(r));
  let o = 0;
  out[o++] = NODE_RECORD_FORMAT_VERSION;
  const field = (type: number, len: number): void => {
    out[o++] = type;
    out[o++] = len;
  };
  const u16 = (v: number): void => {
    out[o++] = (v >>> 8) & 0xff;
    out[o++] = v & 0xff;
  };
  const u32 = (v: number): void => {
    out[o++] = (v >>> 24) & 0xff;
    out[o++] = (v >>> 16) & 0xff;
    out[o++] = (v >>> 8) & 0xff;
    out[o++] = v & 0xff;
  };

  field(T_NAME, r.name.length);
  for (let i = 0; i < r.name.length; i++) out[o++] = r.name.charCodeAt(i);
  field(T_PROTOCOL, 2);
  u16(r.protocolVersion);
  field(T_UNDERLAY, 5);
  out[o++] = FAMILY_V4;
  u32(r.underlay.ip);
  field(T_GOSSIP_PORT, 2);
  u16(r.gossipPort);
  field(T_VTEP_MAC, 6);
  writeMac(out, o, r.vtepMac);
  o += 6;
  field(T_VNI, 3);
  out[o++] = (r.vni >>> 16) & 0xff;
  u16(r.vni & 0xffff);
  field(T_VXLAN_PORT, 2);
  u16(r.vxlanPort);
  field(T_POD_SUBNETS, r.podSubnets.length * V4_SUBNET_ENTRY_LEN);
  for (const s of r.podSubnets) {
    out[o++] = FAMILY_V4;
    out[o++] = s.prefixLen;
    u32(s.network);
  }
  if (r.lease !== null) {
    field(T_LEASE, LEASE_LEN);
    out[o++] = LEASE_STATE_CODE[r.lease.state];
    const hi = Math.floor(r.lease.stamp / 2 ** 32);
    u16(hi);
    u32(r.lease.stamp - hi * 2 ** 32);
    u32(r.lease.seq);
  }
  if (o !== out.length) throw new Error(`node record length mismatch: wrote ${o}, sized ${out.length}`);
  return out;
}


const FIELD_NAMES: Record<number, string> = {
  [T_NAME]: "name", [T_PROTOCOL]: "protocol", [T_UNDERLAY]: "underlay", [T_GOSSIP_PORT]: "gossip port",
  [T_VTEP_MAC]: "VTEP MAC", [T_VNI]: "VNI", [T_VXLAN_PORT]: "VXLAN port", [T_POD_SUBNETS]: "pod subnets", [T_LEASE]: "lease",
};

function fail(error: string): { ok: false; error: string } {
  return { ok: false, error: `node record: ${error}` };
}

/** Decodes a record. Never throws: malformed input yields an error value. */
export function decodeNodeRecord(buf: Uint8Array): Parsed<NodeRecord> {
  if (buf.length === 0) return fail("empty");
  const version = buf[0] as number;
  if (version !== NODE_RECORD_FORMAT_VERSION) {
    return fail(`format version ${version} is not supported (this build reads version ${NODE_RECORD_FORMAT_VERSION}); upgrade this node`);
  }
  const fields = readFields(buf);
  if (typeof fields === "string") return fail(fields);
  return assembleRecord(fields);
}

/** The fields of a record as they are read, before the required ones are checked. */
interface FieldsRead {
  name?: string;
  protocolVersion?: number;
  underlay?: UnderlayAddr;
  gossipPort?: number;
  vtepMac?: MacAddr;
  vni?: Vni;
  vxlanPort?: number;
  podSubnets?: Subnet[];
  lease: LeaseClaim | null;
  /** Pod subnets of a family this build knows but does not route (IPv6). */
  skippedSubnets: number;
}

/**
 * Walks the type-length-value fields after the version byte: unknown fields are skipped unless
 * critical, a known one may appear once. A string is the first problem found.
 */
function readFields(buf: Uint8Array): FieldsRead | string {
  const fields: FieldsRead = { lease: null, skippedSubnets: 0 };
  let seen = 0;
  let o = 1;
  while (o < buf.length) {
    if (o + 2 > buf.length) return `field header at byte ${o} is truncated`;
    const type = buf[o] as number;
    const len = buf[o + 1] as number;
    const v = o + 2;
    if (v + len > buf.length) return `field 0x${type.toString(16)} at byte ${o} claims ${len} bytes, only ${buf.length - v} remain`;
    o = v + len;
    const label = FIELD_NAMES[type];
    if (label === undefined) {
      if ((type & T_CRITICAL) !== 0) return `unknown critical field 0x${type.toString(16)}; upgrade this node`;
      continue;
    }
    const bit = 1 << type;
    if ((seen & bit) !== 0) return `${label} field appears twice`;
    seen |= bit;
    const problem = readField(fields, type, label, buf, v, len);
    if (problem !== null) return problem;
  }
  return fields;
}

/** Reads one known field (its value is `len` bytes at `v`) into `fields`; a string is a problem. */
function readField(fields: FieldsRead, type: number, label: string, buf: Uint8Array, v: number, len: number): string | null {
  const wrongLen = (want: number): string => `${label} field is ${len} bytes, expected ${want}`;
  switch (type) {
    case T_NAME: {
      let s = "";
      for (let i = 0; i < len; i++) s += String.fromCharCode(buf[v + i] as number);
      fields.name = s;
      return null;
    }
    case T_PROTOCOL:
      if (len !== 2) return wrongLen(2);
      fields.protocolVersion = readU16(buf, v);
      return null;
    case T_UNDERLAY: {
      if (len < 1) return wrongLen(5);
      const family = buf[v] as number;
      if (family !== FAMILY_V4) return `underlay address family ${family} is not supported`;
      if (len !== 5) return wrongLen(5);
      fields.underlay = { family: 4, ip: readU32(buf, v + 1) as Ipv4 };
      return null;
    }
    case T_GOSSIP_PORT:
      if (len !== 2) return wrongLen(2);
      fields.gossipPort = readU16(buf, v);
      return null;
    case T_VTEP_MAC:
      if (len !== 6) return wrongLen(6);
      fields.vtepMac = readMac(buf, v);
      return null;
    case T_VNI:
      if (len !== 3) return wrongLen(3);
      fields.vni = (((buf[v] as number) << 16) | readU16(buf, v + 1)) as Vni;
      return null;
    case T_VXLAN_PORT:
      if (len !== 2) return wrongLen(2);
      fields.vxlanPort = readU16(buf, v);
      return null;
    case T_POD_SUBNETS:
      return readPodSubnets(fields, buf, v, v + len);
    case T_LEASE: {
      if (len !== LEASE_LEN) return wrongLen(LEASE_LEN);
      const state = LEASE_STATE_BY_CODE[buf[v] as number];
      if (state === undefined) return `lease state ${buf[v] as number} is not known`;
      fields.lease = { state, stamp: readU16(buf, v + 1) * 2 ** 32 + readU32(buf, v + 3), seq: readU32(buf, v + 7) };
      return null;
    }
    default:
      return null;
  }
}

/** The pod subnet entries from `v` to `end`: IPv4 ones kept, IPv6 ones counted as skipped. */
function readPodSubnets(fields: FieldsRead, buf: Uint8Array, v: number, end: number): string | null {
  const list: Subnet[] = [];
  let p = v;
  while (p < end) {
    const family = buf[p] as number;
    const entryLen = family === FAMILY_V4 ? V4_SUBNET_ENTRY_LEN : family === FAMILY_V6 ? V6_SUBNET_ENTRY_LEN : 0;
    if (entryLen === 0) return `pod subnet family ${family} is not known`;
    if (p + entryLen > end) return `pod subnet entry at byte ${p} is truncated`;
    const prefixLen = buf[p + 1] as number;
    if (family === FAMILY_V4) {
      if (prefixLen > 32) return `pod subnet prefix length ${prefixLen} exceeds 32`;
      list.push({ family: 4, network: readU32(buf, p + 2) as Ipv4, prefixLen });
    } else if (prefixLen > 128) {
      return `pod subnet prefix length ${prefixLen} exceeds 128`;
    } else {
      fields.skippedSubnets++;
    }
    p += entryLen;
  }
  fields.podSubnets = list;
  return null;
}

/** The record from the fields read: every required field present, and the whole record valid. */
function assembleRecord(f: FieldsRead): Parsed<NodeRecord> {
  const { name, protocolVersion, underlay, gossipPort, vtepMac, vni, vxlanPort, podSubnets } = f;
  if (name === undefined) return fail("name field is missing");
  if (protocolVersion === undefined) return fail("protocol field is missing");
  if (underlay === undefined) return fail("underlay field is missing");
  if (gossipPort === undefined) return fail("gossip port field is missing");
  if (vtepMac === undefined) return fail("VTEP MAC field is missing");
  if (vni === undefined) return fail("VNI field is missing");
  if (vxlanPort === undefined) return fail("VXLAN port field is missing");
  if (podSubnets === undefined) return fail("pod subnets field is missing");
  // A node with only subnets of a family this build skips holds nothing this build can route.
  const lease = podSubnets.length === 0 && f.skippedSubnets > 0 ? null : f.lease;
  const record: NodeRecord = { name, protocolVersion, underlay, gossipPort, vtepMac, vni, vxlanPort, podSubnets, lease };
  const problem = checkNodeRecord(record);
  if (problem !== null) return fail(problem);
  return { ok: true, value: record };
}
