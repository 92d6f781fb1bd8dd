import { describe, expect, it } from "vitest";
import { suspicionTimeout } from "../control/membership/config";
import { measure, Simulator, type MeasureResult } from "../control/membership/sim";

function withoutTiming(r: MeasureResult): Omit<MeasureResult, "realMs"> {
  const { realMs: _ignored, ...rest } = r;
  return rest;
}

describe("membership simulator", () => {
  it("is deterministic: the same seed gives the same run, another seed another", () => {
    const o = { nodes: 40, seed: 21, loss: 0.05, duration: 60_000 };
    const a = measure({ ...o, wire: false });
    const b = measure({ ...o, wire: false });
    expect(withoutTiming(b)).toEqual(withoutTiming(a));
    const c = measure({ ...o, seed: 22, wire: false });
    expect(withoutTiming(c)).not.toEqual(withoutTiming(a));
  });

  it("the wire codec is transparent: full encode/decode gives the very same run as objects", () => {
    const o = { nodes: 30, seed: 5, loss: 0.05, duration: 60_000 };
    const objects = withoutTiming(measure({ ...o, wire: false }));
    const bytes = withoutTiming(measure({ ...o, wire: true }));
    expect({ ...bytes, options: null }).toEqual({ ...objects, options: null });
    expect(bytes.traffic.udpPayloadBytes).toBeGreaterThan(0);
  });

  it("re-converges after a partition into two groups heals", () => {
    const N = 20;
    let deaths = 0;
    const sim = new Simulator({ seed: 31, onEvent: (_o, ev) => { if (ev.change === "dead") deaths++; } });
    sim.addNodes(N);
    sim.startWarm([...Array(N).keys()]);
    sim.runUntil(5_000);
    sim.partition([...Array(N / 2).keys()]);
    sim.runUntil(65_000);
    // Each side has declared the other dead.
    expect(sim.stateAt(0, N - 1)).toBe("dead");
    expect(sim.stateAt(N - 1, 0)).toBe("dead");
    expect(deaths).toBeGreaterThan(0);
    sim.heal();
    let healedAt = NaN;
    for (let t = 70_000; t <= 245_000 && Number.isNaN(healedAt); t += 5_000) {
      sim.runUntil(t);
      if (sim.converged()) healedAt = t;
    }
    expect(healedAt).toBeLessThanOrEqual(245_000);
    // And it stays converged.
    sim.runFor(30_000);
    expect(sim.converged()).toBe(true);
  });

  it("10% loss at N=50: many false suspicions, all refuted, no false deaths over 4 virtual minutes", () => {
    const r = measure({ nodes: 50, seed: 3, loss: 0.1, duration: 240_000, wire: false });
    expect(r.falseDeaths.falseSuspicionsStarted).toBeGreaterThan(20);
    expect(r.falseDeaths.events).toBe(0);
    // The crashed member is still found out, and the joiner learned of, under the same loss.
    expect(r.crash.declared).toBe(r.crash.of);
    expect(r.join.count).toBe(r.join.of);
    expect(r.convergedAtEnd).toBe(true);
  });

  it("N=200 through a full suspicion timeout: figures in line with memberlist's formulas", { timeout: 30_000 }, () => {
    const r = measure({ nodes: 200, seed: 1, loss: 0, duration: 60_000, wire: true });
    expect(r.join.count).toBe(r.join.of);
    expect(r.join.max).toBeLessThan(2_000); // a handful of 200 ms gossip rounds
    const min = suspicionTimeout(4, 200, 1000);
    expect(r.crash.declared).toBe(r.crash.of);
    expect(r.crash.firstDead - r.crash.firstSuspect).toBeGreaterThanOrEqual(min);
    expect(r.crash.lastDead).toBeLessThan(r.crash.firstSuspect + 6 * min);
    expect(r.falseDeaths.events).toBe(0);
    expect(r.quietTraffic.udpPackets).toBeCloseTo(2, 1); // one ping and one ack per second
    expect(r.convergedAtEnd).toBe(true);
  });
});
