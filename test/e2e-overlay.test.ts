// End to end through real vxmesh daemons in the network-namespace lab (docs/DESIGN.md §7): pods on
// different nodes reach each other by their own addresses, a TCP stream arrives byte-exact,
// a node reaches remote pods from its TAP address, the underlay carries RFC 7348 VXLAN with
// the configured VNI and port, the pod MTU holds end to end, and the forwarders drop nothing
// they should not. No mocks: every packet crosses veths, a TAP and a daemon's forwarder.

import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { Cluster } from "../bench/cluster";
import { Lab, listNetns, waitFor } from "../bench/lab";
import type { LabNode, LabPod, NsRef } from "../bench/lab";

const STREAM_BYTES = 50 * 1024 * 1024;
const BUSY_POLL_US = 20_000;

// ---------------------------------------------------------------------------------------------
// Scripts run with `node -e` inside pod / node namespaces. Arguments come as one JSON string in
// process.argv[1] (with -e, argv[1] is the first argument after the script).

/**
 * UDP datagrams of one flow, each carrying its sequence number and bytes derived from it:
 * the receiver checks every one and prints {received, corrupt, outOfOrder} after 1 s of quiet.
 */
const UDP_RECEIVER_SCRIPT = `
const dgram = require("node:dgram");
const { host, port, deadlineMs } = JSON.parse(process.argv[1]);
const sock = dgram.createSocket({ type: "udp4", recvBufferSize: 16 << 20 });
let received = 0, corrupt = 0, outOfOrder = 0, last = -1, quiet;
const finish = () => { console.log(JSON.stringify({ received, corrupt, outOfOrder })); process.exit(0); };
sock.on("message", (m) => {
  received++;
  const seq = m.length >= 4 ? m.readUInt32BE(0) : -1;
  let ok = seq >= 0 && m.length === (seq % 3 === 0 ? 40 : 1200);
  for (let i = 4; ok && i < m.length; i++) if (m[i] !== ((seq * 31 + i) & 0xff)) ok = false;
  if (!ok) corrupt++;
  if (seq <= last) outOfOrder++;
  last = seq;
  clearTimeout(quiet);
  quiet = setTimeout(finish, 1000);
});
sock.bind(port, host, () => console.log("bound"));
setTimeout(finish, deadlineMs);
`;

const UDP_SENDER_SCRIPT = `
const dgram = require("node:dgram");
const { host, port, count } = JSON.parse(process.argv[1]);
const sock = dgram.createSocket("udp4");
let seq = 0;
const burst = () => {
  for (let k = 0; k < 64 && seq < count; k++, seq++) {
    const m = Buffer.alloc(seq % 3 === 0 ? 40 : 1200);
    m.writeUInt32BE(seq, 0);
    for (let i = 4; i < m.length; i++) m[i] = (seq * 31 + i) & 0xff;
    sock.send(m, port, host);
  }
  if (seq < count) setTimeout(burst, 2); else setTimeout(() => { console.log(JSON.stringify({ sent: seq })); process.exit(0); }, 200);
};
burst();
`;

/** A TCP server that hashes one connection's bytes and prints {sha256, bytes, remoteAddress}. */
const RECEIVER_SCRIPT = `
const net = require("node:net");
const crypto = require("node:crypto");
const { host, port } = JSON.parse(process.argv[1]);
const server = net.createServer({ allowHalfOpen: true });
server.once("connection", (sock) => {
  server.close();
  const hash = crypto.createHash("sha256");
  let bytes = 0;
  const remoteAddress = sock.remoteAddress;
  sock.on("data", (chunk) => { hash.update(chunk); bytes += chunk.length; });
  sock.on("end", () => {
    const report = JSON.stringify({ sha256: hash.digest("hex"), bytes, remoteAddress });
    process.stdout.write(report + "\\n", () => sock.end(report + "\\n"));
  });
  sock.on("error", (e) => { process.stderr.write("receiver socket: " + e.message + "\\n"); process.exit(3); });
});
server.on("error", (e) => { process.stderr.write("receiver: " + e.message + "\\n"); process.exit(2); });
server.listen(port, host, () => process.stdout.write("listening\\n"));
`;

