import { ENVELOPE_OVERHEAD } from "../control/keyring";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Ipv4 } from "../encap/types";
import { DATAGRAM_PAYLOAD_BUDGET, META_MAX_BYTES } from "../control/membership/config";
import type { Address, Message, PushPullEntry, PushPullMsg } from "../control/membership/types";
import {
  decodePacket, decodePushPull, encodePacket, encodePushPull, messageSize, packetSize, pushPullSize,
  streamFrameLength, utf8Length,
} from "../control/membership/wire";

const addressArb: fc.Arbitrary<Address> = fc.record({
  ip: fc.integer({ min: 0, max: 0xffffffff }).map((n) => n as Ipv4),
  port: fc.integer({ min: 0, max: 0xffff }),
});
const nameArb = fc.oneof(
  fc.string({ minLength: 1, maxLength: 30, unit: "grapheme-ascii" }),
  fc.string({ minLength: 1, maxLength: 40, unit: "grapheme" }),
).filter((s) => utf8Length(s) >= 1 && utf8Length(s) <= 255);
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const metaArb = fc.uint8Array({ maxLength: 64 });

const messageArb: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ type: fc.constant("ping" as const), seq: u32, target: nameArb, source: addressArb, sourceName: nameArb }),
  fc.record({
    type: fc.constant("pingReq" as const), seq: u32, target: nameArb, targetAddress: addressArb, nack: fc.boolean(),
    source: addressArb, sourceName: nameArb,
  }),
  fc.record({ type: fc.constant("ack" as const), seq: u32 }),
  fc.record({ type: fc.constant("nack" as const), seq: u32 }),
  fc.record({ type: fc.constant("alive" as const), incarnation: u32, name: nameArb, address: addressArb, meta: metaArb }),
  fc.record({ type: fc.constant("suspect" as const), incarnation: u32, name: nameArb, from: nameArb }),
  fc.record({ type: fc.constant("dead" as const), incarnation: u32, name: nameArb, from: nameArb }),
);
const packetArb = fc.array(messageArb, { minLength: 1, maxLength: 12 });
const entryArb: fc.Arbitrary<PushPullEntry> = fc.record({
  name: nameArb, address: addressArb, meta: metaArb, incarnation: u32,
  state: fc.constantFrom("alive" as const, "suspect" as const, "dead" as const, "left" as const),
});
const pushPullArb: fc.Arbitrary<PushPullMsg> = fc.record({
  type: fc.constant("pushPull" as const), join: fc.boolean(), reply: fc.boolean(),
  members: fc.array(entryArb, { maxLength: 20 }),
});

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

