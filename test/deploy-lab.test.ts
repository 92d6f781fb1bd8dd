// deploy/systemd/vxmesh.service as systemd reads it: `systemd-analyze verify` accepts the unit
// with ExecStart pointed at this build (the built CLI in dist/). What the unit and the
// manifest say: test/deploy.test.ts.

import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { cliPath } from "../bench/cluster";
import { packageRoot } from "../encap/artefacts";

const execFileP = promisify(execFile);

describe("deploy/systemd/vxmesh.service", () => {
  const unitFile = join(packageRoot(), "deploy", "systemd", "vxmesh.service");
  const analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].find((p) => existsSync(p));
  it.skipIf(analyze === undefined)("systemd-analyze verify accepts it (ExecStart pointed at this build)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vxmesh-unit-"));
    try {
      const copy = join(dir, "vxmesh.service");
      writeFileSync(copy, readFileSync(unitFile, "utf8").replace("/usr/local/bin/vxmesh", `${process.execPath} ${cliPath()}`));
      const r = await execFileP(analyze as string, ["verify", copy]).then(
        (ok) => ({ code: 0, stderr: ok.stderr }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      );
      expect(r).toEqual({ code: 0, stderr: "" });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
