import { describe, expect, it } from "vitest";
import { claimsFrom, decodeMembers, peersFrom, updateQuarantine } from "../control/cluster-view";
import type { MemberState, MemberView } from "../control/membership";
import { CONTROL_PROTOCOL_VERSION, encodeNodeRecord, type LeaseState, type NodeRecord } from "../control/node-record";
import { parseSubnet, vtepMacFor, type Ipv4, type Subnet, type Vni } from "../encap/types";

function subnet(text: string): Subnet {
  const s = parseSubnet(text);
  if (!s.ok) throw new Error(s.error);
  return s.value;
}

function member(name: string, i: number, opts: { state?: MemberState; subnet?: string; lease?: LeaseState; stamp?: number; vni?: number; metaName?: string } = {}): MemberView {
  const rec: NodeRecord = {
    name: opts.metaName ?? name, protocolVersion: CONTROL_PROTOCOL_VERSION, underlay: { family: 4, ip: (0xc0000200 + i) as Ipv4 },
    gossipPort: 7946, vtepMac: vtepMacFor(name), vni: (opts.vni ?? 1) as Vni, vxlanPort: 4789,
    podSubnets: opts.subnet === undefined ? [] : [subnet(opts.subnet)],
    lease: opts.subnet === undefined ? null : { state: opts.lease ?? "confirmed", stamp: opts.stamp ?? 1000 + i, seq: 1 },
  };
  return { name, address: { ip: rec.underlay.ip, port: 7946 }, meta: encodeNodeRecord(rec), incarnation: 1, state: opts.state ?? "alive", stateChangedAt: 0 };
}

const self = { name: "n1", subnet: subnet("10.244.1.0/24"), vni: 1 as Vni, vxlanPort: 4789 };

describe("cluster view", () => {
  it("routes live members with confirmed leases, and no one else", () => {
    const members = decodeMembers([
      member("n1", 11, { subnet: "10.244.1.0/24" }),
      member("n2", 12, { subnet: "10.244.2.0/24" }),
      member("n3", 13, { subnet: "10.244.3.0/24", state: "suspect" }),
      member("n4", 14, { subnet: "10.244.4.0/24", state: "dead" }),
      member("n5", 15, { subnet: "10.244.5.0/24", state: "left" }),
      member("n6", 16, { subnet: "10.244.6.0/24", lease: "claiming" }),
      member("n7", 17),
      member("n8", 18, { subnet: "10.244.8.0/24", vni: 2 }),
      member("n9", 19, { subnet: "10.244.9.0/24", metaName: "evil" }),
    ]);
    const { peers, skipped } = peersFrom(members, self);
    expect(peers.map((p) => p.name)).toEqual(["n2", "n3"]);
    expect(skipped.map((s) => s.name).sort()).toEqual(["n8", "n9"]);
    // Every live claim counts for allocation, routed or not; a record that lies about its
    // name counts for nothing.
    expect(claimsFrom(members, "n1").map((c) => c.name)).toEqual(["n2", "n3", "n6", "n8"]);
  });

  it("routes only the winning claim where two subnets overlap, and never over our own", () => {
    const members = decodeMembers([
      member("n2", 12, { subnet: "10.244.2.0/24", stamp: 500 }),
      member("n3", 13, { subnet: "10.244.2.0/24", stamp: 400 }),
      member("n4", 14, { subnet: "10.244.1.0/25" }),
    ]);
    const { peers, skipped } = peersFrom(members, self);
    expect(peers.map((p) => p.name)).toEqual(["n3"]);
    expect(skipped.map((s) => s.name).sort()).toEqual(["n2", "n4"]);
  });

  it("quarantines the subnets of members that died or left, for a while", () => {
    const gone = decodeMembers([member("n4", 14, { subnet: "10.244.4.0/24", state: "dead" })]);
    const q = updateQuarantine([], gone, 1000, 60_000);
    expect(q).toEqual([{ subnet: subnet("10.244.4.0/24"), owner: "n4", releasedAt: 1000 }]);
    expect(updateQuarantine(q, gone, 2000, 60_000)).toHaveLength(1);
    expect(updateQuarantine(q, [], 61_001, 60_000)).toHaveLength(0);
  });
});
