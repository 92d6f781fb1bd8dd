import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  formatIpv4, formatMac, formatSubnet, parseIpv4, parseMac, parseSubnet, parseVni, readMac,
  subnetContains, subnetsOverlap, vtepMacFor, writeMac, type MacAddr,
} from "../encap/types";

describe("value types", () => {
  it("round-trips IPv4 addresses", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => {
      const r = parseIpv4(formatIpv4(n));
      expect(r.ok && r.value).toBe(n);
    }));
    expect(parseIpv4("192.0.2.1")).toEqual({ ok: true, value: 0xc0000201 });
    for (const bad of ["192.0.2", "256.0.0.1", "01.2.3.4", "a.b.c.d", "1.2.3.4 "]) expect(parseIpv4(bad).ok, bad).toBe(false);
  });

  it("parses subnets strictly and answers containment and overlap", () => {
    const s = parseSubnet("10.244.1.0/24");
    expect(s.ok).toBe(true);
    if (!s.ok) return;
    expect(formatSubnet(s.value)).toBe("10.244.1.0/24");
    expect(subnetContains(s.value, 0x0af401ff)).toBe(true);
    expect(subnetContains(s.value, 0x0af40200)).toBe(false);
    const bad = parseSubnet("10.244.1.5/24");
    expect(bad.ok).toBe(false);
    if (!bad.ok) expect(bad.error).toContain("10.244.1.0/24");
    expect(parseSubnet("10.244.0.0/33").ok).toBe(false);
    const wide = parseSubnet("10.244.0.0/16");
    if (wide.ok) expect(subnetsOverlap(wide.value, s.value)).toBe(true);
  });

  it("round-trips MAC addresses and refuses group addresses", () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 6, maxLength: 6 }), (bytes) => {
      bytes[0] = (bytes[0] as number) & 0xfe;
      const mac = readMac(bytes, 0);
      if (mac === 0) return;
      const text = formatMac(mac);
      const parsed = parseMac(text);
      expect(parsed.ok && parsed.value).toBe(mac);
      const out = new Uint8Array(6);
      writeMac(out, 0, mac as MacAddr);
      expect(Array.from(out)).toEqual(Array.from(bytes));
    }));
    expect(parseMac("01:00:5e:00:00:01").ok).toBe(false);
  });

  it("derives stable, locally administered unicast VTEP MACs", () => {
    const a = vtepMacFor("node-a");
    expect(vtepMacFor("node-a")).toBe(a);
    expect(vtepMacFor("node-b")).not.toBe(a);
    const first = parseInt(formatMac(a).slice(0, 2), 16);
    expect(first & 0x03).toBe(0x02);
  });

  it("bounds the VNI", () => {
    expect(parseVni("16777215").ok).toBe(true);
    expect(parseVni("16777216").ok).toBe(false);
    expect(parseVni("-1").ok).toBe(false);
  });
});
