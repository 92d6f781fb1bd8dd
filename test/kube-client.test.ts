// control/kube/client.ts against real HTTPS on 127.0.0.1: the API double (bench/kube-api-double.ts)
// for what a kube-apiserver does, and a few hand-made servers for what a broken one or a proxy
// does. No root, no build; needs the openssl CLI (bench/kube-pki.ts).

import * as fs from "node:fs";
import type * as http from "node:http";
import * as https from "node:https";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { KubeApiDouble } from "../bench/kube-api-double";
import { makeTestPki, type TestPki } from "../bench/kube-pki";
import type { KubeError, KubeResult, WatchEvent } from "../control/kube/api";
import { HttpsKubeApi, type KubeClientOptions } from "../control/kube/client";
import type { KubeCredentials } from "../control/kube/kubeconfig";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vxmesh-kube-client-"));
let pki: TestPki;
let otherPki: TestPki;
let api: KubeApiDouble;
const clients: HttpsKubeApi[] = [];
const servers: (https.Server | net.Server)[] = [];

const GOOD = "good-token";
const node = (name: string, extra: Record<string, unknown> = {}): object => ({
  metadata: { name, labels: { "kubernetes.io/hostname": name } }, spec: { podCIDR: "10.244.1.0/24" }, ...extra,
});

function client(creds: Partial<KubeCredentials> = {}, o: KubeClientOptions = {}): HttpsKubeApi {
  const c = HttpsKubeApi.create({ server: api.url, ca: { kind: "file", path: pki.caFile }, auth: { kind: "token", token: GOOD }, ...creds }, o);
  if (!c.ok) throw new Error(c.error);
  clients.push(c.value);
  return c.value;
}

function value<T>(r: KubeResult<T>): T {
  if (!r.ok) throw new Error(`${r.error.status} ${r.error.reason}: ${r.error.message}`);
  return r.value;
}

function error<T>(r: KubeResult<T>): KubeError {
  if (r.ok) throw new Error(`expected an error, got ${JSON.stringify(r.value).slice(0, 200)}`);
  return r.error;
}

