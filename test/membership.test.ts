import { afterEach, describe, expect, it, vi } from "vitest";
import type { Ipv4 } from "../encap/types";
import { DATAGRAM_PAYLOAD_BUDGET, pushPullScale, retransmitLimit, suspicionTimeout } from "../control/membership/config";
import { Membership } from "../control/membership/membership";
import { seededRng } from "../control/membership/rng";
import { Simulator } from "../control/membership/sim";
import { remainingSuspicionTime } from "../control/membership/suspicion";
import type { Address, Effect, MemberChange, Message } from "../control/membership/types";

// ---------------------------------------------------------------- helpers

interface Seen {
  t: number;
  observer: number;
  change: MemberChange;
  name: string;
  incarnation: number;
}

function cluster(n: number, opts: { seed?: number; loss?: number; config?: ConstructorParameters<typeof Simulator>[0]["config"]; wire?: boolean } = {}) {
  const seen: Seen[] = [];
  const sim = new Simulator({
    seed: opts.seed ?? 1, loss: opts.loss ?? 0, config: opts.config, wire: opts.wire ?? false,
    onEvent: (observer, ev, t) => seen.push({ t, observer, change: ev.change, name: ev.member.name, incarnation: ev.member.incarnation }),
  });
  sim.addNodes(n);
  return { sim, seen };
}

const addr = (i: number): Address => ({ ip: (0x0a000000 + i) as Ipv4, port: 7946 });
const sends = (fx: Effect[]): Extract<Effect, { kind: "send" }>[] => fx.filter((e): e is Extract<Effect, { kind: "send" }> => e.kind === "send");

function lone(name = "a", i = 1): Membership {
  return new Membership({}, { name, address: addr(i), meta: new Uint8Array([i]) }, seededRng(i));
}

afterEach(() => {
  vi.restoreAllMocks();
});

// ---------------------------------------------------------------- formulas

describe("memberlist's scaling formulas", () => {
  it("match memberlist's util.go at the sizes we quote", () => {
    expect(suspicionTimeout(4, 1000, 1000)).toBe(12_000);
    expect(suspicionTimeout(4, 10, 1000)).toBe(4_000);
    expect(suspicionTimeout(4, 3, 1000)).toBe(4_000); // max(1, log10 n)
    expect(suspicionTimeout(4, 200, 1000)).toBe(9_204); // floor(log10(200)·1000) = 2301
    expect(retransmitLimit(4, 1000)).toBe(16);
    expect(retransmitLimit(4, 999)).toBe(12);
    expect(retransmitLimit(4, 50)).toBe(8);
    expect(pushPullScale(30_000, 32)).toBe(30_000);
    expect(pushPullScale(30_000, 33)).toBe(60_000);
    expect(pushPullScale(30_000, 1000)).toBe(180_000);
  });

  it("shrinks the suspicion timeout logarithmically with confirmations", () => {
    expect(remainingSuspicionTime(0, 2, 12_000, 72_000)).toBe(72_000);
    expect(remainingSuspicionTime(1, 2, 12_000, 72_000)).toBe(Math.floor(72_000 - (Math.log(2) / Math.log(3)) * 60_000));
    expect(remainingSuspicionTime(2, 2, 12_000, 72_000)).toBe(12_000);
    expect(remainingSuspicionTime(5, 2, 12_000, 72_000)).toBe(12_000);
    expect(remainingSuspicionTime(3, 0, 12_000, 72_000)).toBe(72_000);
  });
});

// ---------------------------------------------------------------- the machine on its own

