// What the node keeps about its subnet across restarts (also after a crash): the gossip lease,
// and the pod CIDR the Kubernetes source last took from the Node.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { formatSubnet, parseSubnet, type Subnet } from "../encap/types";
import type { Lease } from "../control/subnet-allocator";
import { writeFileAtomic } from "./atomic-file";

const LEASE_FILE = "lease.json";
const NODE_SUBNET_FILE = "node-subnet.json";

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

/** The subnet the Kubernetes source last took from the Node's spec.podCIDR; undefined when none or unreadable. */
export function readRememberedSubnet(stateDir: string): Subnet | undefined {
  try {
    const j = JSON.parse(readFileSync(join(stateDir, NODE_SUBNET_FILE), "utf8")) as { subnet?: unknown };
    const subnet = typeof j.subnet === "string" ? parseSubnet(j.subnet) : undefined;
    return subnet?.ok === true ? subnet.value : undefined;
  } catch {
    return undefined;
  }
}

export function writeRememberedSubnet(stateDir: string, subnet: Subnet): void {
  mkdirSync(stateDir, { recursive: true, mode: 0o755 });
  writeFileAtomic(join(stateDir, NODE_SUBNET_FILE), JSON.stringify({ subnet: formatSubnet(subnet) }) + "\n");
}
