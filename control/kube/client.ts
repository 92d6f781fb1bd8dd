// The real side of the KubeApi seam: HTTPS to the API server on node:https, no client library
// (issue 15: @kubernetes/client-node 2.x needs Node 22, 1.x brings ~70 MB of generated models;
// we make five kinds of call on one resource). One keep-alive agent carries every call; the
// CA, client certificate and SNI name live on it. Every outcome is a KubeResult — a refused
// connection, a TLS failure, a 403 and a garbled line alike — and nothing here logs.
//
// Timeouts, all timers rather than clock readings:
//   - a call (get, list page, patch) gets requestTimeoutMs from the first byte out to the last
//     byte in; a watch gets the same until its response headers arrive;
//   - a watch stream is then presumed dead after timeoutSeconds + 30 s without a byte: the
//     server ends it after timeoutSeconds and sends bookmarks meanwhile, so that silence means a
//     half-open connection (a node that lost its route, a NAT that forgot us).

import { X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import * as tls from "node:tls";
import { packageRoot } from "../../encap/artefacts";
import type { Parsed } from "../../encap/types";
import type { KubeApi, KubeError, KubeResult, NodeListPage, PatchType, WatchEvent, WatchHandle, WatchOptions } from "./api";
import type { KubeCredentials, PemSource } from "./kubeconfig";
import { excerpt, statusToKubeError, toWatchEvent, WatchLineDecoder, DEFAULT_MAX_LINE_BYTES } from "./watch-lines";

export interface KubeClientOptions {
  /** A call's whole exchange, and a watch's wait for its headers. Default 10 s. */
  readonly requestTimeoutMs?: number;
  /** Added to a watch's timeoutSeconds to give its idle limit. Default 30 s. */
  readonly watchIdleGraceMs?: number;
  /** Default "vxmesh/<package version>"; the API server also takes it as the field manager of our patches. */
  readonly userAgent?: string;
  /** A list page's body. Default 256 MiB (a page of 500 Nodes with managed fields is a few MiB). */
  readonly maxListBytes?: number;
  /** One object's body (get, patch) or an error's. Default 16 MiB (etcd stores at most 1.5 MiB). */
  readonly maxObjectBytes?: number;
  /** One watch line. Default 16 MiB. */
  readonly maxLineBytes?: number;
}

const PATCH_CONTENT_TYPE: Record<PatchType, string> = {
  merge: "application/merge-patch+json",
  strategic: "application/strategic-merge-patch+json",
};
const NODES = "/api/v1/nodes";
/** Printable ASCII without spaces: anything else in an Authorization header makes node:http throw. */
const TOKEN_CHARS = /^[\x21-\x7e]+$/;
const MiB = 1024 * 1024;

type Fail = { ok: false; error: KubeError };
const failure = (status: number | undefined, reason: string, message: string): Fail => ({ ok: false, error: { status, reason, message } });

/** A socket-level failure (refused, reset, TLS) as a KubeError: no HTTP status, the error's code and message. */
function socketError(err: Error): Fail {
  const code = (err as NodeJS.ErrnoException).code;
  return failure(undefined, typeof code === "string" && code !== "" ? code : "error", err.message);
}

/** A non-2xx answer: the body's metav1.Status when it is one, else the status line and a body excerpt. */
function httpError(status: number, statusText: string | undefined, body: string): Fail {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const s = statusToKubeError(parsed, status);
  if (s !== undefined) return { ok: false, error: { ...s, status } };
  const text = statusText !== undefined && statusText !== "" ? statusText : (http.STATUS_CODES[status] ?? "Error");
  return failure(status, text, `HTTP ${status} ${text}${body.trim() === "" ? "" : `: ${excerpt(body)}`}`);
}

function defaultUserAgent(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot(), "package.json"), "utf8")) as { version?: unknown };
    return typeof pkg.version === "string" ? `vxmesh/${pkg.version}` : "vxmesh";
  } catch {
    return "vxmesh";
  }
}

