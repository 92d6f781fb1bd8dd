// The daemon's settings: flags (also VXMESH_* variables and keys of a --config file), their
// validation, and the peers file.

import * as fs from "node:fs";
import type { Peer } from "../encap/fdb";
import {
  formatSubnet, parseIpv4, parseMac, parseSubnet, parseVni, subnetInside, subnetsOverlap, vtepMacFor,
  type Ipv4, type MacAddr, type Parsed, type Subnet, type Vni,
} from "../encap/types";
import { VXLAN_DEFAULT_PORT, VXLAN_LINUX_LEGACY_PORT } from "../encap/vxlan";
import { BURST_PERIOD_MS, BURST_SPIN_US, BURST_WAKES } from "../encap/spin-policy";
import { serviceOverlapMessage, serviceOverlaps, type LabelledCidr } from "../control/cidr-overlap";
import { readConfigFile } from "./config-file";
import { anyText, boolSwitch, describeOrigin, describeSetting, envName, intInRange, parseFlags, withDefault, type FileLayer, type FlagSpec } from "./flags";
import { parseLogFormat, type LogFormat } from "./log";
import { parseKeepCaps, type KeepCaps } from "./capabilities";
import { parseIptablesBackend, type BackendChoice } from "../control/iptables-rules";
import { DEFAULT_CONFIRM_AFTER_MS, DEFAULT_SUBNET_LEN, MAX_SUBNET_LEN } from "../control/subnet-allocator";
import { parseGossipProfile, type GossipProfile } from "../control/membership/config";
import { DEFAULT_RUN_DIR, DEFAULT_STATE_DIR } from "./default-dirs";

/** Static peers from a file, peers found by gossip, or the cluster's Nodes. */
export type PeerSource =
  | { kind: "static"; peersFile: string; subnet: Subnet }
  | {
    kind: "kubernetes";
    /** undefined: in-cluster (the pod's service account). */
    kubeconfig: string | undefined;
    /** Every Node's podCIDR must lie inside it. */
    clusterCidr: Subnet;
  }
  | {
    kind: "gossip";
    keyFile: string;
    /** Seeds to join; empty for the first node. */
    join: GossipAddress[];
    gossipPort: number;
    clusterCidr: Subnet;
    subnetLen: number;
    /** A static subnet still announced and defended through gossip; else claimed. */
    subnet: Subnet | undefined;
    /** How long a claim must stand unchallenged before it is confirmed (ms). */
    claimWaitMs: number;
    /** memberlist's timing profile: lan, wan or local. */
    profile: GossipProfile;
  };

export interface GossipAddress {
  ip: Ipv4;
  port: number;
}

export interface DaemonConfig {
  nodeName: string;
  underlayIp: Ipv4;
  source: PeerSource;
  vni: Vni;
  vxlanPort: number;
  tap: string;
  vtepMac: MacAddr;
  /** undefined: underlay MTU − 50. */
  mtu: number | undefined;
  runDir: string;
  stateDir: string;
  /** undefined: no metrics server. */
  metricsAddr: { host: string; port: number } | undefined;
  logLevel: string;
  logFormat: LogFormat;
  batch: number;
  sourcePorts: number;
  offload: boolean;
  /** µs the forwarder keeps polling without sleeping after traffic; 0: it sleeps at once. */
  busyPoll: number;
  /** Service CIDRs pod addresses must stay clear of; each with where it was set. */
  serviceCidrs: LabelledCidr[];
  keepCaps: KeepCaps;
  /** Pod traffic to outside the cluster CIDR leaves with the node's address (iptables MASQUERADE). */
  ipMasq: boolean;
  /** FORWARD accepts traffic from and to the cluster CIDR (a FORWARD policy of DROP does not cut pods off). */
  forwardAccept: boolean;
  iptablesBackend: BackendChoice;
}

