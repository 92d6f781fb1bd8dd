// Egress and forwarding rules (--ip-masq, --forward-accept; issue 13 point 6) with real daemons in
// the network-namespace lab. Every node namespace has a FORWARD policy of DROP, as Docker sets it,
// and a foreign DROP-everything rule in FORWARD; a "world" namespace on the underlay (192.0.2.254)
// holds 203.0.113.10 and 198.51.100.10, which the nodes route to through it, and has no route to
// any pod. What each receiver saw is read by a UDP listener that prints the datagram's source.
//
//   n1 (nft)     pods n1p1, n1p2; kube-proxy-shaped rules: KUBE-MARK-MASQ for n1p2 → 198.51.100.10,
//                KUBE-POSTROUTING masquerading marked packets, loaded before the daemon starts
//   n2 (nft)     pod n2p1; a mangle rule marks n2p1 → 198.51.100.10 with 0x4000 (no kube-proxy)
//   n3 (legacy)  pod n3p1; kubelet's KUBE-KUBELET-CANARY in the legacy mangle table
//
// Checked: each node's rules land in the back end it uses and read back exactly as written;
// pods ping across nodes through the DROP policy; pod↔pod and node→pod keep their addresses;
// pod → world leaves with the node's underlay address; a packet kube-proxy marked is left to
// kube-proxy; rules deleted by hand are back within the reconcile period (10 s); a daemon
// restarted after kill -9 replaces its chains' content without a second jump; SIGTERM leaves
// both back ends byte-for-byte as they were before the daemon started. Then: --ip-masq=false
// (and --forward-accept=false) add nothing; iptables missing stops the start with a clear
// error; and daemons running as nobody with ambient capabilities (setpriv) re-create deleted
// rules after their capability drop, in nft and in legacy, and remove them at SIGTERM.
//
// Only namespaces the lab made are touched: `ip netns exec <ns> iptables-…` is per namespace.

import { execFile, execFileSync } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type DaemonProcess } from "../bench/cluster";
import { addPodNs, nsNameOf } from "../bench/cni-testkit";
import { Lab, execOk, listNetns, waitFor, type LabNode, type LabPod, type NsRef } from "../bench/lab";
import { CAP_NET_ADMIN, CAP_NET_RAW, readThreadCaps, threadsNotAt } from "../daemon/capabilities";
import { desiredChains, type OwnedChain } from "../control/iptables-rules";
import { parseSubnet, type Subnet } from "../encap/types";

const execFileP = promisify(execFile);

const WORLD_GW = "192.0.2.254";
const WORLD = "203.0.113.10";
const WORLD_MARKED = "198.51.100.10";
const NOBODY = 65534;
/** The daemon's reconcile period is 10 s: a repair must be seen within it, plus a margin for a slow machine. */
const REPAIR_DEADLINE_MS = 25_000;

type Backend = "nft" | "legacy";

// ---------------------------------------------------------------------------------------------
// Helpers

/** Receives one UDP datagram and prints its source address, or {timeout:true}. */
const RECEIVER = `
const dgram = require("node:dgram");
const { host, port, deadlineMs } = JSON.parse(process.argv[1]);
const s = dgram.createSocket("udp4");
s.on("message", (m, r) => { process.stdout.write(JSON.stringify({ address: r.address }) + "\\n", () => process.exit(0)); });
s.bind(port, host, () => process.stdout.write("bound\\n"));
setTimeout(() => { process.stdout.write(JSON.stringify({ timeout: true }) + "\\n", () => process.exit(0)); }, deadlineMs);
`;

/** Sends `count` datagrams of one flow, 100 ms apart (the first may wait for ARP). */
const SENDER = `
const dgram = require("node:dgram");
const { host, port, count } = JSON.parse(process.argv[1]);
const s = dgram.createSocket("udp4");
let n = 0;
const tick = () => s.send("probe", port, host, () => { if (++n >= count) s.close(); else setTimeout(tick, 100); });
tick();
`;

let portCounter = 40_000;

