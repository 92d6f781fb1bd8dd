// The bench's pure parts — statistics, the Markdown table, the SVG chart, the parsers of
// /proc and ip output, fastd's config. A short smoke run of the suite itself on the kernel
// path (root, namespaces): test/bench-report-lab.test.ts.

import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { cpuPair } from "../daemon/bench-command";
import { parseIpLinkStats, parseProcStatCpu, parseProcStatTicks, procStatComm, parseUdpDatagramsIn, parseVmRssKb, udpRates } from "../bench/bench";
import { fastdConfig, parseGeneratedKey } from "../bench/fastd";
import {
  FIGURES,
  figureResult,
  median,
  niceCeil,
  percentile,
  ratio,
  ratioToBaseline,
  renderMarkdown,
  renderSvg,
  renderTable,
  type BenchResults,
  type PathName,
  type PathResult,
  type ScenarioName,
} from "../bench/report";
import { parseXml, type XmlElement } from "./xml";

// ---------------------------------------------------------------------------------------------
// Fixtures

function pathResult(path: PathName, figures: Record<string, number[]>, errors: Partial<Record<ScenarioName, string[]>> = {}): PathResult {
  const scenarios: PathResult["scenarios"] = {};
  for (const f of FIGURES) {
    const values = figures[`${f.scenario}.${f.key}`];
    const s = (scenarios[f.scenario] ??= { figures: {}, details: [], errors: errors[f.scenario] ?? [] });
    if (values !== undefined) s.figures[f.key] = figureResult(f.unit, values);
  }
  return { path, scenarios };
}

function sampleResults(): BenchResults {
  return {
    schema: "vxmesh-bench/1",
    machine: {
      cpuModel: "Test CPU <fast> & co",
      cores: 2,
      kernel: "6.1.0-test",
      node: "v20.0.0",
      date: "2025-01-02T03:04:05.678Z",
      hostname: "lab",
      loadAvgStart: 0.1,
      loadAvgEnd: 0.2,
      tools: { iperf3: "3.12" },
    },
    config: {
      paths: ["kernel", "vxmesh", "fastd"],
      scenarios: ["tcp1", "tcp4", "udp64", "udp1400", "rtt"],
      seconds: 5,
      repeat: 3,
      daemonArgs: [],
      udpGenerator: "2 × test senders",
      rttMethod: "test ping-pong",
      rttSamples: 2000,
      podCpus: null,
      command: "vxmesh bench",
    },
    durationS: 200,
    paths: [
      pathResult("kernel", {
        "tcp1.gbps": [12, 10, 11],
        "tcp4.gbps": [14, 13, 15],
        "udp64.kpps": [900, 1000, 1100],
        "udp64.loss_pct": [0, 0, 0],
        "udp1400.gbps": [8, 8, 8],
        "udp1400.loss_pct": [0.1, 0.2, 0.3],
        "rtt.p50_us": [40, 50, 60],
        "rtt.p99_us": [100, 100, 100],
      }),
      pathResult("vxmesh", {
        "tcp1.gbps": [5.5, 5.5, 5.5],
        "tcp1.cpu_pct": [90, 95, 100],
        "tcp1.rss_mb": [60, 61, 62],
        "tcp4.gbps": [7, 7, 7],
        "udp64.kpps": [500, 500, 500],
        "udp64.loss_pct": [50, 50, 50],
        "udp1400.gbps": [2, 2, 2],
        "udp1400.loss_pct": [10, 10, 10],
        "rtt.p50_us": [75, 75, 75],
        "rtt.p99_us": [300, 300, 300],
      }),
      pathResult("fastd", {
        "tcp1.gbps": [0.5, 0.5, 0.5],
        "tcp1.cpu_pct": [100, 100, 100],
        "tcp1.rss_mb": [4, 4, 4],
        "tcp4.gbps": [0.6, 0.6, 0.6],
        "udp64.kpps": [100],
        "udp64.loss_pct": [80],
        "udp1400.gbps": [0.4],
        "udp1400.loss_pct": [60],
        "rtt.p50_us": [150, 150],
      }, { rtt: ["repetition 3: rtt client exited 1"] }),
    ],
  };
}

function all(el: XmlElement, pred: (e: XmlElement) => boolean): XmlElement[] {
  const out: XmlElement[] = [];
  const walk = (e: XmlElement): void => {
    if (pred(e)) out.push(e);
    e.children.forEach(walk);
  };
  walk(el);
  return out;
}

// ---------------------------------------------------------------------------------------------

