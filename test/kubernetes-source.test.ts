// The Kubernetes source against the API double (bench/kube-api-double.ts, itself checked with the
// real kubectl in test/kube-api-double.test.ts) through the real HTTPS client, with an in-memory
// data plane: what the data plane is told, what is written on the Node, readiness and its
// reasons, 410 Gone, the API going away and coming back, refused credentials. No root, no
// namespaces: loopback only. The same source in real daemons: test/e2e-kubernetes.test.ts.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Peer } from "../encap/fdb";
import { formatIpv4, formatSubnet, parseIpv4, parseSubnet, vtepMacFor, type Subnet, type Vni } from "../encap/types";
import { ANNOTATIONS, encodeEndpoint } from "../control/kube/annotations";
import { HttpsKubeApi } from "../control/kube/client";
import { CONTROL_PROTOCOL_VERSION } from "../control/node-record";
import { KubeApiDouble, nodeObject, type NodeJson } from "../bench/kube-api-double";
import { makeTestPki, type TestPki } from "../bench/kube-pki";
import { waitFor } from "../bench/lab";
import { systemClock } from "../daemon/clock";
import { KubernetesSource } from "../daemon/kubernetes-source";
import type { KubeMemory } from "../daemon/lease-file";
import type { PeerEvents } from "../daemon/peer-source";

const log = pino({ level: "silent" });
const SA = "system:serviceaccount:vxmesh-system:vxmesh";
const NEEDED = ["get nodes", "list nodes", "watch nodes", "patch nodes/status"];

function subnet(text: string): Subnet {
  const r = parseSubnet(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function ip(text: string): number {
  const r = parseIpv4(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** The annotations node `i` of the test cluster publishes. */
function endpointOf(i: number, underlay = `192.0.2.${10 + i}`): Record<string, string> {
  return encodeEndpoint({ protocol: CONTROL_PROTOCOL_VERSION, underlayIp: ip(underlay) as never, vtepMac: vtepMacFor(`n${i}`), vni: 1 as Vni, vxlanPort: 4789 });
}

/** A running vxmesh node's Node: its podCIDR and our annotations. */
function meshNode(i: number, o: { podCIDR?: string; underlay?: string } = {}): NodeJson {
  return nodeObject(`n${i}`, { podCIDR: o.podCIDR ?? `10.244.${i}.0/24`, internalIP: `192.0.2.${10 + i}`, annotations: endpointOf(i, o.underlay) });
}

/** What the data plane was told, in order. */
class Recorder implements PeerEvents {
  subnets: (Subnet | undefined)[] = [];
  peerSets: Peer[][] = [];
  fatals: string[] = [];
  async subnetChanged(s: Subnet | undefined): Promise<void> {
    this.subnets.push(s);
  }
  async peersChanged(peers: readonly Peer[]): Promise<void> {
    this.peerSets.push([...peers]);
  }
  fatal(message: string): void {
    this.fatals.push(message);
  }
  get peers(): string[] {
    return (this.peerSets.at(-1) ?? []).map((p) => `${p.name} ${formatSubnet(p.subnet)} ${formatIpv4(p.underlayIp)}`);
  }
}

let dir: string;
let pki: TestPki;
let api: KubeApiDouble;
const running: KubernetesSource[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "vxmesh-kube-source-"));
  pki = makeTestPki(join(dir, "pki"), { ips: ["127.0.0.1"] });
  api = await KubeApiDouble.start({
    pki, bookmarkIntervalMs: 200,
    tokens: { good: { user: SA, allow: NEEDED }, readonly: { user: "reader", allow: ["get nodes", "list nodes", "watch nodes"] } },
  });
});

afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
  if (!api.running) await api.start();
  for (const n of api.nodes()) api.deleteNode((n["metadata"] as { name: string }).name);
});