/** The source address a listener at `toIp` in `toNs` sees for UDP from `fromNs`; "none" when nothing arrived. */
async function sourceSeen(lab: Lab, fromNs: NsRef, toNs: NsRef, toIp: string): Promise<string> {
  const port = ++portCounter;
  const child = lab.spawn(toNs, [process.execPath, "-e", RECEIVER, JSON.stringify({ host: toIp, port, deadlineMs: 8000 })]);
  let out = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (d: string) => { out += d; });
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  let sender: ReturnType<Lab["spawn"]> | undefined;
  try {
    await waitFor(() => out.includes("bound") || child.exitCode !== null, { timeoutMs: 10_000, intervalMs: 20, what: `a UDP listener on ${toIp}:${port}` });
    // The sender keeps trying for up to 6 s; the listener exits at the first datagram (or its deadline).
    sender = lab.spawn(fromNs, [process.execPath, "-e", SENDER, JSON.stringify({ host: toIp, port, count: 60 })]);
    await exited;
  } finally {
    child.kill("SIGKILL");
    sender?.kill("SIGKILL");
  }
  const line = out.split("\n").find((l) => l.startsWith("{"));
  const got = line === undefined ? {} : JSON.parse(line) as { address?: string };
  return got.address ?? "none";
}

/** The world: a namespace on the underlay bridge with two addresses beyond every cluster network. */
async function addWorld(lab: Lab): Promise<string> {
  const ns = nsNameOf(await addPodNs(lab, "world"));
  await execFileP("ip", ["-n", lab.underlayNs, "link", "add", "vworld", "type", "veth", "peer", "name", "eth0", "netns", ns]);
  await execFileP("ip", ["-n", lab.underlayNs, "link", "set", "vworld", "master", "br0", "up"]);
  for (const cmd of [["link", "set", "lo", "up"], ["addr", "add", `${WORLD}/32`, "dev", "lo"], ["addr", "add", `${WORLD_MARKED}/32`, "dev", "lo"],
    ["addr", "add", `${WORLD_GW}/24`, "dev", "eth0"], ["link", "set", "eth0", "up"]]) {
    await execFileP("ip", ["-n", ns, ...cmd]);
  }
  for (const n of lab.nodes) {
    for (const dst of ["203.0.113.0/24", "198.51.100.0/24"]) await execFileP("ip", ["-n", n.namespace, "route", "add", dst, "via", WORLD_GW]);
  }
  return ns;
}

/** `iptables-<backend>-save` of a namespace without the timestamp comments, counters zeroed. */
async function saved(ns: NsRef, backend: Backend): Promise<string> {
  const r = await execOk(ns, [`iptables-${backend}-save`]);
  return r.stdout.split("\n").filter((l) => !l.startsWith("#")).map((l) => l.replace(/ \[\d+:\d+\]$/, " [0:0]")).join("\n");
}

/**
 * A save without tables that hold nothing: only built-in chains, policy ACCEPT, no rule. iptables
 * cannot delete a table, so the nat table vxmesh's first rule made stays after it is removed,
 * empty: it changes no packet.
 */
function withoutEmptyTables(save: string): string {
  return save.split(/(?=^\*)/m).filter((block) => {
    const lines = block.split("\n").filter((l) => l !== "");
    return !(lines[0]?.startsWith("*") === true && lines.slice(1).every((l) => l === "COMMIT" || /^:[A-Z]+ ACCEPT \[0:0\]$/.test(l)));
  }).join("");
}

function subnet(text: string): Subnet {
  const p = parseSubnet(text);
  if (!p.ok) throw new Error(p.error);
  return p.value;
}

/** What a static daemon on `node` wants: its subnet and every peer's, in the peers file's order. */
function wanted(lab: Lab, node: LabNode, o: { masquerade?: boolean; forwardAccept?: boolean } = {}): OwnedChain[] {
  const cidrs = [node.subnet, ...lab.peersFor(node).map((p) => p.subnet)].map(subnet);
  return desiredChains({ masquerade: o.masquerade ?? true, forwardAccept: o.forwardAccept ?? true, clusterCidrs: cidrs });
}