/**
 * Connects (retrying refused / unreachable connects until a deadline, so the receiver's
 * readiness is waited for, not guessed), streams \`bytes\` pseudo-random bytes from a seeded
 * xorshift32, waits for the receiver's report and prints {sha256, bytes, report}.
 */
const SENDER_SCRIPT = `
const net = require("node:net");
const crypto = require("node:crypto");
const { host, port, bytes, seed, deadlineMs } = JSON.parse(process.argv[1]);
const deadline = Date.now() + deadlineMs;
function connectOnce() {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, allowHalfOpen: true });
    s.once("connect", () => { s.removeAllListeners("error"); resolve(s); });
    s.once("error", (e) => { s.destroy(); reject(e); });
  });
}
async function connect() {
  for (;;) {
    try { return await connectOnce(); } catch (e) {
      if (Date.now() > deadline) throw new Error("no connection to " + host + ":" + port + " before the deadline: " + e.message);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
(async () => {
  const sock = await connect();
  let reply = "";
  sock.setEncoding("utf8");
  sock.on("data", (d) => { reply += d; });
  const closed = new Promise((resolve, reject) => { sock.once("close", resolve); sock.once("error", reject); });
  const hash = crypto.createHash("sha256");
  const CHUNK = 1024 * 1024;
  let x = seed >>> 0 || 1;
  let sent = 0;
  while (sent < bytes) {
    const n = Math.min(CHUNK, bytes - sent);
    const buf = Buffer.allocUnsafe(Math.ceil(n / 4) * 4);
    for (let i = 0; i < buf.length; i += 4) {
      x ^= x << 13; x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5; x >>>= 0;
      buf.writeUInt32LE(x, i);
    }
    const chunk = buf.subarray(0, n);
    hash.update(chunk);
    sent += n;
    if (!sock.write(chunk)) await new Promise((r) => sock.once("drain", r));
  }
  sock.end();
  await closed;
  process.stdout.write(JSON.stringify({ sha256: hash.digest("hex"), bytes: sent, reply: reply.trim() }) + "\\n");
})().catch((e) => { process.stderr.write("sender: " + e.message + "\\n"); process.exit(1); });
`;

/** Echoes one connection back and prints the peer's address once the client has finished. */
const ECHO_SERVER_SCRIPT = `
const net = require("node:net");
const { host, port } = JSON.parse(process.argv[1]);
const server = net.createServer({ allowHalfOpen: true });
server.once("connection", (sock) => {
  server.close();
  const remoteAddress = sock.remoteAddress;
  const parts = [];
  sock.on("data", (d) => parts.push(d));
  sock.on("end", () => {
    const got = Buffer.concat(parts);
    process.stdout.write(JSON.stringify({ remoteAddress, bytes: got.length }) + "\\n", () => sock.end(got));
  });
  sock.on("error", (e) => { process.stderr.write("echo server: " + e.message + "\\n"); process.exit(3); });
});
server.on("error", (e) => { process.stderr.write("echo server: " + e.message + "\\n"); process.exit(2); });
server.listen(port, host, () => process.stdout.write("listening\\n"));
`;

/** Connects (retrying until a deadline), sends a message, half-closes, prints what came back. */
const ECHO_CLIENT_SCRIPT = `
const net = require("node:net");
const { host, port, message, deadlineMs } = JSON.parse(process.argv[1]);
const deadline = Date.now() + deadlineMs;
function attempt() {
  const s = net.connect({ host, port, allowHalfOpen: true });
  let connected = false;
  let got = "";
  s.setEncoding("utf8");
  s.on("connect", () => { connected = true; s.end(message); });
  s.on("data", (d) => { got += d; });
  s.on("end", () => { process.stdout.write(JSON.stringify({ echo: got, localAddress: s.localAddress }) + "\\n"); s.destroy(); });
  s.on("error", (e) => {
    s.destroy();
    if (connected || Date.now() > deadline) { process.stderr.write("echo client: " + e.message + "\\n"); process.exit(1); }
    setTimeout(attempt, 50);
  });
}
attempt();
`;

