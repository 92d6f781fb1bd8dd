// The glue between a peer source and the data plane, without root: the gossip source with a
// fake clock and a fake agent whose membership is driven by hand, the static source, and the
// link behind both, with an in-memory data plane and hand-off. What is checked is what the data
// plane and CNI are told, and when.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import pino from "pino";
import { afterAll, describe, expect, it } from "vitest";
import type { Peer } from "../encap/fdb";
import { formatSubnet, parseIpv4, parseSubnet, vtepMacFor, type Ipv4, type Subnet, type Vni } from "../encap/types";
import type { GossipAgentOptions } from "../control/gossip-agent";
import type { PlumbingSummary } from "../control/host-plumbing";
import { generateKey, Keyring } from "../control/keyring";
import { GOSSIP_PROFILES, type GossipProfile } from "../control/membership/config";
import type { MemberChange, MemberEffect, MemberState, MemberView } from "../control/membership/types";
import { CONTROL_PROTOCOL_VERSION, encodeNodeRecord, type LeaseState } from "../control/node-record";
import { SubnetAllocator, type Lease } from "../control/subnet-allocator";
import type { Clock } from "../daemon/clock";
import { parseDaemonConfig } from "../daemon/config";
import { FIRST_SYNC_WAIT_MS, GossipSource, type GossipAgentPort, type GossipSourceOptions, type LeaseStore } from "../daemon/gossip-source";
import { SourceLink, type HandoffTarget, type PeerTarget } from "../daemon/source-link";
import { choosePeerSource } from "../daemon/sources";
import { StartupError } from "../daemon/startup-error";
import { StaticSource } from "../daemon/static-source";

const log = pino({ level: "silent" });

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

/** Timers that fire only when the test moves the time on. */
class FakeClock implements Clock {
  private t = 1_700_000_000_000;
  private seq = 0;
  private timers: { at: number; seq: number; fn: () => void }[] = [];

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.t + ms, seq: ++this.seq, fn };
    this.timers.push(timer);
    return () => { this.timers = this.timers.filter((t) => t !== timer); };
  }

  get pending(): number {
    return this.timers.length;
  }

  /** Moves the time on by `ms`, firing each timer due on the way at its own time. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (due === undefined) break;
      this.timers = this.timers.filter((t) => t !== due);
      this.t = due.at;
      due.fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
}

/** Lets every promise chain that is ready run (the fakes never wait on I/O). */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface Member {
  name: string;
  state: MemberState;
  underlayIp: string;
  subnet?: string;
  lease?: { state: LeaseState; stamp: number };
  vni?: number;
}

/** A GossipAgent whose members the test sets, and which records what the source does to it. */
class FakeAgent implements GossipAgentPort {
  readonly counters = {
    datagramsIn: 0, datagramsOut: 0, bytesIn: 0, bytesOut: 0, streamsIn: 0, streamsOut: 0,
    rejected: { truncated: 0, version: 0, "unknown-key": 0, auth: 0 }, malformed: 0, streamErrors: 0,
  };
  readonly incarnation = 1;
  readonly healthScore = 0;
  selfMeta: Uint8Array;
  left = false;
  stopped = false;
  private others = new Map<string, MemberView>();

  constructor(readonly o: GossipAgentOptions) {
    this.selfMeta = o.meta;
  }

  members(): MemberView[] {
    const self: MemberView = { name: this.o.name, address: this.o.address, meta: this.selfMeta, incarnation: 1, state: "alive", stateChangedAt: 0 };
    return [self, ...this.others.values()];
  }

  heardAgoMs(): number | undefined {
    return 100;
  }

  agoMs(): number {
    return 0;
  }

  updateMeta(meta: Uint8Array): void {
    this.selfMeta = meta;
  }

  setKeyring(): void {}

  async leave(): Promise<void> {
    this.left = true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
  }

  /** Sets a member as the membership would see it and tells the source, as the real agent does. */
  change(m: Member, change: MemberChange): void {
    const view: MemberView = {
      name: m.name, address: { ip: ip(m.underlayIp), port: 7946 }, incarnation: 1, state: m.state, stateChangedAt: 0,
      meta: encodeNodeRecord({
        name: m.name, protocolVersion: CONTROL_PROTOCOL_VERSION, underlay: { family: 4, ip: ip(m.underlayIp) }, gossipPort: 7946,
        vtepMac: vtepMacFor(m.name), vni: (m.vni ?? 1) as Vni, vxlanPort: 4789,
        podSubnets: m.subnet === undefined ? [] : [subnet(m.subnet)],
        lease: m.lease === undefined ? null : { ...m.lease, seq: 1 },
      }),
    };
    this.others.set(m.name, view);
    const effect: MemberEffect = { kind: "member", change, member: view };
    this.o.onMemberChange([effect]);
  }
}