/** The underlay IPv4 + UDP + VXLAN + inner Ethernet headers. */
export const IPV4_OVERHEAD = 50;
export const MIN_MTU = 576;
const MAX_BUSY_POLL_US = 100_000;
/**
 * Busy-polling after traffic by default, briefly: long enough to catch the next frames of a
 * burst without a wake-up (64-byte UDP +24 % in the bench), too short to keep a core busy.
 */
const DEFAULT_BUSY_POLL_US = 50;
const MAX_MTU = 9000;

export type SourceChoice = "static" | "gossip" | "kubernetes";

function parseSourceChoice(text: string): Parsed<SourceChoice> {
  return text === "static" || text === "gossip" || text === "kubernetes" ? { ok: true, value: text } : { ok: false, error: "static, gossip or kubernetes" };
}

/** Gossip records carry names this long at most (control/node-record.ts); Kubernetes Node names may be longer. */
const GOSSIP_NAME_MAX = 63;

/** A DNS subdomain, as Kubernetes names Nodes: labels of 1-63 characters, 253 in all. */
function parseNodeName(text: string): Parsed<string> {
  const label = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
  return text.length <= 253 && new RegExp(`^${label}(\\.${label})*$`).test(text)
    ? { ok: true, value: text }
    : { ok: false, error: "a DNS name of up to 253 characters: labels of 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit, joined by '.'" };
}

function parseIfName(text: string): Parsed<string> {
  return /^[A-Za-z0-9_.-]{1,15}$/.test(text) && text !== "." && text !== ".."
    ? { ok: true, value: text }
    : { ok: false, error: "an interface name of 1-15 characters from A-Z a-z 0-9 _ . -" };
}

function parseLogLevel(text: string): Parsed<string> {
  const levels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];
  return levels.includes(text) ? { ok: true, value: text } : { ok: false, error: `one of ${levels.join(", ")}` };
}

