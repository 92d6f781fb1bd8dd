// Test tooling only: the Kubernetes API double (bench/kube-api-double.ts) as a child process inside
// a lab namespace, so that daemons in node namespaces reach it over the lab's underlay like a real
// control plane: by default at 192.0.2.2:6443 on the underlay bridge br0, in the underlay namespace
// (nothing in the root namespace). The child is dist/bench/kube-api-process-main.js (`npm run
// build`) started by `ip netns exec NS node …`; ip execs node in place and leaves its inherited
// descriptors and environment alone, so Node's IPC channel (fd 3, NODE_CHANNEL_FD) works through it.
// The test controls of the double are async methods here, one IPC round trip each.
//
// Also runKubectl(): the real kubectl with a kubeconfig and a throw-away cache dir, optionally
// inside a namespace.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { distPath } from "../encap/artefacts";
import { exec, type Lab, type NsRef } from "./lab";
import type { KubeAllow, KubeApiDoubleOptions, KubeGrant, KubeRequestCounts, KubeRequestRecord, NodeJson } from "./kube-api-double";
import { writeKubeconfig } from "./kube-api-double";
import type { TestPki } from "./kube-pki";

export interface KubectlResult {
  /** Exit code; null when killed (timeout). */
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface KubectlOptions {
  /** Run inside this namespace (`ip netns exec`). */
  ns?: NsRef;
  /** kubectl's discovery and HTTP cache (--cache-dir); default a fresh temporary dir, removed after. */
  cacheDir?: string;
  /** Default 30 000 ms. */
  timeoutMs?: number;
}

/** `kubectl --kubeconfig FILE --cache-dir DIR args…`; never throws on a non-zero exit. */
export async function runKubectl(kubeconfig: string, args: readonly string[], o: KubectlOptions = {}): Promise<KubectlResult> {
  const ownCache = o.cacheDir === undefined ? mkdtempSync(join(tmpdir(), "vxmesh-kubectl-")) : undefined;
  const argv = ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", o.cacheDir ?? ownCache ?? "", ...args];
  const timeoutMs = o.timeoutMs ?? 30_000;
  try {
    if (o.ns !== undefined) {
      const r = await exec(o.ns, argv, { timeoutMs });
      return { code: r.code, stdout: r.stdout, stderr: r.stderr };
    }
    return await new Promise<KubectlResult>((resolve) => {
      execFile(argv[0] ?? "kubectl", argv.slice(1), { encoding: "utf8", timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === "number" ? err.code : null;
        resolve({ code, stdout, stderr });
      });
    });
  } finally {
    if (ownCache !== undefined) rmSync(ownCache, { recursive: true, force: true });
  }
}

export interface KubeApiProcessOptions extends Omit<KubeApiDoubleOptions, "host" | "port" | "pki"> {
  /** Address the API listens on, added to the bridge; default 192.0.2.2. */
  ip?: string;
  /** Prefix length of that address; default 24. */
  prefixLen?: number;
  /** Default 6443. */
  port?: number;
  /** Must name `ip` among its server certificate's IP SANs. */
  pki: TestPki;
  /** The bridge in the namespace the address goes on; default "br0" (the lab's underlay bridge). */
  bridge?: string;
  /** Token written into `kubeconfig`; default the first of `tokens`. */
  kubeconfigToken?: string;
  /** How long the child may take to listen; default 15 000 ms. */
  startTimeoutMs?: number;
}

const OUTPUT_TAIL = 16 * 1024;

/**
 * The IPC side of a kube-api-process-main.js child: calls by name, answers matched by id, the
 * child's output kept for messages, killed when this process exits. Used here (the double in a
 * namespace) and by bench/kube-scale.ts (the double forked on loopback).
 */
export class DoubleChannel {
  private output = "";
  private nextId = 0;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  private closing: Promise<void> | undefined;
  private readonly exitHook = (): void => {
    this.child.kill("SIGKILL");
  };