/** How a save differs from `want` (our chains' rules, one jump each, FORWARD's before any DROP/REJECT); undefined when it does not. */
function mismatch(save: string, want: readonly OwnedChain[]): string | undefined {
  const lines = save.split("\n");
  for (const c of want) {
    const rules = lines.filter((l) => l.startsWith(`-A ${c.name} `)).map((l) => l.slice(`-A ${c.name} `.length));
    if (JSON.stringify(rules) !== JSON.stringify(c.rules)) return `${c.name} holds ${JSON.stringify(rules)}`;
    if (!lines.includes(`:${c.name} - [0:0]`)) return `${c.name} is not declared`;
    const hook = lines.filter((l) => l.startsWith(`-A ${c.hook} `));
    const jumps = hook.filter((l) => l.endsWith(`-j ${c.name}`));
    if (jumps.length !== 1 || jumps[0] !== `-A ${c.hook} ${c.jump}`) return `${c.hook} jumps: ${JSON.stringify(jumps)}`;
    if (c.placement === "first" && hook[0] !== jumps[0]) return `${c.hook}'s first rule is ${hook[0] ?? "none"}`;
  }
  return undefined;
}

function holdsOurs(save: string): boolean {
  return /VXMESH-/.test(save);
}

async function waitForLog(d: DaemonProcess, text: string): Promise<void> {
  await waitFor(() => d.log.includes(text) || !d.running, { timeoutMs: 20_000, intervalMs: 50, what: `"${text}" in the log of the daemon on ${d.node.name}` });
  if (!d.log.includes(text)) throw new Error(`the daemon on ${d.node.name} exited before logging "${text}":\n${d.log}`);
}

/** The daemon's log line with this message, parsed. */
function logLine(d: DaemonProcess, msg: string): Record<string, unknown> {
  const line = d.log.split("\n").find((l) => l.includes(`"msg":"${msg}"`));
  if (line === undefined) throw new Error(`no "${msg}" in the log of ${d.node.name}:\n${d.log}`);
  return JSON.parse(line) as Record<string, unknown>;
}

async function pingsAcross(lab: Lab, pairs: [LabPod, LabPod][]): Promise<void> {
  for (const [a, b] of pairs) {
    // The first packets may race the daemons' programming: wait for a reply, then ask for three.
    await waitFor(() => lab.ping(a, b.ip, { count: 1, timeoutMs: 1000 }), { timeoutMs: 20_000, intervalMs: 200, what: `${a.name} → ${b.name} (${b.ip})` });
    expect(await lab.ping(a, b.ip, { count: 3 }), `${a.name} → ${b.name} (${b.ip})`).toBe(true);
  }
}

/** Everything a describe made goes, also when it failed half-way. */
async function teardown(cluster: Cluster | undefined, lab: Lab | undefined): Promise<void> {
  await cluster?.stopAll().catch(() => undefined);
  const prefix = lab?.prefix;
  await lab?.teardown();
  if (prefix !== undefined) expect((await listNetns()).filter((n) => n.startsWith(prefix))).toEqual([]);
}

// ---------------------------------------------------------------------------------------------