export const daemonFlags = {
  nodeName: { name: "node-name", help: "this node's name, unique in the cluster (Kubernetes: the Node's name; NODE_NAME, as the downward API sets it, is read last)", required: true, fallbackEnv: "NODE_NAME", parse: parseNodeName } satisfies FlagSpec<string>,
  subnetSource: { name: "subnet-source", help: "where this node's subnet and its peers come from: static (--peers FILE), gossip (--key-file, --join) or kubernetes (the Nodes' spec.podCIDR and vxmesh.io/ annotations, through the API server)", defaultText: "static with --peers, else gossip", parse: parseSourceChoice } satisfies FlagSpec<SourceChoice>,
  kubeconfig: { name: "kubeconfig", help: "--subnet-source kubernetes: a kubeconfig file (https server, its CA, a token, token file or client certificate)", defaultText: "in-cluster: $KUBERNETES_SERVICE_HOST and the pod's service-account token", parse: anyText } satisfies FlagSpec<string>,
  underlayIp: { name: "underlay-ip", help: "this node's underlay IPv4 address; VXLAN is sent from and received on it", required: true, parse: parseIpv4 } satisfies FlagSpec<Ipv4>,
  config: { name: "config", help: "a config file (YAML, or JSON: by extension, else by content) whose keys are these flag names", defaultText: "none", parse: anyText } satisfies FlagSpec<string>,
  subnet: { name: "subnet", help: "this node's pod subnet, e.g. 10.244.1.0/24 (with --peers: required; with gossip: static instead of claimed)", defaultText: "claimed from --cluster-cidr", parse: parseSubnet } satisfies FlagSpec<Subnet>,
  peers: { name: "peers", help: "static peers: a JSON file listing the other nodes [{name, underlayIp, subnet, vtepMac}] (instead of gossip)", defaultText: "none: gossip", parse: anyText } satisfies FlagSpec<string>,
  keyFile: { name: "key-file", help: "gossip keyring: base64 AES-256 keys, one per line, the first encrypts (mode 0600; `vxmesh keygen` makes one)", defaultText: "none; required for gossip", parse: anyText } satisfies FlagSpec<string>,
  join: { name: "join", help: "gossip seeds to join, HOST:PORT[,HOST:PORT…]", defaultText: "none: the first node", repeatable: true, parse: parseJoinList } satisfies FlagSpec<GossipAddress[]>,
  gossipProfile: { name: "gossip-profile", help: "gossip timings, memberlist's profiles: lan (probe every 1 s, 500 ms timeout), wan (5 s, 3 s: high-latency links) or local (1 s, 200 ms: loopback or one host); every node should use the same", ...withDefault<GossipProfile>("lan"), parse: parseGossipProfile } satisfies FlagSpec<GossipProfile>,
  gossipPort: { name: "gossip-port", help: "UDP and TCP port for gossip on the underlay address, 1-65535", ...withDefault(7946), parse: intInRange(1, 65535) } satisfies FlagSpec<number>,
  clusterCidr: { name: "cluster-cidr", help: "the pod network node subnets are claimed from", ...withDefault<Subnet>({ family: 4, network: 0x0af40000 as Ipv4, prefixLen: 16 }, formatSubnet), parse: parseSubnet } satisfies FlagSpec<Subnet>,
  serviceCidr: { name: "service-cidr", help: "service (ClusterIP) CIDRs, CIDR[,CIDR…]; pod addresses must not overlap them", defaultText: "none", repeatable: true, parse: parseCidrList } satisfies FlagSpec<Subnet[]>,
  subnetLen: { name: "subnet-len", help: `prefix length of each node's subnet, from the cluster CIDR's length to ${MAX_SUBNET_LEN}`, ...withDefault(DEFAULT_SUBNET_LEN), parse: intInRange(1, MAX_SUBNET_LEN) } satisfies FlagSpec<number>,
  claimWait: { name: "claim-wait", help: "seconds a subnet claim must stand unchallenged before it is confirmed (one anti-entropy round), 0-600", ...withDefault(DEFAULT_CONFIRM_AFTER_MS / 1000), parse: intInRange(0, 600) } satisfies FlagSpec<number>,
  vni: { name: "vni", help: "VXLAN network identifier, 0-16777215", ...withDefault(1 as Vni), parse: parseVni } satisfies FlagSpec<Vni>,
  vxlanPort: { name: "vxlan-port", help: `UDP port of VXLAN on the underlay (${VXLAN_LINUX_LEGACY_PORT} for flannel's)`, ...withDefault(VXLAN_DEFAULT_PORT), parse: intInRange(1, 65535) } satisfies FlagSpec<number>,
  tap: { name: "tap", help: "name of the TAP device the daemon creates", ...withDefault("vxmesh0"), parse: parseIfName } satisfies FlagSpec<string>,
  vtepMac: { name: "vtep-mac", help: "MAC address of this node's VTEP", defaultText: "derived from the node name", parse: parseMac } satisfies FlagSpec<MacAddr>,
  mtu: { name: "mtu", help: `MTU of the TAP and pods, ${MIN_MTU}-${MAX_MTU}`, defaultText: `underlay MTU − ${IPV4_OVERHEAD}`, parse: intInRange(MIN_MTU, MAX_MTU) } satisfies FlagSpec<number>,
  runDir: { name: "run-dir", help: "directory for the control socket", ...withDefault(DEFAULT_RUN_DIR), parse: anyText } satisfies FlagSpec<string>,
  metricsAddr: { name: "metrics-addr", help: "HOST:PORT for Prometheus /metrics, /healthz and /readyz, or \"off\"", ...withDefault({ host: "127.0.0.1", port: 9464 }, (a) => `${a.host}:${a.port}`), parse: parseListenAddr } satisfies FlagSpec<{ host: string; port: number } | "off">,
  stateDir: { name: "state-dir", help: "directory for state that survives restarts (pod address leases)", ...withDefault(DEFAULT_STATE_DIR), parse: anyText } satisfies FlagSpec<string>,
  logLevel: { name: "log-level", help: "fatal, error, warn, info, debug, trace or silent", ...withDefault("info"), parse: parseLogLevel } satisfies FlagSpec<string>,
  logFormat: { name: "log-format", help: "json (one object per line), pretty (readable lines) or auto (pretty on a terminal, else json)", ...withDefault<LogFormat>("auto"), parse: parseLogFormat } satisfies FlagSpec<LogFormat>,
  batch: { name: "batch", help: "frames per forwarder batch, 1-256 (with --offload, TAP super-frames up to 64 and GRO runs up to 16)", ...withDefault(64), parse: intInRange(1, 256) } satisfies FlagSpec<number>,
  offload: { name: "offload", help: "the fast path: TAP with virtio-net headers and TSO, UDP GSO/GRO (--offload=false: one frame per datagram)", ...withDefault(true), isSwitch: true, parse: boolSwitch } satisfies FlagSpec<boolean>,
  busyPoll: { name: "busy-poll", help: `µs the forwarder keeps polling after traffic instead of sleeping, yielding the CPU to any runnable thread between polls (lower latency and more packets per second, for up to one busy core while traffic flows; during a burst, more than ${BURST_WAKES} wake-ups within ${BURST_PERIOD_MS} ms, at most ${BURST_SPIN_US}), 0-${MAX_BUSY_POLL_US}; 0 sleeps at once`, ...withDefault(DEFAULT_BUSY_POLL_US), parse: intInRange(0, MAX_BUSY_POLL_US) } satisfies FlagSpec<number>,
  keepCaps: { name: "keep-caps", help: "capabilities kept after set-up, on every thread (the rest are dropped and no_new_privs is set): auto (net_admin, plus sys_admin when held, for the CNI handler to enter pod namespaces, plus net_raw for iptables-legacy when --ip-masq or --forward-accept use it; a non-root daemon keeps what iptables needs ambient too), a comma list such as net_admin, or all to drop nothing", ...withDefault<KeepCaps>({ kind: "auto" }, (k) => k.kind), parse: parseKeepCaps } satisfies FlagSpec<KeepCaps>,
  ipMasq: { name: "ip-masq", help: "pod traffic to addresses outside the cluster CIDR (static peers: this node's and every peer's subnet) leaves with the node's address: iptables MASQUERADE --random-fully in the chain VXMESH-POSTROUTING, skipping packets kube-proxy marked (0x4000); pod↔pod and node↔pod traffic keeps its addresses (--ip-masq=false: no NAT)", ...withDefault(true), isSwitch: true, parse: boolSwitch } satisfies FlagSpec<boolean>,
  forwardAccept: { name: "forward-accept", help: "FORWARD accepts traffic from and to the cluster CIDR (chain VXMESH-FORWARD, jumped to first), so a FORWARD policy of DROP, as Docker sets, does not cut pod traffic (--forward-accept=false: leave FORWARD alone)", ...withDefault(true), isSwitch: true, parse: boolSwitch } satisfies FlagSpec<boolean>,
  iptablesBackend: { name: "iptables-backend", help: "where --ip-masq and --forward-accept put their rules: auto (the back end the node's rules are in, as kube-proxy's iptables-wrapper decides; nft when there are none), nft or legacy", ...withDefault<BackendChoice>("auto"), parse: parseIptablesBackend } satisfies FlagSpec<BackendChoice>,
  sourcePorts: { name: "source-ports", help: "UDP source ports VXLAN leaves from, one per flow hash bucket (entropy for underlay ECMP), 1-64", ...withDefault(8), parse: intInRange(1, 64) } satisfies FlagSpec<number>,
};

