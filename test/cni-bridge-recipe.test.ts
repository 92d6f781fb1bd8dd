// The recipe "vxmesh with the reference bridge plugin" (README): the daemon carries pod traffic
// between nodes; `vxmesh install-cni --plugin bridge` renders a conflist for the reference
// bridge + host-local plugins from the daemon's <run-dir>/network.json; the plugins (exec'd as
// a runtime execs a conflist, inside the node's namespace) make cni0 and attach the pods. The
// lab's own pod bridge is removed first, so every bridge here is the reference plugin's.
//
// For a static pair and for a gossip pair (one node with a pinned subnet, one claiming):
//   - install-cni waits for network.json and writes the conflist; pods attach and ping across;
//   - (a) the daemon starts beside a cni0 carrying its subnet's gateway that it did not make
//     (stopped and started again under running pods; with gossip, a start with another
//     subnet is refused, naming cni0's route);
//   - (c) kill -9 under running pods and a start with the same state dir: no overlap error,
//     the pods keep their addresses (host-local's leases), traffic returns;
//   - (d) gossip: the restarted claiming node keeps its subnet (its lease), so the conflist
//     rendered again is the same;
//   - every pod is DELeted through the conflist and host-local's leases are gone.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, cliPath, type DaemonOptions, type DaemonProcess } from "../bench/cluster";
import { addPodNs, nsNameOf, runConflist, type Conflist, REFERENCE_DIR } from "../bench/cni-testkit";
import { Lab, listNetns, waitFor, type LabNode } from "../bench/lab";
import { bridgeConflist } from "../daemon/install-cni";
import { formatIpv4, parseSubnet, subnetAddress, subnetContains, parseIpv4 } from "../encap/types";

const NETWORK = "vxmesh";
const BRIDGE = "cni0";
const REFERENCE_PLUGINS = ["bridge", "host-local", "portmap"];

interface Pod {
  node: LabNode;
  netns: string;
  cid: string;
  ip: string;
  /** The chain's ADD result, which a runtime caches for CHECK and DEL. */
  result: Record<string, unknown>;
}

/** One lab, its daemons, the files of the recipe per node, and the pods attached. */
class Recipe {
  lab!: Lab;
  cluster!: Cluster;
  binDir!: string;
  readonly pods: Pod[] = [];
  private podCounter = 0;
  /** install-cni processes still running (ended by teardown when a test fails while one waits). */
  private readonly installs = new Set<ChildProcess>();

  async build(nodes: number): Promise<void> {
    this.lab = await Lab.build({ nodes: Array.from({ length: nodes }, () => ({})) });
    this.cluster = new Cluster(this.lab);
    // The runtime's CNI bin dir: the distribution's reference plugins, nothing of ours.
    this.binDir = join(this.lab.workDir(), "cni-bin");
    mkdirSync(this.binDir);
    for (const p of REFERENCE_PLUGINS) symlinkSync(join(REFERENCE_DIR, p), join(this.binDir, p));
    for (const n of this.lab.nodes) {
      // The lab's own pod bridge goes: here the reference bridge plugin makes the node's.
      const r = await this.lab.exec(n, ["ip", "link", "del", n.bridge]);
      if (r.code !== 0) throw new Error(`removing ${n.bridge} in ${n.name}: ${r.stderr}`);
    }
  }

  async teardown(): Promise<void> {
    const prefix = this.lab?.prefix;
    for (const c of this.installs) c.kill("SIGKILL");
    await this.cluster?.stopAll().catch(() => undefined);
    await this.lab?.teardown();
    if (prefix !== undefined) expect((await listNetns()).filter((n) => n.startsWith(prefix))).toEqual([]);
  }

  confDir(n: LabNode): string {
    return join(this.lab.workDir(), `${n.name}-net.d`);
  }

  dataDir(n: LabNode): string {
    return join(this.lab.workDir(), `${n.name}-host-local`);
  }

  daemon(n: LabNode): DaemonProcess {
    return this.cluster.daemon(n.name);
  }

