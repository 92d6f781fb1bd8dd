// Logs: pino JSON by default, readable lines on a terminal or when asked (--log-format).

import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { distPath } from "../encap/artefacts";
import { parseDaemonConfig } from "../daemon/config";

/** One log line from a child process whose stdout is a pipe (not a terminal), as under systemd. */
function logLine(format: string): string {
  const log = distPath("daemon", "log.js");
  const r = spawnSync(process.execPath, ["-e", `require(${JSON.stringify(log)}).createLogger("info", "t", ${JSON.stringify(format)}).info({ peer: "n2" }, "hello")`],
    { encoding: "utf8", timeout: 20_000 });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.trim();
}

describe("log format", () => {
  it("auto and json write one JSON object per line when stdout is not a terminal", () => {
    for (const format of ["auto", "json"]) {
      const rec = JSON.parse(logLine(format)) as Record<string, unknown>;
      expect(rec).toMatchObject({ level: 30, name: "t", msg: "hello", peer: "n2" });
    }
  });

  it("pretty writes a readable line", () => {
    const line = logLine("pretty");
    expect(() => JSON.parse(line)).toThrow();
    expect(line).toMatch(/INFO.*hello/);
    expect(line).toContain('peer: "n2"');
  });

  it("--log-format is a daemon flag (also VXMESH_LOG_FORMAT); a bad value names the flag and what is valid", () => {
    const base = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--subnet", "10.244.1.0/24", "--peers", "/dev/null"];
    const ok = parseDaemonConfig([...base, "--log-format", "pretty"], {});
    expect(ok.ok && ok.value.logFormat).toBe("pretty");
    const dflt = parseDaemonConfig(base, {});
    expect(dflt.ok && dflt.value.logFormat).toBe("auto");
    expect(parseDaemonConfig(base, { VXMESH_LOG_FORMAT: "text" })).toEqual({ ok: false, error: 'VXMESH_LOG_FORMAT "text" is not valid: expected json, pretty or auto' });
  });
});
