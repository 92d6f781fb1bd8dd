// The capability drop's pure parts: --keep-caps, /proc status parsing, the per-thread check,
// the plan. The native drop itself, in a child Node process: test/capabilities-lab.test.ts.

import { describe, expect, it } from "vitest";
import {
  CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, capNames, netAdminMissing, parseKeepCaps, parseStatusCaps, planKeep, threadsNotAt,
  type ThreadCaps,
} from "../daemon/capabilities";
import { parseDaemonConfig } from "../daemon/config";

const STATUS = "Name:\tnode\nUmask:\t0022\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t%s\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";

describe("the effective set, as doctor reads it", () => {
  it("reads the effective set and tests CAP_NET_ADMIN (bit 12)", () => {
    const eff = (hex: string): bigint | undefined => parseStatusCaps(1, STATUS.replace("%s", hex))?.effective;
    expect(eff("000001ffffffffff")).toBe(0x1ffffffffffn);
    expect(((eff("000001ffffffffff") ?? 0n) & CAP_NET_ADMIN) !== 0n).toBe(true);
    expect(((eff("0000000000001000") ?? 0n) & CAP_NET_ADMIN) !== 0n).toBe(true);
    expect(((eff("0000000000000000") ?? 0n) & CAP_NET_ADMIN) !== 0n).toBe(false);
    expect(((eff("000001ffffffefff") ?? 0n) & CAP_NET_ADMIN) !== 0n).toBe(false);
  });

  it("refuses text without a CapEff line", () => {
    expect(parseStatusCaps(1, "Name:\tnode\n")).toBeUndefined();
    expect(parseStatusCaps(1, STATUS.replace("%s", "zz"))).toBeUndefined();
    expect(parseStatusCaps(1, STATUS.replace("CapEff:\t%s\n", ""))).toBeUndefined();
  });
});

describe("--keep-caps", () => {
  it("takes auto, all, or names (any case, cap_ prefix optional) that include net_admin", () => {
    expect(parseKeepCaps("auto")).toEqual({ ok: true, value: { kind: "auto" } });
    expect(parseKeepCaps("ALL")).toEqual({ ok: true, value: { kind: "all" } });
    expect(parseKeepCaps("net_admin")).toEqual({ ok: true, value: { kind: "set", mask: CAP_NET_ADMIN } });
    expect(parseKeepCaps("CAP_NET_ADMIN, sys_admin")).toEqual({ ok: true, value: { kind: "set", mask: CAP_NET_ADMIN | CAP_SYS_ADMIN } });
  });

  it("rejects unknown names and sets without net_admin, naming the flag and the value", () => {
    const base = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--subnet", "10.244.1.0/24", "--peers", "p.json"];
    const bad = parseDaemonConfig([...base, "--keep-caps", "net_admin,sys_admn"], {});
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.error).toMatch(/^--keep-caps "net_admin,sys_admn" is not valid: expected auto, all, or .*"sys_admn" is not a capability/);
    const without = parseDaemonConfig([...base, "--keep-caps", "sys_admin"], {});
    expect(!without.ok && without.error).toMatch(/needs net_admin as long as it runs/);
    const env = parseDaemonConfig(base, { VXMESH_KEEP_CAPS: "all" });
    expect(env.ok && env.value.keepCaps).toEqual({ kind: "all" });
    const dflt = parseDaemonConfig(base, {});
    expect(dflt.ok && dflt.value.keepCaps).toEqual({ kind: "auto" });
  });
});

