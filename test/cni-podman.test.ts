// A real container runtime drives vxmesh-cni: Debian's podman (CNI backend, runc) on two lab
// nodes, each with a real vxmesh daemon, through the conflist `vxmesh install-cni` wrote on that
// node (the real CLI), with the reference plugins beside the shim so chained ones (portmap) are
// found. Containers get addresses from their node's subnet and reach each other across nodes;
// `podman rm -f`, `podman run --rm` and a container exiting on its own free the address and the
// veth; the daemons are stopped and started again under running containers (a DEL while they are
// down is queued and completed afterwards); a hostPort reaches a container from the other node.
// The last test removes everything and checks that nothing is left: namespaces, podman's netns
// mounts, processes, mounts, cgroups.

import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, cliPath } from "../bench/cluster";
import { Lab, listNetns, waitFor, type LabNode } from "../bench/lab";
import { hostVethName } from "../cni/handler";
import {
  BUSYBOX_IMAGE, PodmanNode, cgroupDirs, cgroupParentFor, cleanupPodmanLeftovers, mountsUnder, podmanVersions, processesOf,
  type ContainerInfo,
} from "../bench/podman-kit";

const execFileP = promisify(execFile);
const REFERENCE_PLUGINS = "/usr/lib/cni";
const NETWORK = "vxmesh";
const HOST_PORT = 18080;
/** GET process.argv[1] (argv[1] under `node -e`), body to stdout, exit 1 on any failure or non-200. */
const HTTP_GET = `const req = require("http").get(process.argv[1], { timeout: 2000 }, (r) => {
  if (r.statusCode !== 200) process.exit(1);
  r.pipe(process.stdout);
});
req.on("timeout", () => req.destroy(new Error("timeout")));
req.on("error", () => process.exit(1));`;

interface PodmanLabNode {
  lab: LabNode;
  podman: PodmanNode;
  stateDir: string;
  conflist: Record<string, unknown>;
}

let lab: Lab | undefined;
let cluster: Cluster | undefined;
const nodes: PodmanLabNode[] = [];
let netnsBefore = new Set<string>();

async function removeAll(): Promise<void> {
  // podman first, while the node namespaces exist (its DELs run there), then daemons, then the lab.
  for (const n of nodes) await n.podman.cleanup().catch(() => undefined);
  await cluster?.stopAll().catch(() => undefined);
  await lab?.teardown();
}

afterAll(async () => {
  await removeAll();
}, 180_000);

function node(i: number): PodmanLabNode {
  const n = nodes[i];
  if (n === undefined) throw new Error(`no node ${i}`);
  return n;
}

function addressDir(n: PodmanLabNode): string {
  return join(n.stateDir, "cni", "addresses");
}

/** The reservation file of `ip` on node `n`, parsed; undefined when there is none. */
function reservation(n: PodmanLabNode, ip: string): { containerID: string; ifname: string } | undefined {
  const f = join(addressDir(n), ip);
  if (!existsSync(f)) return undefined;
  return JSON.parse(readFileSync(f, "utf8")) as { containerID: string; ifname: string };
}

async function linkNames(ns: string): Promise<string[]> {
  const { stdout } = await execFileP("ip", ["-n", ns, "-j", "link", "show"], { encoding: "utf8" });
  return (JSON.parse(stdout) as { ifname: string }[]).map((x) => x.ifname);
}

function inSubnet(ip: string, subnet: string): boolean {
  // The lab's subnets are /24s.
  return ip.startsWith(subnet.split(".").slice(0, 3).join(".") + ".");
}

function vxmeshIp(c: ContainerInfo): string {
  const net = c.networks[NETWORK];
  if (net === undefined) throw new Error(`container ${c.name} has no ${NETWORK} network: ${JSON.stringify(c.networks)}`);
  return net.ip;
}