/** Notes for `vxmesh daemon --help` on where settings come from. */
export const CONFIG_HELP_NOTES = [
  "Every flag can also be set as VXMESH_<FLAG> in the environment, or as a key in the file given",
  "by --config (YAML or JSON; keys are the flag names, e.g. cluster-cidr, or their camelCase).",
  "Precedence: flag > environment > config file > default.",
];

/**
 * The daemon's settings from the command line, the environment and an optional config file.
 * Checks every value and how they combine, except the pod/service CIDR overlap
 * (`serviceCidrConflict`), which `parseDaemonConfig` adds.
 */
export function parseDaemonSettings(argv: readonly string[], env: NodeJS.ProcessEnv, file?: FileLayer): Parsed<DaemonConfig> {
  const parsed = parseFlags(daemonFlags, argv, env, file);
  if (!parsed.ok) return parsed;
  if (parsed.positional.length > 0) return { ok: false, error: `unexpected argument ${JSON.stringify(parsed.positional[0])}` };
  const v = parsed.values;
  const o = parsed.origins;
  const show = (key: keyof typeof daemonFlags, value: string): string => describeSetting(daemonFlags[key].name, value, o[key]);
  const nodeName = v.nodeName as string;
  const source = chooseSource(v, show);
  if (!source.ok) return source;
  return {
    ok: true,
    value: {
      nodeName,
      underlayIp: v.underlayIp as Ipv4,
      source: source.value,
      vni: v.vni ?? daemonFlags.vni.default,
      vxlanPort: v.vxlanPort ?? daemonFlags.vxlanPort.default,
      tap: v.tap ?? daemonFlags.tap.default,
      vtepMac: v.vtepMac ?? vtepMacFor(nodeName),
      mtu: v.mtu,
      runDir: v.runDir ?? daemonFlags.runDir.default,
      stateDir: v.stateDir ?? daemonFlags.stateDir.default,
      metricsAddr: v.metricsAddr === "off" ? undefined : (v.metricsAddr ?? daemonFlags.metricsAddr.default),
      logLevel: v.logLevel ?? daemonFlags.logLevel.default,
      logFormat: v.logFormat ?? daemonFlags.logFormat.default,
      batch: v.batch ?? daemonFlags.batch.default,
      sourcePorts: v.sourcePorts ?? daemonFlags.sourcePorts.default,
      offload: v.offload ?? daemonFlags.offload.default,
      busyPoll: v.busyPoll ?? daemonFlags.busyPoll.default,
      serviceCidrs: (v.serviceCidr ?? []).map((subnet) => ({ subnet, label: `service CIDR ${formatSubnet(subnet)} (${describeOrigin("service-cidr", o.serviceCidr)})` })),
      keepCaps: v.keepCaps ?? daemonFlags.keepCaps.default,
      ipMasq: v.ipMasq ?? daemonFlags.ipMasq.default,
      forwardAccept: v.forwardAccept ?? daemonFlags.forwardAccept.default,
      iptablesBackend: v.iptablesBackend ?? daemonFlags.iptablesBackend.default,
    },
  };
}