  /** `vxmesh install-cni --plugin bridge` for node n, as a user runs it (the CLI, its exit status). */
  installCni(n: LabNode, wait = "30s"): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const runDir = this.cluster.runDirOf(n);
    const argv = [cliPath(), "install-cni", "--plugin", "bridge", "--bridge-name", BRIDGE, "--bin-dir", this.binDir, "--conf-dir", this.confDir(n),
      "--run-dir", runDir, "--ipam-data-dir", this.dataDir(n), "--wait", wait];
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "pipe"] });
      this.installs.add(child);
      let stdout = "";
      let stderr = "";
      child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
      child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
      const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
      child.once("error", reject);
      child.once("close", (code) => {
        clearTimeout(timer);
        this.installs.delete(child);
        resolve({ code, stdout, stderr });
      });
    });
  }

  conflist(n: LabNode): Conflist {
    return JSON.parse(readFileSync(join(this.confDir(n), "10-vxmesh.conflist"), "utf8")) as Conflist;
  }

  /** What install-cni must have written for a node whose daemon has `subnet`. */
  expectedConflist(n: LabNode, subnet: string): Record<string, unknown> {
    const s = parseSubnet(subnet);
    if (!s.ok) throw new Error(s.error);
    return bridgeConflist({ networkName: NETWORK, bridge: BRIDGE, subnet, gateway: formatIpv4(subnetAddress(s.value, 1)), mtu: n.overlayMtu, dataDir: this.dataDir(n), portmap: true });
  }

  /** A pod on n, attached through n's conflist as a runtime does (ADD of the chain, inside the node's namespace). */
  async addPod(n: LabNode, capabilityArgs?: Record<string, unknown>): Promise<Pod> {
    const k = ++this.podCounter;
    const netns = await addPodNs(this.lab, `${n.name}c${k}`);
    const cid = `recipe-${n.name}-pod${k}`;
    const r = await runConflist(this.conflist(n), { command: "ADD", containerID: cid, netns, ifname: "eth0", binDir: this.binDir, inNetns: n.namespace, ...(capabilityArgs === undefined ? {} : { capabilityArgs }) });
    const last = r.runs[r.runs.length - 1];
    expect(r.ok, `${last?.type ?? "?"}: ${last?.run.stdout ?? ""}${last?.run.stderr ?? ""}`).toBe(true);
    expect(r.runs.map((x) => x.type)).toEqual(["bridge", "portmap"]);
    const result = r.result as Record<string, unknown>;
    const ip = ((result["ips"] as { address: string }[])[0]?.address ?? "").split("/")[0] as string;
    const pod = { node: n, netns, cid, ip, result };
    this.pods.push(pod);
    return pod;
  }

  /** The pod's address as its namespace holds it now. */
  async addressIn(p: Pod): Promise<string | undefined> {
    const r = await this.lab.exec(nsNameOf(p.netns), ["ip", "-4", "-j", "addr", "show", "dev", "eth0"]);
    const parsed = JSON.parse(r.stdout || "[]") as { addr_info: { local: string }[] }[];
    return parsed[0]?.addr_info[0]?.local;
  }

  /** cni0's IPv4 addresses and routes in the node namespace ("10.244.1.1/24", "10.244.1.0/24 proto kernel"). */
  async bridgeLayout(n: LabNode): Promise<{ addresses: string[]; routes: string[] }> {
    const [a, r] = await Promise.all([
      this.lab.exec(n, ["ip", "-4", "-j", "addr", "show", "dev", BRIDGE]),
      this.lab.exec(n, ["ip", "-4", "-j", "route", "show", "dev", BRIDGE]),
    ]);
    if (a.code !== 0) return { addresses: [], routes: [] };
    const addresses = (JSON.parse(a.stdout || "[]") as { addr_info: { local: string; prefixlen: number }[] }[]).flatMap((l) => l.addr_info.map((i) => `${i.local}/${i.prefixlen}`));
    const routes = (JSON.parse(r.stdout || "[]") as { dst: string; protocol?: string }[]).map((x) => `${x.dst} proto ${x.protocol ?? "?"}`);
    return { addresses, routes };
  }

  /** Every pair of pods on different nodes pings (each pair polled until its deadline). */
  async pingAcross(what: string, timeoutMs = 15_000): Promise<void> {
    const pairs = this.pods.flatMap((a) => this.pods.filter((b) => b.node !== a.node).map((b) => [a, b] as const));
    expect(pairs.length).toBeGreaterThan(0);
    await Promise.all(pairs.map(([a, b]) => waitFor(() => this.lab.ping(nsNameOf(a.netns), b.ip, { count: 1, timeoutMs: 500 }),
      { timeoutMs, intervalMs: 200, what: `${what}: ${a.cid} (${a.ip}) to ping ${b.cid} (${b.ip})` })));
  }

  /** host-local's lease files for n: address → "containerID ifname". */
  leases(n: LabNode): Map<string, string> {
    const dir = join(this.dataDir(n), NETWORK);
    const out = new Map<string, string>();
    if (!existsSync(dir)) return out;
    for (const f of readdirSync(dir)) {
      if (!parseIpv4(f).ok) continue;
      out.set(f, readFileSync(join(dir, f), "utf8").split(/\r?\n/).join(" ").trim());
    }
    return out;
  }

  /** The pods keep their addresses, and host-local still holds a lease for each. */
  async expectPodsKeptAddresses(n: LabNode): Promise<void> {
    const mine = this.pods.filter((p) => p.node === n);
    expect(mine.length).toBeGreaterThan(0);
    const leases = this.leases(n);
    for (const p of mine) {
      expect(await this.addressIn(p)).toBe(p.ip);
      expect(leases.get(p.ip)).toBe(`${p.cid} eth0`);
    }
  }

  /** DEL of every pod through its node's conflist, with the cached ADD result; leaves no lease behind. */
  async delAll(): Promise<void> {
    for (const p of this.pods.splice(0)) {
      const r = await runConflist(this.conflist(p.node), { command: "DEL", containerID: p.cid, netns: p.netns, ifname: "eth0", binDir: this.binDir, inNetns: p.node.namespace, prevResult: p.result });
      expect(r.ok, r.runs.map((x) => x.run.stdout + x.run.stderr).join("\n")).toBe(true);
      expect(r.runs.map((x) => x.type)).toEqual(["portmap", "bridge"]);
    }
    for (const n of this.lab.nodes) expect([...this.leases(n).keys()]).toEqual([]);
  }
}

