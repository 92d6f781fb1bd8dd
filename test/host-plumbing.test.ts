// control/host-plumbing.ts: the pure diff, and the netlink shell against a real kernel inside a
// throwaway network namespace (the module runs in a child process started with
// `ip netns exec`, because an rtnetlink socket belongs to the namespace of its opener).

import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  diffPeers,
  VXMESH_RTPROT,
  type ActualNeighbour,
  type ActualRoute,
  type PeerRoute,
} from "../control/host-plumbing";
import { parseIpv4, parseMac, parseSubnet, type Ipv4, type MacAddr, type Subnet } from "../encap/types";

const ROOT = path.resolve(__dirname, "..");

function subnet(text: string): Subnet {
  const r = parseSubnet(text);
  if (!r.ok) throw new Error(`${text}: ${r.error}`);
  return r.value;
}
function mac(text: string): MacAddr {
  const r = parseMac(text);
  if (!r.ok) throw new Error(`${text}: ${r.error}`);
  return r.value;
}
function ip(text: string): Ipv4 {
  const r = parseIpv4(text);
  if (!r.ok) throw new Error(`${text}: ${r.error}`);
  return r.value;
}
function peer(s: string, m: string): PeerRoute {
  return { subnet: subnet(s), vtepMac: mac(m) };
}
function ourRoute(s: string, gw: string | null, extra: Partial<ActualRoute> = {}): ActualRoute {
  return { dst: subnet(s), gateway: gw === null ? null : ip(gw), onlink: true, priority: 0, tos: 0, type: 1, ...extra };
}
function neigh(a: string, m: string | null): ActualNeighbour {
  return { ip: ip(a), mac: m === null ? null : mac(m) };
}

describe("diffPeers (pure)", () => {
  const A = peer("10.244.2.0/24", "02:00:00:00:02:02");
  const B = peer("10.244.3.0/24", "02:00:00:00:03:03");

  it("adds every route and neighbour to an empty kernel", () => {
    const plan = diffPeers([A, B], [], []);
    expect(plan.addRoutes).toEqual([A.subnet, B.subnet]);
    expect(plan.setNeighbours).toEqual([
      { ip: ip("10.244.2.0"), mac: A.vtepMac },
      { ip: ip("10.244.3.0"), mac: B.vtepMac },
    ]);
    expect(plan.removeRoutes).toEqual([]);
    expect(plan.removeNeighbours).toEqual([]);
  });

  it("changes nothing when the kernel already matches", () => {
    const plan = diffPeers(
      [A, B],
      [ourRoute("10.244.2.0/24", "10.244.2.0"), ourRoute("10.244.3.0/24", "10.244.3.0")],
      [neigh("10.244.3.0", "02:00:00:00:03:03"), neigh("10.244.2.0", "02:00:00:00:02:02")],
    );
    expect(plan).toEqual({ addRoutes: [], removeRoutes: [], setNeighbours: [], removeNeighbours: [] });
  });

  it("replaces only the neighbour whose MAC changed and removes what is no longer wanted", () => {
    const stale = ourRoute("10.244.3.0/24", "10.244.3.0");
    const plan = diffPeers(
      [peer("10.244.2.0/24", "02:00:00:00:02:99")],
      [ourRoute("10.244.2.0/24", "10.244.2.0"), stale],
      [neigh("10.244.2.0", "02:00:00:00:02:02"), neigh("10.244.3.0", "02:00:00:00:03:03")],
    );
    expect(plan.addRoutes).toEqual([]);
    expect(plan.removeRoutes).toEqual([stale]);
    expect(plan.setNeighbours).toEqual([{ ip: ip("10.244.2.0"), mac: mac("02:00:00:00:02:99") }]);
    expect(plan.removeNeighbours).toEqual([neigh("10.244.3.0", "02:00:00:00:03:03")]);
  });

  it("re-creates a route of ours in the wrong shape, and drops duplicates", () => {
    const cases: ActualRoute[] = [
      ourRoute("10.244.2.0/24", "10.244.2.7"),
      ourRoute("10.244.2.0/24", "10.244.2.0", { onlink: false }),
      ourRoute("10.244.2.0/24", "10.244.2.0", { priority: 10 }),
      ourRoute("10.244.2.0/24", null),
      ourRoute("10.244.2.0/24", "10.244.2.0", { type: 6 }),
    ];
    for (const bad of cases) {
      const plan = diffPeers([A], [bad], [neigh("10.244.2.0", "02:00:00:00:02:02")]);
      expect(plan.removeRoutes).toEqual([bad]);
      expect(plan.addRoutes).toEqual([A.subnet]);
      expect(plan.setNeighbours).toEqual([]);
    }
    const good = ourRoute("10.244.2.0/24", "10.244.2.0");
    const dup = diffPeers([A], [good, { ...good }], []);
    expect(dup.addRoutes).toEqual([]);
    expect(dup.removeRoutes).toEqual([good]);
  });

  it("sets a neighbour that exists without a link-layer address", () => {
    const plan = diffPeers([A], [ourRoute("10.244.2.0/24", "10.244.2.0")], [neigh("10.244.2.0", null)]);
    expect(plan.setNeighbours).toEqual([{ ip: ip("10.244.2.0"), mac: A.vtepMac }]);
  });

  it("removes everything of ours for an empty peer list", () => {
    const r = [ourRoute("10.244.2.0/24", "10.244.2.0")];
    const n = [neigh("10.244.2.0", "02:00:00:00:02:02")];
    expect(diffPeers([], r, n)).toEqual({ addRoutes: [], removeRoutes: r, setNeighbours: [], removeNeighbours: n });
  });

  it("collapses identical duplicate peers and rejects contradictions", () => {
    expect(diffPeers([A, { ...A }], [], []).addRoutes).toEqual([A.subnet]);
    expect(() => diffPeers([A, peer("10.244.2.0/23", "02:00:00:00:09:09")], [], [])).toThrow(
      "peers disagree on 10.244.2.0: VTEP MAC 02:00:00:00:02:02 and 02:00:00:00:09:09",
    );
    const hostBits = { subnet: { family: 4 as const, network: ip("10.244.2.1"), prefixLen: 24 }, vtepMac: A.vtepMac };
    expect(() => diffPeers([hostBits], [], [])).toThrow("peer subnet 10.244.2.1/24 has host bits set");
  });
});

