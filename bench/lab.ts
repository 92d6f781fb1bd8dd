// The network-namespace lab shared by the tests, the demo and the bench (docs/DESIGN.md §7).
//
// Topology, all inside namespaces this module creates (nothing is created in or changed in the
// root network namespace):
//
//   <prefix>ul     underlay: bridge br0; one veth port per node (vn<i>)
//   <prefix>n<i>   node i: eth0 (192.0.2.(10+i)/24, peer enslaved to br0), ip_forward=1,
//                  bridge vxmesh-br (gateway 10.244.i.1/24, MTU = underlay − 50), and for a
//                  "kernel" node the kernel's VXLAN device vxmesh0 programmed as docs/DESIGN.md §1 draws
//                  it for the TAP; a "vxmesh" node is left for a daemon under test to program.
//   <prefix>n<i>p<k>  pod k of node i: eth0 (10.244.i.(1+k)/24, default route via the gateway),
//                  host end vp<k> in the node namespace, enslaved to vxmesh-br with hairpin on.
//
// <prefix> is vxm<pid>x<counter>- so leftovers of a dead run are recognisable and removed by the
// next Lab.create(). Every `ip` call goes through execFile (no shell); configuration of one
// namespace is applied with one `ip -n NS -batch -`.

import { execFile, spawn as spawnChild, spawnSync } from "node:child_process";
import type { ChildProcess, StdioOptions } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  VNI_MAX,
  formatIpv4,
  formatMac,
  formatSubnet,
  parseIpv4,
  parseMac,
  parseSubnet,
  subnetAddress,
  subnetContains,
  subnetsOverlap,
  vtepMacFor,
} from "../encap/types";
import type { Ipv4, Parsed, Subnet } from "../encap/types";

const execFileP = promisify(execFile);

// ---------------------------------------------------------------------------------------------
// Exported types

export type OverlayKind = "kernel" | "vxmesh";

/** Anything that names a namespace: its name, or a node / pod of the lab. */
export type NsRef = string | { readonly namespace: string };

export interface LabPod {
  /** e.g. "n1p1"; also the role part of the namespace name. */
  readonly name: string;
  /** 1-based index within its node. */
  readonly index: number;
  /** Name of the node the pod lives on. */
  readonly node: string;
  readonly namespace: string;
  /** Interface inside the pod namespace ("eth0"). */
  readonly ifName: string;
  /** Host end of the veth, in the node namespace, enslaved to vxmesh-br. */
  readonly hostIf: string;
  /** Pod address, e.g. "10.244.1.2". */
  readonly ip: string;
  /** Pod address with prefix, e.g. "10.244.1.2/24". */
  readonly cidr: string;
  /** Default gateway (the node bridge address), e.g. "10.244.1.1". */
  readonly gateway: string;
  readonly mtu: number;
}

export interface LabNode {
  /** Node name, e.g. "n1"; the default VTEP MAC derives from it (vtepMacFor). */
  readonly name: string;
  /** 1-based index in the lab. */
  readonly index: number;
  readonly namespace: string;
  readonly overlay: OverlayKind;
  /** Underlay interface inside the node namespace ("eth0"). */
  readonly underlayIf: string;
  /** e.g. "192.0.2.11". */
  readonly underlayIp: string;
  readonly underlayPrefixLen: number;
  readonly underlayMtu: number;
  /** Pod subnet, e.g. "10.244.1.0/24". */
  readonly subnet: string;
  /** Network address of the pod subnet, the address of vxmesh0 (as /32), e.g. "10.244.1.0". */
  readonly subnetNetwork: string;
  /** Bridge address and pods' default gateway, e.g. "10.244.1.1". */
  readonly gateway: string;
  /** The pod bridge ("vxmesh-br"). */
  readonly bridge: string;
  /** The overlay device name ("vxmesh0"): kernel VXLAN for "kernel", the daemon's TAP for "vxmesh". */
  readonly overlayIf: string;
  /** Underlay MTU − 50: bridge, pods and overlay device. */
  readonly overlayMtu: number;
  /** "02:…" lower-case colon form. */
  readonly vtepMac: string;
  readonly vni: number;
  /** UDP destination port of the VXLAN traffic. */
  readonly port: number;
  readonly pods: readonly LabPod[];
}

/** What a node needs to know of a remote node to reach its pods. */
export interface LabPeer {
  readonly name: string;
  readonly underlayIp: string;
  readonly subnet: string;
  readonly vtepMac: string;
}

export interface LabOptions {
  /** Underlay MTU (default 1500); overlay, bridge and pod MTU are this − 50. */
  underlayMtu?: number;
  /** Default VNI of the nodes (default 1). */
  vni?: number;
  /** Default VXLAN UDP port of the nodes (default 4789). */
  port?: number;
  /** Underlay subnet (default "192.0.2.0/24"); node i gets its (10+i)-th address. */
  underlaySubnet?: string;
}

export interface AddNodeOptions {
  /** Default "n<i>"; lower-case letters and digits, starting with a letter, ≤ 10 characters. */
  name?: string;
  /** Default "vxmesh". */
  overlay?: OverlayKind;
  /** Default: address 10+i of the underlay subnet. */
  underlayIp?: string;
  /** Default "10.244.<i>.0/24". */
  subnet?: string;
  /** Default formatMac(vtepMacFor(name)). */
  vtepMac?: string;
  /** Default: the lab's VNI. */
  vni?: number;
  /** Default: the lab's port. */
  port?: number;
}

export interface AddPodOptions {
  /** Default "<node>p<k>"; same rules as node names but ≤ 14 characters. */
  name?: string;
}

export interface LabNodeSpec extends AddNodeOptions {
  /** Number of pods to create on the node (default 0). */
  pods?: number;
}

