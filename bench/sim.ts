// The membership simulator bench: runs the measurement scenario of control/membership/sim.ts
// twice — on a clean network and under loss — in two worker threads, and prints the figures
// beside what memberlist's formulas predict.
//
//   node dist/bench/sim.js [--nodes 1000] [--loss 0.1] [--seed 1] [--duration 120]
//                          [--delay-min 1] [--delay-max 5] [--wire] [--serial] [--json]

import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import type { Ipv4 } from "../encap/types";
import { ENVELOPE_OVERHEAD, LAN_CONFIG, pushPullScale, retransmitLimit, suspicionTimeout } from "../control/membership/config";
import { measure, quietStart, type MeasureOptions, type MeasureResult } from "../control/membership/sim";
import { packetSize, pushPullSize } from "../control/membership/wire";
import type { Message, PushPullEntry } from "../control/membership/types";

interface Flags {
  nodes: number;
  loss: number;
  seed: number;
  duration: number;
  delayMin: number;
  delayMax: number;
  wire: boolean;
  serial: boolean;
  json: boolean;
}

const USAGE = `usage: node dist/bench/sim.js [--nodes N] [--loss FRACTION] [--seed N] [--duration SECONDS]
                              [--delay-min MS] [--delay-max MS] [--wire] [--serial] [--json]
  --nodes      cluster size (default 1000, at least 4)
  --loss       datagram loss of the second run, 0…0.5 (default 0.1; the first run is loss-free)
  --seed       PRNG seed; the same seed gives the same run (default 1)
  --duration   virtual seconds per run, at least 60 (default 90)
  --delay-min  --delay-max   one-way datagram delay range in ms (default 1…5)
  --wire       pass every datagram of the lossy run through the codec too (slower;
               the loss-free run always does; byte counts come from the codec either way)
  --serial     run the two scenarios one after the other instead of in two threads
  --json       print the raw results as JSON`;

function parseFlags(argv: readonly string[]): Flags | string {
  const f: Flags = { nodes: 1000, loss: 0.1, seed: 1, duration: 90, delayMin: 1, delayMax: 5, wire: false, serial: false, json: false };
  const num = (name: string, text: string | undefined, min: number, max: number, integer: boolean): number | string => {
    if (text === undefined) return `${name} needs a value`;
    const v = Number(text);
    if (text.trim() === "" || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
      return `${name} ${JSON.stringify(text)}: expected ${integer ? "an integer" : "a number"} from ${min} to ${max}`;
    }
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const [key, inline] = a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a, undefined];
    const value = (): string | undefined => inline ?? argv[++i];
    let r: number | string;
    switch (key) {
      case "--nodes": r = num(key, value(), 4, 20_000, true); if (typeof r === "string") return r; f.nodes = r; break;
      case "--loss": r = num(key, value(), 0, 0.5, false); if (typeof r === "string") return r; f.loss = r; break;
      case "--seed": r = num(key, value(), 0, 2 ** 32 - 1, true); if (typeof r === "string") return r; f.seed = r; break;
      case "--duration": r = num(key, value(), 60, 3600, false); if (typeof r === "string") return r; f.duration = r; break;
      case "--delay-min": r = num(key, value(), 0, 1000, false); if (typeof r === "string") return r; f.delayMin = r; break;
      case "--delay-max": r = num(key, value(), 0, 1000, false); if (typeof r === "string") return r; f.delayMax = r; break;
      case "--wire": f.wire = true; break;
      case "--serial": f.serial = true; break;
      case "--json": f.json = true; break;
      case "--help": case "-h": return USAGE;
      default: return `unknown flag ${a}\n${USAGE}`;
    }
  }
  if (f.delayMax < f.delayMin) return `--delay-max ${f.delayMax} is below --delay-min ${f.delayMin}`;
  return f;
}

const JOIN_AT = 10_000;
const CRASH_AT = 20_000;

function scenarios(f: Flags): MeasureOptions[] {
  const base = {
    nodes: f.nodes, seed: f.seed, duration: f.duration * 1000, delayMin: f.delayMin, delayMax: f.delayMax,
    joinAt: JOIN_AT, crashAt: CRASH_AT,
  };
  const runs: MeasureOptions[] = [{ ...base, loss: 0, wire: true }];
  if (f.loss > 0) runs.push({ ...base, loss: f.loss, wire: f.wire });
  return runs;
}

function runInWorker(o: MeasureOptions): Promise<MeasureResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(__filename, { workerData: o });
    w.once("message", (r: MeasureResult) => resolve(r));
    w.once("error", reject);
    w.once("exit", (code) => {
      if (code !== 0) reject(new Error(`simulator worker exited with ${code}`));
    });
  });
}

