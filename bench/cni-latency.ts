// Measurement (not a test): ADD and DEL latency of vxmesh-cni (shim + CNI handler behind the
// control socket) against the reference bridge + host-local pair from /usr/lib/cni, one call at
// a time and 32 at once, in throwaway network namespaces.
//
//   npx node-gyp rebuild && npm run build
//   node dist/bench/cni-latency.js [--iterations 100] [--concurrency 32] [--rounds 5] [--json FILE]
//
// Each plugin is exec'd by a small driver process that runs inside its node's network namespace
// (as a runtime on that node would exec it), so neither side pays for `ip netns exec`; latency is
// spawn-to-exit as the driver sees it. Both get the same pods (empty namespaces), the same MTU,
// a default route and hairpin, and DEL gets the ADD's prevResult, as runtimes pass it.
// A tool under cni/ (its home until it moves to bench/): it uses the lab from bench/.

import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import * as os from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Lab } from "./lab";
import { CniNode, REFERENCE_DIR, addPodNs, referenceConfig, shim } from "./cni-testkit";

interface DriverSpec {
  binary: string;
  config: Record<string, unknown>;
  pods: string[];
  iterations: number;
  concurrency: number;
  rounds: number;
}

interface Sample {
  add: number[];
  del: number[];
  /** Wall time of each batch of concurrent ADDs / DELs. */
  addWall: number[];
  delWall: number[];
}

interface DriverReport {
  /** VERSION calls: what exec'ing the binary costs from this driver, with no work behind it. */
  floor: number[];
  sequential: Sample;
  concurrent: Sample;
  failures: string[];
}

// ---------------------------------------------------------------------------------------------
// The driver (runs inside a node namespace)

function exec(binary: string, env: Record<string, string>, stdin: string): Promise<{ code: number | null; stdout: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const c = spawn(binary, [], { env, stdio: ["pipe", "pipe", "ignore"] });
    let stdout = "";
    c.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    c.stdin.on("error", () => undefined);
    c.stdin.end(stdin);
    c.once("error", reject);
    c.once("close", (code) => resolve({ code, stdout, ms: performance.now() - t0 }));
  });
}

async function drive(spec: DriverSpec): Promise<DriverReport> {
  const failures: string[] = [];
  const baseEnv = { PATH: process.env["PATH"] ?? "/usr/bin:/bin", CNI_PATH: REFERENCE_DIR };
  const prev = new Map<string, unknown>();
  let serial = 0;
  const add = async (netns: string, cid: string): Promise<number> => {
    const r = await exec(spec.binary, { ...baseEnv, CNI_COMMAND: "ADD", CNI_CONTAINERID: cid, CNI_NETNS: netns, CNI_IFNAME: "eth0" }, JSON.stringify(spec.config));
    if (r.code !== 0) failures.push(`ADD ${cid}: ${r.stdout.trim()}`);
    else prev.set(cid, JSON.parse(r.stdout) as unknown);
    return r.ms;
  };
  const del = async (netns: string, cid: string): Promise<number> => {
    const conf = { ...spec.config, ...(prev.has(cid) ? { prevResult: prev.get(cid) } : {}) };
    const r = await exec(spec.binary, { ...baseEnv, CNI_COMMAND: "DEL", CNI_CONTAINERID: cid, CNI_NETNS: netns, CNI_IFNAME: "eth0" }, JSON.stringify(conf));
    if (r.code !== 0) failures.push(`DEL ${cid}: ${r.stdout.trim()}`);
    prev.delete(cid);
    return r.ms;
  };
  const pod = (i: number): string => spec.pods[i % spec.pods.length] as string;

  const floor: number[] = [];
  for (let i = 0; i < 30; i++) floor.push((await exec(spec.binary, { ...baseEnv, CNI_COMMAND: "VERSION" }, JSON.stringify({ cniVersion: "1.0.0" }))).ms);

  // Warm-up: bridge creation, first files, page cache.
  for (let i = 0; i < 3; i++) {
    const cid = `warm${i}`;
    await add(pod(0), cid);
    await del(pod(0), cid);
  }

  const sequential: Sample = { add: [], del: [], addWall: [], delWall: [] };
  for (let i = 0; i < spec.iterations; i++) {
    const cid = `seq${++serial}`;
    sequential.add.push(await add(pod(i), cid));
    sequential.del.push(await del(pod(i), cid));
  }

  const concurrent: Sample = { add: [], del: [], addWall: [], delWall: [] };
  for (let round = 0; round < spec.rounds; round++) {
    const ids = Array.from({ length: spec.concurrency }, (_, i) => ({ netns: pod(i), cid: `con${round}x${i}` }));
    let t0 = performance.now();
    concurrent.add.push(...(await Promise.all(ids.map((x) => add(x.netns, x.cid)))));
    concurrent.addWall.push(performance.now() - t0);
    t0 = performance.now();
    concurrent.del.push(...(await Promise.all(ids.map((x) => del(x.netns, x.cid)))));
    concurrent.delWall.push(performance.now() - t0);
  }
  return { floor, sequential, concurrent, failures };
}

