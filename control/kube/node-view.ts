// A v1 Node as the Kubernetes source needs it, read from parsed JSON without trusting its shape:
// the name, its resourceVersion, its pod CIDR and our annotations. A field the server leaves
// out or a user mangles becomes a reason on the view, never an exception.

import { parseSubnet, type Parsed, type Subnet } from "../../encap/types";
import { decodeEndpoint, type VxlanEndpoint } from "./annotations";

export interface NodeView {
  readonly name: string;
  readonly resourceVersion: string;
  /** spec.podCIDRs' IPv4 entry (else spec.podCIDR); undefined when none is assigned; an error when unreadable. */
  readonly podCidr: Parsed<Subnet> | undefined;
  /** Our annotations: undefined when it has none (not running vxmesh). */
  readonly endpoint: Parsed<VxlanEndpoint> | undefined;
  /** metadata.annotations as strings (only those with string values). */
  readonly annotations: Readonly<Record<string, string>>;
  /** status.conditions' NetworkUnavailable: "True", "False", "Unknown", or undefined when absent. */
  readonly networkUnavailable: string | undefined;
}

const obj = (v: unknown): Record<string, unknown> | undefined =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;

/** The view of a Node object; an error only when it has no name (nothing to key it by). */
export function readNode(node: unknown): Parsed<NodeView> {
  const meta = obj(obj(node)?.["metadata"]);
  const name = meta?.["name"];
  if (typeof name !== "string" || name === "") return { ok: false, error: "a Node without metadata.name" };
  const rv = meta?.["resourceVersion"];
  const annotations: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj(meta?.["annotations"]) ?? {})) if (typeof v === "string") annotations[k] = v;
  return {
    ok: true,
    value: {
      name,
      resourceVersion: typeof rv === "string" ? rv : "",
      podCidr: podCidrOf(obj(obj(node)?.["spec"])),
      endpoint: decodeEndpoint(annotations),
      annotations,
      networkUnavailable: networkUnavailableOf(obj(obj(node)?.["status"])),
    },
  };
}

/** The Node's resourceVersion from any object carrying metadata (a BOOKMARK's too). */
export function resourceVersionOf(o: unknown): string | undefined {
  const rv = obj(obj(o)?.["metadata"])?.["resourceVersion"];
  return typeof rv === "string" && rv !== "" ? rv : undefined;
}

/**
 * spec.podCIDRs lists one CIDR per family (dual-stack); spec.podCIDR is its first entry. This
 * build routes IPv4 pods: the IPv4 entry, or undefined when there is none (an IPv6-only Node).
 */
function podCidrOf(spec: Record<string, unknown> | undefined): Parsed<Subnet> | undefined {
  const list = spec?.["podCIDRs"];
  const single = spec?.["podCIDR"];
  // The API server never sends null or "" for an unassigned CIDR, but a hand-made object might.
  const texts: [string, unknown][] = Array.isArray(list) && list.length > 0 ? list.map((t) => ["spec.podCIDRs", t])
    : single === undefined || single === null || single === "" ? [] : [["spec.podCIDR", single]];
  for (const [field, t] of texts) {
    if (typeof t !== "string") return { ok: false, error: `${field} holds ${JSON.stringify(t)}, not a CIDR` };
    if (t.includes(":")) continue;
    const s = parseSubnet(t);
    return s.ok ? s : { ok: false, error: `${field} ${JSON.stringify(t)}: expected ${s.error}` };
  }
  return undefined;
}

function networkUnavailableOf(status: Record<string, unknown> | undefined): string | undefined {
  const conditions = status?.["conditions"];
  if (!Array.isArray(conditions)) return undefined;
  for (const c of conditions) {
    const o = obj(c);
    if (o?.["type"] === "NetworkUnavailable" && typeof o["status"] === "string") return o["status"];
  }
  return undefined;
}
