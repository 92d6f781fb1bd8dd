// `vxmesh status` and `vxmesh trace` against real daemons in the namespace lab (issue 6):
// two gossip nodes with a pod each; the CLI runs inside n1's namespace, as an operator on that
// node would run it, and talks to n1's daemon over its control socket.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, cliPath } from "../bench/cluster";
import { Lab, execOk, waitFor, type ExecResult, type LabNode } from "../bench/lab";
import type { DaemonStatus } from "../daemon/status";
import type { TraceRecord } from "../daemon/trace";

let lab: Lab;
let cluster: Cluster;

function n(name: string): LabNode {
  return lab.node(name);
}

/** `vxmesh <args>` inside n1's namespace. */
function cli(args: readonly string[]): Promise<ExecResult> {
  return lab.exec(n("n1"), [process.execPath, cliPath(), ...args], { timeoutMs: 20_000 });
}

async function trace(ip: string): Promise<{ code: number | null; record: TraceRecord }> {
  const r = await cli(["trace", ip, "--run-dir", cluster.daemon("n1").runDir, "--json"]);
  expect(r.stderr, "trace --json prints nothing on stderr").toBe("");
  return { code: r.code, record: JSON.parse(r.stdout) as TraceRecord };
}

function status(): Promise<DaemonStatus> {
  return cluster.daemon("n1").status();
}

beforeAll(async () => {
  lab = await Lab.build({ nodes: [{ pods: 1 }, { pods: 1 }] });
  cluster = new Cluster(lab);
  await cluster.start(n("n1"), { gossip: { seed: n("n1") } });
  await cluster.start(n("n2"), { gossip: { seed: n("n1") } });
  await waitFor(async () => (await status()).peers.some((p) => p.name === "n2"), { timeoutMs: 20_000, what: "n1 to route to n2" });
});

afterAll(async () => {
  try { await cluster?.stopAll(); } finally { await lab?.teardown(); }
});