// ---------------------------------------------------------------- predictions

interface Prediction {
  retransmits: number;
  suspicionMin: number;
  suspicionMax: number;
  pushPull: number;
  rounds: number;
  disseminationMs: number;
  falseSuspicionsPerSecond: (loss: number) => number;
  probeBytes: number;
  pushPullBytes: number;
  updateBytes: number;
}

function predict(n: number, metaBytes: number): Prediction {
  const c = LAN_CONFIG;
  const name = "node-0000";
  const addr = { ip: 0x0a000001 as Ipv4, port: 7946 };
  const ping: Message = { type: "ping", seq: 1, target: name, source: addr, sourceName: name };
  const ack: Message = { type: "ack", seq: 1 };
  const suspect: Message = { type: "suspect", incarnation: 1, name, from: name };
  const alive: Message = { type: "alive", incarnation: 1, name, address: addr, meta: new Uint8Array(metaBytes) };
  const entry: PushPullEntry = { name, address: addr, meta: new Uint8Array(metaBytes), incarnation: 1, state: "alive" };
  const stateBytes = pushPullSize({ type: "pushPull", join: false, reply: false, members: new Array<PushPullEntry>(n).fill(entry) });
  const pushPull = pushPullScale(c.pushPullInterval, n);
  const retransmits = retransmitLimit(c.retransmitMult, n);
  // Infection-style spread: each round every informed member tells gossipNodes others.
  const rounds = Math.log(n) / Math.log(1 + c.gossipNodes);
  const suspicionMin = suspicionTimeout(c.suspicionMult, n, c.probeInterval);
  return {
    retransmits,
    suspicionMin,
    suspicionMax: c.suspicionMaxTimeoutMult * suspicionMin,
    pushPull,
    rounds,
    disseminationMs: rounds * c.gossipInterval,
    // A probe fails when the direct round trip and every indirect one (4 legs) fail.
    falseSuspicionsPerSecond: (l) => n * (1 - (1 - l) ** 2) * (1 - (1 - l) ** 4) ** c.indirectChecks / (c.probeInterval / 1000),
    // One ping sent and (on average) one ack sent per probe interval, each in its own datagram.
    probeBytes: (packetSize([ping]) + packetSize([ack]) + 2 * ENVELOPE_OVERHEAD) / (c.probeInterval / 1000),
    // Each member starts one exchange per interval and answers one on average.
    pushPullBytes: (2 * stateBytes) / (pushPull / 1000),
    // Per false suspicion each member sends the suspect and the refuting alive `retransmits` times.
    updateBytes: retransmits * (packetSize([suspect]) - 2 + packetSize([alive]) - 2),
  };
}

// ---------------------------------------------------------------- printing

const s1 = (ms: number): string => (Number.isFinite(ms) ? (ms / 1000).toFixed(2) : "—");
const bytes = (b: number): string => (b >= 10_000 ? `${(b / 1000).toFixed(1)} kB` : `${Math.round(b)} B`);

