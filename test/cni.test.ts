// The CNI plugin driven exactly as a container runtime drives it (docs/DESIGN.md §5, §7): the BUILT shim
// build/Release/vxmesh-cni is exec'd with the CNI environment and the configuration on stdin,
// in the node's network namespace; it talks over a real unix socket to the real CNI handler
// (bench/cni-harness.ts: the daemon's listenControl and protocol) running in that namespace; pods are
// real network namespaces. The reference bridge + host-local plugins (/usr/lib/cni) get the same
// calls for comparison. Everything lives in namespaces and directories of one lab, removed by
// its teardown also when a test fails.

import { execFile } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Lab } from "../bench/lab";
import { loadNative } from "../encap/native";
import { requestControl } from "../daemon/control-socket";
import { runInstallCni } from "../daemon/install-cni";
import { hostVethName } from "../cni/handler";
import { queuedDelPath } from "../cni/queue";
import { CniNode, REFERENCE_DIR, addPodNs, nsNameOf, referenceConfig, runPlugin, shapeOf, shim, type PluginRun } from "../bench/cni-testkit";

const execFileP = promisify(execFile);

async function ip(args: string[]): Promise<unknown[]> {
  const { stdout } = await execFileP("ip", args, { encoding: "utf8" });
  return stdout.trim() === "" ? [] : (JSON.parse(stdout) as unknown[]);
}

interface IpLink { ifname: string; address?: string; mtu: number; master?: string; operstate: string; flags: string[]; ifalias?: string; linkinfo?: { info_kind?: string; info_slave_data?: { hairpin?: boolean } } }
interface IpAddr { ifname: string; addr_info: { family: string; local: string; prefixlen: number }[] }
interface IpRoute { dst: string; gateway?: string; dev: string }

const links = (ns: string): Promise<IpLink[]> => ip(["-n", ns, "-d", "-j", "link", "show"]) as Promise<IpLink[]>;
const vethsOf = async (node: CniNode): Promise<string[]> => (await links(node.namespace)).map((l) => l.ifname).filter((n) => n.startsWith("vxp")).sort();
const reservations = (node: CniNode): string[] => {
  const dir = join(node.stateDir, "cni", "addresses");
  return existsSync(dir) ? readdirSync(dir).filter((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n)).sort() : [];
};

function result(r: PluginRun): { interfaces: { name: string; mac?: string; mtu?: number; sandbox?: string }[]; ips: { address: string; gateway?: string; interface?: number; version?: string }[]; routes: { dst: string; gw?: string }[]; dns: object; cniVersion: string } {
  expect(r.code, `exit status; stdout ${r.stdout} stderr ${r.stderr}`).toBe(0);
  return r.json as never;
}

function cniErr(r: PluginRun, code: number): { cniVersion?: string; code: number; msg: string; details?: string } {
  expect(r.code, `exit status; stdout ${r.stdout}`).toBe(1);
  expect(r.json, `stdout ${r.stdout}`).toBeDefined();
  expect(r.json?.["code"], `stdout ${r.stdout}`).toBe(code);
  return r.json as never;
}

function ipOf(r: PluginRun): string {
  return (result(r).ips[0]?.address ?? "").split("/")[0] ?? "";
}

let lab: Lab;
let seq = 0;
/** A fresh pod namespace path. */
const pod = (): Promise<string> => addPodNs(lab, `p${++seq}`);

beforeAll(async () => {
  lab = await Lab.create();
});

afterAll(async () => {
  await lab?.teardown();
});

