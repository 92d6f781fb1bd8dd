// The Kubernetes API test double (bench/kube-api-double.ts) is only worth its tests if it behaves
// as the real API server does. Here the real kubectl 1.32 drives it over TLS with a CA, bearer
// tokens and a client certificate: get, get -o json, get -w, annotate, label, patch of the status
// subresource (merge and strategic: kubelet's Ready condition must survive a strategic patch that
// adds NetworkUnavailable), delete, and the errors of a wrong token and of a token without the
// verb. What kubectl does not exercise is checked over HTTPS directly: watches from a compacted
// resourceVersion (ERROR 410 event, or HTTP 410), bookmarks, timeoutSeconds, paging, patch types,
// error codes, the API going down and coming back, and the scale the bench needs. The last test
// runs the double as a child process in a lab's underlay namespace and kubectl in a node's.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";
import * as https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { KubeApiDouble, nodeObject, writeKubeconfig, type KubeApiDoubleOptions, type NodeJson } from "../bench/kube-api-double";
import { runKubectl, startKubeApiInNamespace, type KubeApiProcess } from "../bench/kube-api-process";
import { makeTestPki, type TestPki } from "../bench/kube-pki";
import { Lab, waitFor } from "../bench/lab";

const ADMIN = "admin-token-0123456789";
const SA_USER = "system:serviceaccount:vxmesh-system:vxmesh";
const GET_ONLY = "get-only-token";
const GET_LIST = "get-list-token";
const NO_STATUS = "no-status-patch-token";
const CERT_USER = "system:node:cert-node";

let dir: string;
let pki: TestPki;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "vxmesh-kube-api-test-"));
  pki = makeTestPki(join(dir, "pki"), { ips: ["127.0.0.1", "192.0.2.2"], clientUsers: [CERT_USER] });
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Doubles started by a test; each test's are stopped after it, passed or failed. */
const started: KubeApiDouble[] = [];
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await Promise.all(started.splice(0).map((d) => d.stop()));
});

async function startDouble(o: Partial<KubeApiDoubleOptions> = {}): Promise<KubeApiDouble> {
  const d = await KubeApiDouble.start({
    pki,
    tokens: {
      [ADMIN]: { user: "admin", allow: "all" },
      [GET_ONLY]: { user: SA_USER, allow: ["get nodes"] },
      [GET_LIST]: { user: SA_USER, allow: ["get nodes", "list nodes"] },
      [NO_STATUS]: { user: SA_USER, allow: ["get nodes", "get nodes/status", "patch nodes"] },
    },
    ...o,
  });
  started.push(d);
  return d;
}

let configCounter = 0;

function kubeconfigFor(d: KubeApiDouble, auth: { token: string } | { cert: string }): string {
  const file = join(dir, `kubeconfig${++configCounter}`);
  const c = "cert" in auth ? pki.clients[auth.cert] : undefined;
  writeKubeconfig(file, {
    server: d.url,
    caFile: pki.caFile,
    ...("token" in auth ? { token: auth.token } : {}),
    ...(c !== undefined ? { clientCertFile: c.certFile, clientKeyFile: c.keyFile } : {}),
  });
  return file;
}

/** kubectl against `d` with the admin token (or the given kubeconfig). */
function kubectl(d: KubeApiDouble, args: readonly string[], kubeconfig?: string): ReturnType<typeof runKubectl> {
  return runKubectl(kubeconfig ?? kubeconfigFor(d, { token: ADMIN }), args, { cacheDir: join(dir, "kubectl-cache"), timeoutMs: 20_000 });
}

function twoNodes(): object[] {
  return [
    nodeObject("n1", { podCIDR: "10.244.1.0/24", internalIP: "192.0.2.11" }),
    nodeObject("n2", { podCIDR: "10.244.2.0/24", internalIP: "192.0.2.12" }),
  ];
}

function meta(n: NodeJson | undefined): Record<string, unknown> {
  return (n?.["metadata"] ?? {}) as Record<string, unknown>;
}

function conditionTypes(n: NodeJson | undefined): string[] {
  const status = (n?.["status"] ?? {}) as { conditions?: { type: string }[] };
  return (status.conditions ?? []).map((c) => c.type);
}

// ---------------------------------------------------------------------------------------------
// HTTPS helpers

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  json: Record<string, unknown>;
}

interface RequestOptions {
  token?: string;
  body?: string | object;
  contentType?: string;
}