function loadPem(src: PemSource, what: string): Parsed<string> {
  if (src.kind === "pem") return { ok: true, value: src.pem };
  try {
    return { ok: true, value: fs.readFileSync(src.path, "utf8") };
  } catch (e) {
    return { ok: false, error: `the ${what} ${src.path} cannot be read: ${(e as Error).message}` };
  }
}

interface Tls {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

/** Reads the CA and client certificate and checks them with OpenSSL now, so a bad file is named at start. */
function loadTls(creds: KubeCredentials): Parsed<Tls> {
  const out: { ca?: string; cert?: string; key?: string } = {};
  if (creds.ca !== undefined) {
    const ca = loadPem(creds.ca, "certificate authority");
    if (!ca.ok) return ca;
    // OpenSSL skips what is not PEM in a CA bundle; the TLS failure that follows would not say why.
    try {
      new X509Certificate(ca.value);
    } catch (e) {
      const where = creds.ca.kind === "file" ? creds.ca.path : "(certificate-authority-data)";
      return { ok: false, error: `the certificate authority ${where} holds no usable PEM certificate: ${(e as Error).message}` };
    }
    out.ca = ca.value;
  }
  if (creds.auth.kind === "client-cert") {
    const cert = loadPem(creds.auth.cert, "client certificate");
    if (!cert.ok) return cert;
    const key = loadPem(creds.auth.key, "client key");
    if (!key.ok) return key;
    out.cert = cert.value;
    out.key = key.value;
  }
  try {
    tls.createSecureContext(out);
  } catch (e) {
    return { ok: false, error: `the TLS material for ${creds.server} is unusable: ${(e as Error).message}` };
  }
  return { ok: true, value: out };
}

export class HttpsKubeApi implements KubeApi {
  readonly server: string;
  private readonly origin: string;
  private readonly prefix: string;
  private readonly agent: https.Agent;
  private readonly requestTimeoutMs: number;
  private readonly watchIdleGraceMs: number;
  private readonly userAgent: string;
  private readonly maxListBytes: number;
  private readonly maxObjectBytes: number;
  private readonly maxLineBytes: number;
  /** The last token read from a token file: used if a later read fails. */
  private lastFileToken: string | undefined;
  /** stop() of every running watch, for close(). */
  private readonly watches = new Set<() => void>();
  /** Why the credentials cannot be used (a CA file that does not parse …); every call returns it. */
  private readonly broken: KubeError | undefined;

  /**
   * Reads the TLS files now; unusable credentials are an error here (to stop a start with).
   * The token file is read at every call.
   */
  static create(creds: KubeCredentials, options: KubeClientOptions = {}): Parsed<HttpsKubeApi> {
    const api = new HttpsKubeApi(creds, options);
    return api.broken === undefined ? { ok: true, value: api } : { ok: false, error: api.broken.message };
  }

  /** Never throws: with unusable credentials every call fails with reason "Credentials" (create() says so up front). */
  constructor(
    private readonly creds: KubeCredentials,
    o: KubeClientOptions = {},
  ) {
    this.server = creds.server;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 10_000;
    this.watchIdleGraceMs = o.watchIdleGraceMs ?? 30_000;
    this.userAgent = o.userAgent ?? defaultUserAgent();
    this.maxListBytes = o.maxListBytes ?? 256 * MiB;
    this.maxObjectBytes = o.maxObjectBytes ?? 16 * MiB;
    this.maxLineBytes = o.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    let url: URL | undefined;
    try {
      url = new URL(creds.server);
    } catch {
      url = undefined;
    }
    const material: Parsed<Tls> =
      url === undefined || url.protocol !== "https:" ? { ok: false, error: `server "${creds.server}" is not an https:// URL` } : loadTls(creds);
    this.origin = url?.origin ?? "https://invalid";
    this.prefix = url?.pathname.replace(/\/+$/, "") ?? "";
    if (!material.ok) this.broken = { status: undefined, reason: "Credentials", message: material.error };
    this.agent = new https.Agent({
      keepAlive: true,
      ...(material.ok ? material.value : {}),
      ...(creds.tlsServerName !== undefined ? { servername: creds.tlsServerName } : {}),
    });
  }