export interface LabBuildSpec extends LabOptions {
  /** Node i (1-based) is nodes[i-1]. */
  nodes: readonly LabNodeSpec[];
  /** Program the VXLAN peers of every kernel node once everything exists (default false). */
  programPeers?: boolean;
}

export interface ExecOptions {
  /** Kill (SIGKILL) the command after this long; default 30 000 ms. */
  timeoutMs?: number;
  /** Written to the command's stdin (stdin is closed either way). */
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface ExecResult {
  /** Exit code; null when the process was ended by a signal (for example on timeout). */
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
}

export interface LabSpawnOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Default ["ignore", "pipe", "pipe"]: read stdout/stderr or the child may block on a full pipe. */
  stdio?: StdioOptions;
}

export interface WaitForOptions {
  /** Default 10 000 ms. */
  timeoutMs?: number;
  /** Default 100 ms. */
  intervalMs?: number;
  /** Describes the condition; it appears in the timeout error. */
  what: string;
}

export interface PingOptions {
  /** Echo requests to send (default 1); success = every request answered (ping exit 0). */
  count?: number;
  /** How long to wait for each reply (ping -W), default 1000 ms. */
  timeoutMs?: number;
  /** Interval between requests, default 200 ms. */
  intervalMs?: number;
  /** ICMP payload size (ping -s). */
  size?: number;
  /** Set DF and forbid local fragmentation (ping -M do). */
  dontFragment?: boolean;
}

export interface CaptureOptions {
  /** Interface inside the namespace, default "eth0". */
  iface?: string;
  /** Capture (BPF) filter, e.g. "udp port 4789". */
  filter?: string;
  /** Stop after this many packets (tshark -c). */
  count?: number;
  /** Stop after this many seconds (tshark -a duration:), default 20. */
  durationS?: number;
  /** How long to wait for tshark to start capturing, default 20 000 ms. */
  startTimeoutMs?: number;
}

export interface Capture {
  /** The pcapng file being written. */
  readonly file: string;
  /** Resolves with tshark's exit code (null on a signal) once it has ended. */
  readonly done: Promise<number | null>;
  /** True once tshark has ended (count or duration reached, or stopped). */
  finished(): boolean;
  /** Ends the capture now (SIGINT, so the file is flushed) and waits for tshark to exit. */
  stop(): Promise<void>;
}

export interface ReadCaptureOptions {
  /** tshark -d arguments, e.g. "udp.port==8472,vxlan". */
  decodeAs?: readonly string[];
  /** tshark -Y display filter. */
  displayFilter?: string;
  /** tshark -o preferences, e.g. "tcp.check_checksum:TRUE". */
  preferences?: readonly string[];
}

// ---------------------------------------------------------------------------------------------
// Constants

export const LAB_NS_PATTERN = /^vxm(\d+)x(\d+)-/;
const DEFAULT_UNDERLAY_SUBNET = "192.0.2.0/24";
const DEFAULT_UNDERLAY_MTU = 1500;
const DEFAULT_VNI = 1;
const DEFAULT_PORT = 4789;
const VXLAN_OVERHEAD_V4 = 50;
const UNDERLAY_BRIDGE = "br0";
const NODE_BRIDGE = "vxmesh-br";
const OVERLAY_IF = "vxmesh0";
const NODE_UNDERLAY_IF = "eth0";
const POD_IF = "eth0";
const NAME_RE = /^[a-z][a-z0-9]*$/;
const TERM_GRACE_MS = 3000;
const KILL_GRACE_MS = 2000;

let labCounter = 0;

// ---------------------------------------------------------------------------------------------
// Process helpers

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null;
}

async function run(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const p = execFileP(file, [...args], {
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 30_000,
    killSignal: "SIGKILL",
    maxBuffer: 64 * 1024 * 1024,
    env: opts.env,
    cwd: opts.cwd,
  });
  const stdin = p.child.stdin;
  if (stdin !== null) {
    stdin.on("error", () => {
      /* the command may exit without reading its input */
    });
    stdin.end(opts.input ?? "");
  }
  try {
    const { stdout, stderr } = await p;
    return { code: 0, signal: null, timedOut: false, stdout, stderr };
  } catch (e: unknown) {
    if (!isObject(e)) throw e;
    const code = e["code"];
    if (typeof code === "string") {
      // Spawn failure (ENOENT …) or output overflow: not an exit status.
      throw new Error(`${file} ${args.join(" ")}: ${code}: ${String(e["message"])}`);
    }
    const signal = typeof e["signal"] === "string" ? (e["signal"] as NodeJS.Signals) : null;
    return {
      code: typeof code === "number" ? code : null,
      signal,
      timedOut: e["killed"] === true && signal !== null,
      stdout: typeof e["stdout"] === "string" ? e["stdout"] : "",
      stderr: typeof e["stderr"] === "string" ? e["stderr"] : "",
    };
  }
}

function describeFailure(cmd: string, r: ExecResult): string {
  const how = r.timedOut ? "timed out" : r.code !== null ? `exited ${r.code}` : `killed by ${r.signal ?? "?"}`;
  const err = r.stderr.trim();
  return `${cmd} ${how}${err === "" ? "" : `: ${err}`}`;
}

async function runOk(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await run(file, args, opts);
  if (r.code !== 0) throw new Error(describeFailure(`${file} ${args.join(" ")}`, r));
  return r;
}

function nsName(ref: NsRef): string {
  return typeof ref === "string" ? ref : ref.namespace;
}

/**
 * Runs `argv` inside namespace `ns` (`ip netns exec`). Never throws on a non-zero exit; the
 * result carries the code. Throws only when the command cannot be started at all.
 */
export function exec(ns: NsRef, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  if (argv.length === 0) throw new Error("exec: empty argv");
  return run("ip", ["netns", "exec", nsName(ns), ...argv], opts);
}

