// Test tooling only: a TCP server that answers every connection with who it is and the peer
// address it saw, and a client that opens connections to it, both as `node -e` programs run
// inside lab namespaces (no busybox or netcat needed). The service tests use them to see which
// backend a service picked and whether the source address was translated on the way.

import type { ChildProcess } from "node:child_process";
import { waitFor, type ExecResult, type NsRef } from "./lab";

/** What a server answered on one connection. */
export interface PeerAnswer {
  /** The name the server was started with. */
  backend: string;
  /** The source address of the connection as the server saw it. */
  peer: string;
}

/** One connection attempt of the client. */
export type PeerAttempt = ({ ok: true } & PeerAnswer) | { ok: false; error: string };

/** What bench/lab.ts's Lab offers that this helper uses. */
export interface PeerEchoLab {
  spawn(ns: NsRef, argv: readonly string[]): ChildProcess;
  exec(ns: NsRef, argv: readonly string[], opts?: { timeoutMs?: number }): Promise<ExecResult>;
}

const SERVER = `
const net = require("node:net");
const { name, port } = JSON.parse(process.argv[1]);
const server = net.createServer((s) => {
  s.on("error", () => {});
  s.end(JSON.stringify({ backend: name, peer: s.remoteAddress }) + "\\n");
});
server.on("error", (e) => { console.error(String(e)); process.exit(1); });
server.listen(port, "0.0.0.0", () => console.log("listening"));
`;

const CLIENT = `
const net = require("node:net");
const { host, port, count, concurrency, timeoutMs, localAddress } = JSON.parse(process.argv[1]);
function once() {
  return new Promise((resolve) => {
    let data = "";
    let done = false;
    const finish = (r) => { if (!done) { done = true; clearTimeout(timer); s.destroy(); resolve(r); } };
    const s = net.connect({ host, port, ...(localAddress ? { localAddress } : {}) });
    const timer = setTimeout(() => finish({ ok: false, error: "timeout" }), timeoutMs);
    s.setEncoding("utf8");
    s.on("data", (d) => { data += d; });
    s.on("end", () => {
      try { finish({ ok: true, ...JSON.parse(data) }); } catch { finish({ ok: false, error: "bad answer " + JSON.stringify(data) }); }
    });
    s.on("error", (e) => finish({ ok: false, error: e.code || String(e) }));
  });
}
(async () => {
  const out = [];
  let next = 0;
  const worker = async () => { while (next < count) { next++; out.push(await once()); } };
  await Promise.all(Array.from({ length: concurrency }, worker));
  console.log(JSON.stringify(out));
})();
`;

/** Starts the server in `ns` on `port`; resolves once it listens. The lab ends it at teardown. */
export async function startPeerEchoServer(lab: PeerEchoLab, ns: NsRef, name: string, port: number): Promise<ChildProcess> {
  const child = lab.spawn(ns, [process.execPath, "-e", SERVER, JSON.stringify({ name, port })]);
  let out = "";
  let err = "";
  child.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
  child.stderr?.setEncoding("utf8").on("data", (d: string) => (err += d));
  await waitFor(() => {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`server ${name} exited: ${err.trim()}`);
    return out.includes("listening");
  }, { timeoutMs: 15_000, intervalMs: 20, what: `peer-echo server ${name} to listen on port ${port}` });
  return child;
}

export interface ConnectOptions {
  /** Connections to open (default 1). */
  count?: number;
  /** How many at once (default 1: one after the other). */
  concurrency?: number;
  /** Per connection, until the answer is complete (default 3000 ms). */
  timeoutMs?: number;
  /** Bind the client socket to this address. */
  localAddress?: string;
}

/** Opens connections from inside `ns` to host:port; one entry per attempt. */
export async function connectPeerEcho(lab: PeerEchoLab, ns: NsRef, host: string, port: number, opts: ConnectOptions = {}): Promise<PeerAttempt[]> {
  const count = opts.count ?? 1;
  const concurrency = Math.max(1, Math.min(opts.concurrency ?? 1, count));
  const timeoutMs = opts.timeoutMs ?? 3000;
  const args = { host, port, count, concurrency, timeoutMs, localAddress: opts.localAddress };
  const rounds = Math.ceil(count / concurrency);
  const r = await lab.exec(ns, [process.execPath, "-e", CLIENT, JSON.stringify(args)], { timeoutMs: rounds * timeoutMs + 15_000 });
  if (r.code !== 0) throw new Error(`peer-echo client to ${host}:${port} exited ${String(r.code)}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as PeerAttempt[];
}