function table(f: Flags, results: MeasureResult[], realMs: number): string {
  const p = predict(f.nodes, results[0]?.options.metaBytes ?? 40);
  const c = LAN_CONFIG;
  const heads = results.map((r) => `loss ${Math.round(r.options.loss * 100)}%`);
  const rows: [string, string[], string][] = [];
  const col = (fn: (r: MeasureResult) => string): string[] => results.map(fn);
  const lossy = results.find((r) => r.options.loss > 0);
  rows.push(["(a) new node known: p50 / p99 / all (s)",
    col((r) => `${s1(r.join.p50)} / ${s1(r.join.p99)} / ${r.join.count === r.join.of ? s1(r.join.max) : `${r.join.count}/${r.join.of}!`}`),
    `O(log N): log${1 + c.gossipNodes}(${f.nodes}) = ${p.rounds.toFixed(1)} rounds × ${c.gossipInterval} ms ≈ ${s1(p.disseminationMs)} s`]);
  rows.push(["(b) crashed node: first suspicion (s)", col((r) => s1(r.crash.firstSuspect)),
    `≤ 2 probe intervals (someone probes it within ~1 s, + ${c.probeInterval / 1000} s)`]);
  rows.push(["    declared dead: first / last (s)",
    col((r) => `${s1(r.crash.firstDead)} / ${r.crash.declared === r.crash.of ? s1(r.crash.lastDead) : `${r.crash.declared}/${r.crash.of}!`}`),
    `suspicion ${s1(p.suspicionMin)} s min (4·log10 N·1 s), ${s1(p.suspicionMax)} s without confirmations; + ~1–2 s detection, + 0.5 s last probe`]);
  rows.push(["(c) false deaths: events / members", col((r) => `${r.falseDeaths.events} / ${r.falseDeaths.subjects}`),
    `0 (a false suspicion is refuted well within the ≥ ${s1(p.suspicionMin)} s timeout)`]);
  rows.push(["    false suspicions started", col((r) => `${r.falseDeaths.falseSuspicionsStarted} (${(r.falseDeaths.falseSuspicionsStarted / ((r.options.duration - r.options.joinAt) / 1000)).toFixed(2)}/s)`),
    lossy ? `N·p, p = (1−(1−l)²)(1−(1−l)⁴)³ = ${p.falseSuspicionsPerSecond(lossy.options.loss).toFixed(2)}/s at ${Math.round(lossy.options.loss * 100)}%` : "0"]);
  rows.push([`(d) UDP bytes/s per node, quiet (${quietStart(CRASH_AT) / 1000} s → end)`, col((r) => `${bytes(r.quietTraffic.udpWireBytes)}/s`),
    `probes ${bytes(p.probeBytes)}/s` + (lossy ? `; + ≤ ${bytes(p.updateBytes)} per false suspicion → ≤ ${bytes(p.probeBytes + p.updateBytes * p.falseSuspicionsPerSecond(lossy.options.loss))}/s at ${Math.round(lossy.options.loss * 100)}%` : "")]);
  rows.push(["    datagrams/s per node, quiet", col((r) => r.quietTraffic.udpPackets.toFixed(1)), "2 (one ping, one ack)"]);
  rows.push([`    UDP bytes/s per node, ${JOIN_AT / 1000} s → end`, col((r) => `${bytes(r.traffic.udpWireBytes)}/s`), "the above + the join and the crash"]);
  rows.push(["    push-pull stream bytes/s per node", col((r) => `${bytes(r.quietTraffic.streamBytes)}/s`),
    `2 × ${bytes(p.pushPullBytes * p.pushPull / 2000)} state / ${s1(p.pushPull)} s interval = ${bytes(p.pushPullBytes)}/s`]);
  rows.push(["    converged at the end", col((r) => (r.convergedAtEnd ? "yes" : "NO")), ""]);
  rows.push(["run: real time, events", col((r) => `${(r.realMs / 1000).toFixed(1)} s, ${(r.steps / 1e6).toFixed(2)} M`), ""]);

  const w0 = Math.max(...rows.map((r) => r[0].length));
  const ws = heads.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[1][i] ?? "").length)));
  const line = (a: string, cols: string[], z: string): string =>
    `${a.padEnd(w0)}  ${cols.map((x, i) => x.padEnd(ws[i] ?? 0)).join("  ")}  ${z}`.trimEnd();
  const out: string[] = [];
  out.push(`vxmesh membership simulator: N=${f.nodes}, seed ${f.seed}, ${f.duration} s virtual per run, delay ${f.delayMin}–${f.delayMax} ms, memberlist LAN defaults`);
  out.push(`N−1 members start converged; one joins through member 0 at ${JOIN_AT / 1000} s; one crashes at ${CRASH_AT / 1000} s. Retransmits per update ${p.retransmits} (4·⌈log10(N+1)⌉), push-pull every ${s1(p.pushPull)} s.`);
  out.push("");
  out.push(line("", heads, "memberlist's formulas predict"));
  out.push(line("", heads.map((h) => "-".repeat(h.length)), "-----------------------------"));
  for (const r of rows) out.push(line(r[0], r[1], r[2]));
  out.push("");
  out.push(`total real time ${(realMs / 1000).toFixed(1)} s`);
  return out.join("\n");
}

async function main(): Promise<void> {
  const f = parseFlags(process.argv.slice(2));
  if (typeof f === "string") {
    const help = f === USAGE;
    (help ? process.stdout : process.stderr).write(f + "\n");
    process.exitCode = help ? 0 : 2;
    return;
  }
  const started = performance.now();
  const runs = scenarios(f);
  if (!f.json) process.stderr.write(`simulating ${runs.length} run(s) of ${f.nodes} nodes × ${f.duration} s virtual${f.serial ? "" : " in parallel"}…\n`);
  let results: MeasureResult[];
  if (f.serial) results = runs.map((o) => measure(o));
  else results = await Promise.all(runs.map((o) => runInWorker(o)));
  const realMs = performance.now() - started;
  if (f.json) process.stdout.write(JSON.stringify({ flags: f, results, realMs }, null, 2) + "\n");
  else process.stdout.write(table(f, results, realMs) + "\n");
}

if (!isMainThread && parentPort !== null) {
  parentPort.postMessage(measure(workerData as MeasureOptions));
} else if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
