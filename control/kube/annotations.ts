// What a node running vxmesh publishes on its Node object for the others (docs/DESIGN.md §12):
// annotations under `vxmesh.io/`, one value each, plain text so `kubectl describe node` reads
// them. The Node's spec.podCIDR is the subnet; these say how to reach it.

import { formatIpv4, formatMac, parseIpv4, parseMac, parseVni, type Ipv4, type MacAddr, type Parsed, type Vni } from "../../encap/types";
import { CONTROL_PROTOCOL_VERSION } from "../node-record";

export const ANNOTATION_PREFIX = "vxmesh.io/";

export const ANNOTATIONS = {
  protocol: "vxmesh.io/protocol",
  underlayIp: "vxmesh.io/underlay-ip",
  vtepMac: "vxmesh.io/vtep-mac",
  vni: "vxmesh.io/vni",
  vxlanPort: "vxmesh.io/vxlan-port",
} as const;

/** How to reach a node's pods: the VXLAN endpoint it runs. */
export interface VxlanEndpoint {
  readonly protocol: number;
  readonly underlayIp: Ipv4;
  readonly vtepMac: MacAddr;
  readonly vni: Vni;
  readonly vxlanPort: number;
}

/** The annotations that describe `e`. */
export function encodeEndpoint(e: VxlanEndpoint): Record<string, string> {
  return {
    [ANNOTATIONS.protocol]: String(e.protocol),
    [ANNOTATIONS.underlayIp]: formatIpv4(e.underlayIp),
    [ANNOTATIONS.vtepMac]: formatMac(e.vtepMac),
    [ANNOTATIONS.vni]: String(e.vni),
    [ANNOTATIONS.vxlanPort]: String(e.vxlanPort),
  };
}

/**
 * Reads the endpoint from a Node's annotations: undefined when it carries none of ours (a node
 * not running vxmesh), else the endpoint or what is wrong with it, naming the annotation.
 */
export function decodeEndpoint(annotations: Readonly<Record<string, string>>): Parsed<VxlanEndpoint> | undefined {
  if (!Object.keys(annotations).some((k) => k.startsWith(ANNOTATION_PREFIX))) return undefined;
  const field = <T>(key: string, parse: (text: string) => Parsed<T>): Parsed<T> => {
    const text = annotations[key];
    if (text === undefined) return { ok: false, error: `annotation ${key} is missing` };
    const v = parse(text);
    return v.ok ? v : { ok: false, error: `annotation ${key}=${JSON.stringify(text)}: expected ${v.error}` };
  };
  const protocol = field(ANNOTATIONS.protocol, parseProtocol);
  if (!protocol.ok) return protocol;
  const underlayIp = field(ANNOTATIONS.underlayIp, parseIpv4);
  if (!underlayIp.ok) return underlayIp;
  const vtepMac = field(ANNOTATIONS.vtepMac, parseMac);
  if (!vtepMac.ok) return vtepMac;
  const vni = field(ANNOTATIONS.vni, parseVni);
  if (!vni.ok) return vni;
  const vxlanPort = field(ANNOTATIONS.vxlanPort, parsePort);
  if (!vxlanPort.ok) return vxlanPort;
  return { ok: true, value: { protocol: protocol.value, underlayIp: underlayIp.value, vtepMac: vtepMac.value, vni: vni.value, vxlanPort: vxlanPort.value } };
}

/**
 * The merge patch that makes a Node's annotations say `e`, or undefined when they already do.
 * Our keys this build no longer writes are removed (null), so a downgrade leaves nothing stale.
 */
export function endpointPatch(current: Readonly<Record<string, string>>, e: VxlanEndpoint): Record<string, string | null> | undefined {
  const want = encodeEndpoint(e);
  const patch: Record<string, string | null> = {};
  for (const [k, v] of Object.entries(want)) if (current[k] !== v) patch[k] = v;
  for (const k of Object.keys(current)) if (k.startsWith(ANNOTATION_PREFIX) && !(k in want)) patch[k] = null;
  return Object.keys(patch).length === 0 ? undefined : patch;
}

function parseProtocol(text: string): Parsed<number> {
  if (!/^\d{1,5}$/.test(text)) return { ok: false, error: "a protocol version such as 1" };
  const n = Number(text);
  return n === CONTROL_PROTOCOL_VERSION ? { ok: true, value: n } : { ok: false, error: `protocol ${CONTROL_PROTOCOL_VERSION}, the one this build speaks` };
}

function parsePort(text: string): Parsed<number> {
  const n = Number(text);
  return /^\d{1,5}$/.test(text) && n >= 1 && n <= 65535 ? { ok: true, value: n } : { ok: false, error: "a UDP port 1-65535" };
}
