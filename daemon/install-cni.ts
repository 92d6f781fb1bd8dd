// `vxmesh install-cni`: puts the CNI shim and a conflist in place for a container runtime. The
// conflist names this daemon's control socket and state dir, so several daemons (one per lab
// node, say) can each have their own CNI configuration on one machine. Both files are written
// to a temporary name and renamed into place: a runtime never execs or reads half a file, and
// replacing the shim while a runtime uses the old one is safe.
//
// The conflist's top-level cniVersion is what a runtime built on libcni before 1.2 (podman 4,
// containerd 1.6 and 1.7) uses for every call, and those cannot parse a 1.1.0 result: so it is
// 1.0.0 by default, and `cniVersions` lists everything the plugin speaks for libcni 1.2+, which
// picks the highest it knows from that list instead.
//
// `--plugin bridge` writes a conflist for the reference `bridge` + `host-local` plugins instead
// (the pairing flannel's CNI plugin makes with flanneld): the daemon carries traffic between
// nodes, the reference plugins attach pods to a bridge of their own (cni0). The node's subnet,
// gateway and MTU come from the daemon's hand-off, `<run-dir>/network.json` (daemon/handoff.ts),
// which appears once the subnet is confirmed; install-cni waits for it up to --wait. The subnet
// is written into the conflist, so it is rendered again whenever the node's subnet changes.

import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CONTROL_SOCKET_NAME } from "./control-socket";
import { anyText, boolSwitch, describeOrigin, formatHelp, parseFlags, withDefault } from "./flags";
import { NETWORK_JSON_FILE } from "./handoff";
import { formatIpv4, formatSubnet, parseIpv4, parseSubnet, subnetAddress, subnetContains, type Parsed } from "../encap/types";
import { SHIM_NAME, shimBinaryPath } from "../encap/artefacts";
import { SUPPORTED_VERSIONS, validName } from "../cni/spec";
import { DEFAULT_RUN_DIR, DEFAULT_STATE_DIR } from "./default-dirs";

/** The conflist's cniVersion by default: the newest that libcni 1.0 and 1.1 parse. */
const DEFAULT_CONFLIST_VERSION = "1.0.0";
/** The reference plugin chained for hostPorts (runtimeConfig portMappings), when installed. */
const PORTMAP_PLUGIN = "portmap";
/** The reference plugins `--plugin bridge` configures. */
const BRIDGE_PLUGIN = "bridge";
const HOST_LOCAL_PLUGIN = "host-local";
/** --plugin bridge defaults: the bridge's name (as flannel's and kubenet's), host-local's own data dir. */
const DEFAULT_BRIDGE_NAME = "cni0";
const DEFAULT_IPAM_DATA_DIR = "/var/lib/cni/networks";
const DEFAULT_WAIT_MS = 60_000;
const MAX_WAIT_MS = 3_600_000;

export type PluginMode = "vxmesh" | "bridge";
const PLUGIN_MODES: readonly PluginMode[] = ["vxmesh", "bridge"];

function networkName(text: string): Parsed<string> {
  return validName(text) ? { ok: true, value: text } : { ok: false, error: "a name of letters, digits, _ . - starting with a letter or digit" };
}

function cniVersion(text: string): Parsed<string> {
  return SUPPORTED_VERSIONS.includes(text) ? { ok: true, value: text } : { ok: false, error: `one of ${SUPPORTED_VERSIONS.join(", ")}` };
}

function fileName(text: string): Parsed<string> {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]*\.conflist$/.test(text) ? { ok: true, value: text } : { ok: false, error: "a file name ending in .conflist, such as 10-vxmesh.conflist" };
}

function pluginMode(text: string): Parsed<PluginMode> {
  return (PLUGIN_MODES as readonly string[]).includes(text)
    ? { ok: true, value: text as PluginMode }
    : { ok: false, error: "vxmesh (the vxmesh-cni plugin, pods on the daemon's own bridge) or bridge (the reference bridge + host-local plugins, from the daemon's network.json)" };
}

/** A Linux interface name: at most 15 bytes (IFNAMSIZ − 1), no "/", no white space. */
function interfaceName(text: string): Parsed<string> {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(text)
    ? { ok: true, value: text }
    : { ok: false, error: "an interface name of 1 to 15 letters, digits, _ . - starting with a letter or digit, such as cni0" };
}

