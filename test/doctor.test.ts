// `vxmesh doctor` against a lab node: every check passes in a healthy namespace; a port already
// bound, a key file readable by others, a route over the pod CIDR, a pod CIDR over a service
// CIDR and a bad config each fail their own line with exit 1; and the node is unchanged after.

import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Lab, execOk, type LabNode } from "../bench/lab";
import { Cluster, cliPath } from "../bench/cluster";
import { generateKey } from "../control/keyring";
import { writeLease } from "../daemon/lease-file";
import { parseSubnet, type Subnet } from "../encap/types";
import type { CheckResult } from "../daemon/doctor";

interface Doctor { code: number | null; stdout: string; stderr: string; lines: Map<string, string> }

const dir = mkdtempSync(join(tmpdir(), "vxmesh-doctor-"));
let lab: Lab | undefined;
let n1: LabNode;
let keyFile = "";

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("VXMESH_")) env[k] = v;
  return { ...env, ...extra };
}

/** `vxmesh doctor` inside n1 as a gossip node with a good key file; `args` adds or overrides. */
async function doctor(args: readonly string[] = [], env: Record<string, string> = {}): Promise<Doctor> {
  const argv = [process.execPath, cliPath(), "doctor", "--node-name", "n1", "--underlay-ip", n1.underlayIp, "--key-file", keyFile, ...args];
  const r = await (lab as Lab).exec(n1, argv, { env: cleanEnv(env), timeoutMs: 30_000 });
  const lines = new Map<string, string>();
  for (const line of r.stdout.split("\n")) {
    const m = /^(ok  |FAIL|skip) (\S+)\s+(.*)$/.exec(line);
    if (m !== null) lines.set(m[2] as string, `${(m[1] as string).trim()} ${m[3] as string}`);
  }
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, lines };
}

async function snapshot(): Promise<string> {
  const l = lab as Lab;
  const parts = await Promise.all([
    // IPv4 and link state only: IPv6 DAD and bridge timers move on their own.
    ["ip", "-o", "link", "show"], ["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"],
    ["ip", "-4", "neigh", "show", "nud", "permanent"], ["ss", "-ltun"],
  ].map(async (argv) => (await l.exec(n1, argv)).stdout));
  return parts.join("\n---\n");
}

function holdPort(kind: "udp" | "tcp", port: number): Promise<ChildProcess> {
  const code = kind === "udp"
    ? `require("node:dgram").createSocket("udp4").bind(${port}, "${n1.underlayIp}", () => console.log("bound"));`
    : `require("node:net").createServer().listen(${port}, "${n1.underlayIp}", () => console.log("bound"));`;
  const holder = (lab as Lab).spawn(n1, [process.execPath, "-e", code]);
  return new Promise((resolve, reject) => {
    holder.stdout?.setEncoding("utf8").on("data", (c: string) => { if (c.includes("bound")) resolve(holder); });
    holder.once("exit", (c) => reject(new Error(`port holder exited ${String(c)}`)));
  });
}

beforeAll(async () => {
  lab = await Lab.build({ nodes: [{ overlay: "vxmesh" }] });
  n1 = lab.node("n1");
  keyFile = join(dir, "key");
  writeFileSync(keyFile, generateKey() + "\n", { mode: 0o600 });
});

afterAll(async () => {
  await lab?.teardown();
  rmSync(dir, { recursive: true, force: true });
});