// ---------------------------------------------------------------------------------------------
// Helpers

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A process started in a namespace, with its output collected and a deadline on its life. */
interface Running {
  readonly child: ChildProcess;
  readonly done: Promise<Finished>;
  stdout(): string;
}

function startScript(lab: Lab, ns: NsRef, script: string, args: unknown, timeoutMs: number): Running {
  const child = lab.spawn(ns, [process.execPath, "-e", script, JSON.stringify(args)]);
  let out = "";
  let err = "";
  child.stdout?.setEncoding("utf8");
  child.stderr?.setEncoding("utf8");
  child.stdout?.on("data", (d: string) => {
    out += d;
  });
  child.stderr?.on("data", (d: string) => {
    err += d;
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const done = new Promise<Finished>((resolve) => {
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: out, stderr: err });
    });
    child.once("error", (e) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout: out, stderr: `${err}spawn error: ${e.message}` });
    });
  });
  return { child, done, stdout: () => out };
}

function describeFinished(what: string, f: Finished): string {
  return `${what}: exit ${String(f.code)}${f.signal !== null ? ` (${f.signal})` : ""}; stdout: ${f.stdout.trim() || "-"}; stderr: ${f.stderr.trim() || "-"}`;
}

/** Parses the last JSON line a script printed. */
function lastJson<T>(f: Finished, what: string): T {
  const lines = f.stdout.trim().split("\n").filter((l) => l.startsWith("{"));
  const last = lines[lines.length - 1];
  if (f.code !== 0 || last === undefined) throw new Error(describeFinished(what, f));
  return JSON.parse(last) as T;
}

function crossNodePairs(lab: Lab): [LabPod, LabPod][] {
  const pairs: [LabPod, LabPod][] = [];
  for (const a of lab.pods) for (const b of lab.pods) if (a.node !== b.node) pairs.push([a, b]);
  return pairs;
}

/** Pings every cross-node pod pair concurrently (3 echoes each); returns the failing pairs. */
async function failingPairs(lab: Lab): Promise<string[]> {
  const pairs = crossNodePairs(lab);
  const results = await Promise.all(
    pairs.map(async ([a, b]) => ({ a, b, ok: await lab.ping(a, b.ip, { count: 3, timeoutMs: 1000, intervalMs: 200 }) })),
  );
  return results.filter((r) => !r.ok).map((r) => `${r.a.name} (${r.a.ip}) → ${r.b.name} (${r.b.ip})`);
}

interface VxlanRow {
  vni: string;
  flags: string;
  udpSrc: string;
  udpDst: string;
  outerSrc: string;
  outerDst: string;
  innerSrc: string;
  innerDst: string;
  icmpType: string;
  raw: string;
}

const CAPTURE_FIELDS = ["vxlan.vni", "vxlan.flags", "udp.srcport", "udp.dstport", "ip.src", "ip.dst", "icmp.type"];

/**
 * Captures `packets` VXLAN datagrams on `at`'s underlay eth0 while `from` pings `to` (one echo
 * per round until tshark has its packets), then decodes them as VXLAN on `port`.
 */
