// The CNI handler's core: the verbs against the kernel (rtnetlink), the address store and the
// DEL queue. It runs in a worker thread of the daemon (cni/worker.ts, started by
// createCniHandler in cni/handler.ts): rtnetlink requests block the thread that sends them
// (netlink@0.3.0 calls sendmsg synchronously, and deleting a link waits ~20 ms for the kernel
// to unregister it), which must not stall the daemon's event loop and its gossip timers.
//
// What one attachment (CNI_CONTAINERID, CNI_IFNAME) is on the node:
//   - a reserved address of the node subnet (cni/store.ts: one file per address);
//   - a veth pair: the pod end CNI_IFNAME inside CNI_NETNS with that address, up, and a default
//     route via the gateway; the host end vxp<12 hex of sha256(containerID/ifname)> enslaved to
//     the bridge with hairpin on, carrying the alias "vxmesh-cni <network> <containerID> <ifname>"
//     so DEL and GC find it, and recognise it as ours, without any other state;
//   - the bridge itself (created on first use, gateway = first address of the subnet) is node
//     infrastructure shared by every attachment and is never removed by a CNI call.
// A DEL needs neither the netns (the pod end dies with the host end) nor prevResult.
//
// Calls for the same attachment run one at a time (a per-attachment lock); calls for different
// attachments run concurrently. Deliberate differences from the reference bridge + host-local
// plugins are listed in cni/README.md.

import { closeSync, existsSync, openSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { formatIpv4, formatMac, formatSubnet, parseIpv4, subnetAddress, vtepMacFor, type Ipv4, type MacAddr, type Subnet } from "../encap/types";
import { NetlinkError, RTPROT_BOOT, RT_TABLE_MAIN, Rtnl, errnoCode, type LinkInfo } from "../control/netlink";
import { KeyedSerial, Serial } from "../control/serial";
import type { CniRequest, CniResponse, LogSink, QueuedDelSummary } from "./protocol";
import { listQueuedDels, queuedDelPath, readQueuedDel, removeQueued } from "./queue";
import {
  CniError,
  ErrorCode,
  errorVersion,
  formatError,
  formatResult,
  mergeResults,
  parseConfig,
  parseEnv,
  requestedAttachment,
  versionResult,
  type CniEnv,
  type NetConf,
  type Result,
} from "./spec";
import { AddressStore, attachmentKey, poolRange, type Reservation } from "./store";

export interface CoreOptions {
  mtu: number;
  bridge: string;
  stateDir: string;
  log: LogSink;
}

/** Subdirectory of the state dir holding one file per reserved address. */
const ADDRESS_SUBDIR = join("cni", "addresses");
const ALIAS_PREFIX = "vxmesh-cni ";
const IFALIASZ = 256;

/** The host end of an attachment's veth: "vxp" + 12 hex digits, stable for (containerID, ifname). */
export function hostVethName(containerID: string, ifname: string): string {
  return "vxp" + createHash("sha256").update(`${containerID}/${ifname}`).digest("hex").slice(0, 12);
}

export function hostVethAlias(network: string, containerID: string, ifname: string): string {
  const full = `${ALIAS_PREFIX}${network} ${containerID} ${ifname}`;
  return Buffer.byteLength(full) < IFALIASZ ? full : `${ALIAS_PREFIX}${network}`;
}

/** Network, containerID and ifname from a host veth alias ("" parts when they did not fit). */
function parseAlias(alias: string | undefined): { network: string; containerID: string; ifname: string } | undefined {
  if (alias === undefined || !alias.startsWith(ALIAS_PREFIX)) return undefined;
  const [network = "", containerID = "", ifname = ""] = alias.slice(ALIAS_PREFIX.length).split(" ");
  return { network, containerID, ifname };
}

/** The bridge MAC: fixed per subnet, so the gateway's MAC does not follow ports coming and going. */
function bridgeMac(subnet: Subnet): MacAddr {
  return vtepMacFor(`vxmesh-bridge:${formatSubnet(subnet)}`);
}

/** A requested address must be one the node may give a pod: in the pool of its subnet. */
function checkInPool(subnet: Subnet, ip: Ipv4): void {
  const { first, last } = poolRange(subnet);
  if (ip >= first && ip <= last) return;
  throw new CniError(ErrorCode.AddressUnavailable, `requested address ${formatIpv4(ip)} is not in this node's pod range ${formatIpv4(first)}-${formatIpv4(last)}`,
    `the node subnet is ${formatSubnet(subnet)}; its network, gateway ${formatIpv4(subnetAddress(subnet, 1))} and broadcast addresses are not given to pods`);
}

/**
 * Deletes host veths, batching the deletions that pile up while one is in progress: each
 * batch's links go into a device group of their own (an otherwise unused number) and the whole
 * group is deleted in one request, so 32 concurrent DELs wait for the kernel once or twice,
 * not 32 times in a row.
 */
class LinkDeleter {
  private pending: { index: number; name: string; done: (err?: unknown) => void }[] = [];
  private running = false;
  private batch = 0;

  constructor(private readonly rtnl: Rtnl) {}

  delete(index: number, name: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ index, name, done: (err) => (err === undefined ? resolve() : reject(err)) });
      if (!this.running) void this.run();
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.pending.length > 0) {
        // Let calls already under way reach their deletion and join this batch.
        await new Promise((r) => setImmediate(r));
        const batch = this.pending.splice(0);
        if (batch.length === 1) {
          const one = batch[0] as (typeof batch)[number];
          await this.deleteOne(one.index, one.name).then(() => one.done(), (e: unknown) => one.done(e));
          continue;
        }
        // 0x76780000 | pid | counter: "vx", this process, this batch; never a group anyone sets by hand.
        const group = (0x76780000 | ((process.pid & 0xff) << 8) | (++this.batch & 0xff)) >>> 0;
        const grouped: typeof batch = [];
        for (const item of batch) {
          try {
            await this.rtnl.setGroup(item.index, group, `grouping ${item.name} for deletion`);
            grouped.push(item);
          } catch (e) {
            item.done(errnoCode(e) === "ENODEV" ? undefined : e);
          }
        }
        if (grouped.length === 0) continue;
        try {
          await this.rtnl.deleteGroup(group, `deleting ${grouped.map((i) => i.name).join(", ")}`);
          for (const item of grouped) item.done();
        } catch {
          // One by one, so each caller learns its own outcome.
          for (const item of grouped) await this.deleteOne(item.index, item.name).then(() => item.done(), (e: unknown) => item.done(e));
        }
      }
    } finally {
      this.running = false;
    }
  }

  private async deleteOne(index: number, name: string): Promise<void> {
    try {
      await this.rtnl.deleteLink(index, `deleting ${name}`);
    } catch (e) {
      if (errnoCode(e) !== "ENODEV") throw e;
    }
  }
}

