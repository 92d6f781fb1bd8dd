// The whole forwarder loop — TAP → UDP and UDP → TAP, busy-polling and control messages — run
// from source over the in-memory batch I/O (encap/batch-io-memory.ts): no root, no namespaces,
// no worker thread, no build. Two loops joined by moving one's sent datagrams into the other's
// underlay stand for two nodes.

import { describe, expect, it } from "vitest";
import { Ready } from "../encap/batch-io";
import { MemoryBatchIo } from "../encap/batch-io-memory";
import { NativeBatchIo } from "../encap/batch-io-native";
import { pseudoHeaderSum, sumJs, type SumManyFn } from "../encap/checksum";
import { Counter, newCounterView, snapshotBatchHistogram, snapshotPeerTraffic, totalDrops, BatchSource } from "../encap/counters";
import type { Peer } from "../encap/fdb";
import { ForwarderLoop, POLL_TIMEOUT_MS } from "../encap/forwarder-loop";
import type { NativeShim } from "../encap/native";
import {
  VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN, readVnetHeader, writeVnetHeader, type VnetHeader,
} from "../encap/offload";
import { MAX_OFFLOAD_RX_BATCH, MAX_OFFLOAD_TAP_BATCH, offloadBatches, type OffloadSettings } from "../encap/offload-core";
import { BURST_SPIN_US } from "../encap/spin-policy";
import { VIRTIO_NET_HDR_GSO_UDP_L4 } from "../encap/udp-coalescer";
import { parseSubnet, vtepMacFor, writeMac, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";
import { VXLAN_HEADER_LEN, readVni, writeVxlanHeader } from "../encap/vxlan";

const VNI = 7 as Vni;
const PORT = 4789;
const MTU = 1450;

function subnet(text: string): Subnet {
  const s = parseSubnet(text);
  if (!s.ok) throw new Error(s.error);
  return s.value;
}

function peer(name: string, ip: number, cidr: string): Peer {
  return { name, underlayIp: ip as Ipv4, subnet: subnet(cidr), vtepMac: vtepMacFor(name), path: "vxlan" };
}

const A = peer("n1", 0xc000020b, "10.244.1.0/24");
const B = peer("n2", 0xc000020c, "10.244.2.0/24");
const C = peer("n3", 0xc000020d, "10.244.3.0/24");
const POD_A = 0x0af40105; // 10.244.1.5
const POD_B = 0x0af40207;
const POD_C = 0x0af40309;

/** The checksum sums in JS: the loop needs no native code. */
const sumManyJs: SumManyFn = (slab, offs, lens, sums, count) => {
  for (let i = 0; i < count; i++) sums[i] = sumJs(slab, offs[i] as number, lens[i] as number, sums[i] as number);
};

interface NodeSetup {
  self: Peer;
  peers: Peer[];
  offload?: OffloadSettings;
  batch?: number;
  busyPollUs?: number;
  sourcePorts?: number;
}

function node(s: NodeSetup): { io: MemoryBatchIo; loop: ForwarderLoop; c: Float64Array } {
  const sourcePorts = s.sourcePorts ?? 1;
  const io = new MemoryBatchIo({ sendSockets: Math.max(1, sourcePorts), localIp: s.self.underlayIp });
  const c = newCounterView();
  const loop = new ForwarderLoop(
    { core: { vni: VNI, port: PORT, mtu: MTU, batch: s.batch ?? 64, sourcePorts }, offload: s.offload, busyPollUs: s.busyPollUs ?? 0,
      peers: s.peers, slots: s.peers.map((_, i) => i + 1) },
    { io, control: io.control, clock: io.clock, counters: c, sumMany: sumManyJs },
  );
  return { io, loop, c };
}

/** Runs wake-ups while the TAP or the underlay holds anything (each wake-up must move something). */
function drain(n: { io: MemoryBatchIo; loop: ForwarderLoop }): void {
  for (let i = 0; i < 1000 && (n.io.tapIn.length > 0 || n.io.underlayIn.length > 0); i++) n.loop.wake();
}

function ipv4(f: Uint8Array, total: number, id: number, proto: number, src: number, dst: number, df = true): DataView {
  const dv = new DataView(f.buffer, f.byteOffset, f.byteLength);
  dv.setUint16(12, 0x0800);
  f[14] = 0x45;
  dv.setUint16(16, total);
  dv.setUint16(18, id & 0xffff);
  dv.setUint16(20, df ? 0x4000 : 0);
  f[22] = 64;
  f[23] = proto;
  dv.setUint32(26, src);
  dv.setUint32(30, dst);
  dv.setUint16(24, ~sumJs(f, 14, 20, 0) & 0xffff);
  return dv;
}

/** Ethernet + IPv4 + UDP with a valid checksum; the payload bytes count up from `fill`. */
function udpFrame(dstMac: MacAddr, src: number, dst: number, payload: number, id = 1, srcPort = 5000, fill = 0): Uint8Array {
  const f = new Uint8Array(42 + payload);
  writeMac(f, 0, dstMac);
  writeMac(f, 6, vtepMacFor("pod-side"));
  const dv = ipv4(f, 28 + payload, id, 17, src, dst);
  dv.setUint16(34, srcPort);
  dv.setUint16(36, 6000);
  dv.setUint16(38, 8 + payload);
  for (let i = 0; i < payload; i++) f[42 + i] = (fill + i) & 0xff;
  const s = ~sumJs(f, 34, 8 + payload, pseudoHeaderSum(f, 14, 17, 8 + payload)) & 0xffff;
  dv.setUint16(40, s === 0 ? 0xffff : s);
  return f;
}

/** Ethernet + IPv4 + TCP (12 bytes of options); checksum valid; payload bytes count up. */
function tcpFrame(dstMac: MacAddr, src: number, dst: number, seq: number, flags: number, payload: number): Uint8Array {
  const f = new Uint8Array(66 + payload);
  writeMac(f, 0, dstMac);
  writeMac(f, 6, vtepMacFor("pod-side"));
  const dv = ipv4(f, 52 + payload, 0x1234, 6, src, dst);
  dv.setUint16(34, 40000);
  dv.setUint16(36, 5201);
  dv.setUint32(38, seq >>> 0);
  dv.setUint32(42, 0xabcdef01);
  f[46] = 8 << 4;
  f[47] = flags;
  dv.setUint16(48, 501);
  f.set([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], 54);
  for (let i = 0; i < payload; i++) f[66 + i] = (i * 7) & 0xff;
  dv.setUint16(50, ~sumJs(f, 34, 32 + payload, pseudoHeaderSum(f, 14, 6, 32 + payload)) & 0xffff);
  return f;
}

/** A frame as a TAP with IFF_VNET_HDR hands it over: behind a virtio_net_hdr. */
function withVnet(frame: Uint8Array, gsoType = VIRTIO_NET_HDR_GSO_NONE, gsoSize = 0, flags = 0, hdrLen = 0, csumStart = 0, csumOffset = 0): Uint8Array {
  const out = new Uint8Array(VNET_HDR_LEN + frame.length);
  writeVnetHeader(out, 0, flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset);
  out.set(frame, VNET_HDR_LEN);
  return out;
}

function vnetOf(hdr: Uint8Array | undefined): VnetHeader {
  const vh: VnetHeader = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
  if (hdr === undefined) throw new Error("no virtio_net_hdr");
  readVnetHeader(hdr, 0, vh);
  return vh;
}

const u16 = (b: Uint8Array, off: number): number => ((b[off] as number) << 8) | (b[off + 1] as number);
const ACK = 0x10;
const PSH = 0x08;

describe("forwarder loop, plain path (--offload=false), over in-memory I/O", () => {
  it("TAP → UDP: each frame leaves as one VXLAN datagram with our VNI to its peer's VTEP, counted per peer", () => {
    const a = node({ self: A, peers: [B, C] });
    const toB = udpFrame(B.vtepMac, POD_A, POD_B, 100);
    const toC = udpFrame(C.vtepMac, POD_A, POD_C, 200);
    a.io.tapIn.push(toB, toC, toB);
    expect(a.loop.wake()).toBe(true);
    expect(a.io.tapIn).toHaveLength(0);
    expect(a.io.sent.map((d) => [d.dstIp, d.dstPort, d.bytes.length])).toEqual([
      [B.underlayIp, PORT, 8 + toB.length], [C.underlayIp, PORT, 8 + toC.length], [B.underlayIp, PORT, 8 + toB.length],
    ]);
    for (const d of a.io.sent) expect(readVni(d.bytes, 0)).toBe(VNI);
    expect(a.io.sent[1]!.bytes.subarray(8)).toEqual(toC);
    expect(a.c[Counter.TapRxFrames]).toBe(3);
    expect(a.c[Counter.UdpTxDatagrams]).toBe(3);
    expect(a.c[Counter.TapReadBatches]).toBe(1);
    expect(a.c[Counter.WakeupsSleep]).toBe(1);
    expect(snapshotPeerTraffic(a.c, 1)).toEqual({ txFrames: 2, txBytes: 2 * toB.length, rxFrames: 0, rxBytes: 0 });
    expect(totalDrops(a.c)).toBe(0);
  });

  it("UDP → TAP: a peer's datagrams reach the TAP as their inner frames, without virtio_net_hdrs", () => {
    const a = node({ self: A, peers: [B] });
    const b = node({ self: B, peers: [A] });
    const frames = [udpFrame(B.vtepMac, POD_A, POD_B, 64, 1), udpFrame(B.vtepMac, POD_A, POD_B, 64, 2), udpFrame(B.vtepMac, POD_A, POD_B, 900, 3)];
    a.io.tapIn.push(...frames);
    drain(a);
    a.io.deliverTo(b.io);
    drain(b);
    expect(b.io.tapOut.map((w) => w.frame)).toEqual(frames);
    expect(b.io.tapOut.every((w) => w.hdr === undefined)).toBe(true);
    expect(b.c[Counter.UdpRxDatagrams]).toBe(3);
    expect(b.c[Counter.TapTxFrames]).toBe(3);
    expect(snapshotPeerTraffic(b.c, 1).rxFrames).toBe(3);
    expect(totalDrops(b.c)).toBe(0);
  });

  it("reads at most --batch frames per wake-up; the rest wait for the next", () => {
    const a = node({ self: A, peers: [B], batch: 4 });
    for (let i = 0; i < 10; i++) a.io.tapIn.push(udpFrame(B.vtepMac, POD_A, POD_B, 10, i));
    drain(a);
    expect(a.c[Counter.TapReadBatches]).toBe(3);
    expect(snapshotBatchHistogram(a.c, BatchSource.Tap).sum).toBe(10);
    expect(a.io.sent).toHaveLength(10);
  });

  it("spreads flows over the send sockets by their hash, each flow always from the same one", () => {
    const a = node({ self: A, peers: [B], sourcePorts: 4 });
    for (let round = 0; round < 2; round++) for (let p = 0; p < 16; p++) a.io.tapIn.push(udpFrame(B.vtepMac, POD_A, POD_B, 10, 1, 7000 + p));
    drain(a);
    const socketOf = new Map<number, Set<number>>();
    for (const d of a.io.sent) {
      const port = u16(d.bytes, 8 + 34);
      socketOf.set(port, (socketOf.get(port) ?? new Set()).add(d.socket));
    }
    expect([...socketOf.values()].every((s) => s.size === 1)).toBe(true);
    expect(new Set(a.io.sent.map((d) => d.socket)).size).toBeGreaterThan(1);
  });

  it("drops what is not exactly ours, each under its reason, and forwards the rest", () => {
    const a = node({ self: A, peers: [B] });
    const b = node({ self: B, peers: [A] });
    a.io.tapIn.push(udpFrame(B.vtepMac, POD_A, POD_B, 64));
    drain(a);
    const good = a.io.sent[0]!.bytes;
    const mutate = (fn: (x: Uint8Array) => void): Uint8Array => { const x = good.slice(); fn(x); return x; };
    const from = (bytes: Uint8Array, srcIp = A.underlayIp): { bytes: Uint8Array; srcIp: number; srcPort: number } => ({ bytes, srcIp, srcPort: 40000 });
    const spoofed = mutate((x) => new DataView(x.buffer).setUint32(8 + 26, POD_C));
    b.io.underlayIn.push(
      from(good),
      from(good.subarray(0, 12)), // runt
      from(mutate((x) => { x[0] = 0; })), // no I flag
      from(mutate((x) => { x[1] = 1; })), // reserved bits
      from(mutate((x) => writeVxlanHeader(x, 0, 99 as Vni))), // another VNI
      from(good, C.underlayIp), // unknown VTEP
      from(spoofed), // inner source outside the sender's subnet
      from(mutate((x) => { x[8 + 12] = 0x86; x[8 + 13] = 0xdd; })), // IPv6 inside
      from(new Uint8Array(4000)), // longer than a slot
    );
    drain(b);
    expect(b.io.tapOut).toHaveLength(1);
    expect(b.c[Counter.DropRunt]).toBe(1);
    expect(b.c[Counter.DropMissingIFlag]).toBe(1);
    expect(b.c[Counter.DropReservedBits]).toBe(1);
    expect(b.c[Counter.DropWrongVni]).toBe(1);
    expect(b.c[Counter.DropUnknownVtep]).toBe(1);
    expect(b.c[Counter.DropSpoofedSource]).toBe(1);
    expect(b.c[Counter.DropUnsupportedInner]).toBe(1);
    expect(b.c[Counter.DropTruncated]).toBe(1);
    expect(totalDrops(b.c)).toBe(8);

    const bcast = udpFrame(B.vtepMac, POD_A, POD_B, 10);
    bcast.fill(0xff, 0, 6);
    a.io.tapIn.push(new Uint8Array(10), bcast, udpFrame(C.vtepMac, POD_A, POD_C, 10), new Uint8Array(3000));
    drain(a);
    expect(a.c[Counter.DropRunt]).toBe(1);
    expect(a.c[Counter.DropGroupDestination]).toBe(1);
    expect(a.c[Counter.DropNoRoute]).toBe(1);
    expect(a.c[Counter.DropTruncated]).toBe(1);
    expect(a.io.sent).toHaveLength(1);
  });

  it("counts back-pressure and refusals: a full send queue, an unreachable peer, a full TAP, a TAP that is down", () => {
    const a = node({ self: A, peers: [B, C] });
    a.io.sendRoom = 2;
    a.io.unreachable.add(C.underlayIp);
    a.io.tapIn.push(udpFrame(B.vtepMac, POD_A, POD_B, 10), udpFrame(C.vtepMac, POD_A, POD_C, 10), udpFrame(B.vtepMac, POD_A, POD_B, 10));
    a.loop.wake();
    expect(a.io.sent).toHaveLength(1);
    expect(a.c[Counter.DropSendError]).toBe(1);
    expect(a.c[Counter.DropUdpQueueFull]).toBe(1);
    expect(a.c[Counter.UdpTxDatagrams]).toBe(1);

    const b = node({ self: B, peers: [A] });
    const d = { bytes: new Uint8Array(0), srcIp: A.underlayIp, srcPort: 40000 };
    const one = node({ self: A, peers: [B] });
    one.io.tapIn.push(udpFrame(B.vtepMac, POD_A, POD_B, 10));
    drain(one);
    d.bytes = one.io.sent[0]!.bytes;
    b.io.tapWriteRoom = 1;
    b.io.underlayIn.push(d, d, d);
    b.loop.wake();
    expect(b.c[Counter.TapTxFrames]).toBe(1);
    expect(b.c[Counter.DropTapQueueFull]).toBe(2);
    b.io.tapWriteRoom = Infinity;
    b.io.tapDown = true;
    b.io.underlayIn.push(d, d);
    b.loop.wake();
    expect(b.c[Counter.DropTapWriteError]).toBe(2);
    expect(b.c[Counter.TapTxFrames]).toBe(1);
    expect(b.io.tapOut).toHaveLength(1);
  });
});

describe("forwarder loop, fast path (offload), over in-memory I/O", () => {
  const OFFLOAD = offloadBatches(64);

  it("a TSO super-frame is cut into MSS segments that leave as one UDP_SEGMENT send and arrive, through GRO, as one super-frame", () => {
    const a = node({ self: A, peers: [B], offload: OFFLOAD });
    const b = node({ self: B, peers: [A], offload: OFFLOAD });
    const mss = 1398;
    const payload = 20000;
    const superFrame = tcpFrame(B.vtepMac, POD_A, POD_B, 1000, ACK | PSH, payload);
    a.io.tapIn.push(withVnet(superFrame, VIRTIO_NET_HDR_GSO_TCPV4, mss, VIRTIO_NET_HDR_F_NEEDS_CSUM, 66, 34, 16));
    drain(a);
    const segments = Math.ceil(payload / mss);
    expect(a.io.sent).toHaveLength(segments);
    expect(new Set(a.io.sent.map((d) => d.entry)).size).toBe(1);
    expect(a.io.sent[0]!.bytes.length).toBe(8 + 66 + mss);
    expect(a.c[Counter.TapRxSuperFrames]).toBe(1);
    expect(a.c[Counter.UdpTxDatagrams]).toBe(segments);
    expect(snapshotPeerTraffic(a.c, 1).txFrames).toBe(segments);

    a.io.deliverTo(b.io);
    drain(b);
    expect(b.c[Counter.UdpRxGroRuns]).toBe(1);
    expect(b.c[Counter.UdpRxDatagrams]).toBe(segments);
    expect(b.c[Counter.TapTxSuperFrames]).toBe(1);
    expect(b.io.tapOut).toHaveLength(1);
    const out = b.io.tapOut[0]!;
    const vh = vnetOf(out.hdr);
    expect(vh.gsoType).toBe(VIRTIO_NET_HDR_GSO_TCPV4);
    expect(vh.gsoSize).toBe(mss);
    expect(vh.flags).toBe(VIRTIO_NET_HDR_F_NEEDS_CSUM);
    expect(out.frame.length).toBe(superFrame.length);
    expect(u16(out.frame, 16)).toBe(52 + payload);
    expect(out.frame.subarray(66)).toEqual(superFrame.subarray(66));
    expect(out.frame[47]! & PSH).toBe(PSH);
    expect(totalDrops(a.c) + totalDrops(b.c)).toBe(0);
  });

  it("plain UDP frames of one flow leave as one UDP_SEGMENT run and reach the TAP as one GSO_UDP_L4 super-frame", () => {
    const a = node({ self: A, peers: [B], offload: OFFLOAD });
    const b = node({ self: B, peers: [A], offload: OFFLOAD });
    const frames = Array.from({ length: 10 }, (_, i) => udpFrame(B.vtepMac, POD_A, POD_B, 100, i, 5000, i));
    for (const f of frames) a.io.tapIn.push(withVnet(f));
    drain(a);
    expect(a.io.sent).toHaveLength(10);
    expect(new Set(a.io.sent.map((d) => d.entry)).size).toBe(1);
    expect(a.io.sent.map((d) => d.bytes.subarray(8))).toEqual(frames);

    a.io.deliverTo(b.io);
    drain(b);
    expect(b.io.tapOut).toHaveLength(1);
    const vh = vnetOf(b.io.tapOut[0]!.hdr);
    expect(vh.gsoType).toBe(VIRTIO_NET_HDR_GSO_UDP_L4);
    expect(vh.gsoSize).toBe(100);
    expect(b.io.tapOut[0]!.frame.length).toBe(42 + 10 * 100);
    expect(b.c[Counter.TapTxSuperFrames]).toBe(1);
    expect(b.c[Counter.UdpRxDatagrams]).toBe(10);
  });

  it("without GRO the same datagrams arrive one by one and still merge per receive entry only", () => {
    const a = node({ self: A, peers: [B], offload: OFFLOAD });
    const io = new MemoryBatchIo({ gro: false, localIp: B.underlayIp });
    const c = newCounterView();
    const loop = new ForwarderLoop({ core: { vni: VNI, port: PORT, mtu: MTU, batch: 64, sourcePorts: 1 }, offload: OFFLOAD, busyPollUs: 0, peers: [A], slots: [1] },
      { io, control: io.control, clock: io.clock, counters: c, sumMany: sumManyJs });
    for (let i = 0; i < 3; i++) a.io.tapIn.push(withVnet(udpFrame(B.vtepMac, POD_A, POD_B, 100, i)));
    drain(a);
    a.io.deliverTo(io);
    drain({ io, loop });
    expect(io.tapOut).toHaveLength(3);
    expect(io.tapOut.every((w) => vnetOf(w.hdr).gsoType === VIRTIO_NET_HDR_GSO_NONE)).toBe(true);
    expect(c[Counter.UdpRxGroRuns]).toBe(0);
  });

  it("a virtio_net_hdr asking for what we cannot do is dropped as bad offload", () => {
    const a = node({ self: A, peers: [B], offload: OFFLOAD });
    const f = udpFrame(B.vtepMac, POD_A, POD_B, 100);
    a.io.tapIn.push(
      withVnet(f, 3 /* TCPv6 */, 1000),
      withVnet(f, VIRTIO_NET_HDR_GSO_NONE, 0, VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 2000, 6), // checksum outside the frame
      new Uint8Array(4), // shorter than a virtio_net_hdr
      withVnet(f),
    );
    drain(a);
    expect(a.c[Counter.DropBadOffload]).toBe(2);
    expect(a.c[Counter.DropTruncated]).toBe(1);
    expect(a.io.sent).toHaveLength(1);
  });

  it("--batch sizes the fast path's batches too, within the native limits", () => {
    expect(offloadBatches(64)).toEqual({ tapBatch: 64, rxBatch: 16 });
    expect(offloadBatches(4)).toEqual({ tapBatch: 4, rxBatch: 4 });
    expect(offloadBatches(256)).toEqual({ tapBatch: MAX_OFFLOAD_TAP_BATCH, rxBatch: MAX_OFFLOAD_RX_BATCH });
    expect(MAX_OFFLOAD_TAP_BATCH).toBe(64);
    const a = node({ self: A, peers: [B], offload: offloadBatches(4) });
    for (let i = 0; i < 10; i++) a.io.tapIn.push(withVnet(udpFrame(B.vtepMac, POD_A, POD_B, 10 + i, i)));
    drain(a);
    expect(a.c[Counter.TapReadBatches]).toBe(3);
    expect(a.io.sent).toHaveLength(10);
  });
});

describe("forwarder loop: busy-polling (virtual clock)", () => {
  const frame = udpFrame(B.vtepMac, POD_A, POD_B, 10);

  it("after traffic it busy-polls for the --busy-poll window; traffic found then costs no sleep, later traffic does", () => {
    const a = node({ self: A, peers: [B], busyPollUs: 2000 });
    a.io.at(0, () => a.io.tapIn.push(frame));
    a.io.at(1, () => a.io.tapIn.push(frame)); // 1 ms later: inside the 2 ms window
    a.io.at(10, () => a.io.tapIn.push(frame)); // 9 ms later: asleep by then
    for (let i = 0; i < 3; i++) a.loop.wake();
    expect(a.io.waits.map((w) => w.spinUs)).toEqual([0, 2000, 2000]);
    expect(a.io.waits.map((w) => (w.ready & Ready.BusyPolled) !== 0)).toEqual([false, true, false]);
    expect(a.io.waits.map((w) => w.doneMs)).toEqual([0, 1, 10]);
    expect(a.c[Counter.WakeupsBusyPoll]).toBe(1);
    expect(a.c[Counter.WakeupsSleep]).toBe(2);
    expect(a.io.sent).toHaveLength(3);
  });

  it("with --busy-poll 0 it sleeps at once, every time; an idle wait sleeps the poll timeout", () => {
    const a = node({ self: A, peers: [B], busyPollUs: 0 });
    a.io.at(0, () => a.io.tapIn.push(frame));
    a.io.at(0.001, () => a.io.tapIn.push(frame));
    a.io.at(POLL_TIMEOUT_MS + 500, () => a.io.tapIn.push(frame));
    for (let i = 0; i < 4; i++) a.loop.wake();
    expect(a.io.waits.map((w) => w.spinUs)).toEqual([0, 0, 0, 0]);
    expect(a.io.waits.map((w) => w.timeoutMs)).toEqual([POLL_TIMEOUT_MS, POLL_TIMEOUT_MS, POLL_TIMEOUT_MS, POLL_TIMEOUT_MS]);
    expect(a.io.waits[2]!.ready).toBe(0); // timed out
    expect(a.io.waits[2]!.doneMs).toBeCloseTo(0.001 + POLL_TIMEOUT_MS);
    expect(a.c[Counter.WakeupsSleep]).toBe(3);
    expect(a.c[Counter.WakeupsBusyPoll]).toBe(0);
  });

  it(`in a burst (more than 8 wake-ups within 1 ms) the window shrinks to ${BURST_SPIN_US} µs, and grows back after`, () => {
    const a = node({ self: A, peers: [B], busyPollUs: 2000 });
    for (let k = 0; k < 12; k++) a.io.at(k * 0.01, () => a.io.tapIn.push(frame));
    a.io.at(5, () => a.io.tapIn.push(frame));
    a.io.at(5.01, () => a.io.tapIn.push(frame));
    for (let i = 0; i < 14; i++) a.loop.wake();
    const spins = a.io.waits.map((w) => w.spinUs);
    expect(spins.slice(0, 9)).toEqual([0, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000]);
    expect(spins.slice(9, 13)).toEqual([BURST_SPIN_US, BURST_SPIN_US, BURST_SPIN_US, BURST_SPIN_US]);
    // The pause after the burst outlasts the short window: that wake-up slept.
    expect((a.io.waits[12]!.ready & Ready.BusyPolled) !== 0).toBe(false);
    expect(spins[13]).toBe(2000);
    expect(a.c[Counter.WakeupsBusyPoll]).toBe(12);
    expect(a.c[Counter.WakeupsSleep]).toBe(2);
  });

  it("a wake-up without traffic (a control message) ends busy-polling", () => {
    const a = node({ self: A, peers: [B], busyPollUs: 2000 });
    a.io.at(0, () => a.io.tapIn.push(frame));
    a.io.at(0.5, () => a.io.control.send({ type: "peers", generation: 1, peers: [B], slots: [1] }));
    a.io.at(50, () => a.io.tapIn.push(frame));
    for (let i = 0; i < 3; i++) a.loop.wake();
    expect(a.io.waits.map((w) => w.spinUs)).toEqual([0, 2000, 0]);
    expect(a.io.waits[1]!.ready).toBe(Ready.Wake | Ready.BusyPolled);
  });
});

describe("forwarder loop: control messages", () => {
  it("a new table is swapped in between batches and acknowledged with its generation", () => {
    const a = node({ self: A, peers: [B] });
    const toC = udpFrame(C.vtepMac, POD_A, POD_C, 10);
    a.io.tapIn.push(toC);
    a.loop.wake();
    expect(a.c[Counter.DropNoRoute]).toBe(1);
    a.io.control.send({ type: "peers", generation: 1, peers: [B, C], slots: [1, 2] });
    a.loop.wake();
    expect(a.io.control.replies).toEqual([{ type: "peers-applied", generation: 1, error: undefined }]);
    a.io.tapIn.push(toC);
    a.loop.wake();
    expect(a.io.sent.map((d) => d.dstIp)).toEqual([C.underlayIp]);
    expect(snapshotPeerTraffic(a.c, 2).txFrames).toBe(1);
  });

  it("an ambiguous table is refused with the reason and the old one stays in force", () => {
    const a = node({ self: A, peers: [B] });
    a.io.control.send({ type: "peers", generation: 3, peers: [B, { ...C, vtepMac: B.vtepMac }], slots: [1, 2] });
    a.io.tapIn.push(udpFrame(B.vtepMac, POD_A, POD_B, 10));
    a.loop.wake();
    expect(a.io.control.replies).toEqual([{ type: "peers-applied", generation: 3, error: expect.stringMatching(/same VTEP MAC/) }]);
    expect(a.io.sent.map((d) => d.dstIp)).toEqual([B.underlayIp]);
  });

  it("run() says ready, applies messages in order, and on stop says stopped without moving the traffic of that wake-up", () => {
    const a = node({ self: A, peers: [B] });
    const frame = udpFrame(B.vtepMac, POD_A, POD_B, 10);
    a.io.at(1, () => a.io.tapIn.push(frame));
    a.io.at(2, () => {
      a.io.control.send({ type: "peers", generation: 1, peers: [B, C], slots: [1, 2] });
      a.io.control.send({ type: "stop" });
      a.io.control.send({ type: "peers", generation: 2, peers: [B], slots: [1] });
      a.io.tapIn.push(frame);
    });
    a.loop.run();
    expect(a.io.control.replies).toEqual([
      { type: "ready" }, { type: "peers-applied", generation: 1, error: undefined }, { type: "stopped" },
    ]);
    expect(a.io.sent).toHaveLength(1);
    expect(a.io.tapIn).toHaveLength(1);
    expect(a.io.clock.nowMs()).toBe(2);
  });

  it("refuses to start with a send socket count other than one per source port, or an ambiguous first table", () => {
    const io = new MemoryBatchIo({ sendSockets: 2 });
    const env = { io, control: io.control, clock: io.clock, counters: newCounterView(), sumMany: sumManyJs };
    const options = { core: { vni: VNI, port: PORT, mtu: MTU, batch: 8, sourcePorts: 4 }, offload: undefined, busyPollUs: 0, peers: [B], slots: [1] };
    expect(() => new ForwarderLoop(options, env)).toThrow(/one send socket per source port/);
    expect(() => new ForwarderLoop({ ...options, core: { ...options.core, sourcePorts: 2 }, peers: [B, { ...C, underlayIp: B.underlayIp }] }, env))
      .toThrow(/same underlay address/);
  });
});

describe("native batch I/O: one shim call per method, the same arguments the loop always passed", () => {
  it("forwards every call with the forwarder's descriptors and maps poll's answer to Ready bits", () => {
    const calls: [string, ...unknown[]][] = [];
    let pollAnswer = 0;
    let pollRevents = [0, 0, 0];
    const shim = {
      pollIn: (fds: Int32Array, revents: Int32Array, timeoutMs: number, spinUs?: number) => {
        calls.push(["pollIn", Array.from(fds), timeoutMs, spinUs]);
        revents.set(pollRevents);
        return pollAnswer;
      },
      eventfdDrain: (fd: number) => { calls.push(["eventfdDrain", fd]); return 1; },
      readFrames: (...args: unknown[]) => { calls.push(["readFrames", ...args]); return 3; },
      writeFrames: (...args: unknown[]) => { calls.push(["writeFrames", ...args]); return 2; },
      recvBatch: (...args: unknown[]) => { calls.push(["recvBatch", ...args]); return 4; },
      sendBatch: (...args: unknown[]) => { calls.push(["sendBatch", ...args]); return 5; },
    };
    const io = new NativeBatchIo(shim as unknown as NativeShim, { tapFd: 10, udpFd: 11, sendFds: [20, 21], wakeFd: 12 });
    expect(io.sendSockets).toBe(2);
    pollRevents = [1, 0, 1];
    pollAnswer = 2;
    expect(io.wait(1000, 0)).toBe(Ready.Tap | Ready.Wake);
    pollRevents = [0, 1, 0];
    pollAnswer = -1;
    expect(io.wait(1000, 50)).toBe(Ready.Underlay | Ready.BusyPolled);
    pollRevents = [0, 0, 0];
    pollAnswer = 0;
    expect(io.wait(1000, 0)).toBe(0);
    io.drainWake();
    const slab = new Uint8Array(64);
    const u32 = new Uint32Array(1);
    const u16a = new Uint16Array(1);
    const err = new Uint32Array(1);
    expect(io.readTap(slab, 8, 16, 2, u32)).toBe(3);
    expect(io.writeTap(slab, u32, u32, 1, err)).toBe(2);
    expect(io.writeTap(slab, u32, u32, 1, err, slab, VNET_HDR_LEN)).toBe(2);
    expect(io.recvUnderlay(slab, 0, 16, 2, u32, u32, u16a)).toBe(4);
    expect(io.recvUnderlay(slab, 0, 16, 2, u32, u32, u16a, u16a)).toBe(4);
    expect(io.sendUnderlay(1, slab, u32, u32, u32, u16a, 1, err, u16a)).toBe(5);
    expect(calls).toEqual([
      ["pollIn", [10, 11, 12], 1000, 0], ["pollIn", [10, 11, 12], 1000, 50], ["pollIn", [10, 11, 12], 1000, 0],
      ["eventfdDrain", 12],
      ["readFrames", 10, slab, 8, 16, 2, u32],
      ["writeFrames", 10, slab, u32, u32, 1, err, undefined, undefined],
      ["writeFrames", 10, slab, u32, u32, 1, err, slab, VNET_HDR_LEN],
      ["recvBatch", 11, slab, 0, 16, 2, u32, u32, u16a, undefined],
      ["recvBatch", 11, slab, 0, 16, 2, u32, u32, u16a, u16a],
      ["sendBatch", 21, slab, u32, u32, u32, u16a, 1, err, u16a],
    ]);
  });
});