/** Like exec, but throws with the command and its stderr unless it exits 0. */
export async function execOk(ns: NsRef, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await exec(ns, argv, opts);
  if (r.code !== 0) throw new Error(describeFailure(`[${nsName(ns)}] ${argv.join(" ")}`, r));
  return r;
}

/**
 * Applies `lines` with one `ip [-n ns] -batch -`. Throws naming the failing line unless `force`
 * (then errors are ignored and every line is tried).
 */
async function ipBatch(ns: string | null, lines: readonly string[], force = false): Promise<void> {
  if (lines.length === 0) return;
  const args = [...(ns === null ? [] : ["-n", ns]), ...(force ? ["-force"] : []), "-batch", "-"];
  const r = await run("ip", args, { input: lines.join("\n") + "\n" });
  if (r.code === 0 || force) return;
  throw new Error(batchFailure(`ip ${args.join(" ")}`, lines, r));
}

async function bridgeBatch(ns: string, lines: readonly string[]): Promise<void> {
  if (lines.length === 0) return;
  const args = ["-n", ns, "-batch", "-"];
  const r = await run("bridge", args, { input: lines.join("\n") + "\n" });
  if (r.code !== 0) throw new Error(batchFailure(`bridge ${args.join(" ")}`, lines, r));
}

function batchFailure(cmd: string, lines: readonly string[], r: ExecResult): string {
  const m = /Command failed -:(\d+)/.exec(r.stderr);
  const line = m !== null ? lines[Number(m[1]) - 1] : undefined;
  return describeFailure(cmd, r) + (line !== undefined ? ` (failing line: "${line}")` : "");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `cond` until it returns something other than false / null / undefined and returns that.
 * A throw from `cond` counts as "not yet" (the last error is quoted on timeout). Throws
 * `timed out after … waiting for <what>` once the deadline passes.
 */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  opts: WaitForOptions,
): Promise<Exclude<T, false | null | undefined>> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = undefined;
  for (;;) {
    try {
      const v = await cond();
      if (v !== false && v !== null && v !== undefined) return v as Exclude<T, false | null | undefined>;
      lastError = undefined;
    } catch (e: unknown) {
      lastError = e;
    }
    const left = deadline - Date.now();
    if (left <= 0) {
      const tail = lastError === undefined ? "" : `; last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what}${tail}`);
    }
    await sleep(Math.min(intervalMs, left));
  }
}

/** Pings `toIp` from inside `fromNs`; true when every echo request got its reply. */
export async function ping(fromNs: NsRef, toIp: string, opts: PingOptions = {}): Promise<boolean> {
  const count = opts.count ?? 1;
  const timeoutMs = opts.timeoutMs ?? 1000;
  const intervalMs = opts.intervalMs ?? 200;
  const argv = ["ping", "-n", "-q", "-c", String(count), "-W", String(timeoutMs / 1000), "-i", String(intervalMs / 1000)];
  if (opts.size !== undefined) argv.push("-s", String(opts.size));
  if (opts.dontFragment === true) argv.push("-M", "do");
  argv.push(toIp);
  const r = await exec(fromNs, argv, { timeoutMs: count * (intervalMs + timeoutMs) + 5000 });
  return r.code === 0;
}

/** Names of all network namespaces (`ip netns list`). */
export async function listNetns(): Promise<string[]> {
  const r = await runOk("ip", ["netns", "list"]);
  return parseNetnsList(r.stdout);
}

function parseNetnsList(text: string): string[] {
  const names: string[] = [];
  for (const line of text.split("\n")) {
    const name = line.trim().split(/\s+/)[0];
    if (name !== undefined && name !== "") names.push(name);
  }
  return names;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e: unknown) {
    return isObject(e) && e["code"] === "EPERM";
  }
}

async function netnsPids(ns: string): Promise<number[]> {
  const r = await run("ip", ["netns", "pids", ns], { timeoutMs: 10_000 });
  if (r.code !== 0) return [];
  return r.stdout
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number)
    .filter((p) => p !== process.pid);
}

function signalPids(pids: readonly number[], sig: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
    } catch {
      /* already gone */
    }
  }
}

/**
 * Ends every process in the given namespaces (SIGTERM, then SIGKILL after a grace period) and
 * deletes the namespaces. Errors are ignored: the goal is "gone afterwards".
 */
async function destroyNamespaces(names: readonly string[], termGraceMs: number): Promise<void> {
  if (names.length === 0) return;
  const pidsOf = async (): Promise<number[]> => (await Promise.all(names.map(netnsPids))).flat();
  let pids = await pidsOf();
  if (pids.length > 0) {
    signalPids(pids, "SIGTERM");
    const deadline = Date.now() + termGraceMs;
    while (Date.now() < deadline) {
      pids = pids.filter(pidAlive);
      if (pids.length === 0) break;
      await sleep(50);
    }
    pids = await pidsOf();
    signalPids(pids, "SIGKILL");
  }
  await ipBatch(null, names.map((n) => `netns del ${n}`), true);
  // Anything that refused (a racing deleter, a busy mount) gets one more, individual try.
  const left = new Set(await listNetns());
  for (const n of names) if (left.has(n)) await run("ip", ["netns", "del", n]);
}

/**
 * Removes namespaces of earlier runs: names matching the lab pattern whose pid is no longer
 * alive. Returns the names removed.
 */