function ok(stdout = ""): CniResponse {
  return { exitCode: 0, stdout };
}

export class CniCore {
  private readonly host: Rtnl;
  private readonly deleter: LinkDeleter;
  private readonly store: AddressStore;
  private readonly log: LogSink;
  /** Calls for one attachment run one at a time (keyed by attachmentKey). */
  private readonly attachments = new KeyedSerial();
  private readonly bridgeQueue = new Serial();
  /** "<ifindex> <subnet>" of the bridge last given its gateway address and set up. */
  private bridgeReady: string | undefined;
  private readonly inflight = new Set<Promise<unknown>>();
  private closing = false;

  constructor(private readonly opts: CoreOptions) {
    if (!Number.isInteger(opts.mtu) || opts.mtu < 68 || opts.mtu > 65535) throw new Error(`CNI handler: MTU ${opts.mtu} is not an integer from 68 to 65535`);
    this.log = opts.log;
    this.store = new AddressStore(join(opts.stateDir, ADDRESS_SUBDIR));
    this.host = Rtnl.open();
    this.deleter = new LinkDeleter(this.host);
  }

  /** One CNI call; `subnet` is the node's confirmed subnet, undefined while there is none. */
  async handle(request: CniRequest, subnet: Subnet | undefined): Promise<CniResponse> {
    const p = this.dispatch(request, subnet !== undefined && poolRange(subnet).size > 0 ? subnet : undefined);
    this.inflight.add(p);
    try {
      return await p;
    } finally {
      this.inflight.delete(p);
    }
  }

