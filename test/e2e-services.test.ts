// Kubernetes services through kube-proxy's iptables mode, across the overlay (issue 13, point 5).
//
// Two lab nodes, each with a real vxmesh daemon (static peers, --service-cidr 10.96.0.0/12);
// pods wired only by vxmesh-cni through the daemon's own socket, so the pod bridge and its
// hairpin ports are the plugin's; in every node namespace the rules kube-proxy would write
// (bench/kube-proxy-rules.ts, loaded with `iptables-restore --noflush`) and, as kube-proxy
// sets it, net.bridge.bridge-nf-call-iptables=1 (a per-namespace sysctl). An "outside"
// namespace on the underlay is the nodes' default gateway (192.0.2.1) and a client from
// 203.0.113.10, the world beyond the cluster. Backends run a TCP server that answers with its
// name and the peer address it saw (bench/peer-echo.ts).
//
//   pods   n1: c1 (client), b1 (backend)        n2: b2, b3 (backends)
//   web    10.96.0.10:80                         → b1:8080, b2:8080
//   api    10.96.0.20:80, NodePort 30080         → b2:8080, b3:8080
//   empty  10.96.0.30:80, NodePort 30090         → no endpoints (REJECT)
//
// Endpoints are picked by kube-proxy's own `statistic --mode random` rules, not pinned: each
// check opens enough connections that every endpoint is reached (and, for the spread check, a
// fair share) except with a probability below 1e-7, and asserts the source address of every
// single answer. A summary table of what each receiver saw is printed at the end.
//
// VXMESH_SERVICES_DAEMON_ARGS (space-separated) adds daemon flags, e.g. "--ip-masq=false";
// VXMESH_SERVICES_FORWARD_POLICY=DROP sets the nodes' FORWARD policy to DROP (as Docker does)
// before the daemons start, to check the paths with only kube-proxy's and vxmesh's own accepts.

import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "../bench/cluster";
import { CniNode, addPodNs, nsNameOf } from "../bench/cni-testkit";
import { kubeProxyRestoreInput, serviceChain, type KubeServicePort } from "../bench/kube-proxy-rules";
import { Lab, execOk, waitFor, type LabNode } from "../bench/lab";
import { connectPeerEcho, startPeerEchoServer, type PeerAnswer, type PeerAttempt } from "../bench/peer-echo";
import { hostVethName } from "../cni/handler";

const execFileP = promisify(execFile);

const CLUSTER_CIDR = "10.244.0.0/16";
const SERVICE_CIDR = "10.96.0.0/12";
const BACKEND_PORT = 8080;
const OUTSIDE_GW = "192.0.2.1";
const OUTSIDE_CLIENT = "203.0.113.10";

interface Pod {
  name: string;
  node: LabNode;
  ns: string;
  cid: string;
  ip: string;
  hostIf: string;
}

interface Row {
  path: string;
  client: string;
  destination: string;
  backend: string;
  seen: string;
  /** Answers from this backend / attempts. */
  answers: string;
}

let lab: Lab | undefined;
let cluster: Cluster | undefined;
const rows: Row[] = [];
const pods = new Map<string, Pod>();
let n1: LabNode;
let n2: LabNode;
let outsideNs = "";
let dropsBefore = new Map<string, Record<string, number>>();
/** Each node's rules (iptables-save -A lines) before kube-proxy's were loaded: the daemon's own, if any. */
const rulesBefore = new Map<string, string[]>();

async function ruleLines(ns: string): Promise<string[]> {
  return (await execOk(ns, ["iptables-save"])).stdout.split("\n").filter((l) => l.startsWith("-A "));
}

const pod = (name: string): Pod => {
  const p = pods.get(name);
  if (p === undefined) throw new Error(`no pod ${name}`);
  return p;
};