describe("native inNetns (how the handler gets a netlink socket inside a pod)", () => {
  it("runs the callback inside the namespace and always switches back", async () => {
    const native = loadNative();
    const netns = await pod();
    const own = readlinkSync("/proc/thread-self/ns/net");
    expect(native.inNetns(netns, () => readlinkSync("/proc/thread-self/ns/net"))).toBe(`net:[${statSync(netns).ino}]`);
    expect(readlinkSync("/proc/thread-self/ns/net")).toBe(own);
    expect(() => native.inNetns(netns, () => {
      throw new Error("from inside");
    })).toThrow("from inside");
    expect(readlinkSync("/proc/thread-self/ns/net")).toBe(own);
    expect(() => native.inNetns("/run/netns/vxmesh-no-such-ns", () => 1)).toThrow(expect.objectContaining({ code: "ENOENT" }));
    expect(() => native.inNetns("/etc/hostname", () => 1)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(readlinkSync("/proc/thread-self/ns/net")).toBe(own);
  });
});

describe("vxmesh-cni with the handler running", () => {
  let node: CniNode;
  const SUBNET = "10.244.11.0/24";

  beforeAll(async () => {
    node = await CniNode.create(lab, "n1", { subnet: SUBNET, mtu: 1450 });
    await node.start();
  });

  const add = async (netns: string, cid: string, ifname = "eth0", config?: unknown): Promise<PluginRun> =>
    node.call({ command: "ADD", containerID: cid, netns, ifname, ...(config === undefined ? {} : { config }) });
  const del = (cid: string, ifname = "eth0", netns?: string, config?: unknown): Promise<PluginRun> =>
    node.call({ command: "DEL", containerID: cid, ifname, ...(netns === undefined ? {} : { netns }), ...(config === undefined ? {} : { config }) });

  it("ADD creates the bridge and wires the pod: veth with hairpin, address, default route, MTU", async () => {
    expect((await links(node.namespace)).some((l) => l.ifname === "vxmesh-br")).toBe(false);
    const netns = await pod();
    const r = result(await add(netns, "wire1"));
    const hostName = hostVethName("wire1", "eth0");
    expect(r.cniVersion).toBe("1.1.0");
    expect(r.interfaces.map((i) => i.name)).toEqual(["vxmesh-br", hostName, "eth0"]);
    expect(r.interfaces[2]).toMatchObject({ sandbox: netns, mtu: 1450 });
    expect(r.ips).toEqual([{ address: "10.244.11.2/24", gateway: "10.244.11.1", interface: 2 }]);
    expect(r.routes).toEqual([{ dst: "0.0.0.0/0", gw: "10.244.11.1" }]);
    expect(r.dns).toEqual({});

    const nodeLinks = await links(node.namespace);
    const br = nodeLinks.find((l) => l.ifname === "vxmesh-br");
    expect(br?.linkinfo?.info_kind).toBe("bridge");
    const addrs = (await ip(["-n", node.namespace, "-j", "addr", "show", "dev", "vxmesh-br"])) as IpAddr[];
    expect(addrs[0]?.addr_info.some((a) => a.local === "10.244.11.1" && a.prefixlen === 24)).toBe(true);
    const hostEnd = nodeLinks.find((l) => l.ifname === hostName);
    expect(hostEnd).toMatchObject({ master: "vxmesh-br", mtu: 1450, ifalias: "vxmesh-cni vxmesh wire1 eth0" });
    expect(hostEnd?.flags).toContain("UP");
    expect(hostEnd?.linkinfo?.info_slave_data?.hairpin).toBe(true);

    const podNs = nsNameOf(netns);
    const podLinks = await links(podNs);
    expect(podLinks.find((l) => l.ifname === "eth0")).toMatchObject({ mtu: 1450 });
    expect(podLinks.find((l) => l.ifname === "eth0")?.flags).toContain("UP");
    const podAddrs = (await ip(["-n", podNs, "-j", "addr", "show", "dev", "eth0"])) as IpAddr[];
    expect(podAddrs[0]?.addr_info.filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`)).toEqual(["10.244.11.2/24"]);
    const routes = (await ip(["-n", podNs, "-j", "route", "show", "default"])) as IpRoute[];
    expect(routes).toMatchObject([{ dst: "default", gateway: "10.244.11.1", dev: "eth0" }]);
    expect(await lab.ping(podNs, "10.244.11.1")).toBe(true);
    expect(reservations(node)).toContain("10.244.11.2");
  });

  it("CHECK passes after ADD and fails with code 101 naming what is missing", async () => {
    const netns = await pod();
    const added = result(await add(netns, "chk1"));
    const check = (): Promise<PluginRun> => node.call({ command: "CHECK", containerID: "chk1", netns, ifname: "eth0", config: node.config({ prevResult: added }) });
    const ok = await check();
    expect(ok.code, ok.stdout).toBe(0);
    expect(ok.stdout).toBe("");

    const podNs = nsNameOf(netns);
    await execFileP("ip", ["-n", podNs, "route", "del", "default"]);
    expect(cniErr(await check(), 101).msg).toMatch(/route 0\.0\.0\.0\/0 via 10\.244\.11\.\d+ is missing/);
    await execFileP("ip", ["-n", podNs, "route", "add", "default", "via", "10.244.11.1"]);
    expect((await check()).code).toBe(0);

    const address = added.ips[0]?.address ?? "";
    await execFileP("ip", ["-n", podNs, "addr", "del", address, "dev", "eth0"]);
    expect(cniErr(await check(), 101).msg).toContain(`address ${address} is missing`);

    expect(cniErr(await node.call({ command: "CHECK", containerID: "chk1", netns, ifname: "eth0" }), 7).msg).toContain("prevResult");
    expect(cniErr(await node.call({ command: "CHECK", containerID: "chk1", netns, ifname: "eth0", config: node.config({ cniVersion: "0.3.1", prevResult: added }) }), 1).msg)
      .toBe("incompatible CNI versions");
    expect((await del("chk1")).code).toBe(0);
    expect(cniErr(await check(), 101).msg).toMatch(/no address is reserved|missing/);
  });

  it("DEL succeeds twice, without prevResult, without CNI_NETNS, after the netns is gone, and for a container never added", async () => {
    const netns = await pod();
    const added = result(await add(netns, "del1"));
    const ipText = (added.ips[0]?.address ?? "").split("/")[0] ?? "";
    const first = await del("del1", "eth0", netns, node.config({ prevResult: added }));
    expect(first.code, first.stdout).toBe(0);
    expect(first.stdout).toBe("");
    expect(await vethsOf(node)).not.toContain(hostVethName("del1", "eth0"));
    expect(reservations(node)).not.toContain(ipText);
    expect((await links(nsNameOf(netns))).some((l) => l.ifname === "eth0")).toBe(false);
    expect((await del("del1", "eth0", netns, node.config({ prevResult: added }))).code).toBe(0);
    expect((await del("del1")).code).toBe(0);

    const netns2 = await pod();
    result(await add(netns2, "del2"));
    await execFileP("ip", ["netns", "del", nsNameOf(netns2)]);
    const gone = await del("del2", "eth0", netns2);
    expect(gone.code, gone.stdout).toBe(0);
    expect(await vethsOf(node)).not.toContain(hostVethName("del2", "eth0"));
    expect(Object.values(reservationOwners(node))).not.toContain("del2/eth0");

    expect((await del("never-added", "eth0", "/run/netns/does-not-exist")).code).toBe(0);

    // A DEL whose configuration (a big prevResult, say) exceeds what the control socket takes is
    // sent with just the network's name and version: a DEL needs no more.
    const netns3 = await pod();
    result(await add(netns3, "del3"));
    const big = await del("del3", "eth0", netns3, node.config({ prevResult: { cniVersion: "1.1.0", interfaces: [], ips: [], routes: [], dns: { search: ["x".repeat(70_000)] } } }));
    expect(big.code, big.stdout + big.stderr).toBe(0);
    expect(await vethsOf(node)).not.toContain(hostVethName("del3", "eth0"));
    expect(Object.values(reservationOwners(node))).not.toContain("del3/eth0");
  });

  it("VERSION is answered by the shim itself, exactly as the handler answers it", async () => {
    for (const v of ["1.1.0", "1.0.0", "0.4.0"]) {
      const local = await runPlugin(shim(), { command: "VERSION", config: { cniVersion: v } });
      expect(local.code).toBe(0);
      expect(local.json).toEqual({ cniVersion: v, supportedVersions: ["0.4.0", "1.0.0", "1.1.0"] });
      const viaSocket = (await requestControl(node.runDir, { op: "cni", env: { CNI_COMMAND: "VERSION" }, stdin: JSON.stringify({ cniVersion: v }) })) as { exitCode: number; stdout: string };
      expect(viaSocket.exitCode).toBe(0);
      expect(JSON.parse(viaSocket.stdout)).toEqual(local.json);
    }
  });

  it("STATUS succeeds while the handler is ready", async () => {
    const r = await node.call({ command: "STATUS" });
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toBe("");
  });

  it("answers each error with the spec's code and a message that says what is wrong", async () => {
    const netns = await pod();
    const base = { command: "ADD", containerID: "err1", netns, ifname: "eth0" };
    const cases: [string, Promise<PluginRun>, number, RegExp][] = [
      ["no CNI_COMMAND", node.call({ ...base, env: { CNI_COMMAND: undefined } }), 4, /CNI_COMMAND/],
      ["unknown command", node.call({ ...base, command: "FROB" }), 4, /unknown CNI_COMMAND: FROB/],
      ["ADD without CNI_NETNS", node.call({ command: "ADD", containerID: "err1", ifname: "eth0" }), 4, /CNI_NETNS/],
      ["bad container ID", node.call({ ...base, containerID: "../etc" }), 4, /CNI_CONTAINERID/],
      ["interface name too long", node.call({ ...base, ifname: "abcdefghijklmnop" }), 4, /CNI_IFNAME/],
      ["relative CNI_NETNS", node.call({ ...base, netns: "run/netns/x" }), 4, /absolute/],
      ["netns that does not exist", node.call({ ...base, netns: "/run/netns/vxmesh-no-such-ns" }), 4, /does not exist/],
      ["file that is not a netns", node.call({ ...base, netns: "/etc/hostname" }), 4, /not a network namespace/],
      ["stdin not JSON", node.call({ ...base, config: "{not json" }), 6, /decoding/],
      ["no network name", node.call({ ...base, config: { cniVersion: "1.1.0", controlSocket: node.socket } }), 7, /network name/],
      ["unsupported cniVersion", node.call({ ...base, config: node.config({ cniVersion: "0.3.1" }) }), 1, /incompatible CNI versions/],
      ["MTU above the overlay's", node.call({ ...base, config: node.config({ mtu: 9000 }) }), 7, /mtu 9000/],
      ["GC with a 1.0.0 config", node.call({ command: "GC", config: node.config({ cniVersion: "1.0.0", "cni.dev/valid-attachments": [] }) }), 1, /does not allow GC/],
      ["GC without valid-attachments", node.call({ command: "GC" }), 7, /valid-attachments/],
      // 600 KB of stdin (backslashes written as \\) is 1.2 MB once escaped again into the request.
      ["request over the control socket's 1 MiB", node.call({ ...base, config: node.config({ pad: "\\".repeat(300_000) }) }), 7, /too large/],
    ];
    for (const [what, p, code, msg] of cases) {
      const r = await p;
      const e = cniErr(r, code);
      expect(e.msg + " " + (e.details ?? ""), what).toMatch(msg);
      expect(e.cniVersion, what).toMatch(/^(1\.1\.0|1\.0\.0|0\.4\.0)$/);
    }
    expect(await vethsOf(node)).not.toContain(hostVethName("err1", "eth0"));
    expect(Object.values(reservationOwners(node))).not.toContain("err1/eth0");
  });

  it("a failed ADD leaves nothing behind (interface name taken; requested address taken)", async () => {
    const before = { veths: await vethsOf(node), reserved: reservations(node) };

    const taken = await pod();
    await execFileP("ip", ["-n", nsNameOf(taken), "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]);
    expect(cniErr(await add(taken, "fail1"), 103).msg).toContain("eth0 already exists");
    expect(await vethsOf(node)).toEqual(before.veths);
    expect(reservations(node)).toEqual(before.reserved);
    // And the attachment can be made once the obstacle is gone.
    await execFileP("ip", ["-n", nsNameOf(taken), "link", "del", "eth0"]);
    result(await add(taken, "fail1"));
    expect((await del("fail1")).code).toBe(0);
  });

  it("a pod that another network already gave a default route gets its address and subnet, without a second default route", async () => {
    const routed = await pod();
    const rns = nsNameOf(routed);
    await execFileP("ip", ["-n", rns, "link", "add", "other0", "type", "veth", "peer", "name", "other1"]);
    await execFileP("ip", ["-n", rns, "link", "set", "other0", "up"]);
    await execFileP("ip", ["-n", rns, "route", "add", "default", "dev", "other0"]);
    const r = result(await add(routed, "dflt1"));
    expect(r.routes).toEqual([]);
    expect(r.ips[0]?.address).toMatch(/^10\.244\.11\.\d+\/24$/);
    // The first network's default route stays; the pod subnet is reached on eth0.
    expect((await ip(["-n", rns, "-j", "route", "show", "default"])) as IpRoute[]).toMatchObject([{ dst: "default", dev: "other0" }]);
    expect(await lab.ping(rns, "10.244.11.1")).toBe(true);
    // CHECK accepts what ADD said.
    expect((await node.call({ command: "CHECK", containerID: "dflt1", netns: routed, ifname: "eth0", config: node.config({ prevResult: r }) })).code).toBe(0);
    expect((await del("dflt1")).code).toBe(0);
  });

  it("honours the address and MAC the runtime asks for (CNI_ARGS IP=/MAC=, runtimeConfig ips/mac), refuses one taken or outside the node's range", async () => {
    const before = { veths: await vethsOf(node), reserved: reservations(node) };
    const withArgs = (args: string): { env: Record<string, string> } => ({ env: { CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=web;${args}` } });
    const p1 = await pod();
    const a = result(await node.call({ command: "ADD", containerID: "req1", netns: p1, ifname: "eth0", ...withArgs("IP=10.244.11.200;MAC=02:00:0a:f4:0b:c8") }));
    expect(a.ips[0]?.address).toBe("10.244.11.200/24");
    expect(a.interfaces[2]?.mac).toBe("02:00:0a:f4:0b:c8");
    expect((await links(nsNameOf(p1))).find((l) => l.ifname === "eth0")).toMatchObject({ address: "02:00:0a:f4:0b:c8" });

    // What `podman network reload` does: DEL, then ADD with the same IP= and MAC=: the same address back.
    expect((await del("req1")).code).toBe(0);
    expect(reservations(node)).not.toContain("10.244.11.200");
    const again = result(await node.call({ command: "ADD", containerID: "req1", netns: p1, ifname: "eth0", ...withArgs("IP=10.244.11.200;MAC=02:00:0a:f4:0b:c8") }));
    expect(again.ips[0]?.address).toBe("10.244.11.200/24");

    const p2 = await pod();
    const rc = result(await node.call({ command: "ADD", containerID: "req2", netns: p2, ifname: "eth0", config: node.config({ runtimeConfig: { ips: ["10.244.11.201/24"], mac: "02:00:0a:f4:0b:c9" } }) }));
    expect(rc.ips[0]?.address).toBe("10.244.11.201/24");
    expect(rc.interfaces[2]?.mac).toBe("02:00:0a:f4:0b:c9");

    const mid = { veths: await vethsOf(node), reserved: reservations(node) };
    const p3 = await pod();
    const takenErr = cniErr(await node.call({ command: "ADD", containerID: "req3", netns: p3, ifname: "eth0", ...withArgs("IP=10.244.11.200") }), 104);
    expect(takenErr.msg).toBe("requested address 10.244.11.200 is in use");
    expect(takenErr.details).toBe("reserved for container req1 interface eth0");
    for (const [what, addr] of [["another subnet", "10.244.12.5"], ["the gateway", "10.244.11.1"], ["the broadcast address", "10.244.11.255"]] as const) {
      expect(cniErr(await node.call({ command: "ADD", containerID: "req3", netns: p3, ifname: "eth0", ...withArgs(`IP=${addr}`) }), 104).msg, what)
        .toBe(`requested address ${addr} is not in this node's pod range 10.244.11.2-10.244.11.254`);
    }
    expect(cniErr(await node.call({ command: "ADD", containerID: "req3", netns: p3, ifname: "eth0", ...withArgs("IP=10.244.11.999") }), 4).msg).toContain("is not an IPv4 address");
    expect((await links(nsNameOf(p3))).map((l) => l.ifname)).toEqual(["lo"]);
    expect(await vethsOf(node)).toEqual(mid.veths);
    expect(reservations(node)).toEqual(mid.reserved);

    for (const cid of ["req1", "req2"]) expect((await del(cid)).code).toBe(0);
    expect(await vethsOf(node)).toEqual(before.veths);
    expect(reservations(node)).toEqual(before.reserved);
  });

  it("passes prevResult on, speaks 0.4.0 and 1.0.0, tolerates unknown fields, CNI_ARGS and any JSON string content", async () => {
    const prevResult = { cniVersion: "1.0.0", interfaces: [{ name: "lo", sandbox: "/x" }], ips: [{ address: "192.0.2.7/32", interface: 0 }], routes: [], dns: { nameservers: ["192.0.2.53"] } };
    const a = result(await add(await pod(), "prev1", "eth0", node.config({ cniVersion: "1.0.0", prevResult })));
    expect(a.interfaces.map((i) => i.name)).toEqual(["lo", "vxmesh-br", hostVethName("prev1", "eth0"), "eth0"]);
    expect(a.ips.map((i) => i.interface)).toEqual([0, 3]);
    expect(a.dns).toEqual({ nameservers: ["192.0.2.53"] });
    expect(a.interfaces[3]?.mtu).toBeUndefined(); // no interface MTU before 1.1.0

    const b = result(await add(await pod(), "v04", "eth0", node.config({ cniVersion: "0.4.0" })));
    expect(b.cniVersion).toBe("0.4.0");
    expect(b.ips[0]?.version).toBe("4");

    const odd = node.config({
      runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }] },
      args: { cni: { labels: [{ key: "a", value: "b" }] } },
      "x-note": "quote \" backslash \\ newline \n tab \t nul \u0000 é 😀 \ud83d",
      nested: { deep: [[[{ x: null, y: true, z: -1.5e3 }]]] },
      mtu: 1400,
    });
    const c = await node.call({ command: "ADD", containerID: "odd1", netns: await pod(), ifname: "net1", config: odd, env: { CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default" } });
    expect(result(c).interfaces[2]).toMatchObject({ name: "net1", mtu: 1400 });
    for (const [cid, ifname] of [["prev1", "eth0"], ["v04", "eth0"], ["odd1", "net1"]] as const) expect((await del(cid, ifname)).code).toBe(0);
  });

  it("32 concurrent ADDs into one subnet get 32 distinct addresses; 32 concurrent DELs free them", async () => {
    const before = reservations(node).length;
    const pods = await Promise.all(Array.from({ length: 32 }, () => pod()));
    const runs = await Promise.all(pods.map((p, i) => add(p, `many${i}`)));
    const ips = runs.map(ipOf);
    expect(new Set(ips).size).toBe(32);
    for (const a of ips) {
      expect(a).toMatch(/^10\.244\.11\.\d+$/);
      expect(a).not.toBe("10.244.11.1");
    }
    expect(reservations(node).length).toBe(before + 32);
    const veths = await vethsOf(node);
    for (let i = 0; i < 32; i++) expect(veths).toContain(hostVethName(`many${i}`, "eth0"));
    // Two of them talk through the bridge.
    expect(await lab.ping(nsNameOf(pods[0] as string), ips[31] as string)).toBe(true);

    const dels = await Promise.all(pods.map((p, i) => del(`many${i}`, "eth0", p)));
    for (const d of dels) expect(d.code, d.stdout).toBe(0);
    expect(reservations(node).length).toBe(before);
    const left = await vethsOf(node);
    for (let i = 0; i < 32; i++) expect(left).not.toContain(hostVethName(`many${i}`, "eth0"));
  });

  it("reservations survive a restart of the handler", async () => {
    const p1 = await pod();
    const first = await add(p1, "keep1");
    const kept = ipOf(first);
    await node.stop();
    await node.start();
    const second = ipOf(await add(await pod(), "keep2"));
    expect(second).not.toBe(kept);
    const check = await node.call({ command: "CHECK", containerID: "keep1", netns: p1, ifname: "eth0", config: node.config({ prevResult: first.json }) });
    expect(check.code, check.stdout).toBe(0);
    expect((await del("keep1")).code).toBe(0);
    expect((await del("keep2")).code).toBe(0);
  });

  it("GC reclaims the addresses and veths of attachments the runtime no longer lists", async () => {
    const pods = await Promise.all([pod(), pod(), pod()]);
    const added = await Promise.all(pods.map((p, i) => add(p, `gc${i}`)));
    const ips = added.map(ipOf);
    const other = result(await add(await pod(), "gcother", "eth0", node.config({ name: "othernet" })));
    const gc = await node.call({ command: "GC", config: node.config({ "cni.dev/valid-attachments": [{ containerID: "gc0", ifname: "eth0" }] }) });
    expect(gc.code, gc.stdout).toBe(0);
    expect(gc.stdout).toBe("");
    const reserved = reservations(node);
    expect(reserved).toContain(ips[0]);
    expect(reserved).not.toContain(ips[1]);
    expect(reserved).not.toContain(ips[2]);
    // Another network's attachments are not this GC's business.
    expect(reserved).toContain((other.ips[0]?.address ?? "").split("/")[0]);
    const veths = await vethsOf(node);
    expect(veths).toContain(hostVethName("gc0", "eth0"));
    expect(veths).not.toContain(hostVethName("gc1", "eth0"));
    expect(veths).not.toContain(hostVethName("gc2", "eth0"));
    const check = await node.call({ command: "CHECK", containerID: "gc0", netns: pods[0], ifname: "eth0", config: node.config({ prevResult: added[0]?.json }) });
    expect(check.code, check.stdout).toBe(0);
    expect((await del("gc0")).code).toBe(0);
    expect((await node.call({ command: "DEL", containerID: "gcother", ifname: "eth0", config: node.config({ name: "othernet" }) })).code).toBe(0);
  });

  it("with the handler stopped: STATUS 50, ADD and CHECK 11, DEL queued and completed when it starts (clean stop and crash)", async () => {
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      const netns = await pod();
      const cid = `down${signal}`;
      const added = result(await add(netns, cid));
      const ipText = (added.ips[0]?.address ?? "").split("/")[0] ?? "";
      await node.stop(signal);
      expect(existsSync(node.socket)).toBe(signal === "SIGKILL");

      const status = cniErr(await node.call({ command: "STATUS" }), 50);
      expect(status.msg).toContain("not reachable");
      expect(cniErr(await add(await pod(), `${cid}x`), 11).msg).toContain("try again later");
      cniErr(await node.call({ command: "CHECK", containerID: cid, netns, ifname: "eth0", config: node.config({ prevResult: added }) }), 11);
      cniErr(await node.call({ command: "GC", config: node.config({ "cni.dev/valid-attachments": [] }) }), 11);

      const d = await del(cid, "eth0", netns, node.config({ prevResult: added }));
      expect(d.code, d.stdout + d.stderr).toBe(0);
      expect(d.stdout).toBe("");
      expect(d.stderr).toContain("queued");
      const queued = queuedDelPath(node.stateDir, cid, "eth0");
      expect(JSON.parse(readFileSync(queued, "utf8"))).toMatchObject({ op: "cni", env: { CNI_COMMAND: "DEL", CNI_CONTAINERID: cid, CNI_IFNAME: "eth0" } });
      expect((statSync(queued).mode & 0o777).toString(8)).toBe("600");
      // A second DEL of the same attachment replaces the queued one.
      expect((await del(cid, "eth0")).code).toBe(0);
      expect(readdirSync(join(node.stateDir, "cni", "del-queue")).filter((n) => n.startsWith(cid))).toEqual([`${cid}:eth0.json`]);
      expect(await vethsOf(node)).toContain(hostVethName(cid, "eth0"));

      await node.start();
      expect(existsSync(queued)).toBe(false);
      expect(await vethsOf(node)).not.toContain(hostVethName(cid, "eth0"));
      expect(reservations(node)).not.toContain(ipText);
    }
  });

  it("a queued DEL is completed before a later call for the same attachment", async () => {
    const netns = await pod();
    const added = result(await add(netns, "order1"));
    const request = { op: "cni", env: { CNI_COMMAND: "DEL", CNI_CONTAINERID: "order1", CNI_IFNAME: "eth0" }, stdin: JSON.stringify(node.config()) };
    mkdirSync(join(node.stateDir, "cni", "del-queue"), { recursive: true });
    writeFileSync(queuedDelPath(node.stateDir, "order1", "eth0"), JSON.stringify(request) + "\n");
    // The runtime ordered that DEL before this CHECK, so the CHECK sees the attachment gone.
    cniErr(await node.call({ command: "CHECK", containerID: "order1", netns, ifname: "eth0", config: node.config({ prevResult: added }) }), 101);
    expect(existsSync(queuedDelPath(node.stateDir, "order1", "eth0"))).toBe(false);
    expect(await vethsOf(node)).not.toContain(hostVethName("order1", "eth0"));
  });

  it("install-cni puts the shim and a conflist in place, and a runtime using them reaches the handler", async () => {
    const dir = join(lab.workDir(), "install");
    const binDir = join(dir, "bin");
    const confDir = join(dir, "net.d");
    const out = vi.spyOn(process.stdout, "write").mockImplementation(() => true);
    const err = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    let code: number;
    let bad: number;
    try {
      code = await runInstallCni(["--bin-dir", binDir, "--conf-dir", confDir, "--run-dir", node.runDir, "--state-dir", node.stateDir]);
      bad = await runInstallCni(["--network-name", "bad/name", "--bin-dir", binDir]);
    } finally {
      out.mockRestore();
      err.mockRestore();
    }
    expect(code).toBe(0);
    expect(bad).toBe(2);
    const installed = join(binDir, "vxmesh-cni");
    expect(statSync(installed).mode & 0o111).not.toBe(0);
    const list = JSON.parse(readFileSync(join(confDir, "10-vxmesh.conflist"), "utf8")) as { cniVersion: string; cniVersions: string[]; name: string; plugins: Record<string, unknown>[] };
    // 1.0.0 on top: what libcni before 1.2 (podman 4.3, containerd 1.6/1.7) uses and can parse.
    expect(list).toMatchObject({ cniVersion: "1.0.0", cniVersions: ["0.4.0", "1.0.0", "1.1.0"], name: "vxmesh" });
    // No portmap in this bin dir: none chained.
    expect(list.plugins).toEqual([{ type: "vxmesh-cni", controlSocket: node.socket, stateDir: node.stateDir, capabilities: { ips: true, mac: true } }]);
    // What a runtime derives from the list for the plugin (SPEC section 3).
    const conf = { ...list.plugins[0], cniVersion: list.cniVersion, name: list.name };
    const netns = await pod();
    const r = await runPlugin(installed, { command: "ADD", containerID: "inst1", netns, ifname: "eth0", config: conf, inNetns: node.namespace });
    expect(result(r).ips[0]?.address).toMatch(/^10\.244\.11\.\d+\/24$/);
    expect(result(r).cniVersion).toBe("1.0.0");
    expect((await runPlugin(installed, { command: "DEL", containerID: "inst1", netns, ifname: "eth0", config: conf, inNetns: node.namespace })).code).toBe(0);
  });

  it("install-cni --cni-version chooses the top-level version, and portmap is chained when it is in the bin dir", async () => {
    const dir = join(lab.workDir(), "install2");
    const binDir = join(dir, "bin");
    const confDir = join(dir, "net.d");
    mkdirSync(binDir, { recursive: true });
    copyFileSync(join(REFERENCE_DIR, "portmap"), join(binDir, "portmap"));
    const lines: string[] = [];
    const out = vi.spyOn(process.stdout, "write").mockImplementation(() => true);
    const err = vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
      lines.push(String(chunk));
      return true;
    });
    const run = (args: string[]): Promise<number> => runInstallCni(["--bin-dir", binDir, "--conf-dir", confDir, "--run-dir", node.runDir, "--state-dir", node.stateDir, ...args]);
    const read = (): { cniVersion: string; plugins: Record<string, unknown>[] } => JSON.parse(readFileSync(join(confDir, "10-vxmesh.conflist"), "utf8")) as never;
    try {
      expect(await run(["--cni-version", "1.1.0"])).toBe(0);
      const list = read();
      expect(list.cniVersion).toBe("1.1.0");
      expect(list.plugins.map((p) => p["type"])).toEqual(["vxmesh-cni", "portmap"]);
      expect(list.plugins[1]).toMatchObject({ capabilities: { portMappings: true } });
      expect(await run(["--portmap=false"])).toBe(0);
      expect(read()).toMatchObject({ cniVersion: "1.0.0", plugins: [{ type: "vxmesh-cni" }] });
      expect(read().plugins).toHaveLength(1);
      expect(await run(["--cni-version", "0.3.1"])).toBe(2);
    } finally {
      out.mockRestore();
      err.mockRestore();
    }
    expect(lines.join("")).toContain("0.4.0, 1.0.0, 1.1.0");
  });
});

