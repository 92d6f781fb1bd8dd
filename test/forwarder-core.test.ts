import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { COUNTER_COUNT, Counter, totalDrops } from "../encap/counters";
import { ForwardingTable, type Peer } from "../encap/fdb";
import { ForwarderCore, TRUNCATED } from "../encap/forwarder-core";
import { ipv4Src } from "../encap/frame";
import { parseSubnet, vtepMacFor, writeMac, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";
import { VXLAN_HEADER_LEN, checkVxlan, VxlanVerdict, writeVxlanHeader } from "../encap/vxlan";

function subnet(text: string): Subnet {
  const s = parseSubnet(text);
  if (!s.ok) throw new Error(s.error);
  return s.value;
}

const VNI = 42 as Vni;
const PORT = 4789;
const LOCAL_MAC = vtepMacFor("local");
const peers: Peer[] = [
  { name: "n2", underlayIp: 0xc000020c as Ipv4, subnet: subnet("10.244.2.0/24"), vtepMac: vtepMacFor("n2"), path: "vxlan" },
  { name: "n3", underlayIp: 0xc000020d as Ipv4, subnet: subnet("10.244.3.0/24"), vtepMac: vtepMacFor("n3"), path: "vxlan" },
];

function makeCore(batch = 32, sourcePorts = 1): ForwarderCore {
  const built = ForwardingTable.build(peers);
  if (!built.ok) throw new Error(built.error);
  return new ForwarderCore({ vni: VNI, port: PORT, mtu: 1450, batch, sourcePorts }, built.table, new Float64Array(COUNTER_COUNT));
}

/** An Ethernet + IPv4 frame (payload zeros) from `src` to `dst`. */
function ipv4Frame(dstMac: MacAddr, srcMac: MacAddr, src: number, dst: number, payload = 8): Uint8Array {
  const f = new Uint8Array(14 + 20 + payload);
  writeMac(f, 0, dstMac);
  writeMac(f, 6, srcMac);
  f[12] = 0x08; f[13] = 0x00;
  f[14] = 0x45;
  const total = 20 + payload;
  f[16] = total >> 8; f[17] = total & 0xff;
  f[22] = 64; f[23] = 17;
  new DataView(f.buffer).setUint32(26, src);
  new DataView(f.buffer).setUint32(30, dst);
  return f;
}

function goodDatagram(peer: Peer, srcHost: number): Uint8Array {
  const frame = ipv4Frame(LOCAL_MAC, peer.vtepMac, peer.subnet.network + srcHost, 0x0af40105);
  const d = new Uint8Array(VXLAN_HEADER_LEN + frame.length);
  writeVxlanHeader(d, 0, VNI);
  d.set(frame, VXLAN_HEADER_LEN);
  return d;
}

function loadUdp(core: ForwarderCore, datagrams: { bytes: Uint8Array; src: number; truncated?: boolean }[]): void {
  datagrams.forEach((d, i) => {
    const n = Math.min(d.bytes.length, core.udpStride);
    core.udpSlab.set(d.bytes.subarray(0, n), i * core.udpStride);
    core.udpLens[i] = d.truncated ? TRUNCATED : n;
    core.udpSrcIps[i] = d.src;
    core.udpSrcPorts[i] = 40000;
  });
}

describe("forwarder core: underlay → TAP", () => {
  it("accepts our traffic in place, pointing at the inner frame", () => {
    const core = makeCore();
    const d = goodDatagram(peers[0]!, 7);
    loadUdp(core, [{ bytes: d, src: peers[0]!.underlayIp }]);
    expect(core.decapsulate(1)).toBe(1);
    expect(core.writeOffs[0]).toBe(VXLAN_HEADER_LEN);
    expect(core.writeLens[0]).toBe(d.length - VXLAN_HEADER_LEN);
    expect(totalDrops(core.counters)).toBe(0);
  });

  it("drops each kind of bad datagram under its own reason", () => {
    const core = makeCore();
    const p = peers[0]!;
    const good = goodDatagram(p, 9);
    const mutate = (fn: (b: Uint8Array) => void): Uint8Array => { const b = good.slice(); fn(b); return b; };
    const cases: [Uint8Array, number, Counter, boolean?][] = [
      [good.subarray(0, 20), p.underlayIp, Counter.DropRunt],
      [mutate((b) => { b[0] = 0; }), p.underlayIp, Counter.DropMissingIFlag],
      [mutate((b) => { b[3] = 1; }), p.underlayIp, Counter.DropReservedBits],
      [mutate((b) => { b[6] = 43; }), p.underlayIp, Counter.DropWrongVni],
      [good, 0xc0000263, Counter.DropUnknownVtep],
      [good, peers[1]!.underlayIp, Counter.DropSpoofedSource],
      [mutate((b) => { b[8 + 12] = 0x86; b[8 + 13] = 0xdd; }), p.underlayIp, Counter.DropUnsupportedInner],
      [good.subarray(0, 8 + 14 + 10), p.underlayIp, Counter.DropRunt],
      [good, p.underlayIp, Counter.DropTruncated, true],
    ];
    loadUdp(core, cases.map(([bytes, src, , truncated]) => ({ bytes, src, truncated: truncated ?? false })));
    expect(core.decapsulate(cases.length)).toBe(0);
    const expected = new Map<Counter, number>();
    for (const [, , reason] of cases) expected.set(reason, (expected.get(reason) ?? 0) + 1);
    for (const [reason, n] of expected) expect(core.counters[reason], Counter[reason]).toBe(n);
    expect(totalDrops(core.counters)).toBe(cases.length);
  });

  it("never throws on random or mutated datagrams, and accounts for every one", () => {
    const core = makeCore(64);
    const datagram = fc.oneof(
      fc.uint8Array({ minLength: 0, maxLength: 1600 }),
      fc.tuple(fc.constantFrom(0, 1), fc.integer({ min: 1, max: 250 }), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 6 }), fc.nat(64))
        .map(([pi, host, flips, cut]) => {
          const b = goodDatagram(peers[pi]!, host);
          for (const [pos, val] of flips) b[pos % b.length] = val;
          return b.subarray(0, Math.max(0, b.length - cut));
        }),
    );
    const source = fc.constantFrom(peers[0]!.underlayIp, peers[1]!.underlayIp, 0xc0000263, 0);
    fc.assert(fc.property(fc.array(fc.tuple(datagram, source), { minLength: 1, maxLength: 64 }), (batch) => {
      core.counters.fill(0);
      loadUdp(core, batch.map(([bytes, src]) => ({ bytes, src })));
      const accepted = core.decapsulate(batch.length);
      expect(accepted + totalDrops(core.counters)).toBe(batch.length);
      expect(core.counters[Counter.UdpRxDatagrams]).toBe(batch.length);
      for (let k = 0; k < accepted; k++) {
        // Whatever got through is exactly ours: valid header and VNI, a known peer, a source
        // inside that peer's subnet.
        const frameOff = core.writeOffs[k]!;
        const slot = frameOff - VXLAN_HEADER_LEN;
        const i = slot / core.udpStride;
        expect(checkVxlan(core.udpSlab, slot, core.udpLens[i]!, VNI)).toBe(VxlanVerdict.Ok);
        const entry = core.table.byUnderlayIp(core.udpSrcIps[i]!);
        expect(entry).toBeDefined();
        expect(((ipv4Src(core.udpSlab, frameOff) & entry!.mask) >>> 0)).toBe(entry!.network);
      }
    }), { numRuns: 300 });
  });
});

