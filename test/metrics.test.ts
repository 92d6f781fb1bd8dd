import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "../bench/cluster";
import { Lab, waitFor } from "../bench/lab";
import type { DaemonStatus } from "../daemon/daemon";
import type { KernelChanges } from "../daemon/dataplane";
import { BATCH_BUCKETS, BatchSource, countBatch, newCounterView, snapshotBatchHistogram, type BatchHistogram } from "../encap/counters";
import { renderMetrics } from "../daemon/metrics";

interface Family {
  type: "counter" | "gauge" | "histogram" | undefined;
  help: string;
}

interface Exposition {
  families: Map<string, Family>;
  /** Sample name + label text → value, e.g. `vxmesh_drops_total{reason="runt"}`. */
  samples: Map<string, number>;
}

/**
 * Parses Prometheus text exposition (format 0.0.4) strictly: every family has # HELP and
 * # TYPE before its samples and its samples are contiguous; every sample line is well-formed
 * and belongs to the family just typed; names carry the vxmesh_ prefix; a histogram has, per
 * label set, _bucket lines with le labels in increasing order ending at +Inf, cumulative
 * (non-decreasing) counts, then _sum and a _count equal to the +Inf bucket.
 */
function parsePrometheus(text: string): Exposition {
  const families = new Map<string, Family>();
  const samples = new Map<string, number>();
  let current: string | undefined;
  let help: string | undefined;
  const histograms = new Map<string, { les: number[]; counts: number[]; sum?: number; count?: number }>();
  expect(text.endsWith("\n"), "the text ends with a newline").toBe(true);
  for (const line of text.slice(0, -1).split("\n")) {
    const h = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (h !== null) {
      expect(families.has(h[1] as string), `family ${h[1]} appears once`).toBe(false);
      help = h[1];
      families.set(h[1] as string, { type: undefined, help: h[2] as string });
      current = undefined;
      continue;
    }
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$/.exec(line);
    if (t !== null) {
      expect(t[1], "# TYPE follows the # HELP of the same family").toBe(help);
      (families.get(t[1] as string) as Family).type = t[2] as Family["type"];
      current = t[1];
      continue;
    }
    expect(line.startsWith("#"), `unexpected comment: ${line}`).toBe(false);
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?\d+(\.\d+)?(e[+-]?\d+)?|\+Inf|NaN)$/.exec(line);
    expect(m, `sample line: ${line}`).not.toBeNull();
    const [, name, labels = ""] = m as RegExpExecArray;
    const value = Number((m as RegExpExecArray)[5]);
    expect(current, `${line}: a sample right after its family's # TYPE and other samples of it`).toBeDefined();
    const fam = families.get(current as string) as Family;
    expect((name as string).startsWith("vxmesh_"), name).toBe(true);
    if (fam.type === "histogram") {
      const suffix = (name as string).slice((current as string).length);
      expect(name!.startsWith(current as string) && ["_bucket", "_sum", "_count"].includes(suffix), `${name} belongs to histogram ${current}`).toBe(true);
      const le = /(?:^\{|,)le="([^"]*)"/.exec(labels);
      const series = `${current}${labels.replace(/,?le="[^"]*"/, "").replace("{,", "{").replace("{}", "")}`;
      const hist = histograms.get(series) ?? { les: [], counts: [] };
      histograms.set(series, hist);
      if (suffix === "_bucket") {
        expect(le, `${line} has an le label`).not.toBeNull();
        expect(hist.sum, `${series}: buckets come before _sum`).toBeUndefined();
        hist.les.push(Number((le as RegExpExecArray)[1] === "+Inf" ? Infinity : (le as RegExpExecArray)[1]));
        hist.counts.push(value);
      } else if (suffix === "_sum") hist.sum = value;
      else hist.count = value;
    } else {
      expect(name, `sample ${name} belongs to family ${current}`).toBe(current);
    }
    samples.set(name + labels, value);
  }
  for (const [name, f] of families) expect(f.type, `${name} has a # TYPE line`).toBeDefined();
  for (const [series, h] of histograms) {
    expect(h.les.length, `${series} has buckets`).toBeGreaterThan(0);
    expect(h.les.at(-1), `${series}'s last bucket is +Inf`).toBe(Infinity);
    for (let i = 1; i < h.les.length; i++) {
      expect(h.les[i]!, `${series}: le increases`).toBeGreaterThan(h.les[i - 1]!);
      expect(h.counts[i]!, `${series}: bucket counts are cumulative`).toBeGreaterThanOrEqual(h.counts[i - 1]!);
    }
    expect(h.sum, `${series} has _sum`).toBeDefined();
    expect(h.count, `${series}: _count equals the +Inf bucket`).toBe(h.counts.at(-1));
  }
  return { families, samples };
}