describe("root daemons: nft and legacy nodes, FORWARD policy DROP, kube-proxy's marks", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;
  let world = "";
  const before = new Map<string, { nft: string; legacy: string }>();
  const backendOf: Record<string, Backend> = { n1: "nft", n2: "nft", n3: "legacy" };
  const pod = (name: string): LabPod => {
    const p = (lab as Lab).pods.find((x) => x.name === name);
    if (p === undefined) throw new Error(`no pod ${name}`);
    return p;
  };

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ pods: 2 }, { pods: 1 }, { pods: 1 }] });
    const l = lab;
    world = await addWorld(l);
    for (const n of l.nodes) {
      const ipt = `iptables-${backendOf[n.name] as Backend}`;
      await execOk(n, [ipt, "-P", "FORWARD", "DROP"]);
      await execOk(n, [ipt, "-A", "FORWARD", "-m", "comment", "--comment", "someone else: drop the rest", "-j", "DROP"]);
      await execOk(n, [ipt, "-t", "nat", "-A", "POSTROUTING", "-d", "198.51.100.99/32", "-m", "comment", "--comment", "someone else", "-j", "RETURN"]);
    }
    // n1: kube-proxy's chain shape (iptables mode) for one flow, loaded before vxmesh starts.
    const n1p2 = pod("n1p2").ip;
    await execOk(l.node("n1"), ["iptables-nft-restore", "--noflush"], {
      input: [
        "*nat", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]",
        "-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        `-A PREROUTING -s ${n1p2}/32 -d ${WORLD_MARKED}/32 -j KUBE-MARK-MASQ`,
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        "COMMIT", "",
      ].join("\n"),
    });
    // n2: a mark alone, nobody to masquerade on it.
    await execOk(l.node("n2"), ["iptables-nft", "-t", "mangle", "-A", "PREROUTING", "-s", `${pod("n2p1").ip}/32`, "-d", `${WORLD_MARKED}/32`, "-j", "MARK", "--set-xmark", "0x4000/0x4000"]);
    // n3: kubelet's canary says this node uses the legacy back end.
    await execOk(l.node("n3"), ["iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"]);
    for (const n of l.nodes) before.set(n.name, { nft: await saved(n, "nft"), legacy: await saved(n, "legacy") });
    cluster = new Cluster(l);
    await cluster.startAll();
  }, 120_000);

  afterAll(async () => {
    await teardown(cluster, lab);
  }, 60_000);

  it("each node's rules are in the back end it uses (kubelet's canary: legacy), exactly as wanted, and read back as written", async () => {
    const l = lab as Lab;
    for (const n of l.nodes) {
      const backend = backendOf[n.name] as Backend;
      const other: Backend = backend === "nft" ? "legacy" : "nft";
      expect(mismatch(await saved(n, backend), wanted(l, n)), `${n.name} (${backend})`).toBeUndefined();
      expect(await saved(n, other), `${n.name}: the ${other} back end is untouched`).toBe(before.get(n.name)?.[other]);
      const d = (cluster as Cluster).daemon(n.name);
      expect(logLine(d, "iptables rules in place")).toMatchObject({ backend, masquerade: true, forwardAccept: true });
      expect(d.log).not.toMatch(/do not read back as written/);
    }
    expect(logLine((cluster as Cluster).daemon("n3"), "iptables rules in place")["why"]).toBe("kubelet's KUBE-KUBELET-CANARY in mangle (iptables-legacy-save)");
  });

  it("pods ping across nodes through a FORWARD policy of DROP and someone's DROP rule", async () => {
    await pingsAcross(lab as Lab, [[pod("n1p1"), pod("n2p1")], [pod("n2p1"), pod("n1p1")], [pod("n1p1"), pod("n3p1")], [pod("n3p1"), pod("n2p1")]]);
  }, 90_000);

  it("pod ↔ pod and node → pod keep their addresses (nft and legacy nodes)", async () => {
    const l = lab as Lab;
    expect(await sourceSeen(l, pod("n1p1"), pod("n2p1"), pod("n2p1").ip)).toBe(pod("n1p1").ip);
    expect(await sourceSeen(l, pod("n3p1"), pod("n1p1"), pod("n1p1").ip)).toBe(pod("n3p1").ip);
    expect(await sourceSeen(l, pod("n2p1"), pod("n3p1"), pod("n3p1").ip)).toBe(pod("n2p1").ip);
    // The node reaches a remote pod from its TAP address, its subnet's network address.
    expect(await sourceSeen(l, l.node("n1"), pod("n2p1"), pod("n2p1").ip)).toBe(l.node("n1").subnetNetwork);
  }, 90_000);

  it("pod → the world leaves with the node's underlay address, and the answer finds its way back", async () => {
    const l = lab as Lab;
    expect(await sourceSeen(l, pod("n1p1"), world, WORLD)).toBe(l.node("n1").underlayIp);
    expect(await sourceSeen(l, pod("n3p1"), world, WORLD)).toBe(l.node("n3").underlayIp);
    expect(await l.ping(pod("n2p1"), WORLD, { count: 3 })).toBe(true);
  }, 60_000);

  it("a packet kube-proxy marked (0x4000) is left alone by vxmesh's chain; kube-proxy's KUBE-POSTROUTING masquerades it", async () => {
    const l = lab as Lab;
    // n2: marked, and no kube-proxy chain to masquerade on the mark: it leaves with the pod's own address.
    expect(await sourceSeen(l, pod("n2p1"), world, WORLD_MARKED)).toBe(pod("n2p1").ip);
    // n1: KUBE-MARK-MASQ marks it, KUBE-POSTROUTING (restored before vxmesh started) masquerades it.
    const masqCount = async (): Promise<number> => {
      const out = (await execOk(l.node("n1"), ["iptables-nft-save", "-c", "-t", "nat"])).stdout;
      const line = out.split("\n").find((x) => x.includes("-A KUBE-POSTROUTING") && x.includes("-j MASQUERADE"));
      return Number(/^\[(\d+):/.exec(line ?? "")?.[1] ?? "0");
    };
    const countBefore = await masqCount();
    expect(await sourceSeen(l, pod("n1p2"), world, WORLD_MARKED)).toBe(l.node("n1").underlayIp);
    expect(await masqCount()).toBeGreaterThan(countBefore);
    // kube-proxy's chains are as kube-proxy wrote them.
    const kube = (s: string): string[] => s.split("\n").filter((x) => /KUBE-/.test(x) && !/VXMESH-/.test(x));
    expect(kube(await saved(l.node("n1"), "nft"))).toEqual(kube(before.get("n1")?.nft ?? ""));
  }, 60_000);

  it("rules deleted by hand are back within the reconcile period: a flushed chain, a deleted jump, a duplicated jump, a deleted chain", async () => {
    const l = lab as Lab;
    const n1 = l.node("n1");
    const n3 = l.node("n3");
    const [, fwd] = wanted(l, n1) as [OwnedChain, OwnedChain];
    const [nat3] = wanted(l, n3) as [OwnedChain, OwnedChain];
    await execOk(n1, ["iptables-nft", "-t", "nat", "-F", "VXMESH-POSTROUTING"]);
    await execOk(n1, ["sh", "-c", `iptables-nft -D FORWARD ${fwd.jump}`]);
    await execOk(n1, ["sh", "-c", `iptables-nft -t nat -I POSTROUTING 1 ${nat3.jump}`]);
    await execOk(n3, ["sh", "-c", `iptables-legacy -D FORWARD ${fwd.jump} && iptables-legacy -F VXMESH-FORWARD && iptables-legacy -X VXMESH-FORWARD`]);
    expect(mismatch(await saved(n1, "nft"), wanted(l, n1))).toBeDefined();
    expect(mismatch(await saved(n3, "legacy"), wanted(l, n3))).toBeDefined();
    const t0 = Date.now();
    await waitFor(async () => mismatch(await saved(n1, "nft"), wanted(l, n1)) === undefined && mismatch(await saved(n3, "legacy"), wanted(l, n3)) === undefined,
      { timeoutMs: REPAIR_DEADLINE_MS, intervalMs: 250, what: "the rules deleted by hand on n1 (nft) and n3 (legacy) to be back" });
    expect(Date.now() - t0).toBeLessThan(REPAIR_DEADLINE_MS);
    for (const name of ["n1", "n3"]) await waitForLog((cluster as Cluster).daemon(name), "iptables rules had drifted from what vxmesh owns; repaired");
    await pingsAcross(l, [[pod("n1p1"), pod("n3p1")]]);
  }, 60_000);

  it("a daemon restarted after kill -9 finds its old chains and replaces their content; the jump is never doubled", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const n2 = l.node("n2");
    const old = c.daemon("n2");
    await old.kill("SIGKILL");
    // Left behind by the killed daemon: its chains and jumps (still as wanted) ...
    expect(mismatch(await saved(n2, "nft"), wanted(l, n2))).toBeUndefined();
    // ... and a stale rule, as an older version might have had.
    await execOk(n2, ["iptables-nft", "-t", "nat", "-A", "VXMESH-POSTROUTING", "-j", "ACCEPT"]);
    await c.start(n2);
    expect(mismatch(await saved(n2, "nft"), wanted(l, n2))).toBeUndefined();
    const natRules = (wanted(l, n2)[0] as OwnedChain).rules.length;
    expect(logLine(c.daemon("n2"), "iptables rules in place")["changes"]).toEqual([`nat VXMESH-POSTROUTING: ${natRules + 1} rules replaced by ${natRules}`]);
    await pingsAcross(l, [[pod("n2p1"), pod("n1p1")]]);
  }, 60_000);

  it("SIGTERM removes vxmesh's chains and jumps; both back ends are byte-for-byte as before the daemon started", async () => {
    const l = lab as Lab;
    for (const n of l.nodes) {
      const d = (cluster as Cluster).daemon(n.name);
      expect(await d.stop(10_000), `${n.name} exit status`).toBe(0);
      expect(logLine(d, "iptables rules removed")["changes"]).toHaveLength(4);
      for (const backend of ["nft", "legacy"] as const) {
        expect(await saved(n, backend), `${n.name} ${backend}`).toBe(before.get(n.name)?.[backend]);
      }
    }
  }, 60_000);
});