type FlagValues = Extract<ReturnType<typeof parseFlags<typeof daemonFlags>>, { ok: true }>["values"];

/** The peer source the flags name: --subnet-source, else static with --peers and gossip without. */
function chooseSource(v: FlagValues, show: (key: keyof typeof daemonFlags, value: string) => string): Parsed<PeerSource> {
  const kind = v.subnetSource ?? (v.peers !== undefined ? "static" : "gossip");
  const clusterCidr = v.clusterCidr ?? daemonFlags.clusterCidr.default;
  const given = (keys: (keyof typeof daemonFlags)[]): string[] => keys.filter((k) => v[k] !== undefined).map((k) => `--${daemonFlags[k].name}`);
  switch (kind) {
    case "static": {
      if (v.peers === undefined) return { ok: false, error: "--peers FILE is required with --subnet-source static: the other nodes" };
      if (v.subnet === undefined) return { ok: false, error: "--subnet is required with --peers: static peers need this node's subnet" };
      const extra = given(["keyFile", "join", "kubeconfig"]);
      if (extra.length > 0) return { ok: false, error: `--peers (static peers) cannot be combined with ${extra.join(", ")}` };
      return { ok: true, value: { kind: "static", peersFile: v.peers, subnet: v.subnet } };
    }
    case "kubernetes": {
      const extra = given(["peers", "keyFile", "join", "subnet", "subnetLen", "claimWait", "gossipPort", "gossipProfile"]);
      if (extra.length > 0) {
        return { ok: false, error: `--subnet-source kubernetes cannot be combined with ${extra.join(", ")}: the Node's spec.podCIDR is the subnet and the other Nodes are the peers` };
      }
      return { ok: true, value: { kind: "kubernetes", kubeconfig: v.kubeconfig, clusterCidr } };
    }
    case "gossip": {
      if (v.keyFile === undefined) {
        return { ok: false, error: "--key-file is required for gossip (or give --peers FILE for static peers, or --subnet-source kubernetes): the gossip keyring, from `vxmesh keygen`" };
      }
      if (v.kubeconfig !== undefined) return { ok: false, error: "--kubeconfig is for --subnet-source kubernetes, not gossip" };
      if (v.peers !== undefined) return { ok: false, error: "--peers (static peers) cannot be combined with --subnet-source gossip" };
      const name = v.nodeName as string;
      if (name.length > GOSSIP_NAME_MAX) return { ok: false, error: `${show("nodeName", name)} is too long for gossip: at most ${GOSSIP_NAME_MAX} characters (Kubernetes Node names may be longer: --subnet-source kubernetes)` };
      const subnetLen = v.subnetLen ?? daemonFlags.subnetLen.default;
      if (subnetLen < clusterCidr.prefixLen) {
        return { ok: false, error: `${show("subnetLen", String(subnetLen))} is shorter than the prefix of ${show("clusterCidr", formatSubnet(clusterCidr))}: expected ${clusterCidr.prefixLen} to 30` };
      }
      if (v.subnet !== undefined && !subnetInside(v.subnet, clusterCidr)) {
        return { ok: false, error: `${show("subnet", formatSubnet(v.subnet))} is not inside ${show("clusterCidr", formatSubnet(clusterCidr))}` };
      }
      return {
        ok: true,
        value: {
          kind: "gossip", keyFile: v.keyFile, join: v.join ?? [], gossipPort: v.gossipPort ?? daemonFlags.gossipPort.default, clusterCidr, subnetLen,
          subnet: v.subnet, claimWaitMs: (v.claimWait ?? daemonFlags.claimWait.default) * 1000,
          profile: v.gossipProfile ?? daemonFlags.gossipProfile.default,
        },
      };
    }
  }
}