/** The families issue 6 asks for, by what they measure. */
const REQUIRED_FAMILIES: Record<string, string[]> = {
  "frames and bytes in and out": ["vxmesh_tap_frames_total", "vxmesh_tap_bytes_total", "vxmesh_underlay_datagrams_total", "vxmesh_underlay_bytes_total"],
  "drops by reason": ["vxmesh_drops_total"],
  "members by state": ["vxmesh_members"],
  "gossip messages and bytes": ["vxmesh_gossip_messages_total", "vxmesh_gossip_bytes_total"],
  "subnet lease state": ["vxmesh_subnet_lease"],
  "forwarder batch sizes": ["vxmesh_forwarder_batch_size"],
  "forwarder wake-ups": ["vxmesh_forwarder_wakeups_total"],
  "reconcile changes": ["vxmesh_reconcile_changes_total"],
};

function expectRequiredFamilies(e: Exposition): void {
  for (const [what, names] of Object.entries(REQUIRED_FAMILIES)) {
    for (const name of names) expect(e.families.has(name), `${what}: ${name}`).toBe(true);
  }
  expect(e.families.get("vxmesh_forwarder_batch_size")?.type).toBe("histogram");
}

/** A histogram as Forwarder.batchSizes() reports it, from raw per-bucket counts. */
function histogramOf(perBucket: number[], sum: number): BatchHistogram {
  let cumulative = 0;
  const buckets = BATCH_BUCKETS.map((le, i) => ({ le: String(le), count: (cumulative += perBucket[i] ?? 0) }));
  cumulative += perBucket[BATCH_BUCKETS.length] ?? 0;
  buckets.push({ le: "+Inf", count: cumulative });
  return { buckets, sum, count: cumulative };
}

function zeroChanges(): KernelChanges {
  return { route: { added: 0, removed: 0 }, neighbour: { added: 0, replaced: 0, removed: 0 } };
}