  getNode(name: string): Promise<KubeResult<unknown>> {
    if (name === "") return Promise.resolve(failure(undefined, "Invalid", "getNode: empty Node name"));
    return this.call("GET", `${NODES}/${encodeURIComponent(name)}`, undefined, this.maxObjectBytes);
  }

  async listNodes(page: { limit: number; continueToken?: string }): Promise<KubeResult<NodeListPage>> {
    const q = new URLSearchParams({ limit: String(page.limit) });
    if (page.continueToken !== undefined && page.continueToken !== "") q.set("continue", page.continueToken);
    const r = await this.call("GET", `${NODES}?${q.toString()}`, undefined, this.maxListBytes);
    if (!r.ok) return r;
    const list = r.value as { metadata?: { resourceVersion?: unknown; continue?: unknown }; items?: unknown } | null;
    const rv = list?.metadata?.resourceVersion;
    const items = list?.items ?? [];
    if (typeof rv !== "string" || rv === "" || !Array.isArray(items)) {
      return failure(200, "BadResponse", `GET ${NODES} did not answer a list with metadata.resourceVersion and items: ${excerpt(JSON.stringify(r.value) ?? "")}`);
    }
    const cont = list?.metadata?.continue;
    return { ok: true, value: { resourceVersion: rv, items, continueToken: typeof cont === "string" && cont !== "" ? cont : undefined } };
  }

  patchNode(name: string, patch: object, options: { type: PatchType; subresource?: "status"; dryRun?: boolean }): Promise<KubeResult<unknown>> {
    if (name === "") return Promise.resolve(failure(undefined, "Invalid", "patchNode: empty Node name"));
    const p = `${NODES}/${encodeURIComponent(name)}${options.subresource === "status" ? "/status" : ""}${options.dryRun === true ? "?dryRun=All" : ""}`;
    return this.call("PATCH", p, { type: PATCH_CONTENT_TYPE[options.type], text: JSON.stringify(patch) }, this.maxObjectBytes);
  }

  watchNodes(options: WatchOptions, onEvent: (event: WatchEvent) => void, onOpen?: () => void): WatchHandle {
    const q = new URLSearchParams({ watch: "1", resourceVersion: options.resourceVersion });
    if (options.bookmarks) q.set("allowWatchBookmarks", "true");
    q.set("timeoutSeconds", String(options.timeoutSeconds));
    const w = new WatchStream(this.url(`${NODES}?${q.toString()}`), onEvent, {
      onOpen,
      agent: this.agent,
      server: this.server,
      headersTimeoutMs: this.requestTimeoutMs,
      idleTimeoutMs: options.timeoutSeconds * 1000 + this.watchIdleGraceMs,
      maxLineBytes: this.maxLineBytes,
      maxErrorBytes: this.maxObjectBytes,
    });
    const stop = (): void => w.stop();
    this.watches.add(stop);
    void w.done.then(() => this.watches.delete(stop));
    void this.headers(undefined).then((h) => (h.ok ? w.start(h.value) : w.fail(h)));
    return { done: w.done, stop };
  }

  close(): void {
    for (const stop of [...this.watches]) stop();
    this.agent.destroy();
  }

  private url(relative: string): URL {
    return new URL(this.prefix + relative, this.origin);
  }

  /** The bearer token: the kubeconfig's, or the token file's as it is now (kubelet rotates projected tokens). */
  private async bearer(): Promise<KubeResult<string | undefined>> {
    if (this.broken !== undefined) return { ok: false, error: this.broken };
    const auth = this.creds.auth;
    if (auth.kind === "token") {
      return TOKEN_CHARS.test(auth.token) ? { ok: true, value: auth.token } : failure(undefined, "Credentials", "the bearer token holds characters an HTTP header cannot carry");
    }
    if (auth.kind !== "token-file") return { ok: true, value: undefined };
    try {
      const token = (await fs.promises.readFile(auth.path, "utf8")).trim();
      if (token === "") throw new Error("the file is empty");
      if (!TOKEN_CHARS.test(token)) throw new Error("it holds characters an HTTP header cannot carry");
      this.lastFileToken = token;
      return { ok: true, value: token };
    } catch (e) {
      // As client-go does: a failed re-read keeps the last good token rather than failing the call.
      if (this.lastFileToken !== undefined) return { ok: true, value: this.lastFileToken };
      return failure(undefined, "TokenFile", `the token file ${auth.path} cannot be read: ${(e as Error).message}`);
    }
  }

