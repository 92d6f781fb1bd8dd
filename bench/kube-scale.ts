// Measurement (not a test): the Kubernetes source (daemon/kubernetes-source.ts) against a simulated
// API server with thousands of Nodes, as issue 15 asks: the initial sync, the memory, and the work
// one Node's change causes.
//
//   npm run build && node --expose-gc dist/bench/kube-scale.js [--nodes 5000] [--repeat 3] [--changes 20] [--json FILE]
//
// Per repeat, the API double (bench/kube-api-double.ts) runs in a child process of its own
// (dist/bench/kube-api-process-main.js over Node IPC, on 127.0.0.1, TLS with a throw-away CA and
// a bearer token), so this process's memory is the source's and the double's is read apart from
// it (/proc/<pid>/status). It holds N Nodes as running vxmesh nodes publish them: the i-th /29 of
// 10.244.0.0/16 as podCIDR, the vxmesh.io/ annotations, distinct VTEP MACs and distinct underlay
// addresses. The underlay addresses are data only (nothing here sends a packet or programs a
// kernel); they come from 198.18.0.0/15, RFC 2544's range for benchmarking. One of the Nodes is
// "self", the node whose source runs here with the real HTTPS client (control/kube/client.ts).
//
// The data plane is in memory: the "kernel" is the routes and neighbours it would hold. Every
// peersChanged is planned with diffPeers (control/host-plumbing.ts, what HostPlumbing.setPeers
// applies) against the previous set, and the plan counted: routes and neighbours added,
// replaced, removed. Then the change of one Node, each kind several times: a Node added, a VTEP
// MAC changed, an underlay address changed, a kubelet status heartbeat (no peer selection) and a
// Node deleted; the latency from the write at the double to the new peer set, the CPU time this
// process spent on it, and the kernel plan it caused (only that peer's route and neighbour).
// A thin tap on the client (TappedApi) counts list pages and tells when a watch event was handled.

import { fork } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import pino from "pino";
import type { Peer } from "../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, vtepMacFor, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";
import { diffPeers, type ActualNeighbour, type ActualRoute, type PeerPlan } from "../control/host-plumbing";
import { RTN_UNICAST } from "../control/netlink/constants";
import { ANNOTATIONS, encodeEndpoint, type VxlanEndpoint } from "../control/kube/annotations";
import type { KubeApi, WatchEvent, WatchHandle, WatchOptions } from "../control/kube/api";
import { HttpsKubeApi } from "../control/kube/client";
import { CONTROL_PROTOCOL_VERSION } from "../control/node-record";
import { systemClock } from "../daemon/clock";
import { KubernetesSource } from "../daemon/kubernetes-source";
import type { PeerEvents } from "../daemon/peer-source";
import { nodeObject, type KubeApiDoubleOptions, type KubeRequestCounts, type NodeJson } from "./kube-api-double";
import { makeTestPki, type TestPki } from "./kube-pki";
import { DoubleChannel } from "./kube-api-process";
import { median, percentile } from "./report";

// ---------------------------------------------------------------------------------------------
// The simulated cluster

const CLUSTER_CIDR: Subnet = { family: 4, network: 0x0af40000 as Ipv4, prefixLen: 16 }; // 10.244.0.0/16
const POD_PREFIX = 29;
/** /29s in the /16: N Nodes plus the ones added during the run must fit. */
export const MAX_SUBNETS = 2 ** (POD_PREFIX - CLUSTER_CIDR.prefixLen);
/** 198.18.0.0/15 (RFC 2544): the Nodes' underlay addresses from the lower /16, changed ones from the upper. */
const UNDERLAY_BASE = 0xc6120000;
const CHANGED_UNDERLAY_BASE = 0xc6130000;
const VNI = 1 as Vni;
const VXLAN_PORT = 4789;
const SELF = "self";
const TOKEN = "kube-scale-token";
const SA = "system:serviceaccount:vxmesh-system:vxmesh";
const NEEDED = ["get nodes", "list nodes", "watch nodes", "patch nodes/status"];
/** Between the changes measured: the source's pass after a change is over by then. */
const GAP_MS = 10;
/** After the last change of a kind, before counting the peersChanged calls it caused. */
const SETTLE_MS = 200;
const WAIT_MS = 60_000;
const LOAD_BATCH = 250;

export const CHANGE_KINDS = ["add", "mac", "underlay", "heartbeat", "delete"] as const;
export type ChangeKind = (typeof CHANGE_KINDS)[number];

const nodeName = (i: number): string => (i === 0 ? SELF : `node-${String(i).padStart(5, "0")}`);
const podCidr = (i: number): Subnet => ({ family: 4, network: (CLUSTER_CIDR.network + i * 2 ** (32 - POD_PREFIX)) as Ipv4, prefixLen: POD_PREFIX });
const underlayOf = (i: number): Ipv4 => (UNDERLAY_BASE + 1 + i) as Ipv4;

