// Test tooling only: a Kubernetes API server double for core/v1 Nodes that speaks the real wire
// protocol, enough for kubectl 1.32 and control/kube/client.ts (test/kube-api-double.test.ts
// drives it with the real kubectl to keep it honest). It is also the bench's simulated API with
// thousands of Nodes, so every Node is kept serialised once per write and lists and watch events
// are assembled from those strings.
//
// What it does as the real kube-apiserver does:
// - TLS with a CA; a verified client certificate authenticates as its CN, else
//   `Authorization: Bearer`; no credentials or an unknown token: 401. Per-user verbs ("list
//   nodes", "patch nodes/status", …): 403 with the RBAC authorizer's message.
// - Discovery (legacy only: kubectl asks for aggregated discovery first and falls back when the
//   answer is plain application/json), /version, no OpenAPI (404; kubectl copes for the verbs we use).
// - Lists with limit/continue (the continue token names the last key served, so pages never skip
//   or repeat while nothing changes; a token older than the last compaction is 410 Expired, as
//   with etcd), fieldSelector metadata.name, equality label selectors.
// - Watches as chunked JSON lines from any resourceVersion still in the history window, else one
//   ERROR event carrying 410 Expired ("too old resource version"), which is what the watch cache
//   sends; bookmarks; timeoutSeconds; sendInitialEvents with the initial-events-end bookmark.
// - Writes: create, update (409 on a stale resourceVersion), delete, and PATCH on the object and
//   its status subresource as JSON merge patch (RFC 7386), strategic merge patch (keyed lists of
//   Nodes: conditions and addresses by type, taints by key; the usual $patch directives) and JSON
//   patch (RFC 6902). The status subresource changes .status and the labels and annotations (a
//   Node's status strategy resets only .spec), the main resource never changes .status.
//   A write that changes nothing does not bump the resourceVersion (etcd skips identical
//   writes); every other write bumps the one global resourceVersion and is sent to the watches.
// What it leaves out: protobuf and Table answers (kubectl falls back to JSON), server-side apply,
// managedFields, finalizers and graceful deletion, label selectors with set operators, and label
// selectors on watches see only an object's new labels (no synthetic ADDED/DELETED on a change).

import { randomBytes, randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import * as https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { stringify as yamlStringify } from "yaml";
import type { TestPki } from "./kube-pki";

// ---------------------------------------------------------------------------------------------
// Public types

/** What a user may do: everything, or items like "list nodes", "watch nodes", "patch nodes/status". */
export type KubeAllow = "all" | readonly string[];

export interface KubeGrant {
  readonly user: string;
  readonly allow: KubeAllow;
}

export type NodeJson = Record<string, unknown>;

export interface KubeApiDoubleOptions {
  /** Listen address; default 127.0.0.1. */
  host?: string;
  /** 0 (default) picks a free port; restarts keep the port picked first. */
  port?: number;
  pki: Pick<TestPki, "caPem" | "serverCertPem" | "serverKeyPem">;
  /** Bearer token → who it is and what it may do. */
  tokens?: Readonly<Record<string, KubeGrant>>;
  /** What a client-certificate user (its CN) may do; a CN not listed here may do everything. */
  certGrants?: Readonly<Record<string, KubeAllow>>;
  /** Between bookmarks on a watch that asked for them; default 1000 ms. */
  bookmarkIntervalMs?: number;
  /** Answer a watch from a compacted resourceVersion with HTTP 410 instead of a 200 + ERROR event. */
  goneAsHttpStatus?: boolean;
  /** Events kept for watches to resume from; older resourceVersions are 410. Default 10 000. */
  historyLimit?: number;
  /** Request log entries kept (oldest dropped first); default 10 000. */
  requestLogLimit?: number;
  /** Nodes present from the start (as upsertNode). */
  nodes?: readonly object[];
}

export interface KubeRequestRecord {
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  /** Authenticated user; undefined when authentication failed. */
  readonly user: string | undefined;
  readonly status: number;
  /** The authorizer's verb ("list", "watch", "patch", …) for resource requests. */
  readonly verb: string | undefined;
  readonly accept: string | undefined;
  readonly contentType: string | undefined;
  readonly userAgent: string | undefined;
  /** The request body of a write (first 4 KiB), e.g. the patch kubectl sent. */
  readonly body: string | undefined;
}

export interface KubeRequestCounts {
  gets: number;
  lists: number;
  watches: number;
  creates: number;
  updates: number;
  patches: number;
  deletes: number;
  /** Answered 401 or 403. */
  denied: number;
}

/** The user name counted for requests that failed authentication. */
export const UNAUTHENTICATED = "system:anonymous";

// ---------------------------------------------------------------------------------------------
// metav1.Status

interface StatusDetails {
  name?: string;
  kind?: string;
  uid?: string;
}

function statusJson(code: number, reason: string, message: string, details?: StatusDetails): Record<string, unknown> {
  const s: Record<string, unknown> = { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason };
  if (details !== undefined) s["details"] = details;
  s["code"] = code;
  return s;
}

/** A request that ends in a metav1.Status answer. */
class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: StatusDetails,
  ) {
    super(message);
  }
}

const notFound = (name: string): ApiError => new ApiError(404, "NotFound", `nodes "${name}" not found`, { name, kind: "nodes" });
const badRequest = (message: string): ApiError => new ApiError(400, "BadRequest", message);
const invalid = (name: string, message: string): ApiError =>
  new ApiError(422, "Invalid", `Node "${name}" is invalid: ${message}`, { name, kind: "Node" });
const conflict = (name: string): ApiError =>
  new ApiError(409, "Conflict", `Operation cannot be fulfilled on nodes "${name}": the object has been modified; please apply your changes to the latest version and try again`, { name, kind: "nodes" });

// ---------------------------------------------------------------------------------------------
// Discovery documents (what kube-apiserver 1.32 answers, trimmed to core/v1 Nodes)

const VERSION = {
  major: "1",
  minor: "32",
  gitVersion: "v1.32.4",
  gitCommit: "59526cd4867447956156ae3a602fcbac10a2c335",
  gitTreeState: "clean",
  buildDate: "2025-04-22T16:02:27Z",
  goVersion: "go1.23.6",
  compiler: "gc",
  platform: "linux/amd64",
};

const API_RESOURCES = {
  kind: "APIResourceList",
  groupVersion: "v1",
  resources: [
    {
      name: "nodes",
      singularName: "node",
      namespaced: false,
      kind: "Node",
      verbs: ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
      shortNames: ["no"],
      storageVersionHash: "XwShjMxG9Fs=",
    },
    { name: "nodes/proxy", singularName: "", namespaced: false, kind: "NodeProxyOptions", verbs: ["create", "delete", "get", "patch", "update"] },
    { name: "nodes/status", singularName: "", namespaced: false, kind: "Node", verbs: ["get", "patch", "update"] },
  ],
};

const PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json"];

// ---------------------------------------------------------------------------------------------
// Small helpers

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function child(o: Record<string, unknown>, key: string): Record<string, unknown> {
  const v = o[key];
  if (isRecord(v)) return v;
  const fresh: Record<string, unknown> = {};
  o[key] = fresh;
  return fresh;
}