  private async headers(body: { type: string; text: string } | undefined): Promise<KubeResult<http.OutgoingHttpHeaders>> {
    const token = await this.bearer();
    if (!token.ok) return token;
    const h: http.OutgoingHttpHeaders = { accept: "application/json", "user-agent": this.userAgent };
    if (token.value !== undefined) h["authorization"] = `Bearer ${token.value}`;
    if (body !== undefined) {
      h["content-type"] = body.type;
      h["content-length"] = Buffer.byteLength(body.text);
    }
    return { ok: true, value: h };
  }

  private async call(method: string, relative: string, body: { type: string; text: string } | undefined, maxBytes: number): Promise<KubeResult<unknown>> {
    const h = await this.headers(body);
    if (!h.ok) return h;
    const r = await this.exchange({ method, url: this.url(relative), headers: h.value, body: body?.text, maxBytes, retryOnReuse: true });
    if (!r.ok) return r;
    try {
      return { ok: true, value: JSON.parse(r.value) as unknown };
    } catch {
      return failure(200, "BadResponse", `${method} ${relative} answered something that is not JSON: ${excerpt(r.value)}`);
    }
  }

  /** One request: the 2xx body as text, or why not. */
  private exchange(x: { method: string; url: URL; headers: http.OutgoingHttpHeaders; body: string | undefined; maxBytes: number; retryOnReuse: boolean }): Promise<KubeResult<string>> {
    return new Promise((resolve) => {
      let settled = false;
      const finish = (r: KubeResult<string>): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!r.ok) req.destroy();
        resolve(r);
      };
      let req: http.ClientRequest;
      try {
        req = https.request(x.url, { method: x.method, headers: x.headers, agent: this.agent });
      } catch (e) {
        // Invalid options (a header node:http refuses): a bug or bad credentials, still a value.
        resolve(failure(undefined, "Invalid", `the request could not be made: ${(e as Error).message}`));
        return;
      }
      const timer = setTimeout(() => finish(failure(undefined, "Timeout", `no answer from ${this.server} within ${this.requestTimeoutMs / 1000} s`)), this.requestTimeoutMs);
      timer.unref();
      req.on("error", (err) => {
        // A kept-alive socket the server closed while idle fails the first write: once, again on a fresh one.
        if (x.retryOnReuse && req.reusedSocket && (err as NodeJS.ErrnoException).code === "ECONNRESET" && !settled) {
          settled = true;
          clearTimeout(timer);
          resolve(this.exchange({ ...x, retryOnReuse: false }));
          return;
        }
        finish(socketError(err));
      });
      req.on("response", (res) => {
        readBody(res, x.maxBytes, (body) => {
          const status = res.statusCode ?? 0;
          if (!body.ok) finish(body);
          else if (status >= 200 && status < 300) finish({ ok: true, value: body.value });
          else finish(httpError(status, res.statusMessage, body.value));
        });
      });
      req.end(x.body);
    });
  }
}

/** Collects a response body up to `max` bytes; calls `done` once. */
function readBody(res: http.IncomingMessage, max: number, done: (r: KubeResult<string>) => void): void {
  const chunks: Buffer[] = [];
  let bytes = 0;
  let over = false;
  res.on("data", (c: Buffer) => {
    if (over) return;
    bytes += c.length;
    if (bytes > max) {
      over = true;
      done(failure(res.statusCode, "TooLarge", `the answer is longer than ${max} bytes`));
      res.destroy();
      return;
    }
    chunks.push(c);
  });
  res.on("end", () => {
    if (!over) done({ ok: true, value: Buffer.concat(chunks).toString("utf8") });
  });
  res.on("error", (err) => {
    if (!over) done(socketError(err));
  });
  res.on("close", () => {
    if (!over && !res.complete) done(failure(undefined, "ECONNRESET", "the connection broke in the middle of the answer"));
  });
}

