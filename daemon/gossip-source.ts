// Gossip as the peer source: the node's record goes out through SWIM (memberlist's timing
// profile of --gossip-profile), the allocator claims and defends the node subnet, and the live
// members with confirmed leases become the peers. Time, timers, the agent and the lease file
// come in through GossipDeps, so a test drives all of it by hand (test/gossip-source.test.ts).

import type { Peer } from "../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, type Ipv4, type MacAddr, type Parsed, type Subnet, type Vni } from "../encap/types";
import type { LabelledCidr } from "../control/cidr-overlap";
import { claimsFrom, decodeMembers, peersFrom, samePeers, updateQuarantine, type ClusterMember } from "../control/cluster-view";
import { GossipAgent, type GossipAgentOptions } from "../control/gossip-agent";
import { loadKeyring, type Keyring } from "../control/keyring";
import type { MemberEffect } from "../control/membership";
import { GOSSIP_PROFILES, type GossipProfile } from "../control/membership/config";
import { CONTROL_PROTOCOL_VERSION, encodeNodeRecord, type NodeRecord } from "../control/node-record";
import { SubnetAllocator, type AllocatorState, type Lease, type QuarantinedSubnet } from "../control/subnet-allocator";
import { systemClock, type Clock } from "./clock";
import { podCidrs, type DaemonConfig } from "./config";
import { readLease, writeLease } from "./lease-file";
import type { Logger } from "./log";
import type { PeerEvents, PeerSource, SourceTrace } from "./peer-source";
import { StartupError } from "./startup-error";
import type { GossipStatus, SourceStatus } from "./status";
import type { TraceMember } from "./trace";

export type GossipSourceConfig = Extract<DaemonConfig["source"], { kind: "gossip" }>;

export interface GossipSourceOptions {
  nodeName: string;
  underlayIp: Ipv4;
  gossipPort: number;
  vtepMac: MacAddr;
  vni: Vni;
  vxlanPort: number;
  seeds: readonly { ip: Ipv4; port: number }[];
  keyring: Keyring;
  /** Where `reload` reads the keys again. */
  keyFile: string;
  clusterCidr: Subnet;
  subnetLen: number;
  staticSubnet: Subnet | undefined;
  claimWaitMs: number;
  profile: GossipProfile;
  podCidrs: readonly LabelledCidr[];
}

/** What the source uses of a GossipAgent: the real one in the daemon, a fake in tests. */
export type GossipAgentPort = Pick<GossipAgent,
  "members" | "counters" | "heardAgoMs" | "agoMs" | "incarnation" | "healthScore" | "updateMeta" | "setKeyring" | "leave" | "stop">;

/** The node's lease where it survives a restart. */
export interface LeaseStore {
  read(): Lease | null;
  write(lease: Lease): void;
}

export interface GossipDeps {
  clock: Clock;
  startAgent(o: GossipAgentOptions): Promise<GossipAgentPort>;
  leases: LeaseStore;
  loadKeyring(file: string): Parsed<Keyring>;
  log: Logger;
}

/** How long to wait for a seed's state before the first allocation step (a restored lease must not evict a newer holder). */
export const FIRST_SYNC_WAIT_MS = 3000;
/** After a failed update, the next try at the latest. */
export const RETRY_MS = 5000;

export class GossipSource implements PeerSource {
  readonly kind = "gossip";
  private state: AllocatorState;
  private lease: Lease | null = null;
  private quarantine: QuarantinedSubnet[] = [];
  private cancelWake: () => void = () => undefined;
  private cancelSync: () => void = () => undefined;
  private synced = false;
  private stopped = false;
  private stopping: Promise<void> | undefined;
  private updating: Promise<void> = Promise.resolve();
  private members: ClusterMember[] = [];
  private skipped: { name: string; why: string }[] = [];
  /** The peers last told; the data plane starts with none. */
  private peers: readonly Peer[] = [];
  private events: PeerEvents | undefined;
  private agent: GossipAgentPort | undefined;
  /** Confirmed subnets lost to another claim (the partition case). */
  private conflictsLost = 0;
  notReadyBecause: string | undefined = "waiting for the cluster's state";

  constructor(private readonly o: GossipSourceOptions, private readonly allocator: SubnetAllocator, private readonly deps: GossipDeps) {
    this.state = allocator.initialState(deps.leases.read());
  }

  /** Everything checked before the kernel is touched: the key file and the allocator's settings. */
  static fromConfig(config: DaemonConfig, src: GossipSourceConfig, log: Logger): GossipSource {
    const keyring = loadKeyring(src.keyFile);
    if (!keyring.ok) throw new StartupError(`--key-file: ${keyring.error}`);
    const alloc = SubnetAllocator.create({
      clusterCidr: src.clusterCidr, subnetLen: src.subnetLen, nodeName: config.nodeName, staticSubnet: src.subnet ?? null,
      confirmAfterMs: src.claimWaitMs,
    });
    if (!alloc.ok) throw new StartupError(alloc.error);
    return new GossipSource({
      nodeName: config.nodeName, underlayIp: config.underlayIp, gossipPort: src.gossipPort, vtepMac: config.vtepMac,
      vni: config.vni, vxlanPort: config.vxlanPort, seeds: src.join, keyring: keyring.value, keyFile: src.keyFile,
      clusterCidr: src.clusterCidr, subnetLen: src.subnetLen, staticSubnet: src.subnet, claimWaitMs: src.claimWaitMs,
      profile: src.profile, podCidrs: podCidrs(config),
    }, alloc.value, {
      clock: systemClock, startAgent: (o) => GossipAgent.start(o), loadKeyring, log,
      leases: { read: () => readLease(config.stateDir), write: (lease) => writeLease(config.stateDir, lease) },
    });
  }