function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (isRecord(v)) for (const [k, x] of Object.entries(v)) if (typeof x === "string") out[k] = x;
  return out;
}

/** metav1.Time: RFC 3339 in seconds. */
function kubeTime(d = new Date()): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** RFC 1123 DNS subdomain, the rule for Node names. */
const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function parseBool(v: string | null): boolean {
  return v !== null && /^(1|t|true|TRUE|True)$/.test(v);
}

function mediaType(header: string | undefined): string {
  return (header ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
}

/** Can the client take a plain application/json answer? (Table and aggregated discovery entries ask for more.) */
function acceptsJson(accept: string | undefined): boolean {
  if (accept === undefined || accept.trim() === "") return true;
  return accept.split(",").some((entry) => {
    const [type, ...params] = entry.split(";").map((s) => s.trim().toLowerCase());
    if (type === "*/*" || type === "application/*") return true;
    return type === "application/json" && !params.some((p) => p.startsWith("as="));
  });
}

// ---------------------------------------------------------------------------------------------
// Selectors

interface FieldSelector {
  readonly name: string;
  readonly negate: boolean;
}

function parseFieldSelector(s: string | null): FieldSelector | undefined {
  if (s === null || s.trim() === "") return undefined;
  const m = /^\s*metadata\.name\s*(==|=|!=)\s*([^,\s]*)\s*$/.exec(s);
  if (m === null) {
    throw badRequest(`unable to parse requirement: field label not supported by this test double: "${s}" (only metadata.name)`);
  }
  return { name: m[2] ?? "", negate: m[1] === "!=" };
}

type LabelRequirement = { key: string; op: "=" | "!=" | "exists" | "!exists"; value: string };

function parseLabelSelector(s: string | null): LabelRequirement[] | undefined {
  if (s === null || s.trim() === "") return undefined;
  if (/[()]/.test(s)) throw badRequest(`unable to parse requirement: set-based label selectors are not supported by this test double: "${s}"`);
  return s.split(",").map((part) => {
    const p = part.trim();
    const m = /^([^!=\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(p);
    if (m !== null) return { key: m[1] ?? "", op: m[2] === "!=" ? "!=" : "=", value: m[3] ?? "" };
    if (/^![^!=\s]+$/.test(p)) return { key: p.slice(1), op: "!exists", value: "" };
    if (/^[^!=\s]+$/.test(p)) return { key: p, op: "exists", value: "" };
    throw badRequest(`unable to parse requirement: "${p}"`);
  });
}

function labelsMatch(sel: readonly LabelRequirement[] | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (sel === undefined) return true;
  return sel.every((r) => {
    const v = labels[r.key];
    switch (r.op) {
      case "=": return v === r.value;
      case "!=": return v !== r.value;
      case "exists": return v !== undefined;
      case "!exists": return v === undefined;
    }
  });
}

interface Filter {
  readonly field: FieldSelector | undefined;
  readonly labels: LabelRequirement[] | undefined;
}

function matches(f: Filter, name: string, labels: Readonly<Record<string, string>>): boolean {
  if (f.field !== undefined && (name === f.field.name) === f.field.negate) return false;
  return labelsMatch(f.labels, labels);
}

// ---------------------------------------------------------------------------------------------
// Patches

/** RFC 7386 JSON merge patch. */
export function jsonMergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return patch;
  const out: Record<string, unknown> = isRecord(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = jsonMergePatch(out[k], v);
  }
  return out;
}

/** Lists of a Node merged by a key (patchMergeKey in k8s.io/api/core/v1), by their JSON path. */
const MERGE_KEYS: Readonly<Record<string, string>> = {
  "metadata.ownerReferences": "uid",
  "spec.taints": "key",
  "status.addresses": "type",
  "status.conditions": "type",
};
/** Lists of primitives with patchStrategy merge: the patch's values are added (a union). */
const MERGE_PRIMITIVE_LISTS = new Set(["metadata.finalizers", "spec.podCIDRs"]);

class PatchError extends Error {}

/**
 * Strategic merge patch on a Node: JSON merge patch, except that the keyed lists above are merged
 * element by element, and the directives $patch (merge/replace/delete), $retainKeys,
 * $deleteFromPrimitiveList/<list> and $setElementOrder/<list> (order only; ignored) apply.
 */
export function strategicMergePatch(target: unknown, patch: unknown, path = ""): unknown {
  if (!isRecord(patch)) return patch;
  const directive = patch["$patch"];
  if (directive === "delete") return undefined;
  const body: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(patch)) if (k !== "$patch") body[k] = v;
  if (directive === "replace") return stripDirectives(body);
  if (directive !== undefined && directive !== "merge") throw new PatchError(`unknown patch directive "$patch": ${JSON.stringify(directive)}`);

  const out: Record<string, unknown> = isRecord(target) ? { ...target } : {};
  let retain: string[] | undefined;
  for (const [k, v] of Object.entries(body)) {
    if (k === "$retainKeys") {
      if (!Array.isArray(v) || !v.every((x): x is string => typeof x === "string")) throw new PatchError("$retainKeys must be a list of strings");
      retain = v;
      continue;
    }
    if (k.startsWith("$setElementOrder/")) continue;
    if (k.startsWith("$deleteFromPrimitiveList/")) {
      const list = k.slice("$deleteFromPrimitiveList/".length);
      if (!Array.isArray(v)) throw new PatchError(`${k} must be a list`);
      const cur = out[list];
      if (Array.isArray(cur)) out[list] = cur.filter((x) => !v.some((d) => JSON.stringify(d) === JSON.stringify(x)));
      continue;
    }
    if (k.startsWith("$")) throw new PatchError(`unsupported strategic merge patch directive "${k}"`);
    const sub = path === "" ? k : `${path}.${k}`;
    if (v === null) {
      delete out[k];
    } else if (Array.isArray(v)) {
      out[k] = mergeList(out[k], v, sub);
    } else {
      const merged = strategicMergePatch(out[k], v, sub);
      if (merged === undefined) delete out[k];
      else out[k] = merged;
    }
  }
  if (retain !== undefined) for (const k of Object.keys(out)) if (!retain.includes(k)) delete out[k];
  return out;
}

function stripDirectives(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(stripDirectives);
  if (!isRecord(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) if (!k.startsWith("$")) out[k] = stripDirectives(x);
  return out;
}

function mergeList(target: unknown, patch: readonly unknown[], path: string): unknown[] {
  const replaceAll = patch.some((e) => isRecord(e) && e["$patch"] === "replace");
  if (replaceAll) return patch.filter((e) => !(isRecord(e) && e["$patch"] === "replace")).map(stripDirectives);
  const cur = Array.isArray(target) ? target : [];
  if (MERGE_PRIMITIVE_LISTS.has(path)) {
    const out = [...cur];
    for (const e of patch) if (!out.some((x) => JSON.stringify(x) === JSON.stringify(e))) out.push(e);
    return out;
  }
  const key = MERGE_KEYS[path];
  if (key === undefined) return patch.map(stripDirectives); // no strategy: replace
  const out: unknown[] = [...cur];
  for (const e of patch) {
    if (!isRecord(e) || !(key in e)) throw new PatchError(`map: ${JSON.stringify(e)} does not contain declared merge key: ${key}`);
    const at = out.findIndex((x) => isRecord(x) && x[key] === e[key]);
    if (e["$patch"] === "delete") {
      if (at >= 0) out.splice(at, 1);
      continue;
    }
    if (at >= 0) out[at] = strategicMergePatch(out[at], e, path);
    else out.push(stripDirectives(e));
  }
  return out;
}

/** RFC 6902 JSON patch. Throws PatchError on a failed operation (the whole patch then fails). */
export function jsonPatch(doc: unknown, ops: unknown): unknown {
  if (!Array.isArray(ops)) throw new PatchError("a JSON patch must be a list of operations");
  let cur: unknown = structuredClone(doc);
  for (const op of ops) {
    if (!isRecord(op) || typeof op["op"] !== "string" || typeof op["path"] !== "string") {
      throw new PatchError(`invalid JSON patch operation: ${JSON.stringify(op)}`);
    }
    const path = parsePointer(op["path"]);
    const fromPath = typeof op["from"] === "string" ? parsePointer(op["from"]) : undefined;
    switch (op["op"]) {
      case "add": cur = pointerSet(cur, path, structuredClone(op["value"]), "add"); break;
      case "replace": cur = pointerSet(cur, path, structuredClone(op["value"]), "replace"); break;
      case "remove": cur = pointerRemove(cur, path).doc; break;
      case "move": {
        if (fromPath === undefined) throw new PatchError("move needs from");
        const r = pointerRemove(cur, fromPath);
        cur = pointerSet(r.doc, path, r.value, "add");
        break;
      }
      case "copy": {
        if (fromPath === undefined) throw new PatchError("copy needs from");
        cur = pointerSet(cur, path, structuredClone(pointerGet(cur, fromPath)), "add");
        break;
      }
      case "test":
        if (JSON.stringify(pointerGet(cur, path)) !== JSON.stringify(op["value"])) throw new PatchError(`testing value ${op["path"]} failed: test failed`);
        break;
      default:
        throw new PatchError(`unexpected JSON patch operation "${String(op["op"])}"`);
    }
  }
  return cur;
}

function parsePointer(p: string): string[] {
  if (p === "") return [];
  if (!p.startsWith("/")) throw new PatchError(`JSON pointer "${p}" must start with "/"`);
  return p.slice(1).split("/").map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function containerAt(doc: unknown, path: readonly string[]): unknown {
  let c = doc;
  for (const seg of path) {
    if (Array.isArray(c)) c = c[Number(seg)];
    else if (isRecord(c)) c = c[seg];
    else c = undefined;
    if (c === undefined) throw new PatchError(`doc is missing path: "/${path.join("/")}"`);
  }
  return c;
}

function pointerGet(doc: unknown, path: readonly string[]): unknown {
  return containerAt(doc, path);
}

function arrayIndex(seg: string, arr: readonly unknown[], forAdd: boolean): number {
  if (forAdd && seg === "-") return arr.length;
  if (!/^(0|[1-9]\d*)$/.test(seg)) throw new PatchError(`invalid array index "${seg}"`);
  const i = Number(seg);
  if (i > arr.length || (!forAdd && i === arr.length)) throw new PatchError(`array index ${i} out of bounds`);
  return i;
}

function pointerSet(doc: unknown, path: readonly string[], value: unknown, mode: "add" | "replace"): unknown {
  if (path.length === 0) return value;
  const parent = containerAt(doc, path.slice(0, -1));
  const last = path[path.length - 1] ?? "";
  if (Array.isArray(parent)) {
    const i = arrayIndex(last, parent, mode === "add");
    if (mode === "add") parent.splice(i, 0, value);
    else parent[i] = value;
  } else if (isRecord(parent)) {
    if (mode === "replace" && !(last in parent)) throw new PatchError(`replace operation does not apply: doc is missing key: /${path.join("/")}`);
    parent[last] = value;
  } else {
    throw new PatchError(`doc is missing path: "/${path.join("/")}"`);
  }
  return doc;
}

function pointerRemove(doc: unknown, path: readonly string[]): { doc: unknown; value: unknown } {
  if (path.length === 0) throw new PatchError("cannot remove the whole document");
  const parent = containerAt(doc, path.slice(0, -1));
  const last = path[path.length - 1] ?? "";
  if (Array.isArray(parent)) {
    const i = arrayIndex(last, parent, false);
    return { doc, value: parent.splice(i, 1)[0] };
  }
  if (isRecord(parent) && last in parent) {
    const value = parent[last];
    delete parent[last];
    return { doc, value };
  }
  throw new PatchError(`remove operation does not apply: doc is missing path: "/${path.join("/")}"`);
}

// ---------------------------------------------------------------------------------------------
// The store

interface Stored {
  readonly name: string;
  /** The whole Node as JSON, with its current metadata.resourceVersion. */
  readonly json: string;
  readonly labels: Readonly<Record<string, string>>;
}

interface HistoryEvent {
  readonly rv: number;
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  /** The whole watch line, newline included: built once, written to every watch. */
  readonly line: string;
}

interface Watch {
  readonly res: ServerResponse;
  readonly filter: Filter;
  readonly timers: NodeJS.Timeout[];
  readonly socket: Socket;
}

/** The first resourceVersion; arbitrary, but not small, as etcd's never are on a real cluster. */
const FIRST_RV = 1000;
const BODY_LIMIT = 3 * 1024 * 1024;
/** kube-apiserver's default when a watch gives no timeoutSeconds (--min-request-timeout). */
const DEFAULT_WATCH_TIMEOUT_S = 1800;

function watchLine(type: string, json: string): string {
  return `{"type":"${type}","object":${json}}\n`;
}

interface Ctx {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly url: URL;
  user: string | undefined;
  verb: string | undefined;
  body: string | undefined;
}

type CountKey = keyof KubeRequestCounts;
const VERB_COUNT: Readonly<Record<string, CountKey>> = {
  get: "gets", list: "lists", watch: "watches", create: "creates", update: "updates", patch: "patches", delete: "deletes",
};

export class KubeApiDouble {
  readonly host: string;
  /** Answer watches from compacted resourceVersions with HTTP 410 (may be changed at run time). */
  goneAsHttpStatus: boolean;

  private portValue: number;
  private readonly pki: KubeApiDoubleOptions["pki"];
  private readonly tokens = new Map<string, KubeGrant>();
  private readonly certGrants = new Map<string, KubeAllow>();
  private readonly bookmarkIntervalMs: number;
  private readonly historyLimit: number;
  private readonly requestLogLimit: number;

  private server: https.Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly watches = new Set<Watch>();

  private readonly store = new Map<string, Stored>();
  private sortedNames: string[] | undefined;
  private rv = FIRST_RV;
  /** A watch may start from any resourceVersion ≥ this; the history holds every event after it. */
  private compactedRv = FIRST_RV;
  private history: HistoryEvent[] = [];

  private log: KubeRequestRecord[] = [];
  private readonly countsByUser = new Map<string, KubeRequestCounts>();

  constructor(o: KubeApiDoubleOptions) {
    this.host = o.host ?? "127.0.0.1";
    this.portValue = o.port ?? 0;
    this.pki = o.pki;
    for (const [t, g] of Object.entries(o.tokens ?? {})) this.tokens.set(t, g);
    for (const [u, a] of Object.entries(o.certGrants ?? {})) this.certGrants.set(u, a);
    this.bookmarkIntervalMs = o.bookmarkIntervalMs ?? 1000;
    this.goneAsHttpStatus = o.goneAsHttpStatus ?? false;
    this.historyLimit = Math.max(1, o.historyLimit ?? 10_000);
    this.requestLogLimit = Math.max(1, o.requestLogLimit ?? 10_000);
    for (const n of o.nodes ?? []) this.upsertNode(n);
  }

  /** Creates a double and starts it. */
  static async start(o: KubeApiDoubleOptions): Promise<KubeApiDouble> {
    const d = new KubeApiDouble(o);
    await d.start();
    return d;
  }

  get port(): number {
    return this.portValue;
  }

  /** "https://127.0.0.1:PORT" (IPv6 hosts in brackets). */
  get url(): string {
    const h = this.host.includes(":") ? `[${this.host}]` : this.host;
    return `https://${h}:${this.portValue}`;
  }

  get running(): boolean {
    return this.server !== undefined;
  }

  /** Listens (again, on the same port after a stop()); the state is kept across stop/start. */
  async start(): Promise<void> {
    if (this.server !== undefined) return;
    const server = https.createServer({
      key: this.pki.serverKeyPem,
      cert: this.pki.serverCertPem,
      ca: this.pki.caPem,
      requestCert: true,
      rejectUnauthorized: false, // a client without a certificate may still bring a token
    });
    server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.once("close", () => this.sockets.delete(s));
    });
    server.on("request", (req: IncomingMessage, res: ServerResponse) => this.onRequest(req, res));
    server.on("clientError", (_e, s: Socket) => s.destroy());
    server.on("tlsClientError", () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.portValue, this.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.portValue = (server.address() as AddressInfo).port;
    this.server = server;
  }

  /**
   * The API goes away: the listener closes and every connection is cut, watches included (as
   * when the server dies or the network breaks). With `graceful`, watches are first ended
   * cleanly, as kube-apiserver does when it shuts down.
   */
  async stop(o: { graceful?: boolean } = {}): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    for (const w of [...this.watches]) this.endWatch(w, o.graceful === true);
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await closed;
  }

  // --- credentials -----------------------------------------------------------------------------

  setToken(token: string, grant: KubeGrant): void {
    this.tokens.set(token, grant);
  }

  revokeToken(token: string): void {
    this.tokens.delete(token);
  }

  setCertGrant(user: string, allow: KubeAllow): void {
    this.certGrants.set(user, allow);
  }

  // --- state -----------------------------------------------------------------------------------

  /** The current global resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  /** Creates or replaces a Node as a controller would (uid, creationTimestamp filled in when missing). */
  upsertNode(node: object): NodeJson {
    const obj = structuredClone(node) as Record<string, unknown>;
    if (!isRecord(obj)) throw new Error("upsertNode: expected a Node object");
    const meta = child(obj, "metadata");
    const name = meta["name"];
    if (typeof name !== "string" || !NAME_RE.test(name)) throw new Error(`upsertNode: metadata.name ${JSON.stringify(name)} is not a valid Node name`);
    const old = this.store.get(name);
    if (old !== undefined) {
      const oldMeta = child(JSON.parse(old.json) as Record<string, unknown>, "metadata");
      meta["uid"] ??= oldMeta["uid"];
      meta["creationTimestamp"] ??= oldMeta["creationTimestamp"];
    }
    this.prepareNew(obj);
    return this.write(old === undefined ? "ADDED" : "MODIFIED", obj);
  }

  /** Deletes a Node; false when there was none. */
  deleteNode(name: string): boolean {
    const old = this.store.get(name);
    if (old === undefined) return false;
    this.remove(old);
    return true;
  }

  /** A copy of the Node, or undefined. */
  node(name: string): NodeJson | undefined {
    const s = this.store.get(name);
    return s === undefined ? undefined : (JSON.parse(s.json) as NodeJson);
  }

  /** Copies of every Node, by name. */
  nodes(): NodeJson[] {
    return this.names().map((n) => JSON.parse(this.store.get(n)?.json ?? "null") as NodeJson);
  }

  get nodeCount(): number {
    return this.store.size;
  }

  /** Forgets the history: watches from any resourceVersion before now get 410 Expired. */
  compact(): void {
    this.history = [];
    this.compactedRv = this.rv;
  }

  /**
   * Every open watch gets an ERROR event with 410 Expired and ends, as a watch served from etcd
   * does when a compaction overtakes it.
   */
  expireWatches(): void {
    const line = watchLine("ERROR", JSON.stringify(statusJson(410, "Expired", "The resourceVersion for the provided watch is too old.")));
    for (const w of [...this.watches]) {
      w.res.write(line);
      this.endWatch(w);
    }
  }

  /** Every watch connection is destroyed without a clean end (a broken network, a killed server). */
  dropWatches(): void {
    for (const w of [...this.watches]) {
      this.endWatch(w, false);
      w.socket.destroy();
    }
  }

  get openWatches(): number {
    return this.watches.size;
  }

  // --- observation -----------------------------------------------------------------------------

  get requests(): readonly KubeRequestRecord[] {
    return this.log;
  }

  clearRequests(): void {
    this.log = [];
  }

  /** Requests by `user` so far, by verb (UNAUTHENTICATED for those without valid credentials). */
  counts(user: string): KubeRequestCounts {
    return { ...(this.countsByUser.get(user) ?? zeroCounts()) };
  }

  allCounts(): Record<string, KubeRequestCounts> {
    return Object.fromEntries([...this.countsByUser].map(([u, c]) => [u, { ...c }]));
  }

  // --- the store's writes ----------------------------------------------------------------------

  private names(): string[] {
    if (this.sortedNames === undefined) this.sortedNames = [...this.store.keys()].sort();
    return this.sortedNames;
  }

  private prepareNew(obj: Record<string, unknown>): void {
    obj["kind"] = "Node";
    obj["apiVersion"] = "v1";
    const meta = child(obj, "metadata");
    meta["uid"] ??= randomUUID();
    meta["creationTimestamp"] ??= kubeTime();
  }

  /** Stores `obj` at the next resourceVersion, records the event and sends it to the watches. */
  private write(type: "ADDED" | "MODIFIED", obj: Record<string, unknown>): NodeJson {
    const meta = child(obj, "metadata");
    const name = String(meta["name"]);
    meta["resourceVersion"] = String(++this.rv);
    const json = JSON.stringify(obj);
    const labels = stringMap(meta["labels"]);
    if (!this.store.has(name)) this.sortedNames = undefined;
    this.store.set(name, { name, json, labels });
    this.record({ rv: this.rv, name, labels, line: watchLine(type, json) });
    return obj;
  }

  private remove(old: Stored): string {
    const obj = JSON.parse(old.json) as Record<string, unknown>;
    child(obj, "metadata")["resourceVersion"] = String(++this.rv);
    const json = JSON.stringify(obj);
    this.store.delete(old.name);
    this.sortedNames = undefined;
    this.record({ rv: this.rv, name: old.name, labels: old.labels, line: watchLine("DELETED", json) });
    return json;
  }

  private record(e: HistoryEvent): void {
    this.history.push(e);
    if (this.history.length > this.historyLimit) {
      // Drop a tenth at a time, so a full window costs amortised O(1) per event.
      const drop = Math.max(1, Math.floor(this.historyLimit / 10));
      const dropped = this.history.splice(0, drop);
      this.compactedRv = dropped[dropped.length - 1]?.rv ?? this.compactedRv;
    }
    for (const w of this.watches) if (matches(w.filter, e.name, e.labels)) w.res.write(e.line);
  }

  // --- HTTP ------------------------------------------------------------------------------------

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const ctx: Ctx = { req, res, url: new URL(req.url ?? "/", "https://double.invalid"), user: undefined, verb: undefined, body: undefined };
    res.on("error", () => undefined);
    this.handle(ctx).catch((e: unknown) => {
      if (e instanceof ApiError) this.sendStatus(ctx, e);
      else this.sendStatus(ctx, new ApiError(500, "InternalError", `Internal error occurred: ${e instanceof Error ? e.message : String(e)}`));
    });
  }

  private authenticate(req: IncomingMessage): { user: string; allow: KubeAllow } | undefined {
    const tls = req.socket as TLSSocket;
    if (tls.authorized) {
      const cn = tls.getPeerCertificate().subject?.CN;
      if (typeof cn === "string" && cn !== "") return { user: cn, allow: this.certGrants.get(cn) ?? "all" };
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
    const grant = m === null ? undefined : this.tokens.get(m[1] ?? "");
    return grant === undefined ? undefined : { user: grant.user, allow: grant.allow };
  }

  private async handle(ctx: Ctx): Promise<void> {
    const { req, url } = ctx;
    const method = req.method ?? "GET";
    const who = this.authenticate(req);
    if (who === undefined) {
      this.count(UNAUTHENTICATED, undefined, true);
      req.resume();
      return this.sendStatus(ctx, new ApiError(401, "Unauthorized", "Unauthorized"));
    }
    ctx.user = who.user;
    const path = url.pathname;
    const parts = path.split("/").filter((s) => s !== "");

    // Non-resource paths: every authenticated user may read them (system:discovery).
    const discovery = this.discovery(path);
    if (discovery !== undefined) {
      req.resume();
      if (method !== "GET" && method !== "HEAD") throw new ApiError(405, "MethodNotAllowed", `the server does not allow this method on the requested resource`);
      if (discovery === 404) throw new ApiError(404, "NotFound", "the server could not find the requested resource");
      if (typeof discovery === "string") return this.send(ctx, 200, discovery, "text/plain; charset=utf-8");
      if (!acceptsJson(req.headers.accept)) throw notAcceptable();
      return this.sendJson(ctx, 200, discovery);
    }

    if (parts[0] !== "api" || parts[1] !== "v1" || parts[2] !== "nodes" || parts.length > 5 || (parts.length === 5 && parts[4] !== "status")) {
      req.resume();
      throw new ApiError(404, "NotFound", "the server could not find the requested resource");
    }
    const name = parts[3];
    const sub = parts[4] === "status" ? "status" : undefined;
    const verb = this.verbOf(method, name, ctx.url.searchParams);
    if (verb === undefined || (sub === "status" && !["get", "update", "patch"].includes(verb))) {
      req.resume();
      throw new ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource");
    }
    ctx.verb = verb;
    this.count(who.user, verb, false);
    const resource = sub === undefined ? "nodes" : "nodes/status";
    if (!allowed(who.allow, verb, resource)) {
      req.resume();
      this.count(who.user, undefined, true);
      const named = name === undefined ? "nodes" : `nodes "${name}"`;
      throw new ApiError(403, "Forbidden",
        `${named} is forbidden: User "${who.user}" cannot ${verb} resource "${resource}" in API group "" at the cluster scope`,
        name === undefined ? { kind: "nodes" } : { name, kind: "nodes" });
    }
    if (verb !== "watch" && !acceptsJson(req.headers.accept)) {
      req.resume();
      throw notAcceptable();
    }
    const q = ctx.url.searchParams;
    switch (verb) {
      case "list": req.resume(); return this.list(ctx, q);
      case "watch": req.resume(); return this.watch(ctx, q);
      case "get": req.resume(); return this.get(ctx, name ?? "");
      case "create": return this.create(ctx, await readJson(ctx), q);
      case "update": return this.update(ctx, name ?? "", sub, await readJson(ctx), q);
      case "patch": return this.patch(ctx, name ?? "", sub, await readBody(ctx), q);
      case "delete": return this.delete(ctx, name ?? "", await readBody(ctx), q);
    }
  }

  private verbOf(method: string, name: string | undefined, q: URLSearchParams): string | undefined {
    if (name === undefined) {
      if (method === "GET") return parseBool(q.get("watch")) ? "watch" : "list";
      if (method === "POST") return "create";
      return undefined;
    }
    switch (method) {
      case "GET": return "get";
      case "PUT": return "update";
      case "PATCH": return "patch";
      case "DELETE": return "delete";
      default: return undefined;
    }
  }

  /** A discovery document, a text answer, 404 for paths that exist on a real server but not here, or undefined. */
  private discovery(path: string): object | string | 404 | undefined {
    switch (path) {
      case "/version": return VERSION;
      case "/api":
        return { kind: "APIVersions", versions: ["v1"], serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress: `${this.host}:${this.portValue}` }] };
      case "/apis": return { kind: "APIGroupList", apiVersion: "v1", groups: [] };
      case "/api/v1": return API_RESOURCES;
      case "/healthz": case "/livez": case "/readyz": return "ok";
    }
    if (path.startsWith("/openapi/") || path === "/openapi" || path.startsWith("/apis/")) return 404;
    return undefined;
  }

  private count(user: string, verb: string | undefined, denied: boolean): void {
    let c = this.countsByUser.get(user);
    if (c === undefined) {
      c = zeroCounts();
      this.countsByUser.set(user, c);
    }
    const key = verb === undefined ? undefined : VERB_COUNT[verb];
    if (key !== undefined) c[key]++;
    if (denied) c.denied++;
  }

  private logRequest(ctx: Ctx, status: number): void {
    const h = ctx.req.headers;
    this.log.push({
      method: ctx.req.method ?? "",
      path: ctx.url.pathname,
      query: Object.fromEntries(ctx.url.searchParams),
      user: ctx.user,
      status,
      verb: ctx.verb,
      accept: h.accept,
      contentType: h["content-type"],
      userAgent: h["user-agent"],
      body: ctx.body,
    });
    if (this.log.length > this.requestLogLimit) this.log.splice(0, this.log.length - this.requestLogLimit);
  }

  private send(ctx: Ctx, code: number, body: string, contentType = "application/json"): void {
    if (ctx.res.headersSent) {
      ctx.res.end();
      return;
    }
    this.logRequest(ctx, code);
    ctx.res.writeHead(code, {
      "Content-Type": contentType,
      "Content-Length": Buffer.byteLength(body),
      "Cache-Control": "no-cache, private",
      "Audit-Id": randomUUID(),
    });
    ctx.res.end(body);
  }

  private sendJson(ctx: Ctx, code: number, body: unknown): void {
    this.send(ctx, code, JSON.stringify(body));
  }

  private sendStatus(ctx: Ctx, e: ApiError): void {
    this.sendJson(ctx, e.code, statusJson(e.code, e.reason, e.message, e.details));
  }

  // --- verbs -----------------------------------------------------------------------------------

  private stored(name: string): Stored {
    const s = this.store.get(name);
    if (s === undefined) throw notFound(name);
    return s;
  }

  private get(ctx: Ctx, name: string): void {
    this.send(ctx, 200, this.stored(name).json);
  }

  private list(ctx: Ctx, q: URLSearchParams): void {
    const filter: Filter = { field: parseFieldSelector(q.get("fieldSelector")), labels: parseLabelSelector(q.get("labelSelector")) };
    const limitText = q.get("limit");
    const limit = limitText === null || limitText === "" ? 0 : Number(limitText);
    if (!Number.isInteger(limit) || limit < 0) throw badRequest(`limit: Invalid value: "${limitText ?? ""}"`);
    const token = q.get("continue");
    let listRv = this.rv;
    let startIndex = 0;
    const names = this.names();
    if (token !== null && token !== "") {
      const c = decodeContinue(token);
      if (c.rv < this.compactedRv) {
        throw new ApiError(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.");
      }
      // Pages carry the first page's resourceVersion: a watch from it then replays anything that
      // changed while the later pages were read (no snapshot here), so nothing is lost.
      listRv = c.rv;
      startIndex = upperBound(names, c.start);
    }
    const items: string[] = [];
    let i = startIndex;
    if (filter.field !== undefined && !filter.field.negate) {
      // A single-name selector: one lookup, not a scan.
      const s = this.store.get(filter.field.name);
      if (s !== undefined && startIndex === 0 && labelsMatch(filter.labels, s.labels)) items.push(s.json);
      i = names.length;
    } else {
      for (; i < names.length && (limit === 0 || items.length < limit); i++) {
        const s = this.store.get(names[i] ?? "");
        if (s !== undefined && matches(filter, s.name, s.labels)) items.push(s.json);
      }
    }
    const meta: Record<string, unknown> = { resourceVersion: String(listRv) };
    if (i < names.length) {
      meta["continue"] = encodeContinue(listRv, names[i - 1] ?? "");
      if (filter.field === undefined && filter.labels === undefined) meta["remainingItemCount"] = names.length - i;
    }
    const head = JSON.stringify({ kind: "NodeList", apiVersion: "v1", metadata: meta });
    this.send(ctx, 200, `${head.slice(0, -1)},"items":[${items.join(",")}]}`);
  }

  private watch(ctx: Ctx, q: URLSearchParams): void {
    const filter: Filter = { field: parseFieldSelector(q.get("fieldSelector")), labels: parseLabelSelector(q.get("labelSelector")) };
    const rvText = q.get("resourceVersion") ?? "";
    const initial = rvText === "" || rvText === "0" || parseBool(q.get("sendInitialEvents"));
    let from = this.rv;
    if (!initial) {
      if (!/^\d+$/.test(rvText)) throw invalidRv(rvText);
      from = Number(rvText);
      if (from < this.compactedRv) {
        const gone = statusJson(410, "Expired", `too old resource version: ${from} (${this.compactedRv})`);
        if (this.goneAsHttpStatus) return this.sendJson(ctx, 410, gone);
        this.startStream(ctx);
        ctx.res.end(watchLine("ERROR", JSON.stringify(gone)));
        return;
      }
    }
    const timeoutText = q.get("timeoutSeconds");
    const timeoutS = timeoutText === null || timeoutText === "" ? DEFAULT_WATCH_TIMEOUT_S : Number(timeoutText);
    if (!Number.isFinite(timeoutS) || timeoutS < 0) throw badRequest(`timeoutSeconds: Invalid value: "${timeoutText ?? ""}"`);
    const bookmarks = parseBool(q.get("allowWatchBookmarks"));

    this.startStream(ctx);
    const res = ctx.res;
    // Catch up first, then join the live fan-out: both happen in this one turn of the event
    // loop, so no write can fall between them.
    let backlog = "";
    if (initial) {
      for (const n of this.names()) {
        const s = this.store.get(n);
        if (s !== undefined && matches(filter, s.name, s.labels)) backlog += watchLine("ADDED", s.json);
      }
      if (parseBool(q.get("sendInitialEvents")) && bookmarks) {
        backlog += watchLine("BOOKMARK", JSON.stringify({
          kind: "Node", apiVersion: "v1",
          metadata: { resourceVersion: String(this.rv), creationTimestamp: null, annotations: { "k8s.io/initial-events-end": "true" } },
        }));
      }
    } else {
      for (let k = lowerBoundRv(this.history, from + 1); k < this.history.length; k++) {
        const e = this.history[k];
        if (e !== undefined && matches(filter, e.name, e.labels)) backlog += e.line;
      }
    }
    if (backlog !== "") res.write(backlog);

    const w: Watch = { res, filter, timers: [], socket: ctx.req.socket };
    this.watches.add(w);
    if (timeoutS > 0) w.timers.push(setTimeout(() => this.endWatch(w), timeoutS * 1000));
    if (bookmarks) {
      w.timers.push(setInterval(() => {
        res.write(watchLine("BOOKMARK", `{"kind":"Node","apiVersion":"v1","metadata":{"resourceVersion":"${this.rv}","creationTimestamp":null}}`));
      }, this.bookmarkIntervalMs));
    }
    res.once("close", () => this.endWatch(w, false));
  }

  private startStream(ctx: Ctx): void {
    this.logRequest(ctx, 200);
    ctx.res.writeHead(200, {
      "Content-Type": "application/json",
      "Transfer-Encoding": "chunked",
      "Cache-Control": "no-cache, private",
      "Audit-Id": randomUUID(),
    });
    ctx.res.flushHeaders();
  }

  private endWatch(w: Watch, cleanly = true): void {
    if (!this.watches.delete(w)) return;
    for (const t of w.timers) clearTimeout(t);
    if (cleanly) w.res.end();
  }

  private create(ctx: Ctx, body: unknown, q: URLSearchParams): void {
    if (!isRecord(body)) throw badRequest("the object provided is unrecognized (must be of type Node)");
    checkKind(body);
    const meta = child(body, "metadata");
    if ((meta["name"] === undefined || meta["name"] === "") && typeof meta["generateName"] === "string") {
      meta["name"] = `${meta["generateName"]}${randomBytes(3).toString("hex").slice(0, 5)}`;
    }
    const name = meta["name"];
    if (typeof name !== "string" || name === "") throw invalid("", "metadata.name: Required value: name or generateName is required");
    if (!NAME_RE.test(name) || name.length > 253) throw invalid(name, `metadata.name: Invalid value: "${name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character`);
    if (this.store.has(name)) throw new ApiError(409, "AlreadyExists", `nodes "${name}" already exists`, { name, kind: "nodes" });
    if (meta["resourceVersion"] !== undefined && meta["resourceVersion"] !== "") throw badRequest("resourceVersion should not be set on objects to be created");
    delete meta["uid"];
    delete meta["creationTimestamp"];
    this.prepareNew(body);
    if (q.get("dryRun") === "All") {
      meta["resourceVersion"] = "";
      return this.sendJson(ctx, 201, body);
    }
    this.write("ADDED", body);
    this.send(ctx, 201, this.stored(name).json);
  }

  private update(ctx: Ctx, name: string, sub: "status" | undefined, body: unknown, q: URLSearchParams): void {
    if (!isRecord(body)) throw badRequest("the object provided is unrecognized (must be of type Node)");
    checkKind(body);
    const meta = child(body, "metadata");
    if (meta["name"] !== name) throw badRequest(`the name of the object (${String(meta["name"] ?? "")}) does not match the name on the URL (${name})`);
    const old = this.stored(name);
    const rv = meta["resourceVersion"];
    const oldObj = JSON.parse(old.json) as Record<string, unknown>;
    const oldRv = child(oldObj, "metadata")["resourceVersion"];
    if (rv !== undefined && rv !== "" && rv !== oldRv) throw conflict(name);
    this.commitChange(ctx, old, oldObj, body, sub, q);
  }

  private patch(ctx: Ctx, name: string, sub: "status" | undefined, raw: Buffer, q: URLSearchParams): void {
    const type = mediaType(ctx.req.headers["content-type"]);
    if (!PATCH_TYPES.includes(type)) {
      throw new ApiError(415, "UnsupportedMediaType", `the body of the request was in an unknown format - accepted media types include: ${PATCH_TYPES.join(", ")}`);
    }
    const patchDoc = parseJson(raw);
    const old = this.stored(name);
    const oldObj = JSON.parse(old.json) as Record<string, unknown>;
    let next: unknown;
    try {
      if (type === "application/json-patch+json") next = jsonPatch(oldObj, patchDoc);
      else if (!isRecord(patchDoc)) throw new PatchError("a merge patch must be a JSON object");
      else if (type === "application/merge-patch+json") next = jsonMergePatch(oldObj, patchDoc);
      else next = strategicMergePatch(oldObj, patchDoc);
    } catch (e) {
      if (e instanceof PatchError) throw new ApiError(422, "Invalid", e.message, { name, kind: "nodes" });
      throw e;
    }
    if (!isRecord(next)) throw invalid(name, "the patched object is not an object");
    const meta = child(next, "metadata");
    if (meta["name"] !== name) throw invalid(name, "metadata.name: Invalid value: field is immutable");
    // A resourceVersion in the patch is a precondition, as on the real server.
    if (meta["resourceVersion"] !== child(oldObj, "metadata")["resourceVersion"]) throw conflict(name);
    this.commitChange(ctx, old, JSON.parse(old.json) as Record<string, unknown>, next, sub, q);
  }

  /**
   * Writes `next` over `oldObj` with the subresource rules: the status subresource takes only
   * .status (and keeps metadata, labels and annotations included), the main resource everything
   * but .status. Identity fields stay. A change of nothing is answered without a write.
   */
  private commitChange(ctx: Ctx, old: Stored, oldObj: Record<string, unknown>, next: Record<string, unknown>, sub: "status" | undefined, q: URLSearchParams): void {
    let result: Record<string, unknown>;
    if (sub === "status") {
      // A Node's status strategy resets only .spec (pkg/registry/core/node/strategy.go): labels and
      // annotations change through nodes/status too, which is how flannel, and vxmesh, annotate
      // their Node with the one permission "patch nodes/status".
      result = oldObj;
      if (next["status"] === undefined) delete result["status"];
      else result["status"] = next["status"];
      const meta = child(result, "metadata");
      const nextMeta = child(next, "metadata");
      for (const k of ["labels", "annotations"]) {
        if (nextMeta[k] === undefined) delete meta[k];
        else meta[k] = nextMeta[k];
      }
    } else {
      result = next;
      if (oldObj["status"] === undefined) delete result["status"];
      else result["status"] = oldObj["status"];
      const meta = child(result, "metadata");
      const oldMeta = child(oldObj, "metadata");
      for (const k of ["uid", "creationTimestamp", "resourceVersion", "deletionTimestamp"]) {
        if (oldMeta[k] === undefined) delete meta[k];
        else meta[k] = oldMeta[k];
      }
    }
    result["kind"] = "Node";
    result["apiVersion"] = "v1";
    if (JSON.stringify(result) === old.json) return this.send(ctx, 200, old.json);
    if (q.get("dryRun") === "All") return this.sendJson(ctx, 200, result);
    this.write("MODIFIED", result);
    this.send(ctx, 200, this.stored(old.name).json);
  }

  private delete(ctx: Ctx, name: string, raw: Buffer, q: URLSearchParams): void {
    const old = this.stored(name);
    const opts = raw.length === 0 ? {} : parseJson(raw);
    const pre = isRecord(opts) && isRecord(opts["preconditions"]) ? opts["preconditions"] : undefined;
    const meta = child(JSON.parse(old.json) as Record<string, unknown>, "metadata");
    if (pre !== undefined) {
      if (typeof pre["uid"] === "string" && pre["uid"] !== meta["uid"]) {
        throw new ApiError(409, "Conflict", `Operation cannot be fulfilled on nodes "${name}": Precondition failed: UID in precondition: ${pre["uid"]}, UID in object meta: ${String(meta["uid"])}`, { name, kind: "nodes" });
      }
      if (typeof pre["resourceVersion"] === "string" && pre["resourceVersion"] !== meta["resourceVersion"]) {
        throw new ApiError(409, "Conflict", `Operation cannot be fulfilled on nodes "${name}": Precondition failed: ResourceVersion in precondition: ${pre["resourceVersion"]}, ResourceVersion in object meta: ${String(meta["resourceVersion"])}`, { name, kind: "nodes" });
      }
    }
    if (q.get("dryRun") !== "All") this.remove(old);
    // What the registry answers for a resource without ReturnDeletedObject (Nodes).
    this.sendJson(ctx, 200, { kind: "Status", apiVersion: "v1", metadata: {}, status: "Success", details: { name, kind: "nodes", uid: meta["uid"] } });
  }
}

