// Proves the network-namespace lab with nothing but the kernel's own VXLAN device: two
// "kernel" nodes programmed the way docs/DESIGN.md §1 draws the TAP must carry pod traffic as VXLAN
// with the configured VNI and port, and teardown must leave nothing behind.

import { spawn as spawnChild, spawnSync } from "node:child_process";
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { Lab, LAB_NS_PATTERN, exec, listNetns, ping, waitFor } from "../bench/lab";
import type { LabPod } from "../bench/lab";

function rootLinks(): string[] {
  const r = spawnSync("ip", ["-o", "link", "show"], { encoding: "utf8" });
  return r.stdout
    .split("\n")
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined)
    .sort();
}

function crossNodePairs(lab: Lab): [LabPod, LabPod][] {
  const pairs: [LabPod, LabPod][] = [];
  for (const a of lab.pods) for (const b of lab.pods) if (a.node !== b.node) pairs.push([a, b]);
  return pairs;
}

async function allCrossNodePairsPing(lab: Lab): Promise<void> {
  const pairs = crossNodePairs(lab);
  expect(pairs.length).toBeGreaterThan(0);
  await Promise.all(
    pairs.map(([a, b]) =>
      waitFor(() => ping(a, b.ip, { count: 1, timeoutMs: 500 }), {
        timeoutMs: 10_000,
        intervalMs: 100,
        what: `${a.name} (${a.ip}) to ping ${b.name} (${b.ip})`,
      }),
    ),
  );
}

interface VxlanPacket {
  vni: number;
  udpDst: number;
  outerSrc: string;
  outerDst: string;
  innerSrc: string;
  innerDst: string;
  icmpType: string;
}

/**
 * Captures VXLAN datagrams on node `at`'s underlay eth0 while `from` pings `to` (one echo per
 * round until tshark has its packets), then decodes them.
 */
async function captureVxlan(lab: Lab, at: string, from: LabPod, to: LabPod, port: number, packets: number): Promise<VxlanPacket[]> {
  const node = lab.node(at);
  const cap = await lab.startCapture(node, { iface: "eth0", filter: `udp port ${port}`, count: packets, durationS: 30 });
  await waitFor(
    async () => {
      if (cap.finished()) return true;
      await ping(from, to.ip, { count: 1, timeoutMs: 500 });
      return cap.finished();
    },
    { timeoutMs: 25_000, intervalMs: 50, what: `tshark in ${node.namespace} to capture ${packets} VXLAN packets` },
  );
  expect(await cap.done).toBe(0);
  const rows = await lab.readCapture(
    cap.file,
    ["vxlan.vni", "udp.dstport", "ip.src", "ip.dst", "icmp.type"],
    { decodeAs: [`udp.port==${port},vxlan`] },
  );
  return rows.map((r) => {
    const [vni = "", udpDst = "", src = "", dst = "", icmp = ""] = r;
    const [outerSrc = "", innerSrc = ""] = src.split(",");
    const [outerDst = "", innerDst = ""] = dst.split(",");
    return { vni: Number(vni), udpDst: Number(udpDst), outerSrc, outerDst, innerSrc, innerDst, icmpType: icmp };
  });
}