describe("vxmesh-cni at the edges of the handler's readiness", () => {
  it("exhaustion gives a clear error and STATUS 50; a DEL frees an address for the next ADD", async () => {
    const node = await CniNode.create(lab, "n2", { subnet: "10.244.12.0/28" });
    await node.start();
    const pods = await Promise.all(Array.from({ length: 14 }, () => pod()));
    const runs = await Promise.all(pods.slice(0, 13).map((p, i) => node.call({ command: "ADD", containerID: `ex${i}`, netns: p, ifname: "eth0" })));
    const ips = runs.map(ipOf);
    expect(new Set(ips).size).toBe(13);
    const full = cniErr(await node.call({ command: "ADD", containerID: "ex13", netns: pods[13], ifname: "eth0" }), 100);
    expect(full.msg).toBe("no free address in 10.244.12.0/28: all 13 pod addresses are reserved");
    expect(await vethsOf(node)).not.toContain(hostVethName("ex13", "eth0"));
    expect(cniErr(await node.call({ command: "STATUS" }), 50).msg).toContain("no free address");

    expect((await node.call({ command: "DEL", containerID: "ex4", ifname: "eth0" })).code).toBe(0);
    expect((await node.call({ command: "STATUS" })).code).toBe(0);
    expect(ipOf(await node.call({ command: "ADD", containerID: "ex13", netns: pods[13], ifname: "eth0" }))).toBe(ips[4]);
    await node.stop();
  });

  it("without a confirmed subnet: ADD 11 saying so, STATUS 50, DEL still succeeds", async () => {
    const node = await CniNode.create(lab, "n3", { subnet: "none" });
    await node.start();
    const add = cniErr(await node.call({ command: "ADD", containerID: "ns1", netns: await pod(), ifname: "eth0" }), 11);
    expect(add.msg).toContain("no confirmed pod subnet");
    expect(cniErr(await node.call({ command: "STATUS" }), 50).msg).toContain("no confirmed pod subnet");
    expect((await node.call({ command: "DEL", containerID: "ns1", ifname: "eth0" })).code).toBe(0);
    expect(await vethsOf(node)).toEqual([]);
    await node.stop();
  });

  it("a bridge name taken by something that is not a bridge fails the ADD (102) and leaves nothing behind", async () => {
    const node = await CniNode.create(lab, "n4", { subnet: "10.244.14.0/24" });
    await execFileP("ip", ["-n", node.namespace, "link", "add", "vxmesh-br", "type", "veth", "peer", "name", "vxmesh-brpeer"]);
    await node.start();
    const e = cniErr(await node.call({ command: "ADD", containerID: "nb1", netns: await pod(), ifname: "eth0" }), 102);
    expect(e.msg).toContain("vxmesh-br exists and is not a bridge");
    expect(await vethsOf(node)).toEqual([]);
    expect(reservations(node)).toEqual([]);
    await node.stop();
  });
});