async function captureVxlan(lab: Lab, at: LabNode, from: NsRef, to: string, port: number, packets: number): Promise<VxlanRow[]> {
  const cap = await lab.startCapture(at, { iface: at.underlayIf, filter: `udp port ${port}`, count: packets, durationS: 30 });
  try {
    await waitFor(
      async () => {
        if (cap.finished()) return true;
        await lab.ping(from, to, { count: 1, timeoutMs: 500 });
        return cap.finished();
      },
      { timeoutMs: 20_000, intervalMs: 20, what: `tshark on ${at.name}'s ${at.underlayIf} to capture ${packets} VXLAN packets` },
    );
  } finally {
    await cap.stop();
  }
  expect(await cap.done).toBe(0);
  const rows = await lab.readCapture(cap.file, CAPTURE_FIELDS, { decodeAs: [`udp.port==${port},vxlan`] });
  return rows.map((r) => {
    const [vni = "", flags = "", udpSrc = "", udpDst = "", src = "", dst = "", icmp = ""] = r;
    const [outerSrc = "", innerSrc = ""] = src.split(",");
    const [outerDst = "", innerDst = ""] = dst.split(",");
    return { vni, flags, udpSrc, udpDst, outerSrc, outerDst, innerSrc, innerDst, icmpType: icmp, raw: r.join(" | ") };
  });
}

/** Tears down in order, each step guarded, so one failure never skips the other. */
async function stopEverything(cluster: Cluster | undefined, lab: Lab | undefined): Promise<void> {
  const errors: unknown[] = [];
  try {
    await cluster?.stopAll();
  } catch (e) {
    errors.push(e);
  }
  try {
    await lab?.teardown();
  } catch (e) {
    errors.push(e);
  }
  if (lab !== undefined) {
    const left = (await listNetns()).filter((n) => n.startsWith(lab.prefix));
    if (left.length > 0) errors.push(new Error(`namespaces left behind: ${left.join(", ")}`));
  }
  if (errors.length > 0) throw errors[0];
}

// ---------------------------------------------------------------------------------------------