/** "60s", "2m", "500ms", "90" (seconds) or "0" (do not wait); at most an hour. */
export function parseWait(text: string): Parsed<number> {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text);
  const ms = m === null ? NaN : Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "m" ? 60_000 : 1000);
  if (!Number.isFinite(ms) || ms > MAX_WAIT_MS) return { ok: false, error: "a duration up to 1h such as 60s, 2m, 500ms or 90 (seconds), or 0 (do not wait)" };
  return { ok: true, value: Math.round(ms) };
}

export const installCniFlags = {
  binDir: { name: "bin-dir", help: "where the container runtime looks for CNI plugins", defaultText: "/opt/cni/bin", parse: anyText },
  confDir: { name: "conf-dir", help: "where the container runtime reads CNI network configurations", defaultText: "/etc/cni/net.d", parse: anyText },
  runDir: { name: "run-dir", help: "the daemon's run directory (its control socket is vxmesh.sock in it)", ...withDefault(DEFAULT_RUN_DIR), parse: anyText },
  stateDir: { name: "state-dir", help: "the daemon's state directory (the shim queues DELs there while the daemon is down)", ...withDefault(DEFAULT_STATE_DIR), parse: anyText },
  networkName: { name: "network-name", help: "the CNI network name", defaultText: "vxmesh", parse: networkName },
  confName: { name: "conf-name", help: "the conflist's file name in --conf-dir", defaultText: "10-vxmesh.conflist", parse: fileName },
  cniVersion: { name: "cni-version", help: `the conflist's top-level cniVersion, the version runtimes on libcni before 1.2 (podman 4, containerd 1.6/1.7) use for every call; libcni 1.2+ picks from cniVersions (${SUPPORTED_VERSIONS.join(", ")}) instead`, defaultText: DEFAULT_CONFLIST_VERSION, parse: cniVersion },
  portmap: { name: "portmap", help: `chain the reference ${PORTMAP_PLUGIN} plugin for hostPorts when it is in --bin-dir (--portmap=false: never)`, defaultText: "true", isSwitch: true, parse: boolSwitch },
  plugin: { name: "plugin", help: `which plugin attaches pods: vxmesh (the shim ${SHIM_NAME}, served by the daemon) or bridge (the reference ${BRIDGE_PLUGIN} + ${HOST_LOCAL_PLUGIN} from --bin-dir, configured from <run-dir>/${NETWORK_JSON_FILE})`, defaultText: "vxmesh", parse: pluginMode },
  // Not --bridge: VXMESH_BRIDGE is a line of the daemon's subnet.env (its own bridge), and a shell
  // that sourced that file would hand it to this flag.
  bridgeName: { name: "bridge-name", help: `--plugin bridge: the bridge the ${BRIDGE_PLUGIN} plugin creates and attaches pods to`, defaultText: DEFAULT_BRIDGE_NAME, parse: interfaceName },
  ipamDataDir: { name: "ipam-data-dir", help: `--plugin bridge: where ${HOST_LOCAL_PLUGIN} keeps its address leases (one directory per network name)`, defaultText: DEFAULT_IPAM_DATA_DIR, parse: anyText },
  wait: { name: "wait", help: `--plugin bridge: how long to wait for the daemon to write <run-dir>/${NETWORK_JSON_FILE} (it does once the node's subnet is confirmed), e.g. 60s, 2m, 0`, defaultText: "60s", parse: parseWait },
};

/** Flags that only mean something with `--plugin bridge`. */
const BRIDGE_ONLY_FLAGS = ["bridgeName", "ipamDataDir", "wait"] as const;

/**
 * The conflist `vxmesh install-cni` writes. The shim asks for the `ips` and `mac` capabilities
 * (podman --ip/--mac-address, and what `podman network reload` passes to keep an address);
 * portmap, when chained, for `portMappings` (hostPort).
 */
function conflist(o: { networkName: string; controlSocket: string; stateDir: string; cniVersion?: string; portmap?: boolean }): Record<string, unknown> {
  return {
    cniVersion: o.cniVersion ?? DEFAULT_CONFLIST_VERSION,
    cniVersions: [...SUPPORTED_VERSIONS],
    name: o.networkName,
    plugins: [
      { type: SHIM_NAME, controlSocket: o.controlSocket, stateDir: o.stateDir, capabilities: { ips: true, mac: true } },
      ...(o.portmap === true ? [{ type: PORTMAP_PLUGIN, capabilities: { portMappings: true }, snat: true }] : []),
    ],
  };
}