/** The IPv4 address of eth0 as the container itself sees it. */
async function addressInside(n: PodmanLabNode, container: string): Promise<string> {
  const r = await n.podman.exec(container, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
  const m = /inet (\d+\.\d+\.\d+\.\d+)\/(\d+)/.exec(r.stdout);
  if (r.code !== 0 || m === null) throw new Error(`ip addr in ${container}: ${r.stdout}${r.stderr}`);
  return `${m[1] ?? ""}/${m[2] ?? ""}`;
}

/** One echo request from inside a container (busybox ping), answered within a second. */
async function pingFrom(n: PodmanLabNode, container: string, ip: string): Promise<boolean> {
  const r = await n.podman.exec(container, ["ping", "-c", "1", "-W", "1", ip], { timeoutMs: 10_000 });
  return r.code === 0;
}

/** Pings until one is answered; false only when none is within the deadline (a loaded CI machine). */
function reaches(n: PodmanLabNode, container: string, ip: string, timeoutMs = 10_000): Promise<boolean> {
  return waitFor(() => pingFrom(n, container, ip), { timeoutMs, intervalMs: 200, what: `${ip} from ${container.slice(0, 12)}` }).catch(() => false);
}

describe("podman drives vxmesh-cni on two daemon nodes", () => {
  const long: { n: number; c: ContainerInfo; ip: string; cidr: string }[] = [];

  beforeAll(async () => {
    cleanupPodmanLeftovers();
    netnsBefore = new Set(await listNetns());
    lab = await Lab.build({ nodes: [{}, {}] });
    cluster = new Cluster(lab);
    await cluster.startAll();
    const l = lab;
    for (const n of l.nodes) {
      // The lab makes the bridge for its own pods; here the CNI handler must make it.
      await execFileP("ip", ["-n", n.namespace, "link", "del", n.bridge]);
      const daemon = cluster.daemon(n.name);
      const stateDir = cluster.stateDirOf(n);
      const nodeDir = join(l.workDir(), `podman-${n.name}`);
      const binDir = join(nodeDir, "bin");
      const confDir = join(nodeDir, "net.d");
      // The reference plugins next to the shim, as on a node where both live in /opt/cni/bin:
      // install-cni chains portmap when it finds it there.
      mkdirSync(binDir, { recursive: true });
      for (const p of readdirSync(REFERENCE_PLUGINS)) symlinkSync(join(REFERENCE_PLUGINS, p), join(binDir, p));
      await execFileP(process.execPath, [cliPath(), "install-cni", "--bin-dir", binDir, "--conf-dir", confDir,
        "--run-dir", daemon.runDir, "--state-dir", stateDir], { encoding: "utf8" });
      const confFile = join(confDir, "10-vxmesh.conflist");
      const conflist = JSON.parse(readFileSync(confFile, "utf8")) as Record<string, unknown>;
      const podman = await PodmanNode.create({
        namespace: n.namespace, dir: join(nodeDir, "podman"), pluginDirs: [binDir], networkConfigDir: confDir,
        cgroupParent: cgroupParentFor(l.prefix, n.name),
      });
      nodes.push({ lab: n, podman, stateDir, conflist });
      await podman.importBusybox();
    }
    const v = await podmanVersions();
    console.log(`podman ${v.podman}, libcni ${v.libcni}, storage driver ${node(0).podman.driver}`);
  }, 180_000);

  it("podman sees the network install-cni wrote, with a cniVersion its libcni parses", async () => {
    for (const n of nodes) {
      expect(n.conflist["cniVersion"]).toBe("1.0.0");
      const r = await n.podman.podmanOk(["network", "inspect", NETWORK]);
      const info = JSON.parse(r.stdout) as { name: string; driver: string }[];
      expect(info[0]?.name).toBe(NETWORK);
      expect(info[0]?.driver).toBe("vxmesh-cni");
    }
  });

  it("containers get addresses from their node's subnet, as podman, the container and the address store say", async () => {
    for (const [i, n] of nodes.entries()) {
      for (const k of [1, 2]) {
        const c = await n.podman.runDetached(["--name", `c${k}`, "--network", NETWORK, BUSYBOX_IMAGE, "sleep", "3600"]);
        const ip = vxmeshIp(c);
        expect(inSubnet(ip, n.lab.subnet), `${ip} in ${n.lab.subnet}`).toBe(true);
        expect(c.networks[NETWORK]?.gateway).toBe(n.lab.gateway);
        const cidr = await addressInside(n, c.id);
        expect(cidr).toBe(`${ip}/24`);
        expect(reservation(n, ip)).toMatchObject({ containerID: c.id, ifname: "eth0" });
        expect(await linkNames(n.lab.namespace)).toContain(hostVethName(c.id, "eth0"));
        long.push({ n: i, c, ip, cidr });
      }
    }
    expect(new Set(long.map((x) => x.ip)).size).toBe(4);
  }, 120_000);

  it("a container on node 1 pings one on node 2 and back", async () => {
    const [a, b] = [long.find((x) => x.n === 0), long.find((x) => x.n === 1)];
    if (a === undefined || b === undefined) throw new Error("no containers");
    expect(await reaches(node(0), a.c.id, b.ip)).toBe(true);
    expect(await reaches(node(1), b.c.id, a.ip)).toBe(true);
    // Every container on one node reaches every container on the other.
    const pairs = long.flatMap((x) => long.filter((y) => y.n !== x.n).map((y) => ({ x, y })));
    const failed: string[] = [];
    await Promise.all(pairs.map(async ({ x, y }) => {
      if (!(await reaches(node(x.n), x.c.id, y.ip))) failed.push(`${x.c.name}@n${x.n + 1} → ${y.ip}`);
    }));
    expect(failed).toEqual([]);
  }, 60_000);

  it("podman rm -f frees the address and removes the veth", async () => {
    const n = node(0);
    const c = await n.podman.runDetached(["--name", "gone", "--network", NETWORK, BUSYBOX_IMAGE, "sleep", "3600"]);
    const ip = vxmeshIp(c);
    expect(reservation(n, ip)).toMatchObject({ containerID: c.id });
    await n.podman.podmanOk(["rm", "-f", "-t", "0", c.id]);
    // podman rm returns after its CNI DEL: nothing to wait for.
    expect(existsSync(join(addressDir(n), ip))).toBe(false);
    expect(await linkNames(n.lab.namespace)).not.toContain(hostVethName(c.id, "eth0"));
    expect(existsSync(c.sandboxKey)).toBe(false);
  }, 60_000);

  it("--ip and --mac-address are honoured, a taken address is refused, and podman network reload keeps the address", async () => {
    const n = node(1);
    const ip = n.lab.subnet.replace(/\.0\/24$/, ".77");
    const mac = "02:00:0a:f4:02:4d";
    const c = await n.podman.runDetached(["--name", "fixed", "--network", NETWORK, "--ip", ip, "--mac-address", mac, BUSYBOX_IMAGE, "sleep", "3600"]);
    expect(vxmeshIp(c)).toBe(ip);
    expect(c.networks[NETWORK]?.mac).toBe(mac);
    expect(await addressInside(n, c.id)).toBe(`${ip}/24`);
    expect(reservation(n, ip)).toMatchObject({ containerID: c.id, ifname: "eth0" });

    // Another container asking for the same address: refused, in podman's own error, nothing left.
    const taken = await n.podman.run(["--rm", "--network", NETWORK, "--ip", ip, BUSYBOX_IMAGE, "true"]);
    expect(taken.code).not.toBe(0);
    expect(taken.stderr).toContain(`requested address ${ip} is in use`);
    expect(reservation(n, ip)).toMatchObject({ containerID: c.id });

    // What podman does on a firewall reload: DEL, then ADD with IP= and MAC= of the running container.
    await n.podman.podmanOk(["network", "reload", c.id]);
    const after = await n.podman.inspect(c.id);
    expect(vxmeshIp(after)).toBe(ip);
    expect(after.networks[NETWORK]?.mac).toBe(mac);
    expect(await addressInside(n, c.id)).toBe(`${ip}/24`);
    const other = long.find((x) => x.n === 0);
    if (other === undefined) throw new Error("no container on node 1");
    expect(await reaches(n, c.id, other.ip)).toBe(true);
    await n.podman.podmanOk(["rm", "-f", "-t", "0", c.id]);
    expect(reservation(n, ip)).toBeUndefined();
  }, 60_000);

  it("a podman run --rm container that exits is cleaned up: its veth and address are gone", async () => {
    const n = node(1);
    const r = await n.podman.run(["--rm", "--network", NETWORK, BUSYBOX_IMAGE, "ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    expect(r.code, r.stderr).toBe(0);
    const ip = /inet (\d+\.\d+\.\d+\.\d+)\//.exec(r.stdout)?.[1];
    expect(ip, r.stdout).toBeDefined();
    expect(inSubnet(ip ?? "", n.lab.subnet)).toBe(true);
    expect(r.id).not.toBe("");
    expect(existsSync(join(addressDir(n), ip ?? ""))).toBe(false);
    expect(await linkNames(n.lab.namespace)).not.toContain(hostVethName(r.id, "eth0"));
    expect((await n.podman.podmanOk(["ps", "-aq", "--no-trunc"])).stdout).not.toContain(r.id);
  }, 60_000);

  it("a detached container that exits on its own is cleaned up by conmon's cleanup command", async () => {
    const n = node(0);
    // It prints its address and exits; podman run -d returns once it has started.
    const r = await n.podman.run(["-d", "--network", NETWORK, BUSYBOX_IMAGE, "ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    expect(r.code, r.stderr).toBe(0);
    const ip = await waitFor(async () => {
      const logs = await n.podman.podmanOk(["logs", r.id]);
      return /inet (\d+\.\d+\.\d+\.\d+)\//.exec(logs.stdout)?.[1];
    }, { timeoutMs: 20_000, what: "the exited container's output" });
    expect(inSubnet(ip, n.lab.subnet)).toBe(true);
    await waitFor(async () => !existsSync(join(addressDir(n), ip)) && !(await linkNames(n.lab.namespace)).includes(hostVethName(r.id, "eth0")),
      { timeoutMs: 30_000, what: `conmon's cleanup to free ${ip} and remove the veth of ${r.id.slice(0, 12)}` });
    const state = await n.podman.podmanOk(["inspect", "--format", "{{.State.Status}}", r.id]);
    expect(state.stdout.trim()).toBe("exited");
    await n.podman.podmanOk(["rm", r.id]);
  }, 60_000);

  it("the daemons stop and start again under running containers: addresses kept, traffic returns, a DEL made meanwhile is completed", async () => {
    const c = cluster as Cluster;
    const [a, b] = [long.find((x) => x.n === 0), long.find((x) => x.n === 1)];
    const gone = long.find((x) => x.n === 0 && x !== a);
    if (a === undefined || b === undefined || gone === undefined) throw new Error("no containers");
    for (const n of nodes) expect(await c.daemon(n.lab.name).stop()).toBe(0);

    // The overlay is down: the TAP and the routes left with the daemon.
    expect(await pingFrom(node(0), a.c.id, b.ip)).toBe(false);
    // A new container cannot be wired now (ADD: try again later) ...
    const refused = await node(1).podman.run(["--rm", "--network", NETWORK, BUSYBOX_IMAGE, "true"]);
    expect(refused.code).not.toBe(0);
    console.log(`podman run while the daemon is down: exit ${String(refused.code)}: ${refused.stderr.trim()}`);
    // ... but a removal succeeds: the shim queues the DEL for the daemon.
    await node(0).podman.podmanOk(["rm", "-f", "-t", "0", gone.c.id]);
    long.splice(long.indexOf(gone), 1);
    expect(reservation(node(0), gone.ip)).toBeDefined();

    for (const n of nodes) await c.start(n.lab);
    await waitFor(async () => (await pingFrom(node(0), a.c.id, b.ip)) && (await pingFrom(node(1), b.c.id, a.ip)),
      { timeoutMs: 30_000, intervalMs: 200, what: "cross-node pings after the daemons restarted" });
    for (const x of long) {
      const n = node(x.n);
      expect(vxmeshIp(await n.podman.inspect(x.c.id))).toBe(x.ip);
      expect(await addressInside(n, x.c.id)).toBe(x.cidr);
      expect(reservation(n, x.ip)).toMatchObject({ containerID: x.c.id });
    }
    await waitFor(async () => reservation(node(0), gone.ip) === undefined && !(await linkNames(node(0).lab.namespace)).includes(hostVethName(gone.c.id, "eth0")),
      { timeoutMs: 20_000, what: `the queued DEL of ${gone.c.name} to free ${gone.ip}` });
    // And the runtime still works against the restarted daemon.
    // (busybox ping exits 0 when any of its requests is answered)
    const again = await node(1).podman.run(["--rm", "--network", NETWORK, BUSYBOX_IMAGE, "ping", "-c", "3", "-W", "2", a.ip]);
    expect(again.code, again.stdout + again.stderr).toBe(0);
  }, 120_000);

  it("a hostPort on node 1 is reached from node 2 and from a container on node 2 at node 1's underlay address (portmap chained by install-cni)", async () => {
    const plugins = (node(0).conflist["plugins"] as { type: string; capabilities?: Record<string, boolean> }[]).map((p) => p.type);
    expect(plugins, "install-cni chains portmap when it is in --bin-dir").toContain("portmap");
    const n1 = node(0);
    const token = `vxmesh-hostport-${process.pid}`;
    const web = await n1.podman.runDetached(["--name", "web", "--network", NETWORK, "-p", `${HOST_PORT}:80`, BUSYBOX_IMAGE,
      "sh", "-c", `echo ${token} > /www/index.html && exec httpd -f -p 80 -h /www`]);
    expect(inSubnet(vxmeshIp(web), n1.lab.subnet)).toBe(true);
    const url = `http://${n1.lab.underlayIp}:${HOST_PORT}/index.html`;
    // From node 2's own namespace, with node's HTTP client (busybox-static's wget crashes on
    // Debian 12, in a container too).
    const body = await waitFor(async () => {
      const r = await (lab as Lab).exec(node(1).lab.namespace, [process.execPath, "-e", HTTP_GET, url], { timeoutMs: 10_000 });
      return r.code === 0 ? r.stdout : undefined;
    }, { timeoutMs: 20_000, intervalMs: 200, what: `${url} from node 2` });
    expect(body.trim()).toBe(token);
    // And from a container on node 2: its request leaves node 2 masqueraded (--ip-masq, node 1's
    // underlay address is outside the cluster), so node 1's answer comes back on the underlay,
    // not over the overlay with a source node 2 would drop as spoofed.
    const client = long.find((x) => x.n === 1);
    if (client === undefined) throw new Error("no container on node 2");
    const request = `printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc ${n1.lab.underlayIp} ${HOST_PORT}`;
    const fromPod = await waitFor(async () => {
      const r = await node(1).podman.exec(client.c.id, ["sh", "-c", request], { timeoutMs: 10_000 });
      return r.code === 0 && r.stdout.includes(token) ? r.stdout : undefined;
    }, { timeoutMs: 20_000, intervalMs: 200, what: `${url} from a container on node 2` });
    expect(fromPod).toContain(token);
    await n1.podman.podmanOk(["rm", "-f", "-t", "0", web.id]);
    expect(existsSync(join(addressDir(n1), vxmeshIp(web)))).toBe(false);
  }, 60_000);

  it("removing everything leaves no namespace, netns mount, process, mount or cgroup behind", async () => {
    const l = lab as Lab;
    const work = l.workDir();
    const seen = nodes.map((n) => n.podman.seen);
    const cgroups = nodes.map((n) => n.podman.cgroupParent);
    const dirs = nodes.map((n) => n.podman.dir);
    const reports = [];
    for (const n of nodes) reports.push(await n.podman.cleanup());
    // podman removed its containers itself: nothing had to be killed, no netns mount was left.
    for (const r of reports) {
      expect(r.errors).toEqual([]);
      expect(r.killed).toEqual([]);
      expect(r.netns).toEqual([]);
    }
    await removeAll();
    const netns = await listNetns();
    expect(netns.filter((n) => n.startsWith(l.prefix))).toEqual([]);
    // podman names its netns mounts netns-<uuid>; no other test makes them (other test files run
    // at the same time and make namespaces of their own, so only podman's are compared).
    expect(netns.filter((n) => n.startsWith("netns-") && !netnsBefore.has(n))).toEqual([]);
    for (const s of seen) for (const key of s.sandboxKeys) expect(existsSync(key), key).toBe(false);
    expect(mountsUnder(work)).toEqual([]);
    expect(existsSync(work)).toBe(false);
    for (const [i, d] of dirs.entries()) expect(processesOf(d, cgroups[i] ?? "")).toEqual([]);
    for (const p of cgroups) expect(cgroupDirs(p)).toEqual([]);
    for (const s of seen) for (const id of s.containerIds) expect(existsSync(join("/run/runc", id)), id).toBe(false);
  }, 180_000);
});