describe("3 nodes × 2 pods through vxmesh", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    const t0 = Date.now();
    lab = await Lab.build({ nodes: [1, 2, 3].map(() => ({ overlay: "vxmesh" as const, pods: 2 })) });
    const t1 = Date.now();
    cluster = new Cluster(lab);
    // n1 never busy-polls, n2 does briefly (the default), n3 for long: every test below runs
    // through forwarders of all three kinds.
    await Promise.all([cluster.start(lab.node("n1"), { extraArgs: ["--busy-poll", "0"] }), cluster.start(lab.node("n2")),
      cluster.start(lab.node("n3"), { extraArgs: ["--busy-poll", String(BUSY_POLL_US)] })]);
    console.log(`lab build ${t1 - t0} ms, daemons ready ${Date.now() - t1} ms`);
  });

  afterAll(async () => {
    await stopEverything(cluster, lab);
  });

  it("every cross-node pod pair pings", async () => {
    const l = lab as Lab;
    expect(crossNodePairs(l)).toHaveLength(24);
    expect(await failingPairs(l)).toEqual([]);
  });

  it("a 50 MB TCP stream from a pod on n1 to a pod on n3 arrives byte-exact, without NAT", async () => {
    const l = lab as Lab;
    const src = l.node("n1").pods[0] as LabPod;
    const dst = l.node("n3").pods[1] as LabPod;
    const port = 5201;
    const t0 = Date.now();
    const receiver = startScript(l, dst, RECEIVER_SCRIPT, { host: dst.ip, port }, 45_000);
    const sender = startScript(l, src, SENDER_SCRIPT, { host: dst.ip, port, bytes: STREAM_BYTES, seed: 0x9e3779b9, deadlineMs: 10_000 }, 40_000);
    const [sent, received] = await Promise.all([sender.done, receiver.done]);
    const s = lastJson<{ sha256: string; bytes: number; reply: string }>(sent, `sender in ${src.name}`);
    const r = lastJson<{ sha256: string; bytes: number; remoteAddress: string }>(received, `receiver in ${dst.name}`);
    const ms = Date.now() - t0;
    console.log(`50 MiB ${src.name} → ${dst.name}: ${ms} ms (${((STREAM_BYTES * 8) / (ms / 1000) / 1e9).toFixed(2)} Gbit/s incl. start-up)`);
    expect(s.bytes).toBe(STREAM_BYTES);
    expect(r.bytes).toBe(STREAM_BYTES);
    expect(r.sha256).toBe(s.sha256);
    // Not all zeros (a stream of zeros would hide misplaced or duplicated segments).
    expect(s.sha256).not.toBe(createHash("sha256").update(Buffer.alloc(STREAM_BYTES)).digest("hex"));
    expect(r.remoteAddress).toBe(src.ip);
    expect(JSON.parse(s.reply)).toEqual(r);
  });

  it("bursts of UDP datagrams cross batched (UDP_SEGMENT runs, GSO_UDP_L4 TAP writes) intact and in order", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const src = l.node("n2").pods[0] as LabPod;
    const dst = l.node("n1").pods[1] as LabPod;
    const before = (await c.daemon("n1").status()).counters;
    const port = 5301;
    const count = 6000;
    const receiver = startScript(l, dst, UDP_RECEIVER_SCRIPT, { host: dst.ip, port, deadlineMs: 30_000 }, 40_000);
    await waitFor(() => receiver.stdout().includes("bound"), { timeoutMs: 10_000, intervalMs: 20, what: "the UDP receiver to bind" });
    const sender = startScript(l, src, UDP_SENDER_SCRIPT, { host: dst.ip, port, count }, 30_000);
    const [sent, got] = await Promise.all([sender.done, receiver.done]);
    const s = lastJson<{ sent: number }>(sent, `UDP sender in ${src.name}`);
    const r = lastJson<{ received: number; corrupt: number; outOfOrder: number }>(got, `UDP receiver in ${dst.name}`);
    const after = (await c.daemon("n1").status()).counters;
    const delta = (k: string): number => (after[k] ?? 0) - (before[k] ?? 0);
    expect(s.sent).toBe(count);
    expect(r.corrupt).toBe(0);
    expect(r.outOfOrder).toBe(0);
    // UDP may lose under load, but not much at this pace.
    expect(r.received).toBeGreaterThanOrEqual(count * 0.9);
    // The batching paths really ran: runs arrived as UDP_GRO reads, and merged frames went to the TAP.
    expect(delta("udp_rx_gro_runs")).toBeGreaterThan(0);
    expect(delta("tap_tx_super_frames")).toBeGreaterThan(0);
  });

  it("a node reaches a remote pod and back, from its TAP address", async () => {
    const l = lab as Lab;
    const n1 = l.node("n1");
    const pod = l.node("n2").pods[0] as LabPod;
    expect(await l.ping(n1, pod.ip, { count: 3 })).toBe(true);

    const port = 7007;
    const message = `hello from ${n1.name} through vxmesh\n`;
    const server = startScript(l, pod, ECHO_SERVER_SCRIPT, { host: pod.ip, port }, 20_000);
    const client = startScript(l, n1, ECHO_CLIENT_SCRIPT, { host: pod.ip, port, message, deadlineMs: 10_000 }, 15_000);
    const [c, s] = await Promise.all([client.done, server.done]);
    const echoed = lastJson<{ echo: string; localAddress: string }>(c, `echo client in ${n1.namespace}`);
    const seen = lastJson<{ remoteAddress: string; bytes: number }>(s, `echo server in ${pod.name}`);
    expect(echoed.echo).toBe(message);
    // The kernel picks the TAP's /32 (the subnet's network address) as the source, and the
    // pod sees it unchanged.
    expect(n1.subnetNetwork).toBe("10.244.1.0");
    expect(echoed.localAddress).toBe(n1.subnetNetwork);
    expect(seen.remoteAddress).toBe(n1.subnetNetwork);
    expect(seen.bytes).toBe(Buffer.byteLength(message));
  });

  it("captured underlay packets decode as VXLAN with VNI 1 on UDP 4789", async () => {
    const l = lab as Lab;
    const [n1, n2] = [l.node("n1"), l.node("n2")];
    const [a, b] = [n1.pods[1] as LabPod, n2.pods[0] as LabPod];
    const t0 = Date.now();
    const pkts = await captureVxlan(l, n2, a, b.ip, 4789, 6);
    const dump = pkts.map((p) => p.raw).join("\n");
    expect(pkts.length, dump).toBe(6);
    for (const p of pkts) {
      // The outer source port comes from the kernel's ephemeral range (as with its own
      // VXLAN), picked per inner flow, never the VXLAN port itself.
      expect(Number(p.udpSrc), dump).toBeGreaterThanOrEqual(32768);
      expect(Number(p.udpSrc), dump).toBeLessThanOrEqual(60999);
      expect(p.vni, dump).toBe("1");
      expect(p.udpDst, dump).toBe("4789");
      // I flag set, every reserved bit zero.
      expect(p.flags, dump).toBe("0x0800");
      expect([p.outerSrc, p.outerDst].sort(), dump).toEqual([n1.underlayIp, n2.underlayIp].sort());
      expect([p.innerSrc, p.innerDst].sort(), dump).toEqual([a.ip, b.ip].sort());
      // Outer and inner travel together: the datagram from n1 carries a's packet.
      expect(p.outerSrc === n1.underlayIp ? p.innerSrc : p.innerDst, dump).toBe(a.ip);
    }
    expect(pkts.some((p) => p.outerSrc === n1.underlayIp && p.icmpType === "8"), dump).toBe(true);
    expect(pkts.some((p) => p.outerSrc === n2.underlayIp && p.icmpType === "0"), dump).toBe(true);
  });

  it("the pod MTU holds end to end: MTU − 28 with DF crosses, one byte more does not", async () => {
    const l = lab as Lab;
    const a = l.node("n1").pods[0] as LabPod;
    const b = l.node("n3").pods[0] as LabPod;
    expect(a.mtu).toBe(1450);
    const podMtu = await l.exec(a, ["cat", `/sys/class/net/${a.ifName}/mtu`]);
    expect(Number(podMtu.stdout.trim())).toBe(a.mtu);
    const fits = a.mtu - 28;
    expect(await l.ping(a, b.ip, { count: 3, size: fits, dontFragment: true })).toBe(true);
    expect(await l.ping(b, a.ip, { count: 3, size: fits, dontFragment: true })).toBe(true);
    expect(await l.ping(a, b.ip, { count: 1, size: fits + 1, dontFragment: true })).toBe(false);
    // …and it fails locally, at the pod's own interface, not somewhere in the overlay.
    const r = await l.exec(a, ["ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", String(fits + 1), b.ip]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/message too long/i);
  });

  it("a route or neighbour of ours deleted behind the daemon's back is put back promptly", async () => {
    const l = lab as Lab;
    const n1 = l.node("n1");
    const n2 = l.node("n2");
    const routes = async (): Promise<string> => (await l.exec(n1, ["ip", "route", "show", "proto", "118"])).stdout;
    const neigh = async (): Promise<string> => (await l.exec(n1, ["ip", "neigh", "show", "dev", "vxmesh0", "nud", "permanent"])).stdout;
    expect(await routes()).toContain(n2.subnet);
    const t0 = Date.now();
    expect((await l.exec(n1, ["ip", "route", "del", n2.subnet])).code).toBe(0);
    expect((await l.exec(n1, ["ip", "neigh", "del", n2.subnetNetwork, "dev", "vxmesh0"])).code).toBe(0);
    // Well inside the 10 s periodic reconcile: the netlink event triggers the repair.
    await waitFor(async () => (await routes()).includes(n2.subnet) && (await neigh()).includes(n2.subnetNetwork),
      { timeoutMs: 5000, intervalMs: 50, what: "n1's daemon to restore its route and neighbour for n2" });
    console.log(`route + neighbour restored ${Date.now() - t0} ms after deletion`);
    expect(await l.ping(n1.pods[0] as LabPod, (n2.pods[0] as LabPod).ip, { count: 2 })).toBe(true);
  });

  it("with --busy-poll the forwarder finds traffic without sleeping; with --busy-poll 0, it sleeps", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const counters = async (node: string): Promise<Record<string, number>> => (await c.daemon(node).status()).counters;
    const [before1, before3] = [await counters("n1"), await counters("n3")];
    const [src, dst] = [l.node("n1").pods[0] as LabPod, l.node("n3").pods[0] as LabPod];
    // 200 echo requests 2 ms apart: the next frame reaches n3 well inside its window.
    const r = await l.exec(src, ["ping", "-n", "-q", "-c", "200", "-i", "0.002", "-W", "1", dst.ip]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const [after1, after3] = [await counters("n1"), await counters("n3")];
    const delta = (a: Record<string, number>, b: Record<string, number>, k: string): number => (a[k] ?? 0) - (b[k] ?? 0);
    expect(delta(after3, before3, "wakeups_busy_poll")).toBeGreaterThan(100);
    expect(delta(after1, before1, "wakeups_busy_poll")).toBe(0);
    expect(delta(after1, before1, "wakeups_sleep")).toBeGreaterThan(100);
  });

  it("no daemon counted a drop other than group destinations", async () => {
    const c = cluster as Cluster;
    const l = lab as Lab;
    const report: Record<string, Record<string, number>> = {};
    const bad: string[] = [];
    for (const node of l.nodes) {
      const status = await c.daemon(node.name).status();
      report[node.name] = status.counters;
      expect(status.vni).toBe(1);
      expect(status.vxlanPort).toBe(4789);
      for (const [name, value] of Object.entries(status.counters)) {
        if (name.startsWith("drop_") && name !== "drop_group_destination" && value !== 0) bad.push(`${node.name} ${name}=${value}`);
      }
      expect(status.counters["tap_tx_frames"], `${node.name} wrote nothing to its TAP`).toBeGreaterThan(0);
      expect(status.counters["udp_tx_datagrams"], `${node.name} sent nothing`).toBeGreaterThan(0);
    }
    expect(bad, `non-zero drop counters; all counters:\n${JSON.stringify(report, null, 1)}`).toEqual([]);
  });
});

