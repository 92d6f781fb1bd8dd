// The Kubernetes source end to end (issue 15, "How we will know", the lab items): real vxmesh
// daemons in three lab nodes take their subnets and peers from Node objects on the API double
// (bench/kube-api-double.ts, checked against kubectl in test/kube-api-double.test.ts), which
// runs in the underlay namespace at 192.0.2.2:6443; Nodes are added and deleted with the real
// kubectl; pods ping across nodes.
//
//   1. three daemons from Node objects: annotations and NetworkUnavailable=False on every
//      Node, every cross-node pod pair pings;
//      `vxmesh doctor` reaches the API and reads the Node (and names one without a podCIDR);
//   2. a Node created and deleted with kubectl is routed, then unrouted, on every node within 5 s;
//   3. a forced 410 Gone: the daemons list again and miss no later event;
//   4. the API away while running: routes stay, pods still ping, readiness names the lost
//      watch; back: in sync again, and a Node deleted meanwhile is unrouted;
//   5. the API away while a daemon restarts: it routes the subnet and peers it last saw (pods
//      ping), not ready, retrying; back: ready, pods ping;
//   6. a wrong token: the daemon says 401 and where its credentials came from;
//   7. SIGTERM: no TAP, route, neighbour or iptables chain of vxmesh left in any node.
//
// The tests share one lab and build on each other in order. Every wait has a deadline.

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, cliPath, type DaemonOptions } from "../bench/cluster";
import { nodeObject, writeKubeconfig } from "../bench/kube-api-double";
import { startKubeApiInNamespace, type KubeApiProcess } from "../bench/kube-api-process";
import { makeTestPki, type TestPki } from "../bench/kube-pki";
import { Lab, listNetns, waitFor } from "../bench/lab";
import type { LabNode, LabPod } from "../bench/lab";
import type { DaemonStatus, KubernetesStatus } from "../daemon/status";

const API_IP = "192.0.2.2";
const SA = "system:serviceaccount:vxmesh-system:vxmesh";
/** The bound for a Node added or deleted to show in every node's routes. */
const NODE_CHANGE_BOUND_MS = 5000;

let lab: Lab | undefined;
let cluster: Cluster | undefined;
let api: KubeApiProcess | undefined;
let pki: TestPki;
let adminKubeconfig: string;

const L = (): Lab => lab as Lab;
const C = (): Cluster => cluster as Cluster;
const A = (): KubeApiProcess => api as KubeApiProcess;
const vxmeshNodes = (): LabNode[] => L().nodes.filter((n) => n.overlay === "vxmesh");
const options = (): DaemonOptions => ({ kubernetes: { kubeconfig: A().kubeconfig }, readyTimeoutMs: 20_000 });

function kubeOf(s: DaemonStatus): KubernetesStatus {
  if (s.kubernetes === undefined) throw new Error(`daemon on ${s.node} is not in kubernetes mode`);
  return s.kubernetes;
}

async function statusOf(node: LabNode): Promise<DaemonStatus> {
  const d = C().daemons.get(node.name);
  if (d === undefined) throw new Error(`no daemon on ${node.name}`);
  return d.status();
}

async function routesOf(node: LabNode): Promise<string> {
  return (await L().exec(node, ["ip", "route", "show", "proto", "118"])).stdout;
}

async function allReady(what: string, timeoutMs = 20_000): Promise<void> {
  await waitFor(async () => (await Promise.all(vxmeshNodes().map(statusOf))).every((s) => s.ready), { what, timeoutMs, intervalMs: 100 });
}

/** Pings every cross-node pod pair (3 echoes each); the failing pairs. */
async function failingPairs(): Promise<string[]> {
  const pairs: [LabPod, LabPod][] = [];
  for (const a of L().pods) for (const b of L().pods) if (a.node !== b.node) pairs.push([a, b]);
  const results = await Promise.all(pairs.map(async ([a, b]) => ({ a, b, ok: await L().ping(a, b.ip, { count: 3, timeoutMs: 1000, intervalMs: 200 }) })));
  return results.filter((r) => !r.ok).map((r) => `${r.a.name} → ${r.b.name} (${r.b.ip})`);
}

