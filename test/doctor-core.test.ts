// daemon/doctor.ts, the pure parts: CapEff parsing and the report's lines.

import { describe, expect, it } from "vitest";
import { CAP_NET_ADMIN, doctorExitCode, formatReport, hasCapability, parseCapEff, type CheckResult } from "../daemon/doctor";

const STATUS = "Name:\tnode\nUmask:\t0022\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t%s\nCapBnd:\t000001ffffffffff\n";

describe("parseCapEff", () => {
  it("reads the effective set and tests CAP_NET_ADMIN (bit 12)", () => {
    const root = parseCapEff(STATUS.replace("%s", "000001ffffffffff"));
    expect(root).toEqual({ ok: true, value: 0x1ffffffffffn });
    expect(root.ok && hasCapability(root.value, CAP_NET_ADMIN)).toBe(true);
    const netAdminOnly = parseCapEff(STATUS.replace("%s", "0000000000001000"));
    expect(netAdminOnly.ok && hasCapability(netAdminOnly.value, CAP_NET_ADMIN)).toBe(true);
    const none = parseCapEff(STATUS.replace("%s", "0000000000000000"));
    expect(none.ok && hasCapability(none.value, CAP_NET_ADMIN)).toBe(false);
    const allButNetAdmin = parseCapEff(STATUS.replace("%s", "000001ffffffefff"));
    expect(allButNetAdmin.ok && hasCapability(allButNetAdmin.value, CAP_NET_ADMIN)).toBe(false);
  });

  it("refuses text without a CapEff line", () => {
    expect(parseCapEff("Name:\tnode\n").ok).toBe(false);
    expect(parseCapEff("CapEff:\tzz\n").ok).toBe(false);
    expect(parseCapEff(STATUS.replace("CapEff", "CapAmb").replace("%s", "0"))).toEqual({ ok: false, error: "no CapEff line of up to 16 hex digits" });
  });
});

describe("formatReport", () => {
  const results: CheckResult[] = [
    { id: "tun", status: "pass", reason: "/dev/net/tun opens read-write" },
    { id: "vxlan-port", status: "fail", reason: "UDP 192.0.2.11:4789 (VXLAN) is already in use", hint: "choose another --vxlan-port" },
    { id: "key-file", status: "skip", reason: "static peers: no --key-file" },
  ];

  it("one line per check, ok/FAIL/skip when not a terminal", () => {
    expect(formatReport(results, "words")).toBe([
      "ok   tun         /dev/net/tun opens read-write",
      "FAIL vxlan-port  UDP 192.0.2.11:4789 (VXLAN) is already in use — fix: choose another --vxlan-port",
      "skip key-file    static peers: no --key-file",
      "",
      "1 check failed",
      "",
    ].join("\n"));
    expect(doctorExitCode(results)).toBe(1);
  });

  it("✓/✗ on a terminal; exit 0 when nothing fails", () => {
    const fine = results.filter((r) => r.status !== "fail");
    expect(formatReport(fine, "symbols")).toBe("✓ tun       /dev/net/tun opens read-write\n- key-file  static peers: no --key-file\n\nall checks passed\n");
    expect(doctorExitCode(fine)).toBe(0);
  });
});