describe("Prometheus metrics", () => {
  it("renders every family of a status as valid exposition text", () => {
    const status: DaemonStatus = {
      node: "n1", mode: "gossip", ready: false, underlayIp: "192.0.2.11", subnet: null, vtepMac: "02:00:00:00:00:01",
      vni: 1, vxlanPort: 4789, tap: "vxmesh0", mtu: 1450,
      peers: [{ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", vtepMac: "02:00:00:00:00:02", path: "vxlan",
        traffic: { txFrames: 3, txBytes: 300, rxFrames: 4, rxBytes: 400 } }],
      counters: { tap_rx_frames: 5, tap_tx_frames: 7, udp_rx_datagrams: 9, drop_runt: 2, drop_wrong_vni: 1 },
      batchSizes: { tap: histogramOf([4, 0, 2, 0, 0, 0, 0, 0, 0, 1], 4 + 8 + 300), underlay: histogramOf([], 0) },
      kernelChanges: { change: { route: { added: 2, removed: 1 }, neighbour: { added: 2, replaced: 1, removed: 0 } }, repair: { ...zeroChanges(), route: { added: 1, removed: 0 } } },
      gossip: {
        members: [{ state: "alive" }, { state: "alive" }, { state: "dead" }], lease: { state: "claiming" }, subnetConflictsLost: 0,
        gossip: { datagramsIn: 1, datagramsOut: 2, streamsIn: 3, streamsOut: 4, bytesIn: 5, bytesOut: 6, rejected: { auth: 1, "unknown-key": 2, truncated: 0, version: 0 } },
      },
    };
    const e = parsePrometheus(renderMetrics(status));
    expectRequiredFamilies(e);
    const m = e.samples;
    expect(m.get('vxmesh_tap_frames_total{direction="out"}')).toBe(7);
    expect(m.get('vxmesh_drops_total{reason="runt"}')).toBe(2);
    expect(m.get('vxmesh_members{state="alive"}')).toBe(2);
    expect(m.get('vxmesh_members{state="dead"}')).toBe(1);
    expect(m.get('vxmesh_gossip_rejected_total{reason="unknown-key"}')).toBe(2);
    expect(m.get('vxmesh_gossip_bytes_total{direction="out"}')).toBe(6);
    expect(m.get('vxmesh_subnet_lease{state="claiming"}')).toBe(1);
    expect(m.get("vxmesh_ready")).toBe(0);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="1"}')).toBe(4);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="4"}')).toBe(6);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="256"}')).toBe(6);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="+Inf"}')).toBe(7);
    expect(m.get('vxmesh_forwarder_batch_size_count{source="tap"}')).toBe(7);
    expect(m.get('vxmesh_forwarder_batch_size_sum{source="tap"}')).toBe(312);
    expect(m.get('vxmesh_forwarder_batch_size_count{source="underlay"}')).toBe(0);
    expect(m.get('vxmesh_reconcile_changes_total{kind="route",action="added",trigger="change"}')).toBe(2);
    expect(m.get('vxmesh_reconcile_changes_total{kind="neighbour",action="replaced",trigger="change"}')).toBe(1);
    expect(m.get('vxmesh_reconcile_changes_total{kind="route",action="added",trigger="repair"}')).toBe(1);
    expect(m.get('vxmesh_peer_frames_total{peer="n2",direction="out"}')).toBe(3);
    expect(m.get('vxmesh_peer_bytes_total{peer="n2",direction="in"}')).toBe(400);
  });

  it("the parser rejects what Prometheus would: a sample without its family, a bad bucket order, a count that is not the +Inf bucket", () => {
    const ok = "# HELP vxmesh_x h\n# TYPE vxmesh_x histogram\nvxmesh_x_bucket{le=\"1\"} 1\nvxmesh_x_bucket{le=\"+Inf\"} 2\nvxmesh_x_sum 3\nvxmesh_x_count 2\n";
    expect(() => parsePrometheus(ok)).not.toThrow();
    expect(() => parsePrometheus(ok.replace("# HELP vxmesh_x h\n# TYPE vxmesh_x histogram\n", ""))).toThrow();
    expect(() => parsePrometheus(ok.replace('le="1"} 1', 'le="1"} 3'))).toThrow(/cumulative/);
    expect(() => parsePrometheus(ok.replace("vxmesh_x_count 2", "vxmesh_x_count 5"))).toThrow(/\+Inf bucket/);
    expect(() => parsePrometheus(ok.replace('vxmesh_x_bucket{le="+Inf"} 2\n', ""))).toThrow(/\+Inf/);
    expect(() => parsePrometheus("# HELP vxmesh_y h\n# TYPE vxmesh_y counter\nvxmesh_z 1\n")).toThrow(/belongs to family/);
  });

  it("the forwarder's batch-size counters land in the right buckets (⌈log2 n⌉), with the sum", () => {
    const c = newCounterView();
    for (const n of [1, 2, 3, 4, 5, 64, 65, 256, 300]) countBatch(c, BatchSource.Underlay, n);
    const h = snapshotBatchHistogram(c, BatchSource.Underlay);
    const at = (le: string): number | undefined => h.buckets.find((b) => b.le === le)?.count;
    expect([at("1"), at("2"), at("4"), at("8"), at("64"), at("128"), at("256"), at("+Inf")]).toEqual([1, 2, 4, 5, 6, 7, 8, 9]);
    expect(h.sum).toBe(1 + 2 + 3 + 4 + 5 + 64 + 65 + 256 + 300);
    expect(h.count).toBe(9);
    expect(snapshotBatchHistogram(c, BatchSource.Tap).count).toBe(0);
  });
});

