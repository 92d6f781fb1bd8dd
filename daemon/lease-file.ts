// The node's subnet lease on disk, so a restart (also after a crash) keeps its subnet.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { formatSubnet, parseSubnet } from "../encap/types";
import type { Lease } from "../control/subnet-allocator";
import { writeFileAtomic } from "./atomic-file";

const LEASE_FILE = "lease.json";

export function readLease(stateDir: string): Lease | null {
  let text: string;
  try {
    text = readFileSync(join(stateDir, LEASE_FILE), "utf8");
  } catch {
    return null;
  }
  try {
    const j = JSON.parse(text) as { subnet?: unknown; state?: unknown; stamp?: unknown; seq?: unknown };
    const subnet = typeof j.subnet === "string" ? parseSubnet(j.subnet) : undefined;
    if (subnet === undefined || !subnet.ok) return null;
    if (j.state !== "claiming" && j.state !== "confirmed") return null;
    if (typeof j.stamp !== "number" || typeof j.seq !== "number") return null;
    return { subnet: subnet.value, state: j.state, stamp: j.stamp, seq: j.seq };
  } catch {
    return null;
  }
}

export function writeLease(stateDir: string, lease: Lease): void {
  mkdirSync(stateDir, { recursive: true, mode: 0o755 });
  writeFileAtomic(join(stateDir, LEASE_FILE),
    JSON.stringify({ subnet: formatSubnet(lease.subnet), state: lease.state, stamp: lease.stamp, seq: lease.seq }) + "\n");
}