// ---------------------------------------------------------------------------------------------
// Request helpers

function zeroCounts(): KubeRequestCounts {
  return { gets: 0, lists: 0, watches: 0, creates: 0, updates: 0, patches: 0, deletes: 0, denied: 0 };
}

function allowed(allow: KubeAllow, verb: string, resource: string): boolean {
  return allow === "all" || allow.includes(`${verb} ${resource}`);
}

function notAcceptable(): ApiError {
  return new ApiError(406, "NotAcceptable", "the server was unable to respond with a content type that the client supports");
}

function invalidRv(rv: string): ApiError {
  return new ApiError(400, "BadRequest", `resourceVersion: Invalid value: "${rv}": must be a non-negative integer`);
}

function checkKind(body: Record<string, unknown>): void {
  const kind = body["kind"];
  const apiVersion = body["apiVersion"];
  if ((kind !== undefined && kind !== "Node") || (apiVersion !== undefined && apiVersion !== "v1")) {
    throw badRequest(`the API version in the data (${String(apiVersion)}) does not match the expected API version (v1)`);
  }
}

/** Reads the whole body (up to the apiserver's 3 MiB); keeps its start for the request log. */
async function readBody(ctx: Ctx): Promise<Buffer> {
  const raw = await readAll(ctx.req);
  ctx.body = raw.subarray(0, 4096).toString("utf8");
  return raw;
}

