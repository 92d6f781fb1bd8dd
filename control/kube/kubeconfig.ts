// A kubeconfig file read into what the API client needs: one server, its CA, one way to
// authenticate. Pure: text in, credentials or an error out; files it names are not opened here
// (paths are made absolute against the kubeconfig's folder, as kubectl does, and read by the
// client). What a daemon cannot honour unattended is refused with the field it found, never
// silently skipped: plain http, skipped TLS verification, passwords, exec and auth-provider
// plugins, proxies and impersonation.

import * as path from "node:path";
import { parseDocument } from "yaml";
import type { Parsed } from "../../encap/types";

/** PEM text given inline (a *-data field, decoded) or a file holding it. */
export type PemSource = { readonly kind: "file"; readonly path: string } | { readonly kind: "pem"; readonly pem: string };

export type KubeAuth =
  | { readonly kind: "token"; readonly token: string }
  /** Re-read by the client so a rotated token (projected service-account tokens) keeps working. */
  | { readonly kind: "token-file"; readonly path: string }
  | { readonly kind: "client-cert"; readonly cert: PemSource; readonly key: PemSource }
  | { readonly kind: "none" };

export interface KubeCredentials {
  /** "https://host:port", perhaps with a path prefix; no trailing slash. */
  readonly server: string;
  /** The CA bundle that signs the server's certificate; undefined: the system's roots. */
  readonly ca: PemSource | undefined;
  /** Checked against the server's certificate (and sent as SNI) instead of the URL's host. */
  readonly tlsServerName?: string;
  readonly auth: KubeAuth;
}

export interface KubeconfigOptions {
  /** The context to use instead of current-context. */
  readonly context?: string;
  /** The kubeconfig's path, for messages. */
  readonly file?: string;
}

type Obj = Record<string, unknown>;
const asObj = (v: unknown): Obj | undefined => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Obj) : undefined);
const fail = (error: string): { ok: false; error: string } => ({ ok: false, error });

/** Reads the context's cluster and user. Relative file paths are resolved against `baseDir`. */
export function parseKubeconfig(text: string, baseDir: string, o: KubeconfigOptions = {}): Parsed<KubeCredentials> {
  const where = `kubeconfig ${o.file ?? "(text)"}`;
  const doc = parseDocument(text, { prettyErrors: false });
  if (doc.errors.length > 0) return fail(`${where}: not YAML: ${doc.errors[0]?.message ?? "parse error"}`);
  let js: unknown;
  try {
    js = doc.toJS({ maxAliasCount: 100 }); // throws on an alias bomb
  } catch (e) {
    return fail(`${where}: not usable YAML: ${(e as Error).message}`);
  }
  const root = asObj(js);
  if (root === undefined) return fail(`${where}: not a kubeconfig (expected a mapping with clusters, users and contexts)`);

  const ctxName = o.context ?? (typeof root["current-context"] === "string" ? root["current-context"] : "");
  if (ctxName === "") return fail(`${where}: current-context is not set; name a context (contexts: ${names(root, "contexts")})`);
  const ctx = entry(root, "contexts", "context", ctxName);
  if (!ctx.ok) return fail(`${where}: ${ctx.error}`);
  const clusterName = ctx.value["cluster"];
  if (typeof clusterName !== "string" || clusterName === "") return fail(`${where}: context "${ctxName}" (contexts[].context.cluster) names no cluster`);
  const clusterEntry = entry(root, "clusters", "cluster", clusterName);
  if (!clusterEntry.ok) return fail(`${where}: context "${ctxName}": ${clusterEntry.error}`);
  const cluster = readCluster(clusterEntry.value, `cluster "${clusterName}"`, baseDir);
  if (!cluster.ok) return fail(`${where}: ${cluster.error}`);

  const userName = ctx.value["user"];
  let auth: Parsed<KubeAuth> = { ok: true, value: { kind: "none" } };
  if (typeof userName === "string" && userName !== "") {
    const userEntry = entry(root, "users", "user", userName);
    if (!userEntry.ok) return fail(`${where}: context "${ctxName}": ${userEntry.error}`);
    auth = readUser(userEntry.value, `user "${userName}"`, baseDir);
  }
  if (!auth.ok) return fail(`${where}: ${auth.error}`);
  return { ok: true, value: { ...cluster.value, auth: auth.value } };
}

/** The body (`key`) of the entry named `name` in the list `list` (contexts, clusters, users). */
function entry(root: Obj, list: string, key: string, name: string): Parsed<Obj> {
  const items = root[list];
  for (const item of Array.isArray(items) ? items : []) {
    const e = asObj(item);
    if (e?.["name"] !== name) continue;
    const body = asObj(e[key]);
    return body === undefined ? fail(`${list.slice(0, -1)} "${name}" has no ${list}[].${key} mapping`) : { ok: true, value: body };
  }
  return fail(`no ${list.slice(0, -1)} named "${name}" in ${list} (there: ${names(root, list)})`);
}

function names(root: Obj, list: string): string {
  const items = root[list];
  const found = (Array.isArray(items) ? items : []).map((i) => asObj(i)?.["name"]).filter((n): n is string => typeof n === "string");
  return found.length === 0 ? "none" : found.map((n) => `"${n}"`).join(", ");
}

type ClusterPart = Omit<KubeCredentials, "auth">;