describe("the membership state machine", () => {
  it("answers a ping meant for it, and only that", () => {
    const m = lone("a", 1);
    const fx = m.receive(addr(2), [{ type: "ping", seq: 9, target: "a", source: addr(2), sourceName: "b" }], 0);
    const out = sends(fx);
    expect(out).toHaveLength(1);
    expect(out[0]?.to).toEqual(addr(2));
    expect(out[0]?.messages[0]).toEqual({ type: "ack", seq: 9 });
    // Its own alive rides along (piggybacked), and the size is the encoded size.
    expect(out[0]?.messages.some((x) => x.type === "alive" && x.name === "a")).toBe(true);
    expect(sends(m.receive(addr(2), [{ type: "ping", seq: 10, target: "someone-else", source: addr(2), sourceName: "b" }], 0))).toHaveLength(0);
  });

  it("relays an indirect probe: ack back to the requester, or a nack when the target stays silent", () => {
    const m = lone("helper", 1);
    const req: Message = { type: "pingReq", seq: 77, target: "t", targetAddress: addr(3), nack: true, source: addr(2), sourceName: "r" };
    const fx = sends(m.receive(addr(2), [req], 1000));
    const ping = fx[0]?.messages[0];
    expect(fx[0]?.to).toEqual(addr(3));
    expect(ping?.type).toBe("ping");
    if (ping?.type !== "ping") return;
    const relayed = sends(m.receive(addr(3), [{ type: "ack", seq: ping.seq }], 1100));
    expect(relayed[0]?.to).toEqual(addr(2));
    expect(relayed[0]?.messages[0]).toEqual({ type: "ack", seq: 77 });

    // Silent target: a nack at 80% of the probe timeout, not before.
    const m2 = lone("helper", 1);
    sends(m2.receive(addr(2), [req], 1000));
    expect(sends(m2.tick(1399)).some((s) => s.messages.some((x) => x.type === "nack"))).toBe(false);
    const later = sends(m2.tick(1400));
    expect(later.find((s) => s.messages.some((x) => x.type === "nack"))?.to).toEqual(addr(2));
  });

  it("refutes a suspicion of itself by raising its incarnation", () => {
    const m = lone("a", 1);
    expect(m.incarnation).toBe(1);
    m.receive(addr(2), [{ type: "suspect", incarnation: 1, name: "a", from: "b" }], 0);
    expect(m.incarnation).toBe(2);
    expect(m.healthScore).toBe(1); // having to refute counts against our own health
    m.receive(addr(2), [{ type: "dead", incarnation: 5, name: "a", from: "b" }], 0);
    expect(m.incarnation).toBe(6);
    // The refutation is gossiped: the next datagram carries alive(a, 6).
    const fx = sends(m.receive(addr(2), [{ type: "ping", seq: 1, target: "a", source: addr(2), sourceName: "b" }], 1));
    expect(fx[0]?.messages).toContainEqual({ type: "alive", incarnation: 6, name: "a", address: addr(1), meta: new Uint8Array([1]) });
  });

  it("keeps a dead member so stale alive news cannot resurrect it; a newer incarnation can", () => {
    const m = lone("a", 1);
    const alive = (inc: number): Message => ({ type: "alive", incarnation: inc, name: "b", address: addr(2), meta: new Uint8Array([2]) });
    let fx = m.receive(addr(2), [alive(3)], 0);
    expect(fx.filter((e) => e.kind === "member").map((e) => e.kind === "member" && e.change)).toEqual(["alive"]);
    fx = m.receive(addr(3), [{ type: "dead", incarnation: 3, name: "b", from: "c" }], 10);
    expect(fx.filter((e) => e.kind === "member").map((e) => e.kind === "member" && e.change)).toEqual(["dead"]);
    expect(m.stateOf("b")).toBe("dead");
    fx = m.receive(addr(3), [alive(3)], 20);
    expect(m.stateOf("b")).toBe("dead");
    fx = m.receive(addr(3), [alive(4)], 30);
    expect(m.stateOf("b")).toBe("alive");
    expect(fx.filter((e) => e.kind === "member").map((e) => e.kind === "member" && e.change)).toEqual(["alive"]);
  });

  it("reports meta changes as updates and a leave as left, not dead", () => {
    const m = lone("a", 1);
    m.receive(addr(2), [{ type: "alive", incarnation: 1, name: "b", address: addr(2), meta: new Uint8Array([1]) }], 0);
    const fx = m.receive(addr(2), [{ type: "alive", incarnation: 2, name: "b", address: addr(2), meta: new Uint8Array([9]) }], 1);
    const ev = fx.find((e) => e.kind === "member");
    expect(ev?.kind === "member" && ev.change).toBe("updated");
    expect(ev?.kind === "member" && Array.from(ev.member.meta)).toEqual([9]);
    const left = m.receive(addr(2), [{ type: "dead", incarnation: 2, name: "b", from: "b" }], 2).find((e) => e.kind === "member");
    expect(left?.kind === "member" && left.change).toBe("left");
    expect(m.stateOf("b")).toBe("left");
  });

  it("refuses an alive for a live member at another address (conflict), accepts it for a gone one", () => {
    const m = lone("a", 1);
    m.receive(addr(2), [{ type: "alive", incarnation: 1, name: "b", address: addr(2), meta: new Uint8Array(0) }], 0);
    m.receive(addr(9), [{ type: "alive", incarnation: 5, name: "b", address: addr(9), meta: new Uint8Array(0) }], 1);
    expect(m.member("b")?.address).toEqual(addr(2));
    expect(m.stats.addressConflicts).toBe(1);
    m.receive(addr(2), [{ type: "dead", incarnation: 1, name: "b", from: "b" }], 2);
    m.receive(addr(9), [{ type: "alive", incarnation: 1, name: "b", address: addr(9), meta: new Uint8Array(0) }], 3);
    expect(m.member("b")?.address).toEqual(addr(9));
    expect(m.stateOf("b")).toBe("alive");
  });

  it("leaves gracefully and reports when the notice is out", () => {
    const m = lone("a", 1);
    m.receive(addr(2), [{ type: "alive", incarnation: 1, name: "b", address: addr(2), meta: new Uint8Array(0) }], 0);
    const fx = sends(m.leave(100));
    expect(fx.length).toBeGreaterThan(0);
    expect(fx[0]?.messages).toContainEqual({ type: "dead", incarnation: 1, name: "a", from: "a" });
    expect(m.leaveComplete).toBe(false);
    for (let t = 100; t < 5000 && !m.leaveComplete; t += 50) m.tick(t);
    expect(m.leaveComplete).toBe(true);
    // A leaving node does not refute or rejoin.
    m.receive(addr(2), [{ type: "alive", incarnation: 9, name: "a", address: addr(1), meta: new Uint8Array(0) }], 6000);
    expect(m.incarnation).toBe(1);
  });

  it("forgets a dead member only after deadRetention", () => {
    const { sim } = cluster(5, { seed: 12, config: { deadRetention: 60_000 } });
    sim.startWarm([0, 1, 2, 3, 4]);
    sim.at(1_000, () => sim.crash(4));
    sim.runUntil(40_000);
    expect(sim.stateAt(0, 4)).toBe("dead");
    const diedAt = sim.membership(0).member("node-0004")?.stateChangedAt ?? NaN;
    sim.runUntil(diedAt + 55_000);
    expect(sim.stateAt(0, 4)).toBe("dead");
    sim.runUntil(diedAt + 70_000); // reaped at the next wrap of the probe round-robin
    expect(sim.stateAt(0, 4)).toBeUndefined();
    expect(sim.membership(0).members().map((m) => m.name)).toEqual(["node-0000", "node-0001", "node-0002", "node-0003"]);
  });

  it("takes time, randomness and I/O only through its arguments", () => {
    vi.spyOn(Date, "now").mockImplementation(() => { throw new Error("Date.now called"); });
    vi.spyOn(Math, "random").mockImplementation(() => { throw new Error("Math.random called"); });
    vi.spyOn(globalThis, "setTimeout").mockImplementation((() => { throw new Error("setTimeout called"); }) as never);
    const { sim } = cluster(12, { seed: 3, loss: 0.05 });
    sim.startWarm([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    sim.at(2000, () => sim.startJoin(10, [0]));
    sim.at(4000, () => sim.crash(3));
    sim.at(5000, () => sim.leave(4));
    sim.runUntil(40_000);
    expect(sim.stateAt(0, 3)).toBe("dead");
  });

  it("scales its own probing with its health score (Lifeguard awareness)", () => {
    // A node whose helpers never nack (its own messages are not getting through) gets slower.
    const { sim } = cluster(6, { seed: 5 });
    sim.startWarm([0, 1, 2, 3, 4, 5]);
    sim.runUntil(2000);
    for (let j = 1; j < 6; j++) sim.cutLink(0, j); // node 0 can hear but not speak
    sim.runUntil(20_000);
    const m = sim.membership(0);
    expect(m.healthScore).toBeGreaterThan(2);
    // Its next probe is further away than one base interval.
    const probesBefore = m.stats.probes;
    sim.runFor(10_000);
    expect(m.stats.probes - probesBefore).toBeLessThan(5);
    for (let j = 1; j < 6; j++) sim.restoreLink(0, j);
    sim.runFor(60_000);
    expect(sim.membership(0).healthScore).toBe(0);
  });
});

// ---------------------------------------------------------------- protocol behaviour in the simulator

describe("SWIM + Lifeguard in the simulator", () => {
  it("converges: nodes joining one by one through a seed all learn each other", () => {
    const { sim, seen } = cluster(8, { wire: true });
    sim.startJoin(0, []);
    for (let i = 1; i < 8; i++) sim.at(i * 300, () => sim.startJoin(i, [0]));
    sim.runUntil(8_000);
    expect(sim.converged({ incarnations: true })).toBe(true);
    for (let o = 0; o < 8; o++) {
      const names = new Set(seen.filter((s) => s.observer === o && s.change === "alive").map((s) => s.name));
      expect(names.size).toBe(7);
    }
    for (let i = 0; i < 8; i++) expect(sim.membership(i).members().map((m) => m.state)).toEqual(new Array(8).fill("alive"));
  });

  it("50 nodes starting at once through one seed converge, every datagram within budget", () => {
    const { sim } = cluster(50, { seed: 2 });
    for (let i = 0; i < 50; i++) sim.startJoin(i, i === 0 ? [] : [0]);
    sim.runUntil(10_000);
    // Gossip tells nearly everyone within seconds; each update is sent a bounded number of
    // times, so a member may miss one until its push-pull (every 60 s at N=50) repairs it.
    let known = 0;
    for (let o = 0; o < 50; o++) for (let s = 0; s < 50; s++) if (o !== s && sim.stateAt(o, s) === "alive") known++;
    expect(known / (50 * 49)).toBeGreaterThan(0.99);
    sim.runUntil(75_000);
    expect(sim.converged({ incarnations: true })).toBe(true);
    expect(sim.maxDatagram).toBeLessThanOrEqual(DATAGRAM_PAYLOAD_BUDGET);
    expect(sim.maxDatagram).toBeGreaterThan(DATAGRAM_PAYLOAD_BUDGET - 100); // the queue did fill datagrams
  });

  it("suspects a crashed node, then everyone declares it dead within the suspicion bounds", () => {
    const N = 10;
    const { sim, seen } = cluster(N, { seed: 4 });
    sim.startWarm([...Array(N).keys()]);
    const crashAt = 5_000;
    sim.at(crashAt, () => sim.crash(3));
    sim.runUntil(60_000);
    const about = seen.filter((s) => s.name === "node-0003");
    const firstSuspect = Math.min(...about.filter((s) => s.change === "suspect").map((s) => s.t));
    const deaths = about.filter((s) => s.change === "dead");
    expect(new Set(deaths.map((d) => d.observer)).size).toBe(N - 1);
    const min = suspicionTimeout(4, N, 1000);
    const max = 6 * min;
    // Someone probes it within one round of the round-robin, and the probe takes an interval.
    expect(firstSuspect - crashAt).toBeLessThanOrEqual(N * 1000 + 1000);
    const first = Math.min(...deaths.map((d) => d.t));
    const last = Math.max(...deaths.map((d) => d.t));
    expect(first - firstSuspect).toBeGreaterThanOrEqual(min);
    // At most the unconfirmed maximum, the last-chance probe, and the spread of the news.
    expect(last - firstSuspect).toBeLessThanOrEqual(max + 500 + 2_000);
    for (const o of sim.upNodes()) expect(sim.stateAt(o, 3)).toBe("dead");
    expect(seen.filter((s) => s.change === "dead" && s.name !== "node-0003")).toEqual([]);
  });

  it("a suspected node that is alive refutes: its incarnation rises and nobody declares it dead", () => {
    const { sim, seen } = cluster(10, { seed: 6 });
    sim.startWarm([...Array(10).keys()]);
    sim.runUntil(3_000);
    // Node 1 suspects node 7 (as if its probe had failed) and gossips it.
    sim.inject(1, [{ type: "suspect", incarnation: 1, name: "node-0007", from: "node-0002" }], 2);
    sim.runUntil(4_000);
    expect(seen.some((s) => s.name === "node-0007" && s.change === "suspect")).toBe(true);
    sim.runUntil(60_000);
    expect(sim.membership(7).incarnation).toBeGreaterThan(1);
    expect(sim.membership(7).stats.refutations).toBeGreaterThan(0);
    expect(seen.filter((s) => s.change === "dead")).toEqual([]);
    expect(sim.converged({ incarnations: true })).toBe(true);

    // The same through the network: node 7 cut off for a moment, long enough to be suspected.
    const b = cluster(10, { seed: 7 });
    b.sim.startWarm([...Array(10).keys()]);
    b.sim.runUntil(2_000);
    b.sim.partition([7]);
    b.sim.runUntil(5_500);
    b.sim.heal();
    b.sim.runUntil(60_000);
    expect(b.seen.some((s) => s.name === "node-0007" && s.change === "suspect")).toBe(true);
    expect(b.sim.membership(7).incarnation).toBeGreaterThan(1);
    expect(b.seen.filter((s) => s.change === "dead")).toEqual([]);
    expect(b.sim.converged({ incarnations: true })).toBe(true);
  });

  it("indirect probes save a node whose direct path from one prober is cut", () => {
    const run = (indirectChecks: number) => {
      const { sim, seen } = cluster(6, { seed: 8, config: { indirectChecks } });
      sim.startWarm([...Array(6).keys()]);
      sim.cutLink(0, 5); // node 0's datagrams never reach node 5; everything else works
      sim.runUntil(60_000);
      return { sim, seen, suspicions: seen.filter((s) => s.name === "node-0005" && s.change === "suspect") };
    };
    const withHelpers = run(3);
    expect(withHelpers.sim.membership(0).stats.indirectProbes).toBeGreaterThan(10);
    expect(withHelpers.suspicions).toEqual([]);
    expect(withHelpers.seen.filter((s) => s.change === "dead")).toEqual([]);
    // Control: without helpers the same cut makes node 0 suspect node 5 (which then refutes).
    const without = run(0);
    expect(without.suspicions.length).toBeGreaterThan(0);
    expect(without.sim.membership(5).incarnation).toBeGreaterThan(1);
  });

  it("a graceful leave is seen as left, promptly, and never as a failure", () => {
    const { sim, seen } = cluster(8, { seed: 9 });
    sim.startWarm([...Array(8).keys()]);
    sim.at(5_000, () => sim.leave(5));
    sim.runUntil(20_000);
    const left = seen.filter((s) => s.name === "node-0005" && s.change === "left");
    expect(new Set(left.map((s) => s.observer)).size).toBe(7);
    expect(Math.max(...left.map((s) => s.t)) - 5_000).toBeLessThan(1_500);
    expect(seen.filter((s) => s.name === "node-0005" && (s.change === "dead" || s.change === "suspect"))).toEqual([]);
    expect(sim.node(5).up).toBe(false); // stopped once its notice was out
    for (const o of sim.upNodes()) expect(sim.stateAt(o, 5)).toBe("left");
  });

  it("a meta update propagates to everyone as an update with a higher incarnation", () => {
    const { sim, seen } = cluster(20, { seed: 10 });
    sim.startWarm([...Array(20).keys()]);
    const meta = new Uint8Array([1, 2, 3, 4]);
    sim.at(3_000, () => sim.updateMeta(2, meta));
    sim.runUntil(6_000);
    const updates = seen.filter((s) => s.name === "node-0002" && s.change === "updated");
    expect(new Set(updates.map((s) => s.observer)).size).toBe(19);
    expect(Math.max(...updates.map((s) => s.t)) - 3_000).toBeLessThan(2_000);
    for (const o of sim.upNodes()) {
      if (o === 2) continue;
      const v = sim.membership(o).member("node-0002");
      expect(Array.from(v?.meta ?? [])).toEqual([1, 2, 3, 4]);
      expect(v?.incarnation).toBe(2);
    }
  });

  it("a restarted node (same name, fresh state) rejoins and its new incarnation wins", () => {
    const { sim, seen } = cluster(8, { seed: 11 });
    sim.startWarm([...Array(8).keys()]);
    // Crash, get declared dead everywhere, come back with fresh state (incarnation 1 again).
    sim.at(2_000, () => sim.crash(4));
    sim.runUntil(40_000);
    for (const o of sim.upNodes()) expect(sim.stateAt(o, 4)).toBe("dead");
    sim.node(4).meta = new Uint8Array([42]);
    sim.restart(4, [0]);
    expect(sim.membership(4).incarnation).toBe(1);
    // Gossip tells nearly everyone at once; a member that missed it hears it at the latest when
    // the restarted node probes it (it answers a ping from a member it holds dead with the news).
    sim.runUntil(50_000);
    const inc = sim.membership(4).incarnation;
    expect(inc).toBeGreaterThan(1); // it learned of its former life and out-bid it
    for (const o of sim.upNodes()) {
      if (o === 4) continue;
      expect(sim.stateAt(o, 4)).toBe("alive");
      expect(sim.membership(o).member("node-0004")?.incarnation).toBe(inc);
      expect(Array.from(sim.membership(o).member("node-0004")?.meta ?? [])).toEqual([42]);
    }
    expect(seen.filter((s) => s.name === "node-0004" && s.change === "alive" && s.t >= 40_000).length).toBe(7);

    // A quick restart, before anyone noticed, with new meta: same incarnation, different meta,
    // so it refutes its old self and the new meta wins — by gossip for nearly everyone, by the
    // next push-pull (30 s at this size) for a member the gossip missed.
    sim.at(55_000, () => {
      sim.crash(6);
      sim.node(6).meta = new Uint8Array([7, 7]);
      sim.restart(6, [0]);
    });
    sim.runUntil(95_000);
    expect(sim.membership(6).incarnation).toBeGreaterThan(1);
    for (const o of sim.upNodes()) {
      if (o === 6) continue;
      expect(Array.from(sim.membership(o).member("node-0006")?.meta ?? [])).toEqual([7, 7]);
    }
    expect(seen.filter((s) => s.name === "node-0006" && s.change === "dead")).toEqual([]);
  });
});