interface WatchStreamConfig {
  /** Called once the server has answered 2xx: the stream is open. */
  readonly onOpen: (() => void) | undefined;
  readonly agent: https.Agent;
  readonly server: string;
  readonly headersTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly maxLineBytes: number;
  readonly maxErrorBytes: number;
}

/** One watch request: lines decoded into events, in order, until the stream ends or is stopped. */
class WatchStream {
  readonly done: Promise<KubeResult<void>>;
  private resolve!: (r: KubeResult<void>) => void;
  private settled = false;
  private req: http.ClientRequest | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly url: URL,
    private readonly onEvent: (event: WatchEvent) => void,
    private readonly c: WatchStreamConfig,
  ) {
    this.done = new Promise((r) => (this.resolve = r));
  }

  stop(): void {
    this.settle({ ok: true, value: undefined }, true);
  }

  fail(r: Fail): void {
    this.settle(r, true);
  }

  start(headers: http.OutgoingHttpHeaders): void {
    if (this.settled) return;
    let req: http.ClientRequest;
    try {
      req = https.request(this.url, { method: "GET", headers, agent: this.c.agent });
    } catch (e) {
      return this.settle(failure(undefined, "Invalid", `the watch request could not be made: ${(e as Error).message}`), false);
    }
    this.req = req;
    this.arm(this.c.headersTimeoutMs, `no answer from ${this.c.server} within ${this.c.headersTimeoutMs / 1000} s`);
    req.on("error", (err) => this.settle(socketError(err), true));
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      if (status < 200 || status >= 300) {
        this.arm(this.c.headersTimeoutMs, `the error answer from ${this.c.server} did not finish within ${this.c.headersTimeoutMs / 1000} s`);
        readBody(res, this.c.maxErrorBytes, (body) => this.settle(body.ok ? httpError(status, res.statusMessage, body.value) : body, true));
        return;
      }
      this.arm(this.c.idleTimeoutMs, `the watch stream was silent for ${this.c.idleTimeoutMs / 1000} s (its timeoutSeconds + grace): the connection is presumed dead`);
      this.c.onOpen?.();
      this.stream(res, status);
    });
    req.end();
  }

  private stream(res: http.IncomingMessage, status: number): void {
    const decoder = new WatchLineDecoder(this.c.maxLineBytes);
    res.on("data", (chunk: Buffer) => {
      if (this.settled) return;
      this.timer?.refresh();
      const lines = decoder.push(chunk);
      if (!lines.ok) return this.settle(failure(status, "BadStream", lines.error), true);
      for (const line of lines.value) {
        if (this.settled) return; // stop() from inside onEvent: nothing after it
        const event = toWatchEvent(line);
        if (!event.ok) return this.settle(failure(status, "BadStream", event.error), true);
        this.onEvent(event.value);
      }
      // A bad line after good ones in this chunk: those were delivered, now the error.
      if (decoder.error !== undefined) this.settle(failure(status, "BadStream", decoder.error), true);
    });
    res.on("end", () => {
      const end = decoder.end();
      this.settle(end.ok ? { ok: true, value: undefined } : failure(status, "BadStream", end.error), !end.ok);
    });
    res.on("error", (err) => this.settle(socketError(err), true));
    res.on("close", () => {
      if (!res.complete) this.settle(failure(undefined, "ECONNRESET", "the watch stream broke: the connection closed mid-stream"), true);
    });
  }

  /** (Re)starts the one timer: when it fires, the watch ends with a Timeout error. */
  private arm(ms: number, message: string): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.settle(failure(undefined, "Timeout", message), true), ms);
    this.timer.unref();
  }

  private settle(r: KubeResult<void>, destroy: boolean): void {
    if (this.settled) return;
    this.settled = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (destroy) this.req?.destroy();
    this.resolve(r);
  }
}
