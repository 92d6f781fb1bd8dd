// cni/spec.ts and cni/store.ts without a kernel: the protocol rules (environment, configuration,
// versions, result shapes, errors) and the address store's allocation and persistence.

import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { parseSubnet, type Subnet } from "../encap/types";
import { CniError, ErrorCode, formatResult, mergeResults, parseConfig, parseEnv, parseResult, requestedAttachment, versionResult } from "../cni/spec";
import { formatIpv4, formatMac } from "../encap/types";
import { AddressStore, poolRange } from "../cni/store";
import { hostVethAlias, hostVethName } from "../cni/handler";

function subnet(t: string): Subnet {
  const r = parseSubnet(t);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function cniError(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error("expected a CniError");
}

const ADD_ENV = { CNI_COMMAND: "ADD", CNI_CONTAINERID: "c1", CNI_NETNS: "/run/netns/p", CNI_IFNAME: "eth0" };

describe("parseEnv", () => {
  it("accepts a complete ADD and a DEL without CNI_NETNS", () => {
    expect(parseEnv(ADD_ENV)).toMatchObject({ command: "ADD", containerID: "c1", netns: "/run/netns/p", ifname: "eth0" });
    expect(parseEnv({ CNI_COMMAND: "DEL", CNI_CONTAINERID: "c1", CNI_IFNAME: "eth0" }).netns).toBe("");
  });

  it("names every missing variable (code 4)", () => {
    const e = cniError(() => parseEnv({ CNI_COMMAND: "ADD" }));
    expect(e.code).toBe(ErrorCode.InvalidEnvironment);
    expect(e.message).toContain("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME");
    expect(cniError(() => parseEnv({})).message).toContain("CNI_COMMAND");
    expect(cniError(() => parseEnv({ CNI_COMMAND: "FROB" })).message).toContain("unknown CNI_COMMAND");
  });

  it("rejects bad container IDs, interface names and relative netns paths", () => {
    for (const [k, v] of [["CNI_CONTAINERID", "../x"], ["CNI_CONTAINERID", "-x"], ["CNI_IFNAME", "a-very-long-name0"], ["CNI_IFNAME", "a:b"],
      ["CNI_IFNAME", "a b"], ["CNI_IFNAME", ".."], ["CNI_NETNS", "run/netns/p"]] as const) {
      const e = cniError(() => parseEnv({ ...ADD_ENV, [k]: v }));
      expect(e.code, `${k}=${v}`).toBe(ErrorCode.InvalidEnvironment);
      expect(e.message).toContain(k);
    }
  });

  it("needs nothing but the command for GC, STATUS and VERSION", () => {
    for (const c of ["GC", "STATUS", "VERSION"]) expect(parseEnv({ CNI_COMMAND: c }).command).toBe(c);
  });
});

describe("parseConfig", () => {
  const base = { cniVersion: "1.1.0", name: "vxmesh", type: "vxmesh-cni" };

  it("tolerates unknown fields and reads what it knows", () => {
    const c = parseConfig(JSON.stringify({ ...base, mtu: 1400, extra: { deep: [1, { x: null }] }, runtimeConfig: { portMappings: [] }, args: { cni: {} } }), "ADD");
    expect(c).toMatchObject({ cniVersion: "1.1.0", name: "vxmesh", mtu: 1400, prevResult: undefined });
  });

  it("answers 6 for undecodable input, 7 for a bad name, 1 for a version it does not speak", () => {
    expect(cniError(() => parseConfig("{", "ADD")).code).toBe(ErrorCode.DecodingFailure);
    expect(cniError(() => parseConfig("[1]", "ADD")).code).toBe(ErrorCode.DecodingFailure);
    expect(cniError(() => parseConfig(JSON.stringify({ cniVersion: "1.1.0" }), "ADD")).code).toBe(ErrorCode.InvalidConfig);
    expect(cniError(() => parseConfig(JSON.stringify({ cniVersion: "1.1.0", name: "a/b" }), "ADD")).code).toBe(ErrorCode.InvalidConfig);
    for (const v of ["0.3.1", "2.0.0", undefined]) {
      expect(cniError(() => parseConfig(JSON.stringify({ ...base, cniVersion: v }), "ADD")).code, String(v)).toBe(ErrorCode.IncompatibleVersion);
    }
    expect(cniError(() => parseConfig(JSON.stringify({ ...base, mtu: 10 }), "ADD")).code).toBe(ErrorCode.InvalidConfig);
  });

  it("allows GC and STATUS only from 1.1.0 on, as the reference skel does", () => {
    for (const cmd of ["GC", "STATUS"] as const) {
      expect(cniError(() => parseConfig(JSON.stringify({ ...base, cniVersion: "1.0.0" }), cmd)).code).toBe(ErrorCode.IncompatibleVersion);
      expect(() => parseConfig(JSON.stringify(base), cmd)).not.toThrow();
    }
  });

  it("reads cni.dev/valid-attachments for GC and rejects a malformed list", () => {
    const c = parseConfig(JSON.stringify({ ...base, "cni.dev/valid-attachments": [{ containerID: "a", ifname: "eth0" }] }), "GC");
    expect(c.validAttachments).toEqual([{ containerID: "a", ifname: "eth0" }]);
    expect(parseConfig(JSON.stringify(base), "GC").validAttachments).toBeUndefined();
    expect(cniError(() => parseConfig(JSON.stringify({ ...base, "cni.dev/valid-attachments": [{ containerID: 1 }] }), "GC")).code).toBe(ErrorCode.InvalidConfig);
  });
});

describe("requestedAttachment (CNI_ARGS IP=/MAC=, runtimeConfig ips/mac)", () => {
  const conf = (extra: Record<string, unknown> = {}): ReturnType<typeof parseConfig> =>
    parseConfig(JSON.stringify({ cniVersion: "1.0.0", name: "vxmesh", type: "vxmesh-cni", ...extra }), "ADD");
  const shown = (args: string, extra?: Record<string, unknown>): { ip?: string; mac?: string } => {
    const r = requestedAttachment(args, conf(extra));
    return { ...(r.ip === undefined ? {} : { ip: formatIpv4(r.ip) }), ...(r.mac === undefined ? {} : { mac: formatMac(r.mac) }) };
  };

  it("reads IP and MAC from CNI_ARGS as podman passes them, ignoring other keys", () => {
    expect(shown("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=web;MAC=02:AB:cd:00:00:07;IP=10.244.1.9")).toEqual({ ip: "10.244.1.9", mac: "02:ab:cd:00:00:07" });
    expect(shown("")).toEqual({});
    expect(shown("IgnoreUnknown=1;K8S_POD_NAME=a=b")).toEqual({});
  });

  it("reads the ips and mac capabilities and args.cni.ips, with or without a prefix length; the same address twice is one", () => {
    expect(shown("", { runtimeConfig: { ips: ["10.244.1.9/24"], mac: "02:00:00:00:00:09" } })).toEqual({ ip: "10.244.1.9", mac: "02:00:00:00:00:09" });
    expect(shown("", { args: { cni: { ips: ["10.244.1.10"] } } })).toEqual({ ip: "10.244.1.10" });
    expect(shown("IP=10.244.1.9", { runtimeConfig: { ips: ["10.244.1.9/24"] } })).toEqual({ ip: "10.244.1.9" });
  });

  it("an empty MAC= in CNI_ARGS leaves runtimeConfig's mac in force", () => {
    expect(shown("MAC=", { runtimeConfig: { mac: "02:00:00:00:00:09" } })).toEqual({ mac: "02:00:00:00:00:09" });
  });

  it("reads the runtime fields for ADD only: a DEL, CHECK or GC with malformed ones still parses", () => {
    const odd = JSON.stringify({ cniVersion: "1.1.0", name: "vxmesh", type: "vxmesh-cni", runtimeConfig: "not an object", args: { cni: { ips: 5 } } });
    expect(cniError(() => parseConfig(odd, "ADD")).code).toBe(ErrorCode.InvalidConfig);
    for (const cmd of ["DEL", "CHECK", "GC"] as const) expect(() => parseConfig(odd, cmd), cmd).not.toThrow(CniError);
  });

  it("refuses malformed values, IPv6 and more than one address with the right code", () => {
    const code = (args: string, extra?: Record<string, unknown>): number => cniError(() => requestedAttachment(args, conf(extra))).code;
    expect(code("IP")).toBe(ErrorCode.InvalidEnvironment);
    expect(code("IP=10.244.1.300")).toBe(ErrorCode.InvalidEnvironment);
    expect(code("MAC=01:00:5e:00:00:01")).toBe(ErrorCode.InvalidEnvironment); // multicast
    expect(code("", { runtimeConfig: { mac: "nope" } })).toBe(ErrorCode.InvalidConfig);
    expect(code("", { runtimeConfig: { ips: ["fd00::5/64"] } })).toBe(ErrorCode.InvalidConfig);
    expect(code("IP=10.244.1.9,10.244.1.10")).toBe(ErrorCode.InvalidConfig);
    expect(code("IP=10.244.1.9", { runtimeConfig: { ips: ["10.244.1.10"] } })).toBe(ErrorCode.InvalidConfig);
    expect(cniError(() => conf({ runtimeConfig: { ips: "10.244.1.9" } })).code).toBe(ErrorCode.InvalidConfig);
  });
});

describe("results", () => {
  const ours = {
    interfaces: [{ name: "vxmesh-br", mac: "02:00:00:00:00:01", mtu: 1450 }, { name: "vxpabc", mac: "02:00:00:00:00:02", mtu: 1450 },
      { name: "eth0", mac: "02:00:00:00:00:03", mtu: 1450, sandbox: "/run/netns/p" }],
    ips: [{ address: "10.244.1.2/24", gateway: "10.244.1.1", interface: 2 }],
    routes: [{ dst: "0.0.0.0/0", gw: "10.244.1.1" }],
    dns: {},
  };

  it("formats each version's shape: MTUs from 1.1.0, ip versions only in 0.4.0", () => {
    const v11 = formatResult(ours, "1.1.0") as { interfaces: { mtu?: number }[]; ips: { version?: string }[] };
    expect(v11.interfaces[2]?.mtu).toBe(1450);
    expect(v11.ips[0]?.version).toBeUndefined();
    const v10 = formatResult(ours, "1.0.0") as { interfaces: { mtu?: number }[] };
    expect(v10.interfaces[2]?.mtu).toBeUndefined();
    const v04 = formatResult(ours, "0.4.0") as { cniVersion: string; ips: { version?: string }[] };
    expect(v04.cniVersion).toBe("0.4.0");
    expect(v04.ips[0]?.version).toBe("4");
  });

  it("passes a prevResult on: earlier entries first, our interface indexes shifted", () => {
    const prev = parseResult({ cniVersion: "1.0.0", interfaces: [{ name: "lo0", sandbox: "/run/netns/p" }], ips: [{ address: "192.0.2.9/32", interface: 0 }],
      routes: [{ dst: "192.0.2.0/24" }], dns: { nameservers: ["192.0.2.53"] } });
    const m = mergeResults(prev, ours);
    expect(m.interfaces.map((i) => i.name)).toEqual(["lo0", "vxmesh-br", "vxpabc", "eth0"]);
    expect(m.ips.map((i) => i.interface)).toEqual([0, 3]);
    expect(m.routes.map((r) => r.dst)).toEqual(["192.0.2.0/24", "0.0.0.0/0"]);
    expect(m.dns).toEqual({ nameservers: ["192.0.2.53"] });
  });

  it("round-trips a 0.4.0 result through parseResult", () => {
    const text = formatResult(ours, "0.4.0");
    expect(formatResult(parseResult(text), "0.4.0")).toEqual(text);
  });

  it("answers VERSION with the version asked about", () => {
    expect(versionResult(JSON.stringify({ cniVersion: "1.0.0" }))).toEqual({ cniVersion: "1.0.0", supportedVersions: ["0.4.0", "1.0.0", "1.1.0"] });
    expect(versionResult("").cniVersion).toBe("1.1.0");
  });
});

describe("host veth naming", () => {
  it("is stable, short enough for the kernel, and distinct per attachment", () => {
    expect(hostVethName("c1", "eth0")).toBe(hostVethName("c1", "eth0"));
    expect(hostVethName("c1", "eth0")).toMatch(/^vxp[0-9a-f]{12}$/);
    expect(hostVethName("c1", "eth0")).not.toBe(hostVethName("c1", "eth1"));
    expect(hostVethAlias("net", "c1", "eth0")).toBe("vxmesh-cni net c1 eth0");
    expect(hostVethAlias("net", "c".repeat(300), "eth0")).toBe("vxmesh-cni net");
  });
});

describe("AddressStore", () => {
  const dirs: string[] = [];
  const fresh = (): string => {
    const d = mkdtempSync(join(tmpdir(), "vxmesh-store-"));
    dirs.push(d);
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const owner = (id: string): { containerID: string; ifname: string; network: string } => ({ containerID: id, ifname: "eth0", network: "vxmesh" });

  it("hands out every pool address once (not network, gateway or broadcast), then reports exhaustion", () => {
    const s = new AddressStore(fresh());
    const net = subnet("10.244.9.0/29");
    expect(poolRange(net).size).toBe(5);
    const got = Array.from({ length: 5 }, (_, i) => s.reserve(net, owner(`c${i}`))?.reservation.ip);
    expect(new Set(got).size).toBe(5);
    for (const ip of got) expect(ip! - net.network).toBeGreaterThanOrEqual(2);
    for (const ip of got) expect(ip! - net.network).toBeLessThanOrEqual(6);
    expect(s.reserve(net, owner("c9"))).toBeUndefined();
    expect(s.free(net)).toBe(0);
  });

  it("keeps one address per attachment and reuses freed ones only after the others (round-robin)", () => {
    const s = new AddressStore(fresh());
    const net = subnet("10.244.9.0/29");
    const a = s.reserve(net, owner("a"))!;
    expect(s.reserve(net, owner("a"))).toEqual({ reservation: a.reservation, fresh: false });
    const b = s.reserve(net, owner("b"))!;
    s.release("a", "eth0");
    const c = s.reserve(net, owner("c"))!;
    expect(c.reservation.ip).not.toBe(a.reservation.ip);
    expect(c.reservation.ip).toBe(b.reservation.ip + 1);
  });

  it("survives a restart: reservations and the round-robin position come back from the files", () => {
    const dir = fresh();
    const net = subnet("10.244.9.0/24");
    const s1 = new AddressStore(dir);
    const a = s1.reserve(net, owner("a"))!.reservation;
    writeFileSync(join(dir, ".tmp-999-1"), "half"); // an interrupted claim
    const s2 = new AddressStore(dir);
    expect(s2.lookup("a", "eth0")?.ip).toBe(a.ip);
    expect(s2.reserve(net, owner("b"))!.reservation.ip).toBe(a.ip + 1);
    expect(readdirSync(dir).filter((n) => n.startsWith(".tmp"))).toEqual([]);
    expect(JSON.parse(readFileSync(join(dir, "10.244.9.2"), "utf8"))).toMatchObject({ containerID: "a", ifname: "eth0", network: "vxmesh" });
  });

  it("reserves exactly the address asked for: the attachment's own again, a free one (moving the attachment), never another's", () => {
    const dir = fresh();
    const net = subnet("10.244.9.0/29");
    const s = new AddressStore(dir);
    const a = s.reserve(net, owner("a"))!.reservation;
    expect(s.reserveExact(net, a.ip, owner("a"))).toEqual({ reservation: a });
    expect(s.reserveExact(net, a.ip, owner("b"))).toEqual({ takenBy: a });
    const moved = s.reserveExact(net, net.network + 5, owner("a"));
    expect("reservation" in moved && moved.reservation.ip).toBe(net.network + 5);
    expect(s.lookup("a", "eth0")?.ip).toBe(net.network + 5);
    expect(readdirSync(dir).filter((n) => /^\d/.test(n))).toEqual(["10.244.9.5"]);
    // Taken by another store on the same directory: learnt from the file, refused.
    const other = new AddressStore(dir);
    other.reserveExact(net, net.network + 6, owner("x"));
    expect(s.reserveExact(net, net.network + 6, owner("b"))).toMatchObject({ takenBy: { containerID: "x", ifname: "eth0" } });
  });

  it("never hands out an address another store on the same directory took (link(2) is exclusive)", () => {
    const dir = fresh();
    const net = subnet("10.244.9.0/29");
    const s1 = new AddressStore(dir);
    const s2 = new AddressStore(dir);
    const ips = [s1, s2, s1, s2, s1].map((s, i) => s.reserve(net, owner(`c${i}`))?.reservation.ip);
    expect(new Set(ips).size).toBe(5);
    expect(s2.reserve(net, owner("late"))).toBeUndefined();
  });
});
