// Least privilege with real daemons in the lab: after set-up every thread of the daemon holds
// only the capabilities it kept (read from /proc/<pid>/task/*/status, the kernel's own account),
// no_new_privs is set, the overlay still carries pod traffic, and the CNI handler still enters
// pod namespaces when CAP_SYS_ADMIN is kept (and cannot when it is not: that is why it is kept).
// A daemon runs as nobody (uid 65534) with only ambient CAP_NET_ADMIN, pods ping across nodes,
// and SIGTERM removes what it made. Without CAP_NET_ADMIN it refuses to start and leaves nothing.

import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type DaemonProcess } from "../bench/cluster";
import { Lab, waitFor, type LabNode } from "../bench/lab";
import { CniNode, addPodNs } from "../bench/cni-testkit";
import { CAP_NET_ADMIN, CAP_SYS_ADMIN, capNames, readThreadCaps, threadsNotAt } from "../daemon/capabilities";

const NOBODY = 65534;

async function waitForLog(d: DaemonProcess, text: string): Promise<void> {
  await waitFor(() => d.log.includes(text) || !d.running, { timeoutMs: 20_000, intervalMs: 50, what: `"${text}" in the log of the daemon on ${d.node.name}` });
  if (!d.log.includes(text)) throw new Error(`the daemon on ${d.node.name} exited before logging "${text}":\n${d.log}`);
}

function pidOf(d: DaemonProcess): number {
  const pid = d.child.pid;
  if (pid === undefined) throw new Error(`the daemon on ${d.node.name} has no pid`);
  return pid;
}

/** The log line "capabilities dropped" as JSON. */
function dropLine(d: DaemonProcess): { kept: string[]; bounding: string[]; threads: number } {
  const line = d.log.split("\n").find((l) => l.includes("\"capabilities dropped\""));
  if (line === undefined) throw new Error(`no "capabilities dropped" line in:\n${d.log}`);
  return JSON.parse(line) as { kept: string[]; bounding: string[]; threads: number };
}

async function podsPing(lab: Lab, a: LabNode, b: LabNode): Promise<void> {
  const from = a.pods[0];
  const to = b.pods[0];
  if (from === undefined || to === undefined) throw new Error("the lab nodes have no pods");
  // The first packets may race the daemons' programming: wait for a reply, then ask for three.
  await waitFor(() => lab.ping(from, to.ip, { count: 1, timeoutMs: 1000 }), { timeoutMs: 20_000, intervalMs: 200, what: `${from.name} → ${to.ip}` });
  expect(await lab.ping(from, to.ip, { count: 3 }), `${from.name} → ${to.name} (${to.ip})`).toBe(true);
  expect(await lab.ping(to, from.ip, { count: 3 }), `${to.name} → ${from.name} (${from.ip})`).toBe(true);
}