/** The data plane and the hand-off in memory: what they were told, in order, in one list. */
class MemoryNode implements PeerTarget, HandoffTarget {
  readonly told: string[] = [];
  subnet: Subnet | undefined;
  peers: readonly Peer[] = [];
  handoff: Subnet | undefined;
  failSubnet: Error | undefined;

  async setSubnet(s: Subnet | undefined): Promise<void> {
    if (this.failSubnet !== undefined) throw this.failSubnet;
    this.told.push(`dp subnet ${s === undefined ? "none" : formatSubnet(s)}`);
    this.subnet = s;
  }

  async setPeers(peers: readonly Peer[]): Promise<PlumbingSummary> {
    this.told.push(`dp peers ${peers.map((p) => `${p.name}=${formatSubnet(p.subnet)}`).join(",")}`);
    this.peers = peers;
    return { routesAdded: peers.length, routesRemoved: 0, neighboursSet: peers.length, neighboursReplaced: 0, neighboursRemoved: 0 };
  }

  write(s: Subnet): void {
    this.told.push(`handoff ${formatSubnet(s)}`);
    this.handoff = s;
  }

  withdraw(): void {
    this.told.push("handoff withdrawn");
    this.handoff = undefined;
  }
}

const CLAIM_WAIT_MS = 30_000;

function gossipRig(o: { seeds?: number; lease?: Lease; staticSubnet?: string; profile?: GossipProfile } = {}) {
  const clock = new FakeClock();
  let stored: Lease | null = o.lease ?? null;
  const leases: LeaseStore = { read: () => stored, write: (l) => { stored = l; } };
  const agents: FakeAgent[] = [];
  const keyring = Keyring.fromKeys([randomBytes(32)]);
  if (!keyring.ok) throw new Error(keyring.error);
  const opts: GossipSourceOptions = {
    nodeName: "n1", underlayIp: ip("192.0.2.11"), gossipPort: 7946, vtepMac: vtepMacFor("n1"), vni: 1 as Vni, vxlanPort: 4789,
    seeds: Array.from({ length: o.seeds ?? 0 }, (_, i) => ({ ip: ip(`192.0.2.${20 + i}`), port: 7946 })),
    keyring: keyring.value, keyFile: "/nonexistent", clusterCidr: subnet("10.244.0.0/16"), subnetLen: 24,
    staticSubnet: o.staticSubnet === undefined ? undefined : subnet(o.staticSubnet), claimWaitMs: CLAIM_WAIT_MS, profile: o.profile ?? "lan",
    podCidrs: [{ subnet: subnet("10.244.0.0/16"), label: "--cluster-cidr 10.244.0.0/16" }],
  };
  const alloc = SubnetAllocator.create({ clusterCidr: opts.clusterCidr, subnetLen: 24, nodeName: "n1", staticSubnet: opts.staticSubnet ?? null, confirmAfterMs: CLAIM_WAIT_MS });
  if (!alloc.ok) throw new Error(alloc.error);
  const source = new GossipSource(opts, alloc.value, {
    clock, leases, log, loadKeyring: () => ({ ok: false, error: "not in this test" }),
    startAgent: async (a) => {
      const agent = new FakeAgent(a);
      agents.push(agent);
      return agent;
    },
  });
  const node = new MemoryNode();
  const link = new SourceLink(node, node, log);
  return {
    clock, source, node, link,
    lease: () => stored,
    agent: (): FakeAgent => {
      const a = agents[0];
      if (a === undefined) throw new Error("the agent was not started");
      return a;
    },
  };
}

