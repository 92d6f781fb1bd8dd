// /metrics, /healthz and /readyz served by running daemons in the lab (root, namespaces, the
// built CLI). The rendering itself is tested without them in test/metrics.test.ts.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "../bench/cluster";
import { Lab, waitFor } from "../bench/lab";
import { expectRequiredFamilies, parsePrometheus } from "./prometheus";

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
