// The soak (issue 6): real gossip daemons in the network-namespace lab, underlay loss and jitter,
// continuous probes and checked byte streams between pods on different nodes, and one daemon
// killed with SIGKILL and restarted every interval, round-robin. Measures false deaths, the
// time for traffic to return after each restart, bytes lost or corrupted, and daemon RSS.
//
//   runSoak(options, progress) → SoakReport      (the test and the CLI both use it)
//   node dist/bench/soak.js [flags]               (`npm run soak`; --help for the flags)
//
// Set-up. Every node joins through all the others (--join lists them), so no node is special
// and the round-robin kills the first node too: a restarted node rejoins through whoever is up.
// Underlay faults: this kernel has no netem, so each node's underlay egress is queued
// (iptables NFQUEUE) to bench/soak-faults.py, which drops and delays datagrams itself; every
// datagram between two nodes crosses exactly one such queue, in either direction, so the
// configured loss and delay are per node-to-node path. Each pod runs bench/soak-pod.ts: UDP
// probes to every other pod, and one checked TCP stream to the next node's pod (a ring).
//
// A false death: a daemon declaring a member dead (or left), or losing its route to it, while
// that member was not between its kill and its recovery. Recovery of a restart: traffic to and
// from its pod returned, every daemon lists every other as alive with a peer entry, and every
// stream verified new bytes, all after the restart began.

import type { ChildProcess } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { parseVmRssKb } from "./bench";
import { distPath, packageRoot } from "../encap/artefacts";
import { Cluster, type DaemonOptions, type DaemonProcess } from "./cluster";
import { Lab, type LabNode, type LabPod } from "./lab";
import { SOAK_DEFAULTS, SOAK_USAGE, parseSoakArgs } from "./soak-options";
import { nowMs, type PodStats, type SoakPodConfig } from "./soak-pod";
import { streamKey } from "./soak-pattern";
import {
  renderMarkdown,
  verdict,
  type DeathEvent,
  type FaultReport,
  type RestartRecord,
  type RssReport,
  type SoakOptions,
  type SoakReport,
  type StreamReport,
} from "./soak-report";

export type { SoakOptions, SoakReport } from "./soak-report";
export { SOAK_DEFAULTS } from "./soak-options";

/** Receives one human-readable line at a time while the soak runs. */
export type SoakProgress = (line: string) => void;

const STREAM_PORT = 7100;
const PROBE_PORT = 7200;
const STATUS_EVERY_MS = 500;
const ROUTES_EVERY_MS = 2000;
const RSS_EVERY_MS = 2000;
const SUMMARY_EVERY_MS = 30_000;
const POD_STATS_MS = 250;
const VXMESH_ROUTE_PROTO = "118";
const CLAIM_WAIT_S = 2;
/** Two reports of one death (log and status, say) closer than this are one event. */
const SAME_EVENT_MS = 10_000;

interface MemberStatus {
  name: string;
  state: string;
}

interface DaemonProc {
  node: LabNode;
  daemon: DaemonProcess;
  pid: number;
  startedAt: number;
  ready: boolean;
  rssFirst: number | null;
  rssLast: number | null;
  rssMax: number | null;
  rssSamples: number;
}

interface PodProc {
  pod: LabPod;
  index: number;
  child: ChildProcess;
  ready: boolean;
  last: PodStats | undefined;
  drained: PodStats | undefined;
  final: PodStats | undefined;
  exited: Promise<void>;
}

interface Injector {
  node: LabNode;
  child: ChildProcess;
  ready: boolean;
  final: FaultLine | undefined;
  last: FaultLine | undefined;
  exited: Promise<void>;
}

interface FaultLine {
  e: string;
  seen: number;
  dropped: number;
  meanDelayMs: number;
  maxDelayMs: number;
}

interface RawEvent {
  observer: string;
  member: string;
  at: number;
  source: DeathEvent["source"];
  state: string;
}

interface Restart {
  index: number;
  node: LabNode;
  x: number;
  tKill: number;
  tExited: number;
  tRestart: number;
  tAnswered: number | undefined;
  pairReturn: Map<string, number>;
  pairsNeeded: number;
  trafficAt: number | undefined;
  convergedAt: number | undefined;
  streamBase: Map<number, number>;
  streamProgress: Map<number, number>;
  recoveredAt: number | undefined;
  error: string | undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolvePromise, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    p.then((v) => { clearTimeout(t); resolvePromise(v); }, (e: unknown) => { clearTimeout(t); reject(e instanceof Error ? e : new Error(String(e))); });
  });
}