describe("bench statistics", () => {
  it("median: middle value, mean of the middle two, null for none, ignores non-finite", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([7])).toBe(7);
    expect(median([])).toBeNull();
    expect(median([NaN, Infinity, 5, 1])).toBe(3);
    const values = [5, 3, 9];
    median(values);
    expect(values).toEqual([5, 3, 9]); // input not reordered
  });

  it("percentile: nearest rank", () => {
    const v = Array.from({ length: 100 }, (_, i) => 100 - i); // 100 … 1
    expect(percentile(v, 50)).toBe(50);
    expect(percentile(v, 99)).toBe(99);
    expect(percentile(v, 100)).toBe(100);
    expect(percentile(v, 0)).toBe(1);
    expect(percentile([10, 20, 30], 50)).toBe(20);
    expect(percentile([10, 20, 30], 99)).toBe(30);
    expect(percentile([], 50)).toBeNull();
  });

  it("ratio: value ÷ baseline, null when either is missing or the baseline is not positive", () => {
    expect(ratio(5, 10)).toBe(0.5);
    expect(ratio(0, 10)).toBe(0);
    expect(ratio(5, 0)).toBeNull();
    expect(ratio(5, -1)).toBeNull();
    expect(ratio(null, 10)).toBeNull();
    expect(ratio(5, undefined)).toBeNull();
    expect(ratio(NaN, 1)).toBeNull();
  });

  it("ratioToBaseline uses the medians of both paths", () => {
    const r = sampleResults();
    expect(ratioToBaseline(r, "vxmesh", { scenario: "tcp1", key: "gbps" })).toBeCloseTo(0.5);
    expect(ratioToBaseline(r, "kernel", { scenario: "tcp1", key: "gbps" })).toBe(1);
    expect(ratioToBaseline(r, "vxmesh", { scenario: "rtt", key: "p50_us" })).toBeCloseTo(1.5);
    expect(ratioToBaseline(r, "vxmesh", { scenario: "tcp1", key: "cpu_pct" })).toBeNull(); // kernel has none
    expect(ratioToBaseline(r, "fastd", { scenario: "rtt", key: "p99_us" })).toBeNull(); // fastd has none
  });

  it("niceCeil rounds up to 1, 2, 2.5 or 5 × 10^k", () => {
    expect(niceCeil(0.7)).toBe(1);
    expect(niceCeil(1)).toBe(1);
    expect(niceCeil(1.2)).toBe(2);
    expect(niceCeil(2.2)).toBe(2.5);
    expect(niceCeil(3)).toBe(5);
    expect(niceCeil(6)).toBe(10);
    expect(niceCeil(0.03)).toBeCloseTo(0.05);
  });
});

describe("bench Markdown table", () => {
  it("has a column per path and a ratio column after every path but the kernel", () => {
    const table = renderTable(sampleResults());
    const rows = table.trimEnd().split("\n").map((l) => l.split("|").slice(1, -1).map((c) => c.trim()));
    expect(rows[0]).toEqual(["figure", "unit", "kernel", "vxmesh", "vxmesh ÷ kernel", "fastd", "fastd ÷ kernel"]);
    expect(rows[1]).toEqual(["---", "---", "---:", "---:", "---:", "---:", "---:"]);
    expect(rows).toHaveLength(2 + FIGURES.length);
    for (const r of rows) expect(r).toHaveLength(7);

    const row = (label: string): string[] => rows.find((r) => r[0] === label) as string[];
    expect(row("tcp1 — one TCP stream")).toEqual(["tcp1 — one TCP stream", "Gbit/s", "11.00", "5.50", "0.50×", "0.50", "0.045×"]);
    expect(row("tcp1 — daemon CPU (busier node)").slice(2)).toEqual(["n/a", "95", "–", "100", "–"]);
    expect(row("udp64 — 64-byte UDP received").slice(2)).toEqual(["1000", "500", "0.50×", "100", "0.10×"]);
    expect(row("udp64 — loss (offered without limit)").slice(2)).toEqual(["0.0", "50.0", "–", "80.0", "–"]); // no ratio for loss
    expect(row("rtt — round trip p50").slice(2)).toEqual(["50", "75", "1.50×", "150", "3.00×"]);
    // fastd's p99 is missing and its rtt scenario recorded an error.
    expect(row("rtt — round trip p99").slice(2)).toEqual(["100", "300", "3.00×", "failed", "–"]);
  });

  it("shows only the figures of the scenarios that ran, and a failed path as failed", () => {
    const r = sampleResults();
    r.config.scenarios = ["tcp1"];
    r.paths[2] = { path: "fastd", error: "setup failed: no fastd", scenarios: {} };
    const rows = renderTable(r).trimEnd().split("\n");
    expect(rows).toHaveLength(2 + 3);
    expect(rows[2]).toContain("| failed | – |");
    const md = renderMarkdown(r);
    expect(md).toContain("- fastd: setup failed: no fastd");
    expect(md).toContain("Test CPU <fast> & co, 2 cores, Linux 6.1.0-test, Node.js v20.0.0");
    expect(md).toContain("`vxmesh bench`");
    expect(md).toContain(renderTable(r).trimEnd());
    expect(md).not.toContain("pods pinned");
    r.config.podCpus = [1, 0];
    expect(renderMarkdown(r)).toContain("- pods pinned: the sending pod's processes to CPU 1, the receiving pod's to CPU 0 (`--pod-cpus`), on every path");
  });

  it("a run without the kernel path has no ratios", () => {
    const r = sampleResults();
    r.paths = r.paths.filter((p) => p.path !== "kernel");
    r.config.paths = ["vxmesh", "fastd"];
    const rows = renderTable(r).trimEnd().split("\n").map((l) => l.split("|").slice(1, -1).map((c) => c.trim()));
    expect(rows[0]).toEqual(["figure", "unit", "vxmesh", "vxmesh ÷ kernel", "fastd", "fastd ÷ kernel"]);
    for (const row of rows.slice(2)) {
      expect(row[3]).toBe("–");
      expect(row[5]).toBe("–");
    }
  });
});

