// The one place the configuration's source kind is looked at: it picks the PeerSource the
// daemon runs. A new source is a file beside static-source.ts and a case here.

import type { Subnet } from "../encap/types";
import type { DaemonConfig } from "./config";
import { GossipSource } from "./gossip-source";
import { KubernetesSource } from "./kubernetes-source";
import { readKubeMemory, readLease } from "./lease-file";
import type { Logger } from "./log";
import type { PeerSource } from "./peer-source";
import { StaticSource } from "./static-source";

/** The configured source, checked (files read, keys loaded) but not started; StartupError when a check fails. */
export function choosePeerSource(config: DaemonConfig, log: Logger): PeerSource {
  const src = config.source;
  switch (src.kind) {
    case "static": return StaticSource.fromConfig(config, src);
    case "gossip": return GossipSource.fromConfig(config, src, log);
    case "kubernetes": return KubernetesSource.fromConfig(config, src, log);
  }
}

/**
 * This node's subnet as known before its source runs: static or pinned --subnet, else what a
 * previous run held (gossip: a confirmed lease; a claim may yet go to another node; Kubernetes:
 * the Node's podCIDR last seen). The start-up route check excuses a pod bridge holding it.
 */
export function knownSubnet(config: DaemonConfig): Subnet | undefined {
  const src = config.source;
  switch (src.kind) {
    case "static": return src.subnet;
    case "gossip": {
      const lease = readLease(config.stateDir);
      return src.subnet ?? (lease?.state === "confirmed" ? lease.subnet : undefined);
    }
    case "kubernetes": return readKubeMemory(config.stateDir)?.subnet;
  }
}