// ---------------------------------------------------------------------------------------------
// Real kernel, in a namespace of our own.

const NS = `vxmplumb${process.pid}`;
const DEV = "vxmesh0";
const OTHER = "vxmother0";

function sh(args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}
function ipj<T = any>(...args: string[]): T[] {
  const out = sh(["-n", NS, "-j", ...args]).trim();
  return out === "" ? [] : (JSON.parse(out) as T[]);
}
function nsList(): string[] {
  return sh(["netns", "list"])
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter((n) => n !== "");
}
function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
function delNs(name: string): void {
  spawnSync("ip", ["netns", "del", name], { stdio: "ignore" });
}

/** dist/ must hold a build at least as new as the sources the child loads. */
function ensureBuilt(): void {
  const out = path.join(ROOT, "dist/control/host-plumbing.js");
  const netlinkLayer = readdirSync(path.join(ROOT, "control/netlink")).filter((f) => f.endsWith(".ts")).map((f) => `control/netlink/${f}`);
  const srcs = ["control/host-plumbing.ts", "control/serial.ts", "encap/types.ts", ...netlinkLayer].map((p) => path.join(ROOT, p));
  const stale =
    !existsSync(out) ||
    !existsSync(path.join(ROOT, "dist/encap/types.js")) ||
    srcs.some((s) => statSync(s).mtimeMs > statSync(out).mtimeMs);
  if (!stale) return;
  // Emits even if some other module of the tree does not type-check right now.
  spawnSync("npx", ["tsc", "-p", "tsconfig.json"], { cwd: ROOT, stdio: "ignore" });
  if (!existsSync(out)) throw new Error("building with tsc did not produce dist/control/host-plumbing.js");
}