describe("metrics, /healthz and /readyz from running daemons", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ pods: 1 }, { pods: 1 }] });
    await lab.addNode({ overlay: "vxmesh" });
    cluster = new Cluster(lab);
    const seed = lab.node("n1");
    await cluster.start(seed, { gossip: { seed } });
    await cluster.start(lab.node("n2"), { gossip: { seed } });
  });

  afterAll(async () => {
    try { await cluster?.stopAll(); } finally { await lab?.teardown(); }
  });

  /** GET on the daemon's metrics address inside a node's namespace (its own loopback). */
  async function get(node: string, path: string): Promise<{ status: number; body: string }> {
    const l = lab as Lab;
    const r = await l.exec(l.node(node), [process.execPath, "-e",
      `fetch("http://127.0.0.1:9464${path}").then(async (r) => console.log(JSON.stringify({ status: r.status, body: await r.text() })))`]);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as { status: number; body: string };
  }

  it("serve the cluster's state as Prometheus text, healthy and ready", async () => {
    const l = lab as Lab;
    await waitFor(async () => (await cluster!.daemon("n1").status()).peers.length === 1, { timeoutMs: 15_000, what: "n1 to see n2" });
    expect(await l.ping(l.node("n1").pods[0]!, l.node("n2").pods[0]!.ip, { count: 2 })).toBe(true);
    const metrics = await get("n1", "/metrics");
    expect(metrics.status).toBe(200);
    const e = parsePrometheus(metrics.body);
    expectRequiredFamilies(e);
    const m = e.samples;
    expect(m.get('vxmesh_members{state="alive"}')).toBe(2);
    expect(m.get("vxmesh_peers")).toBe(1);
    expect(m.get('vxmesh_subnet_lease{state="confirmed"}')).toBe(1);
    expect(m.get('vxmesh_underlay_datagrams_total{direction="in"}')).toBeGreaterThan(0);
    expect(m.get('vxmesh_gossip_messages_total{kind="datagram",direction="out"}')).toBeGreaterThan(0);
    expect(m.get('vxmesh_gossip_bytes_total{direction="in"}')).toBeGreaterThan(0);
    // The pings went through the forwarder in batches, to and from n2.
    expect(m.get('vxmesh_forwarder_batch_size_count{source="tap"}')).toBeGreaterThan(0);
    expect(m.get('vxmesh_forwarder_batch_size_count{source="underlay"}')).toBeGreaterThan(0);
    const wakeups = (m.get('vxmesh_forwarder_wakeups_total{how="sleep"}') ?? 0) + (m.get('vxmesh_forwarder_wakeups_total{how="busy_poll"}') ?? 0);
    expect(wakeups).toBeGreaterThanOrEqual(2);
    expect(m.get('vxmesh_peer_frames_total{peer="n2",direction="out"}')).toBeGreaterThanOrEqual(2);
    expect(m.get('vxmesh_peer_frames_total{peer="n2",direction="in"}')).toBeGreaterThanOrEqual(2);
    // Routing to n2 took one route and one neighbour.
    expect(m.get('vxmesh_reconcile_changes_total{kind="route",action="added",trigger="change"}')).toBe(1);
    expect(m.get('vxmesh_reconcile_changes_total{kind="neighbour",action="added",trigger="change"}')).toBe(1);
    expect(await get("n1", "/healthz")).toEqual({ status: 200, body: "ok\n" });
    expect(await get("n1", "/readyz")).toEqual({ status: 200, body: "ready\n" });
    expect((await get("n1", "/nope")).status).toBe(404);
  });

  it("/readyz says 503 while the node's subnet claim is not confirmed", async () => {
    const l = lab as Lab;
    await cluster!.start(l.node("n3"), { gossip: { seed: l.node("n1"), claim: true, claimWaitS: 600 } });
    await waitFor(async () => ((await cluster!.daemon("n3").status()).gossip as { lease: unknown }).lease !== null,
      { timeoutMs: 15_000, what: "n3 to claim a subnet" });
    expect(await get("n3", "/readyz")).toEqual({ status: 503, body: "not ready\n" });
    expect(await get("n3", "/healthz")).toEqual({ status: 200, body: "ok\n" });
    expect(parsePrometheus((await get("n3", "/metrics")).body).samples.get("vxmesh_ready")).toBe(0);
  });
});
