import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "../bench/cluster";
import { Lab, waitFor } from "../bench/lab";
import type { DaemonStatus } from "../daemon/daemon";
import { renderMetrics } from "../daemon/metrics";

/** Parses Prometheus text exposition: every sample line well-formed, every family typed. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const typed = new Set<string>();
  for (const line of text.trimEnd().split("\n")) {
    const type = /^# TYPE (\S+) (counter|gauge)$/.exec(line);
    if (type !== null) { typed.add(type[1] as string); continue; }
    if (line.startsWith("# HELP ")) continue;
    const m = /^([a-z_][a-z0-9_]*)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?\d+(\.\d+)?(e[+-]?\d+)?)$/.exec(line);
    expect(m, `sample line: ${line}`).not.toBeNull();
    const name = (m as RegExpExecArray)[1] as string;
    expect(typed.has(name), `${name} has a # TYPE line`).toBe(true);
    expect(name.startsWith("vxmesh_"), name).toBe(true);
    samples.set(name + ((m as RegExpExecArray)[2] ?? ""), Number((m as RegExpExecArray)[4]));
  }
  return samples;
}

describe("Prometheus metrics", () => {
  it("renders every family of a status as valid exposition text", () => {
    const status: DaemonStatus = {
      node: "n1", mode: "gossip", ready: false, underlayIp: "192.0.2.11", subnet: null, vtepMac: "02:00:00:00:00:01",
      vni: 1, vxlanPort: 4789, tap: "vxmesh0", mtu: 1450, peers: [],
      counters: { tap_rx_frames: 5, tap_tx_frames: 7, udp_rx_datagrams: 9, drop_runt: 2, drop_wrong_vni: 1 },
      gossip: {
        members: [{ state: "alive" }, { state: "alive" }, { state: "dead" }], lease: { state: "claiming" }, subnetConflictsLost: 0,
        gossip: { datagramsIn: 1, datagramsOut: 2, streamsIn: 3, streamsOut: 4, bytesIn: 5, bytesOut: 6, rejected: { auth: 1, "unknown-key": 2, truncated: 0, version: 0 } },
      },
    };
    const m = parsePrometheus(renderMetrics(status));
    expect(m.get('vxmesh_tap_frames_total{direction="out"}')).toBe(7);
    expect(m.get('vxmesh_drops_total{reason="runt"}')).toBe(2);
    expect(m.get('vxmesh_members{state="alive"}')).toBe(2);
    expect(m.get('vxmesh_members{state="dead"}')).toBe(1);
    expect(m.get('vxmesh_gossip_rejected_total{reason="unknown-key"}')).toBe(2);
    expect(m.get('vxmesh_subnet_lease{state="claiming"}')).toBe(1);
    expect(m.get("vxmesh_ready")).toBe(0);
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
    const m = parsePrometheus(metrics.body);
    expect(m.get('vxmesh_members{state="alive"}')).toBe(2);
    expect(m.get("vxmesh_peers")).toBe(1);
    expect(m.get('vxmesh_subnet_lease{state="confirmed"}')).toBe(1);
    expect(m.get('vxmesh_underlay_datagrams_total{direction="in"}')).toBeGreaterThan(0);
    expect(m.get('vxmesh_gossip_messages_total{kind="datagram",direction="out"}')).toBeGreaterThan(0);
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
    expect(parsePrometheus((await get("n3", "/metrics")).body).get("vxmesh_ready")).toBe(0);
  });
});
