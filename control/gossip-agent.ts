// The membership state machine on real time and real sockets: ticks it at its deadlines,
// feeds it what the transport receives, carries out its effects, and retries joining until a
// seed answers. The only place where the pure core meets the clock.

import { randomInt } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { Logger } from "pino";
import { formatIpv4 } from "../encap/types";
import { GossipTransport } from "./gossip-transport";
import type { Keyring, OpenFailure } from "./keyring";
import { Membership, seededRng, wire, type Address, type Effect, type MemberEffect, type MemberView, type MembershipConfig } from "./membership";

const JOIN_RETRY_MIN_MS = 1000;
const JOIN_RETRY_MAX_MS = 15_000;
/** A wrong key shows as rejected input: say so at most this often. */
const REJECT_LOG_INTERVAL_MS = 10_000;

export interface GossipAgentOptions {
  name: string;
  address: Address;
  meta: Uint8Array;
  seeds: readonly Address[];
  keyring: Keyring;
  config?: Partial<MembershipConfig>;
  log: Logger;
  /** Called after every batch of member changes (joins, failures, meta updates). */
  onMemberChange(changes: readonly MemberEffect[]): void;
}

export class GossipAgent {
  private timer: NodeJS.Timeout | undefined;
  private joinTimer: NodeJS.Timeout | undefined;
  private joinDelay = JOIN_RETRY_MIN_MS;
  private stopped = false;
  private lastRejectLog = -Infinity;
  private readonly origin = performance.now();
  /** When something authentic last arrived from an address (ip·65536 + port), in this agent's clock. */
  private readonly heard = new Map<number, number>();

  private constructor(
    private readonly o: GossipAgentOptions,
    private readonly membership: Membership,
    private transport: GossipTransport | undefined,
  ) {}

  static async start(o: GossipAgentOptions): Promise<GossipAgent> {
    // A restarted node starts above any incarnation it had before (seconds since the epoch),
    // so its fresh alive message wins without a round of refutation.
    const incarnation = Math.floor(Date.now() / 1000);
    const membership = new Membership(o.config ?? {}, { name: o.name, address: o.address, meta: o.meta, incarnation }, seededRng(randomInt(2 ** 31)));
    const agent = new GossipAgent(o, membership, undefined);
    agent.transport = await GossipTransport.listen(o.address.ip, o.address.port, o.keyring, {
      datagram: (from, plain) => agent.onDatagram(from, plain),
      stream: (from, plain) => agent.onStream(from, plain),
      rejected: (from, reason, error) => agent.onRejected(from, reason, error),
    });
    agent.join();
    agent.schedule();
    return agent;
  }

  members(): MemberView[] {
    return this.membership.members();
  }

  get counters(): GossipTransport["counters"] {
    return (this.transport as GossipTransport).counters;
  }

  /**
   * Milliseconds since gossip that opened with our keys last came from `address` (a datagram,
   * or the answer to our push-pull); undefined when nothing has.
   */
  heardAgoMs(address: Address): number | undefined {
    const at = this.heard.get(addressKey(address));
    return at === undefined ? undefined : this.now() - at;
  }

  /** Milliseconds since a time of this agent's clock (a member's stateChangedAt). */
  agoMs(at: number): number {
    return this.now() - at;
  }

  get incarnation(): number {
    return this.membership.incarnation;
  }

  get healthScore(): number {
    return this.membership.healthScore;
  }

  updateMeta(meta: Uint8Array): void {
    this.membership.updateMeta(meta, this.now());
    this.schedule();
  }

  setKeyring(keyring: Keyring): void {
    this.transport?.setKeyring(keyring);
  }

  /** Announces a graceful leave and gives it up to `timeoutMs` to reach the others. */
  async leave(timeoutMs = 3000): Promise<void> {
    this.apply(this.membership.leave(this.now()));
    const deadline = this.now() + timeoutMs;
    while (!this.membership.leaveComplete && this.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      this.tick();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.joinTimer);
    await this.transport?.close();
  }

  private now(): number {
    return performance.now() - this.origin;
  }

