// The glue between a peer source and the node: its events go to the data plane (TAP address,
// forwarding table, routes, neighbours) and to the run-dir hand-off that tells CNI the subnet.
// No I/O of its own, so a test can put an in-memory data plane and hand-off behind it.

import type { Peer } from "../encap/fdb";
import { formatIpv4, formatSubnet, type Subnet } from "../encap/types";
import type { PlumbingSummary } from "../control/host-plumbing";
import type { Logger } from "./log";
import type { PeerEvents } from "./peer-source";

/** The data plane as the source's events reach it (DataPlane is one). */
export interface PeerTarget {
  setSubnet(subnet: Subnet | undefined): Promise<void>;
  setPeers(peers: readonly Peer[]): Promise<PlumbingSummary>;
}

/** The run-dir hand-off CNI waits for (handoff.ts in the daemon). */
export interface HandoffTarget {
  write(subnet: Subnet): void;
  withdraw(): void;
}

export class SourceLink implements PeerEvents {
  private subnet: Subnet | undefined;
  private serving = false;
  private failWith: (err: Error) => void = () => undefined;
  /** Resolves when the source gives up (`fatal`): the daemon must then stop. */
  readonly failed = new Promise<Error>((resolve) => { this.failWith = resolve; });

  constructor(private readonly dp: PeerTarget, private readonly handoff: HandoffTarget, private readonly log: Pick<Logger, "info">) {}

  /** The subnet CNI may hand out addresses from: confirmed by the source and on the TAP. */
  get confirmedSubnet(): Subnet | undefined {
    return this.subnet;
  }

  async subnetChanged(subnet: Subnet | undefined): Promise<void> {
    if (subnet === undefined) {
      // Withdrawn before the TAP loses it: CNI must not hand out addresses from a lost subnet.
      this.subnet = undefined;
      this.handoff.withdraw();
      await this.dp.setSubnet(undefined);
      return;
    }
    await this.dp.setSubnet(subnet);
    this.subnet = subnet;
    if (this.serving) this.handoff.write(subnet);
  }

  async peersChanged(peers: readonly Peer[]): Promise<void> {
    const summary = await this.dp.setPeers(peers);
    this.log.info({ peers: peers.map(describePeer), ...summary }, "peers changed");
  }

  fatal(message: string): void {
    this.failWith(new Error(message));
  }

  /**
   * The daemon answers CNI calls from now on: the hand-off is written for the confirmed subnet,
   * now if there is one, else when it comes.
   */
  serve(): void {
    this.serving = true;
    if (this.subnet !== undefined) this.handoff.write(this.subnet);
  }
}

function describePeer(p: Peer): string {
  return `${p.name} ${formatSubnet(p.subnet)} via ${formatIpv4(p.underlayIp)}`;
}
