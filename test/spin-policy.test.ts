import { describe, expect, it } from "vitest";
import { BURST_PERIOD_MS, BURST_SPIN_US, BURST_WAKES, SpinPolicy } from "../encap/spin-policy";

describe("SpinPolicy: how long the forwarder busy-polls after traffic", () => {
  it("gives sparse traffic the whole window: one round trip a millisecond", () => {
    const spin = new SpinPolicy(2000);
    for (let ms = 0; ms < 50; ms += 1) {
      expect(spin.afterTraffic(ms)).toBe(2000); // the request
      expect(spin.afterTraffic(ms + 0.06)).toBe(2000); // its reply, 60 µs later
    }
  });

  it("caps the window at BURST_SPIN_US from the (BURST_WAKES + 1)th wake-up within the period on, not before", () => {
    const spin = new SpinPolicy(2000);
    const step = BURST_PERIOD_MS / (BURST_WAKES + 2);
    for (let i = 0; i < BURST_WAKES; i++) expect(spin.afterTraffic(100 + i * step)).toBe(2000);
    expect(spin.afterTraffic(100 + BURST_WAKES * step)).toBe(BURST_SPIN_US);
    expect(spin.afterTraffic(100 + (BURST_WAKES + 1) * step)).toBe(BURST_SPIN_US);
  });

  it("goes back to the whole window once the burst thins out", () => {
    const spin = new SpinPolicy(2000);
    let t = 0;
    for (let i = 0; i < 100; i++) spin.afterTraffic((t += 0.01));
    expect(spin.afterTraffic((t += 0.01))).toBe(BURST_SPIN_US);
    // Wake-ups 0.2 ms apart: once the burst's last one is BURST_WAKES wake-ups back, the period is spanned.
    for (let i = 0; i < BURST_WAKES; i++) spin.afterTraffic((t += 0.2));
    expect(spin.afterTraffic((t += 0.2))).toBe(2000);
  });

  it("never raises a window below the burst cap, and keeps 0 at 0", () => {
    for (const window of [0, 20]) {
      const spin = new SpinPolicy(window);
      for (let i = 0; i < 40; i++) expect(spin.afterTraffic(i * 0.001)).toBe(window);
    }
  });
});