// The child: runs a list of operations on one HostPlumbing and prints one JSON line of results.
const CHILD = `
const { HostPlumbing } = require(${JSON.stringify(path.join(ROOT, "dist/control/host-plumbing.js"))});
const t = require(${JSON.stringify(path.join(ROOT, "dist/encap/types.js"))});
const get = (r) => { if (!r.ok) throw new Error(r.error); return r.value; };
(async () => {
  const ops = JSON.parse(process.argv[1]);
  const h = await HostPlumbing.open();
  const results = [];
  for (const op of ops) {
    try {
      let v;
      if (op.op === "configureTap") {
        v = await h.configureTap({ ifname: op.ifname, mac: get(t.parseMac(op.mac)), mtu: op.mtu, address: get(t.parseIpv4(op.address)) });
      } else if (op.op === "setPeers") {
        v = await h.setPeers(op.ifname, op.peers.map((p) => ({ subnet: get(t.parseSubnet(p.subnet)), vtepMac: get(t.parseMac(p.mac)) })));
      } else if (op.op === "removeAll") {
        v = await h.removeAll(op.ifname);
      } else if (op.op === "lookupRoute") {
        const r = await h.lookupRoute(get(t.parseIpv4(op.ip)), op.fibMatch);
        v = { ...r, dst: t.formatSubnet(r.dst), gateway: r.gateway === null ? null : t.formatIpv4(r.gateway) };
      } else throw new Error("unknown op " + op.op);
      results.push({ ok: v === undefined ? null : v });
    } catch (e) {
      results.push({ error: e.message, code: e.code });
    }
  }
  await h.close();
  process.stdout.write(JSON.stringify(results) + "\\n");
})().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
`;

type Op =
  | { op: "configureTap"; ifname: string; mac: string; mtu: number; address: string }
  | { op: "setPeers"; ifname: string; peers: { subnet: string; mac: string }[] }
  | { op: "removeAll"; ifname: string }
  | { op: "lookupRoute"; ip: string; fibMatch: boolean };
type Result = { ok: any } | { error: string; code?: string };

