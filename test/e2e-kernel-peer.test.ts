// End to end: a node running the kernel's own VXLAN device (programmed by the lab exactly as
// docs/DESIGN.md §1 draws it) and a node running a real `vxmesh daemon` are peers. The kernel is an
// independent implementation of the wire format, so traffic flowing both ways proves that what
// vxmesh sends decodes in the kernel and what the kernel sends decodes in vxmesh.

import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { Lab, waitFor } from "../bench/lab";
import type { LabPod } from "../bench/lab";
import { Cluster } from "../bench/cluster";

const TRANSFER_BYTES = 4 * 1024 * 1024;
const TCP_PORT = 5201;


/**
 * Receiver: listens on HOST:PORT, takes one connection, hashes everything it reads and prints
 * {"bytes":N,"sha256":"…"} when the sender closes. Prints "listening" once bound.
 */
const RECEIVER_JS = `
const net = require("node:net");
const crypto = require("node:crypto");
const [host, port] = process.argv.slice(1);
const server = net.createServer((conn) => {
  server.close();
  const hash = crypto.createHash("sha256");
  let bytes = 0;
  conn.on("data", (d) => { bytes += d.length; hash.update(d); });
  conn.on("end", () => {
    process.stdout.write(JSON.stringify({ bytes, sha256: hash.digest("hex") }) + "\\n");
    conn.end();
  });
  conn.on("error", (e) => { process.stderr.write("receiver: " + e.message + "\\n"); process.exit(3); });
});
server.listen(Number(port), host, () => process.stdout.write("listening\\n"));
setTimeout(() => { process.stderr.write("receiver: no complete transfer within 25 s\\n"); process.exit(4); }, 25000).unref();
`;

/**
 * Sender: connects to HOST:PORT, retrying refused connects until a deadline (the receiver may
 * not be listening yet), sends BYTES of random data and prints {"bytes","sha256","attempts"}.
 */
const SENDER_JS = `
const net = require("node:net");
const crypto = require("node:crypto");
const [host, port, total, deadlineMs] = process.argv.slice(1);
const size = Number(total);
const data = crypto.randomBytes(size);
const sha256 = crypto.createHash("sha256").update(data).digest("hex");
const deadline = Date.now() + Number(deadlineMs);
let attempts = 0;
function attempt() {
  attempts++;
  const sock = net.connect({ host, port: Number(port) });
  sock.once("error", (e) => {
    sock.destroy();
    if (Date.now() < deadline && (e.code === "ECONNREFUSED" || e.code === "EHOSTUNREACH" || e.code === "ETIMEDOUT")) {
      setTimeout(attempt, 50);
    } else {
      process.stderr.write("sender: " + e.code + " " + e.message + " after " + attempts + " attempts\\n");
      process.exit(3);
    }
  });
  sock.once("connect", () => {
    sock.removeAllListeners("error");
    sock.on("error", (e) => { process.stderr.write("sender: " + e.message + "\\n"); process.exit(3); });
    for (let off = 0; off < size; off += 65536) sock.write(data.subarray(off, Math.min(size, off + 65536)));
    sock.end();
    sock.resume();
    sock.on("close", () => process.stdout.write(JSON.stringify({ bytes: size, sha256, attempts }) + "\\n"));
  });
}
attempt();
`;

interface TransferResult {
  sent: { bytes: number; sha256: string; attempts: number };
  received: { bytes: number; sha256: string };
  ms: number;
}

/** Sends TRANSFER_BYTES over TCP from pod `from` to pod `to` and returns both sides' hashes. */
async function tcpTransfer(lab: Lab, from: LabPod, to: LabPod): Promise<TransferResult> {
  const t0 = Date.now();
  const receiver = lab.spawn(to, [process.execPath, "-e", RECEIVER_JS, to.ip, String(TCP_PORT)]);
  let out = "";
  let err = "";
  receiver.stdout?.setEncoding("utf8").on("data", (c: string) => (out += c));
  receiver.stderr?.setEncoding("utf8").on("data", (c: string) => (err += c));
  const receiverExit = new Promise<number | null>((resolve) => receiver.once("exit", (code) => resolve(code)));
  try {
    const sender = await lab.exec(from, [process.execPath, "-e", SENDER_JS, to.ip, String(TCP_PORT), String(TRANSFER_BYTES), "15000"], { timeoutMs: 25_000 });
    expect(sender.code, `sender ${from.name} → ${to.name}: ${sender.stderr}`).toBe(0);
    const code = await receiverExit;
    expect(code, `receiver on ${to.name}: ${err}`).toBe(0);
    const lines = out.split("\n").filter((l) => l.startsWith("{"));
    expect(lines, `receiver output: ${out}`).toHaveLength(1);
    return {
      sent: JSON.parse(sender.stdout.trim()) as TransferResult["sent"],
      received: JSON.parse(lines[0] as string) as TransferResult["received"],
      ms: Date.now() - t0,
    };
  } finally {
    if (receiver.exitCode === null && receiver.signalCode === null) receiver.kill("SIGKILL");
  }
}