export async function cleanupLeftovers(): Promise<string[]> {
  const stale = (await listNetns()).filter((n) => {
    const m = LAB_NS_PATTERN.exec(n);
    if (m === null) return false;
    const pid = Number(m[1]);
    return pid !== process.pid && !pidAlive(pid);
  });
  await destroyNamespaces(stale, 500);
  // Their work dirs too (captures, daemons' run and state dirs): named with the same prefix.
  for (const entry of readdirSync(tmpdir())) {
    const m = LAB_NS_PATTERN.exec(entry);
    if (m === null) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && !pidAlive(pid)) rmSync(join(tmpdir(), entry), { recursive: true, force: true });
  }
  return stale;
}

// ---------------------------------------------------------------------------------------------
// Exit / signal handlers: one set for all live labs of this process.

const liveLabs = new Set<Lab>();
let handlersInstalled = false;

function onProcessExit(): void {
  for (const lab of [...liveLabs]) lab.teardownSync();
}

function onProcessSignal(sig: NodeJS.Signals): void {
  removeHandlers();
  const reraise = (): void => {
    for (const lab of [...liveLabs]) lab.teardownSync();
    process.kill(process.pid, sig);
  };
  const hard = setTimeout(reraise, 15_000);
  void Promise.allSettled([...liveLabs].map((l) => l.teardown())).then(() => {
    clearTimeout(hard);
    reraise();
  });
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on("exit", onProcessExit);
  process.on("SIGINT", onProcessSignal);
  process.on("SIGTERM", onProcessSignal);
}

function removeHandlers(): void {
  if (!handlersInstalled) return;
  handlersInstalled = false;
  process.off("exit", onProcessExit);
  process.off("SIGINT", onProcessSignal);
  process.off("SIGTERM", onProcessSignal);
}

// ---------------------------------------------------------------------------------------------
// Value helpers

function must<T>(p: Parsed<T>, what: string, text: string): T {
  if (!p.ok) throw new Error(`${what} "${text}" is not valid: expected ${p.error}`);
  return p.value;
}

function normMac(text: string, what: string): string {
  return formatMac(must(parseMac(text), what, text));
}

function checkInt(v: number, lo: number, hi: number, what: string): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`${what} ${v} is not valid: expected an integer from ${lo} to ${hi}`);
  return v;
}

function checkName(name: string, maxLen: number, what: string): string {
  if (!NAME_RE.test(name) || name.length > maxLen) {
    throw new Error(`${what} "${name}" is not valid: expected lower-case letters and digits starting with a letter, at most ${maxLen} characters`);
  }
  return name;
}

function lastAddress(s: Subnet): Ipv4 {
  return subnetAddress(s, 2 ** (32 - s.prefixLen) - 1);
}

/** The peers list a node needs: every node of `nodes` other than `node`. */
export function peersFor(node: LabNode, nodes: readonly LabNode[]): LabPeer[] {
  return nodes.filter((n) => n.name !== node.name).map(toPeer);
}

export function toPeer(n: LabNode): LabPeer {
  return { name: n.name, underlayIp: n.underlayIp, subnet: n.subnet, vtepMac: n.vtepMac };
}

interface NodeState extends LabNode {
  pods: LabPod[];
  readonly subnetValue: Subnet;
  readonly ulPort: string;
}

interface DesiredPeer {
  readonly subnet: string;
  readonly network: string;
  readonly vtepMac: string;
  readonly underlayIp: string;
}

// ---------------------------------------------------------------------------------------------
// The lab

export class Lab {
  /** Every namespace name of this lab starts with this, e.g. "vxm1234x1-". */
  readonly prefix: string;
  readonly underlayNs: string;
  readonly underlayMtu: number;
  readonly overlayMtu: number;
  readonly vni: number;
  readonly port: number;
  readonly underlaySubnet: string;

  private readonly ulSubnet: Subnet;
  private readonly nodeList: NodeState[] = [];
  private readonly nsSet = new Set<string>();
  private readonly children = new Set<ChildProcess>();
  private teardownPromise: Promise<void> | undefined;
  private dead = false;
  private workDirPath: string | undefined;
  private captureCounter = 0;
  private readonly pendingNs = new Set<Promise<unknown>>();

  private constructor(opts: LabOptions) {
    this.underlayMtu = checkInt(opts.underlayMtu ?? DEFAULT_UNDERLAY_MTU, 68 + VXLAN_OVERHEAD_V4, 65535, "underlay MTU");
    this.overlayMtu = this.underlayMtu - VXLAN_OVERHEAD_V4;
    this.vni = checkInt(opts.vni ?? DEFAULT_VNI, 0, VNI_MAX, "VNI");
    this.port = checkInt(opts.port ?? DEFAULT_PORT, 1, 65535, "VXLAN port");
    const ul = opts.underlaySubnet ?? DEFAULT_UNDERLAY_SUBNET;
    this.ulSubnet = must(parseSubnet(ul), "underlay subnet", ul);
    if (this.ulSubnet.prefixLen > 29) throw new Error(`underlay subnet "${ul}" is too small: expected a prefix length ≤ 29`);
    this.underlaySubnet = formatSubnet(this.ulSubnet);
    this.prefix = `vxm${process.pid}x${++labCounter}-`;
    this.underlayNs = `${this.prefix}ul`;
  }

  /**
   * Removes leftovers of dead runs, then creates the underlay namespace with its bridge.
   * Exit / SIGINT / SIGTERM handlers that tear the lab down are installed until teardown().
   */
  static async create(opts: LabOptions = {}): Promise<Lab> {
    const lab = new Lab(opts);
    await cleanupLeftovers();
    liveLabs.add(lab);
    installHandlers();
    try {
      await lab.addNamespace(lab.underlayNs);
      await ipBatch(lab.underlayNs, [
        "link set lo up",
        `link add name ${UNDERLAY_BRIDGE} type bridge`,
        `link set ${UNDERLAY_BRIDGE} address ${formatMac(vtepMacFor(`${lab.prefix}underlay-bridge`))} mtu ${lab.underlayMtu}`,
        `link set ${UNDERLAY_BRIDGE} up`,
      ]);
    } catch (e) {
      await lab.teardown();
      throw e;
    }
    return lab;
  }