describe("bench SVG chart", () => {
  it("is well-formed, self-contained SVG", () => {
    const svg = renderSvg(sampleResults());
    const root = parseXml(svg);
    expect(root.name).toBe("svg");
    expect(root.attrs["xmlns"]).toBe("http://www.w3.org/2000/svg");
    expect(Number(root.attrs["width"])).toBeGreaterThan(0);
    expect(Number(root.attrs["height"])).toBeGreaterThan(0);
    expect(svg).not.toMatch(/(href|src)=/); // nothing external
    expect(svg).toContain("Test CPU &lt;fast&gt; &amp; co"); // escaped
  });

  it("draws one bar per path and charted figure, heights proportional to the ratio within a panel", () => {
    const r = sampleResults();
    const root = parseXml(renderSvg(r));
    const panels = all(root, (e) => e.name === "g" && e.attrs["class"] === "panel");
    expect(panels).toHaveLength(2);
    const charted = FIGURES.filter((f) => f.chart);
    let bars = 0;
    for (const panel of panels) {
      const rects = all(panel, (e) => e.name === "rect" && e.attrs["class"] === "bar");
      const scale = new Set<string>();
      for (const b of rects) {
        const ratioAttr = Number(b.attrs["data-ratio"]);
        const h = Number(b.attrs["height"]);
        const expected = ratioToBaseline(r, b.attrs["data-path"] as PathName, { scenario: (b.attrs["data-figure"] as string).split(".")[0] as ScenarioName, key: (b.attrs["data-figure"] as string).split(".")[1] as string });
        expect(ratioAttr).toBeCloseTo(expected as number, 9);
        expect(h).toBeGreaterThan(0);
        // Same pixels per unit of ratio for every bar of the panel (heights rounded to 0.001 px).
        scale.add((h / ratioAttr).toFixed(1));
        // Bars stand on the same baseline.
        expect(Number(b.attrs["y"]) + h).toBeCloseTo(Number(rects[0]?.attrs["y"]) + Number(rects[0]?.attrs["height"]), 2);
      }
      expect(scale.size).toBe(1);
      // The kernel's bars are all exactly at ratio 1.
      for (const b of rects.filter((x) => x.attrs["data-path"] === "kernel")) expect(Number(b.attrs["data-ratio"])).toBe(1);
      bars += rects.length;
    }
    // 3 paths × 6 charted figures, less fastd's missing rtt p99.
    expect(bars).toBe(3 * charted.length - 1);
    const vx = all(root, (e) => e.attrs["data-path"] === "vxmesh" && e.attrs["data-figure"] === "tcp1.gbps")[0] as XmlElement;
    const kn = all(root, (e) => e.attrs["data-path"] === "kernel" && e.attrs["data-figure"] === "tcp1.gbps")[0] as XmlElement;
    expect(Number(vx.attrs["height"]) / Number(kn.attrs["height"])).toBeCloseTo(0.5, 3);
  });

  it("renders an empty run without throwing", () => {
    const r = sampleResults();
    r.paths = [];
    r.config.scenarios = [];
    expect(() => parseXml(renderSvg(r))).not.toThrow();
  });
});