  constructor(private readonly child: ChildProcess) {
    const keep = (chunk: Buffer): void => {
      this.output = (this.output + chunk.toString("utf8")).slice(-OUTPUT_TAIL);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    child.on("message", (m: unknown) => this.onMessage(m));
    child.once("exit", (code, signal) => {
      process.off("exit", this.exitHook);
      const why = new Error(`the Kubernetes API double exited (${code ?? signal ?? "?"})${this.tail()}`);
      for (const p of this.pending.values()) p.reject(why);
      this.pending.clear();
    });
    process.once("exit", this.exitHook);
  }

  /** dist/bench/kube-api-process-main.js, checked to exist (`npm run build`). */
  static script(): string {
    const script = distPath("bench", "kube-api-process-main.js");
    if (!existsSync(script)) throw new Error(`${script} is missing: run \`npm run build\``);
    return script;
  }

  /** The child's output so far (its last 16 KiB), for failure messages. */
  get log(): string {
    return this.output;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  private tail(): string {
    return this.output === "" ? "" : `: ${this.output.trim()}`;
  }

  private onMessage(m: unknown): void {
    if (typeof m !== "object" || m === null) return;
    const r = m as { id?: unknown; ok?: unknown; value?: unknown; error?: unknown };
    if (typeof r.id !== "number") return;
    const p = this.pending.get(r.id);
    if (p === undefined) return;
    this.pending.delete(r.id);
    if (r.ok === true) p.resolve(r.value);
    else p.reject(new Error(`Kubernetes API double: ${String(r.error)}`));
  }

  /** One control of the double (kube-api-process-main.ts lists them), answered or failed within `timeoutMs`. */
  call(op: string, args: readonly unknown[] = [], timeoutMs = 10_000): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (!this.child.connected) {
        reject(new Error(`the Kubernetes API double is not running${this.tail()}`));
        return;
      }
      const id = ++this.nextId;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`the Kubernetes API double did not answer "${op}" within ${timeoutMs} ms${this.tail()}`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.child.send({ id, op, args }, (err) => {
        if (err !== null && err !== undefined) this.pending.get(id)?.reject(err);
      });
    });
  }

