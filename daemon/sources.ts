// The one place the configuration's source kind is looked at: it picks the PeerSource the
// daemon runs. A new source is a file beside static-source.ts and a case here.

import type { DaemonConfig } from "./config";
import { GossipSource } from "./gossip-source";
import type { Logger } from "./log";
import type { PeerSource } from "./peer-source";
import { StaticSource } from "./static-source";

/** The configured source, checked (files read, keys loaded) but not started; StartupError when a check fails. */
export function choosePeerSource(config: DaemonConfig, log: Logger): PeerSource {
  const src = config.source;
  switch (src.kind) {
    case "static": return StaticSource.fromConfig(config, src);
    case "gossip": return GossipSource.fromConfig(config, src, log);
  }
}