function request(d: KubeApiDouble, method: string, path: string, o: RequestOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const body = o.body === undefined ? undefined : typeof o.body === "string" ? o.body : JSON.stringify(o.body);
    const headers: Record<string, string> = { Accept: "application/json" };
    const token = "token" in o ? o.token : ADMIN;
    if (token !== undefined) headers["Authorization"] = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = o.contentType ?? "application/json";
    const req = https.request(`${d.url}${path}`, { method, headers, ca: pki.caPem, agent: false, timeout: 10_000 }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => {
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(text) as Record<string, unknown>;
        } catch {
          /* not JSON */
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text, json });
      });
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on("error", reject);
    req.end(body);
  });
}

interface WatchEventLine {
  type: string;
  object: Record<string, unknown>;
}

interface WatchStream {
  status: number;
  headers: IncomingHttpHeaders;
  events: WatchEventLine[];
  /** The raw body of a non-200 answer. */
  body: string;
  /** "end" when the server ended the stream cleanly, "error" when the connection broke. */
  readonly ended: Promise<"end" | "error">;
  close(): void;
}

/** Opens GET /api/v1/nodes?watch=true&<query>; resolves once the answer's headers are in. */
function openWatch(d: KubeApiDouble, query: string, token = ADMIN): Promise<WatchStream> {
  return new Promise((resolve, reject) => {
    const req = https.get(`${d.url}/api/v1/nodes?watch=true&${query}`, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" }, ca: pki.caPem, agent: false,
    }, (res) => {
      let buf = "";
      let endedResolve: (v: "end" | "error") => void = () => undefined;
      const ended = new Promise<"end" | "error">((r) => (endedResolve = r));
      const stream: WatchStream = { status: res.statusCode ?? 0, headers: res.headers, events: [], body: "", ended, close: () => req.destroy() };
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (stream.status !== 200) {
          stream.body += chunk;
          return;
        }
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          stream.events.push(JSON.parse(buf.slice(0, nl)) as WatchEventLine);
          buf = buf.slice(nl + 1);
        }
      });
      res.on("end", () => endedResolve("end"));
      res.on("error", () => endedResolve("error"));
      res.on("aborted", () => endedResolve("error"));
      req.on("error", () => endedResolve("error"));
      resolve(stream);
    });
    req.on("error", reject);
  });
}

function eventNames(s: WatchStream, type?: string): string[] {
  return s.events.filter((e) => type === undefined || e.type === type).map((e) => String(meta(e.object)["name"]));
}