  /**
   * Creates a lab with the given nodes (node i = nodes[i-1]) and their pods. On any failure the
   * partial lab is torn down and the error rethrown.
   */
  static async build(spec: LabBuildSpec): Promise<Lab> {
    const lab = await Lab.create(spec);
    try {
      for (const [i, n] of spec.nodes.entries()) checkInt(n.pods ?? 0, 0, 200, `pod count of node ${i + 1}`);
      // addNode takes its index synchronously, so node i is spec.nodes[i-1] even though the
      // nodes (and then each node's pods) are built concurrently.
      await settleAll(
        spec.nodes.map(async (n) => {
          const node = await lab.addNode(n);
          await settleAll(Array.from({ length: n.pods ?? 0 }, () => lab.addPod(node)));
        }),
      );
      if (spec.programPeers === true) await lab.programAllPeers();
    } catch (e) {
      await lab.teardown();
      throw e;
    }
    return lab;
  }

  get nodes(): readonly LabNode[] {
    return this.nodeList;
  }

  /** Every pod of every node. */
  get pods(): readonly LabPod[] {
    return this.nodeList.flatMap((n) => n.pods);
  }

  /** Every namespace this lab created (or is creating). */
  get namespaces(): readonly string[] {
    return [...this.nsSet];
  }

  get tornDown(): boolean {
    return this.dead;
  }

  node(name: string): LabNode {
    return this.state(name);
  }

  /** The peers list for `node`: every other node of the lab. */
  peersFor(node: LabNode | string): LabPeer[] {
    return peersFor(this.state(node), this.nodeList);
  }

  private state(ref: LabNode | string): NodeState {
    const name = typeof ref === "string" ? ref : ref.name;
    const n = this.nodeList.find((x) => x.name === name);
    if (n === undefined) throw new Error(`no node "${name}" in lab ${this.prefix}`);
    return n;
  }

  private alive(): void {
    if (this.dead) throw new Error(`lab ${this.prefix} has been torn down`);
  }

  private async addNamespace(name: string): Promise<void> {
    this.alive();
    this.nsSet.add(name); // recorded first, so a teardown racing the creation still removes it
    const p = runOk("ip", ["netns", "add", name]);
    this.pendingNs.add(p);
    try {
      await p;
    } finally {
      this.pendingNs.delete(p);
    }
  }