  private async dispatch(request: CniRequest, subnet: Subnet | undefined): Promise<CniResponse> {
    const started = performance.now();
    let version = errorVersion(request.stdin);
    let env: CniEnv | undefined;
    try {
      if (this.closing) throw new CniError(ErrorCode.TryAgainLater, "the vxmesh daemon is shutting down; try again later");
      env = parseEnv(request.env);
      if (env.command === "VERSION") return ok(JSON.stringify(versionResult(request.stdin)));
      const conf = parseConfig(request.stdin, env.command);
      version = conf.cniVersion;
      const e = env;
      let stdout = "";
      switch (e.command) {
        case "ADD": stdout = await this.withAttachment(e, () => this.add(e, conf, subnet)); break;
        case "DEL": await this.withAttachment(e, () => this.del(e, conf)); break;
        case "CHECK": await this.withAttachment(e, () => this.check(e, conf)); break;
        case "GC": await this.gc(conf); break;
        case "STATUS": this.status(subnet); break;
      }
      // Runtimes poll STATUS every few seconds: keep it out of the info log.
      this.log[e.command === "STATUS" ? "debug" : "info"]({ cni: e.command, containerID: e.containerID || undefined, ifname: e.ifname || undefined, ms: Math.round((performance.now() - started) * 10) / 10 }, `cni ${e.command}`);
      return ok(stdout);
    } catch (err) {
      const ce = err instanceof CniError ? err
        : err instanceof NetlinkError ? new CniError(ErrorCode.KernelFailure, err.message)
        : new CniError(ErrorCode.Internal, (err as Error).message ?? String(err));
      const level = ce.code === ErrorCode.Internal ? "error" : env?.command === "STATUS" ? "debug" : ce.code === ErrorCode.TryAgainLater ? "info" : "warn";
      this.log[level]({ cni: env?.command, containerID: env?.containerID || undefined, ifname: env?.ifname || undefined, code: ce.code, err: ce.code === ErrorCode.Internal ? err : undefined }, `cni ${env?.command ?? "call"} failed: ${ce.message}${ce.details === "" ? "" : ` (${ce.details})`}`);
      return { exitCode: 1, stdout: formatError(version, ce.code, ce.message, ce.details) };
    }
  }

  /**
   * Runs `fn` holding the attachment's lock, after completing a DEL the shim queued for the
   * same attachment: the runtime ordered that DEL before this call.
   */
  private async withAttachment<T>(env: CniEnv, fn: () => Promise<T>): Promise<T> {
    return this.attachments.run(attachmentKey(env.containerID, env.ifname), async () => {
      const queued = queuedDelPath(this.opts.stateDir, env.containerID, env.ifname);
      if (existsSync(queued)) await this.runQueued(queued);
      return fn();
    });
  }

  // -- ADD -------------------------------------------------------------------------------------

  private async add(env: CniEnv, conf: NetConf, subnet: Subnet | undefined): Promise<string> {
    if (subnet === undefined) {
      throw new CniError(ErrorCode.TryAgainLater, "the vxmesh daemon has no confirmed pod subnet yet; try again later",
        "the node's subnet is handed to CNI once it is confirmed (static --subnet, a persisted lease, or a claim that survived an anti-entropy round)");
    }
    if (conf.mtu !== undefined && conf.mtu > this.opts.mtu) {
      throw new CniError(ErrorCode.InvalidConfig, `mtu ${conf.mtu} is larger than the overlay allows`, `the daemon's pod MTU is ${this.opts.mtu}`);
    }
    const mtu = conf.mtu ?? this.opts.mtu;
    const want = requestedAttachment(env.args, conf);
    if (want.ip !== undefined) checkInPool(subnet, want.ip);
    const pod = openPodNetlink(env.netns);
    try {
      if ((await pod.link(env.ifname)) !== undefined) {
        throw new CniError(ErrorCode.Conflict, `interface ${env.ifname} already exists in ${env.netns}`);
      }
      const hostName = hostVethName(env.containerID, env.ifname);
      const leftover = await this.host.link(hostName);
      if (leftover !== undefined) {
        if (!ownedBy(leftover, env.containerID, env.ifname)) {
          throw new CniError(ErrorCode.Conflict, `host interface name ${hostName} is in use by something else`, `alias ${JSON.stringify(leftover.alias ?? "")}`);
        }
        // A leftover of an interrupted earlier ADD of this attachment (its pod end is gone:
        // CNI_IFNAME is free in the pod); it would only be in the way.
        await this.deleteIfPresent(hostName, env.containerID, env.ifname);
      }
      const r = this.reserve(env, conf, subnet, want.ip);
      try {
        return JSON.stringify(formatResult(mergeResults(conf.prevResult, await this.plumb(env, conf, subnet, mtu, r, pod, hostName, want.mac)), conf.cniVersion));
      } catch (err) {
        await this.deleteIfPresent(hostName, env.containerID, env.ifname).catch((e: unknown) => {
          this.log.warn({ err: e }, `cni ADD rollback: could not remove ${hostName}`);
        });
        this.store.releaseReservation(r);
        throw err;
      }
    } finally {
      pod.close();
    }
  }