describe("another VNI and port", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    lab = await Lab.build({ vni: 42, port: 8472, nodes: [{ overlay: "vxmesh", pods: 1 }, { overlay: "vxmesh", pods: 1 }] });
    cluster = new Cluster(lab);
    await cluster.startAll();
  });

  afterAll(async () => {
    await stopEverything(cluster, lab);
  });

  it("pods ping across, and the underlay carries VNI 42 on UDP 8472", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    for (const node of l.nodes) {
      expect(node).toMatchObject({ vni: 42, port: 8472 });
      expect(await c.daemon(node.name).status()).toMatchObject({ vni: 42, vxlanPort: 8472 });
    }
    expect(await failingPairs(l)).toEqual([]);

    const [n1, n2] = [l.node("n1"), l.node("n2")];
    const [a, b] = [n1.pods[0] as LabPod, n2.pods[0] as LabPod];
    const pkts = await captureVxlan(l, n1, a, b.ip, 8472, 4);
    const dump = pkts.map((p) => p.raw).join("\n");
    expect(pkts.length, dump).toBe(4);
    for (const p of pkts) {
      expect(p.vni, dump).toBe("42");
      expect(p.udpDst, dump).toBe("8472");
      expect(p.flags, dump).toBe("0x0800");
      expect([p.outerSrc, p.outerDst].sort(), dump).toEqual([n1.underlayIp, n2.underlayIp].sort());
      expect([p.innerSrc, p.innerDst].sort(), dump).toEqual([a.ip, b.ip].sort());
    }
  });
});