  /** Adds node i (i = number of nodes so far + 1). */
  async addNode(opts: AddNodeOptions = {}): Promise<LabNode> {
    this.alive();
    const index = this.nodeList.length + 1;
    const name = checkName(opts.name ?? `n${index}`, 10, "node name");
    const overlay: OverlayKind = opts.overlay ?? "vxmesh";
    if (overlay !== "kernel" && overlay !== "vxmesh") throw new Error(`overlay "${String(overlay)}" is not valid: expected "kernel" or "vxmesh"`);
    if (this.nodeList.some((n) => n.name === name)) throw new Error(`node name "${name}" is already used in lab ${this.prefix}`);

    const ulIpText = opts.underlayIp ?? formatIpv4(subnetAddress(this.ulSubnet, 10 + index));
    const ulIp = must(parseIpv4(ulIpText), "underlay address", ulIpText);
    if (!subnetContains(this.ulSubnet, ulIp) || ulIp === this.ulSubnet.network || ulIp === lastAddress(this.ulSubnet)) {
      throw new Error(`underlay address ${ulIpText} is not valid: expected a host address in ${this.underlaySubnet}`);
    }
    const subnetText = opts.subnet ?? `10.244.${index}.0/24`;
    const subnet = must(parseSubnet(subnetText), "pod subnet", subnetText);
    if (subnet.prefixLen > 30) throw new Error(`pod subnet "${subnetText}" is too small: expected a prefix length ≤ 30`);
    for (const n of this.nodeList) {
      if (n.underlayIp === formatIpv4(ulIp)) throw new Error(`underlay address ${ulIpText} is already used by node ${n.name}`);
      if (subnetsOverlap(n.subnetValue, subnet)) throw new Error(`pod subnet ${subnetText} overlaps ${n.subnet} of node ${n.name}`);
    }
    const vtepMac = opts.vtepMac !== undefined ? normMac(opts.vtepMac, "VTEP MAC") : formatMac(vtepMacFor(name));

    const node: NodeState = {
      name,
      index,
      namespace: `${this.prefix}${name}`,
      overlay,
      underlayIf: NODE_UNDERLAY_IF,
      underlayIp: formatIpv4(ulIp),
      underlayPrefixLen: this.ulSubnet.prefixLen,
      underlayMtu: this.underlayMtu,
      subnet: formatSubnet(subnet),
      subnetNetwork: formatIpv4(subnet.network),
      gateway: formatIpv4(subnetAddress(subnet, 1)),
      bridge: NODE_BRIDGE,
      overlayIf: OVERLAY_IF,
      overlayMtu: this.overlayMtu,
      vtepMac,
      vni: checkInt(opts.vni ?? this.vni, 0, VNI_MAX, "VNI"),
      port: checkInt(opts.port ?? this.port, 1, 65535, "VXLAN port"),
      pods: [],
      subnetValue: subnet,
      ulPort: `vn${index}`,
    };
    this.nodeList.push(node);

    await this.addNamespace(node.namespace);
    // The veth is created from inside the underlay namespace with its other end placed straight
    // into the node namespace: the root namespace never holds either end.
    await ipBatch(this.underlayNs, [
      `link add name ${node.ulPort} mtu ${this.underlayMtu} type veth peer name ${NODE_UNDERLAY_IF} mtu ${this.underlayMtu} netns ${node.namespace}`,
      `link set ${node.ulPort} master ${UNDERLAY_BRIDGE}`,
      `link set ${node.ulPort} up`,
    ]);
    const lines = [
      "link set lo up",
      `link set ${NODE_UNDERLAY_IF} mtu ${this.underlayMtu}`,
      `addr add ${node.underlayIp}/${node.underlayPrefixLen} dev ${NODE_UNDERLAY_IF}`,
      `link set ${NODE_UNDERLAY_IF} up`,
      `link add name ${NODE_BRIDGE} type bridge`,
      // An explicit MAC keeps the gateway MAC stable while pods join; an explicit MTU keeps
      // the bridge from following its ports.
      `link set ${NODE_BRIDGE} address ${formatMac(vtepMacFor(`${this.prefix}${name}/bridge`))} mtu ${this.overlayMtu}`,
      `addr add ${node.gateway}/${subnet.prefixLen} dev ${NODE_BRIDGE}`,
      `link set ${NODE_BRIDGE} up`,
    ];
    if (overlay === "kernel") {
      lines.push(
        `link add name ${OVERLAY_IF} type vxlan id ${node.vni} dstport ${node.port} local ${node.underlayIp} dev ${NODE_UNDERLAY_IF} nolearning`,
        `link set ${OVERLAY_IF} address ${node.vtepMac} mtu ${this.overlayMtu}`,
        `addr add ${node.subnetNetwork}/32 dev ${OVERLAY_IF}`,
        `link set ${OVERLAY_IF} up`,
      );
    }
    await Promise.all([
      ipBatch(node.namespace, lines),
      execOk(node.namespace, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
    ]);
    if (overlay === "kernel") {
      // The lab's underlay is veth, which never finishes checksums: with TX checksum offload
      // on, the kernel VXLAN device would put inner TCP/UDP segments on our "wire" with only
      // the pseudo-header sum in them, which a real NIC would have completed. A userspace
      // peer reads those bytes as they are, so make the kernel finish them in software.
      await execOk(node.namespace, ["ethtool", "-K", OVERLAY_IF, "tx", "off"]);
    }
    return node;
  }

  /** Adds pod k (k = pods on the node so far + 1) with address k+1 of the node subnet. */
  async addPod(nodeRef: LabNode | string, opts: AddPodOptions = {}): Promise<LabPod> {
    this.alive();
    const node = this.state(nodeRef);
    const index = node.pods.length + 1;
    const name = checkName(opts.name ?? `${node.name}p${index}`, 14, "pod name");
    if (this.pods.some((p) => p.name === name)) throw new Error(`pod name "${name}" is already used in lab ${this.prefix}`);
    const ip = subnetAddress(node.subnetValue, 1 + index);
    if (ip >= lastAddress(node.subnetValue)) throw new Error(`node ${node.name}: subnet ${node.subnet} has no address left for pod ${index}`);
    const pod: LabPod = {
      name,
      index,
      node: node.name,
      namespace: `${this.prefix}${name}`,
      ifName: POD_IF,
      hostIf: `vp${index}`,
      ip: formatIpv4(ip),
      cidr: `${formatIpv4(ip)}/${node.subnetValue.prefixLen}`,
      gateway: node.gateway,
      mtu: this.overlayMtu,
    };
    node.pods.push(pod);

    await this.addNamespace(pod.namespace);
    await ipBatch(node.namespace, [
      `link add name ${pod.hostIf} mtu ${this.overlayMtu} type veth peer name ${POD_IF} mtu ${this.overlayMtu} netns ${pod.namespace}`,
      `link set ${pod.hostIf} master ${NODE_BRIDGE}`,
      `link set ${pod.hostIf} type bridge_slave hairpin on`,
      `link set ${pod.hostIf} up`,
    ]);
    await ipBatch(pod.namespace, [
      "link set lo up",
      `addr add ${pod.cidr} dev ${POD_IF}`,
      `link set ${POD_IF} up`,
      `route add default via ${pod.gateway} dev ${POD_IF}`,
    ]);
    return pod;
  }

  /**
   * Programs the kernel VXLAN device of a "kernel" node so that it reaches exactly `peers`:
   * per peer a route `<subnet> via <network> dev vxmesh0 onlink`, a permanent neighbour
   * `<network> lladdr <vtep mac>`, and an FDB entry `<vtep mac> dst <underlay ip>`. Reconciles
   * against the current kernel state, so calling it again with a changed list adds, replaces
   * and removes only what differs.
   */
  async programPeers(nodeRef: LabNode | string, peers: readonly LabPeer[]): Promise<void> {
    this.alive();
    const node = this.state(nodeRef);
    if (node.overlay !== "kernel") throw new Error(`node ${node.name} has overlay "${node.overlay}"; only "kernel" nodes are programmed by the lab`);
    const desired = new Map<string, DesiredPeer>(); // by subnet
    for (const p of peers) {
      const subnet = must(parseSubnet(p.subnet), `peer ${p.name} subnet`, p.subnet);
      const ulIp = must(parseIpv4(p.underlayIp), `peer ${p.name} underlay address`, p.underlayIp);
      const d: DesiredPeer = {
        subnet: formatSubnet(subnet),
        network: formatIpv4(subnet.network),
        vtepMac: normMac(p.vtepMac, `peer ${p.name} VTEP MAC`),
        underlayIp: formatIpv4(ulIp),
      };
      if (subnetsOverlap(subnet, node.subnetValue)) throw new Error(`peer ${p.name} subnet ${d.subnet} overlaps node ${node.name}'s own ${node.subnet}`);
      if (desired.has(d.subnet)) throw new Error(`peer subnet ${d.subnet} appears twice`);
      desired.set(d.subnet, d);
    }
    const ns = node.namespace;
    const [routesR, neighR, fdbR] = await Promise.all([
      runOk("ip", ["-n", ns, "-4", "-j", "route", "show", "dev", OVERLAY_IF]),
      runOk("ip", ["-n", ns, "-4", "-j", "neigh", "show", "dev", OVERLAY_IF]),
      runOk("bridge", ["-n", ns, "-j", "fdb", "show", "dev", OVERLAY_IF]),
    ]);
    const routes = jsonObjects(routesR.stdout, "ip route");
    const neighs = jsonObjects(neighR.stdout, "ip neigh");
    const fdb = jsonObjects(fdbR.stdout, "bridge fdb");

    const wantFdb = new Set([...desired.values()].map((d) => `${d.vtepMac} ${d.underlayIp}`));
    const haveFdb = new Set<string>();
    const fdbDel: string[] = [];
    for (const e of fdb) {
      const mac = strField(e, "mac")?.toLowerCase();
      const dst = strField(e, "dst");
      if (mac === undefined || dst === undefined) continue; // not a remote entry
      const key = `${mac} ${dst}`;
      if (wantFdb.has(key)) haveFdb.add(key);
      else fdbDel.push(`fdb del ${mac} dev ${OVERLAY_IF} dst ${dst}`);
    }
    const fdbAdd = [...wantFdb].filter((k) => !haveFdb.has(k)).map((k) => {
      const [mac, dst] = k.split(" ");
      return `fdb append ${mac ?? ""} dev ${OVERLAY_IF} dst ${dst ?? ""}`;
    });

    const wantNeigh = new Map([...desired.values()].map((d) => [d.network, d.vtepMac]));
    const neighOk = new Set<string>();
    const neighDel: string[] = [];
    for (const e of neighs) {
      const dst = strField(e, "dst");
      if (dst === undefined) continue;
      const mac = strField(e, "lladdr")?.toLowerCase();
      const state = e["state"];
      const permanent = Array.isArray(state) && state.includes("PERMANENT");
      const want = wantNeigh.get(dst);
      if (want === undefined) neighDel.push(`neigh del ${dst} dev ${OVERLAY_IF}`);
      else if (want === mac && permanent) neighOk.add(dst);
    }
    const neighSet = [...wantNeigh].filter(([ip]) => !neighOk.has(ip)).map(([ip, mac]) => `neigh replace ${ip} lladdr ${mac} dev ${OVERLAY_IF} nud permanent`);

    const routeOk = new Set<string>();
    const routeDel: string[] = [];
    for (const e of routes) {
      let dst = strField(e, "dst");
      if (dst === undefined) continue;
      if (dst === "default") dst = "0.0.0.0/0";
      if (!dst.includes("/")) dst += "/32";
      const want = desired.get(dst);
      const flags = e["flags"];
      const onlink = Array.isArray(flags) && flags.includes("onlink");
      if (want === undefined) routeDel.push(`route del ${dst} dev ${OVERLAY_IF}`);
      else if (strField(e, "gateway") === want.network && onlink) routeOk.add(dst);
    }
    const routeSet = [...desired.values()].filter((d) => !routeOk.has(d.subnet)).map((d) => `route replace ${d.subnet} via ${d.network} dev ${OVERLAY_IF} onlink`);

    // Order: make the new paths whole before pointing routes at them, then remove the old.
    await bridgeBatch(ns, fdbAdd);
    await ipBatch(ns, [...neighSet, ...routeSet, ...routeDel, ...neighDel]);
    await bridgeBatch(ns, fdbDel);
  }

  /** programPeers(node, peersFor(node)) for every "kernel" node, concurrently. */
  async programAllPeers(): Promise<void> {
    await Promise.all(this.nodeList.filter((n) => n.overlay === "kernel").map((n) => this.programPeers(n, this.peersFor(n))));
  }

  /** exec() in a namespace (never throws on a non-zero exit). */
  exec(ns: NsRef, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return exec(ns, argv, opts);
  }

  /** ping() from a namespace. */
  ping(fromNs: NsRef, toIp: string, opts: PingOptions = {}): Promise<boolean> {
    return ping(fromNs, toIp, opts);
  }

  /**
   * Starts `argv` inside a namespace (`ip netns exec`, which execs the program in place, so the
   * child's pid is the program's). The process is tracked: teardown() ends it.
   */
  spawn(ns: NsRef, argv: readonly string[], opts: LabSpawnOptions = {}): ChildProcess {
    this.alive();
    if (argv.length === 0) throw new Error("spawn: empty argv");
    const child = spawnChild("ip", ["netns", "exec", nsName(ns), ...argv], {
      stdio: opts.stdio ?? ["ignore", "pipe", "pipe"],
      env: opts.env,
      cwd: opts.cwd,
    });
    this.children.add(child);
    const forget = (): void => {
      this.children.delete(child);
    };
    child.once("exit", forget);
    child.once("error", forget);
    return child;
  }

  /**
   * A temporary directory for this lab's files (captures, daemons' peers files and run
   * dirs); teardown removes it with the namespaces.
   */
  workDir(): string {
    this.alive();
    if (this.workDirPath === undefined) this.workDirPath = mkdtempSync(join(tmpdir(), this.prefix));
    return this.workDirPath;
  }

  /**
   * Starts tshark on an interface inside a namespace, writing a pcapng file in the lab's
   * temporary directory; resolves once tshark reports that it is capturing.
   */
  async startCapture(ns: NsRef, opts: CaptureOptions = {}): Promise<Capture> {
    this.alive();
    const file = join(this.workDir(), `cap${++this.captureCounter}.pcapng`);
    const argv = ["tshark", "-n", "-q", "-i", opts.iface ?? "eth0", "-a", `duration:${opts.durationS ?? 20}`, "-w", file];
    if (opts.filter !== undefined) argv.push("-f", opts.filter);
    if (opts.count !== undefined) argv.push("-c", String(opts.count));
    const child = this.spawn(ns, argv);
    let stderr = "";
    let started = false;
    child.stdout?.resume();
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      stderr += chunk;
      if (/Capture started|Capturing on/.test(stderr)) started = true;
    });
    const done = new Promise<number | null>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
      else child.once("exit", (code) => resolve(code));
    });
    let exited = false;
    void done.then(() => {
      exited = true;
    });
    try {
      await waitFor(
        () => {
          if (started) return true;
          if (exited) throw new Error(`tshark exited before capturing: ${stderr.trim()}`);
          return false;
        },
        { timeoutMs: opts.startTimeoutMs ?? 20_000, intervalMs: 20, what: `tshark to start capturing in ${nsName(ns)}` },
      );
    } catch (e) {
      await this.stopChild(child);
      throw e;
    }
    return {
      file,
      done,
      finished: () => exited,
      stop: async () => {
        if (!exited) await this.stopChild(child, "SIGINT");
      },
    };
  }

  /**
   * Decodes a capture file with `tshark -r FILE -T fields`; one row per packet, one string per
   * field (several occurrences of a field, e.g. outer and inner ip.src, are joined with ",").
   */
  async readCapture(file: string, fields: readonly string[], opts: ReadCaptureOptions = {}): Promise<string[][]> {
    const argv = ["tshark", "-n", "-r", file, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"];
    for (const d of opts.decodeAs ?? []) argv.push("-d", d);
    for (const o of opts.preferences ?? []) argv.push("-o", o);
    if (opts.displayFilter !== undefined) argv.push("-Y", opts.displayFilter);
    for (const f of fields) argv.push("-e", f);
    const r = await runOk(argv[0] as string, argv.slice(1), { timeoutMs: 60_000 });
    return r.stdout
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => l.split("\t"));
  }

  private async stopChild(child: ChildProcess, first: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const exited = (): boolean => child.exitCode !== null || child.signalCode !== null;
    if (exited()) return;
    const waitExit = (ms: number): Promise<boolean> =>
      new Promise((resolve) => {
        if (exited()) return resolve(true);
        const t = setTimeout(() => {
          child.off("exit", onExit);
          resolve(exited());
        }, ms);
        const onExit = (): void => {
          clearTimeout(t);
          resolve(true);
        };
        child.once("exit", onExit);
      });
    child.kill(first);
    if (await waitExit(TERM_GRACE_MS)) return;
    child.kill("SIGKILL");
    await waitExit(KILL_GRACE_MS);
  }

  /**
   * Ends every tracked process (SIGTERM, SIGKILL after a deadline), ends anything else left in
   * the lab's namespaces, deletes them all and the capture directory. Idempotent; also runs
   * from the process's exit / SIGINT / SIGTERM handlers.
   */
  teardown(): Promise<void> {
    if (this.teardownPromise === undefined) {
      this.dead = true;
      this.teardownPromise = this.doTeardown();
    }
    return this.teardownPromise;
  }

  private async doTeardown(): Promise<void> {
    try {
      // A namespace still being created would otherwise appear after the deletion below.
      await Promise.allSettled([...this.pendingNs]);
      await Promise.all([...this.children].map((c) => this.stopChild(c)));
      const mine = new Set(this.nsSet);
      for (const n of await listNetns()) if (n.startsWith(this.prefix)) mine.add(n);
      await destroyNamespaces([...mine], 1000);
      this.removeWorkDir();
    } finally {
      liveLabs.delete(this);
      if (liveLabs.size === 0) removeHandlers();
    }
  }

  /** Synchronous last-resort teardown for the process 'exit' handler: SIGKILL and delete. */
  teardownSync(): void {
    this.dead = true;
    for (const c of this.children) {
      try {
        c.kill("SIGKILL");
      } catch {
        /* gone */
      }
    }
    const list = spawnSync("ip", ["netns", "list"], { encoding: "utf8" });
    const names = new Set(this.nsSet);
    for (const n of parseNetnsList(list.stdout ?? "")) if (n.startsWith(this.prefix)) names.add(n);
    for (const n of names) {
      const pids = spawnSync("ip", ["netns", "pids", n], { encoding: "utf8" });
      signalPids(
        (pids.stdout ?? "").split(/\s+/).filter((s) => /^\d+$/.test(s)).map(Number).filter((p) => p !== process.pid),
        "SIGKILL",
      );
    }
    if (names.size > 0) {
      spawnSync("ip", ["-force", "-batch", "-"], { input: [...names].map((n) => `netns del ${n}`).join("\n") + "\n" });
    }
    this.removeWorkDir();
    liveLabs.delete(this);
    if (liveLabs.size === 0) removeHandlers();
  }

  private removeWorkDir(): void {
    if (this.workDirPath === undefined) return;
    try {
      rmSync(this.workDirPath, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
    this.workDirPath = undefined;
  }
}

/** Like Promise.all, but waits for every promise to settle before rethrowing the first error. */
async function settleAll<T>(promises: readonly Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed !== undefined) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

function jsonObjects(text: string, what: string): Record<string, unknown>[] {
  const t = text.trim();
  if (t === "") return [];
  let v: unknown;
  try {
    v = JSON.parse(t);
  } catch (e) {
    throw new Error(`${what}: unexpected JSON output: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (!Array.isArray(v)) throw new Error(`${what}: expected a JSON array`);
  return v.filter(isObject);
}

function strField(o: Record<string, unknown>, key: string): string | undefined {
  const v = o[key];
  return typeof v === "string" ? v : undefined;
}
