// The few kernel switches a pod network needs on its node, read and set through /proc/sys (which
// shows the calling thread's network namespace). Thin shell; the decisions are in the daemon
// (start-up) and doctor (report).
//
// - net.ipv4.ip_forward: without it the node drops every pod packet it should route between the
//   pod bridge and the TAP. The reference bridge plugin turns it on at ADD; the daemon turns it
//   on at start and leaves it on at exit (other pods and plugins rely on it too).
// - net.bridge.bridge-nf-call-iptables: kube-proxy's rules must see traffic bridged between two
//   pods of one node (a reply to a ClusterIP client on the same bridge is un-NATed only then);
//   it exists only with the br_netfilter module loaded.

import { readFileSync, writeFileSync } from "node:fs";
import type { Parsed } from "../encap/types";

export const IP_FORWARD = "/proc/sys/net/ipv4/ip_forward";
export const BRIDGE_NF_CALL_IPTABLES = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/** The switch's value ("0", "1"), or the errno code when it cannot be read ("ENOENT": not there). */
export function readSwitch(path: string): { value: string } | { error: string } {
  try {
    return { value: readFileSync(path, "utf8").trim() };
  } catch (e) {
    return { error: (e as NodeJS.ErrnoException).code ?? (e as Error).message };
  }
}

/**
 * Turns IPv4 forwarding on in this network namespace. `changed` says whether it was off; an
 * error names the sysctl, why it could not be set and what to do.
 */
export function ensureIpForwarding(): Parsed<{ changed: boolean }> {
  const now = readSwitch(IP_FORWARD);
  if ("value" in now && now.value === "1") return { ok: true, value: { changed: false } };
  try {
    writeFileSync(IP_FORWARD, "1\n");
    return { ok: true, value: { changed: true } };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    return {
      ok: false,
      error: `net.ipv4.ip_forward is off and could not be turned on (${code} writing ${IP_FORWARD}): the node would not forward pod traffic; ` +
        "turn it on (sysctl -w net.ipv4.ip_forward=1) or start the daemon as root",
    };
  }
}