describe("bench parsers", () => {
  it("reads utime + stime from /proc/<pid>/stat, even with spaces and parentheses in the name", () => {
    const stat = "1234 (node (worker) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 11 0 500 1000000 5000";
    expect(parseProcStatTicks(stat)).toBe(325);
    expect(() => parseProcStatTicks("garbage")).toThrow();
  });

  it("reads the CPU a task last ran on (field 39) from /proc/<pid>/stat", () => {
    const stat = "1234 (node (worker) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 11 0 500 1000000 5000 "
      + "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    expect(parseProcStatCpu(stat)).toBe(1);
    expect(() => parseProcStatCpu("1234 (short) S 1 2 3")).toThrow();
    expect(parseProcStatCpu(readFileSync("/proc/self/stat", "utf8"))).toBeGreaterThanOrEqual(0);
    // The command name, parentheses and spaces included, tells a launcher from the program.
    expect(procStatComm(stat)).toBe("node (worker) x");
    expect(procStatComm("99 (taskset) R 1 2 3")).toBe("taskset");
  });

  it("--pod-cpus takes two CPUs of this machine, the sending pod's first", () => {
    const parse = cpuPair(2);
    expect(parse("1,0")).toEqual({ ok: true, value: [1, 0] });
    expect(parse(" 0 , 0 ")).toEqual({ ok: true, value: [0, 0] });
    const expected = "two CPU numbers from 0 to 1, the sending pod's first (e.g. 0,1)";
    for (const bad of ["2,0", "0,2", "1", "0,1,0", "a,b", "-1,0", "0.5,1", ""]) expect(parse(bad)).toEqual({ ok: false, error: expected });
    expect(cpuPair(1)("0,0")).toEqual({ ok: true, value: [0, 0] });
  });

  it("reads VmRSS from /proc/<pid>/status", () => {
    expect(parseVmRssKb("Name:\tnode\nVmPeak:\t 999 kB\nVmRSS:\t   61440 kB\nThreads:\t11\n")).toBe(61440);
    expect(() => parseVmRssKb("Name:\tkthread\n")).toThrow();
  });

  it("reads interface counters from ip -s -j link", () => {
    const json = JSON.stringify([{ ifname: "eth0", stats64: { rx: { bytes: 1, packets: 10 }, tx: { bytes: 2, packets: 20, dropped: 3 } } }]);
    expect(parseIpLinkStats(json)).toEqual({ rxPackets: 10, txPackets: 20, txDropped: 3 });
  });

  it("counts datagrams that reached the UDP layer from /proc/net/snmp", () => {
    const snmp = [
      "Ip: Forwarding DefaultTTL",
      "Ip: 1 64",
      "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors",
      "Udp: 1200 3 55 7 50 0 5 0 0",
      "UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors",
      "UdpLite: 0 0 0 0 0 0 0 0 0",
    ].join("\n");
    expect(parseUdpDatagramsIn(snmp)).toBe(1250);
    expect(() => parseUdpDatagramsIn("Ip: Forwarding\nIp: 1\n")).toThrow(/InDatagrams/);
  });

  it("computes UDP rates and loss over a window", () => {
    const c = (tx: number, drop = 0): { rxPackets: number; txPackets: number; txDropped: number } => ({ rxPackets: 0, txPackets: tx, txDropped: drop });
    const r = udpRates(1000, 201_000, c(5000), c(245_000, 10_000), 2, 1400);
    expect(r.received).toBe(200_000);
    expect(r.sent).toBe(250_000);
    expect(r.pps).toBe(100_000);
    expect(r.gbps).toBeCloseTo(1.12, 6);
    expect(r.lossPct).toBeCloseTo(20, 6);
  });

  it("parses fastd's generated keys and writes a null-method TAP config", () => {
    const k = parseGeneratedKey(`Secret: ${"a".repeat(64)}\nPublic: ${"b".repeat(64)}\n`);
    expect(k).toEqual({ secret: "a".repeat(64), public: "b".repeat(64) });
    expect(() => parseGeneratedKey("nothing")).toThrow();
    const conf = fastdConfig({ ifName: "fastd0", mtu: 1450, bindIp: "192.0.2.11", port: 10000, secret: k.secret, peers: [{ name: "n2", underlayIp: "192.0.2.12", port: 10000, publicKey: k.public }] });
    expect(conf).toContain('method "null";');
    expect(conf).toContain("mode tap;");
    expect(conf).toContain("bind 192.0.2.11:10000;");
    expect(conf).toContain("mtu 1450;");
    expect(conf).toMatch(/peer "n2" \{\n {2}remote 192\.0\.2\.12:10000;\n {2}key "b{64}";\n\}/);
  });
});