/** A Node of a node not in the lab, as a running vxmesh would have annotated it, for kubectl create. */
function writeForeignNode(name: string, podCIDR: string, underlay: string): string {
  const node = nodeObject(name, {
    podCIDR, internalIP: underlay,
    annotations: { "vxmesh.io/protocol": "1", "vxmesh.io/underlay-ip": underlay, "vxmesh.io/vtep-mac": "02:00:5e:10:00:99", "vxmesh.io/vni": "1", "vxmesh.io/vxlan-port": "4789" },
  });
  const file = join(L().workDir(), `${name}.json`);
  writeFileSync(file, JSON.stringify(node));
  return file;
}

/** Waits until `cidr` is in (or, with present=false, out of) every vxmesh node's routes; the time it took. */
async function routedEverywhere(cidr: string, present: boolean, timeoutMs = NODE_CHANGE_BOUND_MS): Promise<number> {
  const t0 = Date.now();
  await waitFor(async () => (await Promise.all(vxmeshNodes().map(routesOf))).every((r) => r.includes(`${cidr} `) === present),
    { what: `${cidr} ${present ? "routed" : "unrouted"} on every node`, timeoutMs, intervalMs: 25 });
  return Date.now() - t0;
}

/** kubectl as the cluster's admin (the daemons' own token may not create or delete Nodes). */
async function kubectl(args: readonly string[]): Promise<string> {
  const r = await A().kubectl(args, { kubeconfig: adminKubeconfig });
  if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${String(r.code)}): ${r.stderr}`);
  return r.stdout;
}

const figures: string[] = [];

beforeAll(async () => {
  lab = await Lab.build({ nodes: [1, 2, 3].map(() => ({ overlay: "vxmesh" as const, pods: 2 })) });
  pki = makeTestPki(join(lab.workDir(), "pki"), { ips: [API_IP] });
  api = await startKubeApiInNamespace(lab, {
    ip: API_IP, pki, bookmarkIntervalMs: 1000,
    tokens: {
      "sa-token": { user: SA, allow: ["get nodes", "list nodes", "watch nodes", "patch nodes/status"] }, admin: { user: "admin", allow: "all" },
      "no-patch": { user: "reader", allow: ["get nodes", "list nodes", "watch nodes"] },
    },
    kubeconfigToken: "sa-token",
  });
  adminKubeconfig = join(lab.workDir(), "admin-kubeconfig");
  writeKubeconfig(adminKubeconfig, { server: api.url, caFile: pki.caFile, token: "admin" });
  // The Nodes as kubelet registered them, with kube-controller-manager's podCIDRs: no vxmesh annotations yet.
  for (const n of vxmeshNodes()) await api.upsertNode(nodeObject(n.name, { podCIDR: n.subnet, internalIP: n.underlayIp }));
  cluster = new Cluster(lab);
  await Promise.all(vxmeshNodes().map((n) => C().start(n, options())));
});

afterAll(async () => {
  if (figures.length > 0) console.log(`[e2e-kubernetes] ${figures.join("; ")}`);
  const errors: unknown[] = [];
  for (const step of [() => cluster?.stopAll(), () => api?.close(), () => lab?.teardown()]) {
    try {
      await step();
    } catch (e) {
      errors.push(e);
    }
  }
  if (lab !== undefined) {
    const left = (await listNetns()).filter((n) => n.startsWith(lab?.prefix ?? "-"));
    if (left.length > 0) errors.push(new Error(`namespaces left behind: ${left.join(", ")}`));
  }
  if (errors.length > 0) throw errors[0];
});

describe("vxmesh daemons with the Kubernetes source, against the API double in the lab", () => {
  it("three daemons from Node objects: annotated Nodes, NetworkUnavailable=False, every cross-node pod pair pings", async () => {
    await allReady("every daemon ready");
    const nodes = JSON.parse(await kubectl(["get", "nodes", "-o", "json"])) as { items: { metadata: { name: string; annotations: Record<string, string> }; status: { conditions: { type: string; status: string; reason?: string }[] } }[] };
    for (const n of vxmeshNodes()) {
      const item = nodes.items.find((i) => i.metadata.name === n.name);
      expect(item?.metadata.annotations["vxmesh.io/underlay-ip"], n.name).toBe(n.underlayIp);
      expect(item?.status.conditions.find((c) => c.type === "NetworkUnavailable"), n.name).toMatchObject({ status: "False", reason: "VxmeshIsUp" });
      expect(item?.status.conditions.find((c) => c.type === "Ready")?.status, n.name).toBe("True");
      const s = await statusOf(n);
      expect(s.mode).toBe("kubernetes");
      expect(s.subnet).toBe(n.subnet);
      expect(s.peers.map((p) => p.name).sort()).toEqual(vxmeshNodes().filter((o) => o !== n).map((o) => o.name));
      expect(kubeOf(s).watch.inSync).toBe(true);
    }
    expect(await failingPairs()).toEqual([]);
  });

  it("vxmesh doctor reaches the API, reads the Node and its podCIDR, and names a Node that has none", async () => {
    const n1 = L().node("n1");
    const readerConfig = join(L().workDir(), "reader-kubeconfig");
    writeKubeconfig(readerConfig, { server: A().url, caFile: pki.caFile, token: "no-patch" });
    const doctor = async (name: string, kubeconfig = A().kubeconfig): Promise<{ status: string; reason: string }> => {
      const r = await L().exec(n1, [process.execPath, cliPath(), "doctor", "--json", "--subnet-source", "kubernetes", "--kubeconfig", kubeconfig,
        "--node-name", name, "--underlay-ip", n1.underlayIp, "--metrics-addr", "off"], { timeoutMs: 30_000 });
      const checks = (JSON.parse(r.stdout) as { checks: { id: string; status: string; reason: string }[] }).checks;
      return checks.find((c) => c.id === "kubernetes-api") as { status: string; reason: string };
    };
    expect(await doctor("n1")).toMatchObject({ status: "pass", reason: `https://${API_IP}:6443 (kubeconfig ${A().kubeconfig}): Node "n1" has podCIDR ${n1.subnet}; nodes get, list, watch and nodes/status patch allowed` });
    await A().upsertNode(nodeObject("bare", {}));
    expect(await doctor("bare")).toMatchObject({ status: "fail", reason: `Node "bare" has no spec.podCIDR yet` });
    expect((await doctor("nobody")).reason).toBe(`https://${API_IP}:6443 has no Node "nobody"`);
    const noPatch = await doctor("n1", readerConfig);
    expect(noPatch.status).toBe("fail");
    expect(noPatch.reason).toMatch(/forbids vxmesh to patch nodes\/status \(403 Forbidden: .*cannot patch resource "nodes\/status"/);
    // The dry run wrote nothing.
    expect(JSON.stringify(await A().node("n1"))).not.toContain("dryRun");
    await A().deleteNode("bare");
  });

  it("a Node created with kubectl is routed on every node within 5 s, and unrouted within 5 s of its deletion", async () => {
    const file = writeForeignNode("n9", "10.244.9.0/24", "192.0.2.99");
    await kubectl(["create", "--validate=false", "-f", file]);
    const added = await routedEverywhere("10.244.9.0/24", true);
    await kubectl(["delete", "node", "n9"]);
    const deleted = await routedEverywhere("10.244.9.0/24", false);
    figures.push(`Node created → routed on all 3 nodes in ${added} ms, deleted → unrouted in ${deleted} ms (after kubectl returned)`);
    // A Node without our annotations is skipped, and says why.
    await A().upsertNode(nodeObject("plain", { podCIDR: "10.244.8.0/24" }));
    await waitFor(async () => kubeOf(await statusOf(L().node("n1"))).skipped.some((s) => s.name === "plain" && s.reason === "no_annotations"),
      { what: "plain skipped", timeoutMs: NODE_CHANGE_BOUND_MS, intervalMs: 50 });
    await A().deleteNode("plain");
  });

  it("a forced 410 Gone: every daemon lists again and misses no later event", async () => {
    const before = await Promise.all(vxmeshNodes().map(async (n) => kubeOf(await statusOf(n)).counters.relists));
    await A().expireWatches();
    await kubectl(["create", "--validate=false", "-f", writeForeignNode("n8", "10.244.8.0/24", "192.0.2.98")]);
    await routedEverywhere("10.244.8.0/24", true);
    const after = await Promise.all(vxmeshNodes().map(async (n) => kubeOf(await statusOf(n)).counters.relists));
    after.forEach((r, i) => expect(r, vxmeshNodes()[i]?.name).toBeGreaterThan(before[i] as number));
  });

  it("the API away while running: routes stay, pods ping, readiness names the lost watch; back: resynced", async () => {
    await A().stop();
    await waitFor(async () => (await Promise.all(vxmeshNodes().map(statusOf))).every((s) => !s.ready && (s.notReadyBecause ?? "").includes("lost the watch")),
      { what: "every daemon reporting the lost watch", timeoutMs: 20_000, intervalMs: 100 });
    expect(await failingPairs()).toEqual([]);
    for (const n of vxmeshNodes()) expect(await routesOf(n), n.name).toContain("10.244.8.0/24 ");
    // Deleted while the daemons cannot see it: gone once the API is back.
    await A().deleteNode("n8");
    const t0 = Date.now();
    await A().start();
    await allReady("every daemon in sync again", 40_000);
    await routedEverywhere("10.244.8.0/24", false, 10_000);
    figures.push(`API back → every daemon in sync and the Node deleted meanwhile unrouted in ${Date.now() - t0} ms`);
    expect(await failingPairs()).toEqual([]);
  });

  it("the API away while a daemon restarts: it routes what it last saw, not ready and retrying; back: ready", async () => {
    const n3 = L().node("n3");
    await C().daemons.get("n3")?.stop();
    await A().stop();
    await C().start(n3, options());
    await waitFor(async () => ((await statusOf(n3)).notReadyBecause ?? "").includes(`cannot reach the API server https://${API_IP}:6443`),
      { what: "n3 saying it cannot reach the API", timeoutMs: 20_000, intervalMs: 100 });
    // Stale beats empty across a restart too: the subnet and peers it kept in its state dir.
    expect((await statusOf(n3)).subnet).toBe(n3.subnet);
    expect(await failingPairs()).toEqual([]);
    await A().start();
    await allReady("every daemon ready after the API came up", 40_000);
    expect(await failingPairs()).toEqual([]);
  });

  it("a wrong token: the daemon is not ready and names the 401 and where its credentials came from", async () => {
    const n3 = L().node("n3");
    const wrong = join(L().workDir(), "wrong-kubeconfig");
    writeKubeconfig(wrong, { server: `https://${API_IP}:6443`, caFile: pki.caFile, token: "not-a-token" });
    await C().daemons.get("n3")?.stop();
    const d = await C().start(n3, { kubernetes: { kubeconfig: wrong }, readyTimeoutMs: 20_000 });
    await waitFor(async () => ((await d.status()).notReadyBecause ?? "").includes("401 Unauthorized"), { what: "the 401", timeoutMs: 20_000, intervalMs: 100 });
    expect((await d.status()).notReadyBecause).toContain(`from kubeconfig ${wrong}`);
    expect(d.log).toContain("rejected vxmesh's credentials (401 Unauthorized");
    await d.stop();
    await C().start(n3, options());
    await allReady("n3 ready with the right token");
  });

  it("SIGTERM leaves no TAP, route, neighbour or iptables chain of vxmesh in any node", async () => {
    const codes = await Promise.all(vxmeshNodes().map(async (n) => C().daemons.get(n.name)?.stop()));
    expect(codes).toEqual(vxmeshNodes().map(() => 0));
    for (const n of vxmeshNodes()) {
      expect((await L().exec(n, ["ip", "link", "show", "vxmesh0"])).code, n.name).not.toBe(0);
      expect(await routesOf(n), n.name).toBe("");
      const rules = (await L().exec(n, ["iptables-save"])).stdout;
      expect(rules, n.name).not.toContain("VXMESH");
    }
  });
});
