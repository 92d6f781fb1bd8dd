// `vxmesh install-cni --plugin bridge` without a lab: the conflist it renders for the reference
// bridge + host-local plugins (a pure function), the network.json it reads (as the daemon's own
// hand-off writer writes it), waiting for that file, and every bad value's message.

import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { writeHandoff } from "../daemon/handoff";
import { bridgeConflist, parseNetworkJson, parseWait, runInstallCni } from "../daemon/install-cni";
import { parseSubnet, type Subnet } from "../encap/types";

const dir = mkdtempSync(join(tmpdir(), "vxmesh-install-cni-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function subnet(text: string): Subnet {
  const p = parseSubnet(text);
  if (!p.ok) throw new Error(p.error);
  return p.value;
}

/** A run dir with the hand-off the daemon writes for `nodeSubnet`. */
function runDirWith(name: string, nodeSubnet: string, mtu = 1450): string {
  const runDir = join(dir, name, "run");
  writeHandoff(runDir, { clusterNetwork: subnet("10.244.0.0/16"), nodeSubnet: subnet(nodeSubnet), mtu, bridge: "vxmesh-br", controlSocket: join(runDir, "vxmesh.sock") });
  return runDir;
}

/** A bin dir holding (links to) the named reference plugins. */
function binDirWith(name: string, plugins: readonly string[]): string {
  const bin = join(dir, name, "bin");
  mkdirSync(bin, { recursive: true });
  for (const p of plugins) symlinkSync(`/usr/lib/cni/${p}`, join(bin, p));
  return bin;
}

interface Outcome { code: number; stdout: string; stderr: string; ms: number }

async function install(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Outcome> {
  let stdout = "";
  let stderr = "";
  const out = vi.spyOn(process.stdout, "write").mockImplementation((c) => ((stdout += String(c)), true));
  const err = vi.spyOn(process.stderr, "write").mockImplementation((c) => ((stderr += String(c)), true));
  const saved = { ...process.env };
  Object.assign(process.env, env);
  const t0 = Date.now();
  try {
    const code = await runInstallCni(args);
    return { code, stdout, stderr, ms: Date.now() - t0 };
  } finally {
    out.mockRestore();
    err.mockRestore();
    for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k];
  }
}

afterEach(() => vi.restoreAllMocks());

describe("the conflist for the reference bridge + host-local", () => {
  it("renders the bridge on the node subnet's gateway, host-local's range and default route, the MTU, and portmap when asked", () => {
    const list = bridgeConflist({ networkName: "vxmesh", bridge: "cni0", subnet: "10.244.7.0/24", gateway: "10.244.7.1", mtu: 1450, dataDir: "/var/lib/cni/networks", portmap: true });
    expect(list).toEqual({
      cniVersion: "1.0.0",
      name: "vxmesh",
      plugins: [
        {
          type: "bridge", bridge: "cni0", isGateway: true, hairpinMode: true, mtu: 1450,
          ipam: { type: "host-local", ranges: [[{ subnet: "10.244.7.0/24", gateway: "10.244.7.1" }]], routes: [{ dst: "0.0.0.0/0" }], dataDir: "/var/lib/cni/networks" },
          capabilities: { ips: true, mac: true },
        },
        { type: "portmap", capabilities: { portMappings: true }, snat: true },
      ],
    });
    // No cniVersions: libcni 1.2+ would pick the highest listed, which Debian's plugins (1.0.0 at most) do not speak.
    expect(list).not.toHaveProperty("cniVersions");
    const plain = bridgeConflist({ networkName: "pods", cniVersion: "0.4.0", bridge: "br-pods", subnet: "10.244.8.0/25", gateway: "10.244.8.1", mtu: 8950, dataDir: "/x" });
    expect(plain["cniVersion"]).toBe("0.4.0");
    expect((plain["plugins"] as unknown[]).length).toBe(1);
  });

  it("reads the network.json the daemon's hand-off writes; a broken one is refused naming the field", () => {
    const runDir = runDirWith("parse", "10.244.9.0/24", 1400);
    const parsed = parseNetworkJson(readFileSync(join(runDir, "network.json"), "utf8"));
    expect(parsed).toEqual({ ok: true, value: { subnet: "10.244.9.0/24", gateway: "10.244.9.1", mtu: 1400, daemonBridge: "vxmesh-br", network: "10.244.0.0/16" } });
    const bad = (o: unknown): string => {
      const p = parseNetworkJson(typeof o === "string" ? o : JSON.stringify(o));
      return p.ok ? "accepted" : p.error;
    };
    expect(bad("{")).toMatch(/^not JSON/);
    expect(bad([])).toBe("not a JSON object");
    expect(bad({ subnet: "10.244.9.1/24", mtu: 1400 })).toContain('"subnet" "10.244.9.1/24" is not an IPv4 CIDR');
    expect(bad({ subnet: "10.244.9.0/31", mtu: 1400 })).toContain("leaves no pod addresses");
    expect(bad({ subnet: "10.244.9.0/24", gateway: "10.244.10.1", mtu: 1400 })).toContain('"gateway" "10.244.10.1" is not an IPv4 address inside "subnet" 10.244.9.0/24');
    expect(bad({ subnet: "10.244.9.0/24", mtu: "1400" })).toBe('"mtu" "1400" is not an integer from 68 to 65535');
    expect(bad({ subnet: "10.244.9.0/24", mtu: 40 })).toBe('"mtu" 40 is not an integer from 68 to 65535');
  });

  it("parses --wait durations", () => {
    expect(parseWait("60s")).toEqual({ ok: true, value: 60_000 });
    expect(parseWait("2m")).toEqual({ ok: true, value: 120_000 });
    expect(parseWait("500ms")).toEqual({ ok: true, value: 500 });
    expect(parseWait("90")).toEqual({ ok: true, value: 90_000 });
    expect(parseWait("0")).toEqual({ ok: true, value: 0 });
    expect(parseWait("2h").ok).toBe(false);
    expect(parseWait("-1s").ok).toBe(false);
  });
});

describe("vxmesh install-cni --plugin bridge", () => {
  it("writes the conflist from network.json, chains portmap when it is in --bin-dir, and copies nothing into --bin-dir", async () => {
    const runDir = runDirWith("write", "10.244.21.0/24");
    const bin = binDirWith("write", ["bridge", "host-local", "portmap"]);
    const conf = join(dir, "write", "net.d");
    const r = await install(["--plugin", "bridge", "--bin-dir", bin, "--conf-dir", conf, "--run-dir", runDir, "--ipam-data-dir", join(dir, "write", "leases")]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("bridge cni0 with gateway 10.244.21.1");
    expect(readdirSync(bin).sort()).toEqual(["bridge", "host-local", "portmap"]);
    const written = JSON.parse(readFileSync(join(conf, "10-vxmesh.conflist"), "utf8")) as unknown;
    expect(written).toEqual(bridgeConflist({ networkName: "vxmesh", bridge: "cni0", subnet: "10.244.21.0/24", gateway: "10.244.21.1", mtu: 1450, dataDir: join(dir, "write", "leases"), portmap: true }));

    // Other names, no portmap, 0.4.0; re-rendered in place.
    const again = await install(["--plugin", "bridge", "--bin-dir", bin, "--conf-dir", conf, "--run-dir", runDir, "--bridge-name", "br-pods",
      "--network-name", "pods", "--conf-name", "10-vxmesh.conflist", "--cni-version", "0.4.0", "--portmap=false"]);
    expect(again.code).toBe(0);
    const list = JSON.parse(readFileSync(join(conf, "10-vxmesh.conflist"), "utf8")) as { cniVersion: string; name: string; plugins: Record<string, unknown>[] };
    expect(list).toMatchObject({ cniVersion: "0.4.0", name: "pods", plugins: [{ type: "bridge", bridge: "br-pods", ipam: { dataDir: "/var/lib/cni/networks" } }] });
    expect(list.plugins).toHaveLength(1);
  });

  it("waits for network.json up to --wait, and says which file, who writes it and what to check when it never comes", async () => {
    const runDir = join(dir, "wait", "run");
    mkdirSync(runDir, { recursive: true });
    const bin = binDirWith("wait", ["bridge", "host-local"]);
    const conf = join(dir, "wait", "net.d");
    const args = ["--plugin", "bridge", "--bin-dir", bin, "--conf-dir", conf, "--run-dir", runDir];

    const now = await install([...args, "--wait", "0"]);
    expect(now.code).toBe(1);
    expect(now.stderr).toContain(`${join(runDir, "network.json")} does not exist: the vxmesh daemon writes it once this node's subnet is confirmed`);
    expect(now.stderr).toContain(`vxmesh status --run-dir ${runDir}`);

    const late = await install([...args, "--wait", "400ms"]);
    expect(late.code).toBe(1);
    expect(late.ms).toBeGreaterThanOrEqual(400);
    expect(late.stderr).toContain("waiting up to 0.4 s for");
    expect(late.stderr).toContain("did not appear within 0.4 s");
    expect(late.stderr).toContain("give a longer --wait");

    // The file appears while it waits.
    const pending = install([...args, "--wait", "10s"]);
    setTimeout(() => runDirWith("wait", "10.244.22.0/24", 1400), 300);
    const ok = await pending;
    expect(ok.stderr).toContain("waiting up to 10 s");
    expect(ok.code).toBe(0);
    expect(JSON.parse(readFileSync(join(conf, "10-vxmesh.conflist"), "utf8"))).toMatchObject({ plugins: [{ mtu: 1400, ipam: { ranges: [[{ subnet: "10.244.22.0/24", gateway: "10.244.22.1" }]] } }] });
  });

  it("warns, and still writes, when the reference plugins are not in --bin-dir", async () => {
    const runDir = runDirWith("missing", "10.244.23.0/24");
    const bin = binDirWith("missing", []);
    const r = await install(["--plugin", "bridge", "--bin-dir", bin, "--conf-dir", join(dir, "missing", "net.d"), "--run-dir", runDir]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`warning: ${join(bin, "bridge")} and ${join(bin, "host-local")} are missing`);
    expect(r.stderr).toContain("containernetworking-plugins");
  });

  it("refuses bad values, naming the flag and what is valid", async () => {
    const runDir = runDirWith("bad", "10.244.24.0/24");
    const base = ["--bin-dir", binDirWith("bad", ["bridge", "host-local"]), "--conf-dir", join(dir, "bad", "net.d"), "--run-dir", runDir];
    const cases: [string[], NodeJS.ProcessEnv, string][] = [
      [["--plugin", "flannel"], {}, '--plugin "flannel" is not valid: expected vxmesh (the vxmesh-cni plugin'],
      [["--plugin", "bridge", "--bridge-name", "a/b"], {}, '--bridge-name "a/b" is not valid: expected an interface name of 1 to 15 letters'],
      [["--plugin", "bridge", "--bridge-name", "abcdefghijklmnop"], {}, '--bridge-name "abcdefghijklmnop" is not valid'],
      [["--plugin", "bridge", "--wait", "soon"], {}, '--wait "soon" is not valid: expected a duration up to 1h such as 60s'],
      [["--plugin", "bridge", "--cni-version", "0.3.1"], {}, '--cni-version "0.3.1" is not valid: expected one of 0.4.0, 1.0.0, 1.1.0'],
      [["--bridge-name", "cni0"], {}, "--bridge-name applies only to --plugin bridge; add --plugin bridge, or leave it out for --plugin vxmesh"],
      [[], { VXMESH_WAIT: "30s" }, "VXMESH_WAIT applies only to --plugin bridge"],
      [["--plugin", "vxmesh", "--ipam-data-dir", "/x"], {}, "--ipam-data-dir applies only to --plugin bridge"],
      [["--plugin", "bridge", "--bridge-name", "vxmesh-br"], {}, "--bridge-name vxmesh-br is the vxmesh daemon's own pod bridge"],
    ];
    for (const [args, env, message] of cases) {
      const r = await install([...base, ...args], env);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr, args.join(" ")).toContain(message);
    }
    expect(readdirSync(join(dir, "bad"))).not.toContain("net.d");
  });
});
