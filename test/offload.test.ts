import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { readU16, readU32 } from "../encap/bytes";
import { pseudoHeaderSum, sumJs } from "../encap/checksum";
import { Counter, newCounterView, snapshotPeerTraffic, totalDrops } from "../encap/counters";
import { ForwardingTable, type Peer } from "../encap/fdb";
import { loadNative } from "../encap/native";
import {
  VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN,
  partialChecksumFits, readVnetHeader, writeVnetHeader, type VnetHeader,
} from "../encap/offload";
import type { SendQueue } from "../encap/forwarder-core";
import { OffloadCore } from "../encap/offload-core";
import { VIRTIO_NET_HDR_GSO_UDP_L4 } from "../encap/udp-coalescer";
import { parseSubnet, vtepMacFor, writeMac, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";

const native = loadNative();
const sum = native.checksum;

function subnet(text: string): Subnet {
  const s = parseSubnet(text);
  if (!s.ok) throw new Error(s.error);
  return s.value;
}

const VNI = 7 as Vni;
const LOCAL_MAC = vtepMacFor("local");
const PEER: Peer = { name: "n2", underlayIp: 0xc000020c as Ipv4, subnet: subnet("10.244.2.0/24"), vtepMac: vtepMacFor("n2"), path: "vxlan" };
const SRC = 0x0af40205; // 10.244.2.5, inside the peer's subnet
const DST = 0x0af40107;

/** The round trip's receiver: it hears the segments from a peer owning the sender's subnet. */
const MIRROR: Peer = { ...PEER, name: "n1", subnet: subnet("10.244.1.0/24"), vtepMac: vtepMacFor("n1") };

/** The peer's traffic counter slot. */
const PEER_SLOT = 3;

function makeCore(peer: Peer = PEER): OffloadCore {
  const built = ForwardingTable.build([peer], [PEER_SLOT]);
  if (!built.ok) throw new Error(built.error);
  return new OffloadCore({ vni: VNI, port: 4789, mtu: 1450, tapBatch: 4, rxBatch: 4, sourcePorts: 1 }, built.table,
    newCounterView(), native.checksumMany);
}

/** Ethernet + IPv4 + TCP (with 12 bytes of options) + payload; checksums valid. */
function tcpFrame(dstMac: MacAddr, srcMac: MacAddr, src: number, dst: number, seq: number, flags: number, payload: Uint8Array): Uint8Array {
  const thl = 32;
  const f = new Uint8Array(14 + 20 + thl + payload.length);
  const dv = new DataView(f.buffer);
  writeMac(f, 0, dstMac);
  writeMac(f, 6, srcMac);
  dv.setUint16(12, 0x0800);
  f[14] = 0x45;
  dv.setUint16(16, 20 + thl + payload.length);
  dv.setUint16(18, 0x1234);
  dv.setUint16(20, 0x4000); // DF
  f[22] = 64;
  f[23] = 6;
  dv.setUint32(26, src);
  dv.setUint32(30, dst);
  const ipSum = sumJs(f, 14, 20, 0);
  dv.setUint16(24, ~ipSum & 0xffff);
  const t = 34;
  dv.setUint16(t, 40000);
  dv.setUint16(t + 2, 5201);
  dv.setUint32(t + 4, seq >>> 0);
  dv.setUint32(t + 8, 0xabcdef01);
  f[t + 12] = (thl / 4) << 4;
  f[t + 13] = flags;
  dv.setUint16(t + 14, 501);
  f.set([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], t + 20); // NOP NOP timestamps
  f.set(payload, t + thl);
  const s = sumJs(f, t, thl + payload.length, pseudoHeaderSum(f, 14, 6, thl + payload.length));
  dv.setUint16(t + 16, ~s & 0xffff);
  return f;
}

/** Ethernet + IPv4 + UDP + payload; checksums valid; DF as given (else the id matters). */
function udpFrame(dstMac: MacAddr, srcMac: MacAddr, src: number, dst: number, id: number, srcPort: number, payload: Uint8Array, df = true): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + payload.length);
  const dv = new DataView(f.buffer);
  writeMac(f, 0, dstMac);
  writeMac(f, 6, srcMac);
  dv.setUint16(12, 0x0800);
  f[14] = 0x45;
  dv.setUint16(16, 28 + payload.length);
  dv.setUint16(18, id & 0xffff);
  dv.setUint16(20, df ? 0x4000 : 0);
  f[22] = 64;
  f[23] = 17;
  dv.setUint32(26, src);
  dv.setUint32(30, dst);
  dv.setUint16(24, ~sumJs(f, 14, 20, 0) & 0xffff);
  dv.setUint16(34, srcPort);
  dv.setUint16(36, 5001);
  dv.setUint16(38, 8 + payload.length);
  f.set(payload, 42);
  const s = ~sumJs(f, 34, 8 + payload.length, pseudoHeaderSum(f, 14, 17, 8 + payload.length)) & 0xffff;
  dv.setUint16(40, s === 0 ? 0xffff : s);
  return f;
}

