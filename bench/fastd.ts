// fastd (https://fastd.readthedocs.io) as a userspace tunnel peer for the bench: one fastd per
// lab node, in TAP mode with the `null` method (no encryption, no authentication of payload;
// the handshake still needs a key pair), over the lab's underlay. The node's pod traffic is
// routed through fastd's TAP exactly as docs/DESIGN.md §1 routes it through vxmesh's:
//
//   fastd0 (MAC = the node's VTEP MAC, <subnet network>/32, MTU = underlay − 50)
//   <peer subnet> via <peer subnet network> dev fastd0 onlink
//   <peer subnet network> lladdr <peer VTEP MAC> dev fastd0 nud permanent
//
// so a pod → pod packet crosses bridge → routing → TAP → fastd → UDP on eth0 → fastd → TAP →
// routing → bridge, the same hops as through vxmesh. Use it on lab nodes of overlay "vxmesh"
// with no daemon started (the lab leaves those nodes' overlay to whoever is under test).

import type { ChildProcess } from "node:child_process";
import { execFile } from "node:child_process";
import { accessSync, constants, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { waitFor, type Lab, type LabNode } from "./lab";

const execFileP = promisify(execFile);

export const FASTD_BIN = "/usr/bin/fastd";
export const FASTD_IF = "fastd0";
/** UDP port fastd binds on each node's underlay address. */
export const FASTD_PORT = 10000;

const LOG_TAIL = 16 * 1024;

export function fastdAvailable(bin = FASTD_BIN): boolean {
  try {
    accessSync(bin, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** "fastd v22", or undefined if it does not run. */
export async function fastdVersion(bin = FASTD_BIN): Promise<string | undefined> {
  try {
    const { stdout } = await execFileP(bin, ["--version"], { timeout: 5000 });
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

export interface FastdKeyPair {
  secret: string;
  public: string;
}

/** Parses `fastd --generate-key` output ("Secret: <hex>" and "Public: <hex>" lines). */
export function parseGeneratedKey(text: string): FastdKeyPair {
  const secret = /^Secret:\s*([0-9a-f]{64})\s*$/m.exec(text)?.[1];
  const pub = /^Public:\s*([0-9a-f]{64})\s*$/m.exec(text)?.[1];
  if (secret === undefined || pub === undefined) throw new Error(`unexpected fastd --generate-key output: ${JSON.stringify(text.slice(0, 300))}`);
  return { secret, public: pub };
}

export async function generateKey(bin = FASTD_BIN): Promise<FastdKeyPair> {
  const { stdout, stderr } = await execFileP(bin, ["--generate-key"], { timeout: 15_000 });
  return parseGeneratedKey(stdout + "\n" + stderr);
}

export interface FastdPeerConf {
  name: string;
  underlayIp: string;
  port: number;
  publicKey: string;
}

export interface FastdNodeConf {
  ifName: string;
  mtu: number;
  bindIp: string;
  port: number;
  secret: string;
  peers: readonly FastdPeerConf[];
}

/** The fastd configuration of one node (fastd's own config syntax). */
export function fastdConfig(c: FastdNodeConf): string {
  const q = (s: string): string => `"${s.replace(/["\\]/g, "")}"`;
  const lines = [
    "# written by the vxmesh bench; removed with the lab",
    "log level warn;",
    "mode tap;",
    `interface ${q(c.ifName)};`,
    `mtu ${c.mtu};`,
    `method ${q("null")};`,
    `bind ${c.bindIp}:${c.port};`,
    `secret ${q(c.secret)};`,
  ];
  for (const p of c.peers) lines.push(`peer ${q(p.name)} {`, `  remote ${p.underlayIp}:${p.port};`, `  key ${q(p.publicKey)};`, "}");
  return lines.join("\n") + "\n";
}

export interface FastdProcess {
  readonly node: LabNode;
  readonly child: ChildProcess;
  /** The last lines fastd printed. */
  readonly log: () => string;
}

export interface FastdOverlay {
  readonly processes: readonly FastdProcess[];
  /** Pids of the fastd processes (for CPU and RSS sampling). */
  pids(): number[];
  /** SIGTERM every fastd, SIGKILL after a grace period. Lab teardown does the same. */
  stop(): Promise<void>;
}

export interface StartFastdOptions {
  bin?: string;
  port?: number;
  ifName?: string;
  /** How long to wait for each fastd to create its TAP. */
  readyTimeoutMs?: number;
}

/**
 * Starts fastd on every "vxmesh" node of the lab (none of which may run a vxmesh daemon) and
 * routes the node's pod traffic for every other node through it. Resolves once every TAP is
 * configured; the caller waits for pods to reach each other (the handshake happens on the
 * first packets). fastd runs as a tracked child of the lab, so lab teardown ends it.
 */
export async function startFastd(lab: Lab, opts: StartFastdOptions = {}): Promise<FastdOverlay> {
  const bin = opts.bin ?? FASTD_BIN;
  const port = opts.port ?? FASTD_PORT;
  const ifName = opts.ifName ?? FASTD_IF;
  const nodes = lab.nodes.filter((n) => n.overlay === "vxmesh");
  if (nodes.length < 2) throw new Error("fastd needs at least two lab nodes of overlay \"vxmesh\"");
  const keys = new Map<string, FastdKeyPair>();
  for (const n of nodes) keys.set(n.name, await generateKey(bin));

  const dir = lab.workDir();
  const processes: FastdProcess[] = [];
  const overlay: FastdOverlay = {
    processes,
    pids: () => processes.map((p) => p.child.pid).filter((p): p is number => p !== undefined),
    stop: async () => {
      await Promise.all(processes.map((p) => stopChild(p.child)));
    },
  };
  try {
    for (const node of nodes) {
      const file = join(dir, `fastd-${node.name}.conf`);
      const conf = fastdConfig({
        ifName,
        mtu: node.overlayMtu,
        bindIp: node.underlayIp,
        port,
        secret: (keys.get(node.name) as FastdKeyPair).secret,
        peers: nodes.filter((n) => n.name !== node.name).map((n) => ({ name: n.name, underlayIp: n.underlayIp, port, publicKey: (keys.get(n.name) as FastdKeyPair).public })),
      });
      writeFileSync(file, conf, { mode: 0o600 });
      const child = lab.spawn(node, [bin, "--config", file]);
      let out = "";
      const keep = (chunk: Buffer): void => {
        out += chunk.toString("utf8");
        if (out.length > LOG_TAIL) out = out.slice(-LOG_TAIL);
      };
      child.stdout?.on("data", keep);
      child.stderr?.on("data", keep);
      processes.push({ node, child, log: () => out });
    }
    await Promise.all(processes.map(async (p) => {
      const node = p.node;
      await waitFor(async () => {
        if (p.child.exitCode !== null || p.child.signalCode !== null) throw new Error(`fastd on ${node.name} exited (${String(p.child.exitCode ?? p.child.signalCode)}): ${p.log().trim()}`);
        const r = await lab.exec(node, ["ip", "link", "show", "dev", ifName], { timeoutMs: 5000 });
        return r.code === 0;
      }, { timeoutMs: opts.readyTimeoutMs ?? 15_000, intervalMs: 50, what: `fastd on ${node.name} to create ${ifName}` });
      const lines = [
        `link set ${ifName} address ${node.vtepMac} mtu ${node.overlayMtu}`,
        `addr add ${node.subnetNetwork}/32 dev ${ifName}`,
        `link set ${ifName} up`,
      ];
      for (const peer of lab.peersFor(node)) {
        const network = peer.subnet.split("/")[0] as string;
        lines.push(
          `neigh replace ${network} lladdr ${peer.vtepMac} dev ${ifName} nud permanent`,
          `route replace ${peer.subnet} via ${network} dev ${ifName} onlink`,
        );
      }
      const r = await lab.exec(node, ["ip", "-batch", "-"], { input: lines.join("\n") + "\n" });
      if (r.code !== 0) throw new Error(`configuring ${ifName} on ${node.name} failed: ${r.stderr.trim()}`);
    }));
  } catch (e) {
    await overlay.stop();
    throw e;
  }
  return overlay;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}
