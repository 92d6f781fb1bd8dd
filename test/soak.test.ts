// The soak (issue 6, "How we will know"): its pure parts (flags, the stream pattern, the
// verdict). The short soak in the lab is test/soak-lab.test.ts.

import { describe, expect, it } from "vitest";
import { parseSoakArgs, SOAK_DEFAULTS } from "../bench/soak-options";
import { Pattern, fillPattern, streamKey } from "../bench/soak-pattern";
import { renderMarkdown, verdict, type SoakReport } from "../bench/soak-report";

describe("soak flags", () => {
  it("defaults to 10 minutes, 5 nodes, a kill every 60 s, 5 % loss", () => {
    const r = parseSoakArgs([]);
    expect(r.ok && r.value.options).toEqual(SOAK_DEFAULTS);
    expect(SOAK_DEFAULTS).toMatchObject({ durationMs: 600_000, nodes: 5, intervalMs: 60_000, loss: 0.05 });
  });

  it("reads every flag, with units", () => {
    const r = parseSoakArgs(["--duration", "2m", "--nodes=3", "--interval", "30s", "--loss", "2.5%", "--delay", "4ms", "--jitter", "0.5", "--seed", "7", "--stream-rate", "512K", "--json", "out.json"]);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.jsonFile).toBe("out.json");
    expect(r.value.options).toMatchObject({ durationMs: 120_000, nodes: 3, intervalMs: 30_000, loss: 0.025, delayMs: 4, jitterMs: 0.5, seed: 7, streamRateBytesPerS: 512 * 1024 });
  });

  it.each([
    [["--nodes", "1"], /^--nodes "1" is not valid: expected an integer from 2 to 32$/],
    [["--loss", "60"], /^--loss "60" is not valid: expected a percentage from 0 to 50$/],
    [["--interval", "2s"], /^--interval "2s" is not valid: expected a duration of at least 5 s/],
    [["--duration", "soon"], /^--duration "soon" is not valid: expected a duration/],
    [["--duration", "30s", "--interval", "60s"], /^--duration 30 s is shorter than --interval 60 s/],
    [["--stream-rate", "fast"], /^--stream-rate "fast" is not valid/],
    [["--seed"], /^--seed needs a value$/],
    [["--frobnicate", "1"], /^unknown flag "--frobnicate"/],
  ])("rejects %j", (argv, message) => {
    const r = parseSoakArgs(argv);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(message);
  });
});

describe("soak stream pattern", () => {
  it("gives the same byte at an offset however the range is cut, and differs between streams", () => {
    const key = streamKey(1, 0);
    const whole = new Uint8Array(4099);
    fillPattern(key, 0, whole, new Uint32Array(2048));
    const p = new Pattern(key);
    for (const [off, len] of [[0, 1], [1, 3], [3, 8], [1021, 1031], [4000, 99]] as const) {
      expect(Buffer.from(p.bytes(off, len))).toEqual(Buffer.from(whole.subarray(off, off + len)));
      expect(p.mismatches(off, whole.subarray(off, off + len))).toBe(0);
    }
    const other = new Pattern(streamKey(1, 1)).bytes(0, 4096);
    expect(new Pattern(key).mismatches(0, other)).toBeGreaterThan(4000);
    // Offsets past 2^32 words (16 GiB) still work and differ from the low ones.
    expect(Buffer.from(p.bytes(2 ** 34 + 5, 16)).equals(p.bytes(5, 16))).toBe(false);
  });

  it("counts a changed, a shifted and a missing byte", () => {
    const p = new Pattern(streamKey(9, 3));
    const data = Buffer.from(p.bytes(100, 64));
    data[10] = (data[10] as number) ^ 0xff;
    expect(p.mismatches(100, data)).toBe(1);
    expect(p.mismatches(101, Buffer.from(p.bytes(100, 64)))).toBeGreaterThan(50);
    const missing = Buffer.concat([p.bytes(100, 10), p.bytes(111, 20)]);
    expect(p.mismatches(100, missing)).toBeGreaterThan(15);
  });
});

describe("soak verdict", () => {
  const base: SoakReport = {
    options: { ...SOAK_DEFAULTS },
    startedAt: "2026-01-01T00:00:00.000Z",
    soakS: 600,
    wallS: 630,
    environment: { labPrefix: "vxm1x1-", cpus: 2, loadAvgStart: [1, 1, 1], loadAvgEnd: [1, 1, 1], kernel: "test", faultMechanism: "test" },
    restarts: [{
      index: 1, node: "n1", killAtS: 60, exitMs: 10, controlSocketMs: 900, trafficReturnMs: 1500, killToTrafficMs: 1510, convergedMs: 1800,
      streamProgressMs: { "0": 1600, "1": 200 }, declaredDeadBy: [], recoveredMs: 1800,
    }],
    falseDeaths: [],
    victimDeaths: 0,
    streams: [{
      id: 0, from: "n1p1", to: "n2p1", verifiedBytes: 1000, corruptedBytes: 0, lostBytes: 0, gapBytes: 0, unverifiedAtEndBytes: 0,
      resentBytes: 0, connections: 1, reconnects: 0, stalls: 0, firstCorruptionAt: null, drained: true,
    }],
    probes: { sent: 100, answered: 90 },
    faults: [],
    rss: [{ node: "n1", processes: [{ pid: 1, startedAtS: -5, firstKb: 80_000, lastKb: 81_000, maxKb: 82_000, samples: 10 }] }],
    aborted: null,
    warnings: [],
  };
  const stream0 = base.streams[0] as SoakReport["streams"][number];
  const restart0 = base.restarts[0] as SoakReport["restarts"][number];

  it("passes a clean run and renders it", () => {
    expect(verdict(base)).toEqual({ ok: true, problems: [] });
    const md = renderMarkdown(base);
    expect(md).toMatch(/^## vxmesh soak — PASS/);
    expect(md).toContain("| false deaths | 0 |");
    expect(md).toContain("| n1 | 78.1 MiB | 79.1 MiB | 80.1 MiB |");
  });

  it.each<[string, Partial<SoakReport>, RegExp]>([
    ["a false death", { falseDeaths: [{ observer: "n2", member: "n3", atS: 12.5, source: "log", state: "dead" }] }, /1 false death\(s\): n2 saw n3 dead at 12\.5 s \(log\)/],
    ["a corrupted byte", { streams: [{ ...stream0, corruptedBytes: 1, firstCorruptionAt: 77 }] }, /stream 0 \(n1p1→n2p1\): 1 bytes corrupted \(first at offset 77\)/],
    ["a lost byte", { streams: [{ ...stream0, lostBytes: 5, gapBytes: 5 }] }, /stream 0 .*: 5 bytes lost \(gaps 5/],
    ["an undrained stream", { streams: [{ ...stream0, drained: false }] }, /did not drain/],
    ["a restart that never recovered", { restarts: [{ ...restart0, recoveredMs: null, trafficReturnMs: null }] }, /restart 1 of n1: did not recover within 60\.00 s \(traffic never/],
    ["a restart that recovered too late", { restarts: [{ ...restart0, recoveredMs: 61_000 }] }, /restart 1 of n1: did not recover within 60\.00 s/],
    ["an aborted run", { aborted: "the pod program in n1p1 exited (1)" }, /aborted: the pod program in n1p1 exited/],
  ])("fails %s", (_, change, message) => {
    const v = verdict({ ...base, ...change });
    expect(v.ok).toBe(false);
    expect(v.problems.join("\n")).toMatch(message);
    expect(renderMarkdown({ ...base, ...change })).toMatch(/^## vxmesh soak — FAIL/);
  });
});
