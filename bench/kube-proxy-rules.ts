// Test tooling only (never used by the daemon): `iptables-restore --noflush` input in the shape
// kube-proxy's iptables mode gives a node (kube-proxy 1.28–1.32, pkg/proxy/iptables), so the
// lab can show that service traffic works across the overlay without running Kubernetes.
//
// What is reproduced, per service port (namespace/name:port, TCP, externalTrafficPolicy
// Cluster, no session affinity):
//
//   nat    PREROUTING, OUTPUT ─▶ KUBE-SERVICES ─ -d <clusterIP> --dport <port> ─▶ KUBE-SVC-<h>
//          KUBE-SERVICES (last rule) ─ addrtype --dst-type LOCAL ─▶ KUBE-NODEPORTS
//          KUBE-NODEPORTS ─ --dport <nodePort> ─▶ KUBE-EXT-<h> ─▶ KUBE-MARK-MASQ, then KUBE-SVC-<h>
//          KUBE-SVC-<h>: ! -s <clusterCIDR> -d <clusterIP> … ─▶ KUBE-MARK-MASQ (off-cluster
//                        sources, the node itself among them), then one rule per endpoint,
//                        `statistic --mode random --probability 1/(n-i)`, the last without
//          KUBE-SEP-<h>: -s <endpoint> ─▶ KUBE-MARK-MASQ (hairpin), then DNAT to ip:port
//          KUBE-MARK-MASQ: MARK --set-xmark <bit>/<bit>
//          POSTROUTING ─▶ KUBE-POSTROUTING: unmarked RETURN, MARK --xor-mark <bit>,
//                        MASQUERADE --random-fully
//   filter FORWARD ─▶ KUBE-FORWARD: ctstate INVALID DROP, marked ACCEPT, RELATED,ESTABLISHED
//          ACCEPT; FORWARD/OUTPUT (ctstate NEW) ─▶ KUBE-SERVICES and FORWARD/INPUT (ctstate
//          NEW) ─▶ KUBE-EXTERNAL-SERVICES, which REJECT a service port without endpoints (the
//          ClusterIP, and the NodePort on local addresses).
//
// Chain names follow kube-proxy's idea — a prefix and the first 16 characters of the base32
// (RFC 4648) encoding of a SHA-256 of the service port name and protocol (plus the endpoint for
// a KUBE-SEP chain) — computed here by our own code. The jumps from the built-in chains are
// inserted at the top (kube-proxy prepends them); everything else lives in KUBE-* chains that
// the input declares, so applying it with --noflush leaves other rules of the namespace alone.
// Left out: session affinity, Local traffic policy, load balancers and external IPs, the
// canary and firewall chains, IPv6.

import { createHash } from "node:crypto";

export interface KubeEndpoint {
  ip: string;
  port: number;
}

export interface KubeServicePort {
  /** Kubernetes namespace of the service, e.g. "default". */
  namespace: string;
  /** Service name, e.g. "web". */
  name: string;
  /** Port name within the service ("" for an unnamed port), e.g. "http". */
  portName?: string;
  /** The ClusterIP, e.g. "10.96.0.10". */
  clusterIp: string;
  port: number;
  /** A NodePort in 30000–32767, if the service has one. */
  nodePort?: number;
  /** Ready endpoints; none makes the filter table REJECT the service. */
  endpoints: readonly KubeEndpoint[];
}

export interface KubeProxyRulesOptions {
  /** kube-proxy's --cluster-cidr: sources outside it are masqueraded on the way to a ClusterIP. */
  clusterCidr: string;
  /** kube-proxy's --iptables-masquerade-bit (default 14, i.e. mark 0x4000). */
  masqueradeBit?: number;
  /** Put the `ctstate INVALID -j DROP` rule in KUBE-FORWARD (default true, as without --conntrack-tcp-be-liberal). */
  dropInvalid?: boolean;
  services: readonly KubeServicePort[];
}

const PROTOCOL = "tcp";
const RFC4648_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** RFC 4648 base32 (with "=" padding) of `bytes`. */
export function base32(bytes: Uint8Array): string {
  let out = "";
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += RFC4648_BASE32[(acc >>> bits) & 31];
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += RFC4648_BASE32[(acc << (5 - bits)) & 31];
  while (out.length % 8 !== 0) out += "=";
  return out;
}

