// daemon/doctor.ts, the pure parts: the report's lines (its capability check reads them with
// capabilities.ts's parseStatusCaps, tested in capabilities.test.ts).

import { describe, expect, it } from "vitest";
import { doctorExitCode, formatReport, type CheckResult } from "../daemon/doctor";

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