describe("forwarder core: TAP → underlay", () => {
  function loadTap(core: ForwarderCore, frames: Uint8Array[]): void {
    frames.forEach((f, i) => {
      core.tapSlab.set(f, i * core.tapStride + VXLAN_HEADER_LEN);
      core.tapLens[i] = f.length;
    });
  }

  it("encapsulates in place toward the peer that owns the destination MAC", () => {
    const core = makeCore();
    const f = ipv4Frame(peers[1]!.vtepMac, LOCAL_MAC, 0x0af40105, 0x0af40307, 100);
    loadTap(core, [f]);
    expect(core.encapsulate(1)).toBe(1);
    const q = core.sendQueues[0]!;
    expect(q.count).toBe(1);
    expect(q.offs[0]).toBe(0);
    expect(q.lens[0]).toBe(f.length + VXLAN_HEADER_LEN);
    expect(q.ips[0]).toBe(peers[1]!.underlayIp);
    expect(q.ports[0]).toBe(PORT);
    expect(Buffer.from(core.tapSlab.subarray(0, 8)).toString("hex")).toBe("080000000000" + "2a00");
    expect(Buffer.from(core.tapSlab.subarray(8, 8 + f.length))).toEqual(Buffer.from(f));
  });

  it("drops broadcast, unknown destinations and oversize frames, counted", () => {
    const core = makeCore();
    const bcast = ipv4Frame(0xffffffffffff as MacAddr, LOCAL_MAC, 1, 2);
    const unknown = ipv4Frame(vtepMacFor("nobody"), LOCAL_MAC, 1, 2);
    const huge = ipv4Frame(peers[0]!.vtepMac, LOCAL_MAC, 1, 2, 1500);
    const ok = ipv4Frame(peers[0]!.vtepMac, LOCAL_MAC, 1, 2);
    loadTap(core, [bcast, unknown, huge, ok]);
    expect(core.encapsulate(4)).toBe(1);
    expect(core.sendQueues[0]!.offs[0]).toBe(3 * core.tapStride);
    expect(core.counters[Counter.DropGroupDestination]).toBe(1);
    expect(core.counters[Counter.DropNoRoute]).toBe(1);
    expect(core.counters[Counter.DropTruncated]).toBe(1);
  });
});

describe("forwarder core: source ports", () => {
  it("keeps each inner flow on one source socket and spreads flows over the sockets", () => {
    const core = makeCore(64, 8);
    const frames: Uint8Array[] = [];
    for (let flow = 0; flow < 32; flow++) {
      for (let rep = 0; rep < 2; rep++) {
        const f = ipv4Frame(peers[0]!.vtepMac, LOCAL_MAC, 0x0af40100 + flow, 0x0af40207, 20);
        f[34] = flow; f[36] = 0x17; // UDP source port varies per flow
        frames.push(f);
      }
    }
    frames.forEach((f, i) => { core.tapSlab.set(f, i * core.tapStride + VXLAN_HEADER_LEN); core.tapLens[i] = f.length; });
    expect(core.encapsulate(frames.length)).toBe(frames.length);
    const queueOfSlot = new Map<number, number>();
    core.sendQueues.forEach((q, qi) => { for (let k = 0; k < q.count; k++) queueOfSlot.set(q.offs[k]!, qi); });
    for (let flow = 0; flow < 32; flow++) {
      expect(queueOfSlot.get(2 * flow * core.tapStride)).toBe(queueOfSlot.get((2 * flow + 1) * core.tapStride));
    }
    expect(core.sendQueues.filter((q) => q.count > 0).length).toBeGreaterThanOrEqual(6);
  });
});

describe("forwarding table", () => {
  it("refuses ambiguous tables", () => {
    expect(ForwardingTable.build([peers[0]!, { ...peers[1]!, vtepMac: peers[0]!.vtepMac }]).ok).toBe(false);
    expect(ForwardingTable.build([peers[0]!, { ...peers[1]!, underlayIp: peers[0]!.underlayIp }]).ok).toBe(false);
  });
});
