// Real vxmesh daemons on the lab's "vxmesh" nodes: one process per node, started inside the
// node's namespace with the peers file the lab describes, stopped with SIGTERM (or killed, and
// started again with the same run and state dirs, as after a crash). Shared by the tests, the
// demo and the bench.

import type { ChildProcess } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { generateKey } from "../control/keyring";
import { distPath } from "../encap/artefacts";
import { queryControl } from "../daemon/control-socket";
import type { DaemonStatus } from "../daemon/daemon";
import { waitFor, type Lab, type LabNode } from "./lab";

export interface DaemonOptions {
  /** Extra flags for `vxmesh daemon`. */
  extraArgs?: readonly string[];
  /**
   * Gossip instead of a static peers file: nodes join through `seed` (the first node started
   * has none), or through every node of `seeds` (the node itself is left out). With `claim`,
   * the node claims a subnet instead of using the lab's (only for nodes without lab-wired pods,
   * whose addresses come from the lab's subnet).
   */
  gossip?: { seed?: LabNode; seeds?: readonly LabNode[]; claim?: boolean; claimWaitS?: number; keyFile?: string };
  /**
   * The Kubernetes source instead: the Node objects on the API server `kubeconfig` names
   * (bench/kube-api-process.ts) give the subnet and the peers.
   */
  kubernetes?: { kubeconfig: string; clusterCidr?: string };
  /** How long to wait for the control socket to answer. */
  readyTimeoutMs?: number;
  /**
   * A command the daemon is started through: argv becomes [...launcher, node, cli.js, "daemon", …]
   * (e.g. setpriv, to run it as another user with chosen capabilities).
   */
  launcher?: readonly string[];
  /** For a daemon that runs as another user: its run and state dirs are made beforehand, owned by it. */
  dirOwner?: { uid: number; gid: number };
}

export function cliPath(): string {
  const cli = distPath("daemon", "cli.js");
  if (!existsSync(cli)) throw new Error(`${cli} is missing: run \`npm run build\``);
  return cli;
}

const LOG_TAIL_BYTES = 64 * 1024;

export class DaemonProcess {
  private output = "";
  readonly exited: Promise<number | null>;

  /** The daemon's --state-dir (its lease, the CNI address store); kept across restarts. */
  readonly stateDir: string;

