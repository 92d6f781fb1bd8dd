import { describe, expect, it } from "vitest";
import { daemonFlags, parseDaemonConfig, parsePeers, serviceCidrConflict, type DaemonConfig } from "../daemon/config";
import { parseConfigFile } from "../daemon/config-file";
import type { FileLayer } from "../daemon/flags";
import { formatMac, formatSubnet, parseSubnet, vtepMacFor, type Ipv4, type Subnet } from "../encap/types";

const base = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--subnet", "10.244.1.0/24", "--peers", "/tmp/p.json"];

function error(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  const r = parseDaemonConfig(argv, env);
  if (r.ok) throw new Error("expected an error");
  return r.error;
}

describe("daemon flags", () => {
  it("applies defaults", () => {
    const r = parseDaemonConfig(base, {});
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.vni).toBe(1);
    expect(r.value.vxlanPort).toBe(4789);
    expect(r.value.tap).toBe("vxmesh0");
    expect(r.value.vtepMac).toBe(vtepMacFor("n1"));
    expect(r.value.mtu).toBeUndefined();
  });

  it("names the flag, the value and the valid range in every error", () => {
    expect(error([...base, "--vni", "16777216"])).toBe('--vni "16777216" is not valid: expected an integer from 0 to 16777215');
    expect(error([...base, "--vxlan-port", "0"])).toContain("--vxlan-port \"0\" is not valid: expected an integer from 1 to 65535");
    expect(error([...base, "--mtu", "100"])).toContain("--mtu \"100\" is not valid: expected an integer from 576 to 9000");
    expect(error([...base, "--vtep-mac", "01:00:00:00:00:01"])).toContain("unicast");
    expect(error([...base, "--tap", "a-name-that-is-too-long"])).toContain("--tap");
    expect(error(["--node-name", "n1"])).toContain("--underlay-ip is required (or VXMESH_UNDERLAY_IP)");
    expect(error([...base, "--bogus", "1"])).toMatch(/unknown flag --bogus; valid flags: .*--node-name/);
    expect(error([...base.slice(0, 5), "10.244.1.7/24", ...base.slice(6)])).toContain("did you mean 10.244.1.0/24");
    expect(error([...base, "--vni"])).toContain("--vni needs a value");
  });

  it("reads VXMESH_<FLAG> from the environment, the command line winning", () => {
    const r = parseDaemonConfig([...base, "--vni", "5"], { VXMESH_VNI: "9", VXMESH_VXLAN_PORT: "8472" });
    expect(r.ok && r.value.vni).toBe(5);
    expect(r.ok && r.value.vxlanPort).toBe(8472);
    expect(error(base, { VXMESH_VXLAN_PORT: "x" })).toContain('VXMESH_VXLAN_PORT "x" is not valid');
  });
});