  get clusterCidr(): Subnet {
    return this.o.clusterCidr;
  }

  get ready(): boolean {
    return this.notReadyBecause === undefined;
  }

  podCidrs(): readonly LabelledCidr[] {
    return this.o.podCidrs;
  }

  async start(events: PeerEvents): Promise<void> {
    const o = this.o;
    this.events = events;
    try {
      this.agent = await this.deps.startAgent({
        name: o.nodeName, address: { ip: o.underlayIp, port: o.gossipPort }, meta: encodeNodeRecord(this.record()),
        seeds: o.seeds, keyring: o.keyring, config: GOSSIP_PROFILES[o.profile], log: this.deps.log,
        onMemberChange: (changes) => this.onMemberChange(changes),
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EADDRINUSE") throw new StartupError(`--gossip-port ${o.gossipPort}: ${formatIpv4(o.underlayIp)}:${o.gossipPort} is already in use`);
      throw err;
    }
    // A lone first node has nobody to sync with; a joining one waits for a seed's state.
    this.cancelSync = this.deps.clock.after(o.seeds.length === 0 ? 0 : FIRST_SYNC_WAIT_MS, () => {
      this.synced = true;
      this.update();
    });
  }

  /** Leaves the cluster gracefully (others see "left", not a failure). */
  stop(): Promise<void> {
    this.stopping ??= this.leave();
    return this.stopping;
  }

  private async leave(): Promise<void> {
    this.stopped = true;
    this.cancelSync();
    this.cancelWake();
    await this.updating;
    if (this.agent !== undefined) {
      await this.agent.leave();
      await this.agent.stop();
    }
  }

  status(): SourceStatus {
    return { gossip: this.gossipStatus() };
  }

  trace(): SourceTrace {
    return { members: this.traceMembers(), skipped: this.skipped };
  }

  reload(): string | undefined {
    const loaded = this.deps.loadKeyring(this.o.keyFile);
    if (!loaded.ok) return loaded.error;
    this.agent?.setKeyring(loaded.value);
    this.deps.log.info({ keys: loaded.value.keyIds, primary: loaded.value.primaryKeyId }, "gossip keyring reloaded");
    return undefined;
  }

  logFields(): Record<string, unknown> {
    return { gossipPort: this.o.gossipPort, gossipProfile: this.o.profile, join: this.o.seeds.map((j) => `${formatIpv4(j.ip)}:${j.port}`) };
  }

  /** Every member as this node sees it, with how long ago it was last heard from. */
  private traceMembers(): TraceMember[] {
    const agent = this.agent;
    if (agent === undefined) return [];
    const views = agent.members();
    return decodeMembers(views).map((m, i) => {
      const view = views[i];
      const heard = view === undefined ? undefined : agent.heardAgoMs(view.address);
      return {
        name: m.name, state: m.state,
        underlayIp: m.record?.underlay.ip, vtepMac: m.record?.vtepMac, subnet: m.record?.podSubnets[0], lease: m.record?.lease?.state,
        heardAgoMs: m.name === this.o.nodeName ? 0 : heard, stateForMs: agent.agoMs(m.stateChangedAt),
      };
    });
  }

  private gossipStatus(): GossipStatus {
    const heard = new Map(this.traceMembers().map((t) => [t.name, t]));
    return {
      ready: this.ready,
      notReadyBecause: this.notReadyBecause,
      profile: this.o.profile,
      lease: this.lease === null ? null : { subnet: formatSubnet(this.lease.subnet), state: this.lease.state, stamp: this.lease.stamp },
      incarnation: this.agent?.incarnation,
      health: this.agent?.healthScore,
      members: this.members.map((m) => {
        const t = heard.get(m.name);
        const r = m.record;
        return {
          name: m.name, state: m.state, incarnation: m.incarnation,
          underlayIp: r === undefined ? undefined : formatIpv4(r.underlay.ip),
          subnet: r?.podSubnets[0] === undefined ? undefined : formatSubnet(r.podSubnets[0]),
          vtepMac: r === undefined ? undefined : formatMac(r.vtepMac),
          lease: r?.lease?.state,
          stateForSeconds: t === undefined ? undefined : Math.round(t.stateForMs / 100) / 10,
          heardSecondsAgo: t?.heardAgoMs === undefined ? undefined : Math.round(t.heardAgoMs / 100) / 10,
        };
      }),
      skipped: this.skipped,
      gossip: this.agent?.counters,
      subnetConflictsLost: this.conflictsLost,
    };
  }

  private record(): NodeRecord {
    const o = this.o;
    return {
      name: o.nodeName, protocolVersion: CONTROL_PROTOCOL_VERSION, underlay: { family: 4, ip: o.underlayIp },
      gossipPort: o.gossipPort, vtepMac: o.vtepMac, vni: o.vni, vxlanPort: o.vxlanPort,
      podSubnets: this.lease === null ? [] : [this.lease.subnet],
      lease: this.lease === null ? null : { state: this.lease.state, stamp: this.lease.stamp, seq: this.lease.seq },
    };
  }

  private onMemberChange(changes: readonly MemberEffect[]): void {
    const log = this.deps.log;
    for (const ch of changes) {
      if (ch.change === "dead" || ch.change === "left") log.info({ member: ch.member.name }, `member ${ch.member.name} ${ch.change === "left" ? "left" : "failed"}`);
      else if (ch.change === "alive") log.info({ member: ch.member.name }, `member ${ch.member.name} joined`);
    }
    const gone = decodeMembers(changes.filter((c) => c.change === "dead" || c.change === "left").map((c) => c.member));
    this.quarantine = updateQuarantine(this.quarantine, gone, this.deps.clock.now(), this.allocator.quarantineMs);
    this.synced = true;
    this.update();
  }

  /** Re-evaluates allocation and peers; runs one at a time. */
  private update(): void {
    this.updating = this.updating.then(() => this.doUpdate()).catch((err: unknown) => {
      this.deps.log.error({ err }, "applying the cluster state failed; retrying on the next change or in 5 s");
      this.wake(this.deps.clock.now() + RETRY_MS);
    });
  }

  private async doUpdate(): Promise<void> {
    if (this.stopped || this.agent === undefined || this.events === undefined) return;
    this.members = decodeMembers(this.agent.members());
    if (this.synced) await this.allocate(this.events);
    const selection = peersFrom(this.members, { name: this.o.nodeName, subnet: this.lease?.state === "confirmed" ? this.lease.subnet : undefined, vni: this.o.vni, vxlanPort: this.o.vxlanPort });
    this.skipped = selection.skipped;
    if (!samePeers(selection.peers, this.peers)) {
      this.peers = selection.peers;
      await this.events.peersChanged(selection.peers);
    }
  }

  private async allocate(events: PeerEvents): Promise<void> {
    const step = this.allocator.step(this.state, { now: this.deps.clock.now(), peers: claimsFrom(this.members, this.o.nodeName), quarantine: this.quarantine });
    this.state = step.state;
    const a = step.action;
    const log = this.deps.log;
    switch (a.kind) {
      case "announce": {
        if (a.lost !== null) {
          const lost = a.lost;
          if (lost.wasConfirmed) {
            this.conflictsLost++;
            log.error({ subnet: formatSubnet(lost.subnet), winner: lost.winner },
              `SUBNET CONFLICT: our confirmed subnet ${formatSubnet(lost.subnet)} is also held by ${lost.winner}, whose claim wins ` +
              "(two sides of a partition claimed it); pods on this node must be recreated in the new subnet");
          } else {
            log.warn({ subnet: formatSubnet(lost.subnet), winner: lost.winner }, `claim on ${formatSubnet(lost.subnet)} lost to ${lost.winner}; claiming another`);
          }
          if (this.lease?.state === "confirmed") {
            this.notReadyBecause = "claiming a new subnet";
            await events.subnetChanged(undefined);
          }
        }
        if (a.note !== null) log.info(a.note);
        this.setLease(a.lease);
        this.notReadyBecause = `claiming ${formatSubnet(a.lease.subnet)}; confirmed if unchallenged for ${this.o.claimWaitMs / 1000} s`;
        log.info({ subnet: formatSubnet(a.lease.subnet) }, `claiming ${formatSubnet(a.lease.subnet)}`);
        break;
      }
      case "confirm": {
        this.setLease(a.lease);
        await events.subnetChanged(a.lease.subnet);
        this.notReadyBecause = undefined;
        log.info({ subnet: formatSubnet(a.lease.subnet), via: a.via }, `subnet ${formatSubnet(a.lease.subnet)} confirmed (${a.via}); ready`);
        break;
      }
      case "exhausted":
      case "static-conflict":
        if (this.notReadyBecause !== a.error) log.error(a.error);
        this.notReadyBecause = a.error;
        break;
      case "wait":
      case "hold":
        break;
    }
    if (step.wakeAt !== null) this.wake(step.wakeAt);
  }

  /** Keeps the lease: on disk, and in the record the other members see. */
  private setLease(lease: Lease): void {
    this.lease = lease;
    this.deps.leases.write(lease);
    this.agent?.updateMeta(encodeNodeRecord(this.record()));
  }

  private wake(at: number): void {
    this.cancelWake();
    // An update still in flight at stop must not leave a timer behind.
    if (this.stopped) return;
    this.cancelWake = this.deps.clock.after(Math.max(0, at - this.deps.clock.now()), () => this.update());
  }
}