describe("gossip source → data plane", () => {
  it("a lone node claims a subnet, and only once the claim is confirmed the data plane and CNI are told it", async () => {
    const r = gossipRig();
    r.link.serve();
    await r.source.start(r.link);
    expect(r.agent().o.config).toBe(GOSSIP_PROFILES.lan);
    expect(r.source.ready).toBe(false);
    expect(r.source.notReadyBecause).toBe("waiting for the cluster's state");

    await r.clock.advance(0);
    const claim = r.lease();
    expect(claim?.state).toBe("claiming");
    const s = formatSubnet(claim?.subnet as Subnet);
    expect(r.source.notReadyBecause).toBe(`claiming ${s}; confirmed if unchallenged for 30 s`);
    expect(r.node.told).toEqual([]);
    // The claim is in the record the others see.
    expect(r.agent().selfMeta).not.toBe(r.agent().o.meta);

    await r.clock.advance(CLAIM_WAIT_MS - 1);
    expect(r.node.told).toEqual([]);
    await r.clock.advance(1);
    expect(r.node.told).toEqual([`dp subnet ${s}`, `handoff ${s}`]);
    expect(r.lease()?.state).toBe("confirmed");
    expect(r.source.ready).toBe(true);
    expect(r.link.confirmedSubnet).toEqual(claim?.subnet);
    expect(r.source.status().gossip).toMatchObject({ ready: true, profile: "lan", lease: { subnet: s, state: "confirmed" } });
  });

  it("members with a confirmed lease become peers, and go when they fail or leave; others are skipped with a reason", async () => {
    const r = gossipRig({ staticSubnet: "10.244.1.0/24" });
    await r.source.start(r.link);
    await r.clock.advance(0);
    await r.clock.advance(CLAIM_WAIT_MS);
    expect(r.node.subnet).toEqual(subnet("10.244.1.0/24"));
    r.node.told.length = 0;

    // Claiming is not enough: only a confirmed lease is routed.
    r.agent().change({ name: "n2", state: "alive", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", lease: { state: "claiming", stamp: 5 } }, "alive");
    await settle();
    expect(r.node.told).toEqual([]);
    r.agent().change({ name: "n2", state: "alive", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", lease: { state: "confirmed", stamp: 5 } }, "updated");
    await settle();
    expect(r.node.told).toEqual(["dp peers n2=10.244.2.0/24"]);
    expect(r.node.peers[0]).toMatchObject({ name: "n2", underlayIp: ip("192.0.2.12"), vtepMac: vtepMacFor("n2") });

    r.agent().change({ name: "n3", state: "alive", underlayIp: "192.0.2.13", subnet: "10.244.3.0/24", lease: { state: "confirmed", stamp: 6 }, vni: 7 }, "alive");
    await settle();
    expect(r.node.told).toHaveLength(1);
    expect(r.source.trace().skipped).toEqual([{ name: "n3", why: "uses VNI 7 port 4789, this node VNI 1 port 4789" }]);
    expect(r.source.trace().members?.map((m) => m.name)).toEqual(["n1", "n2", "n3"]);

    r.agent().change({ name: "n2", state: "dead", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", lease: { state: "confirmed", stamp: 5 } }, "dead");
    await settle();
    expect(r.node.told).toEqual(["dp peers n2=10.244.2.0/24", "dp peers "]);
    expect(r.node.peers).toEqual([]);
  });

  it("a joining node waits for a seed's state before its first allocation step; a member change ends the wait", async () => {
    const r = gossipRig({ seeds: 1 });
    await r.source.start(r.link);
    await r.clock.advance(FIRST_SYNC_WAIT_MS - 1);
    expect(r.lease()).toBeNull();
    await r.clock.advance(1);
    expect(r.lease()?.state).toBe("claiming");

    const s = gossipRig({ seeds: 1 });
    await s.source.start(s.link);
    s.agent().change({ name: "n2", state: "alive", underlayIp: "192.0.2.12" }, "alive");
    await settle();
    expect(s.lease()?.state).toBe("claiming");
  });

  it("a restart keeps the persisted lease when nobody else holds it", async () => {
    const kept: Lease = { subnet: subnet("10.244.9.0/24"), state: "confirmed", stamp: 1000, seq: 3 };
    const r = gossipRig({ lease: kept });
    r.link.serve();
    await r.source.start(r.link);
    await r.clock.advance(0);
    await r.clock.advance(CLAIM_WAIT_MS);
    expect(r.node.subnet).toEqual(kept.subnet);
    expect(r.node.handoff).toEqual(kept.subnet);
  });

  it("a confirmed subnet lost to an earlier confirmed claim: CNI is stopped before the TAP loses it, then a new subnet is claimed and confirmed", async () => {
    const r = gossipRig();
    r.link.serve();
    await r.source.start(r.link);
    await r.clock.advance(0);
    const first = r.lease();
    await r.clock.advance(CLAIM_WAIT_MS);
    const s = formatSubnet(first?.subnet as Subnet);
    r.node.told.length = 0;

    // The other side of a healed partition confirmed the same subnet, and claimed it earlier.
    r.agent().change({ name: "n0", state: "alive", underlayIp: "192.0.2.10", subnet: s, lease: { state: "confirmed", stamp: (first?.stamp ?? 0) - 1000 } }, "alive");
    await settle();
    expect(r.node.told.slice(0, 2)).toEqual(["handoff withdrawn", "dp subnet none"]);
    expect(r.source.ready).toBe(false);
    expect(r.source.status().gossip?.subnetConflictsLost).toBe(1);
    const second = r.lease();
    expect(second?.state).toBe("claiming");
    expect(formatSubnet(second?.subnet as Subnet)).not.toBe(s);
    // The winner is routed once this node no longer holds the subnet.
    expect(r.node.told[2]).toBe(`dp peers n0=${s}`);

    await r.clock.advance(CLAIM_WAIT_MS);
    const t = formatSubnet(second?.subnet as Subnet);
    expect(r.node.told.slice(3)).toEqual([`dp subnet ${t}`, `handoff ${t}`]);
    expect(r.source.ready).toBe(true);
  });

  it("a data plane that fails is retried on a timer; stop leaves the cluster and cancels every timer", async () => {
    const r = gossipRig();
    await r.source.start(r.link);
    await r.clock.advance(0);
    r.node.failSubnet = new Error("RTNETLINK answers: File exists");
    await r.clock.advance(CLAIM_WAIT_MS);
    expect(r.node.subnet).toBeUndefined();
    expect(r.clock.pending).toBe(1);

    await r.source.stop();
    expect(r.agent().left).toBe(true);
    expect(r.agent().stopped).toBe(true);
    expect(r.clock.pending).toBe(0);
    // Nothing reaches the data plane after stop.
    r.agent().change({ name: "n2", state: "alive", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", lease: { state: "confirmed", stamp: 5 } }, "alive");
    await settle();
    expect(r.node.peers).toEqual([]);
  });

  it("follows --gossip-profile", async () => {
    for (const profile of ["lan", "wan", "local"] as const) {
      const r = gossipRig({ profile });
      await r.source.start(r.link);
      expect(r.agent().o.config).toBe(GOSSIP_PROFILES[profile]);
      expect(r.source.logFields()).toMatchObject({ gossipProfile: profile });
    }
  });
});

describe("static source → data plane", () => {
  const peers: Peer[] = [
    { name: "n2", underlayIp: ip("192.0.2.12"), subnet: subnet("10.244.2.0/24"), vtepMac: vtepMacFor("n2"), path: "vxlan" },
  ];
  const cidrs = [{ subnet: subnet("10.244.1.0/24"), label: "--subnet 10.244.1.0/24" }];

  it("tells the subnet, then the peers; the hand-off waits until the daemon serves", async () => {
    const node = new MemoryNode();
    const link = new SourceLink(node, node, log);
    const source = new StaticSource(subnet("10.244.1.0/24"), peers, cidrs);
    expect(source.ready).toBe(true);
    await source.start(link);
    expect(node.told).toEqual(["dp subnet 10.244.1.0/24", "dp peers n2=10.244.2.0/24"]);
    expect(link.confirmedSubnet).toEqual(subnet("10.244.1.0/24"));
    link.serve();
    expect(node.told.at(-1)).toBe("handoff 10.244.1.0/24");
    expect(source.reload()).toBe("static peers: there is no key file");
    expect(source.trace()).toEqual({ members: undefined, skipped: [] });
  });

  it("a kernel that refuses the routes stops the start with a StartupError", async () => {
    const node = new MemoryNode();
    node.failSubnet = new Error("a route to 10.244.1.0/24 exists");
    const source = new StaticSource(subnet("10.244.1.0/24"), peers, cidrs);
    const err = await source.start(new SourceLink(node, node, log)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StartupError);
    expect((err as Error).message).toBe("programming the kernel: a route to 10.244.1.0/24 exists");
  });
});

describe("choosing the source from the configuration", () => {
  const dir = mkdtempSync(join(tmpdir(), "vxmesh-source-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const common = ["--node-name", "n1", "--underlay-ip", "192.0.2.11", "--state-dir", dir];

  it("--peers: the static source, whose pod addresses (for the iptables rules) are this node's and its peers' subnets", () => {
    const file = join(dir, "peers.json");
    writeFileSync(file, JSON.stringify([{ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24" }]));
    const config = parseDaemonConfig([...common, "--subnet", "10.244.1.0/24", "--peers", file], {});
    if (!config.ok) throw new Error(config.error);
    const source = choosePeerSource(config.value, log);
    expect(source.kind).toBe("static");
    expect(source.clusterCidr).toBeUndefined();
    expect(source.podCidrs().map((c) => formatSubnet(c.subnet))).toEqual(["10.244.1.0/24", "10.244.2.0/24"]);
  });

  it("--key-file: the gossip source with its profile; a bad key file stops the start before anything is made", () => {
    const key = join(dir, "key");
    writeFileSync(key, generateKey() + "\n", { mode: 0o600 });
    const config = parseDaemonConfig([...common, "--key-file", key, "--gossip-profile", "wan"], {});
    if (!config.ok) throw new Error(config.error);
    const source = choosePeerSource(config.value, log);
    expect(source.kind).toBe("gossip");
    expect(formatSubnet(source.clusterCidr as Subnet)).toBe("10.244.0.0/16");
    expect(source.podCidrs().map((c) => formatSubnet(c.subnet))).toEqual(["10.244.0.0/16"]);
    expect(source.logFields()).toMatchObject({ gossipProfile: "wan" });

    const bad = parseDaemonConfig([...common, "--key-file", join(dir, "missing")], {});
    if (!bad.ok) throw new Error(bad.error);
    expect(() => choosePeerSource(bad.value, log)).toThrow(/^--key-file: /);
  });
});