/** What `--plugin bridge` takes from the daemon's network.json. */
export interface NodeNetwork {
  /** The node's pod subnet, e.g. "10.244.1.0/24". */
  subnet: string;
  /** Its gateway (the bridge's address), e.g. "10.244.1.1". */
  gateway: string;
  /** The pods' MTU: the daemon's TAP MTU. */
  mtu: number;
  /** The daemon's own pod bridge (for --plugin vxmesh), which the reference plugin must not share. */
  daemonBridge: string | undefined;
  /** The whole pod network (gossip), or null (static peers). */
  network: string | null;
}

/** Reads network.json's text (daemon/handoff.ts writes it); errors say which field is wrong. */
export function parseNetworkJson(text: string): Parsed<NodeNetwork> {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: `not JSON (${(err as Error).message})` };
  }
  if (typeof j !== "object" || j === null || Array.isArray(j)) return { ok: false, error: "not a JSON object" };
  const o = j as Record<string, unknown>;
  const subnet = typeof o["subnet"] === "string" ? parseSubnet(o["subnet"]) : undefined;
  if (subnet === undefined || !subnet.ok) return { ok: false, error: `"subnet" ${JSON.stringify(o["subnet"])} is not an IPv4 CIDR such as 10.244.1.0/24` };
  if (subnet.value.prefixLen > 30) return { ok: false, error: `"subnet" ${formatSubnet(subnet.value)} leaves no pod addresses: expected a prefix length of at most 30` };
  const gatewayText = o["gateway"] === undefined ? formatIpv4(subnetAddress(subnet.value, 1)) : o["gateway"];
  const gateway = typeof gatewayText === "string" ? parseIpv4(gatewayText) : undefined;
  if (gateway === undefined || !gateway.ok || !subnetContains(subnet.value, gateway.value)) {
    return { ok: false, error: `"gateway" ${JSON.stringify(o["gateway"])} is not an IPv4 address inside "subnet" ${formatSubnet(subnet.value)}` };
  }
  const mtu = o["mtu"];
  if (typeof mtu !== "number" || !Number.isInteger(mtu) || mtu < 68 || mtu > 65535) return { ok: false, error: `"mtu" ${JSON.stringify(mtu)} is not an integer from 68 to 65535` };
  const network = o["network"];
  return {
    ok: true,
    value: {
      subnet: formatSubnet(subnet.value),
      gateway: formatIpv4(gateway.value),
      mtu,
      daemonBridge: typeof o["bridge"] === "string" ? o["bridge"] : undefined,
      network: typeof network === "string" ? network : null,
    },
  };
}

/**
 * The conflist `vxmesh install-cni --plugin bridge` writes: the reference bridge plugin makes
 * `bridge`, gives it the gateway address (isGateway), puts each pod's veth on it with hairpin
 * on, at the daemon's MTU; host-local hands out the node subnet's addresses and a default route
 * via the gateway. No ipMasq: pods reach pods on other nodes by their own addresses (the
 * daemon's --ip-masq handles traffic leaving the cluster). `ips` and `mac` are declared like
 * the vxmesh-cni conflist's (host-local reads runtimeConfig.ips, bridge runtimeConfig.mac).
 * No `cniVersions`: libcni 1.2+ would pick the highest listed, which the installed reference
 * plugins may not speak; the single cniVersion is what every runtime uses.
 */
export function bridgeConflist(o: {
  networkName: string; cniVersion?: string; bridge: string; subnet: string; gateway: string; mtu: number; dataDir: string; portmap?: boolean;
}): Record<string, unknown> {
  return {
    cniVersion: o.cniVersion ?? DEFAULT_CONFLIST_VERSION,
    name: o.networkName,
    plugins: [
      {
        type: BRIDGE_PLUGIN,
        bridge: o.bridge,
        isGateway: true,
        hairpinMode: true,
        mtu: o.mtu,
        ipam: {
          type: HOST_LOCAL_PLUGIN,
          ranges: [[{ subnet: o.subnet, gateway: o.gateway }]],
          routes: [{ dst: "0.0.0.0/0" }],
          dataDir: o.dataDir,
        },
        capabilities: { ips: true, mac: true },
      },
      ...(o.portmap === true ? [{ type: PORTMAP_PLUGIN, capabilities: { portMappings: true }, snat: true }] : []),
    ],
  };
}

/**
 * Waits up to `waitMs` for `<runDir>/network.json`, then reads it. The daemon writes it
 * atomically (temporary file, rename), so it is never read half-written.
 */
