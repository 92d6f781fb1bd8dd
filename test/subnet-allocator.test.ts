import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { LeaseState, NodeRecord } from "../control/node-record";
import {
  checkSubnetLen, claimBeats, claimsOf, leaseOf, SubnetAllocator,
  type AllocatorOptions, type AllocatorState, type AllocatorStep, type AllocatorView, type Lease, type PeerClaim,
} from "../control/subnet-allocator";
import { formatSubnet, parseIpv4, parseSubnet, subnetsOverlap, type Subnet, type Vni, type MacAddr } from "../encap/types";

function net(text: string): Subnet {
  const r = parseSubnet(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function allocator(nodeName: string, o: Partial<AllocatorOptions> = {}): SubnetAllocator {
  const r = SubnetAllocator.create({ clusterCidr: net("10.244.0.0/16"), nodeName, confirmAfterMs: 30_000, quarantineMs: 60_000, ...o });
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function view(now: number, peers: PeerClaim[] = [], quarantine: AllocatorView["quarantine"] = []): AllocatorView {
  return { now, peers, quarantine };
}

function claim(name: string, subnet: string, stamp: number, state: LeaseState = "claiming"): PeerClaim {
  return { name, subnet: net(subnet), stamp, state };
}

function announced(step: AllocatorStep): Lease {
  if (step.action.kind !== "announce") throw new Error(`expected announce, got ${step.action.kind}`);
  return step.action.lease;
}

describe("subnet allocator: configuration", () => {
  it("validates --subnet-len against the cluster CIDR", () => {
    const cidr = net("10.244.0.0/16");
    expect(checkSubnetLen(cidr, 24)).toEqual({ ok: true, value: 24 });
    expect(checkSubnetLen(cidr, 16)).toEqual({ ok: true, value: 16 });
    expect(checkSubnetLen(cidr, 30)).toEqual({ ok: true, value: 30 });
    const msg = "--subnet-len 15 is not valid with --cluster-cidr 10.244.0.0/16: it must be an integer from 16 (the cluster CIDR's prefix length) to 30";
    expect(checkSubnetLen(cidr, 15)).toEqual({ ok: false, error: msg });
    expect(checkSubnetLen(cidr, 31)).toMatchObject({ ok: false });
    expect(checkSubnetLen(cidr, 24.5)).toMatchObject({ ok: false });
    expect(SubnetAllocator.create({ clusterCidr: cidr, nodeName: "a", subnetLen: 31 })).toMatchObject({ ok: false, error: expect.stringContaining("--subnet-len 31") });
  });

  it("refuses a static subnet outside the cluster CIDR and bad node names", () => {
    expect(SubnetAllocator.create({ clusterCidr: net("10.244.0.0/16"), nodeName: "a", staticSubnet: net("10.0.0.0/24") }))
      .toEqual({ ok: false, error: "--subnet 10.0.0.0/24 is not inside --cluster-cidr 10.244.0.0/16" });
    expect(SubnetAllocator.create({ clusterCidr: net("10.244.0.0/16"), nodeName: "" }).ok).toBe(false);
  });

  it("tries the candidates in a name-seeded permutation of the whole CIDR", () => {
    fc.assert(fc.property(fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/), fc.integer({ min: 0, max: 12 }), (name, bits) => {
      const a = allocator(name, { clusterCidr: net("10.240.0.0/12"), subnetLen: 12 + bits });
      const seen = new Set<string>();
      for (let i = 0; i < a.candidateCount; i++) {
        const s = a.candidate(i);
        expect(s.prefixLen).toBe(12 + bits);
        expect(subnetsOverlap(s, net("10.240.0.0/12"))).toBe(true);
        seen.add(formatSubnet(s));
      }
      expect(seen.size).toBe(2 ** bits);
      expect(formatSubnet(allocator(name, { clusterCidr: net("10.240.0.0/12"), subnetLen: 12 + bits }).candidate(0))).toBe(formatSubnet(a.candidate(0)));
    }), { numRuns: 60 });
  });

  it("spreads 50 nodes starting at once over mostly different first choices", () => {
    const firsts = new Set<string>();
    for (let i = 0; i < 50; i++) firsts.add(formatSubnet(allocator(`node-${String(i).padStart(2, "0")}`).candidate(0)));
    // A uniform choice of 50 out of 256 gives about 45.5 distinct values on average.
    expect(firsts.size).toBeGreaterThanOrEqual(42);
  });
});

describe("subnet allocator: claims and conflicts", () => {
  it("claims, waits one round, then confirms", () => {
    const a = allocator("node-a");
    const s1 = a.step(a.initialState(), view(1000));
    const lease = announced(s1);
    expect(lease).toEqual({ subnet: a.candidate(0), state: "claiming", stamp: 1000, seq: 1 });
    expect(s1.wakeAt).toBe(31_000);
    expect(s1.state.phase === "confirmed").toBe(false);
    const s2 = a.step(s1.state, view(30_999));
    expect(s2.action).toEqual({ kind: "wait" });
    expect(s2.wakeAt).toBe(31_000);
    const s3 = a.step(s2.state, view(31_000));
    expect(s3.action).toEqual({ kind: "confirm", lease: { ...lease, state: "confirmed" }, via: "claim" });
    expect(s3.state.phase === "confirmed").toBe(true);
    expect(a.step(s3.state, view(99_000)).action).toEqual({ kind: "hold" });
  });

  it("does not pick a subnet someone else claims", () => {
    const a = allocator("node-a");
    const taken = formatSubnet(a.candidate(0));
    const lease = announced(a.step(a.initialState(), view(1000, [claim("node-z", taken, 5, "confirmed")])));
    expect(lease.subnet).toEqual(a.candidate(1));
  });

  it("tie-break: earlier stamp wins, even against a lower name", () => {
    const b = allocator("node-b");
    const mine = announced(b.step(b.initialState(), view(1000)));
    const s = formatSubnet(mine.subnet);
    const state: AllocatorState = { phase: "claiming", lease: mine, confirmableAt: 31_000 };
    // node-a (lower name) claimed later: node-b keeps it.
    expect(b.step(state, view(2000, [claim("node-a", s, 1001)])).action).toEqual({ kind: "wait" });
    // node-c claimed earlier: node-b loses and claims again.
    const lost = b.step(state, view(2000, [claim("node-c", s, 999)]));
    expect(lost.action).toMatchObject({ kind: "announce", lost: { winner: "node-c", winnerStamp: 999, wasConfirmed: false } });
    const again = announced(lost);
    expect(again.subnet).not.toEqual(mine.subnet);
    expect(again.seq).toBe(2);
    expect(again.stamp).toBe(2000);
  });

  it("tie-break: equal stamps go to the lower node name, both ways", () => {
    const a = allocator("node-a");
    const b = allocator("node-b");
    const s = net("10.244.7.0/24");
    const leaseA: Lease = { subnet: s, state: "claiming", stamp: 5000, seq: 1 };
    const leaseB: Lease = { subnet: s, state: "claiming", stamp: 5000, seq: 1 };
    // node-a sees node-b: keeps it.
    const ra = a.step({ phase: "claiming", lease: leaseA, confirmableAt: 35_000 }, view(6000, [claim("node-b", "10.244.7.0/24", 5000)]));
    expect(ra.action).toEqual({ kind: "wait" });
    // node-b sees node-a: loses and claims elsewhere.
    const rb = b.step({ phase: "claiming", lease: leaseB, confirmableAt: 35_000 }, view(6000, [claim("node-a", "10.244.7.0/24", 5000)]));
    expect(rb.action).toMatchObject({ kind: "announce", lost: { winner: "node-a", wasConfirmed: false } });
    expect(subnetsOverlap(announced(rb).subnet, s)).toBe(false);
    expect(claimBeats({ name: "node-a", stamp: 5, state: "claiming" }, { name: "node-b", stamp: 5, state: "claiming" })).toBe(true);
    expect(claimBeats({ name: "node-b", stamp: 5, state: "claiming" }, { name: "node-a", stamp: 5, state: "claiming" })).toBe(false);
  });

  it("a confirmed claim beats a claiming one whatever the stamps; released claims never contend", () => {
    const a = allocator("node-a");
    const s = "10.244.9.0/24";
    const confirmed: AllocatorState = { phase: "confirmed", lease: { subnet: net(s), state: "confirmed", stamp: 5000, seq: 1 } };
    expect(a.step(confirmed, view(9000, [claim("node-0", s, 1, "claiming")])).action).toEqual({ kind: "hold" });
    expect(a.step(confirmed, view(9000, [claim("node-0", s, 1, "released")])).action).toEqual({ kind: "hold" });
    const claiming: AllocatorState = { phase: "claiming", lease: { subnet: net(s), state: "claiming", stamp: 1000, seq: 1 }, confirmableAt: 31_000 };
    expect(a.step(claiming, view(9000, [claim("node-z", s, 7000, "confirmed")])).action).toMatchObject({ kind: "announce", lost: { winner: "node-z" } });
  });

  it("reports a lost confirmed lease loudly (the partition case)", () => {
    const b = allocator("node-b");
    const s = "10.244.9.0/24";
    const confirmed: AllocatorState = { phase: "confirmed", lease: { subnet: net(s), state: "confirmed", stamp: 5000, seq: 3 } };
    const r = b.step(confirmed, view(90_000, [claim("node-c", s, 4000, "confirmed")]));
    expect(r.action).toMatchObject({ kind: "announce", lost: { subnet: net(s), winner: "node-c", winnerStamp: 4000, wasConfirmed: true } });
    expect(announced(r).seq).toBe(4);
  });

  it("ignores its own name among the peers", () => {
    const a = allocator("node-a");
    const first = formatSubnet(a.candidate(0));
    expect(announced(a.step(a.initialState(), view(10, [claim("node-a", first, 1, "confirmed")]))).subnet).toEqual(a.candidate(0));
  });

  it("turns node records into claims", () => {
    const rec: NodeRecord = {
      name: "node-q", protocolVersion: 1, underlay: { family: 4, ip: (parseIpv4("192.0.2.9") as { ok: true; value: never }).value },
      gossipPort: 7946, vtepMac: 0x020000000001 as MacAddr, vni: 1 as Vni, vxlanPort: 4789,
      podSubnets: [net("10.244.4.0/24")], lease: { state: "confirmed", stamp: 77, seq: 2 },
    };
    expect(claimsOf(rec)).toEqual([{ name: "node-q", subnet: net("10.244.4.0/24"), stamp: 77, state: "confirmed" }]);
    expect(claimsOf({ ...rec, podSubnets: [], lease: null })).toEqual([]);
  });
});

describe("subnet allocator: static, persisted, quarantine, exhaustion", () => {
  it("a static subnet is confirmed at once and beats dynamic claims", () => {
    const st = allocator("node-s", { staticSubnet: net("10.244.5.0/24") });
    const r = st.step(st.initialState(), view(1000, [claim("node-d", "10.244.5.0/24", 10, "confirmed")]));
    expect(r.action).toEqual({ kind: "confirm", lease: { subnet: net("10.244.5.0/24"), state: "confirmed", stamp: 0, seq: 0 }, via: "static" });
    expect(st.step(r.state, view(2000)).action).toEqual({ kind: "hold" });
    // The dynamic holder sees the static claim and moves, loudly.
    const d = allocator("node-d");
    const held: AllocatorState = { phase: "confirmed", lease: { subnet: net("10.244.5.0/24"), state: "confirmed", stamp: 10, seq: 1 } };
    expect(d.step(held, view(2000, [claim("node-s", "10.244.5.0/24", 0, "confirmed")])).action)
      .toMatchObject({ kind: "announce", lost: { winner: "node-s", wasConfirmed: true } });
  });

  it("two static subnets that overlap: the higher name reports a configuration error", () => {
    const z = allocator("node-z", { staticSubnet: net("10.244.5.0/24") });
    const r = z.step(z.initialState(), view(1000, [claim("node-a", "10.244.4.0/23", 0, "confirmed")]));
    expect(r.action).toEqual({
      kind: "static-conflict",
      error: "static --subnet 10.244.5.0/24 overlaps node node-a's static subnet 10.244.4.0/23, which wins (lower node name); give one of the two nodes another subnet",
    });
    expect(r.state.phase === "confirmed").toBe(false);
    const a = allocator("node-a", { staticSubnet: net("10.244.4.0/23") });
    expect(a.step(a.initialState(), view(1000, [claim("node-z", "10.244.5.0/24", 0, "confirmed")])).action).toMatchObject({ kind: "confirm" });
    // Once the other node is reconfigured, the conflict clears.
    expect(z.step(r.state, view(2000)).action).toMatchObject({ kind: "confirm", via: "static" });
  });

  it("keeps the persisted lease on restart, at once, while others hold their own subnets", () => {
    const a = allocator("node-a");
    const s1 = a.step(a.initialState(), view(1000, [claim("node-b", "10.244.200.0/24", 500, "confirmed")]));
    const confirmed = a.step(s1.state, view(31_000));
    const lease = leaseOf(confirmed.state);
    expect(lease?.state).toBe("confirmed");
    // Crash; restart much later with the lease from the state dir. Peers still show our old record
    // (own name: ignored) and we are quarantined under our own name (does not block us).
    const restarted = a.step(a.initialState(lease), view(500_000,
      [claim("node-b", "10.244.200.0/24", 500, "confirmed"), { name: "node-a", subnet: (lease as Lease).subnet, stamp: 1000, state: "released" }],
      [{ subnet: (lease as Lease).subnet, owner: "node-a", releasedAt: 499_000 }]));
    expect(restarted.action).toEqual({ kind: "confirm", lease, via: "persisted" });
    expect(restarted.state.phase === "confirmed").toBe(true);
  });

  it("resumes a claim that was still pending at the crash, and gives up a lease someone else now holds", () => {
    const a = allocator("node-a");
    const pending: Lease = { subnet: net("10.244.33.0/24"), state: "claiming", stamp: 1000, seq: 4 };
    const resumed = a.step(a.initialState(pending), view(5000));
    expect(resumed.action).toMatchObject({ kind: "announce", lease: pending });
    expect(resumed.wakeAt).toBe(35_000);
    const old: Lease = { subnet: net("10.244.33.0/24"), state: "confirmed", stamp: 1000, seq: 4 };
    const moved = a.step(a.initialState(old), view(900_000, [claim("node-n", "10.244.33.0/24", 800_000, "confirmed")]));
    expect(moved.action).toMatchObject({
      kind: "announce", note: "persisted lease 10.244.33.0/24 is held by node-n (confirmed 10.244.33.0/24); claiming anew",
      lease: { state: "claiming", seq: 5 },
    });
    const wasStatic = a.step(a.initialState({ ...old, stamp: 0, seq: 0 }), view(7000));
    expect(wasStatic.action).toEqual({ kind: "confirm", lease: { ...old, stamp: 7000, seq: 0 }, via: "persisted" });
    const outside = a.step(a.initialState({ ...old, subnet: net("10.99.0.0/24") }), view(1));
    expect(outside.action).toMatchObject({ kind: "announce", note: "persisted lease 10.99.0.0/24 is not inside --cluster-cidr 10.244.0.0/16; claiming anew" });
  });

  it("quarantines a departed node's subnet, then reuses it", () => {
    // Two candidates: one held, one quarantined.
    const a = allocator("node-a", { clusterCidr: net("10.244.0.0/23"), subnetLen: 24, quarantineMs: 60_000 });
    const peers = [claim("node-b", "10.244.0.0/24", 10, "confirmed")];
    const quarantine = [{ subnet: net("10.244.1.0/24"), owner: "node-c", releasedAt: 100_000 }];
    const r = a.step(a.initialState(), view(100_500, peers, quarantine));
    expect(r.action).toEqual({ kind: "exhausted", error: "cluster CIDR 10.244.0.0/23 has no free /24 left: 2 in use or quarantined" });
    expect(r.wakeAt).toBe(160_000);
    expect(a.step(r.state, view(159_999, peers, quarantine)).action.kind).toBe("exhausted");
    const later = a.step(r.state, view(160_000, peers, quarantine));
    expect(announced(later).subnet).toEqual(net("10.244.1.0/24"));
    expect(announced(later).seq).toBe(1);
    // A restart inside the quarantine does not give node-c's subnet to a persisted lease of another node.
    const other = a.step(a.initialState({ subnet: net("10.244.1.0/24"), state: "confirmed", stamp: 5, seq: 1 }), view(120_000, [], quarantine));
    expect(other.action).toMatchObject({ kind: "announce", note: "persisted lease 10.244.1.0/24 is quarantined after node-c left; claiming anew" });
    expect(announced(other).subnet).toEqual(net("10.244.0.0/24"));
  });

  it("reports exhaustion of the cluster CIDR clearly and recovers when a subnet frees up", () => {
    const peers: PeerClaim[] = [];
    for (let i = 0; i < 256; i++) peers.push(claim(`n${i}`, `10.244.${i}.0/24`, 1 + i, "confirmed"));
    const a = allocator("node-late");
    const r = a.step(a.initialState(), view(10_000, peers));
    expect(r.action).toEqual({ kind: "exhausted", error: "cluster CIDR 10.244.0.0/16 has no free /24 left: 256 in use or quarantined" });
    expect(r.wakeAt).toBeNull();
    expect(leaseOf(r.state)).toBeNull();
    // A wide bogus claim also counts, by the /24s it covers.
    expect(a.step(a.initialState(), view(1, [claim("wide", "10.0.0.0/8", 1, "confirmed")])).action).toMatchObject({ kind: "exhausted" });
    const freed = a.step(r.state, view(20_000, peers.filter((p) => p.name !== "n17")));
    expect(announced(freed).subnet).toEqual(net("10.244.17.0/24"));
  });
});

/** A small deterministic PRNG for the simulation (mulberry32). */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

describe("subnet allocator: 50 nodes starting together", () => {
  it("end with distinct subnets, and no confirmed subnet ever changes", () => {
    const TICK = 100;
    const CONFIRM = 5_000;
    const MAX_DELAY = 2_000; // gossip delivery delay; one round must exceed twice this
    const N = 50;
    fc.assert(fc.property(
      fc.uniqueArray(fc.stringMatching(/^[a-z][a-z0-9-]{0,9}$/), { minLength: N, maxLength: N }),
      fc.array(fc.integer({ min: 0, max: 30 }), { minLength: N, maxLength: N }),
      fc.array(fc.integer({ min: -3, max: 3 }), { minLength: N, maxLength: N }),
      fc.constantFrom(16, 18),
      fc.integer(),
      (names, startTicks, skewTicks, cidrPrefix, seed) => {
        const rnd = prng(seed);
        const cidr = net(cidrPrefix === 16 ? "10.244.0.0/16" : "10.244.0.0/18");
        interface Pub { at: number; lease: Lease; delay: number[] }
        const nodes = names.map((name, i) => ({
          name,
          alloc: allocator(name, { clusterCidr: cidr, confirmAfterMs: CONFIRM }),
          start: (startTicks[i] as number) * TICK,
          skew: (skewTicks[i] as number) * TICK, // coarse clocks: equal stamps happen often
          state: null as AllocatorState | null,
          pubs: [] as Pub[],
          confirmed: null as Subnet | null,
        }));
        const order = nodes.map((_, i) => i);
        let lastPub = 0;
        let firstTry = 0;
        for (let t = 0; t <= 600_000; t += TICK) {
          for (let i = order.length - 1; i > 0; i--) {
            const j = Math.floor(rnd() * (i + 1));
            [order[i], order[j]] = [order[j] as number, order[i] as number];
          }
          for (const i of order) {
            const n = nodes[i]!;
            if (t < n.start) continue;
            const peers: PeerClaim[] = [];
            for (let j = 0; j < nodes.length; j++) {
              if (j === i) continue;
              const other = nodes[j]!;
              for (let p = other.pubs.length - 1; p >= 0; p--) {
                const pub = other.pubs[p]!;
                if (pub.at + (pub.delay[i] as number) <= t) {
                  peers.push({ name: other.name, subnet: pub.lease.subnet, stamp: pub.lease.stamp, state: pub.lease.state });
                  break;
                }
              }
            }
            const r = n.alloc.step(n.state ?? n.alloc.initialState(), { now: t + n.skew, peers, quarantine: [] });
            n.state = r.state;
            if (r.action.kind === "announce" || r.action.kind === "confirm") {
              n.pubs.push({ at: t, lease: r.action.lease, delay: nodes.map(() => Math.floor(rnd() * MAX_DELAY)) });
              lastPub = t;
            }
            if (n.confirmed !== null) {
              // Invariant: once confirmed, the subnet never changes.
              expect(r.state.phase, `${n.name} left confirmed at ${t}`).toBe("confirmed");
              expect(leaseOf(r.state)?.subnet).toEqual(n.confirmed);
            }
            if (r.action.kind === "confirm") {
              n.confirmed = r.action.lease.subnet;
              if (r.action.lease.seq === 1) firstTry++;
            }
            expect(r.action.kind).not.toBe("exhausted");
          }
          if (nodes.every((n) => n.confirmed !== null) && t > lastPub + MAX_DELAY + CONFIRM) break;
        }
        const subnets = nodes.map((n) => n.confirmed);
        expect(subnets.every((s) => s !== null)).toBe(true);
        for (let i = 0; i < subnets.length; i++) {
          for (let j = 0; j < i; j++) {
            expect(subnetsOverlap(subnets[i] as Subnet, subnets[j] as Subnet), `${nodes[i]!.name} and ${nodes[j]!.name}`).toBe(false);
          }
        }
        // Most nodes keep their first claim.
        expect(firstTry).toBeGreaterThanOrEqual(cidrPrefix === 16 ? 30 : 10);
      },
    ), { numRuns: 25 });
  });
});