/** The pod addresses of this node's configuration: the cluster CIDR, or the static subnets. */
export function podCidrs(config: DaemonConfig, staticPeers: readonly Peer[] = []): LabelledCidr[] {
  const src = config.source;
  if (src.kind === "kubernetes") return [{ subnet: src.clusterCidr, label: `--cluster-cidr ${formatSubnet(src.clusterCidr)}` }];
  if (src.kind === "gossip") {
    const out: LabelledCidr[] = [{ subnet: src.clusterCidr, label: `--cluster-cidr ${formatSubnet(src.clusterCidr)}` }];
    if (src.subnet !== undefined) out.push({ subnet: src.subnet, label: `--subnet ${formatSubnet(src.subnet)}` });
    return out;
  }
  return [
    { subnet: src.subnet, label: `--subnet ${formatSubnet(src.subnet)}` },
    ...staticPeers.map((p) => ({ subnet: p.subnet, label: `peer ${p.name}'s subnet ${formatSubnet(p.subnet)} (in --peers ${src.peersFile})` })),
  ];
}

/** Why these pod addresses collide with a configured service CIDR, or undefined. */
export function serviceCidrConflict(config: DaemonConfig, staticPeers: readonly Peer[] = []): string | undefined {
  const first = serviceOverlaps(podCidrs(config, staticPeers), config.serviceCidrs)[0];
  return first === undefined ? undefined : serviceOverlapMessage(first);
}

/** Settings as `parseDaemonSettings`, and pod addresses clear of every service CIDR. */
export function parseDaemonConfig(argv: readonly string[], env: NodeJS.ProcessEnv, file?: FileLayer): Parsed<DaemonConfig> {
  const parsed = parseDaemonSettings(argv, env, file);
  if (!parsed.ok) return parsed;
  const conflict = serviceCidrConflict(parsed.value);
  return conflict === undefined ? parsed : { ok: false, error: conflict };
}