function readAll(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > BODY_LIMIT) {
        reject(new ApiError(413, "RequestEntityTooLarge", "the request body is too large"));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.once("end", () => resolve(Buffer.concat(chunks)));
    req.once("error", reject);
  });
}

function parseJson(raw: Buffer): unknown {
  try {
    return JSON.parse(raw.toString("utf8"));
  } catch (e) {
    throw badRequest(`the body of the request is not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
  }
}

async function readJson(ctx: Ctx): Promise<unknown> {
  const type = mediaType(ctx.req.headers["content-type"]);
  const raw = await readBody(ctx);
  if (type !== "application/json" && type !== "") {
    throw new ApiError(415, "UnsupportedMediaType", `the body of the request was in an unknown format - accepted media types include: application/json`);
  }
  return parseJson(raw);
}

interface ContinueToken {
  readonly rv: number;
  readonly start: string;
}

/** The apiserver's shape: base64 of {"v":"meta.k8s.io/v1","rv":N,"start":"<last key>\u0000"}. */
function encodeContinue(rv: number, lastName: string): string {
  return Buffer.from(JSON.stringify({ v: "meta.k8s.io/v1", rv, start: `${lastName}\u0000` })).toString("base64url");
}

function decodeContinue(token: string): ContinueToken {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    v = undefined;
  }
  if (!isRecord(v) || v["v"] !== "meta.k8s.io/v1" || typeof v["rv"] !== "number" || typeof v["start"] !== "string") {
    throw badRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)");
  }
  return { rv: v["rv"], start: v["start"].replace(/\u0000$/, "") };
}

/** The index of the first name > `name` in sorted `names`. */
function upperBound(names: readonly string[], name: string): number {
  let lo = 0;
  let hi = names.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((names[mid] ?? "") <= name) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The index of the first event with rv ≥ `rv`. */
function lowerBoundRv(history: readonly HistoryEvent[], rv: number): number {
  let lo = 0;
  let hi = history.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((history[mid]?.rv ?? 0) < rv) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------------------------------------
// Node objects and kubeconfigs

export interface NodeObjectOptions {
  podCIDR?: string;
  podCIDRs?: readonly string[];
  annotations?: Readonly<Record<string, string>>;
  labels?: Readonly<Record<string, string>>;
  internalIP?: string;
  /** Ready condition status; default "True". */
  ready?: "True" | "False" | "Unknown";
}

/** A v1 Node as kubelet registers it and keeps it (capacity, conditions, addresses, nodeInfo). */
export function nodeObject(name: string, o: NodeObjectOptions = {}): NodeJson {
  const now = kubeTime();
  const cidrs = o.podCIDRs ?? (o.podCIDR !== undefined ? [o.podCIDR] : undefined);
  const spec: Record<string, unknown> = {};
  if (cidrs !== undefined && cidrs.length > 0) {
    spec["podCIDR"] = o.podCIDR ?? cidrs[0];
    spec["podCIDRs"] = [...cidrs];
  }
  const condition = (type: string, status: string, reason: string, message: string): Record<string, string> =>
    ({ type, status, lastHeartbeatTime: now, lastTransitionTime: now, reason, message });
  const ready = o.ready ?? "True";
  const addresses: Record<string, string>[] = [];
  if (o.internalIP !== undefined) addresses.push({ type: "InternalIP", address: o.internalIP });
  addresses.push({ type: "Hostname", address: name });
  const resources = { cpu: "2", "ephemeral-storage": "20134592Ki", "hugepages-2Mi": "0", memory: "4025868Ki", pods: "110" };
  return {
    kind: "Node",
    apiVersion: "v1",
    metadata: {
      name,
      labels: {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        ...o.labels,
      },
      annotations: {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        ...o.annotations,
      },
    },
    spec,
    status: {
      capacity: resources,
      allocatable: { ...resources, cpu: "2", memory: "3923468Ki" },
      conditions: [
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ready === "True"
          ? condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
          : condition("Ready", ready, "KubeletNotReady", "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"),
      ],
      addresses,
      daemonEndpoints: { kubeletEndpoint: { Port: 10250 } },
      nodeInfo: {
        machineID: randomBytes(16).toString("hex"),
        systemUUID: randomUUID(),
        bootID: randomUUID(),
        kernelVersion: "6.1.0-37-amd64",
        osImage: "Debian GNU/Linux 12 (bookworm)",
        containerRuntimeVersion: "containerd://1.7.24",
        kubeletVersion: VERSION.gitVersion,
        kubeProxyVersion: VERSION.gitVersion,
        operatingSystem: "linux",
        architecture: "amd64",
      },
    },
  };
}

export interface KubeconfigOptions {
  /** "https://host:port". */
  server: string;
  /** The CA as a file path (certificate-authority) … */
  caFile?: string;
  /** … or inline PEM (certificate-authority-data). */
  caPem?: string;
  token?: string;
  /** A file the token is read from (kubeconfig's tokenFile). */
  tokenFile?: string;
  clientCertFile?: string;
  clientKeyFile?: string;
  /** Names in the file; defaults "vxmesh-test" and "vxmesh-test-user". */
  user?: string;
  context?: string;
  cluster?: string;
}

/** The kubeconfig text (v1 Config, one cluster, user and context). */
export function kubeconfigYaml(o: KubeconfigOptions): string {
  const clusterName = o.cluster ?? "vxmesh-test";
  const userName = o.user ?? "vxmesh-test-user";
  const contextName = o.context ?? "vxmesh-test";
  const cluster: Record<string, string> = { server: o.server };
  if (o.caFile !== undefined) cluster["certificate-authority"] = o.caFile;
  if (o.caPem !== undefined) cluster["certificate-authority-data"] = Buffer.from(o.caPem).toString("base64");
  const user: Record<string, string> = {};
  if (o.token !== undefined) user["token"] = o.token;
  if (o.tokenFile !== undefined) user["tokenFile"] = o.tokenFile;
  if (o.clientCertFile !== undefined) user["client-certificate"] = o.clientCertFile;
  if (o.clientKeyFile !== undefined) user["client-key"] = o.clientKeyFile;
  return yamlStringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: clusterName, cluster }],
    users: [{ name: userName, user }],
    contexts: [{ name: contextName, context: { cluster: clusterName, user: userName } }],
    "current-context": contextName,
    preferences: {},
  });
}

/** Writes a kubeconfig (mode 0600, as kubectl expects of files holding credentials). */
export function writeKubeconfig(file: string, o: KubeconfigOptions): void {
  writeFileSync(file, kubeconfigYaml(o), { mode: 0o600 });
}