async function readNodeNetwork(runDir: string, waitMs: number): Promise<Parsed<NodeNetwork>> {
  const file = join(runDir, NETWORK_JSON_FILE);
  const deadline = Date.now() + waitMs;
  let said = false;
  for (;;) {
    let text: string | undefined;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") return { ok: false, error: `cannot read ${file}: ${(err as Error).message}` };
    }
    if (text !== undefined) {
      const parsed = parseNetworkJson(text);
      return parsed.ok ? parsed : { ok: false, error: `${file} is not a vxmesh hand-off: ${parsed.error}` };
    }
    if (Date.now() >= deadline) {
      const waited = waitMs === 0 ? "does not exist" : `did not appear within ${formatMs(waitMs)}`;
      return {
        ok: false,
        error: `${file} ${waited}: the vxmesh daemon writes it once this node's subnet is confirmed. ` +
          `Start the daemon with --run-dir ${runDir} (or point --run-dir here at the daemon's), check ` +
          `\`vxmesh status --run-dir ${runDir}\` for why it is not ready yet, or give a longer --wait`,
      };
    }
    if (!said) {
      process.stderr.write(`vxmesh install-cni: waiting up to ${formatMs(waitMs)} for ${file} (the daemon writes it once this node's subnet is confirmed)\n`);
      said = true;
    }
    await new Promise((r) => setTimeout(r, Math.min(200, Math.max(0, deadline - Date.now()))));
  }
}

function formatMs(ms: number): string {
  return ms % 60_000 === 0 && ms > 0 ? `${ms / 60_000} min` : `${ms / 1000} s`;
}

/** Writes `text` to `dir/name` through a temporary name and a rename. */
function writeConflist(dir: string, name: string, list: Record<string, unknown>): string {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const target = join(dir, name);
  const tmp = join(dir, `.${name}.${process.pid}.tmp`);
  try {
    writeFileSync(tmp, JSON.stringify(list, null, 2) + "\n", { mode: 0o644 });
    renameSync(tmp, target);
  } finally {
    rmSync(tmp, { force: true });
  }
  return target;
}