  /** The attachment's address: the one the runtime asked for (or a clear refusal), else the next free one. */
  private reserve(env: CniEnv, conf: NetConf, subnet: Subnet, wanted: Ipv4 | undefined): Reservation {
    const owner = { containerID: env.containerID, ifname: env.ifname, network: conf.name };
    if (wanted !== undefined) {
      const got = this.store.reserveExact(subnet, wanted, owner);
      if ("takenBy" in got) {
        const t = got.takenBy;
        throw new CniError(ErrorCode.AddressUnavailable, `requested address ${formatIpv4(wanted)} is in use`,
          t.containerID === "" ? "reserved by another process sharing the address store" : `reserved for container ${t.containerID} interface ${t.ifname}`);
      }
      return got.reservation;
    }
    const got = this.store.reserve(subnet, owner);
    if (got === undefined) {
      const { size } = poolRange(subnet);
      throw new CniError(ErrorCode.AddressesExhausted, `no free address in ${formatSubnet(subnet)}: all ${size} pod addresses are reserved`,
        `the gateway is ${formatIpv4(subnetAddress(subnet, 1))}; DEL pods or GC stale attachments to free addresses`);
    }
    return got.reservation;
  }

  private async plumb(env: CniEnv, conf: NetConf, subnet: Subnet, mtu: number, r: Reservation, pod: Rtnl, hostName: string, mac: MacAddr | undefined): Promise<Result> {
    const gateway = subnetAddress(subnet, 1);
    const bridge = await this.ensureBridge(subnet);
    const nsFd = openSync(env.netns, "r");
    try {
      await this.host.createVeth(hostName, env.ifname, nsFd, mtu, mac);
    } finally {
      closeSync(nsFd);
    }
    const hostLink = await this.host.link(hostName);
    if (hostLink === undefined) throw new CniError(ErrorCode.KernelFailure, `veth ${hostName} vanished right after it was created`);
    await this.host.configureLink(hostLink.index, { master: bridge.index, alias: hostVethAlias(conf.name, env.containerID, env.ifname), up: true },
      `enslaving ${hostName} to ${bridge.name} and setting it up`);
    await this.host.setHairpin(hostLink.index, true, `setting hairpin on bridge port ${hostName}`);

    const podLink = await pod.link(env.ifname);
    if (podLink === undefined) throw new CniError(ErrorCode.KernelFailure, `${env.ifname} did not appear in ${env.netns}`);
    const cidr = `${formatIpv4(r.ip)}/${subnet.prefixLen}`;
    await pod.addAddress(podLink.index, r.ip, subnet.prefixLen, false, `adding ${cidr} to ${env.ifname} in ${env.netns}`);
    await pod.setUp(podLink.index, `setting ${env.ifname} up in ${env.netns}`);
    let defaultRoute = true;
    try {
      await pod.addRoute({ dst: 0, dstLen: 0, gateway, oif: podLink.index, protocol: RTPROT_BOOT },
        `adding default route via ${formatIpv4(gateway)} dev ${env.ifname} in ${env.netns}`);
    } catch (e) {
      if (errnoCode(e) !== "EEXIST") throw e;
      // Another network attached first gave the pod its default route: that one stays (as the
      // reference bridge keeps it), ours is left out of the result, and the log says so.
      defaultRoute = false;
      this.log.warn({ containerID: env.containerID, ifname: env.ifname, netns: env.netns },
        `cni ADD: the pod already has a default route through another interface; skipped vxmesh's default route via ${formatIpv4(gateway)} (pod subnet ${formatSubnet(subnet)} is still reachable on ${env.ifname})`);
    }

    return {
      interfaces: [
        { name: bridge.name, ...(bridge.mac === undefined ? {} : { mac: formatMac(bridge.mac) }), ...(bridge.mtu === undefined ? {} : { mtu: bridge.mtu }) },
        { name: hostName, ...(hostLink.mac === undefined ? {} : { mac: formatMac(hostLink.mac) }), mtu },
        { name: env.ifname, ...(podLink.mac === undefined ? {} : { mac: formatMac(podLink.mac) }), mtu, sandbox: env.netns },
      ],
      ips: [{ address: cidr, gateway: formatIpv4(gateway), interface: 2 }],
      routes: defaultRoute ? [{ dst: "0.0.0.0/0", gw: formatIpv4(gateway) }] : [],
      dns: conf.dns,
    };
  }