  /** Ends the child (SIGTERM, then SIGKILL after 3 s); resolves once it has exited. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const c = this.child;
      if (c.exitCode === null && c.signalCode === null) {
        const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
        c.kill("SIGTERM");
        const t = setTimeout(() => c.kill("SIGKILL"), 3000);
        await exited;
        clearTimeout(t);
      }
      process.off("exit", this.exitHook);
    })();
    return this.closing;
  }
}

export class KubeApiProcess {
  /** "https://IP:PORT". */
  readonly url: string;
  /** A kubeconfig for this API (CA + the kubeconfig token). */
  readonly kubeconfig: string;
  private readonly channel: DoubleChannel;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly namespace: string,
    readonly ip: string,
    readonly prefixLen: number,
    readonly port: number,
    private readonly bridge: string,
    child: ChildProcess,
    private readonly workDir: string,
  ) {
    this.url = `https://${ip}:${port}`;
    this.kubeconfig = join(workDir, "kubeconfig");
    this.channel = new DoubleChannel(child);
  }

  /** @internal used by startKubeApiInNamespace */
  static async launch(ns: string, spawnIn: (argv: readonly string[]) => ChildProcess, o: KubeApiProcessOptions): Promise<KubeApiProcess> {
    const ip = o.ip ?? "192.0.2.2";
    const prefixLen = o.prefixLen ?? 24;
    const port = o.port ?? 6443;
    const bridge = o.bridge ?? "br0";
    const script = DoubleChannel.script();
    await execOrThrow(ns, ["ip", "addr", "add", `${ip}/${prefixLen}`, "dev", bridge]);
    const workDir = mkdtempSync(join(tmpdir(), "vxmesh-kube-api-"));
    let api: KubeApiProcess | undefined;
    try {
      const child = spawnIn([process.execPath, script]);
      api = new KubeApiProcess(ns, ip, prefixLen, port, bridge, child, workDir);
      const token = o.kubeconfigToken ?? Object.keys(o.tokens ?? {})[0];
      writeKubeconfig(api.kubeconfig, { server: api.url, caFile: o.pki.caFile, ...(token === undefined ? {} : { token }) });
      // Only what the double takes, as JSON (the IPC channel drops undefined fields).
      const options: KubeApiDoubleOptions = {
        host: ip,
        port,
        pki: { caPem: o.pki.caPem, serverCertPem: o.pki.serverCertPem, serverKeyPem: o.pki.serverKeyPem },
        tokens: o.tokens,
        certGrants: o.certGrants,
        bookmarkIntervalMs: o.bookmarkIntervalMs,
        goneAsHttpStatus: o.goneAsHttpStatus,
        historyLimit: o.historyLimit,
        requestLogLimit: o.requestLogLimit,
        nodes: o.nodes,
      };
      await api.channel.call("init", [options], o.startTimeoutMs ?? 15_000);
      return api;
    } catch (e) {
      if (api !== undefined) await api.close();
      else {
        rmSync(workDir, { recursive: true, force: true });
        await exec(ns, ["ip", "addr", "del", `${ip}/${prefixLen}`, "dev", bridge]).catch(() => undefined);
      }
      throw e;
    }
  }

  /** The child's output so far (its last 16 KiB), for failure messages. */
  get log(): string {
    return this.channel.log;
  }

  get pid(): number | undefined {
    return this.channel.pid;
  }

  private call(op: string, args: readonly unknown[] = []): Promise<unknown> {
    return this.channel.call(op, args);
  }

  // --- the double's controls ----------------------------------------------------------------

  async upsertNode(node: object): Promise<NodeJson> {
    return (await this.call("upsertNode", [node])) as NodeJson;
  }

  async deleteNode(name: string): Promise<boolean> {
    return (await this.call("deleteNode", [name])) === true;
  }

  async node(name: string): Promise<NodeJson | undefined> {
    return ((await this.call("node", [name])) ?? undefined) as NodeJson | undefined;
  }

  async nodes(): Promise<NodeJson[]> {
    return (await this.call("nodes")) as NodeJson[];
  }

  async resourceVersion(): Promise<string> {
    return String(await this.call("resourceVersion"));
  }

  async compact(): Promise<void> {
    await this.call("compact");
  }

  async expireWatches(): Promise<void> {
    await this.call("expireWatches");
  }

  async dropWatches(): Promise<void> {
    await this.call("dropWatches");
  }

  async openWatches(): Promise<number> {
    return Number(await this.call("openWatches"));
  }

  /** The API goes down (listener closed, connections cut; see KubeApiDouble.stop); the process and the state stay. */
  async stop(o: { graceful?: boolean } = {}): Promise<void> {
    await this.call("stop", [o.graceful === true]);
  }

  /** The API comes back on the same address with the same state. */
  async start(): Promise<void> {
    await this.call("start");
  }

  async setToken(token: string, grant: KubeGrant): Promise<void> {
    await this.call("setToken", [token, grant]);
  }

  async revokeToken(token: string): Promise<void> {
    await this.call("revokeToken", [token]);
  }

  async setCertGrant(user: string, allow: KubeAllow): Promise<void> {
    await this.call("setCertGrant", [user, allow]);
  }

  async setGoneAsHttpStatus(on: boolean): Promise<void> {
    await this.call("setGoneAsHttpStatus", [on]);
  }

  async requests(): Promise<KubeRequestRecord[]> {
    return (await this.call("requests")) as KubeRequestRecord[];
  }

  async clearRequests(): Promise<void> {
    await this.call("clearRequests");
  }

  async counts(user: string): Promise<KubeRequestCounts> {
    return (await this.call("counts", [user])) as KubeRequestCounts;
  }

  async allCounts(): Promise<Record<string, KubeRequestCounts>> {
    return (await this.call("allCounts")) as Record<string, KubeRequestCounts>;
  }

  /** The real kubectl with this API's kubeconfig (or another), in `o.ns` (default: the API's own namespace). */
  kubectl(args: readonly string[], o: KubectlOptions & { kubeconfig?: string } = {}): Promise<KubectlResult> {
    return runKubectl(o.kubeconfig ?? this.kubeconfig, args, { ...o, ns: o.ns ?? this.namespace });
  }

  /** Ends the child (SIGTERM, then SIGKILL), removes the address and the work dir. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    await this.channel.close();
    rmSync(this.workDir, { recursive: true, force: true });
    // The namespace may be gone already (lab torn down): nothing to remove then.
    await exec(this.namespace, ["ip", "addr", "del", `${this.ip}/${this.prefixLen}`, "dev", this.bridge]).catch(() => undefined);
  }
}

async function execOrThrow(ns: string, argv: readonly string[]): Promise<void> {
  const r = await exec(ns, argv);
  if (r.code !== 0) throw new Error(`ip netns exec ${ns} ${argv.join(" ")} failed: ${r.stderr.trim()}`);
}

/**
 * Starts the API double in the lab's underlay namespace (or in the named namespace), listening on
 * `o.ip` (default 192.0.2.2/24, added to br0) port `o.port` (default 6443). With a Lab, the child
 * is one of the lab's processes, so a lab teardown ends it even if close() is never called.
 */
export function startKubeApiInNamespace(target: Lab | string, o: KubeApiProcessOptions): Promise<KubeApiProcess> {
  const stdio: ["ignore", "pipe", "pipe", "ipc"] = ["ignore", "pipe", "pipe", "ipc"];
  if (typeof target === "string") {
    return KubeApiProcess.launch(target, (argv) => spawn("ip", ["netns", "exec", target, ...argv], { stdio }), o);
  }
  return KubeApiProcess.launch(target.underlayNs, (argv) => target.spawn(target.underlayNs, argv, { stdio }), o);
}