/** A VTEP MAC derived from `seed` (vtepMacFor, as a daemon's default) that no other Node has. */
function distinctMac(used: Set<number>, seed: string): MacAddr {
  for (let salt = 0; ; salt++) {
    const mac = vtepMacFor(salt === 0 ? seed : `${seed}#${salt}`);
    if (!used.has(mac)) {
      used.add(mac);
      return mac;
    }
  }
}

function endpoint(underlayIp: Ipv4, vtepMac: MacAddr): VxlanEndpoint {
  return { protocol: CONTROL_PROTOCOL_VERSION, underlayIp, vtepMac, vni: VNI, vxlanPort: VXLAN_PORT };
}

/** Node `i` as a running vxmesh node leaves it: its podCIDR and its published endpoint. */
function meshNode(i: number, macs: Set<number>): NodeJson {
  const name = nodeName(i);
  return nodeObject(name, {
    podCIDR: formatSubnet(podCidr(i)), internalIP: formatIpv4(underlayOf(i)),
    annotations: encodeEndpoint(endpoint(underlayOf(i), distinctMac(macs, name))),
  });
}

// ---------------------------------------------------------------------------------------------
// Figures

export interface Stats {
  n: number;
  median: number | null;
  p90: number | null;
  min: number | null;
  max: number | null;
}

function stats(xs: readonly number[]): Stats {
  const finite = xs.filter((x) => Number.isFinite(x));
  return {
    n: finite.length, median: median(finite), p90: percentile(finite, 90),
    min: finite.length === 0 ? null : Math.min(...finite), max: finite.length === 0 ? null : Math.max(...finite),
  };
}

export interface Counts3 {
  added: number;
  replaced: number;
  removed: number;
}

/** What one peersChanged made the data plane do to the kernel. */
export interface PlanCounts {
  routes: Counts3;
  neighbours: Counts3;
}

export interface Memory {
  rssMiB: number;
  heapUsedMiB: number;
}

export interface ChildMemory {
  /** VmRSS. */
  rssMiB: number;
  /** VmHWM: the peak RSS so far. */
  peakRssMiB: number;
}

export interface SyncResult {
  /** start() → the last list page received (ms). */
  listMs: number;
  /** start() → the first peersChanged with N−1 peers (ms). */
  firstPeersMs: number;
  /** start() → source.ready (ms). */
  readyMs: number;
  /** This process's CPU time, start() → ready (ms). */
  cpuMs: number;
  /** List pages the client received, complete lists the source counted, list requests the double answered. */
  pages: number;
  lists: number;
  listRequests: number;
  watches: number;
  peers: number;
  /** The kernel plan of the first peer set (from nothing), and diffPeers' time for it. */
  firstPlan: PlanCounts;
  firstPlanMs: number;
}

export interface ChangeSample {
  target: string;
  /**
   * The write sent to the double over IPC → peersChanged called with the new set (heartbeat: the
   * watch event handled by the source). Includes the IPC call's way there (see ipcRoundTripMs).
   */
  latencyMs: number;
  /**
   * The write sent → its IPC answer handled here. Not a starting point for the latency: the watch
   * event mostly overtakes the answer, which then waits behind the source's work in this event loop.
   */
  ipcAnsweredMs: number;
  /** This process's CPU time from the write's send to that moment (the source's work, plus the IPC call). */
  cpuMs: number;
  /** The kernel plan caused; null for a heartbeat (no peersChanged). */
  plan: PlanCounts | null;
  /** diffPeers' own time for it (the data plane's part, not in cpuMs). */
  planMs: number | null;
  /** Whether every route and neighbour in the plan is the changed Node's. */
  onlyThatPeer: boolean;
}

export interface KindResult {
  samples: ChangeSample[];
  /** peersChanged calls during the whole phase (expected: one per change; none for heartbeats). */
  peersChangedCalls: number;
  /** The distinct plans seen, with how often. */
  plans: { plan: string; times: number }[];
  expectedPlan: string;
  asExpected: boolean;
}

export interface RepeatResult {
  repeat: number;
  /** The API double's process (gone after the repeat). */
  apiPid: number;
  load: { nodes: number; ms: number };
  sync: SyncResult;
  /** Round trips of a no-op IPC call ("resourceVersion"), for scale: part of every latency is the write's way to the double. */
  ipcRoundTripMs: number[];
  memory: {
    /** delta: afterSync − beforeSource. beforeLoad is before the Nodes were built and sent (which leaves RSS behind). */
    self: { beforeLoad: Memory; beforeSource: Memory; afterSync: Memory; delta: Memory };
    api: { afterLoad: ChildMemory; afterSync: ChildMemory };
  };
  changes: Record<ChangeKind, KindResult>;
}

export interface KubeScaleOptions {
  nodes: number;
  repeat: number;
  /** Changes of each kind per repeat. */
  changes: number;
  /** Progress lines (default: none). */
  progress?: (line: string) => void;
}

