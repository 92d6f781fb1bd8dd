// The forwarding decisions of one batch, over preallocated slabs; no I/O, no allocation per
// packet. The worker fills the slabs through the native shim and hands the results back to it.
//
// TAP → underlay: frame i is read at tapSlab[i*tapStride + VXLAN_HEADER_LEN], leaving headroom
// so the VXLAN header is written in place in front of it; the datagram is then
// tapSlab[i*tapStride .. +8+len).
// Underlay → TAP: datagram i is received at udpSlab[i*udpStride]; after the checks, the inner
// frame is written to the TAP straight from udpSlab[i*udpStride + 8].

import { Counter } from "./counters";
import type { ForwardingTable } from "./fdb";
import { ETH_HEADER_LEN, ETHERTYPE_IPV4, MIN_IPV4_FRAME, dstMac, etherType, ipv4Src, isGroupDestination } from "./frame";
import type { Vni } from "./types";
import { VXLAN_HEADER_LEN, VxlanVerdict, checkVxlan, writeVxlanHeader } from "./vxlan";

export interface ForwarderCoreOptions {
  vni: Vni;
  /** Destination UDP port of the datagrams we send. */
  port: number;
  /** MTU of the TAP: the largest inner IP packet. */
  mtu: number;
  /** Frames per batch. */
  batch: number;
}

/** Marks a datagram the kernel truncated because it was longer than the slot (see native.ts). */
export const TRUNCATED = 0xffffffff;

const VLAN_TAG_LEN = 4;

function slotSize(bytes: number): number {
  return Math.ceil(bytes / 64) * 64;
}

export class ForwarderCore {
  readonly batch: number;
  readonly vni: Vni;
  readonly port: number;
  /** Largest inner frame accepted in either direction. */
  readonly maxFrame: number;

  readonly tapStride: number;
  readonly tapSlab: Uint8Array;
  readonly tapLens: Uint32Array;
  readonly sendOffs: Uint32Array;
  readonly sendLens: Uint32Array;
  readonly sendIps: Uint32Array;
  readonly sendPorts: Uint16Array;

  readonly udpStride: number;
  readonly udpSlab: Uint8Array;
  readonly udpLens: Uint32Array;
  readonly udpSrcIps: Uint32Array;
  readonly udpSrcPorts: Uint16Array;
  readonly writeOffs: Uint32Array;
  readonly writeLens: Uint32Array;

  constructor(
    options: ForwarderCoreOptions,
    public table: ForwardingTable,
    readonly counters: Float64Array,
  ) {
    this.batch = options.batch;
    this.vni = options.vni;
    this.port = options.port;
    this.maxFrame = ETH_HEADER_LEN + VLAN_TAG_LEN + options.mtu;
    // One extra slot's worth of slack so a frame longer than maxFrame is seen as such
    // (and dropped) instead of running into the next slot's headroom.
    this.tapStride = slotSize(VXLAN_HEADER_LEN + this.maxFrame + 64);
    this.udpStride = slotSize(VXLAN_HEADER_LEN + this.maxFrame + 64);
    const b = options.batch;
    // The last slot's frame starts VXLAN_HEADER_LEN in, so the slab runs that far past b slots.
    this.tapSlab = new Uint8Array(b * this.tapStride + VXLAN_HEADER_LEN);
    this.tapLens = new Uint32Array(b);
    this.sendOffs = new Uint32Array(b);
    this.sendLens = new Uint32Array(b);
    this.sendIps = new Uint32Array(b);
    this.sendPorts = new Uint16Array(b);
    this.udpSlab = new Uint8Array(b * this.udpStride);
    this.udpLens = new Uint32Array(b);
    this.udpSrcIps = new Uint32Array(b);
    this.udpSrcPorts = new Uint16Array(b);
    this.writeOffs = new Uint32Array(b);
    this.writeLens = new Uint32Array(b);
  }