  /** The bridge, created when missing, with the gateway address and up. One caller at a time. */
  private ensureBridge(subnet: Subnet): Promise<LinkInfo> {
    const run = async (): Promise<LinkInfo> => {
      const name = this.opts.bridge;
      let link = await this.host.link(name);
      if (link === undefined) {
        try {
          await this.host.createBridge(name, this.opts.mtu, bridgeMac(subnet));
          this.log.info({ bridge: name, mtu: this.opts.mtu }, "created the pod bridge");
        } catch (e) {
          if (errnoCode(e) !== "EEXIST") throw e;
        }
        link = await this.host.link(name);
        if (link === undefined) throw new CniError(ErrorCode.KernelFailure, `bridge ${name} vanished right after it was created`);
      }
      if (link.kind !== "bridge") throw new CniError(ErrorCode.KernelFailure, `${name} exists and is not a bridge (kind ${link.kind ?? "none"})`);
      const key = `${link.index} ${formatSubnet(subnet)}`;
      if (this.bridgeReady !== key || !link.up) {
        const gateway = subnetAddress(subnet, 1);
        await this.host.addAddress(link.index, gateway, subnet.prefixLen, true, `adding gateway ${formatIpv4(gateway)}/${subnet.prefixLen} to ${name}`);
        if (!link.up) await this.host.setUp(link.index, `setting ${name} up`);
        this.bridgeReady = key;
      }
      return link;
    };
    return this.bridgeQueue.run(run);
  }

  /** Deletes the host veth `name` if it exists and belongs to the attachment. */
  private async deleteIfPresent(name: string, containerID: string, ifname: string): Promise<boolean> {
    const link = await this.host.link(name);
    if (link === undefined || !ownedBy(link, containerID, ifname)) return false;
    await this.deleter.delete(link.index, name);
    return true;
  }

  // -- DEL -------------------------------------------------------------------------------------

  private async del(env: CniEnv, conf: NetConf): Promise<void> {
    const names = new Set([hostVethName(env.containerID, env.ifname)]);
    // prevResult honoured: a host interface it lists is removed too if it is ours.
    for (const i of conf.prevResult?.interfaces ?? []) {
      if ((i.sandbox === undefined || i.sandbox === "") && i.name !== this.opts.bridge) names.add(i.name);
    }
    let removed = 0;
    for (const name of names) if (await this.deleteIfPresent(name, env.containerID, env.ifname)) removed++;
    const released = this.store.release(env.containerID, env.ifname);
    this.log.debug({ containerID: env.containerID, ifname: env.ifname, vethsRemoved: removed, released: released === undefined ? undefined : formatIpv4(released.ip) }, "cni DEL done");
  }

  // -- CHECK -----------------------------------------------------------------------------------