/** A long-running kubectl whose stdout is read while it runs; killed after the test. */
function kubectlStream(kubeconfig: string, args: readonly string[]): { out: () => string; err: () => string; wait: (re: RegExp, what: string) => Promise<void> } {
  const c = spawn("kubectl", ["--kubeconfig", kubeconfig, "--cache-dir", join(dir, "kubectl-cache"), ...args], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(c);
  let out = "";
  let err = "";
  c.stdout.setEncoding("utf8").on("data", (s: string) => (out += s));
  c.stderr.setEncoding("utf8").on("data", (s: string) => (err += s));
  return {
    out: () => out,
    err: () => err,
    wait: async (re, what) => {
      await waitFor(() => re.test(out), { timeoutMs: 15_000, intervalMs: 20, what: `${what} (stdout so far: ${JSON.stringify(out)}, stderr: ${JSON.stringify(err)})` });
    },
  };
}

// ---------------------------------------------------------------------------------------------

describe("the real kubectl 1.32 against the double", () => {
  it("lists nodes by name and round-trips a Node as JSON", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const list = await kubectl(d, ["get", "nodes"]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/^NAME\s+AGE\n/);
    expect(list.stdout).toMatch(/^n1\s/m);
    expect(list.stdout).toMatch(/^n2\s/m);

    const one = await kubectl(d, ["get", "node", "n1", "-o", "json"]);
    expect(one.code, one.stderr).toBe(0);
    expect(JSON.parse(one.stdout)).toEqual(d.node("n1"));
    // kubectl asked for Table and for aggregated discovery, and took plain JSON for both.
    const listReq = d.requests.find((r) => r.path === "/api/v1/nodes" && r.verb === "list");
    expect(listReq?.accept).toContain("as=Table");
    expect(d.requests.find((r) => r.path === "/api")?.accept).toContain("as=APIGroupDiscoveryList");
    expect(d.requests.every((r) => r.status < 400 || r.path.startsWith("/openapi"))).toBe(true);
  });

  it("get -w sees a Node added, modified and deleted while it runs", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const w = kubectlStream(kubeconfigFor(d, { token: ADMIN }), ["get", "nodes", "-w", "--output-watch-events"]);
    await w.wait(/^ADDED\s+n2\s/m, "the initial nodes");
    await waitFor(() => d.openWatches === 1, { timeoutMs: 15_000, intervalMs: 20, what: "kubectl's watch" });
    d.upsertNode(nodeObject("w1", { podCIDR: "10.244.9.0/24" }));
    await w.wait(/^ADDED\s+w1\s/m, "w1 added");
    d.upsertNode(nodeObject("w1", { podCIDR: "10.244.9.0/24", annotations: { "vxmesh.io/x": "1" } }));
    await w.wait(/^MODIFIED\s+w1\s/m, "w1 modified");
    d.deleteNode("w1");
    await w.wait(/^DELETED\s+w1\s/m, "w1 deleted");
    const watchReq = d.requests.find((r) => r.verb === "watch");
    expect(watchReq?.query["resourceVersion"]).toMatch(/^\d+$/);
  });

  it("annotates (add, refuse without --overwrite, overwrite, remove) and labels with merge patches", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const ann = (): Record<string, string> => (meta(d.node("n1"))["annotations"] ?? {}) as Record<string, string>;

    expect((await kubectl(d, ["annotate", "node", "n1", "vxmesh.io/foo=bar"])).code).toBe(0);
    expect(ann()["vxmesh.io/foo"]).toBe("bar");
    const again = await kubectl(d, ["annotate", "node", "n1", "vxmesh.io/foo=baz"]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/already has a value \(bar\)/);
    expect((await kubectl(d, ["annotate", "node", "n1", "vxmesh.io/foo=baz", "--overwrite"])).code).toBe(0);
    expect(ann()["vxmesh.io/foo"]).toBe("baz");
    expect((await kubectl(d, ["annotate", "node", "n1", "vxmesh.io/foo-"])).code).toBe(0);
    expect(ann()).not.toHaveProperty("vxmesh.io/foo");
    expect(ann()["node.alpha.kubernetes.io/ttl"]).toBe("0");

    const lab = await kubectl(d, ["label", "node", "n1", "vxmesh.io/role=edge"]);
    expect(lab.code, lab.stderr).toBe(0);
    expect((meta(d.node("n1"))["labels"] as Record<string, string>)["vxmesh.io/role"]).toBe("edge");
    expect((meta(d.node("n1"))["labels"] as Record<string, string>)["kubernetes.io/hostname"]).toBe("n1");

    const patches = d.requests.filter((r) => r.method === "PATCH");
    expect(patches.map((r) => r.contentType)).toEqual(Array(4).fill("application/merge-patch+json"));
    expect(patches.map((r) => r.query["fieldManager"])).toEqual(["kubectl-annotate", "kubectl-annotate", "kubectl-annotate", "kubectl-label"]);
    expect(JSON.parse(patches[2]?.body ?? "{}")).toMatchObject({ metadata: { annotations: { "vxmesh.io/foo": null } } });
  });

  it("patches the status subresource: merge replaces the conditions list, strategic merges it by type", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    // Strategic (kubectl's default): kubelet's conditions stay, NetworkUnavailable joins them.
    const cond = { type: "NetworkUnavailable", status: "False", reason: "RouteCreated", message: "vxmesh routes are in place", lastTransitionTime: "2025-01-01T00:00:00Z" };
    const sp = await kubectl(d, ["patch", "node", "n1", "--subresource=status", "-p", JSON.stringify({ status: { conditions: [cond] } })]);
    expect(sp.code, sp.stderr).toBe(0);
    expect(conditionTypes(d.node("n1"))).toEqual(["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable"]);
    const rv1 = meta(d.node("n1"))["resourceVersion"];
    // The same condition with a new status updates that element in place.
    const sp2 = await kubectl(d, ["patch", "node", "n1", "--subresource=status", "-p", JSON.stringify({ status: { conditions: [{ ...cond, status: "True" }] } })]);
    expect(sp2.code, sp2.stderr).toBe(0);
    const conds = (d.node("n1")?.["status"] as { conditions: { type: string; status: string }[] }).conditions;
    expect(conds.find((c) => c.type === "NetworkUnavailable")?.status).toBe("True");
    expect(conds.find((c) => c.type === "Ready")?.status).toBe("True");
    expect(Number(meta(d.node("n1"))["resourceVersion"])).toBeGreaterThan(Number(rv1));

    // Merge: the list is replaced. A Node's status strategy resets only .spec: labels and
    // annotations do change through nodes/status (flannel annotates its Node that way).
    const mp = await kubectl(d, ["patch", "node", "n2", "--subresource=status", "--type=merge", "-p",
      JSON.stringify({ metadata: { labels: { through: "status" } }, spec: { unschedulable: true }, status: { conditions: [cond] } })]);
    expect(mp.code, mp.stderr).toBe(0);
    expect(conditionTypes(d.node("n2"))).toEqual(["NetworkUnavailable"]);
    expect(meta(d.node("n2"))["labels"]).toHaveProperty("through", "status");
    expect(d.node("n2")?.["spec"]).not.toHaveProperty("unschedulable");

    const types = d.requests.filter((r) => r.method === "PATCH").map((r) => `${r.path} ${r.contentType ?? ""}`);
    expect(types).toEqual([
      "/api/v1/nodes/n1/status application/strategic-merge-patch+json",
      "/api/v1/nodes/n1/status application/strategic-merge-patch+json",
      "/api/v1/nodes/n2/status application/merge-patch+json",
    ]);
  });

  it("deletes a node", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const r = await kubectl(d, ["delete", "node", "n2"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('node "n2" deleted');
    expect(d.node("n2")).toBeUndefined();
    const missing = await kubectl(d, ["delete", "node", "n2"]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('Error from server (NotFound): nodes "n2" not found');
  });

  it("creates, applies and replaces from a file (with --validate=false: there is no OpenAPI here)", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const file = join(dir, "n3.json");
    writeFileSync(file, JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name: "n3", labels: { role: "x" } }, spec: { podCIDR: "10.244.3.0/24" } }));
    for (const verb of ["create", "apply", "replace"]) {
      const r = await kubectl(d, [verb, "--validate=false", "-f", file]);
      expect(r.code, `${verb}: ${r.stderr}`).toBe(0);
      // apply records what it applied; replace puts the file back as it is, without it.
      const annotations = (meta(d.node("n3"))["annotations"] ?? {}) as Record<string, string>;
      expect("kubectl.kubernetes.io/last-applied-configuration" in annotations, verb).toBe(verb === "apply");
    }
    const byLabel = await kubectl(d, ["get", "nodes", "-l", "role=x", "-o", "name"]);
    expect(byLabel.stdout.trim()).toBe("node/n3");
    expect(d.requests.filter((r) => r.verb !== undefined && r.verb !== "get" && r.verb !== "list").map((r) => `${r.method} ${r.contentType ?? ""}`)).toEqual([
      "POST application/json", "PATCH application/strategic-merge-patch+json", "PUT application/json",
    ]);
  });

  it("authenticates a client certificate as its CN", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const r = await kubectl(d, ["get", "nodes", "-o", "name"], kubeconfigFor(d, { cert: CERT_USER }));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split("\n")).toEqual(["node/n1", "node/n2"]);
    expect(d.counts(CERT_USER).lists).toBe(1);
  });

  it("a wrong token is Unauthorized", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const cacheDir = join(dir, "kubectl-cache-401");
    const wrong = kubeconfigFor(d, { token: "not-a-token" });
    // Without cached discovery kubectl fails in discovery, where client-go does not decode the
    // Status body and words the 401 itself; with it, the list's 401 Status is decoded and quoted.
    const cold = await runKubectl(wrong, ["get", "nodes"], { cacheDir });
    expect(cold.code).not.toBe(0);
    expect(cold.stderr).toContain("error: You must be logged in to the server (the server has asked for the client to provide credentials)");
    expect((await runKubectl(kubeconfigFor(d, { token: ADMIN }), ["get", "nodes"], { cacheDir })).code).toBe(0);
    const warm = await runKubectl(wrong, ["get", "nodes"], { cacheDir });
    expect(warm.code).not.toBe(0);
    expect(warm.stderr).toContain("error: You must be logged in to the server (Unauthorized)");
    expect(d.counts("system:anonymous").denied).toBeGreaterThan(1);
  });

  it("a token without the verb gets the RBAC authorizer's Forbidden", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const getOnly = kubeconfigFor(d, { token: GET_ONLY });
    const get = await kubectl(d, ["get", "node", "n1", "-o", "name"], getOnly);
    expect(get.code, get.stderr).toBe(0);
    const list = await kubectl(d, ["get", "nodes", "-w"], getOnly);
    expect(list.code).not.toBe(0);
    expect(list.stderr).toContain(`nodes is forbidden: User "${SA_USER}" cannot list resource "nodes" in API group "" at the cluster scope`);
    const watch = await kubectl(d, ["get", "nodes", "-w"], kubeconfigFor(d, { token: GET_LIST }));
    expect(watch.code).not.toBe(0);
    expect(watch.stderr).toContain(`nodes is forbidden: User "${SA_USER}" cannot watch resource "nodes" in API group "" at the cluster scope`);
    const ann = await kubectl(d, ["annotate", "node", "n1", "vxmesh.io/foo=bar"], getOnly);
    expect(ann.code).not.toBe(0);
    expect(ann.stderr).toContain(`nodes "n1" is forbidden: User "${SA_USER}" cannot patch resource "nodes" in API group "" at the cluster scope`);
    // kubectl reads the status subresource before it patches it.
    const st = await kubectl(d, ["patch", "node", "n1", "--subresource=status", "-p", '{"status":{}}'], getOnly);
    expect(st.stderr).toContain(`nodes "n1" is forbidden: User "${SA_USER}" cannot get resource "nodes/status" in API group "" at the cluster scope`);
    const st2 = await kubectl(d, ["patch", "node", "n1", "--subresource=status", "-p", '{"status":{"phase":"x"}}'], kubeconfigFor(d, { token: NO_STATUS }));
    expect(st2.stderr).toContain(`nodes "n1" is forbidden: User "${SA_USER}" cannot patch resource "nodes/status" in API group "" at the cluster scope`);
    expect(d.counts(SA_USER)).toMatchObject({ lists: 2, watches: 1, patches: 2 });
  });
});

