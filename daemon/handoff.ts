// The run-dir hand-off: once the node's subnet is confirmed, the daemon writes what a CNI
// plugin (ours or another) needs, atomically, in two forms: a flannel-style subnet.env and
// JSON. Readers never see a half-written file.

import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "./atomic-file";
import { formatIpv4, formatSubnet, subnetAddress, type Subnet } from "../encap/types";

const SUBNET_ENV_FILE = "subnet.env";
export const NETWORK_JSON_FILE = "network.json";

export interface Handoff {
  /** The whole pod network, when known (gossip mode); undefined with static peers. */
  clusterNetwork: Subnet | undefined;
  nodeSubnet: Subnet;
  mtu: number;
  bridge: string;
  /** The daemon's control socket, where the CNI shim sends its calls. */
  controlSocket: string;
}

export function writeHandoff(runDir: string, h: Handoff): void {
  mkdirSync(runDir, { recursive: true });
  const gateway = formatIpv4(subnetAddress(h.nodeSubnet, 1));
  const env = [
    ...(h.clusterNetwork === undefined ? [] : [`VXMESH_NETWORK=${formatSubnet(h.clusterNetwork)}`]),
    `VXMESH_SUBNET=${formatSubnet(h.nodeSubnet)}`,
    `VXMESH_GATEWAY=${gateway}`,
    `VXMESH_MTU=${h.mtu}`,
    `VXMESH_BRIDGE=${h.bridge}`,
    `VXMESH_CONTROL_SOCKET=${h.controlSocket}`,
  ].join("\n") + "\n";
  const json = JSON.stringify({
    network: h.clusterNetwork === undefined ? null : formatSubnet(h.clusterNetwork),
    subnet: formatSubnet(h.nodeSubnet),
    gateway,
    mtu: h.mtu,
    bridge: h.bridge,
    controlSocket: h.controlSocket,
  }, null, 2) + "\n";
  writeFileAtomic(join(runDir, SUBNET_ENV_FILE), env);
  writeFileAtomic(join(runDir, NETWORK_JSON_FILE), json);
}

/** Removes the hand-off on shutdown: a stopped daemon's subnet must not look ready. */
export function removeHandoff(runDir: string): void {
  for (const f of [SUBNET_ENV_FILE, NETWORK_JSON_FILE]) rmSync(join(runDir, f), { force: true });
}