  /**
   * Encapsulates `count` frames read from the TAP. Fills sendOffs/sendLens/sendIps/sendPorts
   * and returns how many datagrams to send.
   */
  encapsulate(count: number): number {
    const c = this.counters;
    const slab = this.tapSlab;
    const table = this.table;
    let out = 0;
    c[Counter.TapReadBatches]! += 1;
    for (let i = 0; i < count; i++) {
      const len = this.tapLens[i] as number;
      const slot = i * this.tapStride;
      const frame = slot + VXLAN_HEADER_LEN;
      c[Counter.TapRxFrames]! += 1;
      c[Counter.TapRxBytes]! += len;
      if (len < ETH_HEADER_LEN) {
        c[Counter.DropRunt]! += 1;
        continue;
      }
      if (len > this.maxFrame) {
        c[Counter.DropTruncated]! += 1;
        continue;
      }
      if (isGroupDestination(slab, frame)) {
        // ARP and IPv6 neighbour discovery: the control plane programs neighbours, so
        // nothing needs flooding across the overlay.
        c[Counter.DropGroupDestination]! += 1;
        continue;
      }
      const entry = table.byVtepMac(dstMac(slab, frame));
      if (entry === undefined) {
        c[Counter.DropNoRoute]! += 1;
        continue;
      }
      writeVxlanHeader(slab, slot, this.vni);
      this.sendOffs[out] = slot;
      this.sendLens[out] = VXLAN_HEADER_LEN + len;
      this.sendIps[out] = entry.underlayIp;
      this.sendPorts[out] = this.port;
      out++;
    }
    return out;
  }

  /**
   * Validates and decapsulates `count` datagrams received from the underlay. Fills
   * writeOffs/writeLens and returns how many frames to write to the TAP. Every datagram
   * that is not exactly ours is counted by reason and dropped; this never throws.
   */
  decapsulate(count: number): number {
    const c = this.counters;
    const slab = this.udpSlab;
    const table = this.table;
    const vni = this.vni;
    let out = 0;
    c[Counter.UdpRecvBatches]! += 1;
    for (let i = 0; i < count; i++) {
      const len = this.udpLens[i] as number;
      const off = i * this.udpStride;
      c[Counter.UdpRxDatagrams]! += 1;
      if (len === TRUNCATED || len - VXLAN_HEADER_LEN > this.maxFrame) {
        c[Counter.DropTruncated]! += 1;
        continue;
      }
      c[Counter.UdpRxBytes]! += len;
      switch (checkVxlan(slab, off, len, vni)) {
        case VxlanVerdict.Ok:
          break;
        case VxlanVerdict.Runt:
          c[Counter.DropRunt]! += 1;
          continue;
        case VxlanVerdict.MissingIFlag:
          c[Counter.DropMissingIFlag]! += 1;
          continue;
        case VxlanVerdict.ReservedBits:
          c[Counter.DropReservedBits]! += 1;
          continue;
        case VxlanVerdict.WrongVni:
          c[Counter.DropWrongVni]! += 1;
          continue;
      }
      const entry = table.byUnderlayIp(this.udpSrcIps[i] as number);
      if (entry === undefined) {
        c[Counter.DropUnknownVtep]! += 1;
        continue;
      }
      const frame = off + VXLAN_HEADER_LEN;
      const frameLen = len - VXLAN_HEADER_LEN;
      if (etherType(slab, frame) !== ETHERTYPE_IPV4) {
        c[Counter.DropUnsupportedInner]! += 1;
        continue;
      }
      if (frameLen < MIN_IPV4_FRAME) {
        c[Counter.DropRunt]! += 1;
        continue;
      }
      // A peer speaks only for its own pod subnet; anything else would let it inject
      // traffic that looks like it came from another node's pods.
      if (((ipv4Src(slab, frame) & entry.mask) >>> 0) !== entry.network) {
        c[Counter.DropSpoofedSource]! += 1;
        continue;
      }
      this.writeOffs[out] = frame;
      this.writeLens[out] = frameLen;
      out++;
    }
    return out;
  }
}
