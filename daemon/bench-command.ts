// `vxmesh bench`: runs the bench suite (bench/bench.ts) — the same two-node lab and the same
// load for the kernel's VXLAN, vxmesh and fastd — and writes JSON, Markdown and SVG results.
// Progress goes to stderr, the table and the file names to stdout.

import { execFileSync } from "node:child_process";
import { cpus } from "node:os";
import { resolve } from "node:path";
import type { Parsed } from "../encap/types";
import { fastdInstalled, runSucceeded, runSuite, writeResults, PATH_NAMES, POLL_PATH_FLAGS, SCENARIO_NAMES, type PathName, type ScenarioName } from "../bench/bench";
import { renderTable } from "../bench/report";
import { formatHelp, intInRange, parseFlags } from "./flags";

function listOf<T extends string>(valid: readonly T[]): (text: string) => Parsed<T[]> {
  const expected = `a comma-separated list of ${valid.join(", ")} (each at most once)`;
  return (text) => {
    const items = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
    if (items.length === 0) return { ok: false, error: expected };
    const out: T[] = [];
    for (const item of items) {
      const v = valid.find((x) => x === item);
      if (v === undefined || out.includes(v)) return { ok: false, error: expected };
      out.push(v);
    }
    return { ok: true, value: out };
  };
}

/** Splits "--batch 32 --log-level warn" into argv words (no quoting: flag values have no spaces). */
function words(text: string): Parsed<string[]> {
  return { ok: true, value: text.split(/\s+/).filter((w) => w !== "") };
}

/** "C,S": the CPUs of the sending and the receiving pod, each from 0 to cpuCount - 1. */
export function cpuPair(cpuCount: number): (text: string) => Parsed<[number, number]> {
  const expected = `two CPU numbers from 0 to ${cpuCount - 1}, the sending pod's first (e.g. 0,${Math.min(1, cpuCount - 1)})`;
  return (text) => {
    const parts = text.split(",").map((s) => s.trim());
    if (parts.length !== 2 || !parts.every((x) => /^\d+$/.test(x))) return { ok: false, error: expected };
    const [c, s] = parts.map(Number) as [number, number];
    if (c >= cpuCount || s >= cpuCount) return { ok: false, error: expected };
    return { ok: true, value: [c, s] };
  };
}

const benchFlags = {
  paths: { name: "paths", help: `data paths to compare: kernel, vxmesh, vxmesh-poll (vxmesh with ${POLL_PATH_FLAGS.join(" ")}), fastd`, defaultText: "kernel,vxmesh,vxmesh-poll,fastd (fastd only when /usr/bin/fastd exists)", parse: listOf(PATH_NAMES) },
  scenarios: { name: "scenarios", help: "loads to run: tcp1, tcp4, udp64, udp1400, rtt (daemon CPU/RSS are sampled during tcp1)", defaultText: "tcp1,tcp4,udp64,udp1400,rtt", parse: listOf(SCENARIO_NAMES) },
  seconds: { name: "seconds", help: "length of each throughput measurement, 1-120 (rtt always takes 2000 round trips, about 2.5 s)", defaultText: "5", parse: intInRange(1, 120) },
  repeat: { name: "repeat", help: "repetitions of each measurement (the median is reported), 1-20", defaultText: "3", parse: intInRange(1, 20) },
  out: { name: "out", help: "directory for bench-<date>.json, .md and .svg", defaultText: "bench-results", parse: (t: string): Parsed<string> => (t !== "" ? { ok: true, value: t } : { ok: false, error: "a directory" }) },
  podCpus: { name: "pod-cpus", help: "pin the sending and the receiving pod's processes to these CPUs on every path, e.g. 0,1 (round trips depend on this placement on small VMs)", defaultText: "none: the scheduler places them", parse: cpuPair(cpus().length) },
  daemonArgs: { name: "daemon-args", help: "extra flags for the vxmesh daemons, e.g. \"--offload=false\"", defaultText: "none", parse: words },
};

const err = (line: string): void => {
  process.stderr.write(line + "\n");
};

function quote(arg: string): string {
  return /^[A-Za-z0-9_./:=,@+-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, "'\\''")}'`;
}

function hasCommand(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export async function runBench(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(formatHelp("bench", "Compares pod-to-pod throughput, packet rate, latency and daemon CPU/RSS through the kernel's VXLAN, vxmesh and fastd on the same 2-node namespace lab; writes JSON, a Markdown table and an SVG chart.", benchFlags) + "\n");
    return 0;
  }
  const parsed = parseFlags(benchFlags, argv, process.env);
  if (!parsed.ok) {
    err(`vxmesh bench: ${parsed.error}`);
    return 2;
  }
  if (parsed.positional.length > 0) {
    err(`vxmesh bench: unexpected argument ${JSON.stringify(parsed.positional[0])}; see vxmesh bench --help`);
    return 2;
  }
  const v = parsed.values;
  let paths: PathName[];
  if (v.paths !== undefined) {
    paths = v.paths;
    if (paths.includes("fastd") && !fastdInstalled()) {
      err("vxmesh bench: --paths includes fastd, but /usr/bin/fastd is not installed (apt-get install fastd)");
      return 2;
    }
  } else {
    paths = fastdInstalled() ? ["kernel", "vxmesh", "vxmesh-poll", "fastd"] : ["kernel", "vxmesh", "vxmesh-poll"];
  }
  const scenarios: ScenarioName[] = v.scenarios ?? [...SCENARIO_NAMES];
  if (process.getuid?.() !== 0) {
    err("vxmesh bench: needs root (it creates network namespaces, veth pairs and TAP devices)");
    return 1;
  }
  for (const tool of ["ip", "iperf3"]) {
    if (!hasCommand(tool)) {
      err(`vxmesh bench: ${tool} is not installed (scripts/setup installs it)`);
      return 1;
    }
  }
  const outDir = resolve(v.out ?? "bench-results");
  const seconds = v.seconds ?? 5;
  const repeat = v.repeat ?? 3;
  err(`vxmesh bench: paths ${paths.join(", ")}; scenarios ${scenarios.join(", ")}; ${repeat} × ${seconds} s each`);
  const results = await runSuite({
    paths,
    scenarios,
    seconds,
    repeat,
    daemonArgs: v.daemonArgs ?? [],
    podCpus: v.podCpus,
    command: ["vxmesh", "bench", ...argv].map(quote).join(" "),
  });
  const files = writeResults(results, outDir);
  process.stdout.write("\n" + renderTable(results) + "\n");
  process.stdout.write(`results: ${files.json}\n         ${files.markdown}\n         ${files.svg}\n`);
  process.stdout.write(`took ${Math.round(results.durationS)} s\n`);
  const ok = runSucceeded(results);
  if (!ok) err("vxmesh bench: some measurements failed; see the Failures section of the Markdown report");
  return ok ? 0 : 1;
}
