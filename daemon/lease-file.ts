// What the node keeps about its subnet across restarts (also after a crash): the gossip lease,
// and what the Kubernetes source last saw (the Node's pod CIDR and the peers), so a daemon
// restarted while the API server is away routes as before.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Peer } from "../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, parseIpv4, parseMac, parseSubnet, type Subnet } from "../encap/types";
import type { Lease } from "../control/subnet-allocator";
import { writeFileAtomic } from "./atomic-file";

const LEASE_FILE = "lease.json";
const KUBE_MEMORY_FILE = "kube-node.json";

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

/** What the Kubernetes source last saw: the Node's pod CIDR and the peers routed with it. */
export interface KubeMemory {
  readonly subnet: Subnet;
  readonly peers: readonly Peer[];
}

/** The Kubernetes source's memory; undefined when there is none or it is unreadable (then it is not used). */
export function readKubeMemory(stateDir: string): KubeMemory | undefined {
  try {
    const j = JSON.parse(readFileSync(join(stateDir, KUBE_MEMORY_FILE), "utf8")) as { subnet?: unknown; peers?: unknown };
    const subnet = typeof j.subnet === "string" ? parseSubnet(j.subnet) : undefined;
    if (subnet?.ok !== true || !Array.isArray(j.peers)) return undefined;
    const peers: Peer[] = [];
    for (const p of j.peers as { name?: unknown; underlayIp?: unknown; subnet?: unknown; vtepMac?: unknown }[]) {
      const ip = typeof p.underlayIp === "string" ? parseIpv4(p.underlayIp) : undefined;
      const sn = typeof p.subnet === "string" ? parseSubnet(p.subnet) : undefined;
      const mac = typeof p.vtepMac === "string" ? parseMac(p.vtepMac) : undefined;
      if (typeof p.name !== "string" || ip?.ok !== true || sn?.ok !== true || mac?.ok !== true) return undefined;
      peers.push({ name: p.name, underlayIp: ip.value, subnet: sn.value, vtepMac: mac.value, path: "vxlan" });
    }
    return { subnet: subnet.value, peers };
  } catch {
    return undefined;
  }
}

export function writeKubeMemory(stateDir: string, m: KubeMemory): void {
  mkdirSync(stateDir, { recursive: true, mode: 0o755 });
  const peers = m.peers.map((p) => ({ name: p.name, underlayIp: formatIpv4(p.underlayIp), subnet: formatSubnet(p.subnet), vtepMac: formatMac(p.vtepMac) }));
  writeFileAtomic(join(stateDir, KUBE_MEMORY_FILE), JSON.stringify({ subnet: formatSubnet(m.subnet), peers }) + "\n");
}
