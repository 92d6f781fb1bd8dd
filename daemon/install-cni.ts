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

import { chmodSync, copyFileSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CONTROL_SOCKET_NAME } from "./control-socket";
import { anyText, boolSwitch, formatHelp, parseFlags } from "./flags";
import type { Parsed } from "../encap/types";
import { SHIM_NAME, shimBinaryPath } from "../cni/paths";
import { SUPPORTED_VERSIONS, validName } from "../cni/spec";

/** The conflist's cniVersion by default: the newest that libcni 1.0 and 1.1 parse. */
export const DEFAULT_CONFLIST_VERSION = "1.0.0";
/** The reference plugin chained for hostPorts (runtimeConfig portMappings), when installed. */
export const PORTMAP_PLUGIN = "portmap";

function networkName(text: string): Parsed<string> {
  return validName(text) ? { ok: true, value: text } : { ok: false, error: "a name of letters, digits, _ . - starting with a letter or digit" };
}

function cniVersion(text: string): Parsed<string> {
  return SUPPORTED_VERSIONS.includes(text) ? { ok: true, value: text } : { ok: false, error: `one of ${SUPPORTED_VERSIONS.join(", ")}` };
}

function fileName(text: string): Parsed<string> {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]*\.conflist$/.test(text) ? { ok: true, value: text } : { ok: false, error: "a file name ending in .conflist, such as 10-vxmesh.conflist" };
}

export const installCniFlags = {
  binDir: { name: "bin-dir", help: "where the container runtime looks for CNI plugins", defaultText: "/opt/cni/bin", parse: anyText },
  confDir: { name: "conf-dir", help: "where the container runtime reads CNI network configurations", defaultText: "/etc/cni/net.d", parse: anyText },
  runDir: { name: "run-dir", help: "the daemon's run directory (its control socket is vxmesh.sock in it)", defaultText: "/run/vxmesh", parse: anyText },
  stateDir: { name: "state-dir", help: "the daemon's state directory (the shim queues DELs there while the daemon is down)", defaultText: "/var/lib/vxmesh", parse: anyText },
  networkName: { name: "network-name", help: "the CNI network name", defaultText: "vxmesh", parse: networkName },
  confName: { name: "conf-name", help: "the conflist's file name in --conf-dir", defaultText: "10-vxmesh.conflist", parse: fileName },
  cniVersion: { name: "cni-version", help: `the conflist's top-level cniVersion, the version runtimes on libcni before 1.2 (podman 4, containerd 1.6/1.7) use for every call; libcni 1.2+ picks from cniVersions (${SUPPORTED_VERSIONS.join(", ")}) instead`, defaultText: DEFAULT_CONFLIST_VERSION, parse: cniVersion },
  portmap: { name: "portmap", help: `chain the reference ${PORTMAP_PLUGIN} plugin for hostPorts when it is in --bin-dir (--portmap=false: never)`, defaultText: "true", isSwitch: true, parse: boolSwitch },
};

/**
 * The conflist `vxmesh install-cni` writes. The shim asks for the `ips` and `mac` capabilities
 * (podman --ip/--mac-address, and what `podman network reload` passes to keep an address);
 * portmap, when chained, for `portMappings` (hostPort).
 */
export function conflist(o: { networkName: string; controlSocket: string; stateDir: string; cniVersion?: string; portmap?: boolean }): Record<string, unknown> {
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

export async function runInstallCni(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(formatHelp("install-cni", `Installs the CNI plugin ${SHIM_NAME} and a conflist that points it at this node's daemon.`, installCniFlags) + "\n");
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
  // Absolute paths: the runtime runs the shim from its own working directory.
  const binDir = resolve(v.binDir ?? "/opt/cni/bin");
  const confDir = resolve(v.confDir ?? "/etc/cni/net.d");
  const runDir = resolve(v.runDir ?? "/run/vxmesh");
  const stateDir = resolve(v.stateDir ?? "/var/lib/vxmesh");
  const controlSocket = join(runDir, CONTROL_SOCKET_NAME);
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
    mkdirSync(confDir, { recursive: true, mode: 0o755 });
    const confTarget = join(confDir, v.confName ?? "10-vxmesh.conflist");
    const confTmp = join(confDir, `.${v.confName ?? "10-vxmesh.conflist"}.${process.pid}.tmp`);
    const portmap = (v.portmap ?? true) && existsSync(join(binDir, PORTMAP_PLUGIN));
    const list = conflist({ networkName: v.networkName ?? "vxmesh", controlSocket, stateDir, cniVersion: v.cniVersion ?? DEFAULT_CONFLIST_VERSION, portmap });
    try {
      writeFileSync(confTmp, JSON.stringify(list, null, 2) + "\n", { mode: 0o644 });
      renameSync(confTmp, confTarget);
    } finally {
      rmSync(confTmp, { force: true });
    }
    process.stdout.write(`installed ${binTarget}\nwrote ${confTarget} (network ${v.networkName ?? "vxmesh"}, cniVersion ${String(list["cniVersion"])}, ` +
      `daemon socket ${controlSocket}, state dir ${stateDir}, ${portmap ? `${PORTMAP_PLUGIN} chained for hostPorts` : `no ${PORTMAP_PLUGIN} (hostPorts unavailable)`})\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`vxmesh install-cni: ${(err as Error).message}\n`);
    return 1;
  }
}
