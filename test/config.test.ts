import { describe, expect, it } from "vitest";
import { parseDaemonConfig, parsePeers } from "../daemon/config";
import { formatMac, parseSubnet, vtepMacFor, type Ipv4 } from "../encap/types";

const base = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--subnet", "10.244.1.0/24", "--peers", "/tmp/p.json"];

function error(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  const r = parseDaemonConfig(argv, env);
  if (r.ok) throw new Error("expected an error");
  return r.error;
}

describe("daemon flags", () => {
  it("applies defaults", () => {
    const r = parseDaemonConfig(base, {});
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.vni).toBe(1);
    expect(r.value.vxlanPort).toBe(4789);
    expect(r.value.tap).toBe("vxmesh0");
    expect(r.value.vtepMac).toBe(vtepMacFor("n1"));
    expect(r.value.mtu).toBeUndefined();
  });

  it("names the flag, the value and the valid range in every error", () => {
    expect(error([...base, "--vni", "16777216"])).toBe('--vni "16777216" is not valid: expected an integer from 0 to 16777215');
    expect(error([...base, "--vxlan-port", "0"])).toContain("--vxlan-port \"0\" is not valid: expected an integer from 1 to 65535");
    expect(error([...base, "--mtu", "100"])).toContain("--mtu \"100\" is not valid: expected an integer from 576 to 9000");
    expect(error([...base, "--vtep-mac", "01:00:00:00:00:01"])).toContain("unicast");
    expect(error([...base, "--tap", "a-name-that-is-too-long"])).toContain("--tap");
    expect(error(["--node-name", "n1"])).toContain("--underlay-ip is required");
    expect(error([...base, "--bogus", "1"])).toMatch(/unknown flag --bogus; valid flags: .*--node-name/);
    expect(error([...base.slice(0, 5), "10.244.1.7/24", ...base.slice(6)])).toContain("did you mean 10.244.1.0/24");
    expect(error([...base, "--vni"])).toContain("--vni needs a value");
  });

  it("reads VXMESH_<FLAG> from the environment, the command line winning", () => {
    const r = parseDaemonConfig([...base, "--vni", "5"], { VXMESH_VNI: "9", VXMESH_VXLAN_PORT: "8472" });
    expect(r.ok && r.value.vni).toBe(5);
    expect(r.ok && r.value.vxlanPort).toBe(8472);
    expect(error(base, { VXMESH_VXLAN_PORT: "x" })).toContain('VXMESH_VXLAN_PORT "x" is not valid');
  });
});

describe("peers file", () => {
  const sub = parseSubnet("10.244.1.0/24");
  if (!sub.ok) throw new Error("bad fixture");
  const self = { nodeName: "n1", subnet: sub.value, underlayIp: 0xc000020b as Ipv4, vtepMac: vtepMacFor("n1") };
  const entry = (o: Record<string, unknown>): string =>
    JSON.stringify([{ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", vtepMac: "02:00:00:00:00:02", ...o }]);
  const err = (text: string): string => {
    const r = parsePeers(text, self);
    if (r.ok) throw new Error("expected an error");
    return r.error;
  };

  it("parses entries, skips this node and derives a missing MAC", () => {
    const r = parsePeers(JSON.stringify([
      { name: "n1", underlayIp: "192.0.2.11", subnet: "10.244.1.0/24" },
      { name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24" },
    ]), self);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value).toHaveLength(1);
    expect(formatMac(r.value[0]!.vtepMac)).toBe(formatMac(vtepMacFor("n2")));
  });

  it("says exactly what is wrong", () => {
    expect(err("{")).toContain("not valid JSON");
    expect(err("{}")).toContain("expected a JSON array");
    expect(err(entry({ underlayIp: "192.0.2" }))).toBe('entry 0 (n2): underlayIp "192.0.2" is not valid: expected a dotted-quad IPv4 address such as 192.0.2.10');
    expect(err(entry({ subnet: "10.244.1.0/25" }))).toContain("overlaps this node's --subnet 10.244.1.0/24");
    expect(err(entry({ vtepMac: "zz" }))).toContain("vtepMac \"zz\" is not valid");
    expect(err(entry({ extra: 1 }))).toContain('unknown field "extra"');
    expect(err(entry({ underlayIp: 5 }))).toContain('field "underlayIp" must be a string');
    expect(err(JSON.stringify([
      { name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24" },
      { name: "n3", underlayIp: "192.0.2.13", subnet: "10.244.2.128/25" },
    ]))).toContain("overlaps n2's 10.244.2.0/24");
  });
});