describe("root daemons drop to the kept set on every thread", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ pods: 1 }, { pods: 1 }, {}] });
    cluster = new Cluster(lab);
    const [n1, n2, n3] = lab.nodes as [LabNode, LabNode, LabNode];
    await cluster.start(n1);
    await cluster.start(n2, { extraArgs: ["--keep-caps", "net_admin"] });
    // As the Kubernetes manifest starts it: uid 0, capabilities drop ALL + add NET_ADMIN, SYS_ADMIN
    // (the bounding set too), allowPrivilegeEscalation false (no_new_privs). No CAP_SETPCAP.
    await cluster.start(n3, { launcher: ["setpriv", "--bounding-set=-all,+net_admin,+sys_admin", "--inh-caps=-all", "--no-new-privs"] });
    for (const d of cluster.daemons.values()) await waitForLog(d, "capabilities dropped");
  }, 90_000);

  afterAll(async () => {
    await cluster?.stopAll().catch(() => undefined);
    await lab?.teardown();
  }, 60_000);

  it("auto keeps net_admin and sys_admin; every thread shows exactly that, nothing inheritable or ambient, no_new_privs", () => {
    const d = (cluster as Cluster).daemon("n1");
    const want = CAP_NET_ADMIN | CAP_SYS_ADMIN;
    const threads = readThreadCaps(pidOf(d));
    // Main thread, V8 platform workers, the SIGUSR1 watchdog, the forwarder and CNI workers.
    expect(threads.length).toBeGreaterThanOrEqual(8);
    expect(threadsNotAt(threads, { effective: want, permitted: want, bounding: want })).toEqual([]);
    expect(dropLine(d).kept).toEqual(["net_admin", "sys_admin"]);
    expect(dropLine(d).bounding).toEqual(["net_admin", "sys_admin"]);
  });

  it("started as Kubernetes does (no CAP_SETPCAP, bounding set already reduced), it ends up the same", () => {
    const d = (cluster as Cluster).daemon("n3");
    const want = CAP_NET_ADMIN | CAP_SYS_ADMIN;
    expect(threadsNotAt(readThreadCaps(pidOf(d)), { effective: want, permitted: want, bounding: want })).toEqual([]);
    expect(dropLine(d).kept).toEqual(["net_admin", "sys_admin"]);
    expect(d.log).not.toMatch(/bounding set still holds/);
  });

  it("--keep-caps net_admin leaves only net_admin, bounding set included", () => {
    const d = (cluster as Cluster).daemon("n2");
    const threads = readThreadCaps(pidOf(d));
    expect(threadsNotAt(threads, { effective: CAP_NET_ADMIN, permitted: CAP_NET_ADMIN, bounding: CAP_NET_ADMIN })).toEqual([]);
    expect(capNames(threads[0]?.bounding ?? 0n)).toEqual(["net_admin"]);
  });

  it("the overlay works after the drop: pods ping across nodes, threads started later inherit the kept set", async () => {
    const l = lab as Lab;
    await podsPing(l, l.node("n1"), l.node("n2"));
    for (const name of ["n1", "n2"]) {
      const d = (cluster as Cluster).daemon(name);
      for (const t of readThreadCaps(pidOf(d))) expect(t.noNewPrivs, `thread ${t.tid} of ${name}`).toBe(true);
    }
  });

  it("the CNI handler enters a pod namespace with sys_admin kept, and is refused without it", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const results: { node: string; code: number | null; out: string }[] = [];
    for (const name of ["n1", "n2", "n3"]) {
      const d = c.daemon(name);
      const node = CniNode.on(l, l.node(name).namespace, { subnet: l.node(name).subnet, external: { runDir: d.runDir, stateDir: join(dirname(d.runDir), `${name}-state`) } });
      const netns = await addPodNs(l, `${name}cnipod`);
      const r = await node.call({ command: "ADD", containerID: `lp-${name}`, netns, ifname: "eth0", timeoutMs: 30_000 });
      results.push({ node: name, code: r.code, out: r.stdout + r.stderr });
      const del = await node.call({ command: "DEL", containerID: `lp-${name}`, netns, ifname: "eth0", timeoutMs: 30_000 });
      expect(del.code, del.stdout + del.stderr).toBe(0);
    }
    expect(results[0]?.code, results[0]?.out).toBe(0);
    expect(results[2]?.code, results[2]?.out).toBe(0);
    expect(results[1]?.code, results[1]?.out).not.toBe(0);
    expect(results[1]?.out).toMatch(/not permitted \(EPERM\)/);
  }, 90_000);
});

