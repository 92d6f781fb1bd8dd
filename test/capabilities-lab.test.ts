// The native capability drop (the built addon) in a child Node process with worker threads
// and the libuv pool running, where every thread must end up with the kept set, and the C
// library's own use of the borrowed signal (setgid across threads) must still work afterwards.
// Needs the capabilities to drop: run as root. The pure parts: test/capabilities.test.ts.

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { CAP_NET_ADMIN, CAP_SYS_ADMIN } from "../daemon/capabilities";
import { nativeAddonPath } from "../encap/artefacts";

const execFileP = promisify(execFile);
const ADDON = nativeAddonPath();

/**
 * Runs in a child Node process (a drop cannot be undone, and the test runner's own process must
 * keep its capabilities). Starts two worker threads and the libuv pool, drops to net_admin, and
 * prints the report, every thread's sets, whether a thread blocks SIGRTMIN (why the drop needs
 * the C library's reserved signal), and whether setgid, which glibc broadcasts to every thread
 * with that same signal, still works afterwards.
 */
const CHILD = `
const fs = require("node:fs");
const { Worker } = require("node:worker_threads");
const native = require(process.argv[1]);
const workers = [0, 1].map(() => new Worker("setInterval(() => {}, 1000)", { eval: true }));
fs.readFile("/proc/self/status", () => {});
const threads = () => fs.readdirSync("/proc/self/task").map((tid) => {
  const s = fs.readFileSync("/proc/self/task/" + tid + "/status", "utf8");
  const get = (k) => (new RegExp("^" + k + ":\\\\s*(\\\\S+)", "m").exec(s) || [])[1];
  return { tid: Number(tid), eff: get("CapEff"), prm: get("CapPrm"), bnd: get("CapBnd"), inh: get("CapInh"), amb: get("CapAmb"), nnp: get("NoNewPrivs"), blk: get("SigBlk") };
});
setTimeout(() => {
  const before = threads();
  const report = native.dropCapabilities(1n << 12n, 2000, process.argv[2] === undefined ? undefined : BigInt(process.argv[2]));
  // A thread started after the drop inherits the creator's (reduced) sets.
  const late = new Worker("setInterval(() => {}, 1000)", { eval: true });
  late.once("online", () => {
    let setgid = "ok";
    try { process.setgid(process.getgid()); } catch (e) { setgid = e.code || e.message; }
    const out = { report: { ...report, kept: String(report.kept), bounding: String(report.bounding) }, before, after: threads(), setgid };
    fs.writeSync(1, JSON.stringify(out) + "\\n");
    process.exit(0);
  });
}, 300);
`;

describe("dropCapabilities on every thread", () => {
  it("leaves every thread of a Node process with exactly the kept set, and setgid still works", async () => {
    const { stdout } = await execFileP(process.execPath, ["-e", CHILD, ADDON], { timeout: 30_000 });
    const out = JSON.parse(stdout) as {
      report: { ok: boolean; kept: string; bounding: string; boundingReduced: boolean; threads: number; signal: number; failed: unknown[]; silent: unknown[] };
      before: { tid: number; blk: string }[];
      after: { tid: number; eff: string; prm: string; bnd: string; inh: string; amb: string; nnp: string }[];
      setgid: string;
    };
    expect(out.report).toMatchObject({ ok: true, kept: String(CAP_NET_ADMIN), bounding: String(CAP_NET_ADMIN), boundingReduced: true, signal: 33, failed: [], silent: [] });
    expect(out.report.threads).toBe(out.before.length);
    // Node's SIGUSR1 watchdog thread blocks every signal a program may block, SIGRTMIN (34) included.
    expect(out.before.some((t) => (BigInt(`0x${t.blk}`) >> 33n) & 1n)).toBe(true);
    expect(out.after.length).toBeGreaterThan(out.before.length);
    for (const t of out.after) {
      expect(t, `thread ${t.tid}`).toMatchObject({ eff: "0000000000001000", prm: "0000000000001000", bnd: "0000000000001000", inh: "0000000000000000", amb: "0000000000000000", nnp: "1" });
    }
    expect(out.setgid).toBe("ok");
  }, 40_000);

  it("with an ambient set (what a non-root daemon's exec'd programs need), every thread holds it inheritable and ambient too", async () => {
    const { stdout } = await execFileP(process.execPath, ["-e", CHILD, ADDON, String(CAP_NET_ADMIN | CAP_SYS_ADMIN)], { timeout: 30_000 });
    const out = JSON.parse(stdout) as { report: { ok: boolean; kept: string }; after: { tid: number; eff: string; inh: string; amb: string; nnp: string }[] };
    expect(out.report).toMatchObject({ ok: true, kept: String(CAP_NET_ADMIN) });
    // Only what is kept can be ambient: sys_admin was asked for but not kept.
    for (const t of out.after) expect(t, `thread ${t.tid}`).toMatchObject({ eff: "0000000000001000", inh: "0000000000001000", amb: "0000000000001000", nnp: "1" });
  }, 40_000);
});