describe("lab: two kernel-VXLAN nodes, VNI 1, port 4789", () => {
  let lab: Lab | undefined;
  let linksBefore: string[] = [];
  let linksAfter: string[] = [];
  let buildMs = 0;

  beforeAll(async () => {
    linksBefore = rootLinks();
    const t0 = Date.now();
    lab = await Lab.build({ nodes: [{ overlay: "kernel", pods: 2 }, { overlay: "kernel", pods: 2 }] });
    await lab.programAllPeers();
    buildMs = Date.now() - t0;
    linksAfter = rootLinks();
  });

  afterAll(async () => {
    await lab?.teardown();
  });

  it("builds the topology inside its own namespaces only", async () => {
    const l = lab as Lab;
    console.log(`lab build + program: ${buildMs} ms`);
    expect(linksAfter).toEqual(linksBefore);
    expect(l.prefix).toMatch(new RegExp(`^vxm${process.pid}x\\d+-$`));
    const names = await listNetns();
    for (const ns of l.namespaces) {
      expect(ns.startsWith(l.prefix)).toBe(true);
      expect(names).toContain(ns);
    }
    expect(l.namespaces).toHaveLength(1 + 2 + 4);

    const [n1, n2] = l.nodes;
    expect(n1).toMatchObject({ name: "n1", underlayIp: "192.0.2.11", subnet: "10.244.1.0/24", gateway: "10.244.1.1", overlay: "kernel", vni: 1, port: 4789, overlayMtu: 1450 });
    expect(n2).toMatchObject({ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", gateway: "10.244.2.1" });
    expect(n1?.pods.map((p) => p.ip)).toEqual(["10.244.1.2", "10.244.1.3"]);
    expect(l.peersFor("n1")).toEqual([{ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", vtepMac: n2?.vtepMac }]);

    // The kernel VXLAN device as docs/DESIGN.md §1 draws it for the TAP.
    const vx = await exec(n1!, ["ip", "-d", "-j", "link", "show", "vxmesh0"]);
    const info = (JSON.parse(vx.stdout) as Array<Record<string, unknown>>)[0] as Record<string, unknown>;
    expect(info["address"]).toBe(n1?.vtepMac);
    expect(info["mtu"]).toBe(1450);
    const data = (info["linkinfo"] as { info_data: Record<string, unknown> }).info_data;
    expect(data).toMatchObject({ id: 1, port: 4789, local: "192.0.2.11", learning: false });
    const route = await exec(n1!, ["ip", "route", "show", "10.244.2.0/24"]);
    expect(route.stdout).toMatch(/10\.244\.2\.0\/24 via 10\.244\.2\.0 dev vxmesh0 onlink/);
    const neigh = await exec(n1!, ["ip", "neigh", "show", "dev", "vxmesh0"]);
    expect(neigh.stdout).toContain(`10.244.2.0 lladdr ${n2?.vtepMac} PERMANENT`);
    const fdb = await exec(n1!, ["bridge", "fdb", "show", "dev", "vxmesh0"]);
    expect(fdb.stdout).toContain(`${n2?.vtepMac} dst 192.0.2.12`);
    const fwd = await exec(n1!, ["sysctl", "-n", "net.ipv4.ip_forward"]);
    expect(fwd.stdout.trim()).toBe("1");

    // Interface names fit IFNAMSIZ, MTUs follow the underlay.
    for (const ns of l.namespaces) {
      const r = await exec(ns, ["ip", "-j", "link", "show"]);
      for (const link of JSON.parse(r.stdout) as Array<{ ifname: string; mtu: number }>) {
        expect(link.ifname.length).toBeLessThanOrEqual(15);
      }
    }
    const podLink = await exec(l.pods[0]!, ["ip", "-j", "link", "show", "eth0"]);
    expect((JSON.parse(podLink.stdout) as Array<{ mtu: number }>)[0]?.mtu).toBe(1450);
  });

  it("every cross-node pod pair pings, also at full overlay MTU with DF", async () => {
    const l = lab as Lab;
    const t0 = Date.now();
    await allCrossNodePairsPing(l);
    console.log(`all ${crossNodePairs(l).length} cross-node pairs ping: ${Date.now() - t0} ms`);
    const [a, b] = [l.node("n1").pods[0]!, l.node("n2").pods[1]!];
    // 1450 − 20 (IP) − 8 (ICMP) = 1422 bytes of payload fills the overlay MTU exactly.
    expect(await ping(a, b.ip, { count: 2, size: 1422, dontFragment: true })).toBe(true);
  });

  it("carries pod traffic as VXLAN with VNI 1 on UDP 4789", async () => {
    const l = lab as Lab;
    const [a, b] = [l.node("n1").pods[0]!, l.node("n2").pods[0]!];
    const t0 = Date.now();
    const pkts = await captureVxlan(l, "n2", a, b, 4789, 4);
    console.log(`capture + decode: ${Date.now() - t0} ms`);
    expect(pkts).toHaveLength(4);
    for (const p of pkts) {
      expect(p.vni).toBe(1);
      expect(p.udpDst).toBe(4789);
      expect([p.outerSrc, p.outerDst].sort()).toEqual(["192.0.2.11", "192.0.2.12"]);
      expect([p.innerSrc, p.innerDst].sort()).toEqual([a.ip, b.ip].sort());
    }
    // Requests travel n1 → n2 with the pod addresses intact (no NAT); replies come back.
    expect(pkts.some((p) => p.outerSrc === "192.0.2.11" && p.innerSrc === a.ip && p.icmpType === "8")).toBe(true);
    expect(pkts.some((p) => p.outerSrc === "192.0.2.12" && p.innerSrc === b.ip && p.icmpType === "0")).toBe(true);
  });

  it("reprograms peers: removing a peer cuts the path, restoring it heals it", async () => {
    const l = lab as Lab;
    const [a, b] = [l.node("n1").pods[0]!, l.node("n2").pods[0]!];
    await l.programPeers("n1", []);
    const routes = await exec(l.node("n1"), ["ip", "route", "show", "dev", "vxmesh0"]);
    expect(routes.stdout.trim()).toBe("");
    expect(await ping(a, b.ip, { count: 1, timeoutMs: 300 })).toBe(false);
    await l.programPeers("n1", l.peersFor("n1"));
    await l.programPeers("n1", l.peersFor("n1")); // idempotent
    const fdb = await exec(l.node("n1"), ["bridge", "fdb", "show", "dev", "vxmesh0"]);
    expect(fdb.stdout.trim().split("\n")).toHaveLength(1);
    await waitFor(() => ping(a, b.ip, { count: 1, timeoutMs: 500 }), { timeoutMs: 10_000, what: "path n1 → n2 to heal" });
  });
});

describe("lab: kernel VXLAN with VNI 42 on port 8472", () => {
  let lab: Lab | undefined;

  beforeAll(async () => {
    lab = await Lab.build({ vni: 42, port: 8472, nodes: [{ overlay: "kernel", pods: 1 }, { overlay: "kernel", pods: 1 }], programPeers: true });
  });

  afterAll(async () => {
    await lab?.teardown();
  });

  it("pings across nodes and the underlay carries VNI 42 on UDP 8472", async () => {
    const l = lab as Lab;
    await allCrossNodePairsPing(l);
    const [a, b] = [l.node("n1").pods[0]!, l.node("n2").pods[0]!];
    const pkts = await captureVxlan(l, "n1", a, b, 8472, 2);
    expect(pkts).toHaveLength(2);
    for (const p of pkts) {
      expect(p.vni).toBe(42);
      expect(p.udpDst).toBe(8472);
      expect([p.innerSrc, p.innerDst].sort()).toEqual([a.ip, b.ip].sort());
    }
  });
});

describe("lab: teardown and leftovers", () => {
  it("teardown ends processes and removes every namespace, idempotently", async () => {
    const lab = await Lab.build({ nodes: [{ overlay: "kernel", pods: 1 }, { overlay: "vxmesh", pods: 1 }] });
    const prefix = lab.prefix;
    try {
      const tracked = lab.spawn(lab.node("n1"), ["sleep", "300"]);
      // An untracked process too, as a daemon's child would be.
      const untracked = spawnChild("ip", ["netns", "exec", lab.pods[0]!.namespace, "sleep", "300"], { stdio: "ignore" });
      const pids = [tracked.pid, untracked.pid].filter((p): p is number => p !== undefined);
      expect(pids).toHaveLength(2);
      await waitFor(async () => (await exec(lab.pods[0]!, ["true"])).code === 0, { what: "pod namespace usable" });
      await lab.teardown();
      await lab.teardown();
      expect(lab.tornDown).toBe(true);
      const alive = (pid: number): boolean => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      };
      await waitFor(() => pids.every((p) => !alive(p)), { timeoutMs: 5000, what: "lab processes to end" });
      expect(tracked.exitCode !== null || tracked.signalCode !== null).toBe(true);
    } finally {
      await lab.teardown();
    }
    expect((await listNetns()).filter((n) => n.startsWith(prefix))).toEqual([]);
  });

  it("a build that fails midway leaves no namespace behind", async () => {
    const before = (await listNetns()).filter((n) => n.startsWith(`vxm${process.pid}x`));
    await expect(
      Lab.build({ nodes: [{ overlay: "kernel", pods: 2 }, { overlay: "kernel", pods: 1, subnet: "10.244.1.0/24" }] }),
    ).rejects.toThrow(/overlaps/);
    const after = (await listNetns()).filter((n) => n.startsWith(`vxm${process.pid}x`));
    expect(after).toEqual(before);
  });

  it("Lab.create removes leftovers of a dead run, and their processes", async () => {
    const dead = spawnSync("true");
    const deadPid = dead.pid;
    expect(deadPid).toBeGreaterThan(0);
    const stale = `vxm${deadPid}x1-ul`;
    expect(stale).toMatch(LAB_NS_PATTERN);
    expect(spawnSync("ip", ["netns", "add", stale]).status).toBe(0);
    const squatter = spawnChild("ip", ["netns", "exec", stale, "sleep", "300"], { stdio: "ignore" });
    const squatterExit = new Promise<void>((resolve) => squatter.once("exit", () => resolve()));
    let lab: Lab | undefined;
    try {
      await waitFor(
        () => {
          const pids = spawnSync("ip", ["netns", "pids", stale], { encoding: "utf8" }).stdout.split(/\s+/);
          return squatter.pid !== undefined && pids.includes(String(squatter.pid));
        },
        { what: "a process in the stale namespace" },
      );
      lab = await Lab.create();
      expect(await listNetns()).not.toContain(stale);
      await squatterExit;
      expect(squatter.exitCode !== null || squatter.signalCode !== null).toBe(true);
    } finally {
      await lab?.teardown();
      spawnSync("ip", ["netns", "del", stale]);
      if (squatter.exitCode === null && squatter.signalCode === null) squatter.kill("SIGKILL");
    }
  });
});