describe("--subnet-source", () => {
  const kube = ["--underlay-ip", "192.0.2.11", "--subnet-source", "kubernetes"];

  it("kubernetes: the kubeconfig, the cluster CIDR, and the node name from NODE_NAME", () => {
    const r = parseDaemonConfig([...kube, "--kubeconfig", "/etc/vxmesh/kubeconfig", "--cluster-cidr", "10.42.0.0/16"], { NODE_NAME: "worker-1" });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.nodeName).toBe("worker-1");
    expect(r.value.vtepMac).toBe(vtepMacFor("worker-1"));
    expect(r.value.source).toEqual({ kind: "kubernetes", kubeconfig: "/etc/vxmesh/kubeconfig", clusterCidr: parseSubnet("10.42.0.0/16").ok && { family: 4, network: 0x0a2a0000, prefixLen: 16 } });
    const inCluster = parseDaemonConfig(kube, { VXMESH_NODE_NAME: "n2", NODE_NAME: "ignored" });
    expect(inCluster.ok && inCluster.value.nodeName).toBe("n2");
    expect(inCluster.ok && inCluster.value.source).toMatchObject({ kind: "kubernetes", kubeconfig: undefined });
  });

  it("names what does not go with it", () => {
    expect(error(kube, {})).toMatch(/^--node-name is required \(or VXMESH_NODE_NAME, or NODE_NAME\): this node's name/);
    expect(error(kube, { NODE_NAME: "Bad_Name" })).toMatch(/^NODE_NAME "Bad_Name" is not valid: expected a DNS name of up to 253 characters/);
    // A Node name as clouds make them: longer than gossip carries, fine here.
    const long = `${"a".repeat(60)}.${"b".repeat(60)}.eu-west-1.compute.internal`;
    expect(parseDaemonConfig(kube, { NODE_NAME: long }).ok).toBe(true);
    expect(error(["--underlay-ip", "192.0.2.11", "--key-file", "/k"], { NODE_NAME: long })).toMatch(/is too long for gossip: at most 63 characters/);
    expect(error([...kube, "--subnet", "10.244.1.0/24"], { NODE_NAME: "n1" })).toBe("--subnet-source kubernetes cannot be combined with --subnet: the Node's spec.podCIDR is the subnet and the other Nodes are the peers");
    expect(error([...kube, "--peers", "/p", "--key-file", "/k"], { NODE_NAME: "n1" })).toContain("cannot be combined with --peers, --key-file");
    expect(error([...kube, "--subnet-len", "26", "--gossip-profile", "wan"], { NODE_NAME: "n1" })).toContain("cannot be combined with --subnet-len, --gossip-profile");
    expect(error(["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--subnet-source", "gossip", "--key-file", "/k", "--peers", "/p"])).toBe("--peers (static peers) cannot be combined with --subnet-source gossip");
    expect(error([...kube.slice(0, 2), "--subnet-source", "etcd"], { NODE_NAME: "n1" })).toBe('--subnet-source "etcd" is not valid: expected static, gossip or kubernetes');
    expect(error(["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--key-file", "/k", "--kubeconfig", "/c"])).toBe("--kubeconfig is for --subnet-source kubernetes, not gossip");
    expect(error([...base, "--kubeconfig", "/c"])).toBe("--peers (static peers) cannot be combined with --kubeconfig");
    expect(error(["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--subnet-source", "static"])).toBe("--peers FILE is required with --subnet-source static: the other nodes");
  });

  it("without it: --peers means static, else gossip, as before", () => {
    const r = parseDaemonConfig(base, {});
    expect(r.ok && r.value.source.kind).toBe("static");
    const g = parseDaemonConfig(["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--key-file", "/k"], {});
    expect(g.ok && g.value.source.kind).toBe("gossip");
  });
});

