import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { VXLAN_HEADER_LEN, VxlanVerdict, checkVxlan, readVni, writeVxlanHeader } from "../encap/vxlan";
import type { Vni } from "../encap/types";

const vniArb = fc.integer({ min: 0, max: 0xffffff }).map((n) => n as Vni);

describe("VXLAN header codec (RFC 7348)", () => {
  it("writes the I flag, the VNI and zero reserved bits, and reads the VNI back", () => {
    fc.assert(fc.property(vniArb, fc.integer({ min: 0, max: 32 }), (vni, off) => {
      const buf = new Uint8Array(off + VXLAN_HEADER_LEN + 14).fill(0xff);
      writeVxlanHeader(buf, off, vni);
      expect(buf[off]).toBe(0x08);
      expect([buf[off + 1], buf[off + 2], buf[off + 3], buf[off + 7]]).toEqual([0, 0, 0, 0]);
      expect(readVni(buf, off)).toBe(vni);
      expect(checkVxlan(buf, off, VXLAN_HEADER_LEN + 14, vni)).toBe(VxlanVerdict.Ok);
    }));
  });

  it("matches the RFC's byte layout for VNI 0x123456", () => {
    const buf = new Uint8Array(8);
    writeVxlanHeader(buf, 0, 0x123456 as Vni);
    expect(Buffer.from(buf).toString("hex")).toBe("0800000012345600");
  });

  it("rejects runts, a missing I flag, any reserved bit and a foreign VNI", () => {
    const good = new Uint8Array(VXLAN_HEADER_LEN + 14);
    writeVxlanHeader(good, 0, 7 as Vni);
    expect(checkVxlan(good, 0, VXLAN_HEADER_LEN + 13, 7 as Vni)).toBe(VxlanVerdict.Runt);
    expect(checkVxlan(good, 0, good.length, 8 as Vni)).toBe(VxlanVerdict.WrongVni);
    const noI = good.slice();
    noI[0] = 0;
    expect(checkVxlan(noI, 0, good.length, 7 as Vni)).toBe(VxlanVerdict.MissingIFlag);
    for (const [byte, bit] of [[0, 0x80], [0, 0x01], [1, 1], [2, 0x40], [3, 0x10], [7, 0x02]] as const) {
      const bad = good.slice();
      bad[byte] = (bad[byte] as number) | bit;
      expect(checkVxlan(bad, 0, good.length, 7 as Vni), `byte ${byte} bit ${bit}`).toBe(VxlanVerdict.ReservedBits);
    }
  });
});