/** The layout that used to stop the daemon: cni0 holding the subnet's gateway, with its connected route. */
async function expectBridgeOwnsSubnet(recipe: Recipe, n: LabNode, subnet: string): Promise<void> {
  const s = parseSubnet(subnet);
  if (!s.ok) throw new Error(s.error);
  const layout = await recipe.bridgeLayout(n);
  expect(layout.addresses).toEqual([`${formatIpv4(subnetAddress(s.value, 1))}/${s.value.prefixLen}`]);
  expect(layout.routes).toContain(`${subnet} proto kernel`);
}

function readNetworkJson(d: DaemonProcess): { subnet: string } | undefined {
  const f = join(d.runDir, "network.json");
  return existsSync(f) ? (JSON.parse(readFileSync(f, "utf8")) as { subnet: string }) : undefined;
}

function expectNoOverlapComplaint(d: DaemonProcess): void {
  expect(d.running).toBe(true);
  expect(d.log).not.toMatch(/overlaps the host route/);
}

describe("the reference bridge + host-local beside static vxmesh daemons", () => {
  const recipe = new Recipe();
  let n1: LabNode;
  let n2: LabNode;

  beforeAll(async () => {
    await recipe.build(2);
    [n1, n2] = recipe.lab.nodes as [LabNode, LabNode];
  });
  afterAll(() => recipe.teardown());

  it("install-cni --plugin bridge waits for the daemon's network.json and writes the conflist; pods attached through it reach the other node's pods", async () => {
    // Started before the daemons: each waits for its node's network.json.
    const installs = Promise.all([n1, n2].map((n) => recipe.installCni(n)));
    await recipe.cluster.startAll();
    for (const [i, r] of (await installs).entries()) {
      expect(r.code, r.stderr).toBe(0);
      const n = [n1, n2][i] as LabNode;
      expect(recipe.conflist(n)).toEqual(recipe.expectedConflist(n, n.subnet));
    }
    // Nothing of ours went into the bin dir.
    expect(readdirSync(recipe.binDir).sort()).toEqual([...REFERENCE_PLUGINS].sort());

    for (const n of [n1, n2]) for (let k = 0; k < 2; k++) await recipe.addPod(n);
    for (const p of recipe.pods) {
      const s = parseSubnet(p.node.subnet);
      expect(s.ok && subnetContains(s.value, (parseIpv4(p.ip) as { ok: true; value: number }).value), `${p.ip} in ${p.node.subnet}`).toBe(true);
    }
    for (const n of [n1, n2]) await expectBridgeOwnsSubnet(recipe, n, n.subnet);
    await recipe.pingAcross("pods attached by the reference plugins");
  }, 90_000);

  it("(a) a daemon stopped and started again beside the cni0 it did not make starts, and its pods talk across again", async () => {
    const before = recipe.daemon(n1);
    expect(await before.stop()).toBe(0);
    // A clean stop withdraws the hand-off; cni0 and the pods stay.
    expect(readNetworkJson(before)).toBeUndefined();
    await expectBridgeOwnsSubnet(recipe, n1, n1.subnet);

    const after = await recipe.cluster.restart(n1);
    expectNoOverlapComplaint(after);
    expect(readNetworkJson(after)?.subnet).toBe(n1.subnet);
    await recipe.expectPodsKeptAddresses(n1);
    await recipe.pingAcross("after the restart beside cni0");
  }, 90_000);

  it("(c) kill -9 under running pods, started again with the same state dir: no overlap error, the pods keep their addresses, traffic returns", async () => {
    await recipe.daemon(n2).kill("SIGKILL");
    expect(recipe.daemon(n2).running).toBe(false);
    // The TAP went with the process: n2's pods are cut off from n1's.
    const [from, to] = [recipe.pods.find((p) => p.node === n2) as Pod, recipe.pods.find((p) => p.node === n1) as Pod];
    expect(await recipe.lab.ping(nsNameOf(from.netns), to.ip, { count: 1, timeoutMs: 500 })).toBe(false);
    await expectBridgeOwnsSubnet(recipe, n2, n2.subnet);

    const t0 = Date.now();
    const after = await recipe.cluster.restart(n2);
    expectNoOverlapComplaint(after);
    await recipe.expectPodsKeptAddresses(n2);
    // A pod added now gets a fresh address: host-local's leases survived the crash.
    const fresh = await recipe.addPod(n2);
    expect(recipe.pods.filter((p) => p !== fresh).map((p) => p.ip)).not.toContain(fresh.ip);
    await recipe.pingAcross("traffic after the kill -9 and restart", 30_000);
    console.log(`[cni-bridge-recipe] static: restart after kill -9 → every pair pings: ${((Date.now() - t0) / 1000).toFixed(2)} s`);
  }, 90_000);

  it("DEL through the conflist removes every pod and releases host-local's leases", async () => {
    await recipe.delAll();
  });
});