describe("vxmesh trace", () => {
  it("a remote pod IP: names the owner, its underlay address and VTEP MAC, route and neighbour present", async () => {
    const l = lab;
    expect(await l.ping(n("n1").pods[0]!, n("n2").pods[0]!.ip, { count: 2 })).toBe(true);
    // n1 hears from n2 directly once a probe of n2 is answered (every probe interval, 1 s here).
    let t: TraceRecord | undefined;
    await waitFor(async () => {
      const r = await trace(n("n2").pods[0]!.ip);
      t = r.record;
      expect(r.code).toBe(0);
      return t.owner?.lastHeard.secondsAgo !== null;
    }, { timeoutMs: 20_000, what: "n1 to have heard from n2 directly" });
    const rec = t as TraceRecord;
    expect(rec.verdict).toBe("remote");
    expect(rec.owner).toMatchObject({
      name: "n2", subnet: n("n2").subnet, underlayIp: n("n2").underlayIp, vtepMac: n("n2").vtepMac, state: "alive",
      lastHeard: { from: "gossip" },
    });
    expect(rec.owner?.lastHeard.secondsAgo).toBeGreaterThanOrEqual(0);
    expect(rec.kernel.route?.state).toBe("present");
    expect(rec.kernel.neighbour?.state).toBe("present");
    expect(rec.kernel.uses).toBe(`${n("n2").subnet} via ${n("n2").subnetNetwork} dev vxmesh0 onlink proto 118`);
    expect(rec.encap).toEqual({ udpDstPort: n("n1").port, vni: n("n1").vni, underlayDst: n("n2").underlayIp });
    expect(rec.mtu).toMatchObject({ tap: n("n1").overlayMtu, underlayDevice: n("n1").underlayIf, underlayDeviceMtu: n("n1").underlayMtu, innerFits: n("n1").overlayMtu });
    // The pings went out to n2 and their replies came back from it.
    expect(rec.peerTraffic?.txFrames).toBeGreaterThanOrEqual(2);
    expect(rec.peerTraffic?.rxFrames).toBeGreaterThanOrEqual(2);
    expect(rec.drops.scope).toBe("node-wide");
    expect(rec.problems).toEqual([]);

    const text = await cli(["trace", n("n2").pods[0]!.ip, "--run-dir", cluster.daemon("n1").runDir]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`is on n2 (${n("n2").subnet})`);
    expect(text.stdout).toMatch(/^route +PRESENT/m);
    expect(text.stdout).toMatch(/^neighbour +PRESENT/m);
  });

  it("a foreign route in the way: ours shows missing and the kernel's route is named; removed, ours is repaired", async () => {
    const subnet = n("n2").subnet;
    const foreign = [subnet, "via", n("n2").underlayIp, "dev", n("n1").underlayIf, "proto", "static"];
    // Someone else's route replaces ours: the daemon never touches it, so this holds still.
    await execOk(n("n1"), ["ip", "route", "replace", ...foreign]);
    try {
      const { code, record } = await trace(n("n2").pods[0]!.ip);
      expect(code).toBe(0);
      expect(record.kernel.route?.state).toBe("missing");
      expect(record.kernel.uses).toBe(`${subnet} via ${n("n2").underlayIp} dev ${n("n1").underlayIf} proto static`);
      expect(record.problems.join("\n")).toContain(`the route ${subnet} via ${n("n2").subnetNetwork} dev vxmesh0 onlink proto 118 is missing`);
      expect(record.problems.join("\n")).toContain(`not through vxmesh0`);
    } finally {
      await execOk(n("n1"), ["ip", "route", "del", ...foreign]);
    }
    await waitFor(async () => (await trace(n("n2").pods[0]!.ip)).record.kernel.route?.state === "present",
      { timeoutMs: 30_000, what: "n1 to put its route back" });
  });

  it("a route deleted by hand is reported missing or already repaired, and the repair is counted", async () => {
    const before = (await status()).kernelChanges?.repair.route.added ?? 0;
    await execOk(n("n1"), ["ip", "route", "del", n("n2").subnet, "proto", "118"]);
    // The daemon repairs on the netlink event: the trace may come before or after it.
    const first = (await trace(n("n2").pods[0]!.ip)).record;
    expect(["missing", "present"]).toContain(first.kernel.route?.state);
    if (first.kernel.route?.state === "missing") expect(first.problems.join("\n")).toMatch(/is missing from the kernel/);
    await waitFor(async () => (await trace(n("n2").pods[0]!.ip)).record.kernel.route?.state === "present",
      { timeoutMs: 30_000, what: "n1 to repair its route" });
    await waitFor(async () => ((await status()).kernelChanges?.repair.route.added ?? 0) > before,
      { timeoutMs: 10_000, what: "the repair to be counted" });
  });

  it("a local pod IP says local", async () => {
    const { code, record } = await trace(n("n1").pods[0]!.ip);
    expect(code).toBe(0);
    expect(record.verdict).toBe("local");
    expect(record.summary).toBe(`${n("n1").pods[0]!.ip} is local: in this node's subnet ${n("n1").subnet} (n1)`);
  });

  it("an IP nobody owns, or outside the cluster, exits 1 with a clear answer", async () => {
    const unowned = await trace("10.244.250.7");
    expect(unowned.code).toBe(1);
    expect(unowned.record.verdict).toBe("unowned");
    const outside = await cli(["trace", "10.99.0.1", "--run-dir", cluster.daemon("n1").runDir]);
    expect(outside.code).toBe(1);
    expect(outside.stdout).toContain("10.99.0.1 is not in the cluster's pod network 10.244.0.0/16");
  });

  it("a bad IP exits 2; no daemon on the socket exits 1 naming the socket", async () => {
    const bad = await cli(["trace", "10.244.1.300", "--run-dir", cluster.daemon("n1").runDir]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe('vxmesh trace: pod IP "10.244.1.300" is not valid: expected a dotted-quad IPv4 address with octets 0-255\n');
    const none = await cli(["trace", "10.244.2.5", "--run-dir", "/nonexistent-vxmesh-run"]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("no vxmesh daemon is listening on /nonexistent-vxmesh-run/vxmesh.sock");
  });
});

describe("vxmesh status", () => {
  it("shows members, subnets, the kernel routes it owns and counters, as text and JSON", async () => {
    const runDir = cluster.daemon("n1").runDir;
    const json = await cli(["status", "--run-dir", runDir, "--json"]);
    expect(json.code).toBe(0);
    const s = JSON.parse(json.stdout) as DaemonStatus;
    expect(s.subnet).toBe(n("n1").subnet);
    expect(s.kernel?.routes).toEqual([`${n("n2").subnet} via ${n("n2").subnetNetwork} dev vxmesh0 onlink`]);
    expect(s.kernel?.neighbours).toEqual([`${n("n2").subnetNetwork} lladdr ${n("n2").vtepMac}`]);
    expect(s.kernel?.drift).toEqual({ missingRoutes: [], unexpectedRoutes: [], missingOrWrongNeighbours: [], unexpectedNeighbours: [] });
    expect(s.peers).toEqual([expect.objectContaining({ name: "n2", subnet: n("n2").subnet, traffic: expect.objectContaining({ txFrames: expect.any(Number) }) })]);
    expect(s.counters["tap_rx_frames"]).toBeGreaterThan(0);
    expect(s.batchSizes?.tap.count).toBeGreaterThan(0);

    const text = await cli(["status", "--run-dir", runDir]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^members:/m);
    expect(text.stdout).toMatch(new RegExp(`^  n2 +alive +${n("n2").underlayIp.replace(/\./g, "\\.")} +${n("n2").subnet.replace(/\./g, "\\.")} +${n("n2").vtepMac}`, "m"));
    expect(text.stdout).toContain("routes (kernel, proto 118, dev vxmesh0):");
    expect(text.stdout).toContain(`  ${n("n2").subnet} via ${n("n2").subnetNetwork} dev vxmesh0 onlink`);
    expect(text.stdout).toContain("kernel state: as wanted");
    expect(text.stdout).toMatch(/^counters \(mean batch: tap \d/m);
  });
});