// ---------------------------------------------------------------------------------------------
// The outer script

function flag(argv: string[], name: string, dflt: number): number {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = Number(argv[i + 1]);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`--${name} needs a positive integer`);
  return v;
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] as number;
}

async function runDriver(lab: Lab, ns: string, spec: DriverSpec): Promise<DriverReport> {
  const child = lab.spawn(ns, [process.execPath, __filename, "--driver", JSON.stringify(spec)]);
  let out = "";
  let err = "";
  child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
  child.stderr?.setEncoding("utf8").on("data", (d: string) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  if (code !== 0) throw new Error(`driver in ${ns} exited ${String(code)}: ${err}`);
  return JSON.parse(out) as DriverReport;
}

async function main(argv: string[]): Promise<void> {
  const driverAt = argv.indexOf("--driver");
  if (driverAt >= 0) {
    process.stdout.write(JSON.stringify(await drive(JSON.parse(argv[driverAt + 1] ?? "{}") as DriverSpec)));
    return;
  }
  const iterations = flag(argv, "iterations", 100);
  const concurrency = flag(argv, "concurrency", 32);
  const rounds = flag(argv, "rounds", 5);
  const jsonAt = argv.indexOf("--json");
  const podCount = Math.max(concurrency, 32);

  const loadBefore = os.loadavg()[0]?.toFixed(2) ?? "?";
  const lab = await Lab.create();
  try {
    process.stderr.write(`building namespaces (${2 * podCount} pods, 2 nodes)…\n`);
    const vx = await CniNode.create(lab, "mvx", { subnet: "10.244.21.0/24", mtu: 1450 });
    await vx.start();
    const refNs = `${lab.prefix}mref`;
    await addPodNs(lab, "mref");
    const [vxPods, refPods] = await Promise.all([
      Promise.all(Array.from({ length: podCount }, (_, i) => addPodNs(lab, `mv${i}`))),
      Promise.all(Array.from({ length: podCount }, (_, i) => addPodNs(lab, `mr${i}`))),
    ]);
    const common = { iterations, concurrency, rounds };
    process.stderr.write(`vxmesh-cni: ${iterations} ADD+DEL one at a time, then ${rounds} rounds of ${concurrency} at once…\n`);
    const ours = await runDriver(lab, vx.namespace, { binary: shim(), config: vx.config(), pods: vxPods, ...common });
    process.stderr.write("reference bridge + host-local: the same…\n");
    const ref = await runDriver(lab, refNs, {
      binary: join(REFERENCE_DIR, "bridge"),
      config: referenceConfig({ version: "1.0.0", subnet: "10.244.22.0/24", dataDir: join(lab.workDir(), "host-local") }),
      pods: refPods,
      ...common,
    });
    await vx.stop();

    const row = (name: string, mode: string, s: Sample): string => {
      const f = (x: number): string => x.toFixed(1).padStart(7);
      const wall = s.addWall.length > 0 ? `   batch wall ADD ${percentile(s.addWall, 50).toFixed(0)} ms, DEL ${percentile(s.delWall, 50).toFixed(0)} ms (median of ${s.addWall.length})` : "";
      return `${name.padEnd(28)}${mode.padEnd(14)}${f(percentile(s.add, 50))}${f(percentile(s.add, 95))}${f(percentile(s.del, 50))}${f(percentile(s.del, 95))}${wall}`;
    };
    const lines = [
      `${"plugin".padEnd(28)}${"calls".padEnd(14)}${"ADD p50".padStart(7)}${"ADD p95".padStart(8)}${"DEL p50".padStart(8)}${"DEL p95".padStart(8)}   (ms, spawn to exit)`,
      row("vxmesh-cni", "1 at a time", ours.sequential),
      row("bridge + host-local", "1 at a time", ref.sequential),
      row("vxmesh-cni", `${concurrency} at once`, ours.concurrent),
      row("bridge + host-local", `${concurrency} at once`, ref.concurrent),
    ];
    lines.push(`exec floor (VERSION, no work, p50): vxmesh-cni ${percentile(ours.floor, 50).toFixed(1)} ms, bridge ${percentile(ref.floor, 50).toFixed(1)} ms; load average before/after: ${loadBefore} / ${os.loadavg()[0]?.toFixed(2) ?? "?"}`);
    process.stdout.write(lines.join("\n") + "\n");
    for (const [name, r] of [["vxmesh-cni", ours], ["reference", ref]] as const) {
      if (r.failures.length > 0) process.stdout.write(`${name}: ${r.failures.length} failed calls, e.g. ${r.failures[0] ?? ""}\n`);
    }
    if (jsonAt >= 0 && argv[jsonAt + 1] !== undefined) writeFileSync(argv[jsonAt + 1] as string, JSON.stringify({ iterations, concurrency, rounds, ours, ref }, null, 2));
  } finally {
    await lab.teardown();
  }
}

main(process.argv.slice(2)).then(() => process.exit(0), (err: unknown) => {
  process.stderr.write(`cni-latency: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