describe("peers file", () => {
  const sub = parseSubnet("10.244.1.0/24");
  if (!sub.ok) throw new Error("bad fixture");
  const self = { nodeName: "n1", subnet: sub.value, underlayIp: 0xc000020b as Ipv4, vtepMac: vtepMacFor("n1") };
  const entry = (o: Record<string, unknown>): string =>
    JSON.stringify([{ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", vtepMac: "02:00:00:00:00:02", ...o }]);
  const err = (text: string): string => {
    const r = parsePeers(text, self);
    if (r.ok) throw new Error("expected an error");
    return r.error;
  };

  it("parses entries, skips this node and derives a missing MAC", () => {
    const r = parsePeers(JSON.stringify([
      { name: "n1", underlayIp: "192.0.2.11", subnet: "10.244.1.0/24" },
      { name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24" },
    ]), self);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value).toHaveLength(1);
    expect(formatMac(r.value[0]!.vtepMac)).toBe(formatMac(vtepMacFor("n2")));
  });

  it("says exactly what is wrong", () => {
    expect(err("{")).toContain("not valid JSON");
    expect(err("{}")).toContain("expected a JSON array");
    expect(err(entry({ underlayIp: "192.0.2" }))).toBe('entry 0 (n2): underlayIp "192.0.2" is not valid: expected a dotted-quad IPv4 address such as 192.0.2.10');
    expect(err(entry({ subnet: "10.244.1.0/25" }))).toContain("overlaps this node's --subnet 10.244.1.0/24");
    expect(err(entry({ vtepMac: "zz" }))).toContain("vtepMac \"zz\" is not valid");
    expect(err(entry({ extra: 1 }))).toContain('unknown field "extra"');
    expect(err(entry({ underlayIp: 5 }))).toContain('field "underlayIp" must be a string');
    expect(err(JSON.stringify([
      { name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24" },
      { name: "n3", underlayIp: "192.0.2.13", subnet: "10.244.2.128/25" },
    ]))).toContain("overlaps n2's 10.244.2.0/24");
  });
});

describe("config sources: flag > env > file > default", () => {
  const gossipBase = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--key-file", "/tmp/k"];
  const yaml = [
    "vni: 7",
    "offload: false",
    "service-cidr: [10.96.0.0/12, 10.100.0.0/16]",
    "join: 192.0.2.21:7000",
    "clusterCidr: 10.200.0.0/16",
    "log-level: debug",
  ].join("\n");
  const layer = (): FileLayer => {
    const r = parseConfigFile("/etc/vxmesh/vxmesh.yaml", yaml, daemonFlags);
    if (!r.ok) throw new Error(r.error);
    return r.value;
  };
  const value = (argv: string[], env: NodeJS.ProcessEnv, file?: FileLayer): DaemonConfig => {
    const r = parseDaemonConfig([...gossipBase, ...argv], env, file);
    if (!r.ok) throw new Error(r.error);
    return r.value;
  };
  const gossip = (c: DaemonConfig): Extract<DaemonConfig["source"], { kind: "gossip" }> => {
    if (c.source.kind !== "gossip") throw new Error("expected gossip");
    return c.source;
  };
  const cidrs = (c: DaemonConfig): string[] => c.serviceCidrs.map((s) => formatSubnet(s.subnet));

  it("defaults when no source gives a value", () => {
    const c = value([], {});
    expect(c.vni).toBe(1);
    expect(c.offload).toBe(true);
    expect(c.busyPoll).toBe(50);
    expect(cidrs(c)).toEqual([]);
    expect(gossip(c).join).toEqual([]);
    expect(formatSubnet(gossip(c).clusterCidr)).toBe("10.244.0.0/16");
  });

  it("the file beats the defaults (an integer, a boolean, lists, a camelCase key)", () => {
    const c = value([], {}, layer());
    expect(c.vni).toBe(7);
    expect(c.offload).toBe(false);
    expect(cidrs(c)).toEqual(["10.96.0.0/12", "10.100.0.0/16"]);
    expect(gossip(c).join).toEqual([{ ip: 0xc0000215, port: 7000 }]);
    expect(formatSubnet(gossip(c).clusterCidr)).toBe("10.200.0.0/16");
    expect(c.logLevel).toBe("debug");
  });

  it("the environment beats the file", () => {
    const env = { VXMESH_VNI: "8", VXMESH_OFFLOAD: "true", VXMESH_SERVICE_CIDR: "10.97.0.0/16", VXMESH_JOIN: "192.0.2.22,192.0.2.23:7001" };
    const c = value([], env, layer());
    expect(c.vni).toBe(8);
    expect(c.offload).toBe(true);
    expect(cidrs(c)).toEqual(["10.97.0.0/16"]);
    expect(gossip(c).join).toEqual([{ ip: 0xc0000216, port: 7946 }, { ip: 0xc0000217, port: 7001 }]);
    expect(c.logLevel).toBe("debug"); // not in the environment: still the file's
  });

  it("a flag beats the environment and the file; a list flag may repeat or use commas", () => {
    const env = { VXMESH_VNI: "8", VXMESH_OFFLOAD: "true", VXMESH_SERVICE_CIDR: "10.97.0.0/16" };
    const c = value(["--vni", "9", "--offload=false", "--service-cidr", "10.98.0.0/16,10.99.0.0/16", "--service-cidr", "10.101.0.0/16", "--log-level", "warn"], env, layer());
    expect(c.vni).toBe(9);
    expect(c.offload).toBe(false);
    expect(cidrs(c)).toEqual(["10.98.0.0/16", "10.99.0.0/16", "10.101.0.0/16"]);
    expect(c.logLevel).toBe("warn");
  });

  it("a required setting may come from the file", () => {
    const r = parseConfigFile("n.json", JSON.stringify({ nodeName: "n7", "underlay-ip": "192.0.2.17", keyFile: "/k" }), daemonFlags);
    if (!r.ok) throw new Error(r.error);
    const c = parseDaemonConfig([], {}, r.value);
    expect(c.ok && c.value.nodeName).toBe("n7");
    expect(error([], {})).toMatch(/^--node-name is required \(or VXMESH_NODE_NAME, or NODE_NAME\): this node's name, unique in the cluster/);
    const empty = parseConfigFile("e.yaml", "", daemonFlags);
    if (!empty.ok) throw new Error(empty.error);
    const r2 = parseDaemonConfig([], {}, empty.value);
    expect(r2.ok ? "" : r2.error).toContain("--node-name is required (or VXMESH_NODE_NAME, or node-name in e.yaml, or NODE_NAME)");
  });

  it("a bad value names the setting, the value, its source and what is valid", () => {
    const file = (text: string): FileLayer => {
      const r = parseConfigFile("/etc/vxmesh/vxmesh.yaml", text, daemonFlags);
      if (!r.ok) throw new Error(r.error);
      return r.value;
    };
    const err = (argv: string[], env: NodeJS.ProcessEnv, f?: FileLayer): string => {
      const r = parseDaemonConfig([...gossipBase, ...argv], env, f);
      if (r.ok) throw new Error("expected an error");
      return r.error;
    };
    expect(err(["--offload=maybe"], {})).toBe('--offload "maybe" is not valid: expected true or false');
    expect(err(["--busy-poll", "100001"], {})).toBe('--busy-poll "100001" is not valid: expected an integer from 0 to 100000');
    expect(value(["--busy-poll", "0"], {}).busyPoll).toBe(0);
    expect(err([], { VXMESH_OFFLOAD: "maybe" })).toBe('VXMESH_OFFLOAD "maybe" is not valid: expected true or false');
    expect(err([], {}, file("# comment\noffload: maybe"))).toBe('offload "maybe" in /etc/vxmesh/vxmesh.yaml:2 is not valid: expected true or false');
    expect(err([], {}, file("vni: 16777216"))).toBe('vni "16777216" in /etc/vxmesh/vxmesh.yaml:1 is not valid: expected an integer from 0 to 16777215');
    expect(err([], {}, file("gossipPort: 0"))).toBe('gossipPort "0" in /etc/vxmesh/vxmesh.yaml:1 is not valid: expected an integer from 1 to 65535');
    expect(err([], {}, file("service-cidr: [10.96.0.1/12]"))).toContain('service-cidr "10.96.0.1/12" in /etc/vxmesh/vxmesh.yaml:1 is not valid: expected a comma-separated list of IPv4 CIDRs such as 10.96.0.0/12; 10.96.0.1/12: expected a network address with host bits zero (did you mean 10.96.0.0/12?)');
    expect(err(["--service-cidr", "x"], {})).toContain('--service-cidr "x" is not valid');
    expect(err([], { VXMESH_SERVICE_CIDR: "10.96.0.0/12,bad" })).toContain('VXMESH_SERVICE_CIDR "10.96.0.0/12,bad" is not valid');
    // Values that only conflict together say where each came from.
    expect(err(["--subnet-len", "8"], {}, file("cluster-cidr: 10.244.0.0/16"))).toBe(
      "--subnet-len 8 is shorter than the prefix of cluster-cidr 10.244.0.0/16 (in /etc/vxmesh/vxmesh.yaml:1): expected 16 to 30");
    expect(err([], { VXMESH_SUBNET: "10.9.0.0/24" })).toBe("VXMESH_SUBNET=10.9.0.0/24 is not inside --cluster-cidr 10.244.0.0/16 (the default)");
    // Flags still win over a bad value in the file or the environment.
    expect(value(["--vni", "5"], { VXMESH_VNI: "x" }, file("vni: y")).vni).toBe(5);
  });
});

describe("egress and forwarding rules: --ip-masq, --forward-accept, --iptables-backend", () => {
  const base = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--key-file", "/tmp/k"];
  const parse = (argv: string[], env: NodeJS.ProcessEnv = {}, yaml?: string): ReturnType<typeof parseDaemonConfig> => {
    let layer: FileLayer | undefined;
    if (yaml !== undefined) {
      const r = parseConfigFile("/etc/vxmesh/vxmesh.yaml", yaml, daemonFlags);
      if (!r.ok) throw new Error(r.error);
      layer = r.value;
    }
    return parseDaemonConfig([...base, ...argv], env, layer);
  };
  const ok = (argv: string[], env: NodeJS.ProcessEnv = {}, yaml?: string): DaemonConfig => {
    const r = parse(argv, env, yaml);
    if (!r.ok) throw new Error(r.error);
    return r.value;
  };

  it("both on, the back end auto, by default", () => {
    expect(ok([])).toMatchObject({ ipMasq: true, forwardAccept: true, iptablesBackend: "auto" });
  });

  it("each from a flag, the environment or the file, like every flag", () => {
    expect(ok(["--ip-masq=false"])).toMatchObject({ ipMasq: false, forwardAccept: true });
    expect(ok(["--forward-accept=false", "--iptables-backend", "legacy"])).toMatchObject({ ipMasq: true, forwardAccept: false, iptablesBackend: "legacy" });
    expect(ok([], { VXMESH_IP_MASQ: "false", VXMESH_IPTABLES_BACKEND: "nft" })).toMatchObject({ ipMasq: false, iptablesBackend: "nft" });
    expect(ok([], {}, "ip-masq: false\nforwardAccept: false\niptables-backend: legacy")).toMatchObject({ ipMasq: false, forwardAccept: false, iptablesBackend: "legacy" });
    expect(ok(["--ip-masq=true"], { VXMESH_IP_MASQ: "false" }, "ip-masq: false").ipMasq).toBe(true);
  });

  it("a bad value names the setting and what is valid", () => {
    const error = (argv: string[], env: NodeJS.ProcessEnv = {}, yaml?: string): string => {
      const r = parse(argv, env, yaml);
      return r.ok ? "" : r.error;
    };
    expect(error(["--ip-masq=maybe"])).toBe('--ip-masq "maybe" is not valid: expected true or false');
    expect(error([], { VXMESH_FORWARD_ACCEPT: "sometimes" })).toBe('VXMESH_FORWARD_ACCEPT "sometimes" is not valid: expected true or false');
    expect(error([], {}, "iptables-backend: nftables")).toBe(
      'iptables-backend "nftables" in /etc/vxmesh/vxmesh.yaml:1 is not valid: expected auto (the back end the node\'s rules are in, as kube-proxy\'s iptables-wrapper decides), nft or legacy');
  });
});

describe("service CIDRs", () => {
  const gossipBase = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--key-file", "/tmp/k"];
  const err = (argv: string[], env: NodeJS.ProcessEnv = {}): string => {
    const r = parseDaemonConfig(argv, env);
    if (r.ok) throw new Error("expected an error");
    return r.error;
  };

  it("the cluster CIDR must not overlap one", () => {
    expect(err([...gossipBase, "--service-cidr", "10.96.0.0/12,10.244.128.0/20"])).toBe(
      "--cluster-cidr 10.244.0.0/16 overlaps service CIDR 10.244.128.0/20 (--service-cidr): pod and service addresses must not overlap; choose pod addresses outside every service CIDR");
    expect(err([...gossipBase, "--cluster-cidr", "10.96.0.0/16"], { VXMESH_SERVICE_CIDR: "10.96.0.0/12" })).toContain(
      "--cluster-cidr 10.96.0.0/16 overlaps service CIDR 10.96.0.0/12 (VXMESH_SERVICE_CIDR)");
    const ok = parseDaemonConfig([...gossipBase, "--service-cidr", "10.96.0.0/12"], {});
    expect(ok.ok).toBe(true);
  });

  it("a static node's subnet must not overlap one", () => {
    expect(err([...base, "--service-cidr", "10.244.1.128/25"])).toContain("--subnet 10.244.1.0/24 overlaps service CIDR 10.244.1.128/25 (--service-cidr)");
  });

  it("and neither may a static peer's subnet", () => {
    const r = parseDaemonConfig([...base, "--service-cidr", "10.96.0.0/12"], {});
    if (!r.ok) throw new Error(r.error);
    const peer = { name: "n2", underlayIp: 0xc000020c as Ipv4, subnet: subnet("10.96.4.0/24"), vtepMac: vtepMacFor("n2"), path: "vxlan" as const };
    expect(serviceCidrConflict(r.value, [peer])).toBe(
      "peer n2's subnet 10.96.4.0/24 (in --peers /tmp/p.json) overlaps service CIDR 10.96.0.0/12 (--service-cidr): pod and service addresses must not overlap; choose pod addresses outside every service CIDR");
    expect(serviceCidrConflict(r.value, [{ ...peer, subnet: subnet("10.244.2.0/24") }])).toBeUndefined();
  });
});

function subnet(text: string): Subnet {
  const r = parseSubnet(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}