function services(): KubeServicePort[] {
  const ep = (name: string) => ({ ip: pod(name).ip, port: BACKEND_PORT });
  return [
    { namespace: "default", name: "web", portName: "http", clusterIp: "10.96.0.10", port: 80, endpoints: [ep("b1"), ep("b2")] },
    { namespace: "default", name: "api", portName: "http", clusterIp: "10.96.0.20", port: 80, nodePort: 30080, endpoints: [ep("b2"), ep("b3")] },
    { namespace: "default", name: "empty", portName: "http", clusterIp: "10.96.0.30", port: 80, nodePort: 30090, endpoints: [] },
  ];
}

async function drops(): Promise<Map<string, Record<string, number>>> {
  const out = new Map<string, Record<string, number>>();
  for (const [name, d] of (cluster as Cluster).daemons) {
    const c = (await d.status()).counters;
    out.set(name, Object.fromEntries(Object.entries(c).filter(([k]) => k.startsWith("drop_"))));
  }
  return out;
}

/** Every attempt answered; returns the answers. */
function answers(attempts: readonly PeerAttempt[], what: string): PeerAnswer[] {
  const failed = attempts.filter((a) => !a.ok);
  expect(failed, `${what}: failed attempts`).toEqual([]);
  return attempts.filter((a): a is PeerAttempt & { ok: true } => a.ok);
}

function byBackend(list: readonly PeerAnswer[]): Map<string, PeerAnswer[]> {
  const m = new Map<string, PeerAnswer[]>();
  for (const a of list) m.set(a.backend, [...(m.get(a.backend) ?? []), a]);
  return m;
}

/** Asserts each backend in `expected` answered and saw exactly the source given for it; records rows. */
function expectSources(list: readonly PeerAnswer[], expected: Record<string, string>, row: Omit<Row, "backend" | "seen" | "answers">): Map<string, PeerAnswer[]> {
  const m = byBackend(list);
  expect([...m.keys()].sort(), `${row.path}: backends that answered`).toEqual(Object.keys(expected).sort());
  for (const [backend, want] of Object.entries(expected)) {
    const seen = [...new Set((m.get(backend) ?? []).map((a) => a.peer))];
    rows.push({ ...row, backend: `${backend} ${pod(backend).ip} (${pod(backend).node.name})`, seen: seen.join(", "), answers: `${m.get(backend)?.length ?? 0}/${list.length}` });
    expect(seen, `${row.path}: source seen by ${backend}`).toEqual([want]);
  }
  return m;
}

async function hairpin(ns: string, ifname: string): Promise<boolean> {
  const { stdout } = await execFileP("bridge", ["-n", ns, "-d", "-j", "link", "show", "dev", ifname], { encoding: "utf8" });
  return (JSON.parse(stdout) as { hairpin?: boolean }[])[0]?.hairpin === true;
}

afterAll(async () => {
  if (rows.length > 0) {
    const head: Row = { path: "path", client: "client", destination: "destination", backend: "backend", seen: "source seen", answers: "answers" };
    const all = [head, ...rows];
    const w = (k: keyof Row): number => Math.max(...all.map((r) => r[k].length));
    const line = (r: Row): string => `| ${(["path", "client", "destination", "backend", "seen", "answers"] as const).map((k) => r[k].padEnd(w(k))).join(" | ")} |`;
    console.log(["service paths (source address each receiver saw):", line(head), ...rows.map(line)].join("\n"));
  }
  await cluster?.stopAll().catch(() => undefined);
  await lab?.teardown();
});