describe("e2e: a kernel-VXLAN node and a vxmesh node are peers", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    const t0 = Date.now();
    lab = await Lab.build({ nodes: [{ overlay: "kernel", pods: 2 }, { overlay: "vxmesh", pods: 2 }] });
    await lab.programPeers("n1", lab.peersFor("n1"));
    cluster = new Cluster(lab);
    await cluster.startAll();
    console.log(`lab + kernel peers + daemon ready: ${Date.now() - t0} ms`);
  });

  afterAll(async () => {
    try {
      await cluster?.stopAll();
    } finally {
      await lab?.teardown();
    }
  });

  it("the daemon on n2 knows n1 as its only peer", async () => {
    const l = lab as Lab;
    const status = await (cluster as Cluster).daemon("n2").status();
    expect(status).toMatchObject({ node: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", vni: 1, vxlanPort: 4789, tap: "vxmesh0", mtu: 1450 });
    expect(status.peers).toEqual([{ name: "n1", underlayIp: "192.0.2.11", subnet: "10.244.1.0/24", vtepMac: l.node("n1").vtepMac, path: "vxlan", traffic: expect.any(Object) }]);
  });

  it("every pod on n1 pings every pod on n2, and back", async () => {
    const l = lab as Lab;
    const t0 = Date.now();
    const pairs: [LabPod, LabPod][] = [];
    for (const a of l.node("n1").pods) for (const b of l.node("n2").pods) pairs.push([a, b], [b, a]);
    expect(pairs).toHaveLength(8);
    const results = await Promise.all(pairs.map(async ([a, b]) => {
      const r = await l.exec(a, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", b.ip], { timeoutMs: 15_000 });
      const m = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
      return { from: a.name, to: b.name, code: r.code, transmitted: Number(m?.[1] ?? -1), received: Number(m?.[2] ?? -1), out: r.stdout };
    }));
    console.log(`8 pod pairs × 3 pings: ${Date.now() - t0} ms`);
    for (const r of results) {
      expect(r, `${r.from} → ${r.to}: ${r.out}`).toMatchObject({ code: 0, transmitted: 3, received: 3 });
    }
    // Full overlay MTU with DF in both directions: 1450 − 28 = 1422 bytes of ICMP payload.
    const [a, b] = [l.node("n1").pods[0]!, l.node("n2").pods[1]!];
    expect(await l.ping(a, b.ip, { count: 2, size: 1422, dontFragment: true, timeoutMs: 2000 })).toBe(true);
    expect(await l.ping(b, a.ip, { count: 2, size: 1422, dontFragment: true, timeoutMs: 2000 })).toBe(true);
  });

  it(`a ${TRANSFER_BYTES / 1024 / 1024} MiB TCP transfer arrives intact from the kernel node to the vxmesh node`, async () => {
    const l = lab as Lab;
    const r = await tcpTransfer(l, l.node("n1").pods[0]!, l.node("n2").pods[0]!);
    console.log(`n1p1 → n2p1: ${r.received.bytes} bytes in ${r.ms} ms (connect attempts ${r.sent.attempts}), sha256 ${r.received.sha256}`);
    expect(r.received.bytes).toBe(TRANSFER_BYTES);
    expect(r.received.sha256).toBe(r.sent.sha256);
  });

  it(`a ${TRANSFER_BYTES / 1024 / 1024} MiB TCP transfer arrives intact from the vxmesh node to the kernel node`, async () => {
    const l = lab as Lab;
    const r = await tcpTransfer(l, l.node("n2").pods[1]!, l.node("n1").pods[1]!);
    console.log(`n2p2 → n1p2: ${r.received.bytes} bytes in ${r.ms} ms (connect attempts ${r.sent.attempts}), sha256 ${r.received.sha256}`);
    expect(r.received.bytes).toBe(TRANSFER_BYTES);
    expect(r.received.sha256).toBe(r.sent.sha256);
  });

  it("the vxmesh daemon decapsulated the kernel's datagrams and dropped nothing but group-destined TAP frames", async () => {
    const status = await (cluster as Cluster).daemon("n2").status();
    const c = status.counters;
    console.log(`n2 counters: ${JSON.stringify(Object.fromEntries(Object.entries(c).filter(([, v]) => v !== 0)))}`);
    expect(c["udp_rx_datagrams"]).toBeGreaterThan(0);
    expect(c["tap_tx_frames"]).toBeGreaterThan(0);
    expect(c["tap_rx_frames"]).toBeGreaterThan(0);
    expect(c["udp_tx_datagrams"]).toBeGreaterThan(0);
    // Two 4 MiB transfers at most 1450-byte frames: thousands of datagrams each way.
    expect(c["udp_rx_bytes"]).toBeGreaterThan(TRANSFER_BYTES);
    expect(c["udp_tx_bytes"]).toBeGreaterThan(TRANSFER_BYTES);
    const drops = Object.entries(c).filter(([k, v]) => k.startsWith("drop_") && k !== "drop_group_destination" && v !== 0);
    expect(Object.fromEntries(drops)).toEqual({});
    expect(Object.keys(c)).toContain("drop_group_destination");
    expect((cluster as Cluster).daemon("n2").running).toBe(true);
  });
});
