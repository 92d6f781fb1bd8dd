// The forwarding table: which underlay address carries frames for a VTEP MAC, and which
// subnet a remote VTEP may speak for. Immutable; the control plane builds a new one when
// membership changes and the forwarder swaps it in whole.

import { peerCounterBase } from "./counters";
import { prefixMask, type Ipv4, type MacAddr, type Subnet } from "./types";

/**
 * How frames reach a peer. Only "vxlan" exists today; "direct" (plain routing over a shared
 * L2 underlay) is the planned second choice, which is why the path is explicit per peer.
 */
export type PeerPath = "vxlan";

export interface Peer {
  readonly name: string;
  readonly underlayIp: Ipv4;
  readonly subnet: Subnet;
  readonly vtepMac: MacAddr;
  readonly path: PeerPath;
}

/** A peer with its subnet mask precomputed for the per-packet source check. */
export interface FdbEntry {
  readonly peer: Peer;
  readonly underlayIp: number;
  readonly network: number;
  readonly mask: number;
  /** Index of the peer's traffic counters in the counter buffer (see counters.ts). */
  readonly traffic: number;
}

export class ForwardingTable {
  private constructor(
    private readonly byMac: ReadonlyMap<number, FdbEntry>,
    private readonly byUnderlay: ReadonlyMap<number, FdbEntry>,
    readonly peers: readonly Peer[],
  ) {}

  /**
   * Builds a table; returns an error when two peers share a VTEP MAC or an underlay address,
   * since either would make forwarding ambiguous. `slots[i]` is peer i's traffic counter slot
   * (absent: slot 0, the unreported sink).
   */
  static build(peers: readonly Peer[], slots: readonly number[] = []): { ok: true; table: ForwardingTable } | { ok: false; error: string } {
    const byMac = new Map<number, FdbEntry>();
    const byUnderlay = new Map<number, FdbEntry>();
    for (let i = 0; i < peers.length; i++) {
      const peer = peers[i] as Peer;
      const entry: FdbEntry = {
        peer,
        underlayIp: peer.underlayIp,
        network: peer.subnet.network,
        mask: prefixMask(peer.subnet.prefixLen),
        traffic: peerCounterBase(slots[i] ?? 0),
      };
      const sameMac = byMac.get(peer.vtepMac);
      if (sameMac !== undefined) return { ok: false, error: `peers ${sameMac.peer.name} and ${peer.name} have the same VTEP MAC` };
      const sameIp = byUnderlay.get(peer.underlayIp);
      if (sameIp !== undefined) return { ok: false, error: `peers ${sameIp.peer.name} and ${peer.name} have the same underlay address` };
      byMac.set(peer.vtepMac, entry);
      byUnderlay.set(peer.underlayIp, entry);
    }
    return { ok: true, table: new ForwardingTable(byMac, byUnderlay, [...peers]) };
  }

  byVtepMac(mac: number): FdbEntry | undefined {
    return this.byMac.get(mac);
  }

  byUnderlayIp(ip: number): FdbEntry | undefined {
    return this.byUnderlay.get(ip);
  }
}
