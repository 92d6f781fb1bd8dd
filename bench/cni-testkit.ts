// Test tooling (not used by the daemon), shared by the CNI tests and the latency measurement:
// exec a CNI plugin exactly as a container runtime does (environment + stdin, result on stdout,
// exit status), CNI "nodes" (a network namespace with the CNI handler serving a control socket
// in it) and empty pod namespaces. Everything is created under a lab's prefix (bench/lab.ts's
// Lab, passed in; only its shape is used here, so cni/ does not depend on bench/), so the lab's
// teardown removes it, also after a failure.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { controlSocketPath } from "../daemon/control-socket";
import { distPath, shimBinaryPath } from "../encap/artefacts";

/** What this kit needs of bench/lab.ts's Lab. */
export interface LabLike {
  readonly prefix: string;
  workDir(): string;
  spawn(ns: string, argv: readonly string[], opts?: { env?: NodeJS.ProcessEnv }): ChildProcess;
}

async function waitUntil(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const REFERENCE_DIR = "/usr/lib/cni";

export interface PluginRun {
  /** Exit status (null when killed by a signal). */
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON, undefined when empty or not JSON. */
  json: Record<string, unknown> | undefined;
  /** Wall time from spawn to exit, in ms. */
  ms: number;
}

export interface PluginCall {
  command: string;
  containerID?: string;
  netns?: string;
  ifname?: string;
  /** The request configuration (an object is serialised). */
  config: unknown;
  /** More (or replacement) environment variables; a value of undefined removes one. */
  env?: Record<string, string | undefined>;
  /** Run the plugin inside this network namespace (`ip netns exec`), as a runtime on that node would. */
  inNetns?: string;
  timeoutMs?: number;
}

/** Execs `binary` with the CNI environment and the configuration on stdin. */
export function runPlugin(binary: string, call: PluginCall): Promise<PluginRun> {
  const env: Record<string, string> = { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", CNI_PATH: REFERENCE_DIR };
  env["CNI_COMMAND"] = call.command;
  if (call.containerID !== undefined) env["CNI_CONTAINERID"] = call.containerID;
  if (call.netns !== undefined) env["CNI_NETNS"] = call.netns;
  if (call.ifname !== undefined) env["CNI_IFNAME"] = call.ifname;
  for (const [k, v] of Object.entries(call.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  const stdin = typeof call.config === "string" ? call.config : JSON.stringify(call.config);
  const [file, args] = call.inNetns === undefined ? [binary, []] : ["ip", ["netns", "exec", call.inNetns, binary]];
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(file, args, { env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    child.stdin.on("error", () => undefined);
    child.stdin.end(stdin);
    const timer = setTimeout(() => child.kill("SIGKILL"), call.timeoutMs ?? 60_000);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      const ms = performance.now() - started;
      let json: Record<string, unknown> | undefined;
      try {
        const v = JSON.parse(stdout) as unknown;
        if (typeof v === "object" && v !== null) json = v as Record<string, unknown>;
      } catch {
        /* empty or not JSON */
      }
      resolve({ code, stdout, stderr, json, ms });
    });
  });
}

export function shim(): string {
  return shimBinaryPath();
}

/** Creates an empty network namespace `<lab prefix><name>`; returns its path. */
export async function addPodNs(lab: LabLike, name: string): Promise<string> {
  const ns = `${lab.prefix}${name}`;
  await new Promise<void>((resolve, reject) => {
    const c = spawn("ip", ["netns", "add", ns], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    c.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    c.once("close", (code) => (code === 0 ? resolve() : reject(new Error(`ip netns add ${ns}: ${err.trim()}`))));
  });
  return `/run/netns/${ns}`;
}

export function nsNameOf(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

export interface CniNodeOptions {
  /** "10.244.N.0/24", or "none" for a daemon without a confirmed subnet. */
  subnet: string;
  mtu?: number;
  bridge?: string;
  /**
   * A server that is already running (a vxmesh daemon that serves op "cni"): its run and state
   * dirs. start() and stop() then leave it alone.
   */
  external?: { runDir: string; stateDir: string };
}

/**
 * A node for CNI tests: a network namespace with the CNI handler serving a control socket in it
 * (bench/cni-harness.ts, the daemon's listenControl and protocol), its own run and state dirs.
 */
export class CniNode {
  private harness: ChildProcess | undefined;
  private output = "";
  readonly runDir: string;
  readonly stateDir: string;

  private constructor(readonly lab: LabLike, readonly namespace: string, private readonly opts: CniNodeOptions) {
    if (opts.external !== undefined) {
      this.runDir = opts.external.runDir;
      this.stateDir = opts.external.stateDir;
      return;
    }
    const dir = join(lab.workDir(), nsNameOf(namespace));
    this.runDir = join(dir, "run");
    this.stateDir = join(dir, "state");
    mkdirSync(this.runDir, { recursive: true });
  }

  /** A fresh, empty node namespace (no bridge: the first ADD creates it). */
  static async create(lab: LabLike, name: string, opts: CniNodeOptions): Promise<CniNode> {
    await addPodNs(lab, name);
    return new CniNode(lab, `${lab.prefix}${name}`, opts);
  }

  /** An existing namespace (a lab node, say). */
  static on(lab: LabLike, namespace: string, opts: CniNodeOptions): CniNode {
    return new CniNode(lab, namespace, opts);
  }

  get socket(): string {
    return controlSocketPath(this.runDir);
  }

  get running(): boolean {
    return this.harness !== undefined && this.harness.exitCode === null && this.harness.signalCode === null;
  }

  get log(): string {
    return this.output;
  }

  /** The plugin configuration a runtime hands the shim for this node (cniVersion, name injected). */
  config(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { cniVersion: "1.1.0", name: "vxmesh", type: "vxmesh-cni", controlSocket: this.socket, stateDir: this.stateDir, ...extra };
  }

  async start(): Promise<void> {
    if (this.running || this.opts.external !== undefined) return;
    const argv = [process.execPath, distPath("bench", "cni-harness.js"),
      "--run-dir", this.runDir, "--state-dir", this.stateDir, "--subnet", this.opts.subnet,
      "--mtu", String(this.opts.mtu ?? 1450), "--bridge", this.opts.bridge ?? "vxmesh-br"];
    const child = this.lab.spawn(this.namespace, argv, { env: { ...process.env, VXMESH_LOG_LEVEL: process.env["VXMESH_LOG_LEVEL"] ?? "warn" } });
    this.harness = child;
    let ready = false;
    child.stdout?.setEncoding("utf8").on("data", (c: string) => {
      this.output += c;
      if (c.includes("ready")) ready = true;
    });
    child.stderr?.setEncoding("utf8").on("data", (c: string) => (this.output += c));
    await waitUntil(() => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the CNI harness in ${this.namespace} exited:\n${this.output}`);
      return ready;
    }, 20_000, `the CNI harness in ${this.namespace}`);
  }

  /** SIGTERM (a clean stop) or SIGKILL (a crash: the socket file stays behind). */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.harness;
    if (child === undefined || !this.running) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  }

  /** Runs the built shim as the runtime on this node would. */
  call(call: Omit<PluginCall, "config"> & { config?: unknown }): Promise<PluginRun> {
    return runPlugin(shim(), { ...call, config: call.config ?? this.config(), inNetns: this.namespace });
  }
}

/** A network configuration list as a runtime reads it from its conf dir. */
export interface Conflist {
  cniVersion: string;
  name: string;
  plugins: Record<string, unknown>[];
}

export interface ConflistCall {
  command: "ADD" | "CHECK" | "DEL";
  containerID: string;
  netns?: string;
  ifname: string;
  /** The plugin binaries (CNI_PATH); default REFERENCE_DIR. */
  binDir?: string;
  /** Exec the plugins inside this network namespace (the node's), as the runtime on it would. */
  inNetns?: string;
  /** CHECK and DEL: the result the ADD gave (the runtime's cache), passed to each plugin as prevResult. */
  prevResult?: unknown;
  /** Values offered for capabilities (ips, mac, portMappings, …): each plugin gets, as runtimeConfig, those it declares. */
  capabilityArgs?: Record<string, unknown>;
}

export interface ConflistRun {
  /** Every plugin exec'd, in order; the last one failed when `ok` is false. */
  runs: { type: string; run: PluginRun }[];
  ok: boolean;
  /** ADD: the last plugin's result (what the runtime caches); undefined otherwise or on failure. */
  result: Record<string, unknown> | undefined;
}

/**
 * Runs a conflist as libcni does (SPEC section 3, "Network configuration lists"): ADD execs the
 * plugins in order, each getting the list's cniVersion and name, the runtimeConfig of the
 * capabilities it declares, and from the second on the previous plugin's result as prevResult;
 * CHECK in order and DEL in reverse order, each with the cached ADD result as prevResult. Stops
 * at the first plugin that fails.
 */
export async function runConflist(list: Conflist, call: ConflistCall): Promise<ConflistRun> {
  const plugins = call.command === "DEL" ? [...list.plugins].reverse() : list.plugins;
  const runs: ConflistRun["runs"] = [];
  let prev: unknown = call.command === "ADD" ? undefined : call.prevResult;
  for (const plugin of plugins) {
    const type = String(plugin["type"]);
    const declared = (plugin["capabilities"] ?? {}) as Record<string, unknown>;
    const runtimeConfig: Record<string, unknown> = {};
    for (const [cap, value] of Object.entries(call.capabilityArgs ?? {})) if (declared[cap] === true) runtimeConfig[cap] = value;
    const config: Record<string, unknown> = {
      ...plugin, cniVersion: list.cniVersion, name: list.name,
      ...(Object.keys(runtimeConfig).length > 0 ? { runtimeConfig } : {}),
      ...(prev === undefined ? {} : { prevResult: prev }),
    };
    const binDir = call.binDir ?? REFERENCE_DIR;
    const run = await runPlugin(join(binDir, type), {
      command: call.command, containerID: call.containerID, netns: call.netns, ifname: call.ifname,
      config, inNetns: call.inNetns, env: { CNI_PATH: binDir },
    });
    runs.push({ type, run });
    if (run.code !== 0) return { runs, ok: false, result: undefined };
    if (call.command === "ADD") prev = run.json;
  }
  return { runs, ok: true, result: call.command === "ADD" ? (prev as Record<string, unknown> | undefined) : undefined };
}

/** The reference pair's configuration: bridge + host-local, set up like vxmesh's. */
export function referenceConfig(o: { version: string; subnet: string; dataDir: string; mtu?: number; name?: string; bridge?: string }): Record<string, unknown> {
  return {
    cniVersion: o.version,
    name: o.name ?? "refnet",
    type: "bridge",
    bridge: o.bridge ?? "vxmesh-br",
    isGateway: true,
    isDefaultGateway: true,
    hairpinMode: true,
    mtu: o.mtu ?? 1450,
    ipam: { type: "host-local", subnet: o.subnet, dataDir: o.dataDir },
  };
}

/** The JSON "shape" of a value: types in place of values, arrays element by element. */
export function shapeOf(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(shapeOf);
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) out[k] = shapeOf((v as Record<string, unknown>)[k]);
    return out;
  }
  return v === null ? "null" : typeof v;
}