function inNs(...ops: Op[]): Result[] {
  const r = spawnSync("ip", ["netns", "exec", NS, process.execPath, "-e", CHILD, JSON.stringify(ops)], {
    encoding: "utf8",
    timeout: 30_000,
  });
  if (r.status !== 0) throw new Error(`child failed (status ${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim()) as Result[];
}
function ok(r: Result | undefined): any {
  if (r === undefined || !("ok" in r)) throw new Error(`operation failed: ${JSON.stringify(r)}`);
  return r.ok;
}

const P2 = { subnet: "10.244.2.0/24", mac: "02:00:00:00:02:02" };
const P3 = { subnet: "10.244.3.0/24", mac: "02:00:00:00:03:03" };
const P2b = { subnet: "10.244.2.0/24", mac: "02:00:00:00:02:99" };
const ZERO = { routesAdded: 0, routesRemoved: 0, neighboursSet: 0, neighboursReplaced: 0, neighboursRemoved: 0 };

function ourRoutesOnDev(): { dst: string; gateway?: string; flags?: string[] }[] {
  return ipj("route", "show", "proto", String(VXMESH_RTPROT), "dev", DEV);
}
function permanentNeighOnDev(): { dst: string; lladdr?: string; state?: string[] }[] {
  return ipj<{ dst: string; lladdr?: string; state?: string[] }>("neigh", "show", "dev", DEV).filter((n) =>
    (n.state ?? []).includes("PERMANENT"),
  );
}
const byDst = <T extends { dst: string }>(xs: T[]): T[] => [...xs].sort((a, b) => a.dst.localeCompare(b.dst));

describe("HostPlumbing in a network namespace", () => {
  beforeAll(() => {
    // A leftover of an earlier run whose process is gone, and our own name, are removed first.
    for (const n of nsList()) {
      const m = /^vxmplumb(\d+)$/.exec(n);
      if (m !== null && (n === NS || !pidAlive(Number(m[1])))) delNs(n);
    }
    ensureBuilt();
    sh(["netns", "add", NS]);
    sh(["-n", NS, "tuntap", "add", "dev", DEV, "mode", "tap"]);
    // A second device with a route of our protocol and a permanent neighbour: never ours to touch.
    sh(["-n", NS, "tuntap", "add", "dev", OTHER, "mode", "tap"]);
    sh(["-n", NS, "link", "set", OTHER, "up"]);
    sh(["-n", NS, "route", "add", "10.244.98.0/24", "dev", OTHER, "proto", String(VXMESH_RTPROT)]);
    sh(["-n", NS, "neigh", "add", "10.244.98.1", "lladdr", "02:00:00:00:98:01", "dev", OTHER, "nud", "permanent"]);
  });

  afterAll(() => {
    delNs(NS);
    expect(nsList()).not.toContain(NS);
  });

  it("configures the TAP and installs routes and neighbours for two peers", () => {
    const [tap, peers] = inNs(
      { op: "configureTap", ifname: DEV, mac: "02:00:00:00:01:01", mtu: 1450, address: "10.244.1.0" },
      { op: "setPeers", ifname: DEV, peers: [P2, P3] },
    );
    expect(ok(tap)).toBeNull();
    expect(ok(peers)).toEqual({ routesAdded: 2, routesRemoved: 0, neighboursSet: 2, neighboursReplaced: 0, neighboursRemoved: 0 });

    const [link] = ipj("link", "show", "dev", DEV);
    expect(link.address).toBe("02:00:00:00:01:01");
    expect(link.mtu).toBe(1450);
    expect(link.flags).toContain("UP");

    const [addr] = ipj("addr", "show", "dev", DEV);
    expect(addr.addr_info.filter((a: any) => a.family === "inet")).toEqual([
      expect.objectContaining({ local: "10.244.1.0", prefixlen: 32 }),
    ]);

    const routes = byDst(ipj("route", "show", "proto", String(VXMESH_RTPROT)));
    expect(routes.map((r: any) => [r.dst, r.gateway, r.dev, (r.flags ?? []).includes("onlink")])).toEqual([
      ["10.244.2.0/24", "10.244.2.0", DEV, true],
      ["10.244.3.0/24", "10.244.3.0", DEV, true],
      ["10.244.98.0/24", undefined, OTHER, false],
    ]);
    expect(byDst(permanentNeighOnDev()).map((n) => [n.dst, n.lladdr])).toEqual([
      ["10.244.2.0", "02:00:00:00:02:02"],
      ["10.244.3.0", "02:00:00:00:03:03"],
    ]);
  });

  it("is idempotent: the same calls again change nothing (a repeated configureTap keeps the neighbours)", () => {
    const [tap, again] = inNs(
      { op: "configureTap", ifname: DEV, mac: "02:00:00:00:01:01", mtu: 1450, address: "10.244.1.0" },
      { op: "setPeers", ifname: DEV, peers: [P2, P3] },
    );
    expect(ok(tap)).toBeNull();
    expect(ok(again)).toEqual(ZERO);
    expect(ourRoutesOnDev()).toHaveLength(2);
    expect(permanentNeighOnDev()).toHaveLength(2);
    const [addr] = ipj("addr", "show", "dev", DEV);
    expect(addr.addr_info.filter((a: any) => a.family === "inet")).toHaveLength(1);
  });

  it("reconfigures the TAP (new MAC, MTU, address) and setPeers restores the neighbours the kernel flushed", () => {
    const [tap, peers] = inNs(
      { op: "configureTap", ifname: DEV, mac: "02:00:00:00:01:02", mtu: 1400, address: "10.244.7.0" },
      { op: "setPeers", ifname: DEV, peers: [P2, P3] },
    );
    expect(ok(tap)).toBeNull();
    // The MAC change flushed them: set again, not replaced.
    expect(ok(peers)).toEqual({ routesAdded: 0, routesRemoved: 0, neighboursSet: 2, neighboursReplaced: 0, neighboursRemoved: 0 });
    const [link] = ipj("addr", "show", "dev", DEV);
    expect([link.address, link.mtu]).toEqual(["02:00:00:00:01:02", 1400]);
    expect(link.addr_info.filter((a: any) => a.family === "inet").map((a: any) => `${a.local}/${a.prefixlen}`)).toEqual([
      "10.244.7.0/32",
    ]);
    expect(ourRoutesOnDev()).toHaveLength(2);
    expect(permanentNeighOnDev()).toHaveLength(2);
  });

  it("removes a dropped peer, replaces a changed MAC, and leaves other protocols and devices alone", () => {
    sh(["-n", NS, "route", "add", "10.244.99.0/24", "dev", DEV, "proto", "static"]);
    const [res] = inNs({ op: "setPeers", ifname: DEV, peers: [P2b] });
    expect(ok(res)).toEqual({ routesAdded: 0, routesRemoved: 1, neighboursSet: 1, neighboursReplaced: 1, neighboursRemoved: 1 });

    expect(ourRoutesOnDev().map((r) => [r.dst, r.gateway])).toEqual([["10.244.2.0/24", "10.244.2.0"]]);
    expect(permanentNeighOnDev().map((n) => [n.dst, n.lladdr])).toEqual([["10.244.2.0", "02:00:00:00:02:99"]]);
    expect(ipj("route", "show", "10.244.99.0/24")).toEqual([expect.objectContaining({ dev: DEV, protocol: "static" })]);
    expect(ipj("route", "show", "dev", OTHER)).toEqual([expect.objectContaining({ dst: "10.244.98.0/24" })]);
    expect(ipj("neigh", "show", "dev", OTHER)).toEqual([
      expect.objectContaining({ dst: "10.244.98.1", lladdr: "02:00:00:00:98:01", state: ["PERMANENT"] }),
    ]);
  });

  it("looks up the route the kernel uses for an address: ours, someone else's, or none", () => {
    const [ours, foreign, none] = inNs(
      { op: "lookupRoute", ip: "10.244.2.5", fibMatch: true },
      { op: "lookupRoute", ip: "10.244.99.7", fibMatch: true },
      { op: "lookupRoute", ip: "10.99.0.1", fibMatch: true },
    );
    expect(ok(ours)).toMatchObject({ dst: "10.244.2.0/24", gateway: "10.244.2.0", ifname: DEV, protocol: VXMESH_RTPROT, onlink: true, type: 1 });
    expect(ok(foreign)).toMatchObject({ dst: "10.244.99.0/24", gateway: null, ifname: DEV, protocol: 4 });
    expect(none).toEqual({ error: "looking up the route to 10.99.0.1: Network is unreachable", code: "ENETUNREACH" });
  });

  it("reports a conflicting route with a message naming it, and still applies the rest", () => {
    sh(["-n", NS, "route", "add", "10.244.5.0/24", "dev", DEV, "proto", "static"]);
    const [res] = inNs({ op: "setPeers", ifname: DEV, peers: [P2b, { subnet: "10.244.5.0/24", mac: "02:00:00:00:05:05" }] });
    expect(res).toEqual({ error: "adding route 10.244.5.0/24 via 10.244.5.0 dev vxmesh0: File exists", code: "EEXIST" });
    // The foreign route is untouched, ours for 10.244.2.0/24 is still there, the new neighbour was set.
    expect(ipj("route", "show", "10.244.5.0/24")).toEqual([expect.objectContaining({ protocol: "static" })]);
    expect(ourRoutesOnDev().map((r) => r.dst)).toEqual(["10.244.2.0/24"]);
    expect(byDst(permanentNeighOnDev()).map((n) => n.dst)).toEqual(["10.244.2.0", "10.244.5.0"]);
    sh(["-n", NS, "route", "del", "10.244.5.0/24", "dev", DEV, "proto", "static"]);
  });

  it("removeAll clears our routes, neighbours and the address, and tolerates repeats and a vanished TAP", () => {
    const [first, second] = inNs({ op: "removeAll", ifname: DEV }, { op: "removeAll", ifname: DEV });
    expect(ok(first)).toEqual({
      routesAdded: 0,
      routesRemoved: 1,
      neighboursSet: 0,
      neighboursReplaced: 0,
      neighboursRemoved: 2,
      addressesRemoved: 1,
      deviceFound: true,
    });
    expect(ok(second)).toEqual({ ...ZERO, addressesRemoved: 0, deviceFound: true });

    expect(ourRoutesOnDev()).toEqual([]);
    expect(permanentNeighOnDev()).toEqual([]);
    const [addr] = ipj("addr", "show", "dev", DEV);
    expect(addr.addr_info.filter((a: any) => a.family === "inet")).toEqual([]);
    // Not ours, on another device: still there. (The static route on the TAP itself is gone:
    // the kernel flushes a device's routes when its last IPv4 address is removed.)
    expect(ipj("route", "show", "proto", String(VXMESH_RTPROT), "dev", OTHER)).toHaveLength(1);
    expect(ipj("neigh", "show", "dev", OTHER)).toHaveLength(1);

    sh(["-n", NS, "link", "del", DEV]);
    const [gone] = inNs({ op: "removeAll", ifname: DEV });
    expect(ok(gone)).toEqual({ ...ZERO, addressesRemoved: 0, deviceFound: false });
    const [missing] = inNs({ op: "setPeers", ifname: DEV, peers: [P2] });
    expect(missing).toEqual({ error: "looking up link vxmesh0: No such device", code: "ENODEV" });
  });
});
