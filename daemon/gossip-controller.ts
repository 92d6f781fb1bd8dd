// Gossip mode: the node's record goes out through SWIM, the allocator claims and defends the
// node subnet, and the live members with confirmed leases become the data plane's peers.

import type { Peer } from "../encap/fdb";
import { formatIpv4, formatMac, formatSubnet, type Ipv4, type MacAddr, type Subnet, type Vni } from "../encap/types";
import { claimsFrom, decodeMembers, peersFrom, samePeers, updateQuarantine, type ClusterMember } from "../control/cluster-view";
import { GossipAgent } from "../control/gossip-agent";
import type { Keyring } from "../control/keyring";
import type { MemberEffect, MembershipConfig } from "../control/membership";
import { CONTROL_PROTOCOL_VERSION, encodeNodeRecord, type NodeRecord } from "../control/node-record";
import { SubnetAllocator, type AllocatorState, type Lease, type QuarantinedSubnet } from "../control/subnet-allocator";
import type { DataPlane } from "./dataplane";
import { readLease, writeLease } from "./lease-file";
import type { Logger } from "./log";
import { StartupError } from "./startup-error";
import type { TraceMember } from "./trace";

export interface GossipControllerOptions {
  nodeName: string;
  underlayIp: Ipv4;
  gossipPort: number;
  vtepMac: MacAddr;
  vni: Vni;
  vxlanPort: number;
  seeds: readonly { ip: Ipv4; port: number }[];
  keyring: Keyring;
  clusterCidr: Subnet;
  subnetLen: number;
  staticSubnet: Subnet | undefined;
  claimWaitMs: number;
  stateDir: string;
  membership?: Partial<MembershipConfig>;
  /** Called with the confirmed subnet (or undefined when it is lost). */
  onSubnet(subnet: Subnet | undefined): void;
}

/** How long to wait for a seed's state before the first allocation step (a restored lease must not evict a newer holder). */
const FIRST_SYNC_WAIT_MS = 3000;

export class GossipController {
  private state: AllocatorState;
  private lease: Lease | null = null;
  private quarantine: QuarantinedSubnet[] = [];
  private wakeTimer: NodeJS.Timeout | undefined;
  private synced = false;
  private stopped = false;
  private updating: Promise<void> = Promise.resolve();
  private members: ClusterMember[] = [];
  private skipped: { name: string; why: string }[] = [];
  /** Confirmed subnets lost to another claim (the partition case). */
  conflictsLost = 0;
  readyError: string | undefined = "waiting for the cluster's state";

  private constructor(
    private readonly o: GossipControllerOptions,
    private readonly allocator: SubnetAllocator,
    private readonly dp: DataPlane,
    private readonly log: Logger,
    private agent: GossipAgent | undefined,
  ) {
    this.state = allocator.initialState(readLease(o.stateDir));
  }