describe("a fast-path node and a plain node (--offload=false) as peers", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ overlay: "vxmesh", pods: 1 }, { overlay: "vxmesh", pods: 1 }] });
    cluster = new Cluster(lab);
    await cluster.start(lab.node("n1"));
    await cluster.start(lab.node("n2"), { extraArgs: ["--offload=false"] });
  });

  afterAll(async () => {
    await stopEverything(cluster, lab);
  });

  it("TCP streams both ways arrive byte-exact, and every segment on the wire is MTU-sized with a checksum tshark finds good", async () => {
    const l = lab as Lab;
    expect(await failingPairs(l)).toEqual([]);
    const [n1, n2] = [l.node("n1"), l.node("n2")];
    const [a, b] = [n1.pods[0] as LabPod, n2.pods[0] as LabPod];
    const bytes = 16 * 1024 * 1024;
    const cap = await l.startCapture(n1, { iface: n1.underlayIf, filter: "udp port 4789", count: 300, durationS: 30 });
    const streams = [[a, b, 5401], [b, a, 5402]] as const;
    const results = await Promise.all(streams.map(async ([from, to, port]) => {
      const receiver = startScript(l, to, RECEIVER_SCRIPT, { host: to.ip, port }, 45_000);
      const sender = startScript(l, from, SENDER_SCRIPT, { host: to.ip, port, bytes, seed: port, deadlineMs: 10_000 }, 40_000);
      const [sent, received] = await Promise.all([sender.done, receiver.done]);
      return {
        s: lastJson<{ sha256: string; bytes: number }>(sent, `sender in ${from.name}`),
        r: lastJson<{ sha256: string; bytes: number }>(received, `receiver in ${to.name}`),
      };
    }));
    await cap.stop();
    for (const { s, r } of results) {
      expect(r.bytes).toBe(bytes);
      expect(r.sha256).toBe(s.sha256);
    }
    // Outer checksums are left to the NIC (veth never finishes them), so only the inner ones count.
    const rows = await l.readCapture(cap.file, ["ip.len", "tcp.len", "tcp.checksum.status"], {
      decodeAs: ["udp.port==4789,vxlan"],
      preferences: ["tcp.check_checksum:TRUE"],
      displayFilter: "tcp",
    });
    const dump = rows.slice(0, 20).map((r) => r.join(" | ")).join("\n");
    expect(rows.length, dump).toBeGreaterThan(50);
    for (const [ipLens = "", , status = ""] of rows) {
      const inner = Number(ipLens.split(",")[1]);
      expect(inner, dump).toBeLessThanOrEqual(a.mtu);
      expect(status, dump).toBe("1");
    }
    // Data segments (not only ACKs) were among them.
    expect(rows.some(([, tcpLen = "0"]) => Number(tcpLen) > 1000), dump).toBe(true);
  });

  it.each(["n1", "n2"])("a TAP set down by hand on %s: the frames it refuses are dropped and counted, the daemon stays, traffic returns once it is up", async (name) => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const node = l.node(name);
    const other = l.nodes.find((n) => n !== node) as LabNode;
    const [here, there] = [node.pods[0] as LabPod, other.pods[0] as LabPod];
    const before = (await c.daemon(name).status()).counters["drop_tap_write_error"] ?? 0;
    await l.exec(node, ["ip", "link", "set", "vxmesh0", "down"]);
    try {
      // Frames for this node's pod reach its daemon, which cannot hand them to the TAP.
      expect(await l.ping(there, here.ip, { count: 3, timeoutMs: 500 })).toBe(false);
      await waitFor(async () => ((await c.daemon(name).status()).counters["drop_tap_write_error"] ?? 0) > before,
        { timeoutMs: 5_000, intervalMs: 50, what: `${name} to count the frames its TAP refused` });
      expect(c.daemon(name).running).toBe(true);
    } finally {
      await l.exec(node, ["ip", "link", "set", "vxmesh0", "up"]);
    }
    await waitFor(() => l.ping(there, here.ip, { count: 1, timeoutMs: 500 }),
      { timeoutMs: 15_000, intervalMs: 100, what: `traffic to ${here.name} once ${name}'s TAP is up again` });
  });
});