/**
 * The --config file named on the command line (it wins) or in VXMESH_CONFIG, with how it was
 * named, or undefined. Only a scan: parseFlags checks the rest of argv.
 */
export function configFileArg(argv: readonly string[], env: NodeJS.ProcessEnv): { file: string; via: string } | undefined {
  let found: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--config") found = argv[i + 1];
    else if (arg.startsWith("--config=")) found = arg.slice("--config=".length);
  }
  if (found !== undefined && found !== "") return { file: found, via: "--config" };
  const fromEnv = env[envName("config")];
  return fromEnv === undefined || fromEnv === "" ? undefined : { file: fromEnv, via: envName("config") };
}

/** Thin shell: reads the config file, if one is named, then parses everything. */
export function loadDaemonSettings(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  parse: typeof parseDaemonConfig = parseDaemonConfig,
): Parsed<DaemonConfig> {
  const named = configFileArg(argv, env);
  let layer: FileLayer | undefined;
  if (named !== undefined) {
    const read = readConfigFile(named.file, daemonFlags, named.via);
    if (!read.ok) return read;
    layer = read.value;
  }
  return parse(argv, env, layer);
}

/** "127.0.0.1:9464", or "off". */
function parseListenAddr(text: string): Parsed<{ host: string; port: number } | "off"> {
  if (text === "off") return { ok: true, value: "off" };
  const m = /^(.+):(\d{1,5})$/.exec(text);
  const ip = m === null ? undefined : parseIpv4(m[1] as string);
  const port = m === null ? NaN : Number(m[2]);
  if (ip === undefined || !ip.ok || !(port >= 1 && port <= 65535)) {
    return { ok: false, error: "IPv4:PORT such as 127.0.0.1:9464 (port 1-65535), or off" };
  }
  return { ok: true, value: { host: m?.[1] as string, port } };
}

/** "10.96.0.0/12,10.97.0.0/16". */
function parseCidrList(text: string): Parsed<Subnet[]> {
  const out: Subnet[] = [];
  for (const part of text.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const s = parseSubnet(part);
    if (!s.ok) return { ok: false, error: `a comma-separated list of IPv4 CIDRs such as 10.96.0.0/12; ${part}: expected ${s.error}` };
    out.push(s.value);
  }
  return out.length > 0 ? { ok: true, value: out } : { ok: false, error: "at least one IPv4 CIDR such as 10.96.0.0/12" };
}

/** "192.0.2.11:7946,192.0.2.12" (the port defaults to --gossip-port's default, 7946). */
function parseJoinList(text: string): Parsed<GossipAddress[]> {
  const out: GossipAddress[] = [];
  for (const part of text.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const [host = "", portText] = part.split(":");
    const ip = parseIpv4(host);
    const port = portText === undefined ? daemonFlags.gossipPort.default : Number(portText);
    if (!ip.ok || !Number.isInteger(port) || port < 1 || port > 65535 || (portText !== undefined && !/^\d+$/.test(portText))) {
      return { ok: false, error: `a comma-separated list of IPv4:PORT such as 192.0.2.11:${daemonFlags.gossipPort.default} (the port defaults to ${daemonFlags.gossipPort.default})` };
    }
    out.push({ ip: ip.value, port });
  }
  return out.length > 0 ? { ok: true, value: out } : { ok: false, error: `at least one IPv4:PORT such as 192.0.2.11:${daemonFlags.gossipPort.default}` };
}

/**
 * Parses a peers file's text. Entries may include this node itself (so every node can share
 * one file); that entry is skipped. `vtepMac` may be left out, in which case it is derived from
 * the name exactly as a daemon started without --vtep-mac derives its own.
 */