describe("the double over HTTPS", () => {
  it("answers a watch from a compacted resourceVersion with one ERROR 410 Expired event and ends it", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const old = d.resourceVersion;
    d.upsertNode(nodeObject("n3"));
    d.compact();
    const w = await openWatch(d, `resourceVersion=${old}&allowWatchBookmarks=true`);
    expect(w.status).toBe(200);
    expect(await w.ended).toBe("end");
    expect(w.events).toHaveLength(1);
    expect(w.events[0]).toEqual({
      type: "ERROR",
      object: { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: `too old resource version: ${old} (${d.resourceVersion})`, reason: "Expired", code: 410 },
    });
    // From the current resourceVersion it is fine.
    const ok = await openWatch(d, `resourceVersion=${d.resourceVersion}&timeoutSeconds=1`);
    expect(ok.status).toBe(200);
    expect(await ok.ended).toBe("end");
    expect(ok.events).toEqual([]);
  });

  it("answers HTTP 410 instead with goneAsHttpStatus", async () => {
    const d = await startDouble({ nodes: twoNodes(), goneAsHttpStatus: true });
    d.upsertNode(nodeObject("n3"));
    d.compact();
    const w = await openWatch(d, "resourceVersion=1001");
    expect(w.status).toBe(410);
    await w.ended;
    expect(JSON.parse(w.body)).toMatchObject({ kind: "Status", reason: "Expired", code: 410 });
  });

  it("replays changes after a resourceVersion, then streams live ones, bookmarks, and ends at timeoutSeconds", async () => {
    const d = await startDouble({ nodes: twoNodes(), bookmarkIntervalMs: 50 });
    const from = d.resourceVersion;
    d.upsertNode(nodeObject("n3"));
    d.deleteNode("n1");
    const w = await openWatch(d, `resourceVersion=${from}&allowWatchBookmarks=true&timeoutSeconds=2`);
    expect(w.headers["content-type"]).toBe("application/json");
    expect(w.headers["transfer-encoding"]).toBe("chunked");
    d.upsertNode(nodeObject("n4"));
    await waitFor(() => w.events.filter((e) => e.type === "BOOKMARK").length >= 2, { timeoutMs: 5000, intervalMs: 20, what: "two bookmarks" });
    const changes = w.events.filter((e) => e.type !== "BOOKMARK");
    expect(changes.map((e) => `${e.type} ${String(meta(e.object)["name"])}`)).toEqual(["ADDED n3", "DELETED n1", "ADDED n4"]);
    const rvs = changes.map((e) => Number(meta(e.object)["resourceVersion"]));
    expect(rvs).toEqual([...rvs].sort((a, b) => a - b));
    const bm = w.events.find((e) => e.type === "BOOKMARK");
    expect(bm?.object).toMatchObject({ kind: "Node", apiVersion: "v1", metadata: { resourceVersion: d.resourceVersion } });
    expect(await w.ended).toBe("end");
    expect(d.openWatches).toBe(0);
  });

  it("starts a watch without a resourceVersion with ADDED for every Node; fieldSelector narrows it", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const all = await openWatch(d, "");
    const one = await openWatch(d, "fieldSelector=metadata.name%3Dn2&resourceVersion=0");
    await waitFor(() => all.events.length === 2 && one.events.length === 1, { timeoutMs: 5000, intervalMs: 20, what: "initial events" });
    expect(eventNames(all, "ADDED")).toEqual(["n1", "n2"]);
    expect(eventNames(one, "ADDED")).toEqual(["n2"]);
    d.upsertNode(nodeObject("n1", { podCIDR: "10.244.7.0/24" }));
    d.upsertNode(nodeObject("n2", { podCIDR: "10.244.8.0/24" }));
    await waitFor(() => all.events.length === 4 && one.events.length === 2, { timeoutMs: 5000, intervalMs: 20, what: "the changes" });
    expect(eventNames(one, "MODIFIED")).toEqual(["n2"]);
    all.close();
    one.close();
  });

  it("expireWatches() sends ERROR 410 and ends; dropWatches() breaks the connections", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const a = await openWatch(d, `resourceVersion=${d.resourceVersion}`);
    await waitFor(() => d.openWatches === 1, { timeoutMs: 5000, intervalMs: 20, what: "the watch" });
    d.expireWatches();
    expect(await a.ended).toBe("end");
    expect(a.events.map((e) => [e.type, e.object["code"]])).toEqual([["ERROR", 410]]);
    const b = await openWatch(d, `resourceVersion=${d.resourceVersion}`);
    await waitFor(() => d.openWatches === 1, { timeoutMs: 5000, intervalMs: 20, what: "the second watch" });
    d.dropWatches();
    expect(await b.ended).toBe("error");
    expect(d.openWatches).toBe(0);
  });

  it("pages 1,200 Nodes with limit and continue, each exactly once", async () => {
    const d = await startDouble({ nodes: Array.from({ length: 1200 }, (_, i) => nodeObject(`node-${String(i).padStart(4, "0")}`)) });
    const seen: string[] = [];
    let cont = "";
    let pages = 0;
    let listRv: unknown;
    do {
      const r = await request(d, "GET", `/api/v1/nodes?limit=500${cont === "" ? "" : `&continue=${encodeURIComponent(cont)}`}`);
      expect(r.status).toBe(200);
      expect(r.json["kind"]).toBe("NodeList");
      const m = r.json["metadata"] as { resourceVersion: string; continue?: string; remainingItemCount?: number };
      listRv ??= m.resourceVersion;
      expect(m.resourceVersion).toBe(listRv);
      for (const it of r.json["items"] as NodeJson[]) seen.push(String(meta(it)["name"]));
      if (m.continue !== undefined) expect(m.remainingItemCount).toBe(1200 - seen.length);
      cont = m.continue ?? "";
      pages++;
    } while (cont !== "");
    expect(pages).toBe(3);
    expect(seen).toHaveLength(1200);
    expect(new Set(seen).size).toBe(1200);
    // A continue token from before a compaction is 410 Expired, as with etcd.
    const first = await request(d, "GET", "/api/v1/nodes?limit=10");
    d.upsertNode(nodeObject("node-x"));
    d.compact();
    const stale = await request(d, "GET", `/api/v1/nodes?limit=10&continue=${encodeURIComponent(String((first.json["metadata"] as { continue: string }).continue))}`);
    expect(stale.status).toBe(410);
    expect(stale.json["reason"]).toBe("Expired");
    const named = await request(d, "GET", "/api/v1/nodes?fieldSelector=metadata.name%3Dnode-0042");
    expect((named.json["items"] as NodeJson[]).map((n) => meta(n)["name"])).toEqual(["node-0042"]);
  });

  it("merge patch replaces conditions, strategic merges them, JSON patch applies; other types are 415", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const cond = { status: { conditions: [{ type: "NetworkUnavailable", status: "False", reason: "RouteCreated" }] } };
    const s = await request(d, "PATCH", "/api/v1/nodes/n1/status", { body: cond, contentType: "application/strategic-merge-patch+json" });
    expect(s.status).toBe(200);
    expect(conditionTypes(s.json)).toEqual(["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable"]);
    const m = await request(d, "PATCH", "/api/v1/nodes/n2/status", { body: cond, contentType: "application/merge-patch+json" });
    expect(conditionTypes(m.json)).toEqual(["NetworkUnavailable"]);
    // $patch: delete removes one element of a keyed list.
    const del = await request(d, "PATCH", "/api/v1/nodes/n1/status", {
      body: { status: { conditions: [{ type: "NetworkUnavailable", $patch: "delete" }] } }, contentType: "application/strategic-merge-patch+json",
    });
    expect(conditionTypes(del.json)).toEqual(["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]);
    const jp = await request(d, "PATCH", "/api/v1/nodes/n1", {
      body: [{ op: "add", path: "/metadata/annotations/vxmesh.io~1underlay-ip", value: "192.0.2.11" }, { op: "test", path: "/metadata/name", value: "n1" }],
      contentType: "application/json-patch+json",
    });
    expect(jp.status).toBe(200);
    expect((meta(jp.json)["annotations"] as Record<string, string>)["vxmesh.io/underlay-ip"]).toBe("192.0.2.11");
    const failedTest = await request(d, "PATCH", "/api/v1/nodes/n1", { body: [{ op: "test", path: "/metadata/name", value: "n9" }], contentType: "application/json-patch+json" });
    expect(failedTest.status).toBe(422);
    const apply = await request(d, "PATCH", "/api/v1/nodes/n1", { body: "{}", contentType: "application/apply-patch+yaml" });
    expect(apply.status).toBe(415);
    expect(apply.json).toMatchObject({ kind: "Status", reason: "UnsupportedMediaType", code: 415 });
    // The main resource ignores .status, the status subresource everything else.
    const main = await request(d, "PATCH", "/api/v1/nodes/n1", { body: { spec: { unschedulable: true }, status: { conditions: [] } }, contentType: "application/merge-patch+json" });
    expect((main.json["spec"] as Record<string, unknown>)["unschedulable"]).toBe(true);
    expect(conditionTypes(main.json)).toHaveLength(4);
    // A patch that changes nothing writes nothing.
    const rv = d.resourceVersion;
    const noop = await request(d, "PATCH", "/api/v1/nodes/n1", { body: { spec: { unschedulable: true } }, contentType: "application/merge-patch+json" });
    expect(noop.status).toBe(200);
    expect(d.resourceVersion).toBe(rv);
  });

  it("answers errors as metav1.Status with the real codes", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const badJson = await request(d, "PATCH", "/api/v1/nodes/n1", { body: "{not json", contentType: "application/merge-patch+json" });
    expect(badJson.status).toBe(400);
    expect(badJson.json).toMatchObject({ kind: "Status", status: "Failure", reason: "BadRequest", code: 400 });
    const missing = await request(d, "GET", "/api/v1/nodes/nope");
    expect(missing.json).toEqual({ kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: 'nodes "nope" not found', reason: "NotFound", details: { name: "nope", kind: "nodes" }, code: 404 });
    expect((await request(d, "POST", "/api/v1/nodes/n1")).status).toBe(405);
    expect((await request(d, "DELETE", "/api/v1/nodes/n1/status")).status).toBe(405);
    const exists = await request(d, "POST", "/api/v1/nodes", { body: nodeObject("n1") });
    expect(exists.status).toBe(409);
    expect(exists.json["reason"]).toBe("AlreadyExists");
    const created = await request(d, "POST", "/api/v1/nodes", { body: nodeObject("n5") });
    expect(created.status).toBe(201);
    expect(meta(created.json)["uid"]).toMatch(/^[0-9a-f-]{36}$/);
    const stale = { ...created.json, metadata: { ...meta(created.json), resourceVersion: "1" } };
    const conflict = await request(d, "PUT", "/api/v1/nodes/n5", { body: stale });
    expect(conflict.status).toBe(409);
    expect(conflict.json["reason"]).toBe("Conflict");
    const put = await request(d, "PUT", "/api/v1/nodes/n5", { body: { ...created.json, spec: { podCIDR: "10.244.5.0/24" } } });
    expect(put.status).toBe(200);
    const rvPatch = await request(d, "PATCH", "/api/v1/nodes/n5", { body: { metadata: { resourceVersion: "1" } }, contentType: "application/merge-patch+json" });
    expect(rvPatch.status).toBe(409);
    const invalid = await request(d, "POST", "/api/v1/nodes", { body: { kind: "Node", apiVersion: "v1", metadata: { name: "Bad_Name" } } });
    expect(invalid.status).toBe(422);
    const unauth = await request(d, "GET", "/api/v1/nodes", { token: undefined });
    expect(unauth.body).toBe('{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}');
    expect((await request(d, "GET", "/api/v1/namespaces/default/pods")).status).toBe(404);
    d.revokeToken(ADMIN);
    expect((await request(d, "GET", "/api/v1/nodes")).status).toBe(401);
    d.setToken(ADMIN, { user: "admin", allow: ["list nodes"] });
    expect((await request(d, "GET", "/api/v1/nodes")).status).toBe(200);
    expect((await request(d, "DELETE", "/api/v1/nodes/n5")).status).toBe(403);
  });

  it("goes down with stop() and comes back with its state on the same port with start()", async () => {
    const d = await startDouble({ nodes: twoNodes() });
    const w = await openWatch(d, `resourceVersion=${d.resourceVersion}`);
    const port = d.port;
    await d.stop();
    expect(await w.ended).toBe("error");
    await d.start();
    const w2 = await openWatch(d, `resourceVersion=${d.resourceVersion}`);
    await d.stop({ graceful: true });
    expect(await w2.ended).toBe("end");
    await expect(request(d, "GET", "/api/v1/nodes")).rejects.toThrow(/ECONNREFUSED/);
    d.upsertNode(nodeObject("n3")); // changes while down are there after
    await d.start();
    expect(d.port).toBe(port);
    const r = await request(d, "GET", "/api/v1/nodes");
    expect((r.json["items"] as NodeJson[]).map((n) => meta(n)["name"])).toEqual(["n1", "n2", "n3"]);
  });

  it("lists 5,000 Nodes in pages of 500, each exactly once, and fans a change out to three watches", async () => {
    // Pod CIDRs: /29s of 10.244.0.0/16, as data only (nothing is routed). Speed is the bench's (bench/kube-scale.ts).
    const cidr = (i: number): string => `10.244.${(i * 8) >> 8}.${(i * 8) & 255}/29`;
    const d = await startDouble({
      nodes: Array.from({ length: 5000 }, (_, i) => nodeObject(`node-${i}`, { podCIDR: cidr(i), annotations: { "vxmesh.io/vtep-mac": "02:00:00:00:00:01" } })),
    });
    let cont = "";
    const names = new Set<string>();
    let count = 0;
    do {
      const r = await request(d, "GET", `/api/v1/nodes?limit=500${cont === "" ? "" : `&continue=${encodeURIComponent(cont)}`}`);
      for (const n of r.json["items"] as NodeJson[]) names.add(meta(n)["name"] as string);
      count += (r.json["items"] as unknown[]).length;
      cont = (r.json["metadata"] as { continue?: string }).continue ?? "";
    } while (cont !== "");
    expect(count).toBe(5000);
    expect(names.size).toBe(5000);
    const ws = await Promise.all([0, 1, 2].map(() => openWatch(d, `resourceVersion=${d.resourceVersion}`)));
    await waitFor(() => d.openWatches === 3, { timeoutMs: 5000, intervalMs: 10, what: "three watches" });
    d.upsertNode(nodeObject("node-42", { podCIDR: cidr(42), annotations: { "vxmesh.io/vtep-mac": "02:00:00:00:00:02" } }));
    await waitFor(() => ws.every((w) => w.events.length === 1), { timeoutMs: 5000, intervalMs: 1, what: "the change on every watch" });
    for (const w of ws) w.close();
  });
});