describe("--ip-masq=false, --forward-accept=false, and iptables missing", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;
  let world = "";
  const before = new Map<string, string>();
  /** Runs the daemon with /usr/sbin (where Debian's iptables lives; /sbin links to it) empty, in its own mount namespace. */
  const noIptables = ["sh", "-c", "mount -t tmpfs -o size=1m tmpfs /usr/sbin && mount -t tmpfs -o size=1m tmpfs /usr/local/sbin && exec \"$@\"", "sh"];

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ pods: 1 }, { pods: 1 }, { pods: 1 }] });
    world = await addWorld(lab);
    for (const n of lab.nodes) before.set(n.name, await saved(n, "nft"));
    cluster = new Cluster(lab);
    await cluster.start(lab.node("n1"), { extraArgs: ["--ip-masq=false"] });
    await cluster.start(lab.node("n2"), { extraArgs: ["--ip-masq=false", "--forward-accept=false"] });
  }, 120_000);

  afterAll(async () => {
    await teardown(cluster, lab);
  }, 60_000);

  it("--ip-masq=false: no NAT at all (not even a nat table); FORWARD still accepts pod traffic", async () => {
    const l = lab as Lab;
    const n1 = l.node("n1");
    const now = await saved(n1, "nft");
    expect(before.get("n1")).toBe("");
    expect(now).not.toMatch(/\*nat/);
    expect(mismatch(now, wanted(l, n1, { masquerade: false }))).toBeUndefined();
    expect(await saved(n1, "legacy")).toBe("");
    // Without NAT the world sees the pod itself, and has no way back to it.
    expect(await sourceSeen(l, n1.pods[0] as LabPod, world, WORLD)).toBe((n1.pods[0] as LabPod).ip);
    expect(await l.ping(n1.pods[0] as LabPod, WORLD, { count: 2 })).toBe(false);
  }, 60_000);

  it("--ip-masq=false --forward-accept=false: nothing is added in either back end", async () => {
    const l = lab as Lab;
    const n2 = l.node("n2");
    expect(await saved(n2, "nft")).toBe(before.get("n2"));
    expect(await saved(n2, "legacy")).toBe("");
    expect((cluster as Cluster).daemon("n2").log).not.toMatch(/iptables rules in place/);
    await pingsAcross(l, [[n2.pods[0] as LabPod, l.node("n1").pods[0] as LabPod]]);
  }, 60_000);

  it("a start that fails after the rules went in (the metrics port taken) removes them again", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const n3 = l.node("n3");
    const holder = l.spawn(n3, [process.execPath, "-e", "require('node:net').createServer().listen(9464, '127.0.0.1', () => console.log('listening'))"]);
    let out = "";
    holder.stdout?.setEncoding("utf8");
    holder.stdout?.on("data", (d: string) => { out += d; });
    try {
      await waitFor(() => out.includes("listening"), { timeoutMs: 10_000, what: "a listener on 127.0.0.1:9464 in n3" });
      await expect(c.start(n3)).rejects.toThrow(/exited/);
      const d = c.daemon("n3");
      expect(await d.exited).toBe(1);
      expect(d.log).toContain("--metrics-addr 127.0.0.1:9464: already in use");
      expect(logLine(d, "iptables rules in place")).toMatchObject({ backend: "nft" });
      expect(logLine(d, "iptables rules removed")["changes"]).toHaveLength(4);
      expect(withoutEmptyTables(await saved(n3, "nft"))).toBe(withoutEmptyTables(before.get("n3") ?? ""));
    } finally {
      holder.kill("SIGKILL");
    }
  }, 60_000);

  it("iptables missing: the start stops with an error naming the Debian package and --ip-masq=false, and leaves nothing behind", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const n3 = l.node("n3");
    await expect(c.start(n3, { launcher: noIptables })).rejects.toThrow(/exited/);
    const d = c.daemon("n3");
    expect(await d.exited).toBe(1);
    expect(d.log).toContain("--ip-masq and --forward-accept (both on by default) need iptables: neither iptables-nft-save/-restore nor iptables-legacy-save/-restore is installed");
    expect(d.log).toContain("Install the Debian package iptables (apt-get install iptables), or start with --ip-masq=false --forward-accept=false");
    expect((await l.exec(n3, ["ip", "link", "show", "vxmesh0"])).code).not.toBe(0);
    expect(holdsOurs(await saved(n3, "nft"))).toBe(false);
    // Both off, iptables is never needed.
    await c.start(n3, { launcher: noIptables, extraArgs: ["--ip-masq=false", "--forward-accept=false"] });
    expect(await c.daemon("n3").stop(10_000)).toBe(0);
  }, 60_000);
});