export function parsePeers(text: string, self: { nodeName: string; subnet: Subnet; underlayIp: Ipv4; vtepMac: MacAddr }): Parsed<Peer[]> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: `not valid JSON (${(err as Error).message})` };
  }
  if (!Array.isArray(json)) return { ok: false, error: "expected a JSON array of {name, underlayIp, subnet, vtepMac}" };
  const peers: Peer[] = [];
  const names = new Set<string>();
  for (let i = 0; i < json.length; i++) {
    const e: unknown = json[i];
    const where = `entry ${i}`;
    if (typeof e !== "object" || e === null || Array.isArray(e)) return { ok: false, error: `${where}: expected an object {name, underlayIp, subnet, vtepMac}` };
    const rec = e as Record<string, unknown>;
    for (const key of Object.keys(rec)) {
      if (!["name", "underlayIp", "subnet", "vtepMac"].includes(key)) return { ok: false, error: `${where}: unknown field ${JSON.stringify(key)}; valid fields: name, underlayIp, subnet, vtepMac` };
    }
    const field = (key: string): Parsed<string> =>
      typeof rec[key] === "string" ? { ok: true, value: rec[key] as string } : { ok: false, error: `${where}: field ${JSON.stringify(key)} must be a string` };
    const nameField = field("name");
    if (!nameField.ok) return nameField;
    const name = parseNodeName(nameField.value);
    if (!name.ok) return { ok: false, error: `${where}: name ${JSON.stringify(nameField.value)} is not valid: expected ${name.error}` };
    const at = `${where} (${name.value})`;
    if (names.has(name.value)) return { ok: false, error: `${at}: the name appears twice` };
    names.add(name.value);
    if (name.value === self.nodeName) continue;

    const ipField = field("underlayIp");
    if (!ipField.ok) return ipField;
    const ip = parseIpv4(ipField.value);
    if (!ip.ok) return { ok: false, error: `${at}: underlayIp ${JSON.stringify(ipField.value)} is not valid: expected ${ip.error}` };
    if (ip.value === self.underlayIp) return { ok: false, error: `${at}: underlayIp is this node's own --underlay-ip` };

    const subnetField = field("subnet");
    if (!subnetField.ok) return subnetField;
    const subnet = parseSubnet(subnetField.value);
    if (!subnet.ok) return { ok: false, error: `${at}: subnet ${JSON.stringify(subnetField.value)} is not valid: expected ${subnet.error}` };
    if (subnetsOverlap(subnet.value, self.subnet)) {
      return { ok: false, error: `${at}: subnet ${formatSubnet(subnet.value)} overlaps this node's --subnet ${formatSubnet(self.subnet)}` };
    }
    for (const other of peers) {
      if (subnetsOverlap(other.subnet, subnet.value)) {
        return { ok: false, error: `${at}: subnet ${formatSubnet(subnet.value)} overlaps ${other.name}'s ${formatSubnet(other.subnet)}` };
      }
    }

    let vtepMac = vtepMacFor(name.value);
    if (rec["vtepMac"] !== undefined) {
      const macField = field("vtepMac");
      if (!macField.ok) return macField;
      const mac = parseMac(macField.value);
      if (!mac.ok) return { ok: false, error: `${at}: vtepMac ${JSON.stringify(macField.value)} is not valid: expected ${mac.error}` };
      vtepMac = mac.value;
    }
    if (vtepMac === self.vtepMac) return { ok: false, error: `${at}: vtepMac is this node's own VTEP MAC` };
    for (const other of peers) {
      if (other.underlayIp === ip.value) return { ok: false, error: `${at}: underlayIp ${ipField.value} is also ${other.name}'s` };
      if (other.vtepMac === vtepMac) return { ok: false, error: `${at}: vtepMac is also ${other.name}'s` };
    }

    peers.push({ name: name.value, underlayIp: ip.value, subnet: subnet.value, vtepMac, path: "vxlan" });
  }
  return { ok: true, value: peers };
}

export function readPeersFile(file: string, self: Parameters<typeof parsePeers>[1]): Parsed<Peer[]> {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    return { ok: false, error: `--peers ${JSON.stringify(file)}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
  }
  const parsed = parsePeers(text, self);
  return parsed.ok ? parsed : { ok: false, error: `--peers ${JSON.stringify(file)}: ${parsed.error}` };
}