  static async start(o: GossipControllerOptions, dp: DataPlane, log: Logger): Promise<GossipController> {
    const alloc = SubnetAllocator.create({
      clusterCidr: o.clusterCidr, subnetLen: o.subnetLen, nodeName: o.nodeName, staticSubnet: o.staticSubnet ?? null,
      confirmAfterMs: o.claimWaitMs,
    });
    if (!alloc.ok) throw new StartupError(alloc.error);
    const c = new GossipController(o, alloc.value, dp, log, undefined);
    try {
      c.agent = await GossipAgent.start({
        name: o.nodeName, address: { ip: o.underlayIp, port: o.gossipPort }, meta: encodeNodeRecord(c.record()),
        seeds: o.seeds, keyring: o.keyring, config: o.membership ?? {}, log,
        onMemberChange: (changes) => c.onMemberChange(changes),
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EADDRINUSE") throw new StartupError(`--gossip-port ${o.gossipPort}: ${formatIpv4(o.underlayIp)}:${o.gossipPort} is already in use`);
      throw err;
    }
    // A lone first node has nobody to sync with; a joining one waits for a seed's state.
    setTimeout(() => { c.synced = true; c.update(); }, o.seeds.length === 0 ? 0 : FIRST_SYNC_WAIT_MS);
    return c;
  }

  get ready(): boolean {
    return this.readyError === undefined;
  }

  /** Members left out of the peers, and why. */
  get skippedMembers(): readonly { name: string; why: string }[] {
    return this.skipped;
  }

  get currentLease(): Lease | null {
    return this.lease;
  }

  /** Every member as this node sees it, with how long ago it was last heard from. */
  traceMembers(): TraceMember[] {
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

  status(): object {
    const heard = new Map(this.traceMembers().map((t) => [t.name, t]));
    return {
      ready: this.ready,
      notReadyBecause: this.readyError,
      lease: this.lease === null ? null : { subnet: formatSubnet(this.lease.subnet), state: this.lease.state, stamp: this.lease.stamp },
      incarnation: this.agent?.incarnation,
      health: this.agent?.healthScore,
      members: this.members.map((m) => {
        const t = heard.get(m.name);
        return {
          name: m.name, state: m.state, incarnation: m.incarnation,
          underlayIp: m.record === undefined ? undefined : formatIpv4(m.record.underlay.ip),
          subnet: m.record?.podSubnets[0] === undefined ? undefined : formatSubnet(m.record.podSubnets[0]),
          vtepMac: m.record === undefined ? undefined : formatMac(m.record.vtepMac),
          lease: m.record?.lease?.state,
          stateForSeconds: t === undefined ? undefined : Math.round(t.stateForMs / 100) / 10,
          heardSecondsAgo: t?.heardAgoMs === undefined ? undefined : Math.round(t.heardAgoMs / 100) / 10,
        };
      }),
      skipped: this.skipped,
      gossip: this.agent?.counters,
      subnetConflictsLost: this.conflictsLost,
    };
  }

  setKeyring(keyring: Keyring): void {
    this.agent?.setKeyring(keyring);
  }

  /** Leaves the cluster gracefully (others see "left", not a failure). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.wakeTimer);
    await this.updating;
    if (this.agent !== undefined) {
      await this.agent.leave();
      await this.agent.stop();
    }
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
    for (const ch of changes) {
      if (ch.change === "dead" || ch.change === "left") this.log.info({ member: ch.member.name }, `member ${ch.member.name} ${ch.change === "left" ? "left" : "failed"}`);
      else if (ch.change === "alive") this.log.info({ member: ch.member.name }, `member ${ch.member.name} joined`);
    }
    const gone = decodeMembers(changes.filter((c) => c.change === "dead" || c.change === "left").map((c) => c.member));
    this.quarantine = updateQuarantine(this.quarantine, gone, Date.now(), this.allocator.quarantineMs);
    this.synced = true;
    this.update();
  }

  /** Re-evaluates allocation and peers; runs one at a time. */
  private update(): void {
    this.updating = this.updating.then(() => this.doUpdate()).catch((err: unknown) => {
      this.log.error({ err }, "applying the cluster state failed; retrying on the next change or in 5 s");
      this.wake(Date.now() + 5000);
    });
  }

  private async doUpdate(): Promise<void> {
    if (this.stopped || this.agent === undefined) return;
    this.members = decodeMembers(this.agent.members());
    if (this.synced) await this.allocate();
    const selection = peersFrom(this.members, { name: this.o.nodeName, subnet: this.lease?.state === "confirmed" ? this.lease.subnet : undefined, vni: this.o.vni, vxlanPort: this.o.vxlanPort });
    this.skipped = selection.skipped;
    if (!samePeers(selection.peers, this.dp.currentPeers)) {
      const summary = await this.dp.setPeers(selection.peers);
      this.log.info({ peers: selection.peers.map(describe), ...summary }, "peers changed");
    }
  }

  private async allocate(): Promise<void> {
    const now = Date.now();
    const step = this.allocator.step(this.state, { now, peers: claimsFrom(this.members, this.o.nodeName), quarantine: this.quarantine });
    this.state = step.state;
    const a = step.action;
    switch (a.kind) {
      case "announce": {
        if (a.lost !== null) {
          if (a.lost.wasConfirmed) {
            this.conflictsLost++;
            this.log.error({ subnet: formatSubnet(a.lost.subnet), winner: a.lost.winner },
              `SUBNET CONFLICT: our confirmed subnet ${formatSubnet(a.lost.subnet)} is also held by ${a.lost.winner}, whose claim wins ` +
              "(two sides of a partition claimed it); pods on this node must be recreated in the new subnet");
          } else {
            this.log.warn({ subnet: formatSubnet(a.lost.subnet), winner: a.lost.winner }, `claim on ${formatSubnet(a.lost.subnet)} lost to ${a.lost.winner}; claiming another`);
          }
          if (this.lease?.state === "confirmed") {
            this.readyError = "claiming a new subnet";
            this.o.onSubnet(undefined);
            await this.dp.setSubnet(undefined, this.o.vtepMac);
          }
        }
        if (a.note !== null) this.log.info(a.note);
        this.lease = a.lease;
        writeLease(this.o.stateDir, a.lease);
        this.agent?.updateMeta(encodeNodeRecord(this.record()));
        this.readyError = `claiming ${formatSubnet(a.lease.subnet)}; confirmed if unchallenged for ${this.o.claimWaitMs / 1000} s`;
        this.log.info({ subnet: formatSubnet(a.lease.subnet) }, `claiming ${formatSubnet(a.lease.subnet)}`);
        break;
      }
      case "confirm": {
        this.lease = a.lease;
        writeLease(this.o.stateDir, a.lease);
        this.agent?.updateMeta(encodeNodeRecord(this.record()));
        await this.dp.setSubnet(a.lease.subnet, this.o.vtepMac);
        this.readyError = undefined;
        this.o.onSubnet(a.lease.subnet);
        this.log.info({ subnet: formatSubnet(a.lease.subnet), via: a.via }, `subnet ${formatSubnet(a.lease.subnet)} confirmed (${a.via}); ready`);
        break;
      }
      case "exhausted":
      case "static-conflict":
        if (this.readyError !== a.error) this.log.error(a.error);
        this.readyError = a.error;
        break;
      case "wait":
      case "hold":
        break;
    }
    if (step.wakeAt !== null) this.wake(step.wakeAt);
  }

  private wake(at: number): void {
    clearTimeout(this.wakeTimer);
    this.wakeTimer = setTimeout(() => this.update(), Math.max(0, at - Date.now()));
  }
}

function describe(p: Peer): string {
  return `${p.name} ${formatSubnet(p.subnet)} via ${formatIpv4(p.underlayIp)}`;
}
