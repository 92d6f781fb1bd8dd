import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  checkNodeRecord, CONTROL_PROTOCOL_VERSION, decodeNodeRecord, encodeNodeRecord, MAX_CLAIM_STAMP, MAX_POD_SUBNETS,
  NODE_NAME_MAX_BYTES, NODE_RECORD_FORMAT_VERSION, NODE_RECORD_MAX_BYTES, nodeRecordLength, type LeaseState, type NodeRecord,
} from "../control/node-record";
import { parseIpv4, parseMac, parseSubnet, prefixMask, subnetsOverlap, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";

function must<T>(r: { ok: true; value: T } | { ok: false; error: string }): T {
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

const sample: NodeRecord = {
  name: "node-01",
  protocolVersion: CONTROL_PROTOCOL_VERSION,
  underlay: { family: 4, ip: must(parseIpv4("192.0.2.11")) },
  gossipPort: 7946,
  vtepMac: must(parseMac("02:00:5e:10:00:01")),
  vni: 1 as Vni,
  vxlanPort: 4789,
  podSubnets: [must(parseSubnet("10.244.3.0/24"))],
  lease: { state: "confirmed", stamp: 1_767_225_600_000, seq: 1 },
};

const nameArb = fc.stringMatching(new RegExp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,${NODE_NAME_MAX_BYTES - 1}}$`));
const portArb = fc.integer({ min: 1, max: 0xffff });
const macArb = fc.integer({ min: 1, max: 2 ** 48 - 1 })
  .map((m) => (Math.floor(m / 2 ** 40) % 2 === 1 ? m - 2 ** 40 : m))
  .filter((m) => m !== 0) as fc.Arbitrary<MacAddr>;
const subnetArb: fc.Arbitrary<Subnet> = fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 32 }))
  .map(([ip, len]) => ({ family: 4 as const, network: ((ip & prefixMask(len)) >>> 0) as Ipv4, prefixLen: len }));
const subnetsArb = fc.array(subnetArb, { maxLength: MAX_POD_SUBNETS }).map((list) => {
  const kept: Subnet[] = [];
  for (const s of list) if (!kept.some((k) => subnetsOverlap(k, s))) kept.push(s);
  return kept;
});
const leaseArb = fc.record({
  state: fc.constantFrom<LeaseState>("claiming", "confirmed", "released"),
  stamp: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: MAX_CLAIM_STAMP }), fc.constant(MAX_CLAIM_STAMP)),
  seq: fc.integer({ min: 0, max: 0xffffffff }),
});
const recordArb: fc.Arbitrary<NodeRecord> = fc.record({
  name: nameArb,
  protocolVersion: fc.integer({ min: 0, max: 0xffff }),
  underlay: fc.integer({ min: 0, max: 0xffffffff }).map((ip) => ({ family: 4 as const, ip: ip as Ipv4 })),
  gossipPort: portArb,
  vtepMac: macArb,
  vni: fc.integer({ min: 0, max: 0xffffff }) as fc.Arbitrary<Vni>,
  vxlanPort: portArb,
  podSubnets: subnetsArb,
  lease: leaseArb,
}).map((r) => ({ ...r, lease: r.podSubnets.length === 0 ? null : r.lease }));

/** Appends one TLV field to an encoded record. */
function withField(rec: Uint8Array, type: number, value: number[]): Uint8Array {
  return Uint8Array.from([...rec, type, value.length, ...value]);
}

describe("node record codec", () => {
  it("round-trips every valid record, within the size bound", () => {
    fc.assert(fc.property(recordArb, (r) => {
      expect(checkNodeRecord(r)).toBeNull();
      const bytes = encodeNodeRecord(r);
      expect(bytes.length).toBe(nodeRecordLength(r));
      expect(bytes.length).toBeLessThanOrEqual(NODE_RECORD_MAX_BYTES);
      expect(bytes[0]).toBe(NODE_RECORD_FORMAT_VERSION);
      expect(decodeNodeRecord(bytes)).toEqual({ ok: true, value: r });
    }), { numRuns: 500 });
  });

  it("stays well under 200 bytes, so several fit in one 1400-byte datagram", () => {
    expect(NODE_RECORD_MAX_BYTES).toBe(138);
    expect(encodeNodeRecord(sample).length).toBe(63);
    const longest: NodeRecord = {
      ...sample,
      name: "n".repeat(NODE_NAME_MAX_BYTES),
      podSubnets: ["10.244.3.0/24", "10.245.0.0/24", "10.246.0.0/24", "10.247.0.0/24"].map((s) => must(parseSubnet(s))),
    };
    expect(encodeNodeRecord(longest).length).toBe(NODE_RECORD_MAX_BYTES);
    const noSubnet: NodeRecord = { ...sample, podSubnets: [], lease: null };
    expect(decodeNodeRecord(encodeNodeRecord(noSubnet))).toEqual({ ok: true, value: noSubnet });
  });

  it("never throws on random bytes", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, versioned) => {
      if (versioned && bytes.length > 0) bytes[0] = NODE_RECORD_FORMAT_VERSION;
      const r = decodeNodeRecord(bytes);
      if (r.ok) expect(checkNodeRecord(r.value)).toBeNull();
      else expect(r.error).toMatch(/^node record: /);
    }), { numRuns: 2000 });
  });

  it("never throws on mutated records, and anything it accepts is valid and re-encodes", () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant("set" as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant("cut" as const), at: fc.nat(), byte: fc.constant(0) }),
      fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant("delete" as const), at: fc.nat(), byte: fc.constant(0) }),
    );
    fc.assert(fc.property(recordArb, fc.array(mutation, { minLength: 1, maxLength: 4 }), (rec, muts) => {
      let b = Array.from(encodeNodeRecord(rec));
      for (const m of muts) {
        const at = m.at % (b.length + 1);
        if (m.kind === "set" && at < b.length) b[at] = m.byte;
        else if (m.kind === "cut") b = b.slice(0, at);
        else if (m.kind === "insert") b.splice(at, 0, m.byte);
        else if (m.kind === "delete") b.splice(at, 1);
      }
      const r = decodeNodeRecord(Uint8Array.from(b));
      if (r.ok) {
        expect(checkNodeRecord(r.value)).toBeNull();
        expect(decodeNodeRecord(encodeNodeRecord(r.value))).toEqual(r);
      }
    }), { numRuns: 2000 });
  });

  it("rejects unknown major versions with a clear error", () => {
    const b = encodeNodeRecord(sample);
    b[0] = 2;
    const r = decodeNodeRecord(b);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toBe("node record: format version 2 is not supported (this build reads version 1); upgrade this node");
    expect(decodeNodeRecord(new Uint8Array(0))).toEqual({ ok: false, error: "node record: empty" });
  });

  it("skips unknown fields of the same version, but not unknown critical ones", () => {
    const base = encodeNodeRecord(sample);
    const extended = withField(withField(base, 0x20, [1, 2, 3]), 0x7f, []);
    expect(decodeNodeRecord(extended)).toEqual({ ok: true, value: sample });
    // An unknown field in the middle is skipped as well.
    const middle = Uint8Array.from([base[0] as number, 0x33, 2, 9, 9, ...base.subarray(1)]);
    expect(decodeNodeRecord(middle)).toEqual({ ok: true, value: sample });
    const critical = decodeNodeRecord(withField(base, 0x90, [0]));
    expect(critical.ok).toBe(false);
    if (!critical.ok) expect(critical.error).toContain("unknown critical field 0x90");
  });

  it("skips IPv6 pod subnet entries it cannot use yet", () => {
    const noSubnets = encodeNodeRecord({ ...sample, podSubnets: [], lease: null });
    const v6 = [6, 64, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const v4 = [4, 24, 10, 244, 3, 0];
    // Rebuild the subnets field (type 0x08) with a v6 entry before the v4 one, plus the lease.
    const fields = stripField(noSubnets, 0x08);
    const leaseValue = fieldValue(encodeNodeRecord(sample), 0x09);
    const dual = withField(withField(fields, 0x08, [...v6, ...v4]), 0x09, leaseValue);
    expect(decodeNodeRecord(dual)).toEqual({ ok: true, value: sample });
    // Only a v6 subnet: nothing this build can route, so no subnet and no lease.
    const v6only = withField(withField(fields, 0x08, v6), 0x09, [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
    expect(decodeNodeRecord(v6only)).toEqual({ ok: true, value: { ...sample, podSubnets: [], lease: null } });
  });

  it("checks every length and refuses duplicates, gaps and invalid values", () => {
    const base = encodeNodeRecord(sample);
    const cases: [Uint8Array, string][] = [
      [base.subarray(0, base.length - 1), "claims 11 bytes, only 10 remain"],
      [Uint8Array.from([...base, 0x40]), "field header at byte 63 is truncated"],
      [withField(base, 0x01, [0x61]), "name field appears twice"],
      [stripField(base, 0x05), "VTEP MAC field is missing"],
      [withField(stripField(base, 0x04), 0x04, [0, 0]), "gossip port 0 is not 1-65535"],
      [withField(stripField(base, 0x06), 0x06, [0, 1]), "VNI field is 2 bytes, expected 3"],
      [withField(stripField(base, 0x01), 0x01, [0x2d, 0x61]), "may contain only letters"],
      [withField(stripField(base, 0x01), 0x01, []), "must not be empty"],
      [withField(stripField(base, 0x05), 0x05, [1, 0, 0, 0, 0, 1]), "VTEP MAC must be unicast"],
      [withField(stripField(base, 0x03), 0x03, [6, ...new Array<number>(16).fill(0)]), "underlay address family 6 is not supported"],
      [withField(stripField(base, 0x08), 0x08, [4, 24, 10, 244, 3, 1]), "host bits set"],
      [withField(stripField(base, 0x08), 0x08, [4, 33, 10, 244, 3, 0]), "prefix length 33 exceeds 32"],
      [withField(stripField(base, 0x08), 0x08, [4, 24, 10, 244, 3]), "truncated"],
      [withField(stripField(base, 0x08), 0x08, [5, 24, 10, 244, 3, 0]), "family 5 is not known"],
      [withField(stripField(base, 0x08), 0x08, [4, 24, 10, 244, 3, 0, 4, 16, 10, 244, 0, 0]), "pod subnets overlap"],
      [withField(stripField(base, 0x09), 0x09, [7, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]), "lease state 7 is not known"],
      [stripField(base, 0x09), "a lease is present exactly when there is a pod subnet"],
    ];
    for (const [bytes, want] of cases) {
      const r = decodeNodeRecord(bytes);
      expect(r.ok, want).toBe(false);
      if (!r.ok) expect(r.error).toContain(want);
    }
  });

  it("refuses to encode an invalid record (a bug of the caller)", () => {
    expect(() => encodeNodeRecord({ ...sample, name: "x".repeat(65) })).toThrow(RangeError);
    expect(() => encodeNodeRecord({ ...sample, lease: null })).toThrow(/lease/);
    expect(() => encodeNodeRecord({ ...sample, vxlanPort: 70000 })).toThrow(/VXLAN port/);
  });
});

/** The value bytes of the first TLV field of one type (test helper; assumes valid input). */
function fieldValue(rec: Uint8Array, type: number): number[] {
  let o = 1;
  while (o < rec.length) {
    const len = rec[o + 1] as number;
    if (rec[o] === type) return Array.from(rec.subarray(o + 2, o + 2 + len));
    o += 2 + len;
  }
  throw new Error(`no field ${type}`);
}

/** Removes every TLV field of one type from an encoded record (test helper; assumes valid input). */
function stripField(rec: Uint8Array, type: number): Uint8Array {
  const out = [rec[0] as number];
  let o = 1;
  while (o < rec.length) {
    const t = rec[o] as number;
    const len = rec[o + 1] as number;
    if (t !== type) out.push(...rec.subarray(o, o + 2 + len));
    o += 2 + len;
  }
  return Uint8Array.from(out);
}
