// `vxmesh doctor`: a preflight for this host and a daemon configuration (the same flags,
// VXMESH_* variables and --config file as `vxmesh daemon`). One line per check, a reason and a
// hint to fix; exit 0 when all pass, 1 when any fails. It reads and probes only: a port is
// tested by binding it for a moment, /dev/net/tun by opening it without attaching a device.

import * as dgram from "node:dgram";
import * as fs from "node:fs";
import * as net from "node:net";
import type { Peer } from "../encap/fdb";
import { formatIpv4, formatSubnet, subnetInside } from "../encap/types";
import { hostRouteOverlapMessage, hostRouteOverlaps, serviceOverlapMessage, serviceOverlaps } from "../control/cidr-overlap";
import { CAP_NET_ADMIN, parseStatusCaps } from "./capabilities";
import { readHostRoutes } from "../control/host-routes";
import { BRIDGE_NF_CALL_IPTABLES, IP_FORWARD, readSwitch } from "../control/sysctl";
import { readForwardPolicy } from "../control/iptables";
import { loadKeyring } from "../control/keyring";
import type { KubeError } from "../control/kube/api";
import { HttpsKubeApi } from "../control/kube/client";
import { loadCredentials } from "../control/kube/credentials";
import { describeKubeError } from "../control/kube/describe-error";
import { readNode } from "../control/kube/node-view";
import { findUnderlayInterface } from "../control/underlay";
import {
  CONFIG_HELP_NOTES, IPV4_OVERHEAD, MIN_MTU, configFileArg, daemonFlags, loadDaemonSettings, parseDaemonSettings, podCidrs, readPeersFile,
  type DaemonConfig,
} from "./config";
import { ownRoutes } from "./daemon";
import { boolSwitch, formatHelp } from "./flags";

export type CheckStatus = "pass" | "fail" | "skip";

export interface CheckResult {
  /** Stable identifier, e.g. "vxlan-port". */
  id: string;
  status: CheckStatus;
  /** What was found. */
  reason: string;
  /** How to fix it (failures). */
  hint?: string;
}

export type ReportStyle = "symbols" | "words";

/** One line per check: "✓ tun: …" on a terminal, "ok   tun: …" otherwise. */
export function formatReport(results: readonly CheckResult[], style: ReportStyle): string {
  const mark: Record<CheckStatus, string> = style === "symbols"
    ? { pass: "✓", fail: "✗", skip: "-" }
    : { pass: "ok  ", fail: "FAIL", skip: "skip" };
  const width = Math.max(...results.map((r) => r.id.length));
  const lines = results.map((r) =>
    `${mark[r.status]} ${r.id.padEnd(width)}  ${r.reason}${r.status === "fail" && r.hint !== undefined ? ` — fix: ${r.hint}` : ""}`);
  const failed = results.filter((r) => r.status === "fail").length;
  lines.push("", failed === 0 ? "all checks passed" : `${failed} check${failed === 1 ? "" : "s"} failed`);
  return lines.join("\n") + "\n";
}

