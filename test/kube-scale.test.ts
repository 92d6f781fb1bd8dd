// A smoke test of the scale measurement (bench/kube-scale.ts): it runs end to end at a small size
// and its result has every figure, the kernel plans it reports are the ones a single Node's
// change must cause, and it leaves neither the API double's process nor its temporary files
// behind. Timings are not checked: the figures come from `node --expose-gc dist/bench/kube-scale.js`.
// Needs dist/ (the double runs as dist/bench/kube-api-process-main.js): a lab test, no root.

import { existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { CHANGE_KINDS, parseArgs, renderTable, runKubeScale, type Stats } from "../bench/kube-scale";

const none = { added: 0, replaced: 0, removed: 0 };

function isStats(s: Stats, n: number): void {
  expect(s.n).toBe(n);
  for (const v of [s.median, s.p90, s.min, s.max]) expect(typeof v).toBe("number");
}

describe("bench/kube-scale.ts", () => {
  it("measures 200 Nodes: sync, memory and each kind of change, then cleans up", async () => {
    const r = await runKubeScale({ nodes: 200, repeat: 1, changes: 4 });
    expect(r.options).toMatchObject({ nodes: 200, peers: 199, repeat: 1, changes: 4 });
    expect(r.repeats).toHaveLength(1);
    const rep = r.repeats[0];
    if (rep === undefined) throw new Error("no repeat");

    expect(rep.sync).toMatchObject({ peers: 199, pages: 1, lists: 1, listRequests: 1, watches: 1 });
    expect(rep.sync.firstPlan).toEqual({ routes: { added: 199, replaced: 0, removed: 0 }, neighbours: { added: 199, replaced: 0, removed: 0 } });
    for (const k of ["listMs", "firstPeersMs", "readyMs", "cpuMs", "firstPlanMs"] as const) expect(Number.isFinite(rep.sync[k])).toBe(true);
    for (const m of [rep.memory.self.beforeLoad, rep.memory.self.beforeSource, rep.memory.self.afterSync]) expect(m.rssMiB).toBeGreaterThan(0);
    expect(rep.memory.api.afterSync.rssMiB).toBeGreaterThan(0);
    expect(rep.ipcRoundTripMs).toHaveLength(4);

    const expected = {
      add: "routes +1 ~0 -0, neighbours +1 ~0 -0",
      mac: "routes +0 ~0 -0, neighbours +0 ~1 -0",
      underlay: "routes +0 ~0 -0, neighbours +0 ~0 -0",
      heartbeat: "no peersChanged",
      delete: "routes +0 ~0 -1, neighbours +0 ~0 -1",
    };
    for (const kind of CHANGE_KINDS) {
      const c = rep.changes[kind];
      expect(c.samples, kind).toHaveLength(4);
      expect(c.expectedPlan, kind).toBe(expected[kind]);
      expect(c.plans, kind).toEqual([{ plan: expected[kind], times: 4 }]);
      expect(c.peersChangedCalls, kind).toBe(kind === "heartbeat" ? 0 : 4);
      expect(c.asExpected, kind).toBe(true);
      for (const s of c.samples) {
        expect(s.onlyThatPeer).toBe(true);
        expect(Number.isFinite(s.latencyMs) && Number.isFinite(s.cpuMs)).toBe(true);
        expect(s.plan === null).toBe(kind === "heartbeat");
      }
      isStats(r.summary.changes[kind].latencyMs, 4);
    }
    expect(rep.changes.underlay.samples[0]?.plan).toEqual({ routes: none, neighbours: none });
    isStats(r.summary.sync.readyMs, 1);
    expect(renderTable(r)).toContain("one Node's change");

    // Nothing left behind: the double's process and the temporary PKI.
    expect(() => process.kill(rep.apiPid, 0)).toThrow();
    expect(existsSync(r.workDir)).toBe(false);
  }, 120_000);

  it("refuses sizes the /29s of 10.244.0.0/16 cannot hold and unknown arguments", () => {
    expect(parseArgs([])).toMatchObject({ nodes: 5000, repeat: 3, changes: 20, json: "" });
    expect(parseArgs(["--nodes", "8172", "--changes", "20"]).nodes).toBe(8172);
    expect(() => parseArgs(["--nodes", "8173", "--changes", "20"])).toThrow(/8192/);
    expect(() => parseArgs(["--nodes", "1"])).toThrow(/--nodes/);
    expect(() => parseArgs(["--bogus", "1"])).toThrow(/unknown argument/);
  });
});