describe("capability sets", () => {
  const status = (eff: string, nnp = "1"): string =>
    `Name:\tnode\nCapInh:\t0000000000000000\nCapPrm:\t${eff}\nCapEff:\t${eff}\nCapBnd:\t${eff}\nCapAmb:\t0000000000000000\nNoNewPrivs:\t${nnp}\nSeccomp:\t0\n`;

  it("parses a status file and names the sets", () => {
    const t = parseStatusCaps(7, status("0000000000201000")) as ThreadCaps;
    expect(t).toEqual({ tid: 7, inheritable: 0n, permitted: 0x201000n, effective: 0x201000n, bounding: 0x201000n, ambient: 0n, noNewPrivs: true });
    expect(capNames(t.effective)).toEqual(["net_admin", "sys_admin"]);
    expect(parseStatusCaps(7, "Name:\tnode\n")).toBeUndefined();
  });

  it("groups the threads that differ from the expected sets", () => {
    const ok = parseStatusCaps(1, status("0000000000001000")) as ThreadCaps;
    const full = parseStatusCaps(2, status("000001fffeffffff", "0")) as ThreadCaps;
    const full3 = { ...full, tid: 3 };
    const want = { effective: CAP_NET_ADMIN, permitted: CAP_NET_ADMIN, bounding: CAP_NET_ADMIN };
    expect(threadsNotAt([ok], want)).toEqual([]);
    expect(threadsNotAt([ok, full, full3], want)).toEqual([
      "threads 2 3: effective 0x1fffeffffff, permitted 0x1fffeffffff, bounding 0x1fffeffffff, no_new_privs unset (want net_admin)",
    ]);
  });

  it("plans: auto keeps net_admin and sys_admin when held, and says what is lost without sys_admin", () => {
    const root = 0x1fffeffffffn;
    expect(planKeep({ kind: "auto" }, root)).toEqual({ keep: CAP_NET_ADMIN | CAP_SYS_ADMIN, ambient: 0n, notes: [] });
    const nobody = planKeep({ kind: "auto" }, CAP_NET_ADMIN);
    expect(nobody.keep).toBe(CAP_NET_ADMIN);
    expect(nobody.notes.join()).toMatch(/without CAP_SYS_ADMIN the CNI handler cannot enter pod network namespaces/);
    const asked = planKeep({ kind: "set", mask: CAP_NET_ADMIN | CAP_SYS_ADMIN }, CAP_NET_ADMIN);
    expect(asked.notes.join()).toMatch(/names sys_admin, which the daemon does not hold/);
  });

  it("plans for exec'd programs (iptables): auto keeps what they need; a non-root daemon keeps it ambient too; a set without it is warned about", () => {
    const root = 0x1fffeffffffn;
    const legacy = { caps: CAP_NET_ADMIN | CAP_NET_RAW, why: "iptables-legacy-restore (--ip-masq, --forward-accept)" };
    expect(planKeep({ kind: "auto" }, root, legacy, true)).toEqual({ keep: CAP_NET_ADMIN | CAP_NET_RAW | CAP_SYS_ADMIN, ambient: 0n, notes: [] });
    const nobody = planKeep({ kind: "auto" }, CAP_NET_ADMIN | CAP_NET_RAW, legacy, false);
    expect(nobody.keep).toBe(CAP_NET_ADMIN | CAP_NET_RAW);
    expect(nobody.ambient).toBe(CAP_NET_ADMIN | CAP_NET_RAW);
    const nft = planKeep({ kind: "auto" }, CAP_NET_ADMIN | CAP_NET_RAW, { caps: CAP_NET_ADMIN, why: "iptables-nft-restore" }, false);
    expect([nft.keep, nft.ambient]).toEqual([CAP_NET_ADMIN, CAP_NET_ADMIN]);
    const notHeld = planKeep({ kind: "auto" }, CAP_NET_ADMIN, legacy, false);
    expect(notHeld.ambient).toBe(CAP_NET_ADMIN);
    expect(notHeld.notes.join("\n")).toMatch(/iptables-legacy-restore \(--ip-masq, --forward-accept\) needs net_raw, which the daemon does not hold: the periodic re-check/);
    const named = planKeep({ kind: "set", mask: CAP_NET_ADMIN }, root, legacy, true);
    expect(named.keep).toBe(CAP_NET_ADMIN);
    expect(named.notes.join("\n")).toMatch(/needs net_raw, which --keep-caps does not name/);
  });

  it("threads must show the expected inheritable and ambient sets", () => {
    const t = parseStatusCaps(1, status("0000000000001000")) as ThreadCaps;
    const want = { effective: CAP_NET_ADMIN, permitted: CAP_NET_ADMIN, bounding: CAP_NET_ADMIN };
    expect(threadsNotAt([t], { ...want, ambient: CAP_NET_ADMIN })).toEqual(["thread 1: inheritable none, ambient none (want net_admin)"]);
    expect(threadsNotAt([{ ...t, inheritable: CAP_NET_ADMIN, ambient: CAP_NET_ADMIN }], { ...want, ambient: CAP_NET_ADMIN })).toEqual([]);
    expect(threadsNotAt([{ ...t, ambient: CAP_NET_ADMIN }], want)).toEqual(["thread 1: ambient net_admin (want net_admin)"]);
  });

  it("the start-up check asks for CAP_NET_ADMIN and says how to grant it", () => {
    expect(netAdminMissing(CAP_NET_ADMIN)).toBeUndefined();
    expect(netAdminMissing(0n)).toMatch(/^vxmesh daemon needs CAP_NET_ADMIN .* holds no capabilities\. .*AmbientCapabilities=CAP_NET_ADMIN/);
  });
});