const nameOf = (o: unknown): unknown => (o as { metadata?: { name?: unknown } }).metadata?.name;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  for (let waited = 0; !cond(); waited += 10) {
    if (waited > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** An HTTPS server on 127.0.0.1 with the double's certificate, answering with `handler`. */
async function tinyServer(handler: (req: http.IncomingMessage, res: http.ServerResponse) => void): Promise<string> {
  const s = https.createServer({ key: pki.serverKeyPem, cert: pki.serverCertPem }, handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return `https://127.0.0.1:${(s.address() as net.AddressInfo).port}`;
}

beforeAll(async () => {
  pki = makeTestPki(path.join(dir, "pki"), { ips: ["127.0.0.1"], clientUsers: ["system:node:n1"] });
  otherPki = makeTestPki(path.join(dir, "other"), { ips: ["127.0.0.1"] });
  api = await KubeApiDouble.start({
    pki,
    tokens: {
      [GOOD]: { user: "vxmesh", allow: "all" },
      "reader-token": { user: "reader", allow: ["get nodes", "list nodes"] },
    },
    bookmarkIntervalMs: 100,
  });
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

afterAll(async () => {
  await api?.stop();
  for (const s of servers) s.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("HttpsKubeApi: calls", () => {
  it("lists Nodes in pages with one resourceVersion, the last page without a continue token", async () => {
    for (let i = 0; i < 7; i++) api.upsertNode(node(`list-${i}`));
    const c = client();
    const names: unknown[] = [];
    let token: string | undefined;
    let rv: string | undefined;
    let pages = 0;
    do {
      const page = value(await c.listNodes({ limit: 3, ...(token === undefined ? {} : { continueToken: token }) }));
      rv ??= page.resourceVersion;
      expect(page.resourceVersion).toBe(rv);
      names.push(...page.items.map(nameOf));
      token = page.continueToken;
      pages++;
    } while (token !== undefined);
    expect(names.filter((n) => String(n).startsWith("list-"))).toEqual(["list-0", "list-1", "list-2", "list-3", "list-4", "list-5", "list-6"]);
    expect(pages).toBe(Math.ceil(api.nodeCount / 3));
    const lists = api.requests.filter((r) => r.verb === "list");
    expect(lists[0]?.query).toEqual({ limit: "3" });
    expect(lists[0]?.accept).toBe("application/json");
    expect(lists[0]?.userAgent).toMatch(/^vxmesh\/\d+\.\d+\.\d+/);
  });

  it("gets a Node; a missing one is the server's NotFound", async () => {
    api.upsertNode(node("get-me"));
    const c = client();
    expect(nameOf(value(await c.getNode("get-me")))).toBe("get-me");
    expect(error(await c.getNode("nobody"))).toEqual({ status: 404, reason: "NotFound", message: 'nodes "nobody" not found' });
  });

  it("patches with merge and strategic merge, on the Node and on its status", async () => {
    api.upsertNode(node("patch-me", { status: { conditions: [{ type: "Ready", status: "True" }] } }));
    const c = client();
    const merged = value(await c.patchNode("patch-me", { metadata: { annotations: { "vxmesh.io/underlay-ip": "192.0.2.11" } } }, { type: "merge" }));
    expect(merged).toMatchObject({ metadata: { annotations: { "vxmesh.io/underlay-ip": "192.0.2.11" } } });
    const condition = { type: "NetworkUnavailable", status: "False", reason: "VxmeshIsUp", message: "vxmesh routes are in place" };
    const patched = value(await c.patchNode("patch-me", { status: { conditions: [condition] } }, { type: "strategic", subresource: "status" }));
    // Strategic merge keys conditions by type: Ready stays beside the new one.
    expect((patched as { status: { conditions: unknown[] } }).status.conditions).toEqual([{ type: "Ready", status: "True" }, condition]);
    expect(api.node("patch-me")).toMatchObject({ metadata: { annotations: { "vxmesh.io/underlay-ip": "192.0.2.11" } }, status: { conditions: [{ type: "Ready" }, condition] } });
    const patches = api.requests.filter((r) => r.verb === "patch");
    expect(patches.map((r) => [r.path, r.contentType])).toEqual([
      ["/api/v1/nodes/patch-me", "application/merge-patch+json"],
      ["/api/v1/nodes/patch-me/status", "application/strategic-merge-patch+json"],
    ]);
    expect(error(await c.patchNode("nobody", {}, { type: "merge" })).status).toBe(404);
  });

  it("401 and 403 carry the server's reason and message", async () => {
    const wrong = client({ auth: { kind: "token", token: "wrong" } });
    expect(error(await wrong.listNodes({ limit: 10 }))).toEqual({ status: 401, reason: "Unauthorized", message: "Unauthorized" });
    const none = client({ auth: { kind: "none" } });
    expect(error(await none.getNode("x")).status).toBe(401);
    const reader = client({ auth: { kind: "token", token: "reader-token" } });
    api.upsertNode(node("forbidden-patch"));
    expect(error(await reader.patchNode("forbidden-patch", { metadata: { labels: { a: "b" } } }, { type: "merge", subresource: "status" }))).toEqual({
      status: 403,
      reason: "Forbidden",
      message: 'nodes "forbidden-patch" is forbidden: User "reader" cannot patch resource "nodes/status" in API group "" at the cluster scope',
    });
  });

  it("authenticates with a client certificate, from files or inline PEM", async () => {
    const client1 = pki.clients["system:node:n1"];
    if (client1 === undefined) throw new Error("no client cert");
    api.clearRequests();
    const files = client({ auth: { kind: "client-cert", cert: { kind: "file", path: client1.certFile }, key: { kind: "file", path: client1.keyFile } } });
    value(await files.listNodes({ limit: 1 }));
    const inline = client({ ca: { kind: "pem", pem: pki.caPem }, auth: { kind: "client-cert", cert: { kind: "pem", pem: client1.certPem }, key: { kind: "pem", pem: client1.keyPem } } });
    value(await inline.listNodes({ limit: 1 }));
    expect(api.requests.map((r) => r.user)).toEqual(["system:node:n1", "system:node:n1"]);
  });

  it("re-reads a token file at each call: a rotated token is used on the next one", async () => {
    const file = path.join(dir, "token");
    fs.writeFileSync(file, `${GOOD}\n`);
    api.setToken("rotated-token", { user: "rotated", allow: "all" });
    const c = client({ auth: { kind: "token-file", path: file } });
    api.clearRequests();
    value(await c.listNodes({ limit: 1 }));
    // As kubelet rotates projected tokens: a new file swapped in by rename.
    fs.writeFileSync(`${file}.new`, "rotated-token");
    fs.renameSync(`${file}.new`, file);
    value(await c.listNodes({ limit: 1 }));
    // A failed read keeps the last good token (as client-go does) …
    fs.rmSync(file);
    value(await c.listNodes({ limit: 1 }));
    expect(api.requests.map((r) => r.user)).toEqual(["vxmesh", "rotated", "rotated"]);
    // … but with none read yet, the call fails and says which file.
    const never = client({ auth: { kind: "token-file", path: path.join(dir, "no-token") } });
    expect(error(await never.getNode("x"))).toMatchObject({ status: undefined, reason: "TokenFile", message: expect.stringContaining(path.join(dir, "no-token")) });
    // A token no HTTP header can carry is refused as a value, not thrown by node:http.
    const junk = path.join(dir, "junk-token");
    fs.writeFileSync(junk, "two\nlines\n");
    const bad = client({ auth: { kind: "token-file", path: junk } });
    expect(error(await bad.getNode("x"))).toMatchObject({ reason: "TokenFile", message: expect.stringContaining("cannot carry") });
    expect(error(await client({ auth: { kind: "token", token: "a b" } }).getNode("x")).reason).toBe("Credentials");
    expect(error(await client({}, { userAgent: "bad\nagent" }).getNode("x")).reason).toBe("Invalid");
  });

  it("a refused connection is the socket's error, without an HTTP status", async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const c = client({ server: `https://127.0.0.1:${port}` });
    expect(error(await c.getNode("x"))).toMatchObject({ status: undefined, reason: "ECONNREFUSED", message: expect.stringContaining("ECONNREFUSED") });
  });

  it("a server certificate from another CA, or a wrong name, fails with the TLS message", async () => {
    const wrongCa = client({ ca: { kind: "file", path: otherPki.caFile } });
    // The double sends its CA along with its certificate, so OpenSSL sees a chain ending in an unknown root.
    expect(error(await wrongCa.getNode("x"))).toEqual({ status: undefined, reason: "SELF_SIGNED_CERT_IN_CHAIN", message: "self-signed certificate in certificate chain" });
    const systemRoots = client({ ca: undefined });
    expect(error(await systemRoots.getNode("x")).message).toBe("self-signed certificate in certificate chain");
    // A server that sends its certificate alone (as kube-apiserver does by default).
    const leafOnly = await tinyServer((_req, res) => res.end("{}"));
    const leafClient = client({ server: leafOnly, ca: { kind: "file", path: otherPki.caFile } });
    expect(error(await leafClient.getNode("x"))).toEqual({ status: undefined, reason: "UNABLE_TO_VERIFY_LEAF_SIGNATURE", message: "unable to verify the first certificate" });
    // tls-server-name: checked instead of the URL's host (the certificate names "kubernetes", not "kube.example").
    value(await client({ tlsServerName: "kubernetes" }).listNodes({ limit: 1 }));
    const wrongName = error(await client({ tlsServerName: "kube.example" }).listNodes({ limit: 1 }));
    expect(wrongName).toMatchObject({ status: undefined, reason: "ERR_TLS_CERT_ALTNAME_INVALID", message: expect.stringContaining("kube.example") });
  });

  it("unusable TLS material is an error at create, naming the file", () => {
    const bad = path.join(dir, "bad-ca.crt");
    fs.writeFileSync(bad, "not a certificate\n");
    const base: KubeCredentials = { server: "https://127.0.0.1:1", ca: { kind: "file", path: bad }, auth: { kind: "none" } };
    const r = HttpsKubeApi.create(base);
    expect(!r.ok && r.error).toContain(`the certificate authority ${bad} holds no usable PEM certificate`);
    const missing = HttpsKubeApi.create({ ...base, ca: { kind: "file", path: path.join(dir, "nope.crt") } });
    expect(!missing.ok && missing.error).toContain(`the certificate authority ${path.join(dir, "nope.crt")} cannot be read`);
    const client1 = pki.clients["system:node:n1"];
    const mismatched = HttpsKubeApi.create({ ...base, ca: undefined, auth: { kind: "client-cert", cert: { kind: "pem", pem: client1?.certPem ?? "" }, key: { kind: "pem", pem: pki.serverKeyPem } } });
    expect(!mismatched.ok && mismatched.error).toContain("unusable");
  });

  it("the constructor never throws: unusable credentials fail every call", async () => {
    const c = new HttpsKubeApi({ server: "https://127.0.0.1:1", ca: { kind: "file", path: path.join(dir, "nope.crt") }, auth: { kind: "none" } });
    clients.push(c);
    expect(error(await c.getNode("x"))).toMatchObject({ status: undefined, reason: "Credentials" });
    const w = c.watchNodes({ resourceVersion: "1", bookmarks: false, timeoutSeconds: 5 }, () => undefined);
    expect(error(await w.done).reason).toBe("Credentials");
  });

  it("a non-Status error body (a proxy's page) gives the status text and an excerpt; a silent server times out", async () => {
    const url = await tinyServer((req, res) => {
      if (req.url?.startsWith("/api/v1/nodes/slow")) return; // never answers
      res.writeHead(502, { "content-type": "text/html" }).end("<html><body>Bad gateway from the proxy</body></html>");
    });
    const c = client({ server: url, ca: { kind: "pem", pem: pki.caPem } }, { requestTimeoutMs: 300 });
    expect(error(await c.getNode("x"))).toEqual({ status: 502, reason: "Bad Gateway", message: "HTTP 502 Bad Gateway: <html><body>Bad gateway from the proxy</body></html>" });
    expect(error(await c.getNode("slow"))).toEqual({ status: undefined, reason: "Timeout", message: `no answer from ${url} within 0.3 s` });
  });

  it("caps a body's size", async () => {
    const c = client({}, { maxListBytes: 100 });
    expect(error(await c.listNodes({ limit: 500 }))).toMatchObject({ status: 200, reason: "TooLarge" });
  });

  it("keeps a server path prefix (a proxy in front of the API)", async () => {
    const seen: string[] = [];
    const url = await tinyServer((req, res) => {
      seen.push(req.url ?? "");
      res.writeHead(200, { "content-type": "application/json" }).end('{"kind":"NodeList","metadata":{"resourceVersion":"5"},"items":[]}');
    });
    const c = client({ server: `${url}/k8s/clusters/c1`, ca: { kind: "pem", pem: pki.caPem } });
    expect(value(await c.listNodes({ limit: 2, continueToken: "a b&c" }))).toEqual({ resourceVersion: "5", items: [], continueToken: undefined });
    expect(seen).toEqual(["/k8s/clusters/c1/api/v1/nodes?limit=2&continue=a+b%26c"]);
  });
});

describe("HttpsKubeApi: watch", () => {
  it("delivers events in order, bookmarks included, and stop() ends it ok with nothing after", async () => {
    const c = client();
    const rv = value(await c.listNodes({ limit: 500 })).resourceVersion;
    const events: WatchEvent[] = [];
    const w = c.watchNodes({ resourceVersion: rv, bookmarks: true, timeoutSeconds: 60 }, (e) => events.push(e));
    await until("the watch to open", () => api.openWatches > 0);
    api.upsertNode(node("watch-a"));
    api.upsertNode(node("watch-a", { spec: { podCIDR: "10.244.2.0/24" } }));
    api.upsertNode(node("watch-b"));
    api.deleteNode("watch-a");
    await until("four events and a bookmark", () => events.filter((e) => e.type !== "BOOKMARK").length === 4 && events.some((e) => e.type === "BOOKMARK"));
    const changes = events.filter((e) => e.type !== "BOOKMARK").map((e) => (e.type === "ERROR" ? e.type : [e.type, nameOf(e.object)]));
    expect(changes).toEqual([["ADDED", "watch-a"], ["MODIFIED", "watch-a"], ["ADDED", "watch-b"], ["DELETED", "watch-a"]]);
    const watchReq = api.requests.find((r) => r.verb === "watch");
    expect(watchReq?.query).toEqual({ watch: "1", resourceVersion: rv, allowWatchBookmarks: "true", timeoutSeconds: "60" });
    w.stop();
    w.stop();
    expect(await w.done).toEqual({ ok: true, value: undefined });
    const count = events.length;
    api.upsertNode(node("watch-after-stop"));
    await sleep(250); // two bookmark intervals
    expect(events.length).toBe(count);
    await until("the server to see the watch go", () => api.openWatches === 0);
  });

  it("stop() from inside onEvent: nothing after it, even from the same chunk", async () => {
    const c = client();
    const rv = api.resourceVersion;
    for (let i = 0; i < 5; i++) api.upsertNode(node(`burst-${i}`));
    const events: WatchEvent[] = [];
    // From an old resourceVersion the backlog of five comes in one write.
    const w = c.watchNodes({ resourceVersion: rv, bookmarks: false, timeoutSeconds: 60 }, (e) => {
      events.push(e);
      w.stop();
    });
    expect(await w.done).toEqual({ ok: true, value: undefined });
    await sleep(50);
    expect(events.map((e) => e.type === "ERROR" ? e.type : nameOf(e.object))).toEqual(["burst-0"]);
  });

  it("a resourceVersion older than the history: an ERROR event with 410 Expired, then a clean end", async () => {
    const c = client();
    const old = api.resourceVersion;
    api.upsertNode(node("gone-1"));
    api.compact();
    const events: WatchEvent[] = [];
    const w = c.watchNodes({ resourceVersion: old, bookmarks: true, timeoutSeconds: 60 }, (e) => events.push(e));
    expect(await w.done).toEqual({ ok: true, value: undefined });
    expect(events).toEqual([{ type: "ERROR", status: { status: 410, reason: "Expired", message: expect.stringContaining("too old resource version") } }]);
  });

  it("410 as the HTTP status (some servers): done is the Status", async () => {
    const c = client();
    const old = api.resourceVersion;
    api.upsertNode(node("gone-2"));
    api.compact();
    api.goneAsHttpStatus = true;
    try {
      const w = c.watchNodes({ resourceVersion: old, bookmarks: true, timeoutSeconds: 60 }, () => undefined);
      expect(error(await w.done)).toMatchObject({ status: 410, reason: "Expired" });
    } finally {
      api.goneAsHttpStatus = false;
    }
  });

  it("an open watch the server expires: the ERROR event, then done ok", async () => {
    const c = client();
    const events: WatchEvent[] = [];
    const w = c.watchNodes({ resourceVersion: api.resourceVersion, bookmarks: false, timeoutSeconds: 60 }, (e) => events.push(e));
    await until("the watch to open", () => api.openWatches > 0);
    api.expireWatches();
    expect(await w.done).toEqual({ ok: true, value: undefined });
    expect(events).toMatchObject([{ type: "ERROR", status: { status: 410, reason: "Expired" } }]);
  });

  it("the server's timeoutSeconds ends it ok; the watch asks for exactly that", async () => {
    const c = client();
    const w = c.watchNodes({ resourceVersion: api.resourceVersion, bookmarks: false, timeoutSeconds: 1 }, () => undefined);
    expect(await w.done).toEqual({ ok: true, value: undefined });
  });

  it("a broken connection is an error without an HTTP status", async () => {
    const c = client();
    const w = c.watchNodes({ resourceVersion: api.resourceVersion, bookmarks: true, timeoutSeconds: 60 }, () => undefined);
    await until("the watch to open", () => api.openWatches > 0);
    api.dropWatches();
    const e = error(await w.done);
    expect(e.status).toBeUndefined();
    expect(e.reason).toBe("ECONNRESET");
  });

  it("401 and 403 before the stream: done carries the Status", async () => {
    const wrong = client({ auth: { kind: "token", token: "wrong" } });
    expect(error(await wrong.watchNodes({ resourceVersion: "1", bookmarks: true, timeoutSeconds: 5 }, () => undefined).done)).toEqual({
      status: 401, reason: "Unauthorized", message: "Unauthorized",
    });
    const reader = client({ auth: { kind: "token", token: "reader-token" } });
    const e = error(await reader.watchNodes({ resourceVersion: "1", bookmarks: true, timeoutSeconds: 5 }, () => undefined).done);
    expect(e).toMatchObject({ status: 403, reason: "Forbidden", message: expect.stringContaining('cannot watch resource "nodes"') });
  });

  it("a silent stream is given up after timeoutSeconds + grace", async () => {
    // timeoutSeconds=0: the double sets no timer of its own, and without bookmarks it stays silent.
    const c = client({}, { watchIdleGraceMs: 300 });
    const w = c.watchNodes({ resourceVersion: api.resourceVersion, bookmarks: false, timeoutSeconds: 0 }, () => undefined);
    expect(error(await w.done)).toMatchObject({ status: undefined, reason: "Timeout", message: expect.stringContaining("silent for 0.3 s") });
  });

  it("a garbled line, or a stream cut inside a line, is an error after the events before it", async () => {
    const url = await tinyServer((req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"type":"ADDED","object":{"metadata":{"name":"n1"}}}\n{"type":"ADDED","obj');
      if (req.url?.includes("resourceVersion=cut")) res.end();
      else res.end('ect":{}}\nnot json\n');
    });
    const c = client({ server: url, ca: { kind: "pem", pem: pki.caPem } });
    const events: WatchEvent[] = [];
    const garbled = error(await c.watchNodes({ resourceVersion: "1", bookmarks: false, timeoutSeconds: 5 }, (e) => events.push(e)).done);
    expect(garbled).toMatchObject({ status: 200, reason: "BadStream", message: expect.stringContaining("not JSON") });
    expect(events.map((e) => e.type)).toEqual(["ADDED", "ADDED"]);
    const cut = error(await c.watchNodes({ resourceVersion: "cut", bookmarks: false, timeoutSeconds: 5 }, () => undefined).done);
    expect(cut).toMatchObject({ status: 200, reason: "BadStream", message: expect.stringContaining("ended inside a line") });
  });

  it("close() stops running watches (done ok) and a refused watch is the socket's error", async () => {
    const c = client();
    const w = c.watchNodes({ resourceVersion: api.resourceVersion, bookmarks: true, timeoutSeconds: 60 }, () => undefined);
    await until("the watch to open", () => api.openWatches > 0);
    c.close();
    expect(await w.done).toEqual({ ok: true, value: undefined });
    const refused = client({ server: "https://127.0.0.1:1" });
    expect(error(await refused.watchNodes({ resourceVersion: "1", bookmarks: false, timeoutSeconds: 5 }, () => undefined).done).reason).toBe("ECONNREFUSED");
  });
});