/**
 * What the kernel does with a GSO_UDP_L4 frame before a pod sees it: one datagram per gsoSize
 * of payload, each with the headers, its own lengths, the next IP id and fresh checksums.
 */
function segmentUdpLikeKernel(frame: Uint8Array, gsoSize: number): Uint8Array[] {
  const payload = frame.subarray(42);
  const id0 = readU16(frame, 18);
  const out: Uint8Array[] = [];
  for (let o = 0, k = 0; o < payload.length; o += gsoSize, k++) {
    const chunk = payload.subarray(o, Math.min(payload.length, o + gsoSize));
    const f = new Uint8Array(42 + chunk.length);
    f.set(frame.subarray(0, 42));
    f.set(chunk, 42);
    const dv = new DataView(f.buffer);
    dv.setUint16(16, 28 + chunk.length);
    dv.setUint16(18, (id0 + k) & 0xffff);
    dv.setUint16(24, 0);
    dv.setUint16(24, ~sumJs(f, 14, 20, 0) & 0xffff);
    dv.setUint16(38, 8 + chunk.length);
    dv.setUint16(40, 0);
    const s = ~sumJs(f, 34, 8 + chunk.length, pseudoHeaderSum(f, 14, 17, 8 + chunk.length)) & 0xffff;
    dv.setUint16(40, s === 0 ? 0xffff : s);
    out.push(f);
  }
  return out;
}

function tcpChecksumOk(buf: Uint8Array, frame: number, len: number): boolean {
  const l4 = len - 34;
  return sumJs(buf, frame + 34, l4, pseudoHeaderSum(buf, frame + 14, 6, l4)) === 0xffff;
}

function ipChecksumOk(buf: Uint8Array, frame: number): boolean {
  return sumJs(buf, frame + 14, 20, 0) === 0xffff;
}

describe("native checksum", () => {
  it("checksumMany equals one checksum per span", () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 1, maxLength: 4000 }), fc.array(fc.tuple(fc.nat(), fc.nat(), fc.nat(0x1ffff)), { maxLength: 40 }),
      (bytes, raw) => {
        const spans = raw.map(([a, b, initial]) => {
          const off = a % bytes.length;
          return { off, len: b % (bytes.length - off + 1), initial };
        });
        const offs = Uint32Array.from(spans, (x) => x.off);
        const lens = Uint32Array.from(spans, (x) => x.len);
        const sums = Uint32Array.from(spans, (x) => x.initial);
        native.checksumMany(bytes, offs, lens, sums, spans.length);
        expect(Array.from(sums)).toEqual(spans.map((x) => sumJs(bytes, x.off, x.len, x.initial)));
      }), { numRuns: 300 });
    expect(() => native.checksumMany(new Uint8Array(10), Uint32Array.of(8), Uint32Array.of(4), new Uint32Array(1), 1)).toThrow(/overruns/);
  });

  it("equals the RFC 1071 reference for any span and initial value", () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: 3000 }), fc.nat(40), fc.nat(0xffff), (bytes, skip, initial) => {
      const off = Math.min(skip, bytes.length);
      expect(sum(bytes, off, bytes.length - off, initial)).toBe(sumJs(bytes, off, bytes.length - off, initial));
    }), { numRuns: 500 });
  });
});

