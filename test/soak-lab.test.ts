// A short soak in the lab (root, namespaces, the built daemon) — the same runSoak that
// `npm run soak` runs for ten minutes: 5 nodes with real gossip daemons, 5 % loss and jitter on
// the underlay, probes and checked streams between pods on different nodes, a daemon killed
// with SIGKILL and restarted every 25 s (4 restarts, the first node among them). The soak's
// pure parts: test/soak.test.ts.

import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { renderMarkdown, verdict, type SoakReport } from "../bench/soak-report";
import { runSoak } from "../bench/soak";

function netnsNames(): string[] {
  return execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).split("\n").map((l) => l.split(" ")[0] ?? "").filter((n) => n !== "");
}

describe.runIf(process.getuid?.() === 0)("soak in the lab", () => {
  it("5 nodes, 5 % loss and jitter, a kill -9 and restart every 25 s: no false death, no byte lost or corrupted, traffic back after every restart", async () => {
    const report: SoakReport = await runSoak(
      { nodes: 5, durationMs: 100_000, intervalMs: 25_000, loss: 0.05, delayMs: 2, jitterMs: 1, seed: 6, recoveryTimeoutMs: 45_000 },
      (line) => console.log(line),
    );
    console.log(renderMarkdown(report));

    // Nothing of this run is left.
    expect(report.environment.labPrefix).toMatch(/^vxm\d+x\d+-$/);
    expect(netnsNames().filter((n) => n.startsWith(report.environment.labPrefix))).toEqual([]);

    expect(report.aborted).toBeNull();
    // The faults were there: every node's egress lost datagrams, at about the rate asked for.
    for (const f of report.faults) {
      expect(f.seen).toBeGreaterThan(5000);
      expect(f.dropped / f.seen).toBeGreaterThan(0.03);
      expect(f.dropped / f.seen).toBeLessThan(0.07);
    }

    expect(report.falseDeaths).toEqual([]);

    expect(report.restarts.map((r) => r.node)).toEqual(["n1", "n2", "n3", "n4"]);
    for (const r of report.restarts) {
      expect(r.error).toBeUndefined();
      expect(r.trafficReturnMs).not.toBeNull();
      expect(r.trafficReturnMs as number).toBeLessThan(30_000);
      expect(r.convergedMs).not.toBeNull();
      // Every stream, the two through the restarted node among them, verified new bytes.
      expect(Object.values(r.streamProgressMs).every((v) => v !== null)).toBe(true);
      expect(r.recoveredMs).not.toBeNull();
    }

    expect(report.streams).toHaveLength(5);
    for (const s of report.streams) {
      expect(s.verifiedBytes).toBeGreaterThan(1024 * 1024);
      expect(s.corruptedBytes).toBe(0);
      expect(s.lostBytes).toBe(0);
      expect(s.drained).toBe(true);
    }
    expect(report.probes.answered).toBeGreaterThan(0);

    // RSS sampled for every process: the first ones and each restarted one.
    expect(report.rss).toHaveLength(5);
    for (const n of report.rss) {
      expect(n.processes.length).toBe(n.node === "n5" ? 1 : 2);
      for (const p of n.processes) {
        expect(p.firstKb).toBeGreaterThan(0);
        expect(p.lastKb).toBeGreaterThan(0);
      }
    }
    expect(verdict(report)).toEqual({ ok: true, problems: [] });
  }, 330_000);
});