/** "namespace/name:port", the name kube-proxy logs and comments a service port by. */
export function servicePortName(s: KubeServicePort): string {
  return `${s.namespace}/${s.name}:${s.portName ?? ""}`;
}

function hash16(text: string): string {
  return base32(createHash("sha256").update(text).digest()).slice(0, 16);
}

export function serviceChain(s: KubeServicePort): string {
  return `KUBE-SVC-${hash16(servicePortName(s) + PROTOCOL)}`;
}

export function externalChain(s: KubeServicePort): string {
  return `KUBE-EXT-${hash16(servicePortName(s) + PROTOCOL)}`;
}

export function endpointChain(s: KubeServicePort, e: KubeEndpoint): string {
  return `KUBE-SEP-${hash16(servicePortName(s) + PROTOCOL + `${e.ip}:${e.port}`)}`;
}

/** The probability for endpoint i of n: 1/(n-i), so that every endpoint is equally likely. */
export function endpointProbability(i: number, n: number): string {
  return (1 / (n - i)).toFixed(10);
}

function comment(text: string): string {
  return `-m comment --comment "${text}"`;
}

const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function checkIp(ip: string, what: string): string {
  const m = IPV4.exec(ip);
  if (m === null || m.slice(1).some((o) => Number(o) > 255)) throw new Error(`${what} "${ip}" is not an IPv4 address`);
  return ip;
}

function checkPort(p: number, lo: number, hi: number, what: string): number {
  if (!Number.isInteger(p) || p < lo || p > hi) throw new Error(`${what} ${p} is not valid: expected an integer from ${lo} to ${hi}`);
  return p;
}

/**
 * The `iptables-restore --noflush` input (nat and filter tables) kube-proxy's iptables mode
 * would give a node serving `services`. Apply it once per network namespace: the jumps from the
 * built-in chains are inserted, not replaced.
 */