describe("fast path: segmentation and coalescing", () => {
  it("cuts a TSO super-frame into valid segments and merges them back byte-exact", () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 65535 - 20 - 32 }), fc.integer({ min: 536, max: 1398 }), fc.nat(0xffffffff), fc.boolean(),
      (payloadLen, mss, seq, psh) => {
        const core = makeCore();
        const payload = new Uint8Array(payloadLen);
        for (let i = 0; i < payloadLen; i++) payload[i] = (i * 131 + (i >> 8)) & 0xff;
        const flags = 0x10 | (psh ? 0x08 : 0);
        const frame = tcpFrame(PEER.vtepMac, LOCAL_MAC, DST, SRC, seq, flags, payload);
        // The kernel's TSO frame: partial TCP checksum, NEEDS_CSUM, GSO TCPv4.
        const slot = core.tapBase;
        writeVnetHeader(core.slab, slot, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, mss, 34, 16);
        core.slab.set(frame, slot + VNET_HDR_LEN);
        core.tapLens[0] = frame.length + VNET_HDR_LEN;
        const entries = core.encapsulate(1);
        expect(totalDrops(core.counters)).toBe(0);
        const q = core.sendQueues[0] as SendQueue;
        expect(q.count).toBe(entries);

        // What the kernel would put on the wire: every entry cut at its segment size.
        const datagrams: Uint8Array[] = [];
        for (let e = 0; e < q.count; e++) {
          const seg = q.segSizes[e] || q.lens[e]!;
          for (let o = 0; o < q.lens[e]!; o += seg) {
            datagrams.push(core.slab.slice(q.offs[e]! + o, q.offs[e]! + Math.min(q.lens[e]!, o + seg)));
          }
        }
        expect(datagrams.length).toBe(Math.ceil(payloadLen / mss));
        let reassembled = 0;
        datagrams.forEach((d, k) => {
          expect(d.length).toBeLessThanOrEqual(8 + 66 + mss);
          expect(Array.from(d.subarray(0, 8))).toEqual([8, 0, 0, 0, 0, 0, 7, 0]);
          expect(ipChecksumOk(d, 8)).toBe(true);
          expect(tcpChecksumOk(d, 8, d.length - 8)).toBe(true);
          expect(readU32(d, 8 + 34 + 4)).toBe((seq + k * mss) >>> 0);
          expect(readU16(d, 8 + 18)).toBe((0x1234 + k) & 0xffff);
          const last = k === datagrams.length - 1;
          expect(d[8 + 34 + 13]).toBe(last ? flags : 0x10);
          const chunk = d.subarray(8 + 66);
          expect(Array.from(chunk.subarray(0, 16))).toEqual(Array.from(payload.subarray(reassembled, reassembled + 16)));
          reassembled += chunk.length;
        });
        expect(reassembled).toBe(payloadLen);
        // Per peer, each segment is a frame and its inner bytes count (not the VXLAN header).
        const innerBytes = datagrams.reduce((a, d) => a + d.length - 8, 0);
        expect(snapshotPeerTraffic(core.counters, PEER_SLOT)).toEqual({ txFrames: datagrams.length, txBytes: innerBytes, rxFrames: 0, rxBytes: 0 });

        // Receive them as one UDP_GRO run (all but the last are the same size), as the peer
        // would; they merge back into one super-frame.
        const rx = makeCore(MIRROR);
        const base = rx.rxBase;
        let o = 0;
        for (const d of datagrams) { rx.slab.set(d, base + o); o += d.length; }
        rx.rxLens[0] = o;
        rx.rxSegSizes[0] = datagrams.length > 1 ? datagrams[0]!.length : 0;
        rx.rxSrcIps[0] = PEER.underlayIp;
        const frames = rx.decapsulate(1);
        expect(totalDrops(rx.counters)).toBe(0);
        expect(frames).toBe(1);
        expect(snapshotPeerTraffic(rx.counters, PEER_SLOT)).toEqual({ txFrames: 0, txBytes: 0, rxFrames: datagrams.length, rxBytes: innerBytes });
        const off = rx.writeOffs[0]!;
        const len = rx.writeLens[0]!;
        expect(len).toBe(frame.length);
        const vh: VnetHeader = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
        readVnetHeader(rx.writeHdrs, 0, vh);
        const out = rx.slab.slice(off, off + len);
        expect(Buffer.from(out.subarray(34 + 32))).toEqual(Buffer.from(payload));
        expect(readU32(out, 34 + 4)).toBe(seq >>> 0);
        expect(readU16(out, 16)).toBe(20 + 32 + payloadLen);
        expect(ipChecksumOk(out, 0)).toBe(true);
        if (datagrams.length === 1) {
          expect(vh.gsoType).toBe(VIRTIO_NET_HDR_GSO_NONE);
          expect(tcpChecksumOk(out, 0, len)).toBe(true);
        } else {
          expect(vh).toEqual({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, hdrLen: 66, gsoSize: mss, csumStart: 34, csumOffset: 16 });
          expect(out[34 + 13]).toBe(flags);
          // NEEDS_CSUM: the field holds the pseudo-header sum the kernel finishes.
          expect(readU16(out, 34 + 16)).toBe(pseudoHeaderSum(out, 14, 6, len - 34));
          expect(rx.counters[Counter.TapTxSuperFrames]).toBe(1);
        }
      }), { numRuns: 60 });
  });

  it("does not merge across a gap, another flow, or a segment with a bad checksum", () => {
    const payload = new Uint8Array(1000).fill(0x5a);
    const seg = (seq: number, srcPort = 40000, corrupt = false): Uint8Array => {
      const f = tcpFrame(LOCAL_MAC, PEER.vtepMac, SRC, DST, seq, 0x10, payload);
      if (srcPort !== 40000) { f[34] = srcPort >> 8; f[35] = srcPort & 0xff; f[34 + 16]! ^= 0; }
      if (corrupt) f[200] = (f[200]! ^ 0xff);
      const d = new Uint8Array(8 + f.length);
      d.set([8, 0, 0, 0, 0, 0, 7, 0]);
      d.set(f, 8);
      return d;
    };
    const cases: [string, Uint8Array[], number][] = [
      ["contiguous", [seg(0), seg(1000), seg(2000)], 1],
      ["gap", [seg(0), seg(1000), seg(3000)], 2],
      ["bad checksum in the middle", [seg(0), seg(1000, 40000, true), seg(2000)], 3],
    ];
    for (const [name, dgrams, expected] of cases) {
      const rx = makeCore();
      let o = 0;
      for (const d of dgrams) { rx.slab.set(d, rx.rxBase + o); o += d.length; }
      rx.rxLens[0] = o;
      rx.rxSegSizes[0] = dgrams[0]!.length;
      rx.rxSrcIps[0] = PEER.underlayIp;
      expect(rx.decapsulate(1), name).toBe(expected);
      expect(totalDrops(rx.counters), name).toBe(0);
    }
  });

  it("sends equal-size plain frames to one peer as UDP_SEGMENT runs and merges a UDP flow back into GSO_UDP_L4 frames the kernel cuts byte-exact", () => {
    const frameArb = fc.record({
      size: fc.constantFrom(18, 18, 18, 18, 1372, 1372, 700, 5),
      flow: fc.constantFrom(40001, 40001, 40001, 40002),
      toPeer: fc.constantFrom(true, true, true, true, true, false),
      df: fc.constantFrom(true, true, true, false),
    });
    fc.assert(fc.property(fc.array(frameArb, { minLength: 1, maxLength: 64 }), (specs) => {
      const other: Peer = { ...PEER, name: "n3", underlayIp: 0xc000020d as Ipv4, subnet: subnet("10.244.3.0/24"), vtepMac: vtepMacFor("n3") };
      const built = ForwardingTable.build([PEER, other]);
      if (!built.ok) throw new Error(built.error);
      const tx = new OffloadCore({ vni: VNI, port: 4789, mtu: 1450, tapBatch: 64, rxBatch: 64, sourcePorts: 1 }, built.table, newCounterView(), native.checksumMany);
      const frames = specs.map((sp, i) => {
        const payload = new Uint8Array(sp.size).map((_, j) => (i * 7 + j) & 0xff);
        return udpFrame(sp.toPeer ? PEER.vtepMac : other.vtepMac, LOCAL_MAC, DST, SRC, 100 + i, sp.flow, payload, sp.df);
      });
      frames.forEach((f, i) => {
        const slot = tx.tapBase + i * tx.tapStride;
        writeVnetHeader(tx.slab, slot, 0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0);
        tx.slab.set(f, slot + VNET_HDR_LEN);
        tx.tapLens[i] = f.length + VNET_HDR_LEN;
      });
      tx.encapsulate(frames.length);
      expect(totalDrops(tx.counters)).toBe(0);
      const q = tx.sendQueues[0] as SendQueue;

      // On the wire, in order per peer: VXLAN header + the frame, untouched.
      const wire: { ip: number; d: Uint8Array }[] = [];
      for (let e = 0; e < q.count; e++) {
        const seg = q.segSizes[e] || q.lens[e]!;
        for (let o = 0; o < q.lens[e]!; o += seg) {
          if (o + seg < q.lens[e]!) expect(q.lens[e]! - o).toBeGreaterThanOrEqual(seg);
          wire.push({ ip: q.ips[e]!, d: tx.slab.slice(q.offs[e]! + o, q.offs[e]! + Math.min(q.lens[e]!, o + seg)) });
        }
      }
      const expected = frames.map((f, i) => ({ ip: specs[i]!.toPeer ? PEER.underlayIp : other.underlayIp, f }));
      expect(wire.map((w) => w.ip)).toEqual(expected.map((x) => x.ip));
      wire.forEach((w, i) => {
        expect(Array.from(w.d.subarray(0, 8))).toEqual([8, 0, 0, 0, 0, 0, 7, 0]);
        expect(Buffer.from(w.d.subarray(8))).toEqual(Buffer.from(expected[i]!.f));
      });
      // Runs only where sizes allow: fewer sends than frames exactly when two neighbours match.
      const runs = q.count;
      expect(runs).toBeLessThanOrEqual(frames.length);

      // The peer receives the entries to it as UDP_GRO runs and writes merged frames; cut as
      // the kernel cuts them, they are the datagrams that were sent (ids aside where DF is set).
      const mirror = ForwardingTable.build([MIRROR]);
      if (!mirror.ok) throw new Error(mirror.error);
      const rx = new OffloadCore({ vni: VNI, port: 4789, mtu: 1450, tapBatch: 1, rxBatch: 64, sourcePorts: 1 }, mirror.table, newCounterView(), native.checksumMany);
      let n = 0;
      for (let e = 0; e < q.count; e++) {
        if (q.ips[e] !== PEER.underlayIp) continue;
        const slot = rx.rxBase + n * rx.rxStride;
        rx.slab.set(tx.slab.subarray(q.offs[e]!, q.offs[e]! + q.lens[e]!), slot);
        rx.rxLens[n] = q.lens[e]!;
        rx.rxSegSizes[n] = q.segSizes[e]! < q.lens[e]! ? q.segSizes[e]! : 0;
        rx.rxSrcIps[n] = PEER.underlayIp;
        n++;
      }
      const written = rx.decapsulate(n);
      expect(totalDrops(rx.counters)).toBe(0);
      const delivered: Uint8Array[] = [];
      const vh: VnetHeader = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
      for (let w = 0; w < written; w++) {
        readVnetHeader(rx.writeHdrs, w * VNET_HDR_LEN, vh);
        const out = rx.slab.slice(rx.writeOffs[w]!, rx.writeOffs[w]! + rx.writeLens[w]!);
        if (vh.gsoType === VIRTIO_NET_HDR_GSO_NONE) {
          delivered.push(out);
          continue;
        }
        expect(vh).toEqual({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_UDP_L4, hdrLen: 42, gsoSize: vh.gsoSize, csumStart: 34, csumOffset: 6 });
        expect(ipChecksumOk(out, 0)).toBe(true);
        expect(readU16(out, 40)).toBe(pseudoHeaderSum(out, 14, 17, out.length - 34));
        delivered.push(...segmentUdpLikeKernel(out, vh.gsoSize));
      }
      const sentToPeer = frames.filter((_, i) => specs[i]!.toPeer);
      expect(delivered.length).toBe(sentToPeer.length);
      delivered.forEach((d, i) => {
        const orig = sentToPeer[i]!;
        const df = (orig[20]! & 0x40) !== 0;
        const masked = (b: Uint8Array): Buffer => {
          const c = Buffer.from(b);
          if (df) { c[18] = 0; c[19] = 0; c[24] = 0; c[25] = 0; }
          return c;
        };
        expect(masked(d)).toEqual(masked(orig));
      });
    }), { numRuns: 200 });

    // And it does batch: ten equal datagrams of one flow are one send and one TAP write.
    const tx = new OffloadCore({ vni: VNI, port: 4789, mtu: 1450, tapBatch: 16, rxBatch: 1, sourcePorts: 1 }, makeCore().table, newCounterView(), native.checksumMany);
    for (let i = 0; i < 10; i++) {
      const f = udpFrame(PEER.vtepMac, LOCAL_MAC, DST, SRC, i, 40001, new Uint8Array(18).fill(i));
      const slot = tx.tapBase + i * tx.tapStride;
      writeVnetHeader(tx.slab, slot, 0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0);
      tx.slab.set(f, slot + VNET_HDR_LEN);
      tx.tapLens[i] = f.length + VNET_HDR_LEN;
    }
    tx.encapsulate(10);
    const q = tx.sendQueues[0] as SendQueue;
    expect([q.count, q.segSizes[0], q.lens[0]]).toEqual([1, 8 + 60, 10 * (8 + 60)]);
    expect(snapshotPeerTraffic(tx.counters, PEER_SLOT)).toMatchObject({ txFrames: 10, txBytes: 10 * 60 });
    const rx = makeCore(MIRROR);
    rx.slab.set(tx.slab.subarray(q.offs[0]!, q.offs[0]! + q.lens[0]!), rx.rxBase);
    rx.rxLens[0] = q.lens[0]!;
    rx.rxSegSizes[0] = q.segSizes[0]!;
    rx.rxSrcIps[0] = PEER.underlayIp;
    expect(rx.decapsulate(1)).toBe(1);
    expect(rx.writeLens[0]).toBe(42 + 10 * 18);
    expect(rx.counters[Counter.TapTxSuperFrames]).toBe(1);
  });

  it("completes a partial checksum of a plain frame before it leaves", () => {
    const core = makeCore();
    const f = tcpFrame(PEER.vtepMac, LOCAL_MAC, DST, SRC, 1, 0x18, new Uint8Array(300).fill(9));
    const good = readU16(f, 34 + 16);
    // What the kernel hands over with NEEDS_CSUM: the pseudo-header sum in the field.
    const partial = pseudoHeaderSum(f, 14, 6, f.length - 34);
    f[34 + 16] = partial >> 8; f[34 + 17] = partial & 0xff;
    const slot = core.tapBase;
    writeVnetHeader(core.slab, slot, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 34, 16);
    core.slab.set(f, slot + VNET_HDR_LEN);
    core.tapLens[0] = f.length + VNET_HDR_LEN;
    expect(core.encapsulate(1)).toBe(1);
    const q = core.sendQueues[0]!;
    expect(q.segSizes[0]).toBe(0);
    expect(q.offs[0]).toBe(slot + VNET_HDR_LEN - 8);
    expect(readU16(core.slab, q.offs[0]! + 8 + 34 + 16)).toBe(good);
    // Offsets past the frame are refused, not written out of bounds: dropped and counted.
    expect(partialChecksumFits(f.length, f.length, 16)).toBe(false);
    expect(partialChecksumFits(f.length, 34, f.length - 34 - 1)).toBe(false);
    const bad = makeCore();
    writeVnetHeader(bad.slab, slot, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, f.length - 1, 16);
    bad.slab.set(f, slot + VNET_HDR_LEN);
    bad.tapLens[0] = f.length + VNET_HDR_LEN;
    expect(bad.encapsulate(1)).toBe(0);
    expect(bad.counters[Counter.DropBadOffload]).toBe(1);
  });
});

describe("fast path: receive path under garbage", () => {
  it("never throws or loops on random entries and GRO sizes, and accounts for every datagram", () => {
    const rx = makeCore();
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.uint8Array({ minLength: 0, maxLength: 4000 }), fc.nat(4000), fc.boolean()), { minLength: 1, maxLength: 4 }),
      (entries) => {
        rx.counters.fill(0);
        let expected = 0;
        entries.forEach(([bytes, seg, fromPeer], i) => {
          rx.slab.set(bytes, rx.rxBase + i * rx.rxStride);
          rx.rxLens[i] = bytes.length;
          const s = Math.min(seg, 0xffff);
          rx.rxSegSizes[i] = s;
          rx.rxSrcIps[i] = fromPeer ? PEER.underlayIp : 0xc0000263;
          const step = s || bytes.length;
          expected += bytes.length === 0 ? 1 : Math.ceil(bytes.length / step);
        });
        const frames = rx.decapsulate(entries.length);
        expect(rx.counters[Counter.UdpRxDatagrams]).toBe(expected);
        expect(frames).toBeLessThanOrEqual(expected);
        expect(rx.counters[Counter.UdpRxReads]).toBe(entries.length);
      }), { numRuns: 300 });
  });
});