describe("vxmesh doctor in a healthy lab node", () => {
  it("passes every check, exits 0, and changes nothing", async () => {
    const before = await snapshot();
    const r = await doctor(["--service-cidr", "10.96.0.0/12"]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const ids = ["config", "tun", "cap-net-admin", "ip-forward", "bridge-netfilter", "underlay-mtu", "vxlan-port", "gossip-port-udp", "gossip-port-tcp", "metrics-port", "service-cidr", "host-routes", "forward-policy", "key-file"];
    expect([...r.lines.keys()]).toEqual([...ids, "kubernetes-api"]);
    for (const id of ids) expect(r.lines.get(id), id).toMatch(/^ok /);
    expect(r.lines.get("kubernetes-api")).toBe("skip gossip: no API server");
    expect(r.lines.get("underlay-mtu")).toBe(`ok eth0 (holding ${n1.underlayIp}) has MTU 1500: overlay MTU 1450 (underlay − 50) fits`);
    expect(r.lines.get("vxlan-port")).toBe(`ok UDP ${n1.underlayIp}:4789 (VXLAN) is free`);
    expect(r.lines.get("host-routes")).toBe("ok no host route overlaps 10.244.0.0/16");
    expect(r.stdout.trim().endsWith("all checks passed")).toBe(true);
    expect(await snapshot()).toBe(before);
  });

  it("static peers from a config file: gossip and key checks are skipped, the rest pass", async () => {
    const peers = join(dir, "peers.json");
    writeFileSync(peers, JSON.stringify((lab as Lab).peersFor("n1")));
    const config = join(dir, "static.yaml");
    writeFileSync(config, `node-name: n1\nunderlay-ip: ${n1.underlayIp}\nsubnet: ${n1.subnet}\npeers: ${peers}\nmetrics-addr: "off"\n`);
    const r = await (lab as Lab).exec(n1, [process.execPath, cliPath(), "doctor", "--config", config], { env: cleanEnv(), timeoutMs: 30_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`ok   config `);
    expect(r.stdout).toMatch(/skip gossip-port-udp\s+static peers: no gossip/);
    expect(r.stdout).toMatch(/skip metrics-port\s+--metrics-addr off/);
    expect(r.stdout).toMatch(/skip key-file\s+static peers: no --key-file/);
  });

  it("--json prints every check as data", async () => {
    const r = await doctor(["--json"]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const parsed = JSON.parse(r.stdout) as { ok: boolean; checks: CheckResult[] };
    expect(parsed.ok).toBe(true);
    expect(parsed.checks.find((c) => c.id === "tun")).toEqual({ id: "tun", status: "pass", reason: "/dev/net/tun opens read-write" });
    expect(parsed.checks.find((c) => c.id === "service-cidr")?.status).toBe("skip");
  });
});

describe("vxmesh doctor: each problem fails its own line with exit 1", () => {
  it("the VXLAN port already bound", async () => {
    const holder = await holdPort("udp", 4789);
    try {
      const r = await doctor();
      expect(r.code, r.stdout).toBe(1);
      expect(r.lines.get("vxlan-port")).toBe(`FAIL UDP ${n1.underlayIp}:4789 (VXLAN) is already in use — fix: stop what holds it (ss -ulnp 'sport = :4789'), or choose another --vxlan-port`);
      expect([...r.lines.values()].filter((l) => l.startsWith("FAIL"))).toHaveLength(1);
    } finally {
      holder.kill("SIGKILL");
    }
  });

  it("the gossip port already bound (TCP)", async () => {
    const holder = await holdPort("tcp", 7950);
    try {
      const r = await doctor(["--gossip-port", "7950"]);
      expect(r.code, r.stdout).toBe(1);
      expect(r.lines.get("gossip-port-tcp")).toMatch(new RegExp(`^FAIL TCP ${n1.underlayIp.replace(/\./g, "\\.")}:7950 \\(gossip\\) is already in use`));
      expect(r.lines.get("gossip-port-udp")).toMatch(/^ok /);
    } finally {
      holder.kill("SIGKILL");
    }
  });

  it("the key file readable by others (0644)", async () => {
    const loose = join(dir, "loose-key");
    writeFileSync(loose, generateKey() + "\n");
    chmodSync(loose, 0o644);
    const r = await doctor(["--key-file", loose]);
    expect(r.code, r.stdout).toBe(1);
    expect(r.lines.get("key-file")).toBe(`FAIL key file ${loose} is readable or writable by group or others (mode 0644); run: chmod 600 ${loose} — fix: chmod 600 ${loose}`);
  });

  it("the key file holding no valid key", async () => {
    const bad = join(dir, "bad-key");
    writeFileSync(bad, "not a key\n", { mode: 0o600 });
    const r = await doctor(["--key-file", bad]);
    expect(r.code).toBe(1);
    expect(r.lines.get("key-file")).toMatch(new RegExp(`^FAIL ${bad}:1: expected base64 of exactly 32 bytes`));
  });

  it("a host route over the cluster CIDR", async () => {
    const ns = n1.namespace;
    const l = lab as Lab;
    expect((await l.exec(ns, ["ip", "route", "add", "10.244.77.0/24", "dev", "eth0", "proto", "static"])).code).toBe(0);
    try {
      const r = await doctor();
      expect(r.code, r.stdout).toBe(1);
      expect(r.lines.get("host-routes")).toBe(
        "FAIL --cluster-cidr 10.244.0.0/16 overlaps the host route 10.244.77.0/24 dev eth0 proto static (device eth0): pod traffic would be misrouted; " +
        "remove that route or choose pod addresses clear of 10.244.77.0/24 — fix: ip route del 10.244.77.0/24 dev eth0, or choose other pod addresses");
    } finally {
      await l.exec(ns, ["ip", "route", "del", "10.244.77.0/24", "dev", "eth0"]);
    }
  });

  it("a service CIDR over the cluster CIDR", async () => {
    const r = await doctor([], { VXMESH_SERVICE_CIDR: "10.244.0.0/18" });
    expect(r.code, r.stdout).toBe(1);
    expect(r.lines.get("service-cidr")).toMatch(/^FAIL --cluster-cidr 10\.244\.0\.0\/16 overlaps service CIDR 10\.244\.0\.0\/18 \(VXMESH_SERVICE_CIDR\)/);
    expect(r.lines.get("config")).toMatch(/^ok /);
  });

  it("--mtu larger than the underlay allows", async () => {
    const r = await doctor(["--mtu", "1451"]);
    expect(r.code).toBe(1);
    expect(r.lines.get("underlay-mtu")).toBe("FAIL eth0 has MTU 1500, which leaves room for 1450 inside VXLAN, less than --mtu 1451 — fix: lower --mtu to 1450 or less, or raise the MTU of eth0 to 1501");
  });

  it("an underlay address this node does not hold", async () => {
    const r = await doctor(["--underlay-ip", "192.0.2.250"]);
    expect(r.code).toBe(1);
    expect(r.lines.get("underlay-mtu")).toMatch(/^FAIL --underlay-ip 192\.0\.2\.250 is not assigned to any interface/);
    expect(r.lines.get("vxlan-port")).toMatch(/^FAIL UDP 192\.0\.2\.250:4789 \(VXLAN\): 192\.0\.2\.250 is not an address of this host/);
  });

  it("IP forwarding off: doctor says the daemon turns it on, and a started daemon does (and says so); bridge netfilter off fails", async () => {
    const l = lab as Lab;
    const sysctl = async (kv: string): Promise<void> => { await execOk(n1, ["sysctl", "-q", "-w", kv]); };
    await sysctl("net.ipv4.ip_forward=0");
    await sysctl("net.bridge.bridge-nf-call-iptables=0");
    const cluster = new Cluster(l);
    try {
      const r = await doctor();
      expect(r.code, r.stdout).toBe(1);
      expect(r.lines.get("ip-forward")).toBe("ok net.ipv4.ip_forward is off; the daemon turns it on at start");
      expect(r.lines.get("bridge-netfilter")).toMatch(/^FAIL net\.bridge\.bridge-nf-call-iptables is off: kube-proxy's rules do not see traffic between two pods of this node — fix: modprobe br_netfilter/);
      expect([...r.lines.values()].filter((x) => x.startsWith("FAIL"))).toHaveLength(1);

      const daemon = await cluster.start(n1, { extraArgs: ["--metrics-addr", "off"] });
      expect((await execOk(n1, ["sysctl", "-n", "net.ipv4.ip_forward"])).stdout.trim()).toBe("1");
      expect(daemon.log).toContain("turned on IPv4 forwarding (net.ipv4.ip_forward=1)");
      await daemon.stop();
      // Left on at exit: pods and other plugins on the node rely on it.
      expect((await execOk(n1, ["sysctl", "-n", "net.ipv4.ip_forward"])).stdout.trim()).toBe("1");
    } finally {
      await cluster.stopAll();
      await sysctl("net.ipv4.ip_forward=1");
      await sysctl("net.bridge.bridge-nf-call-iptables=1");
    }
  });

  it("a FORWARD policy of DROP passes with --forward-accept (the default) and fails without it", async () => {
    await execOk(n1, ["iptables-nft", "-P", "FORWARD", "DROP"]);
    try {
      const on = await doctor();
      expect(on.lines.get("forward-policy")).toMatch(/^ok FORWARD policy DROP \(iptables-nft, .*\): vxmesh's chain VXMESH-FORWARD accepts the cluster's pod traffic/);
      const off = await doctor(["--forward-accept=false"]);
      expect(off.code).toBe(1);
      expect(off.lines.get("forward-policy")).toMatch(/^FAIL FORWARD policy DROP \(iptables-nft, .*\) and --forward-accept=false: pod traffic between nodes and to services is dropped/);
    } finally {
      await execOk(n1, ["iptables-nft", "-P", "FORWARD", "ACCEPT"]);
    }
  });

  it("a pod bridge's route inside the node's subnet: fine with a confirmed lease, a conflict while the subnet is only claimed", async () => {
    const stateDir = join(dir, "lease-state");
    await execOk(n1, ["ip", "link", "add", "cni0", "type", "bridge"]);
    try {
      await execOk(n1, ["ip", "addr", "add", "10.244.77.1/24", "dev", "cni0"]);
      await execOk(n1, ["ip", "link", "set", "cni0", "up"]);
      const lease = (state: "claiming" | "confirmed"): void =>
        writeLease(stateDir, { subnet: (parseSubnet("10.244.77.0/24") as { ok: true; value: Subnet }).value, state, stamp: 1, seq: 1 });
      lease("claiming");
      const claiming = await doctor(["--state-dir", stateDir]);
      expect(claiming.lines.get("host-routes")).toMatch(/^FAIL --cluster-cidr 10\.244\.0\.0\/16 overlaps the host route 10\.244\.77\.0\/24 dev cni0 proto kernel/);
      lease("confirmed");
      const confirmed = await doctor(["--state-dir", stateDir]);
      expect(confirmed.lines.get("host-routes")).toBe("ok no host route overlaps 10.244.0.0/16");
    } finally {
      await execOk(n1, ["ip", "link", "del", "cni0"]);
    }
  });

  it("a bad config: the config line fails and the checks that need it are skipped", async () => {
    const config = join(dir, "bad.yaml");
    writeFileSync(config, "vni: 1\nvxlan-prot: 8472\n");
    const r = await doctor(["--config", config]);
    expect(r.code, r.stdout).toBe(1);
    expect(r.lines.get("config")).toBe(`FAIL ${config}:2: unknown setting "vxlan-prot"; did you mean vxlan-port? (settings are the flag names of \`vxmesh daemon --help\`, or their camelCase) — fix: see \`vxmesh daemon --help\``);
    expect(r.lines.get("tun")).toMatch(/^ok /);
    expect(r.lines.get("vxlan-port")).toBe("skip needs a valid configuration");
  });
});