export interface KubeScaleResult {
  options: { nodes: number; peers: number; repeat: number; changes: number; podCidrPrefix: number; listPageSize: number };
  machine: { node: string; cpus: number; cpuModel: string; gcExposed: boolean };
  /** The temporary directory used (PKI); removed at the end. */
  workDir: string;
  repeats: RepeatResult[];
  summary: {
    sync: Record<"listMs" | "firstPeersMs" | "readyMs" | "cpuMs", Stats>;
    memory: Record<"selfRssDeltaMiB" | "selfHeapDeltaMiB" | "selfRssAfterMiB" | "selfHeapAfterMiB" | "apiRssAfterSyncMiB", Stats>;
    ipcRoundTripMs: Stats;
    changes: Record<ChangeKind, { latencyMs: Stats; deliveredBeforeIpcAnswer: number; cpuMs: Stats; planMs: Stats; plans: { plan: string; times: number }[]; asExpected: boolean }>;
  };
}

const LIST_PAGE_SIZE = 500; // the source's page size (daemon/kubernetes-source.ts)

function planLabel(p: PlanCounts | null): string {
  if (p === null) return "no peersChanged";
  const c = (x: Counts3): string => `+${x.added} ~${x.replaced} -${x.removed}`;
  return `routes ${c(p.routes)}, neighbours ${c(p.neighbours)}`;
}

const EXPECTED: Record<ChangeKind, PlanCounts | null> = {
  add: { routes: { added: 1, replaced: 0, removed: 0 }, neighbours: { added: 1, replaced: 0, removed: 0 } },
  mac: { routes: { added: 0, replaced: 0, removed: 0 }, neighbours: { added: 0, replaced: 1, removed: 0 } },
  underlay: { routes: { added: 0, replaced: 0, removed: 0 }, neighbours: { added: 0, replaced: 0, removed: 0 } },
  heartbeat: null,
  delete: { routes: { added: 0, replaced: 0, removed: 1 }, neighbours: { added: 0, replaced: 0, removed: 1 } },
};

// ---------------------------------------------------------------------------------------------
// The API double in a child process

const MiB = 1024 * 1024;
const cpuMsSince = (from: NodeJS.CpuUsage, to: NodeJS.CpuUsage = process.cpuUsage()): number => (to.user - from.user + to.system - from.system) / 1000;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** dist/bench/kube-api-process-main.js forked with an IPC channel, on 127.0.0.1 (no namespace). */
class ApiChild {
  /** "https://127.0.0.1:PORT", once init answered. */
  url = "";

  private constructor(private readonly channel: DoubleChannel) {}

  static async start(init: KubeApiDoubleOptions): Promise<ApiChild> {
    // No execArgv: neither --expose-gc nor a test runner's loaders belong in the double.
    const api = new ApiChild(new DoubleChannel(fork(DoubleChannel.script(), [], { stdio: ["ignore", "pipe", "pipe", "ipc"], execArgv: [] })));
    try {
      const r = (await api.call("init", [init])) as { url: string };
      api.url = r.url;
      return api;
    } catch (e) {
      await api.close();
      throw e;
    }
  }

  get pid(): number {
    return this.channel.pid ?? -1;
  }

  call(op: string, args: readonly unknown[] = [], timeoutMs = WAIT_MS): Promise<unknown> {
    return this.channel.call(op, args, timeoutMs);
  }

  /** The child's resident memory, from /proc (nothing asked of the double). */
  memory(): ChildMemory {
    const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
    const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
    return { rssMiB: kib("VmRSS") / 1024, peakRssMiB: kib("VmHWM") / 1024 };
  }

  close(): Promise<void> {
    return this.channel.close();
  }
}

// ---------------------------------------------------------------------------------------------
// In this process: a tap on the client, and the in-memory data plane

interface Waiter<T> {
  accept(v: T): boolean;
  resolve(v: T): void;
}

/** Waiters for values of T; `next` registers one (with a timeout), `offer` hands a value to those it fits. */
class Waiters<T> {
  private readonly list = new Set<Waiter<T>>();

  next(accept: (v: T) => boolean, what: string, timeoutMs = WAIT_MS): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const w: Waiter<T> = {
        accept,
        resolve: (v) => {
          clearTimeout(timer);
          this.list.delete(w);
          resolve(v);
        },
      };
      const timer = setTimeout(() => {
        this.list.delete(w);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.list.add(w);
    });
  }

  offer(v: T): void {
    for (const w of [...this.list]) if (w.accept(v)) w.resolve(v);
  }
}

interface EventSeen {
  at: number;
  cpu: NodeJS.CpuUsage;
  event: WatchEvent;
}

const nameOf = (o: unknown): string | undefined => (o as { metadata?: { name?: string } } | null)?.metadata?.name;

/** The real client, with list pages counted and each watch event reported after the source handled it. */
class TappedApi implements KubeApi {
  pages = 0;
  items = 0;
  lastPageAt: number | undefined;
  readonly events = new Waiters<EventSeen>();

  constructor(private readonly inner: KubeApi) {}

  get server(): string {
    return this.inner.server;
  }

  getNode(name: string): ReturnType<KubeApi["getNode"]> {
    return this.inner.getNode(name);
  }

  async listNodes(page: { limit: number; continueToken?: string }): ReturnType<KubeApi["listNodes"]> {
    const r = await this.inner.listNodes(page);
    this.pages++;
    if (r.ok) {
      this.items += r.value.items.length;
      if (r.value.continueToken === undefined) this.lastPageAt = performance.now();
    }
    return r;
  }