function readCluster(c: Obj, label: string, baseDir: string): Parsed<ClusterPart> {
  const field = (f: string): string => `${label} (clusters[].cluster.${f})`;
  const server = c["server"];
  if (typeof server !== "string" || server === "") return fail(`${field("server")}: no server URL`);
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    return fail(`${field("server")}: "${server}" is not a URL such as https://192.0.2.1:6443`);
  }
  if (url.protocol === "http:") return fail(`${field("server")}: "${server}" is plain http; vxmesh talks to the API server over https only`);
  if (url.protocol !== "https:") return fail(`${field("server")}: "${server}" is not an https:// URL`);
  if (url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") {
    return fail(`${field("server")}: "${server}" carries a query, fragment or user; give scheme, host, port and at most a path`);
  }
  if (c["insecure-skip-tls-verify"] === true) {
    return fail(`${field("insecure-skip-tls-verify")}: skipping TLS verification is not supported; give certificate-authority or certificate-authority-data`);
  }
  if (c["proxy-url"] !== undefined) return fail(`${field("proxy-url")}: proxies are not supported; the daemon connects to the server directly`);
  const ca = pemSource(c, "certificate-authority", "CERTIFICATE", baseDir, field);
  if (!ca.ok) return ca;
  const sni = c["tls-server-name"];
  if (sni !== undefined && (typeof sni !== "string" || sni === "")) return fail(`${field("tls-server-name")}: not a host name`);
  const value: ClusterPart = { server: url.href.replace(/\/+$/, ""), ca: ca.value };
  return { ok: true, value: typeof sni === "string" ? { ...value, tlsServerName: sni } : value };
}

function readUser(u: Obj, label: string, baseDir: string): Parsed<KubeAuth> {
  const field = (f: string): string => `${label} (users[].user.${f})`;
  for (const f of ["exec", "auth-provider"]) {
    if (u[f] !== undefined && u[f] !== null) return fail(`${field(f)}: not supported: give a token or client certificate`);
  }
  for (const f of ["username", "password"]) {
    if (typeof u[f] === "string" && u[f] !== "") return fail(`${field(f)}: basic authentication is not supported: give a token or client certificate`);
  }
  for (const f of ["as", "as-uid", "as-groups", "as-user-extra"]) {
    if (u[f] !== undefined && u[f] !== null && u[f] !== "") return fail(`${field(f)}: impersonation is not supported`);
  }
  const cert = pemSource(u, "client-certificate", "CERTIFICATE", baseDir, field);
  if (!cert.ok) return cert;
  const key = pemSource(u, "client-key", "PRIVATE KEY", baseDir, field);
  if (!key.ok) return key;
  const token = u["token"];
  const tokenFile = u["tokenFile"];
  const hasToken = (typeof token === "string" && token.trim() !== "") || (typeof tokenFile === "string" && tokenFile !== "");
  if (cert.value !== undefined || key.value !== undefined) {
    if (cert.value === undefined) return fail(`${field("client-key")}: a client key without client-certificate(-data)`);
    if (key.value === undefined) return fail(`${field("client-certificate")}: a client certificate without client-key(-data)`);
    if (hasToken) return fail(`${field("token")}: both a token and a client certificate; give one of them`);
    return { ok: true, value: { kind: "client-cert", cert: cert.value, key: key.value } };
  }
  if (token !== undefined && typeof token !== "string") return fail(`${field("token")}: not a string`);
  if (tokenFile !== undefined && typeof tokenFile !== "string") return fail(`${field("tokenFile")}: not a string`);
  // As in kubeconfig's own rules: token wins over tokenFile when both are set.
  if (typeof token === "string" && token.trim() !== "") {
    if (!/^[\x21-\x7e]+$/.test(token.trim())) return fail(`${field("token")}: holds spaces or characters an HTTP header cannot carry`);
    return { ok: true, value: { kind: "token", token: token.trim() } };
  }
  if (typeof tokenFile === "string" && tokenFile !== "") return { ok: true, value: { kind: "token-file", path: path.resolve(baseDir, tokenFile) } };
  return { ok: true, value: { kind: "none" } };
}

/**
 * `<name>-data` (base64 PEM, which wins, as in kubectl) or `<name>` (a path), or undefined when
 * neither is set. Inline data is checked to be PEM of the expected kind so a bad paste is named
 * here rather than as a TLS failure later.
 */
function pemSource(o: Obj, name: string, label: string, baseDir: string, field: (f: string) => string): Parsed<PemSource | undefined> {
  const data = o[`${name}-data`];
  if (data !== undefined && data !== null && data !== "") {
    if (typeof data !== "string") return fail(`${field(`${name}-data`)}: not a base64 string`);
    const compact = data.replace(/\s+/g, "");
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 === 1) return fail(`${field(`${name}-data`)}: not base64`);
    const pem = Buffer.from(compact, "base64").toString("utf8");
    if (!new RegExp(`-----BEGIN [A-Z0-9 ]*${label}-----`).test(pem)) return fail(`${field(`${name}-data`)}: the decoded data is not a PEM ${label}`);
    return { ok: true, value: { kind: "pem", pem } };
  }
  const file = o[name];
  if (file === undefined || file === null || file === "") return { ok: true, value: undefined };
  if (typeof file !== "string") return fail(`${field(name)}: not a file path`);
  return { ok: true, value: { kind: "file", path: path.resolve(baseDir, file) } };
}