export async function runInstallCni(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(formatHelp("install-cni", `Installs the CNI plugin ${SHIM_NAME} and a conflist that points it at this node's daemon.`, installCniFlags, [
      `--plugin bridge instead writes a conflist for the reference ${BRIDGE_PLUGIN} + ${HOST_LOCAL_PLUGIN} plugins (installed in --bin-dir`,
      `beforehand) with this node's subnet, gateway and MTU from the daemon's <run-dir>/${NETWORK_JSON_FILE}, waiting for it up`,
      "to --wait. Run it again whenever the node's subnet changes.",
    ]) + "\n");
    return 0;
  }
  const parsed = parseFlags(installCniFlags, argv, process.env);
  if (!parsed.ok) {
    process.stderr.write(`vxmesh install-cni: ${parsed.error}\n`);
    return 2;
  }
  if (parsed.positional.length > 0) {
    process.stderr.write(`vxmesh install-cni: unexpected argument ${JSON.stringify(parsed.positional[0])}\n`);
    return 2;
  }
  const v = parsed.values;
  const mode = v.plugin ?? "vxmesh";
  if (mode !== "bridge") {
    const misplaced = BRIDGE_ONLY_FLAGS.find((k) => parsed.origins[k].kind !== "default");
    if (misplaced !== undefined) {
      const spec = installCniFlags[misplaced];
      process.stderr.write(`vxmesh install-cni: ${describeOrigin(spec.name, parsed.origins[misplaced])} applies only to --plugin bridge; add --plugin bridge, or leave it out for --plugin ${mode}\n`);
      return 2;
    }
  }
  // Absolute paths: the runtime runs the shim from its own working directory.
  const binDir = resolve(v.binDir ?? "/opt/cni/bin");
  const confDir = resolve(v.confDir ?? "/etc/cni/net.d");
  const runDir = resolve(v.runDir ?? DEFAULT_RUN_DIR);
  const stateDir = resolve(v.stateDir ?? DEFAULT_STATE_DIR);
  const controlSocket = join(runDir, CONTROL_SOCKET_NAME);
  if (mode === "bridge") {
    return installBridge({
      binDir, confDir, runDir, confName: v.confName ?? "10-vxmesh.conflist", networkName: v.networkName ?? "vxmesh",
      cniVersion: v.cniVersion ?? DEFAULT_CONFLIST_VERSION, portmap: v.portmap ?? true, bridge: v.bridgeName ?? DEFAULT_BRIDGE_NAME,
      dataDir: resolve(v.ipamDataDir ?? DEFAULT_IPAM_DATA_DIR), waitMs: v.wait ?? DEFAULT_WAIT_MS,
    });
  }
  try {
    const shim = shimBinaryPath();
    mkdirSync(binDir, { recursive: true, mode: 0o755 });
    const binTarget = join(binDir, SHIM_NAME);
    const binTmp = join(binDir, `.${SHIM_NAME}.${process.pid}.tmp`);
    try {
      copyFileSync(shim, binTmp);
      chmodSync(binTmp, 0o755);
      renameSync(binTmp, binTarget);
    } finally {
      rmSync(binTmp, { force: true });
    }
    const portmap = (v.portmap ?? true) && existsSync(join(binDir, PORTMAP_PLUGIN));
    const list = conflist({ networkName: v.networkName ?? "vxmesh", controlSocket, stateDir, cniVersion: v.cniVersion ?? DEFAULT_CONFLIST_VERSION, portmap });
    const confTarget = writeConflist(confDir, v.confName ?? "10-vxmesh.conflist", list);
    process.stdout.write(`installed ${binTarget}\nwrote ${confTarget} (network ${v.networkName ?? "vxmesh"}, cniVersion ${String(list["cniVersion"])}, ` +
      `daemon socket ${controlSocket}, state dir ${stateDir}, ${portmap ? `${PORTMAP_PLUGIN} chained for hostPorts` : `no ${PORTMAP_PLUGIN} (hostPorts unavailable)`})\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`vxmesh install-cni: ${(err as Error).message}\n`);
    return 1;
  }
}

/**
 * `--plugin bridge`: nothing is copied into --bin-dir (the reference plugins are the
 * distribution's); the conflist carries this node's subnet from the daemon's hand-off.
 */
async function installBridge(o: {
  binDir: string; confDir: string; runDir: string; confName: string; networkName: string; cniVersion: string;
  portmap: boolean; bridge: string; dataDir: string; waitMs: number;
}): Promise<number> {
  const net = await readNodeNetwork(o.runDir, o.waitMs);
  if (!net.ok) {
    process.stderr.write(`vxmesh install-cni: ${net.error}\n`);
    return 1;
  }
  const n = net.value;
  if (n.daemonBridge === o.bridge) {
    process.stderr.write(`vxmesh install-cni: --bridge-name ${o.bridge} is the vxmesh daemon's own pod bridge (for --plugin vxmesh): ` +
      `the reference ${BRIDGE_PLUGIN} plugin needs a bridge of its own; choose another, such as ${DEFAULT_BRIDGE_NAME}\n`);
    return 2;
  }
  const missing = [BRIDGE_PLUGIN, HOST_LOCAL_PLUGIN].filter((p) => !existsSync(join(o.binDir, p)));
  if (missing.length > 0) {
    process.stderr.write(`vxmesh install-cni: warning: ${missing.map((p) => join(o.binDir, p)).join(" and ")} ${missing.length === 1 ? "is" : "are"} missing: ` +
      "pods cannot be attached until the reference CNI plugins are installed there (Debian: apt-get install containernetworking-plugins, " +
      "which puts them in /usr/lib/cni; or give --bin-dir)\n");
  }
  const portmap = o.portmap && existsSync(join(o.binDir, PORTMAP_PLUGIN));
  const list = bridgeConflist({ networkName: o.networkName, cniVersion: o.cniVersion, bridge: o.bridge, subnet: n.subnet, gateway: n.gateway, mtu: n.mtu, dataDir: o.dataDir, portmap });
  try {
    const target = writeConflist(o.confDir, o.confName, list);
    process.stdout.write(`wrote ${target} (network ${o.networkName}, cniVersion ${o.cniVersion}: ${BRIDGE_PLUGIN} ${o.bridge} with gateway ${n.gateway}, ` +
      `${HOST_LOCAL_PLUGIN} addresses of ${n.subnet} leased in ${join(o.dataDir, o.networkName)}, mtu ${n.mtu}, ` +
      `${portmap ? `${PORTMAP_PLUGIN} chained for hostPorts` : `no ${PORTMAP_PLUGIN} (hostPorts unavailable)`}); ` +
      `run it again if this node's subnet changes\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`vxmesh install-cni: ${(err as Error).message}\n`);
    return 1;
  }
}