  private async check(env: CniEnv, conf: NetConf): Promise<void> {
    const prev = conf.prevResult;
    if (prev === undefined) throw new CniError(ErrorCode.InvalidConfig, "CHECK needs prevResult (the result of the ADD)");
    const fail = (msg: string, details = ""): never => {
      throw new CniError(ErrorCode.CheckFailed, msg, details);
    };
    const podIdx = prev.interfaces.findIndex((i) => i.name === env.ifname && i.sandbox === env.netns);
    if (podIdx < 0) fail(`prevResult lists no interface ${env.ifname} in ${env.netns}`);
    const want = prev.interfaces[podIdx] as NonNullable<(typeof prev.interfaces)[number]>;
    const ips = prev.ips.filter((ip) => ip.interface === podIdx);
    if (ips.length === 0) fail(`prevResult lists no address on ${env.ifname}`);

    // The reservation.
    const r = this.store.lookup(env.containerID, env.ifname);
    const reserved = r === undefined ? undefined : formatIpv4(r.ip);
    const addrs = ips.map((ip) => ip.address.split("/")[0] ?? "");
    if (reserved === undefined) fail(`no address is reserved for ${env.containerID}/${env.ifname}`, `prevResult has ${addrs.join(", ")}`);
    if (!addrs.includes(reserved as string)) fail(`the reservation for ${env.containerID}/${env.ifname} is ${reserved}, prevResult has ${addrs.join(", ")}`);

    // The host end.
    const hostName = hostVethName(env.containerID, env.ifname);
    const hostLink = await this.host.link(hostName);
    if (hostLink === undefined || !ownedBy(hostLink, env.containerID, env.ifname)) fail(`host interface ${hostName} is missing`);
    const bridge = await this.host.link(this.opts.bridge);
    if (bridge === undefined) fail(`bridge ${this.opts.bridge} is missing`);
    if ((hostLink as LinkInfo).master !== (bridge as LinkInfo).index) fail(`host interface ${hostName} is not a port of ${this.opts.bridge}`);
    if (!(hostLink as LinkInfo).up) fail(`host interface ${hostName} is down`);

    // The pod end.
    const pod = openPodNetlink(env.netns);
    try {
      const link = await pod.link(env.ifname);
      if (link === undefined) fail(`interface ${env.ifname} is missing in ${env.netns}`);
      const l = link as LinkInfo;
      if (want.mac !== undefined && l.mac !== undefined && want.mac.toLowerCase() !== formatMac(l.mac)) fail(`${env.ifname} has MAC ${formatMac(l.mac)}, prevResult says ${want.mac}`);
      if (want.mtu !== undefined && l.mtu !== want.mtu) fail(`${env.ifname} has MTU ${String(l.mtu)}, prevResult says ${want.mtu}`);
      if (!l.up) fail(`${env.ifname} is down in ${env.netns}`);
      const have = (await pod.addresses()).filter((a) => a.index === l.index);
      for (const ip of ips) {
        const [addr = "", len = ""] = ip.address.split("/");
        const parsed = parseIpv4(addr);
        if (!parsed.ok) continue; // an IPv6 address is not ours to check (yet)
        if (!have.some((a) => a.local === parsed.value && String(a.prefixLen) === len)) fail(`address ${ip.address} is missing on ${env.ifname} in ${env.netns}`);
      }
      const routes = (await pod.routes()).filter((rt) => rt.table === RT_TABLE_MAIN);
      const gwOf = ips.find((ip) => ip.gateway !== undefined)?.gateway;
      for (const rt of prev.routes) {
        const [dstText = "", lenText = "0"] = rt.dst.split("/");
        const dst = parseIpv4(dstText);
        if (!dst.ok) continue;
        const gwText = rt.gw ?? gwOf;
        const gw = gwText === undefined ? undefined : parseIpv4(gwText);
        const found = routes.some((x) => x.dst === dst.value && x.dstLen === Number(lenText) && x.oif === l.index &&
          (gw === undefined || !gw.ok || x.gateway === gw.value));
        if (!found) fail(`route ${rt.dst}${gwText === undefined ? "" : ` via ${gwText}`} is missing in ${env.netns}`);
      }
    } finally {
      pod.close();
    }
  }

  // -- GC --------------------------------------------------------------------------------------

  private async gc(conf: NetConf): Promise<void> {
    if (conf.validAttachments === undefined) {
      // Without the list, "everything not listed" would be everything: refuse rather than guess.
      throw new CniError(ErrorCode.InvalidConfig, "GC needs cni.dev/valid-attachments");
    }
    const valid = new Set(conf.validAttachments.map((a) => attachmentKey(a.containerID, a.ifname)));
    const validNames = new Set(conf.validAttachments.map((a) => hostVethName(a.containerID, a.ifname)));
    // An attachment with a call in progress (an ADD the runtime has not seen finish) is kept.
    const busy = new Set(this.attachments.busy());
    const busyNames = new Set([...busy].map((k) => {
      const slash = k.indexOf("/");
      return hostVethName(k.slice(0, slash), k.slice(slash + 1));
    }));
    const errors: string[] = [];
    let released = 0;
    let linksRemoved = 0;
    const stale = this.store.all().filter((r) => {
      const key = attachmentKey(r.containerID, r.ifname);
      return r.network === conf.name && !valid.has(key) && !busy.has(key);
    });
    await Promise.all(stale.map(async (r) => {
      try {
        if (await this.deleteIfPresent(hostVethName(r.containerID, r.ifname), r.containerID, r.ifname)) linksRemoved++;
        this.store.releaseReservation(r);
        released++;
      } catch (e) {
        errors.push(`${attachmentKey(r.containerID, r.ifname)}: ${(e as Error).message}`);
      }
    }));
    // Host veths of this network without a reservation (an ADD interrupted by a crash, say).
    const orphans = (await this.host.links()).filter((link) => {
      const a = parseAlias(link.alias);
      return a !== undefined && a.network === conf.name && link.name.startsWith("vxp") && !validNames.has(link.name) && !busyNames.has(link.name);
    });
    await Promise.all(orphans.map(async (link) => {
      try {
        await this.deleter.delete(link.index, link.name);
        linksRemoved++;
      } catch (e) {
        errors.push(`${link.name}: ${(e as Error).message}`);
      }
    }));
    this.log.info({ network: conf.name, valid: valid.size, released, linksRemoved }, "cni GC");
    if (errors.length > 0) throw new CniError(ErrorCode.KernelFailure, `GC could not remove everything (${errors.length} failures)`, errors.join("; "));
  }

