// The pure core of the Kubernetes source (control/kube/): the vxmesh.io/ annotations, the view of
// a v1 Node read from untrusted JSON, the peer selection every node computes from the same Nodes,
// the Node cache fed by list and watch, and the retry backoff. No API server, no sockets: plain
// objects shaped as the API server sends them.

import { describe, expect, it } from "vitest";
import { ANNOTATIONS, decodeEndpoint, encodeEndpoint, endpointPatch, type VxlanEndpoint } from "../control/kube/annotations";
import { BACKOFF_FIRST_MS, BACKOFF_MAX_MS, backoffMs } from "../control/kube/backoff";
import { NodeCache } from "../control/kube/node-cache";
import { readNode, resourceVersionOf, type NodeView } from "../control/kube/node-view";
import { SKIP_REASONS, selectPeers, type SelfView, type SkipReason } from "../control/kube/peer-selection";
import { CONTROL_PROTOCOL_VERSION } from "../control/node-record";
import { formatIpv4, formatMac, formatSubnet, parseIpv4, parseSubnet, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";

function ip(text: string): Ipv4 {
  const r = parseIpv4(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function subnet(text: string): Subnet {
  const r = parseSubnet(text);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** Node i's endpoint: underlay 192.168.<i/256>.<i%256>, MAC 02:00:00:00:<i>, VNI 1, port 4789. */
function endpoint(i: number, over: Partial<VxlanEndpoint> = {}): VxlanEndpoint {
  return {
    protocol: CONTROL_PROTOCOL_VERSION,
    underlayIp: (0xc0a80000 + i) as Ipv4,
    vtepMac: (0x020000000000 + i) as MacAddr,
    vni: 1 as Vni,
    vxlanPort: 4789,
    ...over,
  };
}

/** What kubelet and kube-controller-manager put on a Node that are none of ours. */
const FOREIGN = {
  "node.alpha.kubernetes.io/ttl": "0",
  "volumes.kubernetes.io/controller-managed-attach-detach": "true",
  "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
};

interface NodeOpts {
  rv?: string;
  /** spec.podCIDR; omitted when undefined. */
  podCIDR?: unknown;
  /** spec.podCIDRs; defaults to [podCIDR] when podCIDR is a string. */
  podCIDRs?: unknown;
  /** Our annotations, as text; null for none. */
  ours?: Record<string, string> | null;
  foreign?: Record<string, unknown>;
  networkUnavailable?: string;
  ready?: string;
}

/** A v1 Node as the API server returns it (fields trimmed to a plausible few). */
function nodeObject(name: string, i: number, opts: NodeOpts = {}): Record<string, unknown> {
  const podCIDR = "podCIDR" in opts ? opts.podCIDR : `10.244.${i}.0/24`;
  const podCIDRs = "podCIDRs" in opts ? opts.podCIDRs : typeof podCIDR === "string" ? [podCIDR] : undefined;
  const spec: Record<string, unknown> = { providerID: `kind://docker/kind/${name}` };
  if (podCIDR !== undefined) spec["podCIDR"] = podCIDR;
  if (podCIDRs !== undefined) spec["podCIDRs"] = podCIDRs;
  const conditions: Record<string, unknown>[] = [
    { type: "MemoryPressure", status: "False", reason: "KubeletHasSufficientMemory" },
    { type: "Ready", status: opts.ready ?? "True", reason: "KubeletReady", lastHeartbeatTime: "2024-05-01T10:00:00Z" },
  ];
  if (opts.networkUnavailable !== undefined) conditions.unshift({ type: "NetworkUnavailable", status: opts.networkUnavailable, reason: "VxmeshIsUp" });
  const ours = opts.ours === undefined ? encodeEndpoint(endpoint(i)) : opts.ours ?? {};
  return {
    kind: "Node",
    apiVersion: "v1",
    metadata: {
      name,
      uid: `0000-${i}`,
      resourceVersion: opts.rv ?? String(1000 + i),
      creationTimestamp: "2024-05-01T09:00:00Z",
      labels: { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" },
      annotations: { ...FOREIGN, ...(opts.foreign ?? {}), ...ours },
    },
    spec,
    status: {
      conditions,
      addresses: [{ type: "InternalIP", address: formatIpv4(0xc0a80000 + i) }, { type: "Hostname", address: name }],
    },
  };
}

function view(o: unknown): NodeView {
  const r = readNode(o);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

function node(name: string, i: number, opts: NodeOpts = {}): NodeView {
  return view(nodeObject(name, i, opts));
}

function errorOf<T>(r: { ok: true; value: T } | { ok: false; error: string } | undefined): string {
  if (r === undefined) throw new Error("expected an error, got undefined");
  if (r.ok) throw new Error(`expected an error, got ${JSON.stringify(r.value)}`);
  return r.error;
}

/** This node: endpoint 9999 (no Node below uses it unless a test means it to). */
const SELF: SelfView = {
  name: "self", subnet: subnet("10.244.0.0/24"), clusterCidr: subnet("10.244.0.0/16"), vni: 1 as Vni, vxlanPort: 4789,
  underlayIp: endpoint(9999).underlayIp, vtepMac: endpoint(9999).vtepMac,
};

/** Deterministic shuffles (mulberry32). */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  let s = seed >>> 0;
  const rand = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = [...items];
  for (let k = out.length - 1; k > 0; k--) {
    const j = Math.floor(rand() * (k + 1));
    [out[k], out[j]] = [out[j] as T, out[k] as T];
  }
  return out;
}

describe("annotations", () => {
  const e = endpoint(7, { underlayIp: ip("192.0.2.10"), vtepMac: 0x02005e100001 as MacAddr, vni: 4242 as Vni, vxlanPort: 8472 });

  it("encodes to plain text that decodes back to the same endpoint", () => {
    const a = encodeEndpoint(e);
    expect(a).toEqual({
      "vxmesh.io/protocol": "1",
      "vxmesh.io/underlay-ip": "192.0.2.10",
      "vxmesh.io/vtep-mac": "02:00:5e:10:00:01",
      "vxmesh.io/vni": "4242",
      "vxmesh.io/vxlan-port": "8472",
    });
    expect(decodeEndpoint(a)).toEqual({ ok: true, value: e });
    // Foreign annotations beside ours change nothing.
    expect(decodeEndpoint({ ...FOREIGN, ...a })).toEqual({ ok: true, value: e });
  });

  it("is undefined for a Node carrying none of ours", () => {
    expect(decodeEndpoint({})).toBeUndefined();
    expect(decodeEndpoint(FOREIGN)).toBeUndefined();
    // Near misses of the prefix are not ours either.
    expect(decodeEndpoint({ "vxmesh.io": "x", "other.vxmesh.io/vni": "1", "VXMESH.IO/vni": "1" })).toBeUndefined();
  });

  it("names the annotation and the expected form for each malformed value", () => {
    const cases: [key: string, text: string, expected: string][] = [
      [ANNOTATIONS.protocol, "one", "a protocol version such as 1"],
      [ANNOTATIONS.protocol, "", "a protocol version such as 1"],
      [ANNOTATIONS.underlayIp, "192.0.2", "a dotted-quad IPv4 address"],
      [ANNOTATIONS.underlayIp, "2001:db8::1", "a dotted-quad IPv4 address"],
      [ANNOTATIONS.vtepMac, "02:00:5e:10:00", "a MAC address"],
      [ANNOTATIONS.vtepMac, "01:00:5e:10:00:01", "a unicast MAC address"],
      [ANNOTATIONS.vni, "16777216", "an integer from 0 to 16777215"],
      [ANNOTATIONS.vni, "-1", "an integer from 0 to 16777215"],
      [ANNOTATIONS.vxlanPort, "0", "a UDP port 1-65535"],
      [ANNOTATIONS.vxlanPort, "65536", "a UDP port 1-65535"],
      [ANNOTATIONS.vxlanPort, "47 89", "a UDP port 1-65535"],
    ];
    for (const [key, text, expected] of cases) {
      const error = errorOf(decodeEndpoint({ ...encodeEndpoint(e), [key]: text }));
      expect(error, `${key}=${text}`).toContain(`annotation ${key}=${JSON.stringify(text)}`);
      expect(error, `${key}=${text}`).toContain(`expected ${expected}`);
    }
  });

  it("names each missing annotation", () => {
    for (const key of Object.values(ANNOTATIONS)) {
      const a: Record<string, string> = { ...encodeEndpoint(e) };
      delete a[key];
      expect(errorOf(decodeEndpoint(a))).toBe(`annotation ${key} is missing`);
    }
    // Only a stray key of ours: it is a vxmesh Node, and the protocol is what is missing first.
    expect(errorOf(decodeEndpoint({ "vxmesh.io/something-newer": "x" }))).toBe("annotation vxmesh.io/protocol is missing");
  });

  it("refuses a protocol version other than this build's", () => {
    for (const v of ["0", "2", "99999"]) {
      const error = errorOf(decodeEndpoint({ ...encodeEndpoint(e), [ANNOTATIONS.protocol]: v }));
      expect(error, v).toContain(ANNOTATIONS.protocol);
      expect(error, v).toContain(`expected protocol ${CONTROL_PROTOCOL_VERSION}`);
    }
    // A newer protocol is refused before its other fields are read (they may mean something else).
    expect(errorOf(decodeEndpoint({ [ANNOTATIONS.protocol]: "2", [ANNOTATIONS.vni]: "not a vni" }))).toContain(ANNOTATIONS.protocol);
  });

  describe("endpointPatch", () => {
    it("is undefined when the Node already says the endpoint", () => {
      expect(endpointPatch({ ...FOREIGN, ...encodeEndpoint(e) }, e)).toBeUndefined();
    });

    it("sets everything on a Node with none of ours, and leaves foreign annotations out", () => {
      expect(endpointPatch(FOREIGN, e)).toEqual(encodeEndpoint(e));
    });

    it("holds only the keys that differ", () => {
      const current = { ...FOREIGN, ...encodeEndpoint(e) };
      const moved = { ...e, underlayIp: ip("192.0.2.11") };
      expect(endpointPatch(current, moved)).toEqual({ [ANNOTATIONS.underlayIp]: "192.0.2.11" });
      const both = { ...e, vni: 7 as Vni, vxlanPort: 4789 };
      expect(endpointPatch(current, both)).toEqual({ [ANNOTATIONS.vni]: "7", [ANNOTATIONS.vxlanPort]: "4789" });
      // A value written by hand in another spelling is rewritten in ours.
      expect(endpointPatch({ ...current, [ANNOTATIONS.vtepMac]: "02:00:5E:10:00:01" }, e)).toEqual({ [ANNOTATIONS.vtepMac]: "02:00:5e:10:00:01" });
    });

    it("removes keys of ours this build does not write, and nothing foreign", () => {
      const current = { ...FOREIGN, ...encodeEndpoint(e), "vxmesh.io/gossip-port": "7946", "vxmesh.io/lease": "x", "example.com/vxmesh.io/x": "keep" };
      const patch = endpointPatch(current, e);
      expect(patch).toEqual({ "vxmesh.io/gossip-port": null, "vxmesh.io/lease": null });
      // Stale keys and a changed value together.
      expect(endpointPatch(current, { ...e, vni: 9 as Vni })).toEqual({ "vxmesh.io/gossip-port": null, "vxmesh.io/lease": null, [ANNOTATIONS.vni]: "9" });
    });
  });
});

describe("node view", () => {
  it("reads a realistic Node", () => {
    const o = nodeObject("kind-worker", 3, { rv: "48213", networkUnavailable: "False", foreign: { "flannel.alpha.coreos.com/x": 5 } });
    const v = view(o);
    expect(v.name).toBe("kind-worker");
    expect(v.resourceVersion).toBe("48213");
    expect(v.podCidr).toEqual({ ok: true, value: subnet("10.244.3.0/24") });
    expect(v.endpoint).toEqual({ ok: true, value: endpoint(3) });
    expect(v.networkUnavailable).toBe("False");
    // Only string-valued annotations are kept.
    expect(v.annotations).toEqual({ ...FOREIGN, ...encodeEndpoint(endpoint(3)) });
    expect(resourceVersionOf(o)).toBe("48213");
  });

  it("takes the IPv4 entry of a dual-stack Node, whichever family comes first", () => {
    const v4first = node("ds", 1, { podCIDR: "10.244.1.0/24", podCIDRs: ["10.244.1.0/24", "fd00:1::/64"] });
    expect(v4first.podCidr).toEqual({ ok: true, value: subnet("10.244.1.0/24") });
    const v6first = node("ds", 1, { podCIDR: "fd00:1::/64", podCIDRs: ["fd00:1::/64", "10.244.1.0/24"] });
    expect(v6first.podCidr).toEqual({ ok: true, value: subnet("10.244.1.0/24") });
  });

  it("has no pod CIDR for an IPv6-only Node, or one not yet assigned", () => {
    expect(node("v6", 1, { podCIDR: "fd00:1::/64", podCIDRs: ["fd00:1::/64"] }).podCidr).toBeUndefined();
    expect(node("v6", 1, { podCIDR: "fd00:1::/64", podCIDRs: undefined }).podCidr).toBeUndefined();
    expect(node("new", 1, { podCIDR: undefined }).podCidr).toBeUndefined();
    expect(node("new", 1, { podCIDR: "", podCIDRs: [] }).podCidr).toBeUndefined();
    expect(view({ metadata: { name: "bare" } }).podCidr).toBeUndefined();
  });

  it("falls back to spec.podCIDR when spec.podCIDRs is absent or empty", () => {
    expect(node("old", 2, { podCIDR: "10.244.2.0/24", podCIDRs: undefined }).podCidr).toEqual({ ok: true, value: subnet("10.244.2.0/24") });
    expect(node("old", 2, { podCIDR: "10.244.2.0/24", podCIDRs: [] }).podCidr).toEqual({ ok: true, value: subnet("10.244.2.0/24") });
  });

  it("makes an unreadable pod CIDR an error on the view, not an exception", () => {
    const nonString = errorOf(node("x", 1, { podCIDRs: [42, "10.244.1.0/24"] }).podCidr);
    expect(nonString).toContain("spec.podCIDRs");
    expect(nonString).toContain("42");
    const hostBits = errorOf(node("x", 1, { podCIDR: "10.244.1.5/24" }).podCidr);
    expect(hostBits).toContain('"10.244.1.5/24"');
    expect(hostBits).toContain("did you mean 10.244.1.0/24?");
    expect(errorOf(node("x", 1, { podCIDR: "banana" }).podCidr)).toContain("an IPv4 CIDR");
  });

  it("reads the NetworkUnavailable condition, whatever its value, and its absence", () => {
    for (const s of ["True", "False", "Unknown"]) expect(node("n", 1, { networkUnavailable: s }).networkUnavailable).toBe(s);
    expect(node("n", 1).networkUnavailable).toBeUndefined();
    expect(view({ metadata: { name: "n" }, status: { conditions: [null, 3, { type: "NetworkUnavailable", status: true }] } }).networkUnavailable).toBeUndefined();
  });

  it("carries a bad or missing endpoint as the annotations decode it", () => {
    expect(node("n", 1, { ours: null }).endpoint).toBeUndefined();
    expect(errorOf(node("n", 1, { ours: { ...encodeEndpoint(endpoint(1)), [ANNOTATIONS.vni]: "x" } }).endpoint)).toContain(ANNOTATIONS.vni);
    // A non-string value of ours is as good as missing.
    expect(errorOf(node("n", 1, { ours: null, foreign: { ...encodeEndpoint(endpoint(1)), [ANNOTATIONS.vxlanPort]: 4789 } }).endpoint))
      .toBe(`annotation ${ANNOTATIONS.vxlanPort} is missing`);
  });

  it("refuses an object without a name, and never throws on garbage", () => {
    const nameless: unknown[] = [
      { metadata: {} }, { metadata: { name: "" } }, { metadata: { name: 7 } }, { metadata: "n" }, { name: "n" },
      null, undefined, [], [{ metadata: { name: "n" } }], 0, 42, NaN, "node", true, {},
    ];
    for (const o of nameless) expect(errorOf(readNode(o)), JSON.stringify(o) ?? String(o)).toBe("a Node without metadata.name");
    const weird: unknown[] = [
      { metadata: { name: "n", annotations: [] , resourceVersion: 5 }, spec: [], status: "x" },
      { metadata: { name: "n", annotations: null }, spec: null, status: { conditions: {} } },
      { metadata: { name: "n", annotations: "a=b" }, spec: { podCIDRs: "10.244.1.0/24", podCIDR: 7 }, status: { conditions: "NetworkUnavailable" } },
      { metadata: { name: "n" }, spec: { podCIDRs: [null] } },
      { metadata: { name: "n" }, spec: { podCIDRs: [{}] } },
    ];
    for (const o of weird) {
      const r = readNode(o);
      expect(r.ok, JSON.stringify(o)).toBe(true);
      if (!r.ok) continue;
      expect(r.value.name).toBe("n");
      expect(r.value.endpoint).toBeUndefined();
      expect(r.value.networkUnavailable).toBeUndefined();
    }
    const first = view(weird[0]);
    expect(first.resourceVersion).toBe("");
    expect(first.annotations).toEqual({});
    expect(first.podCidr).toBeUndefined();
    expect(view(weird[3]).podCidr?.ok).toBe(false);
    expect(view(weird[4]).podCidr?.ok).toBe(false);
  });

  it("reads the resourceVersion of a BOOKMARK, and nothing from objects without one", () => {
    const bookmark = { kind: "Node", apiVersion: "v1", metadata: { resourceVersion: "50123", annotations: { "k8s.io/initial-events-end": "true" } } };
    expect(resourceVersionOf(bookmark)).toBe("50123");
    expect(readNode(bookmark).ok).toBe(false);
    for (const o of [null, undefined, [], 5, "x", {}, { metadata: {} }, { metadata: { resourceVersion: "" } }, { metadata: { resourceVersion: 50123 } }]) {
      expect(resourceVersionOf(o)).toBeUndefined();
    }
  });
});

describe("peer selection", () => {
  const reasonsOf = (skipped: readonly { name: string; reason: SkipReason }[]): Record<string, SkipReason> =>
    Object.fromEntries(skipped.map((s) => [s.name, s.reason]));

  it("makes well-formed Nodes peers, sorted by name, and skips itself silently", () => {
    const nodes = [node("n3", 3), node("n1", 1), node("self", 0), node("n2", 2)];
    const { peers, skipped } = selectPeers(nodes, SELF);
    expect(peers.map((p) => p.name)).toEqual(["n1", "n2", "n3"]);
    expect(skipped).toEqual([]);
    expect(peers[0]).toEqual({ name: "n1", underlayIp: ip("192.168.0.1"), subnet: subnet("10.244.1.0/24"), vtepMac: endpoint(1).vtepMac, path: "vxlan" });
    // Our own Node is skipped even when it would conflict with everything.
    const selfish = node("self", 9, { podCIDR: "10.0.0.0/8", ours: encodeEndpoint(endpoint(1)) });
    expect(selectPeers([selfish, node("n1", 1)], SELF)).toEqual({ peers: [peers[0]], skipped: [] });
  });

  it("says why each Node is skipped", () => {
    const nodes = [
      node("a-no-cidr", 1, { podCIDR: undefined }),
      node("b-bad-cidr", 2, { podCIDR: "10.244.2.9/24" }),
      node("c-outside", 3, { podCIDR: "10.99.3.0/24" }),
      node("d-no-annotations", 4, { ours: null }),
      node("e-bad-annotations", 5, { ours: { ...encodeEndpoint(endpoint(5)), [ANNOTATIONS.vtepMac]: "zz" } }),
      node("f-other-vni", 6, { ours: encodeEndpoint(endpoint(6, { vni: 2 as Vni })) }),
      node("g-other-port", 7, { ours: encodeEndpoint(endpoint(7, { vxlanPort: 8472 })) }),
      node("h-over-self", 8, { podCIDR: "10.244.0.128/25" }),
      node("i-ok", 9),
    ];
    const { peers, skipped } = selectPeers(nodes, SELF);
    expect(peers.map((p) => p.name)).toEqual(["i-ok"]);
    expect(reasonsOf(skipped)).toEqual({
      "a-no-cidr": "no_pod_cidr",
      "b-bad-cidr": "bad_pod_cidr",
      "c-outside": "outside_cluster_cidr",
      "d-no-annotations": "no_annotations",
      "e-bad-annotations": "bad_annotations",
      "f-other-vni": "other_vxlan",
      "g-other-port": "other_vxlan",
      "h-over-self": "overlapping_pod_cidr",
    });
    expect(skipped.map((s) => s.name)).toEqual([...skipped.map((s) => s.name)].sort());
    const why = Object.fromEntries(skipped.map((s) => [s.name, s.why]));
    expect(why["a-no-cidr"]).toContain("spec.podCIDR");
    expect(why["b-bad-cidr"]).toContain("10.244.2.9/24");
    expect(why["c-outside"]).toContain("10.99.3.0/24");
    expect(why["c-outside"]).toContain("10.244.0.0/16");
    expect(why["d-no-annotations"]).toContain("vxmesh.io/");
    expect(why["e-bad-annotations"]).toContain(ANNOTATIONS.vtepMac);
    expect(why["f-other-vni"]).toContain("VNI 2");
    expect(why["f-other-vni"]).toContain("VNI 1");
    expect(why["g-other-port"]).toContain("port 8472");
    expect(why["g-other-port"]).toContain("port 4789");
    expect(why["h-over-self"]).toContain("10.244.0.128/25");
    expect(why["h-over-self"]).toContain("this node's 10.244.0.0/24");
    // Every reason a metric may be labelled with is one of the declared ones, and all but
    // shared_endpoint appeared above.
    for (const s of skipped) expect(SKIP_REASONS).toContain(s.reason);
  });

  it("checks no overlap with itself before its own subnet is known", () => {
    const { peers } = selectPeers([node("n0", 0, { podCIDR: "10.244.0.0/24" })], { ...SELF, subnet: undefined });
    expect(peers.map((p) => p.name)).toEqual(["n0"]);
  });

  it("skips a Node whose pod CIDR covers ours", () => {
    const { peers, skipped } = selectPeers([node("wide", 1, { podCIDR: "10.244.0.0/23" }), node("n2", 2)], SELF);
    expect(peers.map((p) => p.name)).toEqual(["n2"]);
    expect(skipped).toEqual([{ name: "wide", reason: "overlapping_pod_cidr", why: expect.stringContaining("10.244.0.0/23") }]);
  });

  it("keeps one of two Nodes with the same pod CIDR: the name that sorts first", () => {
    const { peers, skipped } = selectPeers([node("zed", 5, { podCIDR: "10.244.5.0/24" }), node("amy", 6, { podCIDR: "10.244.5.0/24" })], SELF);
    expect(peers.map((p) => p.name)).toEqual(["amy"]);
    expect(skipped).toEqual([{ name: "zed", reason: "overlapping_pod_cidr", why: expect.stringContaining("amy's 10.244.5.0/24") }]);
  });

  it("keeps a /23 over the two /24s it covers (the shorter prefix at the same network sorts first)", () => {
    const nodes = [
      node("a", 1, { podCIDR: "10.244.2.0/24" }),
      node("b", 2, { podCIDR: "10.244.3.0/24" }),
      node("z", 3, { podCIDR: "10.244.2.0/23" }),
      node("c", 4, { podCIDR: "10.244.4.0/24" }),
    ];
    const { peers, skipped } = selectPeers(nodes, SELF);
    expect(peers.map((p) => p.name)).toEqual(["c", "z"]);
    expect(reasonsOf(skipped)).toEqual({ a: "overlapping_pod_cidr", b: "overlapping_pod_cidr" });
    for (const s of skipped) expect(s.why).toContain("z's 10.244.2.0/23");
  });

  it("compares along a chain with the CIDR reaching furthest, not merely the previous one", () => {
    // Sorted: /20 at .16, then .17/24 (inside, dropped), then .18/24 (inside the /20 though not
    // the one just before it), then .31/24 (last inside), then .32/24 (just past: kept).
    const nodes = [
      node("p-wide", 1, { podCIDR: "10.244.16.0/20" }),
      node("a", 2, { podCIDR: "10.244.17.0/24" }),
      node("b", 3, { podCIDR: "10.244.18.0/24" }),
      node("c", 4, { podCIDR: "10.244.31.0/24" }),
      node("d", 5, { podCIDR: "10.244.32.0/24" }),
      node("e", 6, { podCIDR: "10.244.16.128/25" }),
    ];
    for (const seed of [1, 2, 3]) {
      const { peers, skipped } = selectPeers(shuffled(nodes, seed), SELF);
      expect(peers.map((p) => p.name)).toEqual(["d", "p-wide"]);
      expect(reasonsOf(skipped)).toEqual({ a: "overlapping_pod_cidr", b: "overlapping_pod_cidr", c: "overlapping_pod_cidr", e: "overlapping_pod_cidr" });
      for (const s of skipped) expect(s.why).toContain("p-wide's 10.244.16.0/20");
    }
  });

  it("skips a Node that claims this node's own underlay address or VTEP MAC (a stale object of this machine)", () => {
    const nodes = [
      node("old-name", 2, { ours: encodeEndpoint(endpoint(2, { underlayIp: SELF.underlayIp })) }),
      node("mac-twin", 3, { ours: encodeEndpoint(endpoint(3, { vtepMac: SELF.vtepMac })) }),
      node("fine", 4),
    ];
    const { peers, skipped } = selectPeers(nodes, SELF);
    expect(peers.map((p) => p.name)).toEqual(["fine"]);
    expect(reasonsOf(skipped)).toEqual({ "mac-twin": "shared_endpoint", "old-name": "shared_endpoint" });
    for (const s of skipped) expect(s.why).toContain("is this node's own");
  });

  it("keeps one Node per underlay address and per VTEP MAC: the name that sorts first", () => {
    const nodes = [
      node("b-same-ip", 2, { ours: encodeEndpoint(endpoint(2, { underlayIp: endpoint(1).underlayIp })) }),
      node("a", 1),
      node("c-same-mac", 3, { ours: encodeEndpoint(endpoint(3, { vtepMac: endpoint(1).vtepMac })) }),
      node("d", 4),
    ];
    const { peers, skipped } = selectPeers(nodes, SELF);
    expect(peers.map((p) => p.name)).toEqual(["a", "d"]);
    expect(reasonsOf(skipped)).toEqual({ "b-same-ip": "shared_endpoint", "c-same-mac": "shared_endpoint" });
    const why = Object.fromEntries(skipped.map((s) => [s.name, s.why]));
    expect(why["b-same-ip"]).toContain("192.168.0.1");
    expect(why["b-same-ip"]).toContain("a's");
    expect(why["c-same-mac"]).toContain(formatMac(endpoint(1).vtepMac));
    expect(why["c-same-mac"]).toContain("a's");
  });

  it("comes out the same whatever order the Nodes arrive in", () => {
    const nodes = [
      node("self", 0),
      node("n01", 1),
      node("n02", 2, { podCIDR: "10.244.2.0/23" }),
      node("n03", 3),
      node("n04", 4, { podCIDR: "10.244.3.0/24" }),
      node("n05", 5, { podCIDR: "10.244.40.0/24", ours: encodeEndpoint(endpoint(5, { underlayIp: endpoint(1).underlayIp })) }),
      node("n00", 6, { podCIDR: "10.244.41.0/24", ours: encodeEndpoint(endpoint(6, { underlayIp: endpoint(1).underlayIp })) }),
      node("n07", 7, { podCIDR: undefined }),
      node("n08", 8, { ours: null }),
      node("n09", 9, { podCIDR: "10.244.0.0/22" }),
      node("n10", 10, { ours: encodeEndpoint(endpoint(10, { vni: 5 as Vni })) }),
      node("n11", 11, { podCIDR: "10.244.12.0/24" }),
      node("n12", 12, { podCIDR: "10.244.12.0/24" }),
      node("n13", 13, { ours: encodeEndpoint(endpoint(13, { vtepMac: endpoint(14).vtepMac })) }),
      node("n14", 14),
    ];
    const first = selectPeers(nodes, SELF);
    expect(first.peers.map((p) => p.name)).toEqual(["n00", "n02", "n11", "n13"]);
    expect(reasonsOf(first.skipped)).toEqual({
      n01: "shared_endpoint", n03: "overlapping_pod_cidr", n04: "overlapping_pod_cidr", n05: "shared_endpoint", n07: "no_pod_cidr",
      n08: "no_annotations", n09: "overlapping_pod_cidr", n10: "other_vxlan", n12: "overlapping_pod_cidr", n14: "shared_endpoint",
    });
    for (let seed = 1; seed <= 12; seed++) {
      const again = selectPeers(shuffled(nodes, seed), SELF);
      expect(again.peers, `seed ${seed}`).toEqual(first.peers);
      expect(again.skipped, `seed ${seed}`).toEqual(first.skipped);
    }
    expect(selectPeers([...nodes].reverse(), SELF)).toEqual(first);
  });

  it("selects among 5,000 Nodes", () => {
    const nodes: NodeView[] = [];
    for (let i = 0; i < 5000; i++) {
      const name = `node-${String(i).padStart(4, "0")}`;
      nodes.push(node(name, i, { podCIDR: `10.${16 + (i >> 8)}.${i & 255}.0/24` }));
    }
    // A few that conflict, at the edges of the sort.
    nodes.push(node("zz-dup-cidr", 6000, { podCIDR: "10.16.0.0/24" }));
    nodes.push(node("zz-dup-ip", 6001, { podCIDR: "10.200.0.0/24", ours: encodeEndpoint(endpoint(6001, { underlayIp: endpoint(4999).underlayIp })) }));
    const self: SelfView = {
      name: "node-0000", subnet: subnet("10.16.0.0/24"), clusterCidr: subnet("10.0.0.0/8"), vni: 1 as Vni, vxlanPort: 4789,
      underlayIp: endpoint(9999).underlayIp, vtepMac: endpoint(9999).vtepMac,
    };
    const { peers, skipped } = selectPeers(shuffled(nodes, 99), self);
    expect(peers.length).toBe(4999);
    expect(new Set(peers.map((p) => formatSubnet(p.subnet))).size).toBe(4999);
    expect(peers[0]?.name).toBe("node-0001");
    expect(peers[4998]?.name).toBe("node-4999");
    expect(reasonsOf(skipped)).toEqual({ "zz-dup-cidr": "overlapping_pod_cidr", "zz-dup-ip": "shared_endpoint" });
  });
});

describe("node cache", () => {
  it("replaces everything on a list, and takes its resourceVersion", () => {
    const c = new NodeCache();
    expect(c.size).toBe(0);
    expect(c.resourceVersion).toBe("");
    c.replace([nodeObject("n1", 1), nodeObject("n2", 2), nodeObject("n3", 3)], "500");
    expect(c.size).toBe(3);
    expect(c.resourceVersion).toBe("500");
    expect(c.get("n2")?.podCidr).toEqual({ ok: true, value: subnet("10.244.2.0/24") });
    c.replace([nodeObject("n4", 4), { metadata: {} }, null], "600");
    expect(c.size).toBe(1);
    expect(c.get("n1")).toBeUndefined();
    expect([...c.views()].map((v) => v.name)).toEqual(["n4"]);
    expect(c.resourceVersion).toBe("600");
    expect(c.unreadable).toBe(2);
  });

  it("answers 'peers' when a Node comes, goes, or changes what a peer selection reads", () => {
    const c = new NodeCache();
    c.replace([nodeObject("n1", 1)], "100");
    expect(c.apply("ADDED", nodeObject("n2", 2, { rv: "101" }))).toBe("peers");
    expect(c.size).toBe(2);
    expect(c.apply("MODIFIED", nodeObject("n2", 2, { rv: "102", podCIDR: "10.244.20.0/24" }))).toBe("peers");
    expect(c.get("n2")?.podCidr).toEqual({ ok: true, value: subnet("10.244.20.0/24") });
    expect(c.apply("MODIFIED", nodeObject("n2", 2, { rv: "103", podCIDR: "10.244.20.0/24", ours: encodeEndpoint(endpoint(2, { underlayIp: ip("192.0.2.2") })) }))).toBe("peers");
    expect(c.apply("MODIFIED", nodeObject("n2", 2, { rv: "104", podCIDR: "10.244.20.0/24", ours: null }))).toBe("peers");
    expect(c.apply("MODIFIED", nodeObject("n2", 2, { rv: "105", podCIDR: "10.244.20.0/24", ours: { [ANNOTATIONS.protocol]: "2" } }))).toBe("peers");
    expect(c.apply("MODIFIED", nodeObject("n1", 1, { rv: "106", ours: encodeEndpoint(endpoint(1, { vxlanPort: 8472 })) }))).toBe("peers");
    expect(c.apply("MODIFIED", nodeObject("n1", 1, { rv: "107", ours: encodeEndpoint(endpoint(1, { vni: 3 as Vni, vxlanPort: 8472 })) }))).toBe("peers");
    expect(c.apply("MODIFIED", nodeObject("n1", 1, { rv: "108", ours: encodeEndpoint(endpoint(1, { vni: 3 as Vni, vxlanPort: 8472, vtepMac: 0x02aa00000001 as MacAddr })) }))).toBe("peers");
    expect(c.apply("MODIFIED", nodeObject("n1", 1, { rv: "109", podCIDR: undefined }))).toBe("peers");
    expect(c.apply("DELETED", nodeObject("n2", 2, { rv: "110" }))).toBe("peers");
    expect(c.size).toBe(1);
    expect(c.get("n2")).toBeUndefined();
    expect(c.resourceVersion).toBe("110");
  });

  it("answers 'other' when only status or foreign annotations change", () => {
    const c = new NodeCache();
    c.replace([nodeObject("n1", 1)], "100");
    expect(c.apply("MODIFIED", nodeObject("n1", 1, { rv: "101", ready: "False" }))).toBe("other");
    expect(c.apply("MODIFIED", nodeObject("n1", 1, { rv: "102", networkUnavailable: "False" }))).toBe("other");
    expect(c.get("n1")?.networkUnavailable).toBe("False");
    expect(c.apply("MODIFIED", nodeObject("n1", 1, { rv: "103", foreign: { "example.com/owner": "team-a" } }))).toBe("other");
    expect(c.get("n1")?.annotations["example.com/owner"]).toBe("team-a");
    // The same content again (a re-sent ADDED) is no change for peers either.
    expect(c.apply("ADDED", nodeObject("n1", 1, { rv: "104" }))).toBe("other");
    expect(c.resourceVersion).toBe("104");
  });

  it("answers 'none' for a bookmark and for deleting a Node it never had, and follows their resourceVersion", () => {
    const c = new NodeCache();
    c.replace([nodeObject("n1", 1)], "100");
    expect(c.apply("BOOKMARK", { kind: "Node", apiVersion: "v1", metadata: { resourceVersion: "250" } })).toBe("none");
    expect(c.resourceVersion).toBe("250");
    expect(c.size).toBe(1);
    expect(c.apply("DELETED", nodeObject("ghost", 9, { rv: "260" }))).toBe("none");
    expect(c.resourceVersion).toBe("260");
    expect(c.size).toBe(1);
    // An event without a resourceVersion leaves it where it was.
    expect(c.apply("BOOKMARK", { metadata: {} })).toBe("none");
    expect(c.resourceVersion).toBe("260");
    expect(c.unreadable).toBe(0);
  });

  it("counts objects it cannot read and changes nothing for them", () => {
    const c = new NodeCache();
    c.replace([nodeObject("n1", 1)], "100");
    expect(c.apply("ADDED", { metadata: { resourceVersion: "101" } })).toBe("none");
    expect(c.apply("MODIFIED", null)).toBe("none");
    expect(c.apply("DELETED", { metadata: { name: 5, resourceVersion: "103" } })).toBe("none");
    expect(c.unreadable).toBe(3);
    expect(c.size).toBe(1);
    // Still the resourceVersion moves: the event was seen.
    expect(c.resourceVersion).toBe("103");
  });
});

describe("backoff", () => {
  it("doubles from about half a second", () => {
    const mid = (attempt: number): number => backoffMs(attempt, 0.5);
    expect(BACKOFF_FIRST_MS).toBe(500);
    expect(mid(0)).toBe(500);
    expect(mid(1)).toBe(1000);
    expect(mid(2)).toBe(2000);
    expect(mid(5)).toBe(16_000);
    for (let a = 0; a < 5; a++) expect(mid(a + 1)).toBe(2 * mid(a));
  });

  it("stops growing near the cap, even after very many attempts", () => {
    expect(BACKOFF_MAX_MS).toBe(30_000);
    for (const a of [6, 7, 16, 17, 100, 1000, 1e9]) {
      expect(backoffMs(a, 0.5), String(a)).toBe(30_000);
      expect(backoffMs(a, 0), String(a)).toBe(24_000);
      expect(backoffMs(a, 0.9999999), String(a)).toBe(36_000);
    }
    let prev = 0;
    for (let a = 0; a < 40; a++) {
      const d = backoffMs(a, 0.5);
      expect(d).toBeGreaterThanOrEqual(prev);
      prev = d;
    }
  });

  it("jitters within ±20 %", () => {
    for (let a = 0; a < 12; a++) {
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** a);
      expect(backoffMs(a, 0)).toBe(Math.round(base * 0.8));
      expect(backoffMs(a, 0.9999999999)).toBeLessThanOrEqual(Math.round(base * 1.2));
      expect(backoffMs(a, 0.9999999999)).toBeGreaterThan(Math.round(base * 1.19));
      for (let r = 0; r < 1; r += 0.125) {
        const d = backoffMs(a, r);
        expect(d).toBeGreaterThanOrEqual(Math.round(base * 0.8));
        expect(d).toBeLessThanOrEqual(Math.round(base * 1.2));
        expect(Number.isInteger(d)).toBe(true);
      }
    }
    expect(backoffMs(0, 0)).toBe(400);
    expect(backoffMs(0, 0.9999999999)).toBe(600);
  });
});
