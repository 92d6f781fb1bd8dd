// A short smoke run of the bench suite itself (root: it builds the namespace lab): the kernel
// path's tcp1 and rtt with JSON, Markdown and SVG written, pinned pod CPUs, and the vxmesh
// path's daemon CPU. The bench's pure parts: test/bench-report.test.ts.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runSuite, runSucceeded, writeResults } from "../bench/bench";
import type { BenchResults, PathResult } from "../bench/report";
import { parseXml } from "./xml";

const canRunLab = process.getuid?.() === 0;

describe("bench runner smoke", () => {
  it.skipIf(!canRunLab)("runs tcp1 and rtt on the kernel path and writes JSON, Markdown and SVG", async () => {
    const lines: string[] = [];
    const t0 = Date.now();
    const results = await runSuite({ paths: ["kernel"], scenarios: ["tcp1", "rtt"], seconds: 1, repeat: 1, rttSamples: 500, progress: (l) => lines.push(l) });
    console.log(`smoke: ${Date.now() - t0} ms\n${lines.join("\n")}`);
    expect(runSucceeded(results)).toBe(true);
    expect(results.schema).toBe("vxmesh-bench/1");
    expect(results.machine.cores).toBeGreaterThan(0);
    expect(results.machine.kernel).not.toBe("");
    expect(results.machine.node).toBe(process.version);
    expect(Number.isNaN(Date.parse(results.machine.date))).toBe(false);
    expect(results.paths.map((p) => p.path)).toEqual(["kernel"]);
    const k = results.paths[0] as PathResult;
    expect(Object.keys(k.scenarios).sort()).toEqual(["rtt", "tcp1"]);
    const tcp = k.scenarios.tcp1?.figures["gbps"];
    expect(tcp?.values).toHaveLength(1);
    expect(tcp?.median).toBeGreaterThan(0);
    expect(k.scenarios.tcp1?.figures["cpu_pct"]).toBeUndefined(); // no userspace process on the kernel path
    const p50 = k.scenarios.rtt?.figures["p50_us"]?.median ?? 0;
    const p99 = k.scenarios.rtt?.figures["p99_us"]?.median ?? 0;
    expect(p50).toBeGreaterThan(0);
    expect(p99).toBeGreaterThanOrEqual(p50);
    const same = k.scenarios.rtt?.figures["same_cpu_pct"]?.median;
    expect(same).toBeGreaterThanOrEqual(0);
    expect(same).toBeLessThanOrEqual(100);
    expect(k.scenarios.rtt?.figures["cpu_pct"]).toBeUndefined();
    expect(lines.some((l) => /^\[kernel\] tcp1 1\/1: [\d.]+ Gbit\/s/.test(l))).toBe(true);

    const dir = mkdtempSync(join(tmpdir(), "vxmesh-bench-test-"));
    try {
      const files = writeResults(results, dir);
      const back = JSON.parse(readFileSync(files.json, "utf8")) as BenchResults;
      expect(back).toEqual(JSON.parse(JSON.stringify(results)));
      expect(readFileSync(files.markdown, "utf8")).toContain("| tcp1 — one TCP stream | Gbit/s |");
      expect(parseXml(readFileSync(files.svg, "utf8")).name).toBe("svg");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 40_000);

  it.skipIf(!canRunLab)("with --pod-cpus, pins each pod's processes to its CPU and records where they ran", async () => {
    const last = cpus().length - 1;
    const results = await runSuite({ paths: ["kernel"], scenarios: ["rtt"], seconds: 1, repeat: 1, rttSamples: 300, podCpus: [0, last], progress: () => {} });
    expect(runSucceeded(results)).toBe(true);
    expect(results.config.podCpus).toEqual([0, last]);
    const same = results.paths[0]?.scenarios.rtt?.figures["same_cpu_pct"]?.median;
    // Sampled from /proc/<pid>/stat of both pods' processes while the round trips ran.
    expect(same).toBe(last === 0 ? 100 : 0);
  }, 40_000);

  it.skipIf(!canRunLab)("measures the daemons' CPU during the round trips of the vxmesh path", async () => {
    const results = await runSuite({ paths: ["vxmesh"], scenarios: ["rtt"], seconds: 1, repeat: 1, rttSamples: 300, daemonArgs: ["--busy-poll", "0"], progress: () => {} });
    expect(runSucceeded(results)).toBe(true);
    const rtt = results.paths[0]?.scenarios.rtt?.figures;
    expect(rtt?.["p50_us"]?.median).toBeGreaterThan(0);
    // A daemon that sleeps between pings uses a sliver of one core (ticks are 10 ms, so 0 is possible).
    expect(rtt?.["cpu_pct"]?.median).toBeGreaterThanOrEqual(0);
    expect(rtt?.["cpu_pct"]?.median).toBeLessThan(50);
  }, 60_000);
});