  // -- STATUS ----------------------------------------------------------------------------------

  private status(subnet: Subnet | undefined): void {
    if (subnet === undefined) throw new CniError(ErrorCode.NotAvailable, "the vxmesh daemon has no confirmed pod subnet yet");
    if (this.store.free(subnet) <= 0) {
      throw new CniError(ErrorCode.NotAvailable, `no free address in ${formatSubnet(subnet)}`, `all ${poolRange(subnet).size} pod addresses are reserved`);
    }
  }

  // -- queued DELs -----------------------------------------------------------------------------

  /** Runs one queued DEL (the caller holds its attachment's lock) and removes it when done. */
  private async runQueued(file: string): Promise<boolean> {
    const q = readQueuedDel(file);
    if (q === undefined) return true; // done meanwhile
    if (q.request === undefined) {
      this.log.warn({ file, problem: q.problem }, "dropping an unusable queued CNI DEL");
      removeQueued(file);
      return false;
    }
    let env: CniEnv;
    let conf: NetConf;
    try {
      env = parseEnv(q.request.env);
      conf = parseConfig(q.request.stdin, "DEL");
    } catch (e) {
      this.log.warn({ file, err: (e as Error).message }, "dropping an invalid queued CNI DEL");
      removeQueued(file);
      return false;
    }
    try {
      await this.del(env, conf);
    } catch (e) {
      this.log.warn({ file, err: (e as Error).message }, "a queued CNI DEL failed; it stays queued");
      return false;
    }
    removeQueued(file);
    this.log.info({ containerID: env.containerID, ifname: env.ifname }, "completed a queued CNI DEL");
    return true;
  }

  async completeQueuedDels(): Promise<QueuedDelSummary> {
    let completed = 0;
    let failed = 0;
    await Promise.all(listQueuedDels(this.opts.stateDir).map(async (file) => {
      const q = readQueuedDel(file);
      const env = q?.request?.env;
      const key = env === undefined ? `queued:${file}` : attachmentKey(env["CNI_CONTAINERID"] ?? "", env["CNI_IFNAME"] ?? "");
      const done = await this.attachments.run(key, () => this.runQueued(file));
      if (done) completed++;
      else failed++;
    }));
    if (completed + failed > 0) this.log.info({ completed, failed }, "queued CNI DELs processed");
    return { completed, failed };
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.allSettled([...this.inflight]);
    this.host.close();
  }
}

/** True when `link` is the host veth of (containerID, ifname): its name is theirs and its alias does not say otherwise. */
function ownedBy(link: LinkInfo, containerID: string, ifname: string): boolean {
  const a = parseAlias(link.alias);
  if (link.alias !== undefined && link.alias !== "" && a === undefined) return false;
  if (a !== undefined && a.containerID !== "") return a.containerID === containerID && a.ifname === ifname;
  return link.name === hostVethName(containerID, ifname);
}

function openPodNetlink(netns: string): Rtnl {
  try {
    return Rtnl.openIn(netns);
  } catch (e) {
    const code = errnoCode(e);
    if (code === "ENOENT") throw new CniError(ErrorCode.InvalidEnvironment, `CNI_NETNS ${netns} does not exist`);
    if (code === "EINVAL") throw new CniError(ErrorCode.InvalidEnvironment, `CNI_NETNS ${netns} is not a network namespace`);
    if (code === "EACCES" || code === "EPERM") throw new CniError(ErrorCode.InvalidEnvironment, `CNI_NETNS ${netns}: entering it is not permitted (${code})`);
    throw e;
  }
}