  watchNodes(options: WatchOptions, onEvent: (event: WatchEvent) => void, onOpen?: () => void): WatchHandle {
    return this.inner.watchNodes(options, (event) => {
      onEvent(event);
      this.events.offer({ at: performance.now(), cpu: process.cpuUsage(), event });
    }, onOpen);
  }

  patchNode(name: string, patch: object, options: Parameters<KubeApi["patchNode"]>[2]): ReturnType<KubeApi["patchNode"]> {
    return this.inner.patchNode(name, patch, options);
  }

  close(): void {
    this.inner.close();
  }
}

interface Delivery {
  /** When peersChanged was called, and this process's CPU time then. */
  at: number;
  cpu: NodeJS.CpuUsage;
  peers: readonly Peer[];
  plan: PlanCounts;
  planMs: number;
  /** Subnet networks of every route and neighbour the plan touches. */
  touched: Set<number>;
}

function ourRoute(s: Subnet): ActualRoute {
  return { dst: s, gateway: s.network, onlink: true, priority: 0, tos: 0, type: RTN_UNICAST };
}

/** How many routes and neighbours a plan adds, replaces and removes, given the neighbours there were. */
function countPlan(plan: PeerPlan, before: readonly ActualNeighbour[]): PlanCounts {
  const removedDst = new Set(plan.removeRoutes.map((r) => formatSubnet(r.dst)));
  const addedDst = new Set(plan.addRoutes.map(formatSubnet));
  const replacedRoutes = [...addedDst].filter((k) => removedDst.has(k)).length;
  const had = new Set(before.map((n) => n.ip));
  const replacedNeighbours = plan.setNeighbours.filter((n) => had.has(n.ip)).length;
  return {
    routes: { added: addedDst.size - replacedRoutes, replaced: replacedRoutes, removed: removedDst.size - replacedRoutes },
    neighbours: { added: plan.setNeighbours.length - replacedNeighbours, replaced: replacedNeighbours, removed: plan.removeNeighbours.length },
  };
}

/** The data plane in memory: the kernel's routes and neighbours as HostPlumbing would leave them. */
class KernelDouble implements PeerEvents {
  private routes: ActualRoute[] = [];
  private neighbours: ActualNeighbour[] = [];
  calls = 0;
  readonly subnets: (Subnet | undefined)[] = [];
  readonly fatals: string[] = [];
  readonly deliveries = new Waiters<Delivery>();

  async subnetChanged(subnet: Subnet | undefined): Promise<void> {
    this.subnets.push(subnet);
  }

  async peersChanged(peers: readonly Peer[]): Promise<void> {
    const at = performance.now();
    const cpu = process.cpuUsage();
    this.calls++;
    const t = performance.now();
    const plan = diffPeers(peers.map((p) => ({ subnet: p.subnet, vtepMac: p.vtepMac })), this.routes, this.neighbours);
    const planMs = performance.now() - t;
    const touched = new Set<number>([
      ...plan.addRoutes.map((s) => s.network), ...plan.removeRoutes.map((r) => r.dst.network),
      ...plan.setNeighbours.map((n) => n.ip), ...plan.removeNeighbours.map((n) => n.ip),
    ]);
    const counts = countPlan(plan, this.neighbours);
    this.routes = peers.map((p) => ourRoute(p.subnet));
    this.neighbours = peers.map((p) => ({ ip: p.subnet.network, mac: p.vtepMac }));
    this.deliveries.offer({ at, cpu, peers, plan: counts, planMs, touched });
  }

  fatal(message: string): void {
    this.fatals.push(message);
  }
}

// ---------------------------------------------------------------------------------------------
// One repeat

interface Ctx {
  o: KubeScaleOptions;
  child: ApiChild;
  api: TappedApi;
  kernel: KernelDouble;
  source: KubernetesSource;
  macs: Set<number>;
}

function memoryNow(): Memory {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  gc?.();
  const m = process.memoryUsage();
  return { rssMiB: m.rss / MiB, heapUsedMiB: m.heapUsed / MiB };
}

async function until(cond: () => boolean, what: string, timeoutMs = WAIT_MS): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(1);
  }
}

/** The N Nodes into the double, a batch of IPC calls at a time (built as sent: this process keeps none). */
async function loadNodes(child: ApiChild, n: number, macs: Set<number>): Promise<number> {
  const t0 = performance.now();
  for (let from = 0; from < n; from += LOAD_BATCH) {
    const batch: Promise<unknown>[] = [];
    for (let i = from; i < Math.min(n, from + LOAD_BATCH); i++) batch.push(child.call("upsertNode", [meshNode(i, macs)]));
    await Promise.all(batch);
  }
  // The history of those writes is not a watch's business (etcd compacts it too).
  await child.call("compact");
  return performance.now() - t0;
}

