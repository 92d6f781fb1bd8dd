import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadCredentials } from "../control/kube/credentials";
import { parseKubeconfig, type KubeCredentials } from "../control/kube/kubeconfig";

const CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
const KEY_PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcfake\n-----END EC PRIVATE KEY-----\n";
const b64 = (s: string): string => Buffer.from(s).toString("base64");

/** A kubeconfig with one context "c" → cluster "k" and user "u", the given bodies. */
function config(cluster: Record<string, unknown>, user: Record<string, unknown> | undefined, extra = ""): string {
  const yamlOf = (o: Record<string, unknown>, indent: string): string =>
    Object.entries(o).map(([k, v]) => `${indent}${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`).join("\n");
  return [
    "apiVersion: v1",
    "kind: Config",
    "current-context: c",
    "clusters:",
    "- name: k",
    "  cluster:",
    yamlOf(cluster, "    "),
    "contexts:",
    "- name: c",
    "  context:",
    "    cluster: k",
    user === undefined ? "" : "    user: u",
    "users:",
    "- name: u",
    "  user:",
    user === undefined || Object.keys(user).length === 0 ? "    {}" : yamlOf(user, "    "),
    extra,
  ].join("\n");
}

function ok(text: string, base = "/etc/kube", o: { context?: string; file?: string } = {}): KubeCredentials {
  const r = parseKubeconfig(text, base, o);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function err(text: string, o: { context?: string; file?: string } = { file: "/etc/kube/config" }): string {
  const r = parseKubeconfig(text, "/etc/kube", o);
  if (r.ok) throw new Error(`expected an error, got ${JSON.stringify(r.value)}`);
  return r.error;
}

describe("parseKubeconfig: clusters", () => {
  it("reads server, a CA file relative to the kubeconfig's folder, and tls-server-name", () => {
    const c = ok(config({ server: "https://192.0.2.1:6443/", "certificate-authority": "pki/ca.crt", "tls-server-name": "kubernetes" }, { token: "abc" }));
    expect(c.server).toBe("https://192.0.2.1:6443");
    expect(c.ca).toEqual({ kind: "file", path: "/etc/kube/pki/ca.crt" });
    expect(c.tlsServerName).toBe("kubernetes");
  });

  it("keeps an absolute CA path, a path prefix on the server, and IPv6 servers", () => {
    const c = ok(config({ server: "https://[2001:db8::1]:6443/k8s/clusters/c1", "certificate-authority": "/abs/ca.pem" }, { token: "t" }));
    expect(c.server).toBe("https://[2001:db8::1]:6443/k8s/clusters/c1");
    expect(c.ca).toEqual({ kind: "file", path: "/abs/ca.pem" });
  });

  it("decodes certificate-authority-data, which wins over the file (as in kubectl)", () => {
    const c = ok(config({ server: "https://h:6443", "certificate-authority": "ca.crt", "certificate-authority-data": b64(CA_PEM) }, { token: "t" }));
    expect(c.ca).toEqual({ kind: "pem", pem: CA_PEM });
  });

  it("no CA at all means the system roots", () => {
    expect(ok(config({ server: "https://api.example.com" }, { token: "t" })).ca).toBeUndefined();
  });

  it("refuses plain http, insecure-skip-tls-verify, proxies and non-URLs, naming file and field", () => {
    const http = err(config({ server: "http://192.0.2.1:8080" }, { token: "t" }));
    expect(http).toContain("kubeconfig /etc/kube/config");
    expect(http).toContain("clusters[].cluster.server");
    expect(http).toContain("plain http");
    const insecure = err(config({ server: "https://h", "insecure-skip-tls-verify": true }, { token: "t" }));
    expect(insecure).toContain("insecure-skip-tls-verify");
    expect(insecure).toContain("certificate-authority");
    expect(err(config({ server: "https://h", "proxy-url": "http://proxy:3128" }, { token: "t" }))).toContain("proxy-url");
    expect(err(config({ server: "not a url" }, { token: "t" }))).toContain("not a URL");
    expect(err(config({ server: "ftp://h" }, { token: "t" }))).toContain("not an https:// URL");
    expect(err(config({ "certificate-authority": "ca" }, { token: "t" }))).toContain("no server URL");
  });

  it("refuses certificate-authority-data that is not base64 PEM", () => {
    expect(err(config({ server: "https://h", "certificate-authority-data": "'not*base64'" }, { token: "t" }))).toContain("(clusters[].cluster.certificate-authority-data): not base64");
    expect(err(config({ server: "https://h", "certificate-authority-data": b64("hello") }, { token: "t" }))).toContain("not a PEM CERTIFICATE");
  });
});

describe("parseKubeconfig: users", () => {
  const cluster = { server: "https://h:6443" };

  it("a token (trimmed), which wins over tokenFile", () => {
    expect(ok(config(cluster, { token: "abc" })).auth).toEqual({ kind: "token", token: "abc" });
    expect(ok(config(cluster, { token: "abc", tokenFile: "t" })).auth).toEqual({ kind: "token", token: "abc" });
  });

  it("refuses a token an HTTP header cannot carry", () => {
    expect(err(config(cluster, { token: '"two words"' }))).toContain("(users[].user.token): holds spaces or characters an HTTP header cannot carry");
  });

  it("a tokenFile, relative to the kubeconfig's folder", () => {
    expect(ok(config(cluster, { tokenFile: "tokens/me" })).auth).toEqual({ kind: "token-file", path: "/etc/kube/tokens/me" });
  });

  it("a client certificate from files or from data fields", () => {
    expect(ok(config(cluster, { "client-certificate": "me.crt", "client-key": "/k/me.key" })).auth).toEqual({
      kind: "client-cert", cert: { kind: "file", path: "/etc/kube/me.crt" }, key: { kind: "file", path: "/k/me.key" },
    });
    expect(ok(config(cluster, { "client-certificate-data": b64(CA_PEM), "client-key-data": b64(KEY_PEM) })).auth).toEqual({
      kind: "client-cert", cert: { kind: "pem", pem: CA_PEM }, key: { kind: "pem", pem: KEY_PEM },
    });
  });

  it("no user in the context, or an empty one: no authentication", () => {
    expect(ok(config(cluster, undefined)).auth).toEqual({ kind: "none" });
    expect(ok(config(cluster, {})).auth).toEqual({ kind: "none" });
  });

  it("refuses exec, auth-provider, basic auth and impersonation, naming the field", () => {
    const exec = err(config(cluster, { exec: { command: "aws", apiVersion: "client.authentication.k8s.io/v1" } }));
    expect(exec).toBe('kubeconfig /etc/kube/config: user "u" (users[].user.exec): not supported: give a token or client certificate');
    expect(err(config(cluster, { "auth-provider": { name: "oidc" } }))).toContain("users[].user.auth-provider): not supported: give a token or client certificate");
    expect(err(config(cluster, { username: "admin", password: "secret" }))).toContain("users[].user.username): basic authentication is not supported");
    expect(err(config(cluster, { token: "t", as: "someone" }))).toContain("impersonation");
  });

  it("refuses half a client certificate, and a certificate together with a token", () => {
    expect(err(config(cluster, { "client-certificate": "me.crt" }))).toContain("without client-key");
    expect(err(config(cluster, { "client-key-data": b64(KEY_PEM) }))).toContain("without client-certificate");
    expect(err(config(cluster, { "client-key-data": b64(CA_PEM), "client-certificate-data": b64(CA_PEM) }))).toContain("client-key-data): the decoded data is not a PEM PRIVATE KEY");
    expect(err(config(cluster, { token: "t", "client-certificate": "c", "client-key": "k" }))).toContain("both a token and a client certificate");
  });
});

describe("parseKubeconfig: contexts", () => {
  const two = [
    "current-context: a",
    "clusters:",
    "- {name: ka, cluster: {server: 'https://a:6443'}}",
    "- {name: kb, cluster: {server: 'https://b:6443'}}",
    "users:",
    "- {name: ua, user: {token: ta}}",
    "- {name: ub, user: {token: tb}}",
    "contexts:",
    "- {name: a, context: {cluster: ka, user: ua}}",
    "- {name: b, context: {cluster: kb, user: ub}}",
  ].join("\n");

  it("uses current-context, or the one asked for", () => {
    expect(ok(two)).toMatchObject({ server: "https://a:6443", auth: { kind: "token", token: "ta" } });
    expect(ok(two, "/", { context: "b" })).toMatchObject({ server: "https://b:6443", auth: { kind: "token", token: "tb" } });
  });

  it("names what is missing", () => {
    expect(err(two, { context: "zz" })).toBe('kubeconfig (text): no context named "zz" in contexts (there: "a", "b")');
    expect(err(two.replace("current-context: a", ""))).toContain('current-context is not set; name a context (contexts: "a", "b")');
    expect(err(two.replace("cluster: ka", "cluster: kz"))).toContain('context "a": no cluster named "kz" in clusters (there: "ka", "kb")');
    expect(err(two.replace("user: ua", "user: uz"))).toContain('no user named "uz" in users');
    expect(err("clusters: [unclosed")).toContain("not YAML");
    expect(err("just a string")).toContain("not a kubeconfig");
  });
});

describe("loadCredentials", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vxmesh-kubecreds-"));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sa = path.join(dir, "sa");
  fs.mkdirSync(sa);
  fs.writeFileSync(path.join(sa, "token"), "eyJhbGciOi.token\n");
  fs.writeFileSync(path.join(sa, "ca.crt"), CA_PEM);
  const env = { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" };

  it("in-cluster: the service address, the service-account CA, and the token as a file to re-read", () => {
    const r = loadCredentials({ env, serviceAccountDir: sa });
    expect(r.ok && r.value).toEqual({
      server: "https://10.96.0.1:443",
      ca: { kind: "file", path: path.join(sa, "ca.crt") },
      auth: { kind: "token-file", path: path.join(sa, "token") },
      source: `in-cluster service account (${sa})`,
    });
  });

  it("in-cluster: an IPv6 service address is bracketed", () => {
    const r = loadCredentials({ env: { KUBERNETES_SERVICE_HOST: "fd00:10:96::1", KUBERNETES_SERVICE_PORT: "443" }, serviceAccountDir: sa });
    expect(r.ok && r.value.server).toBe("https://[fd00:10:96::1]:443");
  });

  it("outside a pod: says so and names both ways to give credentials", () => {
    const r = loadCredentials({ env: {}, serviceAccountDir: sa });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toContain("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set");
    expect(r.error).toContain("--kubeconfig");
    expect(r.error).toContain("automountServiceAccountToken");
    const half = loadCredentials({ env: { KUBERNETES_SERVICE_HOST: "10.96.0.1" }, serviceAccountDir: sa });
    expect(!half.ok && half.error).toContain("KUBERNETES_SERVICE_PORT not set");
    const bad = loadCredentials({ env: { ...env, KUBERNETES_SERVICE_PORT: "https" }, serviceAccountDir: sa });
    expect(!bad.ok && bad.error).toContain('KUBERNETES_SERVICE_PORT is "https"');
  });

  it("in a pod without a mounted token or CA: names the file and automountServiceAccountToken", () => {
    const empty = path.join(dir, "empty");
    fs.mkdirSync(empty);
    const r = loadCredentials({ env, serviceAccountDir: empty });
    expect(!r.ok && r.error).toBe(
      `in-cluster credentials: the service-account token ${path.join(empty, "token")} does not exist; give --kubeconfig FILE, or run vxmesh in a pod ` +
        "whose service account token is mounted (automountServiceAccountToken must not be false on the pod or its ServiceAccount)",
    );
    fs.writeFileSync(path.join(empty, "token"), "t");
    const noCa = loadCredentials({ env, serviceAccountDir: empty });
    expect(!noCa.ok && noCa.error).toContain(`service-account CA ${path.join(empty, "ca.crt")} does not exist`);
  });

  it("--kubeconfig wins over the in-cluster environment; relative paths are the kubeconfig's", () => {
    const kc = path.join(dir, "kc");
    fs.mkdirSync(kc);
    fs.writeFileSync(path.join(kc, "ca.crt"), CA_PEM);
    fs.writeFileSync(path.join(kc, "token"), "tok\n");
    fs.writeFileSync(path.join(kc, "config"), config({ server: "https://127.0.0.1:6443", "certificate-authority": "ca.crt" }, { tokenFile: "token" }));
    const r = loadCredentials({ kubeconfig: path.join(kc, "config"), env, serviceAccountDir: sa });
    expect(r.ok && r.value).toEqual({
      server: "https://127.0.0.1:6443",
      ca: { kind: "file", path: path.join(kc, "ca.crt") },
      auth: { kind: "token-file", path: path.join(kc, "token") },
      source: `kubeconfig ${path.join(kc, "config")}`,
    });
  });

  it("--kubeconfig: a missing file, or a file it names that is missing, is named", () => {
    const missing = loadCredentials({ kubeconfig: path.join(dir, "nope"), env: {} });
    expect(!missing.ok && missing.error).toContain(`kubeconfig ${path.join(dir, "nope")} cannot be read`);
    const file = path.join(dir, "config-missing-ca");
    fs.writeFileSync(file, config({ server: "https://127.0.0.1:6443", "certificate-authority": "nowhere/ca.crt" }, { token: "t" }));
    const r = loadCredentials({ kubeconfig: file, env: {} });
    expect(!r.ok && r.error).toBe(`kubeconfig ${file}: certificate-authority ${path.join(dir, "nowhere/ca.crt")} does not exist`);
    fs.writeFileSync(file, config({ server: "http://127.0.0.1:8080" }, { token: "t" }));
    const http = loadCredentials({ kubeconfig: file, env: {} });
    expect(!http.ok && http.error).toContain(`kubeconfig ${file}: cluster "k" (clusters[].cluster.server)`);
  });
});