export function doctorExitCode(results: readonly CheckResult[]): 0 | 1 {
  return results.some((r) => r.status === "fail") ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Checks (shell)

const pass = (id: string, reason: string): CheckResult => ({ id, status: "pass", reason });
const fail = (id: string, reason: string, hint: string): CheckResult => ({ id, status: "fail", reason, hint });
const skip = (id: string, reason: string): CheckResult => ({ id, status: "skip", reason });

function checkTun(): CheckResult {
  const id = "tun";
  try {
    fs.closeSync(fs.openSync("/dev/net/tun", fs.constants.O_RDWR));
    return pass(id, "/dev/net/tun opens read-write");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    if (code === "ENOENT") return fail(id, "/dev/net/tun is missing", "load the tun module (modprobe tun); in a container, pass the device in (--device /dev/net/tun)");
    return fail(id, `/dev/net/tun cannot be opened read-write (${code})`, "run as root or with CAP_NET_ADMIN, and give the process access to /dev/net/tun");
  }
}

function checkCapNetAdmin(): CheckResult {
  const id = "cap-net-admin";
  let text: string;
  try {
    text = fs.readFileSync("/proc/self/status", "utf8");
  } catch (err) {
    return fail(id, `cannot read /proc/self/status (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, "mount /proc");
  }
  const caps = parseStatusCaps(process.pid, text);
  if (caps === undefined) return fail(id, "/proc/self/status has no capability lines", "mount /proc");
  const hex = caps.effective.toString(16).padStart(16, "0");
  return (caps.effective & CAP_NET_ADMIN) !== 0n
    ? pass(id, `CAP_NET_ADMIN is in the effective set (CapEff ${hex})`)
    : fail(id, `CAP_NET_ADMIN is not in the effective set (CapEff ${hex})`,
      "run as root, or grant it (systemd: AmbientCapabilities=CAP_NET_ADMIN; Kubernetes: securityContext.capabilities.add [NET_ADMIN])");
}

function bindProbe(kind: "udp" | "tcp", host: string, port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    if (kind === "udp") {
      const s = dgram.createSocket("udp4");
      s.once("error", (err: NodeJS.ErrnoException) => { s.close(); resolve(err.code ?? err.message); });
      s.bind(port, host, () => s.close(() => resolve(undefined)));
    } else {
      const s = net.createServer();
      s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      s.listen({ port, host, exclusive: true }, () => s.close(() => resolve(undefined)));
    }
  });
}

async function checkPort(id: string, kind: "udp" | "tcp", host: string, port: number, what: string, flag: string): Promise<CheckResult> {
  const where = `${kind.toUpperCase()} ${host}:${port}`;
  const error = await bindProbe(kind, host, port);
  if (error === undefined) return pass(id, `${where} (${what}) is free`);
  if (error === "EADDRINUSE") {
    return fail(id, `${where} (${what}) is already in use`, `stop what holds it (ss -${kind === "udp" ? "u" : "t"}lnp 'sport = :${port}'), or choose another ${flag}`);
  }
  if (error === "EADDRNOTAVAIL") return fail(id, `${where} (${what}): ${host} is not an address of this host`, `assign ${host} to an interface, or correct ${flag === "--metrics-addr" ? flag : "--underlay-ip"}`);
  if (error === "EACCES") return fail(id, `${where} (${what}): binding is not permitted (EACCES)`, `run as root, or choose a port ≥ 1024 for ${flag}`);
  return fail(id, `${where} (${what}) cannot be bound (${error})`, `check ${flag}`);
}

async function checkUnderlayMtu(config: DaemonConfig): Promise<CheckResult> {
  const id = "underlay-mtu";
  const underlay = await findUnderlayInterface(config.underlayIp);
  if (!underlay.ok) return fail(id, underlay.error, `assign ${formatIpv4(config.underlayIp)} to the underlay interface, or correct --underlay-ip`);
  const { ifname, mtu: ulMtu } = underlay.value;
  const room = ulMtu - IPV4_OVERHEAD;
  const wanted = config.mtu ?? room;
  const what = config.mtu === undefined ? `overlay MTU ${wanted} (underlay − ${IPV4_OVERHEAD})` : `--mtu ${wanted}`;
  if (config.mtu !== undefined && config.mtu > room) {
    return fail(id, `${ifname} has MTU ${ulMtu}, which leaves room for ${room} inside VXLAN, less than ${what}`, `lower --mtu to ${room} or less, or raise the MTU of ${ifname} to ${config.mtu + IPV4_OVERHEAD}`);
  }
  if (wanted < MIN_MTU) {
    return fail(id, `${ifname} has MTU ${ulMtu}, which leaves ${wanted} for pods, below the minimum ${MIN_MTU}`, `raise the MTU of ${ifname} to at least ${MIN_MTU + IPV4_OVERHEAD}`);
  }
  return pass(id, `${ifname} (holding ${formatIpv4(config.underlayIp)}) has MTU ${ulMtu}: ${what} fits`);
}

function checkServiceCidrs(config: DaemonConfig, peers: readonly Peer[]): CheckResult {
  const id = "service-cidr";
  if (config.serviceCidrs.length === 0) return skip(id, "no --service-cidr configured");
  const first = serviceOverlaps(podCidrs(config, peers), config.serviceCidrs)[0];
  const services = config.serviceCidrs.map((s) => formatSubnet(s.subnet)).join(", ");
  return first === undefined
    ? pass(id, `pod addresses are clear of ${services}`)
    : fail(id, serviceOverlapMessage(first), "choose a --cluster-cidr (or --subnet and peers) outside every --service-cidr, or correct --service-cidr");
}

async function checkHostRoutes(config: DaemonConfig, peers: readonly Peer[]): Promise<CheckResult> {
  const id = "host-routes";
  const pods = podCidrs(config, peers);
  let routes;
  try {
    routes = await readHostRoutes();
  } catch (err) {
    return fail(id, `cannot list the routes (${(err as Error).message})`, "run where rtnetlink is available");
  }
  const first = hostRouteOverlaps(pods, routes, ownRoutes(config))[0];
  if (first !== undefined) {
    return fail(id, hostRouteOverlapMessage(first), `ip route del ${formatSubnet(first.other.dst)}${first.other.dev === undefined ? "" : ` dev ${first.other.dev}`}, or choose other pod addresses`);
  }
  return pass(id, `no host route overlaps ${pods.map((p) => formatSubnet(p.subnet)).join(", ")}`);
}

function checkIpForward(): CheckResult {
  const id = "ip-forward";
  const now = readSwitch(IP_FORWARD);
  if ("error" in now) return fail(id, `cannot read ${IP_FORWARD} (${now.error})`, "mount /proc; the node must route pod traffic");
  if (now.value === "1") return pass(id, "net.ipv4.ip_forward is on");
  if (mayWriteNetSysctl()) return pass(id, "net.ipv4.ip_forward is off; the daemon turns it on at start");
  return fail(id, "net.ipv4.ip_forward is off, and this user cannot turn it on: the node would not route pod traffic",
    "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d), or start the daemon as root");
}

/**
 * Whether this process may set a net sysctl: file access as root, or CAP_NET_ADMIN, which the
 * kernel treats as root for net sysctls (access(2) alone would not see the capability).
 */
function mayWriteNetSysctl(): boolean {
  try {
    fs.accessSync(IP_FORWARD, fs.constants.W_OK);
    return true;
  } catch {
    const caps = parseStatusCaps(process.pid, fs.readFileSync("/proc/self/status", "utf8"));
    return caps !== undefined && (caps.effective & CAP_NET_ADMIN) !== 0n;
  }
}

function checkBridgeNetfilter(): CheckResult {
  const id = "bridge-netfilter";
  const hint = "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1 (persist in /etc/modules-load.d and /etc/sysctl.d), as kubeadm requires";
  const now = readSwitch(BRIDGE_NF_CALL_IPTABLES);
  if ("error" in now) {
    return now.error === "ENOENT"
      ? fail(id, "br_netfilter is not loaded: kube-proxy's rules do not see traffic between two pods of this node, so a ClusterIP answered by a pod on the same node breaks", hint)
      : fail(id, `cannot read ${BRIDGE_NF_CALL_IPTABLES} (${now.error})`, hint);
  }
  return now.value === "1"
    ? pass(id, "net.bridge.bridge-nf-call-iptables is on: iptables sees bridged pod traffic")
    : fail(id, "net.bridge.bridge-nf-call-iptables is off: kube-proxy's rules do not see traffic between two pods of this node", hint);
}

async function checkForwardPolicy(config: DaemonConfig): Promise<CheckResult> {
  const id = "forward-policy";
  const egress = { masquerade: config.ipMasq, forwardAccept: config.forwardAccept, backend: config.iptablesBackend, runDir: config.runDir };
  const read = await readForwardPolicy(egress);
  if (!read.ok) {
    return config.ipMasq || config.forwardAccept
      ? fail(id, read.error, "apt-get install iptables, or run with root privileges")
      : skip(id, `--ip-masq=false --forward-accept=false, and the FORWARD policy cannot be read (${read.error})`);
  }
  const { backend, policy = "ACCEPT" } = read.value;
  const where = `FORWARD policy ${policy} (iptables-${backend}, ${read.value.reason})`;
  if (policy === "ACCEPT") return pass(id, `${where}: forwarded pod traffic passes`);
  if (config.forwardAccept) return pass(id, `${where}: vxmesh's chain VXMESH-FORWARD accepts the cluster's pod traffic (--forward-accept)`);
  return fail(id, `${where} and --forward-accept=false: pod traffic between nodes and to services is dropped`,
    "leave --forward-accept on, or accept the pod CIDRs in FORWARD yourself");
}

function checkKeyFile(config: DaemonConfig): CheckResult {
  const id = "key-file";
  if (config.source.kind !== "gossip") return skip(id, `${sourceName(config)}: no --key-file`);
  const file = config.source.keyFile;
  const loaded = loadKeyring(file);
  if (!loaded.ok) {
    const hint = /chmod/.test(loaded.error) ? `chmod 600 ${file}`
      : /cannot be opened/.test(loaded.error) ? `create it: vxmesh keygen > ${file} && chmod 600 ${file}`
        : "one base64 key per line, as printed by `vxmesh keygen`";
    return fail(id, loaded.error, hint);
  }
  return pass(id, `${file}: mode 0600 or stricter, ${loaded.value.keyIds.length} key${loaded.value.keyIds.length === 1 ? "" : "s"}`);
}

/** Runs every check; never changes the host. */
async function runChecks(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const settings = loadDaemonSettings(argv, env, parseDaemonSettings);
  let config: DaemonConfig | undefined;
  let peers: Peer[] = [];
  if (!settings.ok) {
    results.push(fail("config", settings.error, "see `vxmesh daemon --help`"));
  } else {
    config = settings.value;
    const src = config.source;
    const read = src.kind === "static" ? readPeersFile(src.peersFile, { ...config, subnet: src.subnet }) : { ok: true as const, value: [] };
    if (!read.ok) {
      results.push(fail("config", read.error, "fix the peers file"));
      config = undefined;
    } else {
      peers = read.value;
      const file = configFileArg(argv, env);
      results.push(pass("config", `valid: ${src.kind === "static" ? `static peers (${peers.length})` : src.kind}, node ${config.nodeName}, underlay ${formatIpv4(config.underlayIp)}${file === undefined ? "" : `, with ${file.file}`}`));
    }
  }
  results.push(checkTun(), checkCapNetAdmin(), checkIpForward(), checkBridgeNetfilter());
  const needs = ["underlay-mtu", "vxlan-port", "gossip-port-udp", "gossip-port-tcp", "metrics-port", "service-cidr", "host-routes", "forward-policy", "key-file", "kubernetes-api"];
  if (config === undefined) {
    for (const id of needs) results.push(skip(id, "needs a valid configuration"));
    return results;
  }
  const c = config;
  const ul = formatIpv4(c.underlayIp);
  results.push(await checkUnderlayMtu(c));
  results.push(await checkPort("vxlan-port", "udp", ul, c.vxlanPort, "VXLAN", "--vxlan-port"));
  if (c.source.kind === "gossip") {
    results.push(await checkPort("gossip-port-udp", "udp", ul, c.source.gossipPort, "gossip", "--gossip-port"));
    results.push(await checkPort("gossip-port-tcp", "tcp", ul, c.source.gossipPort, "gossip", "--gossip-port"));
  } else {
    results.push(skip("gossip-port-udp", `${sourceName(c)}: no gossip`), skip("gossip-port-tcp", `${sourceName(c)}: no gossip`));
  }
  results.push(c.metricsAddr === undefined
    ? skip("metrics-port", "--metrics-addr off")
    : await checkPort("metrics-port", "tcp", c.metricsAddr.host, c.metricsAddr.port, "metrics", "--metrics-addr"));
  results.push(checkServiceCidrs(c, peers));
  results.push(await checkHostRoutes(c, peers));
  results.push(await checkForwardPolicy(c));
  results.push(checkKeyFile(c));
  results.push(await checkKubernetesApi(c));
  return results;
}

function sourceName(config: DaemonConfig): string {
  return config.source.kind === "static" ? "static peers" : config.source.kind;
}

/** The Kubernetes source: credentials, the API server reached, this node's Node read and listed, its podCIDR inside --cluster-cidr. */
async function checkKubernetesApi(config: DaemonConfig): Promise<CheckResult> {
  const id = "kubernetes-api";
  const src = config.source;
  if (src.kind !== "kubernetes") return skip(id, `${sourceName(config)}: no API server`);
  const creds = loadCredentials({ kubeconfig: src.kubeconfig, env: process.env });
  if (!creds.ok) return fail(id, creds.error, "give --kubeconfig FILE, or run in a pod with its service account token mounted");
  const made = HttpsKubeApi.create(creds.value, { requestTimeoutMs: 5000 });
  if (!made.ok) return fail(id, made.error, "fix the CA, certificate or key the credentials name");
  const api = made.value;
  try {
    const c = { server: api.server, credentialsFrom: creds.value.source };
    const got = await api.getNode(config.nodeName);
    if (!got.ok) {
      return got.error.status === 404
        ? fail(id, `${api.server} has no Node "${config.nodeName}"`, "--node-name (or NODE_NAME) must be the Node's name, as kubelet registered it")
        : fail(id, describeKubeError(got.error, { ...c, what: "get nodes" }), "see deploy/README.md for the credentials and the ClusterRole");
    }
    const listed = await api.listNodes({ limit: 1 });
    if (!listed.ok) return fail(id, describeKubeError(listed.error, { ...c, what: "list nodes" }), "see deploy/README.md for the ClusterRole");
    const watched = await watchOpens(api, listed.value.resourceVersion);
    if (watched !== undefined) return fail(id, describeKubeError(watched, { ...c, what: "watch nodes" }), "see deploy/README.md for the ClusterRole");
    // What the daemon writes, as a dry run: authorised and checked by the server, stored nowhere.
    const patched = await api.patchNode(config.nodeName, { metadata: { annotations: {} } }, { type: "strategic", subresource: "status", dryRun: true });
    if (!patched.ok) return fail(id, describeKubeError(patched.error, { ...c, what: "patch nodes/status" }), "see deploy/README.md for the ClusterRole");
    const node = readNode(got.value);
    const cidr = node.ok ? node.value.podCidr : undefined;
    if (cidr === undefined) return fail(id, `Node "${config.nodeName}" has no spec.podCIDR yet`, "run kube-controller-manager with --allocate-node-cidrs and --cluster-cidr (kubeadm: --pod-network-cidr)");
    if (!cidr.ok) return fail(id, cidr.error, "the Node's spec.podCIDR must be an IPv4 CIDR");
    if (!subnetInside(cidr.value, src.clusterCidr)) {
      return fail(id, `Node "${config.nodeName}" has spec.podCIDR ${formatSubnet(cidr.value)}, outside --cluster-cidr ${formatSubnet(src.clusterCidr)}`, "give --cluster-cidr the cluster's pod network");
    }
    return pass(id, `${api.server} (${creds.value.source}): Node "${config.nodeName}" has podCIDR ${formatSubnet(cidr.value)}; nodes get, list, watch and nodes/status patch allowed`);
  } finally {
    api.close();
  }
}

/** Opens a watch on Nodes and closes it as soon as the server answers; the error when it does not. */
async function watchOpens(api: HttpsKubeApi, resourceVersion: string): Promise<KubeError | undefined> {
  let opened = false;
  const handle = api.watchNodes({ resourceVersion, bookmarks: false, timeoutSeconds: 1 }, () => undefined, () => {
    opened = true;
    handle.stop();
  });
  const done = await handle.done;
  return opened || done.ok ? undefined : done.error;
}

export async function runDoctor(argv: readonly string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    const flags = { json: { name: "json", help: "print the results as JSON", defaultText: "false", isSwitch: true, parse: boolSwitch }, ...daemonFlags };
    const summary = "Checks this host and a daemon configuration (the same flags, variables and --config as `vxmesh daemon`) before a start: " +
      "/dev/net/tun, CAP_NET_ADMIN, IP forwarding, bridge netfilter, ports, MTU, CIDR overlaps, the FORWARD policy, the key file, the Kubernetes API. Changes nothing. Exit 0 when every check passes, 1 otherwise.";
    process.stdout.write(formatHelp("doctor", summary, flags, CONFIG_HELP_NOTES) + "\n");
    return 0;
  }
  const fromEnv = boolSwitch(process.env["VXMESH_JSON"] ?? "");
  const json = argv.includes("--json") || argv.includes("--json=true") || (!argv.includes("--json=false") && fromEnv.ok && fromEnv.value);
  const rest = argv.filter((a) => a !== "--json" && a !== "--json=true" && a !== "--json=false");
  const results = await runChecks(rest, process.env);
  const code = doctorExitCode(results);
  if (json) process.stdout.write(JSON.stringify({ ok: code === 0, checks: results }, null, 2) + "\n");
  else process.stdout.write(formatReport(results, process.stdout.isTTY ? "symbols" : "words"));
  return code;
}