function newSource(url: string, pki: TestPki, macs: Set<number>): { source: KubernetesSource; api: TappedApi } {
  const client = HttpsKubeApi.create({ server: url, ca: { kind: "pem", pem: pki.caPem }, auth: { kind: "token", token: TOKEN } });
  if (!client.ok) throw new Error(client.error);
  const api = new TappedApi(client.value);
  const selfMac = vtepMacFor(SELF);
  if (!macs.has(selfMac)) throw new Error("self's VTEP MAC is not the one loaded");
  const source = new KubernetesSource({
    nodeName: SELF, clusterCidr: CLUSTER_CIDR, endpoint: endpoint(underlayOf(0), selfMac), credentialsFrom: "the bench's token", podCidrs: [],
  }, {
    api, clock: systemClock, random: Math.random, log: pino({ level: "silent" }),
    memory: { read: () => undefined, write: () => undefined },
  });
  return { source, api };
}

/** start() → the first full peer set, ready, and the source's own patch (NetworkUnavailable=False) seen back on the watch. */
async function measureSync(ctx: Ctx): Promise<SyncResult> {
  const { source, kernel, api, o } = ctx;
  const peers = o.nodes - 1;
  const first = kernel.deliveries.next((d) => d.peers.length === peers, `the first peersChanged with ${peers} peers`);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await source.start(kernel);
  const d = await first;
  await until(() => source.ready || kernel.fatals.length > 0, "the source to be ready");
  const readyMs = performance.now() - t0;
  const cpuMs = cpuMsSince(cpu0);
  if (kernel.fatals.length > 0) throw new Error(`the source stopped: ${kernel.fatals.join("; ")}`);
  const k = (): NonNullable<ReturnType<KubernetesSource["status"]>["kubernetes"]> => {
    const s = source.status().kubernetes;
    if (s === undefined) throw new Error("no Kubernetes status");
    return s;
  };
  await until(() => {
    const c = k().counters;
    return c.patches.condition >= 1 && c.events.MODIFIED >= c.patches.annotations + c.patches.condition;
  }, "the NetworkUnavailable patch to come back on the watch");
  await sleep(SETTLE_MS);
  const counters = k().counters;
  const served = (await ctx.child.call("counts", [SA])) as KubeRequestCounts;
  return {
    listMs: (api.lastPageAt ?? NaN) - t0, firstPeersMs: d.at - t0, readyMs, cpuMs,
    pages: api.pages, lists: counters.lists, listRequests: served.lists, watches: counters.watches, peers: d.peers.length,
    firstPlan: d.plan, firstPlanMs: d.planMs,
  };
}

interface Prepared {
  target: string;
  /** The changed Node's podCIDR network: the only route and neighbour it may touch. */
  network: number;
  send(): Promise<unknown>;
  /** Whether a peer set shows the change (not used for heartbeats). */
  shows(peers: readonly Peer[]): boolean;
}

const peerNamed = (peers: readonly Peer[], name: string): Peer | undefined => peers.find((p) => p.name === name);

/** A spread of existing peers (1 … N−1) for the k-th change of a kind. */
const existingPeer = (ctx: Ctx, k: number, offset: number): number =>
  1 + ((Math.floor((k * (ctx.o.nodes - 1)) / ctx.o.changes) + offset) % (ctx.o.nodes - 1));

async function currentNode(ctx: Ctx, name: string): Promise<NodeJson> {
  const node = (await ctx.child.call("node", [name])) as NodeJson | null;
  if (node === null) throw new Error(`Node ${name} is not on the API double`);
  return node;
}

function annotationsOf(node: NodeJson): Record<string, string> {
  const meta = node["metadata"] as { annotations?: Record<string, string> };
  meta.annotations ??= {};
  return meta.annotations;
}

/** The k-th change of `kind`: the write to send and how to recognise its outcome; reads at the double happen here, untimed. */
async function prepare(kind: ChangeKind, ctx: Ctx, k: number, repeat: number): Promise<Prepared> {
  const upsert = (node: NodeJson) => (): Promise<unknown> => ctx.child.call("upsertNode", [node]);
  if (kind === "add" || kind === "delete") {
    const i = ctx.o.nodes + k;
    const name = nodeName(i);
    const base = { target: name, network: podCidr(i).network };
    if (kind === "delete") return { ...base, send: () => ctx.child.call("deleteNode", [name]), shows: (p) => peerNamed(p, name) === undefined };
    return { ...base, send: upsert(meshNode(i, ctx.macs)), shows: (p) => peerNamed(p, name) !== undefined };
  }
  const i = existingPeer(ctx, k, kind === "mac" ? 0 : kind === "underlay" ? 1 : 2);
  const name = nodeName(i);
  const node = await currentNode(ctx, name);
  const base = { target: name, network: podCidr(i).network };
  if (kind === "mac") {
    const mac = distinctMac(ctx.macs, `${name}/repeat-${repeat}/change-${k}`);
    annotationsOf(node)[ANNOTATIONS.vtepMac] = formatMac(mac);
    return { ...base, send: upsert(node), shows: (p) => peerNamed(p, name)?.vtepMac === mac };
  }
  if (kind === "underlay") {
    const ip = (CHANGED_UNDERLAY_BASE + 1 + k) as Ipv4;
    annotationsOf(node)[ANNOTATIONS.underlayIp] = formatIpv4(ip);
    return { ...base, send: upsert(node), shows: (p) => peerNamed(p, name)?.underlayIp === ip };
  }
  // kubelet's status update: every condition's lastHeartbeatTime moves, nothing else.
  const conditions = (node["status"] as { conditions: { lastHeartbeatTime?: string }[] }).conditions;
  const beat = new Date(Date.now() + (k + 1) * 10_000).toISOString().replace(/\.\d{3}Z$/, "Z");
  for (const c of conditions) c.lastHeartbeatTime = beat;
  return { ...base, send: upsert(node), shows: () => false };
}

