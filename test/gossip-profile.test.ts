// --gossip-profile: memberlist's three timing profiles, each with memberlist's own values, and
// the setting read from a flag, the environment or the config file like every other.

import { describe, expect, it } from "vitest";
import {
  GOSSIP_PROFILES, LAN_CONFIG, LOCAL_CONFIG, WAN_CONFIG, makeConfig, parseGossipProfile, suspicionTimeout, type MembershipConfig,
} from "../control/membership/config";
import { parseConfigFile } from "../daemon/config-file";
import { daemonFlags, parseDaemonConfig, type DaemonConfig } from "../daemon/config";

// hashicorp/memberlist config.go (1b4c746c0e53bce51547d38f14d4772f85da2708), in milliseconds:
// DefaultLANConfig, and what DefaultWANConfig and DefaultLocalConfig change from it.
const MEMBERLIST = {
  lan: {
    probeInterval: 1000, probeTimeout: 500, indirectChecks: 3, gossipInterval: 200, gossipNodes: 3, retransmitMult: 4,
    suspicionMult: 4, suspicionMaxTimeoutMult: 6, awarenessMaxMultiplier: 8, pushPullInterval: 30_000, gossipToTheDeadTime: 30_000,
  },
  wan: {
    probeInterval: 5000, probeTimeout: 3000, indirectChecks: 3, gossipInterval: 500, gossipNodes: 4, retransmitMult: 4,
    suspicionMult: 6, suspicionMaxTimeoutMult: 6, awarenessMaxMultiplier: 8, pushPullInterval: 60_000, gossipToTheDeadTime: 60_000,
  },
  local: {
    probeInterval: 1000, probeTimeout: 200, indirectChecks: 1, gossipInterval: 100, gossipNodes: 3, retransmitMult: 2,
    suspicionMult: 3, suspicionMaxTimeoutMult: 6, awarenessMaxMultiplier: 8, pushPullInterval: 15_000, gossipToTheDeadTime: 15_000,
  },
} satisfies Record<keyof typeof GOSSIP_PROFILES, Partial<MembershipConfig>>;

describe("gossip profiles", () => {
  it.each(["lan", "wan", "local"] as const)("%s has memberlist's timings", (name) => {
    expect(GOSSIP_PROFILES[name]).toMatchObject(MEMBERLIST[name]);
  });

  it("LAN is the default the membership core has always used; WAN and Local differ from it only where memberlist's do", () => {
    expect(GOSSIP_PROFILES.lan).toBe(LAN_CONFIG);
    expect(makeConfig()).toEqual(LAN_CONFIG);
    const changed = (c: MembershipConfig): string[] => (Object.keys(c) as (keyof MembershipConfig)[]).filter((k) => c[k] !== LAN_CONFIG[k]).sort();
    expect(changed(WAN_CONFIG)).toEqual(["gossipInterval", "gossipNodes", "gossipToTheDeadTime", "probeInterval", "probeTimeout", "pushPullInterval", "suspicionMult"]);
    expect(changed(LOCAL_CONFIG)).toEqual(["gossipInterval", "gossipToTheDeadTime", "indirectChecks", "probeTimeout", "pushPullInterval", "retransmitMult", "suspicionMult"]);
  });

  it("every profile passes the membership core's checks", () => {
    for (const c of Object.values(GOSSIP_PROFILES)) expect(makeConfig(c)).toEqual(c);
  });

  it("the suspicion timeouts scale as memberlist's do (5 members)", () => {
    expect(suspicionTimeout(LAN_CONFIG.suspicionMult, 5, LAN_CONFIG.probeInterval)).toBe(4000);
    expect(suspicionTimeout(WAN_CONFIG.suspicionMult, 5, WAN_CONFIG.probeInterval)).toBe(30_000);
    expect(suspicionTimeout(LOCAL_CONFIG.suspicionMult, 5, LOCAL_CONFIG.probeInterval)).toBe(3000);
  });

  it("parses lan, wan and local only", () => {
    expect(parseGossipProfile("wan")).toEqual({ ok: true, value: "wan" });
    expect(parseGossipProfile("WAN").ok).toBe(false);
    expect(parseGossipProfile("fast").ok).toBe(false);
  });
});

describe("--gossip-profile", () => {
  const gossipBase = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--key-file", "/k"];
  const profile = (argv: string[], env: NodeJS.ProcessEnv = {}, yaml?: string): string => {
    let file;
    if (yaml !== undefined) {
      const layer = parseConfigFile("/etc/vxmesh/vxmesh.yaml", yaml, daemonFlags);
      if (!layer.ok) throw new Error(layer.error);
      file = layer.value;
    }
    const r = parseDaemonConfig([...gossipBase, ...argv], env, file);
    if (!r.ok) throw new Error(r.error);
    const src: DaemonConfig["source"] = r.value.source;
    if (src.kind !== "gossip") throw new Error("expected gossip");
    return src.profile;
  };

  it("defaults to lan; a flag, VXMESH_GOSSIP_PROFILE or the config file choose another, the flag winning", () => {
    expect(profile([])).toBe("lan");
    expect(profile(["--gossip-profile", "wan"])).toBe("wan");
    expect(profile([], { VXMESH_GOSSIP_PROFILE: "local" })).toBe("local");
    expect(profile([], {}, "gossip-profile: wan\n")).toBe("wan");
    expect(profile([], {}, "gossipProfile: local\n")).toBe("local");
    expect(profile(["--gossip-profile", "lan"], { VXMESH_GOSSIP_PROFILE: "wan" }, "gossip-profile: local\n")).toBe("lan");
  });

  it("names the setting, the value and what is valid", () => {
    const r = parseDaemonConfig([...gossipBase, "--gossip-profile", "fast"], {});
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toBe('--gossip-profile "fast" is not valid: expected lan, wan or local (memberlist\'s DefaultLANConfig, DefaultWANConfig, DefaultLocalConfig)');
    const env = parseDaemonConfig(gossipBase, { VXMESH_GOSSIP_PROFILE: "x" });
    expect(!env.ok && env.error).toContain('VXMESH_GOSSIP_PROFILE "x" is not valid');
  });
});