describe("the double as a process in a lab's underlay namespace", () => {
  let lab: Lab | undefined;
  let api: KubeApiProcess | undefined;

  afterAll(async () => {
    await api?.close();
    await lab?.teardown();
  });

  it("serves kubectl in a node namespace and takes its controls over IPC", async () => {
    lab = await Lab.build({ nodes: [{}] });
    api = await startKubeApiInNamespace(lab, {
      pki,
      tokens: { [ADMIN]: { user: "admin", allow: "all" } },
      nodes: [nodeObject("n1", { podCIDR: "10.244.1.0/24", internalIP: "192.0.2.11" })],
    });
    expect(api.url).toBe("https://192.0.2.2:6443");
    const node = lab.nodes[0];
    if (node === undefined) throw new Error("no lab node");
    const r = await api.kubectl(["get", "nodes", "-o", "name"], { ns: node });
    expect(r.code, r.stderr + api.log).toBe(0);
    expect(r.stdout.trim()).toBe("node/n1");

    await api.upsertNode(nodeObject("n2", { podCIDR: "10.244.2.0/24" }));
    const ann = await api.kubectl(["annotate", "node", "n2", "vxmesh.io/underlay-ip=192.0.2.12"], { ns: node });
    expect(ann.code, ann.stderr).toBe(0);
    expect(meta(await api.node("n2"))["annotations"]).toMatchObject({ "vxmesh.io/underlay-ip": "192.0.2.12" });
    expect((await api.nodes()).map((n) => meta(n)["name"])).toEqual(["n1", "n2"]);
    expect((await api.counts("admin")).patches).toBe(1);
    expect((await api.requests()).some((q) => q.verb === "list")).toBe(true);

    await api.stop();
    const down = await api.kubectl(["get", "nodes"], { ns: node, timeoutMs: 20_000 });
    expect(down.code).not.toBe(0);
    expect(down.stderr).toMatch(/connection refused/);
    await api.start();
    expect((await api.kubectl(["get", "nodes", "-o", "name"], { ns: node })).stdout.trim().split("\n")).toEqual(["node/n1", "node/n2"]);
    const pid = api.pid;
    await api.close();
    expect(pid !== undefined && isAlive(pid)).toBe(false);
    const addrs = await lab.exec(lab.underlayNs, ["ip", "-o", "addr", "show", "dev", "br0"]);
    expect(addrs.stdout).not.toContain("192.0.2.2/24");
  });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