  private join(): void {
    const seeds = this.o.seeds.filter((s) => !(s.ip === this.o.address.ip && s.port === this.o.address.port));
    if (seeds.length === 0 || this.stopped) return;
    this.apply(this.membership.join(seeds, this.now()));
    // Retry until someone else is alive: the seeds may simply not be up yet.
    this.joinTimer = setTimeout(() => {
      if (this.membership.liveMembers > 1) return;
      this.o.log.info({ seeds: seeds.map(formatAddress) }, "no seed answered yet; joining again");
      this.joinDelay = Math.min(this.joinDelay * 2, JOIN_RETRY_MAX_MS);
      this.join();
    }, this.joinDelay);
  }

  private schedule(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const wait = Math.max(0, this.membership.nextDeadline() - this.now());
    this.timer = setTimeout(() => this.tick(), Math.min(wait, 1000));
  }

  private tick(): void {
    if (this.stopped) return;
    this.apply(this.membership.tick(this.now()));
  }

  private onDatagram(from: Address, plain: Uint8Array): void {
    this.heard.set(addressKey(from), this.now());
    const decoded = wire.decodePacket(plain);
    if (!decoded.ok) {
      this.transport?.countMalformed();
      return;
    }
    this.apply(this.membership.receive(from, decoded.value, this.now()));
  }

  private onStream(from: Address, plain: Uint8Array): Uint8Array | undefined {
    const decoded = wire.decodePushPull(plain);
    if (!decoded.ok) {
      this.transport?.countMalformed();
      return undefined;
    }
    const effects = this.membership.receiveStream(from, decoded.value, this.now());
    // The answer to a request goes back on the connection it came in on.
    const reply = effects.find((e) => e.kind === "stream" && e.message.reply);
    this.apply(effects.filter((e) => e !== reply));
    return reply !== undefined && reply.kind === "stream" ? wire.encodePushPull(reply.message) : undefined;
  }

  /** A join that fails says why, so a wrong key is told apart from a seed that is down. */
  private explainFailedJoin(to: Address, why: string): void {
    const now = this.now();
    if (now - this.lastRejectLog < REJECT_LOG_INTERVAL_MS) return;
    this.lastRejectLog = now;
    const what: Record<string, string> = {
      unanswered: "accepted the connection and closed it without an answer: it could not open our gossip; is this node using the same key file?",
      rejected: "answered with gossip this node cannot open; is this node using the same key file?",
      unreachable: "is not reachable (not started yet, or the address or port is wrong)",
      timeout: "did not answer in time",
      malformed: "answered with something that is not gossip",
    };
    this.o.log.warn({ seed: formatAddress(to), why }, `joining through ${formatAddress(to)} failed: it ${what[why] ?? why}`);
  }

  private onRejected(from: Address, reason: OpenFailure, error: string): void {
    const now = this.now();
    if (now - this.lastRejectLog < REJECT_LOG_INTERVAL_MS) return;
    this.lastRejectLog = now;
    const hint = reason === "unknown-key" || reason === "auth" ? "; is it using the same key file?" : "";
    this.o.log.warn({ from: formatAddress(from), reason }, `rejected gossip from ${formatAddress(from)}: ${error}${hint}`);
  }

  private apply(effects: readonly Effect[]): void {
    const changes: MemberEffect[] = [];
    for (const e of effects) {
      if (e.kind === "send") {
        this.transport?.sendDatagram(e.to, wire.encodePacket(e.messages));
      } else if (e.kind === "stream") {
        if (e.message.reply) continue; // only meaningful inside onStream
        const to = e.to;
        const joining = e.message.join;
        void this.transport?.request(to, wire.encodePushPull(e.message)).then((reply) => {
          if (this.stopped) return;
          if (!reply.ok) {
            if (joining) this.explainFailedJoin(to, reply.why);
            return;
          }
          this.heard.set(addressKey(to), this.now());
          const decoded = wire.decodePushPull(reply.value);
          if (!decoded.ok) {
            this.transport?.countMalformed();
            return;
          }
          this.apply(this.membership.receiveStream(to, decoded.value, this.now()));
        });
      } else {
        changes.push(e);
      }
    }
    if (changes.length > 0) this.o.onMemberChange(changes);
    this.schedule();
  }
}

function addressKey(a: Address): number {
  return a.ip * 65536 + a.port;
}

function formatAddress(a: Address): string {
  return `${formatIpv4(a.ip)}:${a.port}`;
}