describe("the reference bridge + host-local beside gossip vxmesh daemons", () => {
  const recipe = new Recipe();
  let n1: LabNode;
  let n2: LabNode;
  /** n1 pins the lab's subnet; n2 claims one of the cluster CIDR. */
  const options = (): Map<string, DaemonOptions> => new Map([
    [n1.name, { gossip: { claimWaitS: 2 } }],
    [n2.name, { gossip: { seed: n1, claim: true, claimWaitS: 2 } }],
  ]);
  let claimed = "";

  beforeAll(async () => {
    await recipe.build(2);
    [n1, n2] = recipe.lab.nodes as [LabNode, LabNode];
  });
  afterAll(() => recipe.teardown());

  async function ready(n: LabNode): Promise<string> {
    return waitFor(async () => {
      const s = await recipe.daemon(n).status();
      return s.ready && s.subnet !== null ? s.subnet : undefined;
    }, { timeoutMs: 30_000, intervalMs: 100, what: `${n.name} to be ready with a subnet` });
  }

  it("install-cni --plugin bridge waits for the claimed subnet; pods attached through the conflist reach the other node's pods", async () => {
    const installs = Promise.all([n1, n2].map((n) => recipe.installCni(n)));
    const o = options();
    await recipe.cluster.start(n1, o.get(n1.name));
    await recipe.cluster.start(n2, o.get(n2.name));
    expect(await ready(n1)).toBe(n1.subnet);
    claimed = await ready(n2);
    expect(claimed).toMatch(/^10\.244\.\d+\.0\/24$/);
    expect(claimed).not.toBe(n1.subnet);
    const [r1, r2] = await installs;
    expect(r1?.code, r1?.stderr).toBe(0);
    expect(r2?.code, r2?.stderr).toBe(0);
    // n2's file came only after its claim stood for the claim wait.
    expect(r2?.stderr).toContain("waiting up to 30 s for");
    expect(recipe.conflist(n1)).toEqual(recipe.expectedConflist(n1, n1.subnet));
    expect(recipe.conflist(n2)).toEqual(recipe.expectedConflist(n2, claimed));

    for (const n of [n1, n2]) for (let k = 0; k < 2; k++) await recipe.addPod(n);
    await expectBridgeOwnsSubnet(recipe, n1, n1.subnet);
    await expectBridgeOwnsSubnet(recipe, n2, claimed);
    await recipe.pingAcross("pods attached by the reference plugins");
  }, 90_000);

  it("(a) beside the cni0 it did not make: started with another subnet it is refused naming cni0's route; with its own it starts and its pods talk across again", async () => {
    expect(await recipe.daemon(n1).stop()).toBe(0);
    await expectBridgeOwnsSubnet(recipe, n1, n1.subnet);
    // cni0 still carries 10.244.1.0/24, which is not this start's subnet: it could capture
    // another node's pods. This is what the README's re-rendering steps are for.
    const wrong = recipe.cluster.start(n1, { gossip: { seed: n2, claimWaitS: 2 }, extraArgs: ["--subnet", "10.244.99.0/24"] });
    await expect(wrong).rejects.toThrow(new RegExp(`--cluster-cidr 10\\.244\\.0\\.0/16 overlaps the host route ${n1.subnet.replace(/\./g, "\\.")} dev ${BRIDGE}`));

    // Back through n2: the first node started alone, and the others do not probe a member that left.
    const after = await recipe.cluster.restart(n1, { gossip: { seed: n2, claimWaitS: 2 } });
    expectNoOverlapComplaint(after);
    expect(await ready(n1)).toBe(n1.subnet);
    await recipe.expectPodsKeptAddresses(n1);
    await recipe.pingAcross("after the restart beside cni0", 30_000);
  }, 90_000);

  it("(c, d) kill -9 of the claiming node under running pods: it starts again with the same state dir, keeps its subnet (lease) and pod addresses, traffic returns", async () => {
    const lease = JSON.parse(readFileSync(join(recipe.daemon(n2).stateDir, "lease.json"), "utf8")) as { subnet: string; state: string };
    expect(lease).toMatchObject({ subnet: claimed, state: "confirmed" });
    await recipe.daemon(n2).kill("SIGKILL");
    await expectBridgeOwnsSubnet(recipe, n2, claimed);

    const t0 = Date.now();
    // The old failure: "--cluster-cidr 10.244.0.0/16 overlaps the host route <claimed> dev cni0".
    const after = await recipe.cluster.restart(n2);
    expectNoOverlapComplaint(after);
    expect(await ready(n2)).toBe(claimed);
    expect(readNetworkJson(after)?.subnet).toBe(claimed);
    // Same subnet, so the conflist rendered again is the same one.
    const before = readFileSync(join(recipe.confDir(n2), "10-vxmesh.conflist"), "utf8");
    const again = await recipe.installCni(n2, "0");
    expect(again.code, again.stderr).toBe(0);
    expect(readFileSync(join(recipe.confDir(n2), "10-vxmesh.conflist"), "utf8")).toBe(before);

    await recipe.expectPodsKeptAddresses(n2);
    const fresh = await recipe.addPod(n2);
    expect(recipe.pods.filter((p) => p !== fresh).map((p) => p.ip)).not.toContain(fresh.ip);
    await recipe.pingAcross("traffic after the kill -9 and restart", 30_000);
    console.log(`[cni-bridge-recipe] gossip: restart after kill -9 → ready and every pair pings: ${((Date.now() - t0) / 1000).toFixed(2)} s`);
  }, 90_000);

  it("DEL through the conflist removes every pod and releases host-local's leases", async () => {
    await recipe.delAll();
  });
});