describe("kube-proxy iptables-mode services across the overlay", () => {
  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{}, {}] });
    const l = lab;
    [n1, n2] = l.nodes as [LabNode, LabNode];
    cluster = new Cluster(l);
    const policy = process.env["VXMESH_SERVICES_FORWARD_POLICY"];
    if (policy !== undefined && policy !== "") for (const n of l.nodes) await execOk(n.namespace, ["iptables", "-P", "FORWARD", policy]);
    const extra = (process.env["VXMESH_SERVICES_DAEMON_ARGS"] ?? "").split(/\s+/).filter((s) => s !== "");
    await cluster.startAll({ extraArgs: ["--service-cidr", SERVICE_CIDR, ...extra] });

    // The outside world: a namespace on the underlay that is the nodes' default gateway (a real
    // node has a default route; without any route to the service CIDR a host's connect() to a
    // ClusterIP fails with ENETUNREACH before netfilter sees it) and holds a client address
    // beyond every cluster network.
    outsideNs = nsNameOf(await addPodNs(l, "out"));
    await execFileP("ip", ["-n", l.underlayNs, "link", "add", "vout", "type", "veth", "peer", "name", "eth0", "netns", outsideNs]);
    await execFileP("ip", ["-n", l.underlayNs, "link", "set", "vout", "master", "br0", "up"]);
    for (const cmd of [["link", "set", "lo", "up"], ["addr", "add", `${OUTSIDE_CLIENT}/32`, "dev", "lo"],
      ["addr", "add", `${OUTSIDE_GW}/24`, "dev", "eth0"], ["link", "set", "eth0", "up"]]) {
      await execFileP("ip", ["-n", outsideNs, ...cmd]);
    }

    const cniNodes = new Map<string, CniNode>();
    for (const n of l.nodes) {
      // The lab makes a bridge for its own pods; here vxmesh-cni must make it (hairpin ports and all).
      await execFileP("ip", ["-n", n.namespace, "link", "del", n.bridge]);
      await execFileP("ip", ["-n", n.namespace, "route", "add", "default", "via", OUTSIDE_GW, "dev", n.underlayIf]);
      await execOk(n.namespace, ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"]);
      const daemon = cluster.daemon(n.name);
      cniNodes.set(n.name, CniNode.on(l, n.namespace, {
        subnet: n.subnet, mtu: n.overlayMtu, bridge: n.bridge,
        external: { runDir: daemon.runDir, stateDir: cluster.stateDirOf(n) },
      }));
    }
    for (const [name, node] of [["c1", n1], ["b1", n1], ["b2", n2], ["b3", n2]] as const) {
      const netns = await addPodNs(l, `${node.name}${name}`);
      const cid = `svc-${node.name}-${name}`;
      const r = await (cniNodes.get(node.name) as CniNode).call({ command: "ADD", containerID: cid, netns, ifname: "eth0" });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      const ip = ((r.json as { ips: { address: string }[] }).ips[0]?.address ?? "").split("/")[0] ?? "";
      pods.set(name, { name, node, ns: nsNameOf(netns), cid, ip, hostIf: hostVethName(cid, "eth0") });
    }

    const rules = kubeProxyRestoreInput({ clusterCidr: CLUSTER_CIDR, services: services() });
    for (const n of l.nodes) {
      rulesBefore.set(n.name, await ruleLines(n.namespace));
      await execOk(n.namespace, ["iptables-restore", "--noflush"], { input: rules });
      const sysctl = await execOk(n.namespace, ["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]);
      expect(sysctl.stdout.trim(), `bridge-nf-call-iptables in ${n.name}`).toBe("1");
    }
    for (const name of ["b1", "b2", "b3"]) await startPeerEchoServer(l, pod(name).ns, name, BACKEND_PORT);
    dropsBefore = await drops();
  });

  it("loads kube-proxy's chains into each node: jumps from the built-in chains, the NodePort rule last in KUBE-SERVICES", async () => {
    // The naming scheme gives the chain names every cluster's iptables-save shows for these.
    expect(serviceChain({ namespace: "default", name: "kubernetes", portName: "https", clusterIp: "10.96.0.1", port: 443, endpoints: [] })).toBe("KUBE-SVC-NPX46M4PTMTKRN6Y");
    expect(serviceChain({ namespace: "kube-system", name: "kube-dns", portName: "dns-tcp", clusterIp: "10.96.0.10", port: 53, endpoints: [] })).toBe("KUBE-SVC-ERIFXISQEP7F7OF4");
    for (const n of (lab as Lab).nodes) {
      const nat = (await execOk(n.namespace, ["iptables", "-t", "nat", "-S"])).stdout;
      for (const jump of ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"]) {
        expect(nat, n.name).toContain(jump);
      }
      const svcRules = nat.split("\n").filter((r) => r.startsWith("-A KUBE-SERVICES "));
      expect(svcRules.at(-1), n.name).toMatch(/--dst-type LOCAL -j KUBE-NODEPORTS$/);
      const web = serviceChain(services()[0] as KubeServicePort);
      expect(nat).toMatch(new RegExp(`-A ${web} .*-m statistic --mode random --probability 0\\.5\\d* -j KUBE-SEP-[A-Z2-7]{16}`));
      const filter = (await execOk(n.namespace, ["iptables", "-t", "filter", "-S", "KUBE-FORWARD"])).stdout;
      expect(filter).toContain("--mark 0x4000/0x4000 -j ACCEPT");
    }
    // --noflush left whatever was there (vxmesh's own chains with --ip-masq/--forward-accept) alone.
    for (const [name, before] of rulesBefore) {
      const after = new Set(await ruleLines((lab as Lab).node(name).namespace));
      expect(before.filter((r) => !after.has(r)), `rules of ${name} gone after loading kube-proxy's`).toEqual([]);
      const own = [...new Set(before.flatMap((r) => /^-A (\S+)/.exec(r)?.[1] ?? []))].filter((c) => c.startsWith("VXMESH"));
      console.log(`${name}: ${before.length} rules before kube-proxy's, in chains ${own.join(", ") || "(no VXMESH chains)"}`);
    }
    // Every host veth the plugin made is a hairpin port of its bridge.
    for (const p of pods.values()) expect(await hairpin(p.node.namespace, p.hostIf), `hairpin on ${p.hostIf} (${p.name})`).toBe(true);
  });

  it("(a)+(b) pod → ClusterIP → a pod on the same node and one on the other node: both see the client pod's own address; random picks spread", async () => {
    const c1 = pod("c1");
    const list = answers(await connectPeerEcho(lab as Lab, c1.ns, "10.96.0.10", 80, { count: 60 }), "c1 → web");
    const m = expectSources(list, { b1: c1.ip, b2: c1.ip }, { path: "(a)/(b) pod → ClusterIP", client: `c1 ${c1.ip} (n1)`, destination: "10.96.0.10:80 (web)" });
    // Binomial(60, ½): fewer than 10 for either endpoint has a probability below 1e-7.
    for (const b of ["b1", "b2"]) expect(m.get(b)?.length ?? 0, `answers from ${b} of 60`).toBeGreaterThanOrEqual(10);
  });

  it("(c) NodePort on n1 from outside the cluster → pods on n2: masqueraded to n1's TAP address", async () => {
    const dst = `${n1.underlayIp}:30080`;
    const list = answers(await connectPeerEcho(lab as Lab, outsideNs, n1.underlayIp, 30080, { count: 40, localAddress: OUTSIDE_CLIENT }), `outside → ${dst}`);
    expectSources(list, { b2: n1.subnetNetwork, b3: n1.subnetNetwork }, { path: "(c) outside → NodePort", client: `outside ${OUTSIDE_CLIENT}`, destination: `${dst} (api)` });
  });

  it("(c') NodePort on n2, whose own pods are the endpoints: masqueraded to n2's bridge address", async () => {
    const dst = `${n2.underlayIp}:30080`;
    const list = answers(await connectPeerEcho(lab as Lab, outsideNs, n2.underlayIp, 30080, { count: 40, localAddress: OUTSIDE_CLIENT }), `outside → ${dst}`);
    expectSources(list, { b2: n2.gateway, b3: n2.gateway }, { path: "(c') outside → NodePort", client: `outside ${OUTSIDE_CLIENT}`, destination: `${dst} (api)` });
  });

  it("(d) host → ClusterIP → pods on the other node: masqueraded (`! -s clusterCIDR`) to the TAP address; a local endpoint sees the bridge address", async () => {
    const api = answers(await connectPeerEcho(lab as Lab, n1.namespace, "10.96.0.20", 80, { count: 40 }), "n1 host → api");
    expectSources(api, { b2: n1.subnetNetwork, b3: n1.subnetNetwork }, { path: "(d) host → ClusterIP", client: `n1 host`, destination: "10.96.0.20:80 (api)" });
    const web = answers(await connectPeerEcho(lab as Lab, n1.namespace, "10.96.0.10", 80, { count: 40 }), "n1 host → web");
    expectSources(web, { b1: n1.gateway, b2: n1.subnetNetwork }, { path: "(d') host → ClusterIP", client: `n1 host`, destination: "10.96.0.10:80 (web)" });
  });

  it("(e) hairpin: a pod reaching itself through its own service sees the gateway address; the other endpoint sees the pod", async () => {
    const b1 = pod("b1");
    const list = answers(await connectPeerEcho(lab as Lab, b1.ns, "10.96.0.10", 80, { count: 40 }), "b1 → web");
    expectSources(list, { b1: n1.gateway, b2: b1.ip }, { path: "(e) hairpin pod → own service", client: `b1 ${b1.ip} (n1)`, destination: "10.96.0.10:80 (web)" });
  });

  it("(e) hairpin needs the plugin's hairpin mode: with it off on the pod's port, connections to itself fail, to the other endpoint still work", async () => {
    const b1 = pod("b1");
    const setHairpin = (on: boolean): Promise<unknown> =>
      execFileP("ip", ["-n", n1.namespace, "link", "set", "dev", b1.hostIf, "type", "bridge_slave", "hairpin", on ? "on" : "off"]);
    await setHairpin(false);
    let attempts: PeerAttempt[];
    try {
      expect(await hairpin(n1.namespace, b1.hostIf)).toBe(false);
      // All at once, so the timeouts run side by side. 24 picks: P(none of them b1 itself) = 2^-24.
      attempts = await connectPeerEcho(lab as Lab, b1.ns, "10.96.0.10", 80, { count: 24, concurrency: 24, timeoutMs: 2000 });
    } finally {
      await setHairpin(true);
    }
    const ok = attempts.filter((a): a is PeerAttempt & { ok: true } => a.ok);
    const failed = attempts.filter((a) => !a.ok);
    expect(ok.filter((a) => a.backend !== "b2"), "answers from anything but b2").toEqual([]);
    expect(ok.every((a) => a.peer === b1.ip)).toBe(true);
    expect(failed.length, "attempts that failed (DNATed to b1 itself)").toBeGreaterThan(0);
    expect(new Set(failed.map((a) => (a.ok ? "" : a.error)))).toEqual(new Set(["timeout"]));
    rows.push({ path: "(e) hairpin, hairpin off", client: `b1 ${b1.ip} (n1)`, destination: "10.96.0.10:80 (web)", backend: `b1 ${b1.ip} (n1), itself`, seen: "— (every connection DNATed to itself timed out)", answers: `0/${failed.length}` });
    // Back on: the pod reaches itself again.
    const again = await waitFor(async () => {
      const a = answers(await connectPeerEcho(lab as Lab, b1.ns, "10.96.0.10", 80, { count: 16 }), "b1 → web, hairpin on again");
      return a.some((x) => x.backend === "b1") ? a : undefined;
    }, { timeoutMs: 10_000, what: "b1 to reach itself through web with hairpin on again" });
    for (const a of again) expect(a.peer).toBe(a.backend === "b1" ? n1.gateway : b1.ip);
  });

  it("a service without endpoints is refused at once (filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES REJECT)", async () => {
    const c1 = pod("c1");
    const cip = await connectPeerEcho(lab as Lab, c1.ns, "10.96.0.30", 80, { timeoutMs: 3000 });
    expect(cip).toEqual([{ ok: false, error: "ECONNREFUSED" }]);
    const np = await connectPeerEcho(lab as Lab, outsideNs, n1.underlayIp, 30090, { timeoutMs: 3000, localAddress: OUTSIDE_CLIENT });
    expect(np).toEqual([{ ok: false, error: "ECONNREFUSED" }]);
  });

  it("the daemons dropped nothing on the way", async () => {
    const after = await drops();
    expect(dropsBefore.size).toBe(2);
    for (const d of dropsBefore.values()) expect(Object.keys(d)).toContain("drop_spoofed_source");
    for (const [name, before] of dropsBefore) {
      const now = after.get(name) ?? {};
      const grown = Object.entries(now).filter(([k, v]) => v !== (before[k] ?? 0)).map(([k, v]) => `${k} ${before[k] ?? 0} → ${v}`);
      expect(grown, `forwarder drops on ${name}`).toEqual([]);
    }
  });

  it("daemons killed and started again after kube-proxy, under a FORWARD policy of DROP: kube-proxy's rules untouched, its marks still work, the same sources seen", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    for (const n of l.nodes) await execOk(n.namespace, ["iptables", "-P", "FORWARD", "DROP"]);
    const kubeRules = async (ns: string): Promise<string[]> => (await ruleLines(ns)).filter((r) => /KUBE-/.test(r) && !/VXMESH/.test(r));
    const kubeBefore = new Map(await Promise.all(l.nodes.map(async (n) => [n.name, await kubeRules(n.namespace)] as const)));
    for (const n of l.nodes) {
      await c.daemon(n.name).kill("SIGKILL");
      await c.restart(n);
    }
    for (const n of l.nodes) {
      expect(await kubeRules(n.namespace), `kube-proxy's rules on ${n.name}`).toEqual(kubeBefore.get(n.name));
      const forward = (await execOk(n.namespace, ["iptables", "-S", "FORWARD"])).stdout.split("\n").filter((r) => r.startsWith("-A FORWARD"));
      if (!(process.env["VXMESH_SERVICES_DAEMON_ARGS"] ?? "").includes("--forward-accept=false")) {
        // The restarted daemon found its jump (behind kube-proxy's, which came later) and kept it,
        // once, with no DROP or REJECT of FORWARD's own before it.
        const ours = forward.findIndex((r) => r.endsWith("-j VXMESH-FORWARD"));
        expect(ours, `our jump in FORWARD on ${n.name}`).toBeGreaterThanOrEqual(0);
        expect(forward.filter((r) => r.endsWith("-j VXMESH-FORWARD"))).toHaveLength(1);
        expect(forward.slice(0, ours).filter((r) => /-j (DROP|REJECT)/.test(r)), `FORWARD on ${n.name}`).toEqual([]);
      }
    }
    // Marked by kube-proxy before our chain sees it, masqueraded by KUBE-POSTROUTING: as before the restart.
    const c1 = pod("c1");
    await waitFor(async () => (await connectPeerEcho(l, c1.ns, "10.96.0.20", 80, { count: 4 })).every((a) => a.ok),
      { timeoutMs: 20_000, intervalMs: 200, what: "pod → ClusterIP across nodes after the restart" });
    const viaPod = answers(await connectPeerEcho(l, c1.ns, "10.96.0.20", 80, { count: 20 }), "c1 → api after restart");
    expectSources(viaPod, { b2: c1.ip, b3: c1.ip }, { path: "(b) after restart", client: `c1 ${c1.ip} (n1)`, destination: "10.96.0.20:80 (api)" });
    const nodePort = answers(await connectPeerEcho(l, outsideNs, n1.underlayIp, 30080, { count: 20, localAddress: OUTSIDE_CLIENT }), "outside → NodePort after restart");
    expectSources(nodePort, { b2: n1.subnetNetwork, b3: n1.subnetNetwork }, { path: "(c) after restart", client: `outside ${OUTSIDE_CLIENT}`, destination: `${n1.underlayIp}:30080 (api)` });
    const host = answers(await connectPeerEcho(l, n1.namespace, "10.96.0.20", 80, { count: 20 }), "n1 host → api after restart");
    expectSources(host, { b2: n1.subnetNetwork, b3: n1.subnetNetwork }, { path: "(d) after restart", client: "n1 host", destination: "10.96.0.20:80 (api)" });
  });
});