export function kubeProxyRestoreInput(opts: KubeProxyRulesOptions): string {
  const bit = opts.masqueradeBit ?? 14;
  checkPort(bit, 0, 31, "masquerade bit");
  const mark = `0x${(1 << bit >>> 0).toString(16)}`;
  const markMask = `${mark}/${mark}`;
  if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(opts.clusterCidr)) throw new Error(`cluster CIDR "${opts.clusterCidr}" is not an IPv4 CIDR`);
  const names = new Set<string>();
  for (const s of opts.services) {
    const n = servicePortName(s);
    if (names.has(n)) throw new Error(`service port ${n} appears twice`);
    names.add(n);
    checkIp(s.clusterIp, `${n} ClusterIP`);
    checkPort(s.port, 1, 65535, `${n} port`);
    if (s.nodePort !== undefined) checkPort(s.nodePort, 30000, 32767, `${n} NodePort`);
    for (const e of s.endpoints) {
      checkIp(e.ip, `${n} endpoint`);
      checkPort(e.port, 1, 65535, `${n} endpoint port`);
    }
  }

  // ---- nat
  const natChains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"];
  const nat: string[] = [
    `-I PREROUTING 1 ${comment("kubernetes service portals")} -j KUBE-SERVICES`,
    `-I OUTPUT 1 ${comment("kubernetes service portals")} -j KUBE-SERVICES`,
    `-I POSTROUTING 1 ${comment("kubernetes postrouting rules")} -j KUBE-POSTROUTING`,
    `-A KUBE-MARK-MASQ -j MARK --set-xmark ${markMask}`,
    `-A KUBE-POSTROUTING -m mark ! --mark ${markMask} -j RETURN`,
    `-A KUBE-POSTROUTING -j MARK --xor-mark ${mark}`,
    `-A KUBE-POSTROUTING ${comment("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully`,
  ];
  const natServices: string[] = [];
  const natNodePorts: string[] = [];
  const natPerService: string[] = [];
  // ---- filter
  const filterChains = ["KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"];
  const filter: string[] = [
    `-I INPUT 1 -m conntrack --ctstate NEW ${comment("kubernetes externally-visible service portals")} -j KUBE-EXTERNAL-SERVICES`,
    `-I FORWARD 1 ${comment("kubernetes forwarding rules")} -j KUBE-FORWARD`,
    `-I FORWARD 2 -m conntrack --ctstate NEW ${comment("kubernetes service portals")} -j KUBE-SERVICES`,
    `-I FORWARD 3 -m conntrack --ctstate NEW ${comment("kubernetes externally-visible service portals")} -j KUBE-EXTERNAL-SERVICES`,
    `-I OUTPUT 1 -m conntrack --ctstate NEW ${comment("kubernetes service portals")} -j KUBE-SERVICES`,
    ...(opts.dropInvalid ?? true ? ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"] : []),
    `-A KUBE-FORWARD ${comment("kubernetes forwarding rules")} -m mark --mark ${markMask} -j ACCEPT`,
    `-A KUBE-FORWARD ${comment("kubernetes forwarding conntrack rule")} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
  ];

  for (const s of opts.services) {
    const name = servicePortName(s);
    const dst = `-d ${s.clusterIp}/32 -p ${PROTOCOL}`;
    const dport = `-m ${PROTOCOL} --dport ${s.port}`;
    if (s.endpoints.length === 0) {
      filter.push(`-A KUBE-SERVICES ${dst} ${comment(`${name} has no endpoints`)} ${dport} -j REJECT --reject-with icmp-port-unreachable`);
      if (s.nodePort !== undefined) {
        filter.push(`-A KUBE-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL -p ${PROTOCOL} ${comment(`${name} has no endpoints`)} -m ${PROTOCOL} --dport ${s.nodePort} -j REJECT --reject-with icmp-port-unreachable`);
      }
      continue;
    }
    const svc = serviceChain(s);
    natChains.push(svc);
    natServices.push(`-A KUBE-SERVICES ${dst} ${comment(`${name} cluster IP`)} ${dport} -j ${svc}`);
    if (s.nodePort !== undefined) {
      const ext = externalChain(s);
      natChains.push(ext);
      natNodePorts.push(`-A KUBE-NODEPORTS -p ${PROTOCOL} ${comment(name)} -m ${PROTOCOL} --dport ${s.nodePort} -j ${ext}`);
      natPerService.push(
        `-A ${ext} ${comment(`masquerade traffic for ${name} external destinations`)} -j KUBE-MARK-MASQ`,
        `-A ${ext} -j ${svc}`,
      );
    }
    natPerService.push(`-A ${svc} ! -s ${opts.clusterCidr} ${dst} ${comment(`${name} cluster IP`)} ${dport} -j KUBE-MARK-MASQ`);
    const n = s.endpoints.length;
    s.endpoints.forEach((e, i) => {
      const sep = endpointChain(s, e);
      const pick = i < n - 1 ? ` -m statistic --mode random --probability ${endpointProbability(i, n)}` : "";
      natPerService.push(`-A ${svc} ${comment(`${name} -> ${e.ip}:${e.port}`)}${pick} -j ${sep}`);
    });
    for (const e of s.endpoints) {
      const sep = endpointChain(s, e);
      natChains.push(sep);
      natPerService.push(
        `-A ${sep} -s ${e.ip}/32 ${comment(name)} -j KUBE-MARK-MASQ`,
        `-A ${sep} -p ${PROTOCOL} ${comment(name)} -m ${PROTOCOL} -j DNAT --to-destination ${e.ip}:${e.port}`,
      );
    }
  }
  // Must stay the last rule of KUBE-SERVICES: anything addressed to the node itself.
  natServices.push(`-A KUBE-SERVICES ${comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`);

  const declare = (chains: readonly string[]): string[] => chains.map((c) => `:${c} - [0:0]`);
  return [
    "*nat",
    ...declare(natChains),
    ...nat,
    ...natServices,
    ...natNodePorts,
    ...natPerService,
    "COMMIT",
    "*filter",
    ...declare(filterChains),
    ...filter,
    "COMMIT",
    "",
  ].join("\n");
}