describe("daemons as nobody with ambient capabilities (setpriv) keep their rules after the capability drop", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;
  const before = new Map<string, { nft: string; legacy: string }>();
  const backendOf: Record<string, Backend> = { n1: "nft", n2: "legacy" };
  // A non-root daemon cannot list the legacy tables (/proc/net/ip_tables_names is root's), so
  // auto cannot see kubelet's canary there: a legacy node is named.
  const extraArgs: Record<string, string[]> = { n1: [], n2: ["--iptables-backend", "legacy"] };

  /** As test/least-privilege.test.ts: a 0666 tun node bound over /dev/net/tun in the daemon's mount namespace, then setpriv. */
  const launcher = (tunNode: string): string[] => [
    "sh", "-c", "mount --bind \"$0\" /dev/net/tun && exec \"$@\"", tunNode,
    "setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups",
    "--inh-caps=-all,+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw", "--bounding-set=-all,+net_admin,+net_raw",
  ];

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ pods: 1 }, { pods: 1 }] });
    const l = lab;
    const tunNode = join(l.workDir(), "tun");
    execFileSync("mknod", ["-m", "666", tunNode, "c", "10", "200"]);
    await execOk(l.node("n2"), ["iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"]);
    for (const n of l.nodes) {
      await execOk(n, [`iptables-${backendOf[n.name] as Backend}`, "-P", "FORWARD", "DROP"]);
      before.set(n.name, { nft: await saved(n, "nft"), legacy: await saved(n, "legacy") });
    }
    cluster = new Cluster(l);
    for (const n of l.nodes) await cluster.start(n, { launcher: launcher(tunNode), dirOwner: { uid: NOBODY, gid: NOBODY }, extraArgs: extraArgs[n.name] ?? [] });
    for (const d of cluster.daemons.values()) await waitForLog(d, "capabilities dropped");
  }, 120_000);

  afterAll(async () => {
    await teardown(cluster, lab);
  }, 60_000);

  it("keep only what iptables needs, also inheritable and ambient: net_admin for nft, net_admin and net_raw for legacy", () => {
    const c = cluster as Cluster;
    const n1 = c.daemon("n1");
    const n2 = c.daemon("n2");
    const pid = (d: DaemonProcess): number => d.child.pid as number;
    const legacy = CAP_NET_ADMIN | CAP_NET_RAW;
    // Without CAP_SETPCAP the bounding set stays as setpriv gave it.
    expect(threadsNotAt(readThreadCaps(pid(n1)), { effective: CAP_NET_ADMIN, permitted: CAP_NET_ADMIN, bounding: legacy, ambient: CAP_NET_ADMIN })).toEqual([]);
    expect(threadsNotAt(readThreadCaps(pid(n2)), { effective: legacy, permitted: legacy, bounding: legacy, ambient: legacy })).toEqual([]);
    expect(logLine(n1, "capabilities dropped")).toMatchObject({ kept: ["net_admin"], ambient: ["net_admin"] });
    expect(logLine(n2, "capabilities dropped")).toMatchObject({ kept: ["net_admin", "net_raw"], ambient: ["net_admin", "net_raw"] });
    // nobody cannot open root's /run/xtables.lock: legacy iptables runs with a lock in the run dir, and says so.
    expect(n2.log).toMatch(/cannot open the xtables lock/);
    expect(logLine(n2, "iptables rules in place")).toMatchObject({ backend: "legacy" });
    // auto, as nobody: nft, and the operator is told the legacy tables could not be read.
    expect(logLine(n1, "iptables rules in place")).toMatchObject({ backend: "nft" });
    expect(n1.log).toMatch(/could not read the legacy rules to choose a back end; if this node's rules are in iptables-legacy, set --iptables-backend legacy/);
  });

  it("pods ping across the FORWARD DROP policy; a deleted rule and a deleted jump come back within the reconcile period", async () => {
    const l = lab as Lab;
    const [a, b] = [l.node("n1").pods[0] as LabPod, l.node("n2").pods[0] as LabPod];
    await pingsAcross(l, [[a, b], [b, a]]);
    const [nat] = wanted(l, l.node("n1")) as [OwnedChain, OwnedChain];
    await execOk(l.node("n1"), ["sh", "-c", `iptables-nft -t nat -D POSTROUTING ${nat.jump} && iptables-nft -D VXMESH-FORWARD 1`]);
    await execOk(l.node("n2"), ["sh", "-c", "iptables-legacy -t nat -F VXMESH-POSTROUTING && iptables-legacy -D FORWARD 1"]);
    await waitFor(async () => mismatch(await saved(l.node("n1"), "nft"), wanted(l, l.node("n1"))) === undefined &&
      mismatch(await saved(l.node("n2"), "legacy"), wanted(l, l.node("n2"))) === undefined,
    { timeoutMs: REPAIR_DEADLINE_MS, intervalMs: 250, what: "the unprivileged daemons to restore their rules" });
    for (const d of (cluster as Cluster).daemons.values()) expect(d.log).not.toMatch(/iptables re-check failed/);
    await pingsAcross(l, [[a, b]]);
  }, 60_000);

  it("SIGTERM (as nobody, after the drop) removes the chains and jumps; nothing else changed", async () => {
    const l = lab as Lab;
    for (const n of l.nodes) {
      const d = (cluster as Cluster).daemon(n.name);
      expect(await d.stop(10_000)).toBe(0);
      expect(d.log).not.toMatch(/removing the iptables rules failed/);
      for (const backend of ["nft", "legacy"] as const) {
        expect(withoutEmptyTables(await saved(n, backend)), `${n.name} ${backend}`).toBe(withoutEmptyTables(before.get(n.name)?.[backend] ?? ""));
      }
      expect(holdsOurs(await saved(n, backendOf[n.name] as Backend))).toBe(false);
    }
  }, 60_000);
});