function exitedPromise(child: ChildProcess): Promise<void> {
  return new Promise((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r();
    else child.once("exit", () => r());
  });
}

function lines(child: ChildProcess, onLine: (line: string) => void): void {
  if (child.stdout === null) return;
  createInterface({ input: child.stdout }).on("line", onLine);
}

function parseJson(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith("{")) return undefined;
  try {
    const v: unknown = JSON.parse(line);
    return typeof v === "object" && v !== null ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function readRssKb(pid: number): number | null {
  try {
    return parseVmRssKb(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return null;
  }
}

function clock(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function secs(ms: number | undefined): string {
  return ms === undefined ? "—" : `${(ms / 1000).toFixed(2)} s`;
}

function validate(o: SoakOptions): void {
  const bad = (what: string, v: number, valid: string): never => {
    throw new Error(`soak option ${what} ${v} is not valid: expected ${valid}`);
  };
  if (!Number.isInteger(o.nodes) || o.nodes < 2 || o.nodes > 32) bad("nodes", o.nodes, "an integer from 2 to 32");
  if (!(o.intervalMs >= 1000)) bad("intervalMs", o.intervalMs, "at least 1000");
  if (!(o.durationMs >= o.intervalMs)) bad("durationMs", o.durationMs, `at least intervalMs (${o.intervalMs})`);
  if (!(o.loss >= 0 && o.loss <= 0.5)) bad("loss", o.loss, "a fraction from 0 to 0.5");
  if (!(o.delayMs >= 0 && o.jitterMs >= 0)) bad("delayMs/jitterMs", Math.min(o.delayMs, o.jitterMs), "0 or more");
  if (!(o.streamRateBytesPerS >= 0)) bad("streamRateBytesPerS", o.streamRateBytesPerS, "0 or more");
}

// ---------------------------------------------------------------------------------------------

class SoakRun {
  private lab: Lab | undefined;
  private cluster: Cluster | undefined;
  private nodes: LabNode[] = [];
  private readonly procs: DaemonProc[] = [];
  private readonly current = new Map<string, DaemonProc>();
  private pods: PodProc[] = [];
  private injectors: Injector[] = [];
  private readonly restarts: Restart[] = [];
  private readonly events: RawEvent[] = [];
  private readonly memberState = new Map<string, string>();
  private readonly routeState = new Map<string, boolean>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly warnings: string[] = [];
  private readonly daemonProblems = new Map<string, number>();
  private fatal: string | undefined;
  private stopping = false;
  private t0 = 0;
  private tFaults = Infinity;
  private polling = { status: false, routes: false };
  private readonly startedWall = Date.now();
  private readonly loadStart = loadavg();

  constructor(private readonly o: SoakOptions, private readonly progress: SoakProgress) {}

  private say(line: string): void {
    const at = this.t0 === 0 ? "setup" : clock(nowMs() - this.t0);
    this.progress(`[soak ${at}] ${line}`);
  }

  async run(): Promise<SoakReport> {
    try {
      await this.setUp();
      await this.soak();
      return await this.finish();
    } finally {
      await this.tearDown();
    }
  }

  // -------------------------------------------------------------------------------- set-up

  private async setUp(): Promise<void> {
    const o = this.o;
    const t = nowMs();
    this.lab = await Lab.build({ nodes: Array.from({ length: o.nodes }, () => ({ pods: 1 })) });
    this.cluster = new Cluster(this.lab);
    this.nodes = [...this.lab.nodes];
    this.say(`lab of ${o.nodes} nodes built in ${secs(nowMs() - t)}`);

    const [first, ...rest] = this.nodes as [LabNode, ...LabNode[]];
    await this.startDaemon(first);
    await Promise.all(rest.map((n) => this.startDaemon(n)));
    this.timers.push(setInterval(() => void this.pollStatus(), STATUS_EVERY_MS));
    this.timers.push(setInterval(() => void this.pollRoutes(), ROUTES_EVERY_MS));
    this.timers.push(setInterval(() => this.sampleRss(), RSS_EVERY_MS));
    await this.waitFor(() => this.converged, 60_000, "the daemons to converge");
    this.say(`${o.nodes} daemons converged ${secs(nowMs() - t)} after the start`);

    await Promise.all(this.nodes.map((n) => this.startFaults(n)));
    this.tFaults = nowMs();
    this.say(`underlay faults on: ${(o.loss * 100).toFixed(1)} % loss, ${o.delayMs} ms ± ${o.jitterMs} ms per node-to-node path`);

    this.pods = this.nodes.map((n, i) => this.startPod(n, i));
    await this.waitFor(() => this.pods.every((p) => p.ready), 30_000, "the pod programs to start");
    // Baseline: every pair answers and every stream moves, under the faults, before any kill.
    const seen = new Set<string>();
    const want = o.nodes * (o.nodes - 1);
    this.onReply = (a, b) => seen.add(`${a}>${b}`);
    await this.waitFor(() => seen.size === want && this.pods.every((p) => (p.last?.server?.verified ?? 0) > 0), 60_000,
      "every probe pair to answer and every stream to carry bytes");
    this.onReply = undefined;
    this.t0 = nowMs();
    this.timers.push(setInterval(() => this.summary(), SUMMARY_EVERY_MS));
    this.say(`traffic flowing on all ${want} probe pairs and ${o.nodes} streams; soak clock starts`);
  }

  private onReply: ((a: number, b: number) => void) | undefined;

  private startOptions(): DaemonOptions {
    return { gossip: { seeds: this.nodes, keyFile: (this.cluster as Cluster).keyFile(), claimWaitS: CLAIM_WAIT_S }, readyTimeoutMs: 30_000 };
  }

  private async startDaemon(node: LabNode): Promise<void> {
    const cluster = this.cluster as Cluster;
    const started = cluster.start(node, this.startOptions());
    const daemon = cluster.daemon(node.name); // registered synchronously by start()
    const proc: DaemonProc = {
      node, daemon, pid: daemon.child.pid ?? -1, startedAt: nowMs(), ready: false,
      rssFirst: null, rssLast: null, rssMax: null, rssSamples: 0,
    };
    this.procs.push(proc);
    this.current.set(node.name, proc);
    lines(daemon.child, (line) => this.onDaemonLine(proc, line));
    await started;
  }

  private onDaemonLine(proc: DaemonProc, line: string): void {
    const rec = parseJson(line);
    if (rec === undefined) return;
    const msg = typeof rec["msg"] === "string" ? rec["msg"] : "";
    const m = /^member (\S+) (failed|left)$/.exec(msg);
    if (m !== null) {
      const at = typeof rec["time"] === "number" ? rec["time"] : nowMs();
      this.events.push({ observer: proc.node.name, member: m[1] as string, at, source: "log", state: m[2] === "left" ? "left" : "dead" });
    }
    if (typeof rec["level"] === "number" && rec["level"] >= 40) {
      const key = `${proc.node.name}: ${msg.replace(/192\.0\.2\.\d+:\d+/g, "<addr>")}`;
      this.daemonProblems.set(key, (this.daemonProblems.get(key) ?? 0) + 1);
    }
  }

  private async startFaults(node: LabNode): Promise<void> {
    const lab = this.lab as Lab;
    const o = this.o;
    const script = join(packageRoot(), "bench", "soak-faults.py");
    // Niced above the rest: the underlay models a network, which a busy CPU should not slow down.
    const child = lab.spawn(node, ["nice", "-n", "-10", "python3", script, "0", String(o.loss), String(o.delayMs), String(o.jitterMs), `${o.seed}:${node.name}`]);
    const inj: Injector = { node, child, ready: false, final: undefined, last: undefined, exited: exitedPromise(child) };
    let stderr = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (c: string) => { stderr += c; });
    lines(child, (line) => {
      const rec = parseJson(line);
      if (rec === undefined) return;
      if (rec["e"] === "ready") inj.ready = true;
      else if (rec["e"] === "stats") inj.last = rec as unknown as FaultLine;
      else if (rec["e"] === "final") inj.final = rec as unknown as FaultLine;
    });
    void inj.exited.then(() => {
      if (!this.stopping) this.abort(`the fault injector on ${node.name} exited (${String(child.exitCode ?? child.signalCode)}): ${stderr.trim()}`);
    });
    this.injectors.push(inj);
    await this.waitFor(() => inj.ready || child.exitCode !== null, 15_000, `the fault injector on ${node.name} to bind its queue`);
    if (!inj.ready) throw new Error(`the fault injector on ${node.name} did not start: ${stderr.trim()}`);
    const r = await lab.exec(node, ["iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", node.underlayIf, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]);
    if (r.code !== 0) throw new Error(`iptables NFQUEUE rule on ${node.name}: ${r.stderr.trim()}`);
  }

  private startPod(node: LabNode, i: number): PodProc {
    const lab = this.lab as Lab;
    const o = this.o;
    const n = this.nodes.length;
    const pod = node.pods[0] as LabPod;
    const next = (this.nodes[(i + 1) % n] as LabNode).pods[0] as LabPod;
    const cfg: SoakPodConfig = {
      index: i,
      probe: { port: PROBE_PORT, intervalMs: o.probeIntervalMs, peers: this.nodes.flatMap((m, j) => (j === i ? [] : [{ index: j, ip: (m.pods[0] as LabPod).ip }])) },
      // Stream i: from pod i to pod i+1; so pod i serves stream i−1.
      server: { port: STREAM_PORT, streamId: (i + n - 1) % n, key: streamKey(o.seed, (i + n - 1) % n) },
      client: { host: next.ip, port: STREAM_PORT, streamId: i, key: streamKey(o.seed, i), rateBytesPerS: o.streamRateBytesPerS, stallMs: o.stallMs },
      statsMs: POD_STATS_MS,
    };
    const script = distPath("bench", "soak-pod.js");
    if (!existsSync(script)) throw new Error(`${script} is missing: run \`npm run build\``);
    const child = lab.spawn(pod, [process.execPath, script, JSON.stringify(cfg)], { stdio: ["pipe", "pipe", "pipe"] });
    const p: PodProc = { pod, index: i, child, ready: false, last: undefined, drained: undefined, final: undefined, exited: exitedPromise(child) };
    let stderr = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (c: string) => { stderr += c; });
    lines(child, (line) => this.onPodLine(p, line));
    void p.exited.then(() => {
      if (!this.stopping) this.abort(`the pod program in ${pod.name} exited (${String(child.exitCode ?? child.signalCode)}): ${stderr.trim()}`);
    });
    return p;
  }

  private onPodLine(p: PodProc, line: string): void {
    const rec = parseJson(line);
    if (rec === undefined) return;
    const e = rec["e"];
    if (e === "r") {
      const b = rec["p"] as number;
      const sent = rec["s"] as number;
      const got = rec["t"] as number;
      this.onReply?.(p.index, b);
      for (const r of this.restarts) {
        if (r.trafficAt !== undefined || (p.index !== r.x && b !== r.x) || sent < r.tRestart) continue;
        const key = `${p.index}>${b}`;
        if (!r.pairReturn.has(key)) r.pairReturn.set(key, got);
        if (r.pairReturn.size === r.pairsNeeded) {
          r.trafficAt = Math.max(...r.pairReturn.values());
          this.say(`${r.node.name}: traffic to and from its pod back ${secs(r.trafficAt - r.tRestart)} after the restart began (${secs(r.trafficAt - r.tKill)} after the kill)`);
          this.checkRecovered(r);
        }
      }
    } else if (e === "s" || e === "drained" || e === "final") {
      const s = rec as unknown as PodStats;
      if (e === "s") p.last = s;
      if (e === "drained") p.drained = s;
      if (e === "final") p.final = s;
      const srv = s.server;
      if (srv === undefined) return;
      for (const r of this.restarts) {
        if (r.streamProgress.has(srv.streamId) || s.t < r.tRestart) continue;
        const base = r.streamBase.get(srv.streamId);
        if (base === undefined) r.streamBase.set(srv.streamId, srv.verified);
        else if (srv.verified > base) {
          r.streamProgress.set(srv.streamId, s.t);
          this.checkRecovered(r);
        }
      }
    } else if (e === "ready") {
      p.ready = true;
    }
  }

  // -------------------------------------------------------------------------------- monitors

  private converged = false;

  private async pollStatus(): Promise<void> {
    if (this.polling.status) return;
    this.polling.status = true;
    try {
      const procs = [...this.current.values()];
      const results = await Promise.all(procs.map((p) => (p.daemon.running ? p.daemon.status().catch(() => undefined) : Promise.resolve(undefined))));
      const t = nowMs();
      let converged = true;
      for (const [i, p] of procs.entries()) {
        const s = results[i];
        if (s === undefined) {
          converged = false;
          continue;
        }
        if (s.ready) p.ready = true;
        const members = ((s.gossip as { members?: MemberStatus[] } | undefined)?.members ?? []);
        for (const other of this.nodes) {
          if (other.name === p.node.name) continue;
          const m = members.find((x) => x.name === other.name);
          const state = m?.state ?? "missing";
          const key = `${p.pid}:${other.name}`;
          const prev = this.memberState.get(key);
          if ((state === "dead" || state === "left") && prev !== "dead" && prev !== "left") {
            this.events.push({ observer: p.node.name, member: other.name, at: t, source: "status", state });
          }
          this.memberState.set(key, state);
          if (state !== "alive" || !s.peers.some((x) => x.name === other.name)) converged = false;
        }
        if (!s.ready) converged = false;
      }
      this.converged = converged;
      if (converged) {
        for (const r of this.restarts) {
          if (r.convergedAt === undefined && r.tAnswered !== undefined && t > r.tRestart) {
            r.convergedAt = t;
            this.checkRecovered(r);
          }
        }
      }
    } finally {
      this.polling.status = false;
    }
  }

  private async pollRoutes(): Promise<void> {
    if (this.polling.routes || this.lab === undefined) return;
    this.polling.routes = true;
    try {
      const lab = this.lab;
      const procs = [...this.current.values()].filter((p) => p.ready && p.daemon.running);
      await Promise.all(procs.map(async (p) => {
        const r = await lab.exec(p.node, ["ip", "-4", "-j", "route", "show", "proto", VXMESH_ROUTE_PROTO], { timeoutMs: 10_000 });
        if (r.code !== 0 || !p.daemon.running) return;
        const t = nowMs();
        const text = r.stdout.trim();
        const dsts = new Set(text === "" ? [] : (JSON.parse(text) as { dst: string }[]).map((e) => e.dst));
        for (const other of this.nodes) {
          if (other.name === p.node.name) continue;
          const have = dsts.has(other.subnet);
          const key = `${p.pid}:${other.name}`;
          if (this.routeState.get(key) === true && !have) {
            this.events.push({ observer: p.node.name, member: other.name, at: t, source: "route", state: "route removed" });
          }
          this.routeState.set(key, have);
        }
      }));
    } catch (err) {
      this.warnings.push(`route poll: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      this.polling.routes = false;
    }
  }

  private sampleRss(): void {
    for (const p of this.current.values()) {
      if (!p.ready || !p.daemon.running) continue;
      const kb = readRssKb(p.pid);
      if (kb === null) continue;
      p.rssFirst ??= kb;
      p.rssLast = kb;
      p.rssMax = Math.max(p.rssMax ?? 0, kb);
      p.rssSamples++;
    }
  }

  private checkRecovered(r: Restart): void {
    if (r.recoveredAt !== undefined || r.trafficAt === undefined || r.convergedAt === undefined) return;
    if (r.streamProgress.size < this.nodes.length) return;
    r.recoveredAt = Math.max(r.trafficAt, r.convergedAt, ...r.streamProgress.values());
    this.say(`${r.node.name}: recovered ${secs(r.recoveredAt - r.tRestart)} after the restart began (converged ${secs(r.convergedAt - r.tRestart)}, streams ${[...r.streamProgress].sort((a, b) => a[0] - b[0]).map(([id, at]) => `s${id} ${secs(at - r.tRestart)}`).join(", ")})`);
  }

  private summary(): void {
    const bytes = this.pods.reduce((a, p) => a + (p.last?.server?.verified ?? 0), 0);
    const corrupted = this.pods.reduce((a, p) => a + (p.last?.server?.corrupted ?? 0), 0);
    const gaps = this.pods.reduce((a, p) => a + (p.last?.server?.gapBytes ?? 0), 0);
    const probes = this.pods.flatMap((p) => Object.values(p.last?.probes ?? {}));
    const sent = probes.reduce((a, x) => a + x.sent, 0);
    const got = probes.reduce((a, x) => a + x.received, 0);
    const falseSoFar = this.classify().falseDeaths.length;
    this.say(`streams ${(bytes / 2 ** 20).toFixed(1)} MiB verified, ${corrupted} corrupted, ${gaps} lost; probes ${sent === 0 ? "—" : ((100 * got) / sent).toFixed(1)} % answered; ` +
      `false deaths ${falseSoFar}; restarts ${this.restarts.length}; load ${loadavg().map((x) => x.toFixed(2)).join("/")}`);
  }

  private abort(why: string): void {
    if (this.fatal !== undefined) return;
    this.fatal = why;
    this.say(`aborting: ${why}`);
  }

  private async waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const end = nowMs() + timeoutMs;
    while (!cond()) {
      if (this.fatal !== undefined) throw new Error(this.fatal);
      if (nowMs() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
      await sleep(50);
    }
  }

  // -------------------------------------------------------------------------------- the soak

  private async soak(): Promise<void> {
    const o = this.o;
    const kills = Math.floor(o.durationMs / o.intervalMs);
    for (let k = 1; k <= kills && this.fatal === undefined; k++) {
      const at = this.t0 + k * o.intervalMs;
      while (nowMs() < at && this.fatal === undefined) await sleep(Math.min(200, at - nowMs()));
      if (this.fatal !== undefined) break;
      await this.killAndRestart(k, kills, this.nodes[(k - 1) % this.nodes.length] as LabNode);
    }
    // The last restart (and any still out) gets the recovery deadline to come back.
    const last = this.restarts[this.restarts.length - 1];
    const until = Math.max(nowMs(), (last?.tRestart ?? 0) + o.recoveryTimeoutMs);
    while (this.fatal === undefined && nowMs() < until && this.restarts.some((r) => r.recoveredAt === undefined && r.error === undefined)) await sleep(200);
  }

  private async killAndRestart(k: number, of: number, node: LabNode): Promise<void> {
    const proc = this.current.get(node.name);
    const x = this.nodes.indexOf(node);
    const r: Restart = {
      index: k, node, x, tKill: nowMs(), tExited: nowMs(), tRestart: nowMs(), tAnswered: undefined,
      pairReturn: new Map(), pairsNeeded: 2 * (this.nodes.length - 1), trafficAt: undefined, convergedAt: undefined,
      streamBase: new Map(), streamProgress: new Map(), recoveredAt: undefined, error: undefined,
    };
    this.say(`kill -9 ${node.name} (restart ${k} of ${of})`);
    if (proc !== undefined && proc.daemon.running) {
      r.tKill = nowMs();
      proc.daemon.child.kill("SIGKILL");
      await withDeadline(proc.daemon.exited, 10_000, `the killed daemon on ${node.name} to exit`);
    }
    r.tExited = nowMs();
    r.tRestart = nowMs();
    this.restarts.push(r);
    try {
      await this.startDaemon(node);
      r.tAnswered = nowMs();
      this.say(`${node.name} restarted: control socket answers ${secs(r.tAnswered - r.tRestart)} after the restart began`);
    } catch (err) {
      r.error = `restart failed: ${err instanceof Error ? err.message.split("\n")[0] ?? "" : String(err)}`;
      this.say(`${node.name}: ${r.error}`);
    }
  }

  // -------------------------------------------------------------------------------- the end

  /** Deaths split into those of a node between its kill and its recovery, and false ones. */
  private classify(): { falseDeaths: DeathEvent[]; excused: RawEvent[] } {
    const falseDeaths: DeathEvent[] = [];
    const excused: RawEvent[] = [];
    const kept: RawEvent[] = [];
    for (const ev of [...this.events].sort((a, b) => a.at - b.at)) {
      if (ev.at < this.tFaults) continue;
      const victim = this.restarts.some((r) => r.node.name === ev.member && ev.at >= r.tKill && ev.at <= (r.recoveredAt ?? Infinity));
      // A node's own routes are rebuilt after its restart: not a removal.
      const observerRestarting = ev.source === "route" && this.restarts.some((r) => r.node.name === ev.observer && ev.at >= r.tKill && ev.at <= (r.recoveredAt ?? Infinity));
      if (victim || observerRestarting) {
        excused.push(ev);
        continue;
      }
      if (kept.some((k) => k.observer === ev.observer && k.member === ev.member && Math.abs(k.at - ev.at) < SAME_EVENT_MS)) continue;
      kept.push(ev);
      falseDeaths.push({ observer: ev.observer, member: ev.member, atS: (ev.at - this.t0) / 1000, source: ev.source, state: ev.state });
    }
    return { falseDeaths, excused };
  }

  private async finish(): Promise<SoakReport> {
    const o = this.o;
    const tEnd = nowMs();
    this.sampleRss();
    // Drain the streams: no new bytes, everything sent must be verified.
    for (const p of this.pods) p.child.stdin?.write("drain\n");
    try {
      await this.waitFor(() => this.pods.every((p) => p.drained !== undefined), 60_000, "the streams to drain");
    } catch (err) {
      this.warnings.push(err instanceof Error ? err.message : String(err));
    }
    this.sampleRss();
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    for (const p of this.pods) p.child.stdin?.write("exit\n");
    await Promise.all(this.pods.map((p) => withDeadline(p.exited, 10_000, `${p.pod.name}'s program to exit`).catch((e: unknown) => { this.warnings.push(String(e)); })));
    const faults = await this.stopFaults();

    const { falseDeaths, excused } = this.classify();
    const restarts: RestartRecord[] = this.restarts.map((r) => ({
      index: r.index,
      node: r.node.name,
      killAtS: (r.tKill - this.t0) / 1000,
      exitMs: r.tExited - r.tKill,
      controlSocketMs: r.tAnswered === undefined ? -1 : r.tAnswered - r.tRestart,
      trafficReturnMs: r.trafficAt === undefined ? null : r.trafficAt - r.tRestart,
      killToTrafficMs: r.trafficAt === undefined ? null : r.trafficAt - r.tKill,
      convergedMs: r.convergedAt === undefined ? null : r.convergedAt - r.tRestart,
      streamProgressMs: Object.fromEntries(this.nodes.map((_, id) => {
        const at = r.streamProgress.get(id);
        return [String(id), at === undefined ? null : at - r.tRestart];
      })),
      declaredDeadBy: [...new Set(excused.filter((e) => e.member === r.node.name && e.source !== "route" && e.at >= r.tKill && e.at <= (r.recoveredAt ?? Infinity)).map((e) => e.observer))].sort(),
      recoveredMs: r.recoveredAt === undefined ? null : r.recoveredAt - r.tRestart,
      ...(r.error === undefined ? {} : { error: r.error }),
    }));

    const n = this.nodes.length;
    const streams: StreamReport[] = this.nodes.map((node, id) => {
      const clientPod = this.pods[id] as PodProc;
      const serverPod = this.pods[(id + 1) % n] as PodProc;
      const srv = (serverPod.final ?? serverPod.drained ?? serverPod.last)?.server;
      const cli = (clientPod.final ?? clientPod.drained ?? clientPod.last)?.client;
      const verified = srv?.verified ?? 0;
      const unverified = Math.max(0, (cli?.maxWritten ?? 0) - verified);
      const gaps = srv?.gapBytes ?? 0;
      return {
        id, from: clientPod.pod.name, to: serverPod.pod.name,
        verifiedBytes: verified, corruptedBytes: srv?.corrupted ?? 0, lostBytes: gaps + unverified, gapBytes: gaps,
        unverifiedAtEndBytes: unverified, resentBytes: srv?.resentBytes ?? 0, connections: srv?.connections ?? 0,
        reconnects: cli?.reconnects ?? 0, stalls: cli?.stalls ?? 0, firstCorruptionAt: srv?.firstCorruptionAt ?? null,
        drained: clientPod.drained !== undefined,
      };
    });
    const probeCounts = this.pods.flatMap((p) => Object.values((p.final ?? p.last)?.probes ?? {}));
    const rss: RssReport[] = this.nodes.map((node) => ({
      node: node.name,
      processes: this.procs.filter((p) => p.node === node).map((p) => ({
        pid: p.pid, startedAtS: (p.startedAt - this.t0) / 1000, firstKb: p.rssFirst, lastKb: p.rssLast, maxKb: p.rssMax, samples: p.rssSamples,
      })),
    }));
    const warnings = [...this.warnings];
    const problems = [...this.daemonProblems].sort((a, b) => b[1] - a[1]);
    if (problems.length > 0) warnings.push(`daemons logged warnings/errors: ${problems.slice(0, 12).map(([k, v]) => `${k} ×${v}`).join("; ")}`);
    return {
      options: o,
      startedAt: new Date(this.startedWall).toISOString(),
      soakS: (tEnd - this.t0) / 1000,
      wallS: 0, // set by runSoak after the teardown
      environment: {
        labPrefix: (this.lab as Lab).prefix, cpus: cpus().length, loadAvgStart: this.loadStart, loadAvgEnd: loadavg(), kernel: release(),
        faultMechanism: "NFQUEUE on each node's underlay egress, bench/soak-faults.py; order kept",
      },
      restarts,
      falseDeaths,
      victimDeaths: restarts.reduce((a, r) => a + r.declaredDeadBy.length, 0),
      streams,
      probes: { sent: probeCounts.reduce((a, x) => a + x.sent, 0), answered: probeCounts.reduce((a, x) => a + x.received, 0) },
      faults,
      rss,
      aborted: this.fatal ?? null,
      warnings,
    };
  }

  private async stopFaults(): Promise<FaultReport[]> {
    const lab = this.lab as Lab;
    return Promise.all(this.injectors.map(async (inj) => {
      let queueDropped = 0;
      const q = await lab.exec(inj.node, ["cat", "/proc/net/netfilter/nfnetlink_queue"]);
      // queue portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence 1
      for (const line of q.stdout.trim().split("\n")) {
        const f = line.trim().split(/\s+/).map(Number);
        if (f.length >= 7) queueDropped += (f[5] ?? 0) + (f[6] ?? 0);
      }
      await lab.exec(inj.node, ["iptables", "-t", "mangle", "-D", "POSTROUTING", "-o", inj.node.underlayIf, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]);
      inj.child.kill("SIGTERM");
      await withDeadline(inj.exited, 10_000, `the fault injector on ${inj.node.name} to exit`).catch(() => inj.child.kill("SIGKILL"));
      const f = inj.final ?? inj.last;
      return { node: inj.node.name, seen: f?.seen ?? 0, dropped: f?.dropped ?? 0, meanDelayMs: f?.meanDelayMs ?? 0, maxDelayMs: f?.maxDelayMs ?? 0, queueDropped };
    }));
  }

  private async tearDown(): Promise<void> {
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    try {
      await this.cluster?.stopAll();
    } finally {
      await this.lab?.teardown();
    }
  }
}

/** Runs the soak and returns its report; the lab is removed whatever happens. */
export async function runSoak(options: Partial<SoakOptions> = {}, progress: SoakProgress = () => undefined): Promise<SoakReport> {
  const o: SoakOptions = { ...SOAK_DEFAULTS, ...options };
  validate(o);
  const t = nowMs();
  const report = await new SoakRun(o, progress).run();
  report.wallS = (nowMs() - t) / 1000;
  return report;
}

// ---------------------------------------------------------------------------------------------
// CLI

async function main(argv: readonly string[]): Promise<number> {
  const parsed = parseSoakArgs(argv);
  if (!parsed.ok) {
    process.stderr.write(`soak: ${parsed.error}\n(run with --help for the flags)\n`);
    return 2;
  }
  const { options, jsonFile, help } = parsed.value;
  if (help) {
    process.stdout.write(SOAK_USAGE + "\n");
    return 0;
  }
  if (jsonFile !== undefined && !existsSync(dirname(resolve(jsonFile)))) {
    process.stderr.write(`soak: --json "${jsonFile}" is not valid: directory ${dirname(resolve(jsonFile))} does not exist\n`);
    return 2;
  }
  const report = await runSoak(options, (line) => process.stdout.write(line + "\n"));
  process.stdout.write("\n" + renderMarkdown(report) + "\n");
  if (jsonFile !== undefined) {
    writeFileSync(jsonFile, JSON.stringify({ ...report, verdict: verdict(report) }, null, 2) + "\n");
    process.stdout.write(`report written to ${jsonFile}\n`);
  }
  return verdict(report).ok ? 0 : 1;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`soak: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