describe("the same calls to the reference bridge + host-local plugins", () => {
  let node: CniNode;
  let refNs: string;
  let refData: string;

  beforeAll(async () => {
    node = await CniNode.create(lab, "n5", { subnet: "10.244.15.0/24" });
    await node.start();
    refNs = nsNameOf(await addPodNs(lab, "r5"));
    refData = join(lab.workDir(), "host-local");
  });

  const ref = (call: { command: string; containerID?: string; netns?: string; ifname?: string; version: string; prevResult?: unknown }): Promise<PluginRun> =>
    runPlugin(join(REFERENCE_DIR, "bridge"), {
      command: call.command,
      ...(call.containerID === undefined ? {} : { containerID: call.containerID }),
      ...(call.netns === undefined ? {} : { netns: call.netns }),
      ...(call.ifname === undefined ? {} : { ifname: call.ifname }),
      config: { ...referenceConfig({ version: call.version, subnet: "10.244.16.0/24", dataDir: refData }), ...(call.prevResult === undefined ? {} : { prevResult: call.prevResult }) },
      inNetns: refNs,
    });
  const ours = (call: { command: string; containerID?: string; netns?: string; ifname?: string; version: string; prevResult?: unknown }): Promise<PluginRun> =>
    node.call({
      command: call.command,
      ...(call.containerID === undefined ? {} : { containerID: call.containerID }),
      ...(call.netns === undefined ? {} : { netns: call.netns }),
      ...(call.ifname === undefined ? {} : { ifname: call.ifname }),
      config: node.config({ cniVersion: call.version, ...(call.prevResult === undefined ? {} : { prevResult: call.prevResult }) }),
    });

  for (const version of ["1.0.0", "0.4.0"]) {
    it(`ADD, CHECK, DEL (twice, and without netns) give results of the same shape (cniVersion ${version})`, async () => {
      const [podA, podB] = await Promise.all([pod(), pod()]);
      const cid = `cmp${version.replace(/\./g, "")}`;
      const [a, b] = await Promise.all([ours({ command: "ADD", containerID: cid, netns: podA, ifname: "eth0", version }),
        ref({ command: "ADD", containerID: cid, netns: podB, ifname: "eth0", version })]);
      const ra = result(a);
      const rb = result(b);
      expect(shapeOf(ra)).toEqual(shapeOf(rb));
      for (const r of [ra, rb]) {
        expect(r.cniVersion).toBe(version);
        expect(r.interfaces.map((i) => i.name)[0]).toBe("vxmesh-br");
        expect(r.interfaces[2]).toMatchObject({ name: "eth0" });
        expect(r.ips[0]).toMatchObject({ interface: 2 });
        expect(r.ips[0]?.address).toMatch(/^10\.244\.1[56]\.\d+\/24$/);
        expect(r.ips[0]?.gateway).toMatch(/\.1$/);
        expect(r.routes).toEqual([{ dst: "0.0.0.0/0", gw: r.ips[0]?.gateway }]);
      }
      expect(ra.interfaces[2]?.sandbox).toBe(podA);
      expect(rb.interfaces[2]?.sandbox).toBe(podB);

      // The same kernel state in both pods: address, MTU, default route; a hairpin bridge port.
      for (const [netns, nodeNs, r] of [[podA, node.namespace, ra], [podB, refNs, rb]] as const) {
        const podLink = (await links(nsNameOf(netns))).find((l) => l.ifname === "eth0");
        expect(podLink?.mtu).toBe(1450);
        const routes = (await ip(["-n", nsNameOf(netns), "-j", "route", "show", "default"])) as IpRoute[];
        expect(routes).toMatchObject([{ dst: "default", gateway: r.ips[0]?.gateway, dev: "eth0" }]);
        const port = (await links(nodeNs)).find((l) => l.ifname === r.interfaces[1]?.name);
        expect(port).toMatchObject({ master: "vxmesh-br", mtu: 1450 });
        expect(port?.linkinfo?.info_slave_data?.hairpin).toBe(true);
      }

      const [ca, cb] = await Promise.all([ours({ command: "CHECK", containerID: cid, netns: podA, ifname: "eth0", version, prevResult: ra }),
        ref({ command: "CHECK", containerID: cid, netns: podB, ifname: "eth0", version, prevResult: rb })]);
      expect([ca.code, ca.stdout]).toEqual([0, ""]);
      expect([cb.code, cb.stdout.trim()]).toEqual([0, ""]);

      for (const withPrev of [true, false]) {
        const [da, db] = await Promise.all([ours({ command: "DEL", containerID: cid, netns: podA, ifname: "eth0", version, ...(withPrev ? { prevResult: ra } : {}) }),
          ref({ command: "DEL", containerID: cid, netns: podB, ifname: "eth0", version, ...(withPrev ? { prevResult: rb } : {}) })]);
        expect([da.code, da.stdout]).toEqual([0, ""]);
        expect([db.code, db.stdout.trim()]).toEqual([0, ""]);
      }
      const [na, nb] = await Promise.all([ours({ command: "DEL", containerID: cid, ifname: "eth0", version }), ref({ command: "DEL", containerID: cid, ifname: "eth0", version })]);
      expect([na.code, nb.code]).toEqual([0, 0]);
    });
  }

  it("errors and VERSION have the same shape (ours add the spec's cniVersion to errors; codes differ where ours are more specific)", async () => {
    const missing = "/run/netns/vxmesh-no-such-ns";
    const [ea, eb] = await Promise.all([ours({ command: "ADD", containerID: "e1", netns: missing, ifname: "eth0", version: "1.0.0" }),
      ref({ command: "ADD", containerID: "e1", netns: missing, ifname: "eth0", version: "1.0.0" })]);
    expect(ea.code).not.toBe(0);
    expect(eb.code).not.toBe(0);
    expect(ea.json).toMatchObject({ cniVersion: "1.0.0", code: 4 });
    expect(eb.json).toMatchObject({ code: 999 });
    const { cniVersion: _v, ...withoutVersion } = ea.json as Record<string, unknown>;
    expect(Object.keys(shapeOf(withoutVersion) as object).sort()).toEqual(Object.keys(shapeOf(eb.json) as object).sort());

    const [va, vb] = await Promise.all([runPlugin(shim(), { command: "VERSION", config: { cniVersion: "1.0.0" } }),
      runPlugin(join(REFERENCE_DIR, "bridge"), { command: "VERSION", config: { cniVersion: "1.0.0" } })]);
    expect(shapeOf(va.json)).toEqual({ cniVersion: "string", supportedVersions: ["string", "string", "string"] });
    expect(Object.keys(vb.json ?? {}).sort()).toEqual(["cniVersion", "supportedVersions"]);
  });
});

/** containerID/ifname of every reservation file. */
function reservationOwners(node: CniNode): Record<string, string> {
  const out: Record<string, string> = {};
  const dir = join(node.stateDir, "cni", "addresses");
  for (const name of reservations(node)) {
    const o = JSON.parse(readFileSync(join(dir, name), "utf8")) as { containerID: string; ifname: string };
    out[name] = `${o.containerID}/${o.ifname}`;
  }
  return out;
}