  constructor(
    readonly node: LabNode,
    readonly runDir: string,
    readonly child: ChildProcess,
    stateDir?: string,
  ) {
    this.stateDir = stateDir ?? join(dirname(runDir), `${node.name}-state`);
    const keep = (chunk: Buffer): void => {
      this.output += chunk.toString("utf8");
      if (this.output.length > LOG_TAIL_BYTES) this.output = this.output.slice(-LOG_TAIL_BYTES);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null) resolve(child.exitCode);
      else child.once("exit", (code) => resolve(code));
    });
  }

  /** The last 64 KiB the daemon printed (pino JSON lines), for diagnostics. */
  get log(): string {
    return this.output;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  status(): Promise<DaemonStatus> {
    return queryControl(this.runDir, "status") as Promise<DaemonStatus>;
  }

  /**
   * Sends `signal` (default SIGKILL: a crash, nothing cleaned up — the TAP vanishes with the
   * process, the hand-off files and the control socket stay) and waits for the process to end.
   */
  async kill(signal: NodeJS.Signals = "SIGKILL", deadlineMs = 5000): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), deadlineMs);
    try {
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGTERM, then SIGKILL if it has not exited within the deadline; returns the exit code. */
  async stop(deadlineMs = 5000): Promise<number | null> {
    if (!this.running) return this.exited;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), deadlineMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Starts and tracks daemons for a lab; `stopAll` stops them and removes their files. */
export class Cluster {
  readonly daemons = new Map<string, DaemonProcess>();
  private readonly dir: string;
  /** The options each node's daemon was last started with successfully, for restart(). */
  private readonly lastOptions = new Map<string, DaemonOptions>();

  constructor(readonly lab: Lab) {
    this.dir = mkdtempSync(join(lab.workDir(), "cluster-"));
  }

  /** Starts a daemon on every "vxmesh" node of the lab, concurrently. */
  async startAll(options: DaemonOptions = {}): Promise<DaemonProcess[]> {
    const nodes = this.lab.nodes.filter((n) => n.overlay === "vxmesh");
    return Promise.all(nodes.map((n) => this.start(n, options)));
  }

  /** A gossip key file shared by the cluster's daemons (mode 0600), made on first use. */
  keyFile(): string {
    const file = join(this.dir, "gossip.key");
    if (!existsSync(file)) writeFileSync(file, generateKey() + "\n", { mode: 0o600 });
    return file;
  }

  /** The flags that pick the peer source: a static peers file, gossip, or Kubernetes. */
  private sourceArgs(node: LabNode, options: DaemonOptions): string[] {
    const k = options.kubernetes;
    if (k !== undefined) return ["--subnet-source", "kubernetes", "--kubeconfig", k.kubeconfig, "--cluster-cidr", k.clusterCidr ?? "10.244.0.0/16"];
    const g = options.gossip;
    if (g === undefined) {
      const peersFile = join(this.dir, `${node.name}-peers.json`);
      writeFileSync(peersFile, JSON.stringify(this.lab.peersFor(node), null, 2));
      return ["--subnet", node.subnet, "--peers", peersFile];
    }
    const seeds = (g.seeds ?? (g.seed === undefined ? [] : [g.seed])).filter((s) => s.name !== node.name);
    return [
      "--key-file", g.keyFile ?? this.keyFile(),
      ...(seeds.length === 0 ? [] : ["--join", seeds.map((s) => `${s.underlayIp}:7946`).join(",")]),
      ...(g.claim === true ? [] : ["--subnet", node.subnet]),
      "--claim-wait", String(g.claimWaitS ?? 2),
    ];
  }

  /** The --run-dir a node's daemon gets (also before it is started): the same on every start. */
  runDirOf(node: LabNode): string {
    return join(this.dir, `${node.name}-run`);
  }

  /** The --state-dir a node's daemon gets: the same on every start, so a restart finds its lease. */
  stateDirOf(node: LabNode): string {
    return join(this.dir, `${node.name}-state`);
  }

  async start(node: LabNode, options: DaemonOptions = {}): Promise<DaemonProcess> {
    const runDir = this.runDirOf(node);
    const stateDir = this.stateDirOf(node);
    if (options.dirOwner !== undefined) {
      // The user must pass through the (root-owned, 0700) temporary directories to reach them.
      chmodSync(this.lab.workDir(), 0o711);
      chmodSync(this.dir, 0o711);
      for (const d of [runDir, stateDir]) {
        mkdirSync(d, { recursive: true, mode: 0o700 });
        chownSync(d, options.dirOwner.uid, options.dirOwner.gid);
      }
    }
    const argv = [
      ...(options.launcher ?? []),
      process.execPath, cliPath(), "daemon",
      "--node-name", node.name,
      "--underlay-ip", node.underlayIp,
      ...this.sourceArgs(node, options),
      "--vni", String(node.vni),
      "--vxlan-port", String(node.port),
      "--run-dir", runDir,
      "--state-dir", stateDir,
      ...(options.extraArgs ?? []),
    ];
    const child = this.lab.spawn(node, argv, { env: { ...process.env, VXMESH_LOG_LEVEL: process.env["VXMESH_LOG_LEVEL"] ?? "info" } });
    const daemon = new DaemonProcess(node, runDir, child, stateDir);
    this.daemons.set(node.name, daemon);
    try {
      // Stops waiting as soon as the daemon exits (waitFor would take a throw for "not yet").
      await waitFor(async () => !daemon.running || daemon.status().then(() => true, () => false),
        { timeoutMs: options.readyTimeoutMs ?? 15_000, intervalMs: 50, what: `daemon on ${node.name} to answer on its control socket` });
      if (!daemon.running) throw new Error(`daemon on ${node.name} exited (${String(await daemon.exited)}):\n${daemon.log}`);
    } catch (err) {
      await daemon.stop();
      throw err;
    }
    this.lastOptions.set(node.name, options);
    return daemon;
  }

  /**
   * Starts the node's daemon again with the options it last started with and the same run
   * and state dirs (so a gossip node finds its lease), once the previous process has ended
   * (kill() or stop() it first). `options` replaces the remembered ones.
   */
  async restart(node: LabNode, options?: DaemonOptions): Promise<DaemonProcess> {
    const previous = this.daemons.get(node.name);
    if (previous === undefined) throw new Error(`no daemon was started on ${node.name}`);
    if (previous.running) throw new Error(`the daemon on ${node.name} is still running: kill() or stop() it before restart()`);
    const o = options ?? this.lastOptions.get(node.name);
    if (o === undefined) throw new Error(`the daemon on ${node.name} never started successfully: give restart() its options`);
    return this.start(node, o);
  }

  daemon(nodeName: string): DaemonProcess {
    const d = this.daemons.get(nodeName);
    if (d === undefined) throw new Error(`no daemon on ${nodeName}`);
    return d;
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.daemons.values()].map((d) => d.stop()));
    this.daemons.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