describe("a daemon as nobody with only CAP_NET_ADMIN", () => {
  let lab: Lab | undefined;
  let cluster: Cluster | undefined;
  let tunNode = "";

  /**
   * /dev/net/tun is 0600 on this machine (0666 on a usual Debian): inside the daemon's own
   * mount namespace (`ip netns exec` makes one) a 0666 node of the same device is bound over
   * it, so the file mode does not stand in for the capability under test.
   */
  const launcher = (caps: boolean): string[] => [
    "sh", "-c", "mount --bind \"$0\" /dev/net/tun && exec \"$@\"", tunNode,
    "setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups",
    ...(caps ? ["--inh-caps=-all,+net_admin", "--ambient-caps=+net_admin", "--bounding-set=-all,+net_admin"] : ["--inh-caps=-all", "--bounding-set=-all"]),
  ];

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ pods: 1 }, { pods: 1 }, {}] });
    cluster = new Cluster(lab);
    tunNode = join(lab.workDir(), "tun");
    execFileSync("mknod", ["-m", "666", tunNode, "c", "10", "200"]);
    const [n1, n2] = lab.nodes as [LabNode, LabNode];
    const options = { launcher: launcher(true), dirOwner: { uid: NOBODY, gid: NOBODY } };
    await cluster.start(n1, options);
    await cluster.start(n2, options);
    for (const d of cluster.daemons.values()) await waitForLog(d, "capabilities dropped");
  }, 90_000);

  afterAll(async () => {
    await cluster?.stopAll().catch(() => undefined);
    await lab?.teardown();
  }, 60_000);

  it("runs as uid 65534 holding net_admin alone on every thread", () => {
    const d = (cluster as Cluster).daemon("n1");
    const pid = pidOf(d);
    expect(readFileSync(`/proc/${pid}/status`, "utf8")).toMatch(/^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
    const threads = readThreadCaps(pid);
    expect(threads.length).toBeGreaterThanOrEqual(8);
    // Inheritable and ambient too: iptables-nft-restore, which --ip-masq runs (on by default), gets it only that way.
    expect(threadsNotAt(threads, { effective: CAP_NET_ADMIN, permitted: CAP_NET_ADMIN, bounding: CAP_NET_ADMIN, ambient: CAP_NET_ADMIN })).toEqual([]);
    // No CAP_SYS_ADMIN to keep: the operator is told what that means for CNI.
    expect(d.log).toMatch(/without CAP_SYS_ADMIN the CNI handler cannot enter pod network namespaces/);
  });

  it("made the TAP and routes; pods on the two nodes ping each other", async () => {
    const l = lab as Lab;
    const n1 = l.node("n1");
    expect((await l.exec(n1, ["ip", "link", "show", "vxmesh0"])).code).toBe(0);
    expect((await l.exec(n1, ["ip", "route", "show", "proto", "118"])).stdout).toContain(l.node("n2").subnet);
    await podsPing(l, n1, l.node("n2"));
  });

  it("on SIGTERM removes the routes, neighbours, TAP and run-dir files it made", async () => {
    const l = lab as Lab;
    const d = (cluster as Cluster).daemon("n2");
    const n2 = l.node("n2");
    expect(await d.stop(10_000)).toBe(0);
    expect((await l.exec(n2, ["ip", "link", "show", "vxmesh0"])).code).not.toBe(0);
    expect((await l.exec(n2, ["ip", "route", "show", "proto", "118"])).stdout.trim()).toBe("");
    expect(readdirSync(d.runDir)).toEqual([]);
  }, 30_000);

  it("a DEL the shim (root) queued while it was down is completed by the daemon running as nobody", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const n2 = l.node("n2");
    const stopped = c.daemon("n2");
    expect(stopped.running).toBe(false);
    const stateDir = join(dirname(stopped.runDir), "n2-state");
    const node = CniNode.on(l, n2.namespace, { subnet: n2.subnet, external: { runDir: stopped.runDir, stateDir } });
    const del = await node.call({ command: "DEL", containerID: "lp-queued", netns: "/run/netns/gone", ifname: "eth0", timeoutMs: 30_000 });
    expect(del.code, del.stdout + del.stderr).toBe(0);
    const queued = join(stateDir, "cni", "del-queue", "lp-queued:eth0.json");
    // Root wrote it, but it belongs to the state dir's owner, so the daemon can read and remove it.
    expect(statSync(queued).uid).toBe(NOBODY);
    expect(statSync(dirname(queued)).uid).toBe(NOBODY);
    await c.start(n2, { launcher: launcher(true), dirOwner: { uid: NOBODY, gid: NOBODY } });
    await waitFor(() => !existsSync(queued), { timeoutMs: 20_000, intervalMs: 100, what: `${queued} to be completed` });
    expect(await c.daemon("n2").stop(10_000)).toBe(0);
  }, 60_000);

  it("without CAP_NET_ADMIN it exits 1 with a clear error and leaves nothing behind", async () => {
    const l = lab as Lab;
    const c = cluster as Cluster;
    const n3 = l.node("n3");
    await expect(c.start(n3, { launcher: launcher(false), dirOwner: { uid: NOBODY, gid: NOBODY } })).rejects.toThrow(/exited/);
    const d = c.daemon("n3");
    expect(await d.exited).toBe(1);
    expect(d.log).toMatch(/needs CAP_NET_ADMIN/);
    expect((await l.exec(n3, ["ip", "link", "show", "vxmesh0"])).code).not.toBe(0);
    expect((await l.exec(n3, ["ip", "route", "show", "proto", "118"])).stdout.trim()).toBe("");
    expect(existsSync(d.runDir) ? readdirSync(d.runDir) : []).toEqual([]);
  }, 30_000);
});
