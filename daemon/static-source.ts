// Static peers: this node's subnet from --subnet and the other nodes from the --peers file,
// read once at start. Ready from the start; nothing to watch.

import type { Peer } from "../encap/fdb";
import { formatSubnet, type Subnet } from "../encap/types";
import type { LabelledCidr } from "../control/cidr-overlap";
import { podCidrs, readPeersFile, serviceCidrConflict, type DaemonConfig } from "./config";
import type { PeerEvents, PeerSource, SourceTrace } from "./peer-source";
import { StartupError } from "./startup-error";
import type { SourceStatus } from "./status";

export type StaticSourceConfig = Extract<DaemonConfig["source"], { kind: "static" }>;

export class StaticSource implements PeerSource {
  readonly kind = "static";
  readonly clusterCidr = undefined;
  readonly ready = true;
  readonly notReadyBecause = undefined;

  constructor(
    private readonly subnet: Subnet,
    private readonly peers: readonly Peer[],
    private readonly cidrs: readonly LabelledCidr[],
  ) {}

  /** Reads and checks the peers file (StartupError when it is unreadable, malformed or overlaps a service CIDR). */
  static fromConfig(config: DaemonConfig, src: StaticSourceConfig): StaticSource {
    const parsed = readPeersFile(src.peersFile, { ...config, subnet: src.subnet });
    if (!parsed.ok) throw new StartupError(parsed.error);
    const conflict = serviceCidrConflict(config, parsed.value);
    if (conflict !== undefined) throw new StartupError(conflict, 2);
    return new StaticSource(src.subnet, parsed.value, podCidrs(config, parsed.value));
  }

  /** This node's subnet and every peer, once; the kernel refusing them stops the start. */
  async start(events: PeerEvents): Promise<void> {
    try {
      await events.subnetChanged(this.subnet);
      await events.peersChanged(this.peers);
    } catch (err) {
      // A route someone else owns is the operator's to fix.
      throw new StartupError(`programming the kernel: ${(err as Error).message}`);
    }
  }

  async stop(): Promise<void> {}

  podCidrs(): readonly LabelledCidr[] {
    return this.cidrs;
  }

  status(): SourceStatus {
    return {};
  }

  trace(): SourceTrace {
    return { members: undefined, skipped: [] };
  }

  reload(): string | undefined {
    return "static peers: there is no key file";
  }

  logFields(): Record<string, unknown> {
    return { subnet: formatSubnet(this.subnet), peers: this.peers.length };
  }
}