/** One change: the write sent over IPC, then the moment the source delivered its outcome. */
async function measureOne(kind: ChangeKind, ctx: Ctx, k: number, repeat: number): Promise<ChangeSample> {
  const p = await prepare(kind, ctx, k, repeat);
  const what = `${kind} of ${p.target} to reach the data plane`;
  const seen: Promise<{ at: number; cpu: NodeJS.CpuUsage; delivery?: Delivery }> = kind === "heartbeat"
    ? ctx.api.events.next((e) => e.event.type === "MODIFIED" && nameOf(e.event.object) === p.target, `the heartbeat of ${p.target} on the watch`)
    : ctx.kernel.deliveries.next((d) => p.shows(d.peers), what).then((d) => ({ at: d.at, cpu: d.cpu, delivery: d }));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await p.send();
  const t1 = performance.now();
  const s = await seen;
  const d = s.delivery;
  const sample: ChangeSample = {
    target: p.target, latencyMs: s.at - t0, ipcAnsweredMs: t1 - t0, cpuMs: cpuMsSince(cpu0, s.cpu),
    plan: d?.plan ?? null, planMs: d?.planMs ?? null,
    onlyThatPeer: d === undefined || [...d.touched].every((n) => n === p.network),
  };
  await sleep(GAP_MS);
  return sample;
}

async function measureKind(kind: ChangeKind, ctx: Ctx, repeat: number): Promise<KindResult> {
  const calls0 = ctx.kernel.calls;
  const samples: ChangeSample[] = [];
  for (let k = 0; k < ctx.o.changes; k++) samples.push(await measureOne(kind, ctx, k, repeat));
  await sleep(SETTLE_MS);
  const peersChangedCalls = ctx.kernel.calls - calls0;
  const plans = tally(samples.map((s) => planLabel(s.plan)));
  const expectedPlan = planLabel(EXPECTED[kind]);
  const asExpected = peersChangedCalls === (kind === "heartbeat" ? 0 : ctx.o.changes) &&
    samples.every((s) => s.onlyThatPeer && planLabel(s.plan) === expectedPlan);
  return { samples, peersChangedCalls, plans, expectedPlan, asExpected };
}

function tally(labels: readonly string[]): { plan: string; times: number }[] {
  const m = new Map<string, number>();
  for (const l of labels) m.set(l, (m.get(l) ?? 0) + 1);
  return [...m].map(([plan, times]) => ({ plan, times }));
}

async function ipcRoundTrips(child: ApiChild, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await child.call("resourceVersion");
    out.push(performance.now() - t0);
    await sleep(GAP_MS);
  }
  return out;
}