describe("membership wire format", () => {
  it("round-trips random datagrams, and packetSize is the encoded length", () => {
    fc.assert(fc.property(packetArb, (msgs) => {
      const bytes = encodePacket(msgs);
      expect(bytes.length).toBe(packetSize(msgs));
      const d = decodePacket(bytes);
      expect(d).toEqual({ ok: true, value: msgs });
    }), { numRuns: 500 });
  });

  it("round-trips random push-pull frames, and pushPullSize is the encoded length", () => {
    fc.assert(fc.property(pushPullArb, (m) => {
      const bytes = encodePushPull(m);
      expect(bytes.length).toBe(pushPullSize(m));
      expect(streamFrameLength(bytes)).toEqual({ ok: true, value: bytes.length });
      expect(decodePushPull(bytes)).toEqual({ ok: true, value: m });
    }), { numRuns: 300 });
  });

  it("never throws on random bytes", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 1500 }), (b) => {
      const d = decodePacket(b);
      expect(typeof d.ok).toBe("boolean");
      const s = decodePushPull(b);
      expect(typeof s.ok).toBe("boolean");
    }), { numRuns: 2000 });
    // Random bytes behind a valid header reach the message decoders.
    fc.assert(fc.property(fc.integer({ min: 1, max: 255 }), fc.uint8Array({ maxLength: 600 }), (count, body) => {
      const b = new Uint8Array(2 + body.length);
      b[0] = 1;
      b[1] = count;
      b.set(body, 2);
      expect(typeof decodePacket(b).ok).toBe("boolean");
    }), { numRuns: 2000 });
  });

  it("never throws on mutated valid encodings, and rejects or re-encodes them faithfully", () => {
    const mutation = fc.record({
      kind: fc.constantFrom("flip", "truncate", "extend", "splice"),
      at: fc.nat(),
      value: fc.integer({ min: 0, max: 255 }),
      len: fc.integer({ min: 1, max: 8 }),
    });
    const mutate = (bytes: Uint8Array, m: { kind: string; at: number; value: number; len: number }): Uint8Array => {
      const at = bytes.length === 0 ? 0 : m.at % bytes.length;
      switch (m.kind) {
        case "flip": { const c = bytes.slice(); c[at] = m.value; return c; }
        case "truncate": return bytes.slice(0, at);
        case "extend": { const c = new Uint8Array(bytes.length + m.len); c.set(bytes); c.fill(m.value, bytes.length); return c; }
        default: { const c = bytes.slice(); c.copyWithin(at, Math.max(0, at - m.len)); return c; }
      }
    };
    fc.assert(fc.property(packetArb, fc.array(mutation, { minLength: 1, maxLength: 4 }), (msgs, muts) => {
      let b = encodePacket(msgs);
      for (const m of muts) b = mutate(b, m);
      const d = decodePacket(b);
      // Whatever decodes must be a well-formed datagram that encodes back to the same bytes.
      if (d.ok) expect(hex(encodePacket(d.value))).toBe(hex(b));
    }), { numRuns: 2000 });
    fc.assert(fc.property(pushPullArb, fc.array(mutation, { minLength: 1, maxLength: 4 }), (m, muts) => {
      let b = encodePushPull(m);
      for (const x of muts) b = mutate(b, x);
      const d = decodePushPull(b);
      if (d.ok) expect(hex(encodePushPull(d.value))).toBe(hex(b));
    }), { numRuns: 1000 });
  });

  it("pins the byte layout (version 1)", () => {
    const src: Address = { ip: 0xc0000201 as Ipv4, port: 7946 };
    const ping = encodePacket([{ type: "ping", seq: 0x01020304, target: "b", source: src, sourceName: "a" }, { type: "ack", seq: 7 }]);
    expect(hex(ping)).toBe(
      "01" + "02" + // version, count
      "0010" + "01" + "01020304" + "04" + "c0000201" + "1f0a" + "0161" + "0162" + // ping
      "0005" + "03" + "00000007", // ack
    );
    const alive = encodePacket([{ type: "alive", incarnation: 5, name: "n", address: src, meta: new Uint8Array([0xaa, 0xbb]) }]);
    expect(hex(alive)).toBe("0101" + "0012" + "05" + "00000005" + "04c00002011f0a" + "016e" + "0002aabb");
    const pp = encodePushPull({ type: "pushPull", join: true, reply: false, members: [{ name: "n", address: src, meta: new Uint8Array(0), incarnation: 2, state: "left" }] });
    expect(hex(pp)).toBe("00000017" + "01" + "10" + "01" + "00000001" + "03" + "00000002" + "04c00002011f0a" + "016e" + "0000");
  });

  it("rejects what is not exactly ours, with a reason", () => {
    const src: Address = { ip: 1 as Ipv4, port: 2 };
    const good = encodePacket([{ type: "dead", incarnation: 1, name: "x", from: "y" }]);
    const cases: [string, Uint8Array][] = [
      ["empty", new Uint8Array(0)],
      ["version", Uint8Array.from([2, ...good.slice(1)])],
      ["no messages", Uint8Array.from([1, 0])],
      ["trailing", Uint8Array.from([...good, 0])],
      ["count too high", Uint8Array.from([1, 2, ...good.slice(2)])],
      ["unknown type", Uint8Array.from([1, 1, 0, 5, 99, 0, 0, 0, 0])],
      ["empty name", Uint8Array.from([1, 1, 0, 8, 7, 0, 0, 0, 1, 0, 1, 0x79])],
      ["bad utf-8", Uint8Array.from([1, 1, 0, 9, 7, 0, 0, 0, 1, 1, 0xff, 1, 0x79])],
      ["family 6", (() => { const b = encodePacket([{ type: "alive", incarnation: 1, name: "x", address: src, meta: new Uint8Array(0) }]); b[9] = 6; return b; })()],
      ["reserved flags", (() => { const b = encodePacket([{ type: "pingReq", seq: 1, target: "t", targetAddress: src, nack: true, source: src, sourceName: "s" }]); b[9] = 3; return b; })()],
    ];
    for (const [what, bytes] of cases) {
      const d = decodePacket(bytes);
      expect(d.ok, what).toBe(false);
      if (!d.ok) expect(d.error.length, what).toBeGreaterThan(0);
    }
    // Meta beyond the maximum is refused on both sides.
    expect(() => encodePacket([{ type: "alive", incarnation: 1, name: "x", address: src, meta: new Uint8Array(META_MAX_BYTES + 1) }])).toThrow();
    const frame = encodePushPull({ type: "pushPull", join: false, reply: false, members: [] });
    expect(decodePushPull(frame).ok).toBe(true);
    const huge = Uint8Array.from([0xff, 0xff, 0xff, 0xff]);
    expect(streamFrameLength(huge).ok).toBe(false);
    expect(streamFrameLength(frame.slice(0, 3))).toEqual({ ok: true, value: null });
    const lying = frame.slice();
    lying[10] = 200; // claims 200 members in a frame with room for none
    expect(decodePushPull(lying).ok).toBe(false);
  });

  it("fits the largest alive in one datagram within the budget left by the keyring's envelope", () => {
    const big: Message = {
      type: "alive", incarnation: 0xffffffff, name: "x".repeat(255), address: { ip: 1 as Ipv4, port: 1 },
      meta: new Uint8Array(META_MAX_BYTES),
    };
    expect(packetSize([big])).toBeLessThanOrEqual(DATAGRAM_PAYLOAD_BUDGET);
    expect(DATAGRAM_PAYLOAD_BUDGET).toBe(1400 - ENVELOPE_OVERHEAD);
    expect(ENVELOPE_OVERHEAD).toBe(33);
    expect(messageSize({ type: "ack", seq: 1 })).toBe(5);
  });
});