afterAll(async () => {
  await api?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Node n1's source, started, against the double with `token`. */
async function startSource(o: { token?: string; clusterCidr?: string; memory?: KubeMemory } = {}): Promise<{ source: KubernetesSource; events: Recorder; remembered: KubeMemory[] }> {
  const client = HttpsKubeApi.create({ server: api.url, ca: { kind: "pem", pem: pki.caPem }, auth: { kind: "token", token: o.token ?? "good" } });
  if (!client.ok) throw new Error(client.error);
  const remembered: KubeMemory[] = [];
  const source = new KubernetesSource({
    nodeName: "n1", clusterCidr: subnet(o.clusterCidr ?? "10.244.0.0/16"), credentialsFrom: "a test token", podCidrs: [],
    endpoint: { protocol: CONTROL_PROTOCOL_VERSION, underlayIp: ip("192.0.2.11") as never, vtepMac: vtepMacFor("n1"), vni: 1 as Vni, vxlanPort: 4789 },
  }, { api: client.value, clock: systemClock, random: Math.random, log, memory: { read: () => o.memory ?? remembered.at(-1), write: (m) => remembered.push(m) } });
  running.push(source);
  const events = new Recorder();
  await source.start(events);
  return { source, events, remembered };
}

const annotationsOf = (name: string): Record<string, string> =>
  ((api.node(name)?.["metadata"] as { annotations?: Record<string, string> }).annotations ?? {});
const conditionsOf = (name: string): { type: string; status: string; reason?: string }[] =>
  ((api.node(name)?.["status"] as { conditions?: { type: string; status: string; reason?: string }[] }).conditions ?? []);

describe("the Kubernetes source, against the API double", () => {
  it("takes the Node's podCIDR, publishes its endpoint, routes the annotated Nodes and sets NetworkUnavailable=False", async () => {
    api.upsertNode(nodeObject("n1", { podCIDR: "10.244.1.0/24", internalIP: "192.0.2.11" }));
    api.upsertNode(meshNode(2));
    api.upsertNode(meshNode(3));
    api.upsertNode(nodeObject("plain", { podCIDR: "10.244.9.0/24" }));
    api.upsertNode(nodeObject("fresh", {}));
    const { source, events, remembered } = await startSource();
    await waitFor(() => source.ready, { what: "the source to be ready", timeoutMs: 10_000, intervalMs: 20 });
    expect(events.subnets.map((s) => (s === undefined ? "-" : formatSubnet(s)))).toEqual(["10.244.1.0/24"]);
    expect(remembered.map((m) => formatSubnet(m.subnet))).toContain("10.244.1.0/24");
    expect(events.peers).toEqual(["n2 10.244.2.0/24 192.0.2.12", "n3 10.244.3.0/24 192.0.2.13"]);
    expect(annotationsOf("n1")).toMatchObject(endpointOf(1));
    const conditions = conditionsOf("n1");
    expect(conditions.find((c) => c.type === "NetworkUnavailable")).toMatchObject({ status: "False", reason: "VxmeshIsUp" });
    // Strategic merge: kubelet's conditions survive ours.
    expect(conditions.find((c) => c.type === "Ready")?.status).toBe("True");
    const k = source.status().kubernetes;
    expect(k?.skipped.map((s) => [s.name, s.reason])).toEqual([["fresh", "no_pod_cidr"], ["plain", "no_annotations"]]);
    expect(k?.watch.inSync).toBe(true);
    // One permission for writes: every patch went to nodes/status.
    const patches = api.requests.filter((r) => r.method === "PATCH");
    expect(patches.length).toBeGreaterThan(0);
    for (const p of patches) expect(p.path).toBe("/api/v1/nodes/n1/status");
  });

  it("follows Nodes added, changed and deleted", async () => {
    api.upsertNode(meshNode(1));
    api.upsertNode(meshNode(2));
    const { source, events } = await startSource();
    await waitFor(() => source.ready, { what: "ready", intervalMs: 20 });
    api.upsertNode(meshNode(4));
    await waitFor(() => events.peers.includes("n4 10.244.4.0/24 192.0.2.14"), { what: "n4 added", intervalMs: 20 });
    api.upsertNode(meshNode(2, { underlay: "192.0.2.42" }));
    await waitFor(() => events.peers.includes("n2 10.244.2.0/24 192.0.2.42"), { what: "n2's new underlay address", intervalMs: 20 });
    api.deleteNode("n4");
    await waitFor(() => !events.peers.some((p) => p.startsWith("n4 ")), { what: "n4 gone", intervalMs: 20 });
    expect(events.peers).toEqual(["n2 10.244.2.0/24 192.0.2.42"]);
  });

  it("stays not ready, saying why, until the Node gets a podCIDR", async () => {
    api.upsertNode(nodeObject("n1", { internalIP: "192.0.2.11" }));
    const { source, events } = await startSource();
    await waitFor(() => source.notReadyBecause?.includes("no spec.podCIDR"), { what: "the podCIDR reason", intervalMs: 20 });
    expect(source.notReadyBecause).toContain("--allocate-node-cidrs");
    // Its endpoint is published already, so peers route to it the moment it gets a podCIDR.
    await waitFor(() => annotationsOf("n1")[ANNOTATIONS.underlayIp] === "192.0.2.11", { what: "annotations", intervalMs: 20 });
    const node = api.node("n1") as NodeJson;
    api.upsertNode({ ...node, spec: { podCIDR: "10.244.7.0/24", podCIDRs: ["10.244.7.0/24"] } });
    await waitFor(() => source.ready, { what: "ready", intervalMs: 20 });
    expect(events.subnets.map((s) => formatSubnet(s as Subnet))).toEqual(["10.244.7.0/24"]);
  });

  it("gives up with a clear error when the podCIDR is outside --cluster-cidr", async () => {
    api.upsertNode(meshNode(1, { podCIDR: "10.99.1.0/24" }));
    const { events } = await startSource();
    await waitFor(() => events.fatals.length > 0, { what: "fatal", intervalMs: 20 });
    expect(events.fatals[0]).toMatch(/spec\.podCIDR 10\.99\.1\.0\/24, outside --cluster-cidr 10\.244\.0\.0\/16/);
    expect(events.subnets).toEqual([]);
  });

  it("lists again after 410 Gone and loses no later event", async () => {
    api.upsertNode(meshNode(1));
    api.upsertNode(meshNode(2));
    const { source, events } = await startSource();
    await waitFor(() => source.ready, { what: "ready", intervalMs: 20 });
    const lists = source.status().kubernetes?.counters.lists ?? 0;
    api.expireWatches();
    api.upsertNode(meshNode(5));
    await waitFor(() => events.peers.includes("n5 10.244.5.0/24 192.0.2.15"), { what: "n5 after the 410", intervalMs: 20 });
    // A watch resumed from a version compacted meanwhile is 410 too.
    api.dropWatches();
    api.upsertNode(meshNode(6));
    api.compact();
    await waitFor(() => events.peers.includes("n6 10.244.6.0/24 192.0.2.16"), { what: "n6 after compaction", intervalMs: 20 });
    const k = source.status().kubernetes;
    expect(k?.counters.relists).toBeGreaterThanOrEqual(2);
    expect(k?.counters.lists).toBeGreaterThanOrEqual(lists + 2);
    expect(events.peers).toEqual(["n2 10.244.2.0/24 192.0.2.12", "n5 10.244.5.0/24 192.0.2.15", "n6 10.244.6.0/24 192.0.2.16"]);
  });

  it("keeps the peers when the API goes away, says so, and resyncs when it returns", async () => {
    api.upsertNode(meshNode(1));
    api.upsertNode(meshNode(2));
    api.upsertNode(meshNode(3));
    const { source, events } = await startSource();
    await waitFor(() => source.ready, { what: "ready", intervalMs: 20 });
    const told = events.peerSets.length;
    await api.stop();
    await waitFor(() => source.notReadyBecause?.includes("lost the watch"), { what: "the lost watch", intervalMs: 20 });
    expect(source.notReadyBecause).toContain("the 2 peers last seen stay routed");
    expect(events.peerSets.length).toBe(told);
    // Changed while the API was away: seen once it is back.
    api.deleteNode("n3");
    await api.start();
    await waitFor(() => source.ready && events.peers.length === 1, { what: "resync", timeoutMs: 40_000, intervalMs: 50 });
    expect(events.peers).toEqual(["n2 10.244.2.0/24 192.0.2.12"]);
  });

  it("retries while the API is down at start", async () => {
    api.upsertNode(meshNode(1));
    await api.stop();
    const { source } = await startSource();
    await waitFor(() => source.notReadyBecause?.includes("cannot reach the API server"), { what: "the unreachable reason", intervalMs: 20 });
    await api.start();
    await waitFor(() => source.ready, { what: "ready after the API came up", timeoutMs: 40_000, intervalMs: 50 });
  });

  it("routes what a previous run saw while the API is down at start, not ready, until the first list replaces it", async () => {
    api.upsertNode(meshNode(1));
    api.upsertNode(meshNode(2));
    await api.stop();
    const old: KubeMemory = {
      subnet: subnet("10.244.1.0/24"),
      peers: [{ name: "n2", underlayIp: ip("192.0.2.12") as never, subnet: subnet("10.244.2.0/24"), vtepMac: vtepMacFor("n2"), path: "vxlan" },
        { name: "gone", underlayIp: ip("192.0.2.77") as never, subnet: subnet("10.244.77.0/24"), vtepMac: vtepMacFor("gone"), path: "vxlan" }],
    };
    const { source, events, remembered } = await startSource({ memory: old });
    // Applied before start returned: the data plane routes as before.
    expect(events.subnets.map((s) => formatSubnet(s as Subnet))).toEqual(["10.244.1.0/24"]);
    expect(events.peers).toEqual(["n2 10.244.2.0/24 192.0.2.12", "gone 10.244.77.0/24 192.0.2.77"]);
    expect(source.ready).toBe(false);
    await api.start();
    await waitFor(() => source.ready, { what: "ready after the API came up", timeoutMs: 40_000, intervalMs: 50 });
    expect(events.peers).toEqual(["n2 10.244.2.0/24 192.0.2.12"]);
    expect(events.subnets.length).toBe(1);
    await source.stop();
    expect(remembered.at(-1)?.peers.map((p) => p.name)).toEqual(["n2"]);
  });

  it("names what is wrong when credentials are refused or a permission is missing", async () => {
    api.upsertNode(meshNode(1));
    const wrong = await startSource({ token: "wrong" });
    await waitFor(() => wrong.source.notReadyBecause?.includes("401"), { what: "the 401 reason", intervalMs: 20 });
    expect(wrong.source.notReadyBecause).toContain("rejected vxmesh's credentials (401 Unauthorized; from a test token)");
    const reader = await startSource({ token: "readonly" });
    await waitFor(() => reader.source.notReadyBecause?.includes("403"), { what: "the 403 reason", intervalMs: 20 });
    expect(reader.source.notReadyBecause).toMatch(/forbids vxmesh to patch nodes\/status \(403 Forbidden: .*cannot patch resource "nodes\/status".*nodes get, list, watch and nodes\/status patch/);
  });
});