async function runRepeat(o: KubeScaleOptions, pki: TestPki, repeat: number): Promise<RepeatResult> {
  const say = o.progress ?? (() => undefined);
  const macs = new Set<number>();
  const child = await ApiChild.start({
    host: "127.0.0.1", port: 0, pki: { caPem: pki.caPem, serverCertPem: pki.serverCertPem, serverKeyPem: pki.serverKeyPem },
    tokens: { [TOKEN]: { user: SA, allow: NEEDED } },
    // kube-apiserver sends a bookmark about once a minute; one a second would only add noise.
    bookmarkIntervalMs: 60_000,
  });
  let source: KubernetesSource | undefined;
  try {
    const beforeLoad = memoryNow();
    const loadMs = await loadNodes(child, o.nodes, macs);
    say(`repeat ${repeat}: ${o.nodes} Nodes loaded into the API double (pid ${child.pid}) in ${loadMs.toFixed(0)} ms`);
    const apiAfterLoad = child.memory();
    const before = memoryNow();
    const made = newSource(child.url, pki, macs);
    source = made.source;
    const ctx: Ctx = { o, child, api: made.api, kernel: new KernelDouble(), source, macs };
    const sync = await measureSync(ctx);
    const afterSync = memoryNow();
    const apiAfterSync = child.memory();
    say(`repeat ${repeat}: ready after ${sync.readyMs.toFixed(0)} ms; measuring ${o.changes} changes of each kind`);
    const ipcRoundTripMs = await ipcRoundTrips(child, o.changes);
    const changes = {} as Record<ChangeKind, KindResult>;
    for (const kind of CHANGE_KINDS) changes[kind] = await measureKind(kind, ctx, repeat);
    return {
      repeat, apiPid: child.pid, load: { nodes: o.nodes, ms: loadMs }, sync, ipcRoundTripMs,
      memory: {
        self: { beforeLoad, beforeSource: before, afterSync, delta: { rssMiB: afterSync.rssMiB - before.rssMiB, heapUsedMiB: afterSync.heapUsedMiB - before.heapUsedMiB } },
        api: { afterLoad: apiAfterLoad, afterSync: apiAfterSync },
      },
      changes,
    };
  } finally {
    await source?.stop().catch(() => undefined);
    await child.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The whole run, the table, the command line

function summarise(repeats: readonly RepeatResult[]): KubeScaleResult["summary"] {
  const over = (f: (r: RepeatResult) => number): Stats => stats(repeats.map(f));
  const changes = {} as KubeScaleResult["summary"]["changes"];
  for (const kind of CHANGE_KINDS) {
    const samples = repeats.flatMap((r) => r.changes[kind].samples);
    changes[kind] = {
      latencyMs: stats(samples.map((s) => s.latencyMs)), deliveredBeforeIpcAnswer: samples.filter((s) => s.latencyMs < s.ipcAnsweredMs).length,
      cpuMs: stats(samples.map((s) => s.cpuMs)), planMs: stats(samples.flatMap((s) => (s.planMs === null ? [] : [s.planMs]))),
      plans: tally(samples.map((s) => planLabel(s.plan))), asExpected: repeats.every((r) => r.changes[kind].asExpected),
    };
  }
  return {
    sync: { listMs: over((r) => r.sync.listMs), firstPeersMs: over((r) => r.sync.firstPeersMs), readyMs: over((r) => r.sync.readyMs), cpuMs: over((r) => r.sync.cpuMs) },
    memory: {
      selfRssDeltaMiB: over((r) => r.memory.self.delta.rssMiB), selfHeapDeltaMiB: over((r) => r.memory.self.delta.heapUsedMiB),
      selfRssAfterMiB: over((r) => r.memory.self.afterSync.rssMiB), selfHeapAfterMiB: over((r) => r.memory.self.afterSync.heapUsedMiB),
      apiRssAfterSyncMiB: over((r) => r.memory.api.afterSync.rssMiB),
    },
    ipcRoundTripMs: stats(repeats.flatMap((r) => r.ipcRoundTripMs)),
    changes,
  };
}

/** Runs every repeat (each with a fresh API double) and returns all figures; the child and the temporary files are gone after, also on failure. */
export async function runKubeScale(o: KubeScaleOptions): Promise<KubeScaleResult> {
  checkOptions(o);
  const workDir = mkdtempSync(join(tmpdir(), "vxmesh-kube-scale-"));
  try {
    const pki = makeTestPki(join(workDir, "pki"), { ips: ["127.0.0.1"] });
    const repeats: RepeatResult[] = [];
    for (let r = 1; r <= o.repeat; r++) repeats.push(await runRepeat(o, pki, r));
    return {
      options: { nodes: o.nodes, peers: o.nodes - 1, repeat: o.repeat, changes: o.changes, podCidrPrefix: POD_PREFIX, listPageSize: LIST_PAGE_SIZE },
      machine: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? "?", gcExposed: typeof (globalThis as { gc?: unknown }).gc === "function" },
      workDir, repeats, summary: summarise(repeats),
    };
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

function checkOptions(o: KubeScaleOptions): void {
  const whole = (n: number, min: number, what: string): void => {
    if (!Number.isInteger(n) || n < min) throw new Error(`--${what} ${n} is not valid: expected a whole number ≥ ${min}`);
  };
  whole(o.nodes, 2, "nodes");
  whole(o.repeat, 1, "repeat");
  whole(o.changes, 1, "changes");
  if (o.nodes + o.changes > MAX_SUBNETS) {
    throw new Error(`--nodes ${o.nodes} with --changes ${o.changes} needs ${o.nodes + o.changes} /${POD_PREFIX}s of 10.244.0.0/16, which has ${MAX_SUBNETS}`);
  }
  if (o.changes > o.nodes - 1) throw new Error(`--changes ${o.changes} is more than the ${o.nodes - 1} peers to change`);
}

const f = (v: number | null, digits = 1): string => (v === null || !Number.isFinite(v) ? "-" : v.toFixed(digits));
const medP90 = (s: Stats, digits = 2): string => `${f(s.median, digits)} / ${f(s.p90, digits)}`;

function syncLines(r: KubeScaleResult): string[] {
  const reps = r.repeats;
  const row = (label: string, cell: (x: RepeatResult) => string): string => `  ${label.padEnd(44)}${reps.map((x) => cell(x).padStart(14)).join("")}`;
  const plan = reps[0]?.sync.firstPlan ?? null;
  return [
    `initial sync${" ".repeat(34)}${reps.map((x) => `repeat ${x.repeat}`.padStart(14)).join("")}`,
    row("start → last list page (ms)", (x) => f(x.sync.listMs, 0)),
    row(`start → first peersChanged, ${r.options.peers} peers (ms)`, (x) => f(x.sync.firstPeersMs, 0)),
    row("start → ready (ms)", (x) => f(x.sync.readyMs, 0)),
    row("CPU time start → ready, with diffPeers (ms)", (x) => f(x.sync.cpuMs, 0)),
    row(`list pages (limit ${r.options.listPageSize}) / complete lists`, (x) => `${x.sync.pages} / ${x.sync.lists}`),
    row("diffPeers for the first set (ms)", (x) => f(x.sync.firstPlanMs, 1)),
    `  kernel plan of the first set: ${planLabel(plan)}`,
    "memory (MiB; gc before each reading: " + (r.machine.gcExposed ? "yes" : "no, run with --expose-gc") + "; this process also holds the in-memory kernel's routes and neighbours)",
    row("this process RSS before loading the Nodes", (x) => f(x.memory.self.beforeLoad.rssMiB, 0)),
    row("this process RSS before source → after sync", (x) => `${f(x.memory.self.beforeSource.rssMiB, 0)} → ${f(x.memory.self.afterSync.rssMiB, 0)}`),
    row("  Δ RSS", (x) => f(x.memory.self.delta.rssMiB, 1)),
    row("this process heapUsed before → after sync", (x) => `${f(x.memory.self.beforeSource.heapUsedMiB, 0)} → ${f(x.memory.self.afterSync.heapUsedMiB, 0)}`),
    row("  Δ heapUsed", (x) => f(x.memory.self.delta.heapUsedMiB, 1)),
    row("API double (child) RSS after load → after sync", (x) => `${f(x.memory.api.afterLoad.rssMiB, 0)} → ${f(x.memory.api.afterSync.rssMiB, 0)}`),
  ];
}

function changeLines(r: KubeScaleResult): string[] {
  const n = r.options.repeat * r.options.changes;
  const lines = [
    `one Node's change: ${n} of each kind (${r.options.repeat} × ${r.options.changes}); median / p90`,
    `  ${"kind".padEnd(10)}${"latency ms".padStart(16)}${"CPU ms".padStart(16)}${"diffPeers ms".padStart(16)}${"before IPC answer".padStart(19)}  kernel plan (× times)`,
  ];
  for (const kind of CHANGE_KINDS) {
    const c = r.summary.changes[kind];
    const plans = c.plans.map((p) => `${p.plan} ×${p.times}`).join("; ");
    lines.push(`  ${kind.padEnd(10)}${medP90(c.latencyMs).padStart(16)}${medP90(c.cpuMs).padStart(16)}` +
      `${(c.planMs.n === 0 ? "-" : medP90(c.planMs)).padStart(16)}${`${c.deliveredBeforeIpcAnswer}/${c.latencyMs.n}`.padStart(19)}  ${plans}` +
      `${c.asExpected ? "" : "  ← NOT AS EXPECTED"}`);
  }
  lines.push(
    "  latency: the write sent to the double over IPC → peersChanged called with the new set (heartbeat: the watch event handled);",
    `  it includes the IPC call's way there (a no-op IPC round trip: ${medP90(r.summary.ipcRoundTripMs)} ms). before IPC answer: how often`,
    "  the new set arrived before the write's IPC answer was handled here. CPU: this process's, send → delivered, without diffPeers",
    "  (the in-memory data plane's plan against the previous set). A heartbeat must cause no peersChanged.",
  );
  return lines;
}

export function renderTable(r: KubeScaleResult): string {
  return [
    `Kubernetes source at scale: ${r.options.nodes} Nodes (${r.options.peers} peers, /${r.options.podCidrPrefix} pod CIDRs), ${r.options.repeat} repeat(s)`,
    `node ${r.machine.node}, ${r.machine.cpus} × ${r.machine.cpuModel}; the API double in a child process on 127.0.0.1 (TLS, token)`,
    "",
    ...syncLines(r),
    "",
    ...changeLines(r),
  ].join("\n");
}

function flag(argv: readonly string[], name: string, fallback: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : fallback;
}

export function parseArgs(argv: readonly string[]): KubeScaleOptions & { json: string } {
  const known = new Set(["--nodes", "--repeat", "--changes", "--json"]);
  for (let i = 0; i < argv.length; i += 2) {
    if (!known.has(argv[i] ?? "")) throw new Error(`unknown argument "${argv[i]}": usage: kube-scale.js [--nodes 5000] [--repeat 3] [--changes 20] [--json FILE]`);
  }
  const o = { nodes: Number(flag(argv, "nodes", "5000")), repeat: Number(flag(argv, "repeat", "3")), changes: Number(flag(argv, "changes", "20")), json: flag(argv, "json", "") };
  checkOptions(o);
  return o;
}

async function main(argv: readonly string[]): Promise<void> {
  const o = parseArgs(argv);
  const result = await runKubeScale({ ...o, progress: (line) => console.error(line) });
  console.log(renderTable(result));
  if (o.json !== "") writeFileSync(o.json, JSON.stringify(result, null, 2) + "\n");
  const wrong = CHANGE_KINDS.filter((k) => !result.summary.changes[k].asExpected);
  if (wrong.length > 0) {
    console.error(`kernel plans not as expected for: ${wrong.join(", ")}`);
    process.exitCode = 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    console.error(err instanceof Error ? err.stack ?? err.message : String(err));
    process.exitCode = 1;
  });
}
