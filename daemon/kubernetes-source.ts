// Kubernetes as the peer source (docs/DESIGN.md §12): the node's subnet is its Node's
// spec.podCIDR (kube-controller-manager's --allocate-node-cidrs), what peers need to reach it
// goes on the Node as vxmesh.io/ annotations, and every other Node with a pod CIDR and those
// annotations is a peer. The Nodes come from a list and a watch (control/kube/reflector.ts);
// when the API server goes away the peers last seen stay routed and readiness says so. The API,
// time and chance come in through KubernetesDeps, so test/kubernetes-source.test.ts drives it
// by hand.

import type { Peer } from "../encap/fdb";
import { formatSubnet, subnetInside, type Subnet } from "../encap/types";
import type { LabelledCidr } from "../control/cidr-overlap";
import { samePeers } from "../control/cluster-view";
import { CONTROL_PROTOCOL_VERSION } from "../control/node-record";
import type { KubeApi, KubeError } from "../control/kube/api";
import { endpointPatch, type VxlanEndpoint } from "../control/kube/annotations";
import { loadCredentials } from "../control/kube/credentials";
import { describeKubeError } from "../control/kube/describe-error";
import { HttpsKubeApi } from "../control/kube/client";
import type { NodeView } from "../control/kube/node-view";
import { SKIP_REASONS, selectPeers, type SkippedNode, type SkipReason } from "../control/kube/peer-selection";
import { NodeReflector } from "../control/kube/reflector";
import { systemClock, type Clock } from "./clock";
import { podCidrs, type DaemonConfig } from "./config";
import { readKubeMemory, writeKubeMemory, type KubeMemory } from "./lease-file";
import type { Logger } from "./log";
import type { PeerEvents, PeerSource, SourceTrace } from "./peer-source";
import { StartupError } from "./startup-error";
import type { KubernetesStatus, SourceStatus } from "./status";
import type { TraceMember } from "./trace";

export type KubernetesSourceConfig = Extract<DaemonConfig["source"], { kind: "kubernetes" }>;

export interface KubernetesSourceOptions {
  nodeName: string;
  clusterCidr: Subnet;
  /** What this node publishes: how its pods are reached. */
  endpoint: VxlanEndpoint;
  /** Where the credentials came from, for messages ("--kubeconfig FILE", "the pod's service account"). */
  credentialsFrom: string;
  podCidrs: readonly LabelledCidr[];
}

/**
 * What the source last saw, kept across restarts: the start-up route check reads the subnet, and
 * a daemon restarted while the API server is away routes as before until it is back.
 */
export interface NodeMemory {
  read(): KubeMemory | undefined;
  write(m: KubeMemory): void;
}

export interface KubernetesDeps {
  api: KubeApi;
  clock: Clock;
  /** [0, 1): the backoff's jitter. */
  random(): number;
  memory: NodeMemory;
  log: Logger;
}

/** How often a node that is not ready says why. */
export const NAG_INTERVAL_MS = 10_000;
/** After a failed patch of our Node, the next try. */
export const PATCH_RETRY_MS = 5_000;
/** The memory is written at most this often (5,000 peers are half a megabyte); and at stop. */
export const MEMORY_WRITE_MS = 10_000;
const LIST_PAGE_SIZE = 500;
const WATCH_TIMEOUT_S = 300;

export class KubernetesSource implements PeerSource {
  readonly kind = "kubernetes";
  private readonly reflector: NodeReflector;
  private events: PeerEvents | undefined;
  /** The subnet the data plane holds. */
  private subnet: Subnet | undefined;
  private peers: readonly Peer[] = [];
  private skipped: SkippedNode[] = [];
  private peersDirty = true;
  /** Whether peersChanged has been told a selection made from a complete list. */
  private routesApplied = false;
  private updating: Promise<void> = Promise.resolve();
  private updateQueued = false;
  private stopped = false;
  private cancelNag: () => void = () => undefined;
  private cancelPatchRetry: () => void = () => undefined;
  private patchError: string | undefined;
  private fatalError: string | undefined;
  private patches = { annotations: 0, condition: 0, failed: 0 };
  /** A write of the memory is due (timer set) or owed at stop. */
  private memoryOwed = false;
  private lastMemoryWrite = -Infinity;
  private cancelMemoryWrite: () => void = () => undefined;

  constructor(private readonly o: KubernetesSourceOptions, private readonly deps: KubernetesDeps) {
    this.reflector = new NodeReflector(deps.api, {
      timers: deps.clock, random: deps.random, pageSize: LIST_PAGE_SIZE, watchTimeoutSeconds: WATCH_TIMEOUT_S,
      onChange: (change, name) => {
        if (change === "peers") this.peersDirty = true;
        // Only our own Node matters beyond what peers see (its annotations, its condition).
        if (change === "peers" || name === o.nodeName) this.update();
      },
      onError: (error, during, retryInMs) => this.onApiError(error, during, retryInMs),
    });
  }

  /** Credentials read (a StartupError when there are none), nothing contacted yet. */
  static fromConfig(config: DaemonConfig, src: KubernetesSourceConfig, log: Logger): KubernetesSource {
    const creds = loadCredentials({ kubeconfig: src.kubeconfig, env: process.env });
    if (!creds.ok) throw new StartupError(creds.error, 2);
    // A CA, certificate or key that cannot be used stops the start, rather than failing every call.
    const api = HttpsKubeApi.create(creds.value);
    if (!api.ok) throw new StartupError(api.error, 2);
    return new KubernetesSource({
      nodeName: config.nodeName, clusterCidr: src.clusterCidr, credentialsFrom: creds.value.source, podCidrs: podCidrs(config),
      endpoint: { protocol: CONTROL_PROTOCOL_VERSION, underlayIp: config.underlayIp, vtepMac: config.vtepMac, vni: config.vni, vxlanPort: config.vxlanPort },
    }, {
      api: api.value, clock: systemClock, random: Math.random, log,
      memory: { read: () => readKubeMemory(config.stateDir), write: (m) => writeKubeMemory(config.stateDir, m) },
    });
  }

  get clusterCidr(): Subnet {
    return this.o.clusterCidr;
  }

  get ready(): boolean {
    return this.notReadyBecause === undefined;
  }

  get notReadyBecause(): string | undefined {
    if (this.fatalError !== undefined) return this.fatalError;
    const r = this.reflector;
    const server = this.deps.api.server;
    const err = r.lastError;
    const ago = (at: number): number => Math.round((this.deps.clock.now() - at) / 1000);
    if (r.counters.lists === 0) {
      return err === undefined ? `listing Nodes from the API server ${server}` : this.describe(err.error, err.during);
    }
    const self = r.cache.get(this.o.nodeName);
    if (self === undefined) return `Node "${this.o.nodeName}" is not on the API server ${server}: is --node-name (NODE_NAME) the Node's name?`;
    if (self.podCidr === undefined) {
      return `Node "${this.o.nodeName}" has no spec.podCIDR yet: kube-controller-manager assigns one when run with --allocate-node-cidrs ` +
        `and --cluster-cidr (kubeadm: --pod-network-cidr)`;
    }
    if (!self.podCidr.ok) return `Node "${this.o.nodeName}": ${self.podCidr.error}`;
    if (this.subnet === undefined || !this.routesApplied) return "programming the node's subnet and routes";
    if (!r.inSync) {
      const since = r.outOfSyncSince ?? r.stateSince;
      // Only an error of this outage explains it; one from an earlier outage would mislead.
      const why = err === undefined || err.at < since ? "reconnecting" : this.describe(err.error, err.during);
      return `lost the watch on ${server} ${ago(since)} s ago (${why}); the ${this.peers.length} peers last seen stay routed`;
    }
    if (this.patchError !== undefined) return this.patchError;
    // Ready once Kubernetes has been told: the endpoint on the Node, and the condition kubelet reads.
    if (endpointPatch(self.annotations, this.o.endpoint) !== undefined) return `publishing this node's VXLAN endpoint on Node "${this.o.nodeName}"`;
    if (self.networkUnavailable !== "False") return `setting NetworkUnavailable=False on Node "${this.o.nodeName}"`;
    return undefined;
  }

  private describe(e: KubeError, during: "list" | "watch" | "patch"): string {
    const what = during === "patch" ? "patch nodes/status" : `${during} nodes`;
    return describeKubeError(e, { server: this.deps.api.server, what, credentialsFrom: this.o.credentialsFrom });
  }

  podCidrs(): readonly LabelledCidr[] {
    return this.o.podCidrs;
  }

  async start(events: PeerEvents): Promise<void> {
    this.events = events;
    await this.restore(events);
    this.reflector.start();
    this.nag();
  }

  /**
   * What a previous run saw, until the API server answers (stale beats empty: a daemon restarted
   * while the API is away keeps its pods reachable); not ready until the first list replaces it.
   */
  private async restore(events: PeerEvents): Promise<void> {
    const m = this.deps.memory.read();
    if (m === undefined || !subnetInside(m.subnet, this.o.clusterCidr)) return;
    try {
      await events.subnetChanged(m.subnet);
      this.subnet = m.subnet;
      await events.peersChanged(m.peers);
      this.peers = m.peers;
      this.deps.log.info({ subnet: formatSubnet(m.subnet), peers: m.peers.length },
        `until the API server answers: the subnet ${formatSubnet(m.subnet)} and ${m.peers.length} peers a previous run saw`);
    } catch (err) {
      this.deps.log.warn({ err }, "the subnet and peers a previous run saw could not be applied; waiting for the API server");
    }
  }

  /** Keeps the subnet and peers in the memory: now, or at the end of the current write period. */
  private remember(): void {
    this.memoryOwed = true;
    const wait = this.lastMemoryWrite + MEMORY_WRITE_MS - this.deps.clock.now();
    if (wait <= 0) this.writeMemory();
    else if (!this.stopped) {
      this.cancelMemoryWrite();
      this.cancelMemoryWrite = this.deps.clock.after(wait, () => this.writeMemory());
    }
  }

  private writeMemory(): void {
    if (!this.memoryOwed || this.subnet === undefined) return;
    this.memoryOwed = false;
    this.lastMemoryWrite = this.deps.clock.now();
    try {
      this.deps.memory.write({ subnet: this.subnet, peers: this.peers });
    } catch (err) {
      this.deps.log.warn({ err }, "could not keep the subnet and peers in the state dir (a restart while the API server is away starts without them)");
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelNag();
    this.cancelPatchRetry();
    // Closing the client first aborts a list page or patch in flight: SIGTERM need not wait out a request timeout.
    this.deps.api.close();
    await this.reflector.stop();
    await this.updating;
    this.cancelMemoryWrite();
    this.writeMemory();
  }

  private nag(): void {
    this.cancelNag = this.deps.clock.after(NAG_INTERVAL_MS, () => {
      if (this.stopped) return;
      const why = this.notReadyBecause;
      if (why !== undefined) this.deps.log.warn({ notReadyBecause: why }, `not ready: ${why}`);
      this.nag();
    });
  }

  private onApiError(error: KubeError, during: "list" | "watch", retryInMs: number): void {
    const message = `${this.describe(error, during)}; retrying in ${(retryInMs / 1000).toFixed(1)} s`;
    const permission = error.status === 401 || error.status === 403;
    if (permission) this.deps.log.error({ status: error.status, reason: error.reason }, message);
    else this.deps.log.warn({ status: error.status, reason: error.reason, peersKept: this.peers.length }, message);
  }

  /** Re-evaluates the subnet, the annotations, the peers and the condition; one pass at a time, bursts coalesced. */
  private update(): void {
    if (this.updateQueued || this.stopped) return;
    this.updateQueued = true;
    this.updating = this.updating.then(() => {
      this.updateQueued = false;
      return this.doUpdate();
    }).catch((err: unknown) => {
      this.deps.log.error({ err }, "applying the Nodes failed; retrying on the next change or in 5 s");
      this.retryLater();
    });
  }

  private retryLater(): void {
    this.cancelPatchRetry();
    if (!this.stopped) this.cancelPatchRetry = this.deps.clock.after(PATCH_RETRY_MS, () => this.update());
  }

  private async doUpdate(): Promise<void> {
    const events = this.events;
    if (this.stopped || events === undefined || this.reflector.counters.lists === 0) return;
    const self = this.reflector.cache.get(this.o.nodeName);
    if (self !== undefined && !(await this.takeSubnet(self, events))) return;
    if (self !== undefined) await this.publishEndpoint(self);
    if (this.peersDirty) await this.applyPeers(events);
    const now = this.reflector.cache.get(this.o.nodeName);
    if (now !== undefined && this.subnet !== undefined && this.routesApplied && now.networkUnavailable !== "False") await this.setNetworkAvailable();
    // A patch the server applied though its answer was lost (a timeout): the Node shows it, nothing is left to write.
    const after = this.reflector.cache.get(this.o.nodeName);
    if (after !== undefined && after.networkUnavailable === "False" && endpointPatch(after.annotations, this.o.endpoint) === undefined) this.patchError = undefined;
  }

  /** A new peer selection to the data plane; left dirty when the data plane refuses it, so the retry selects again. */
  private async applyPeers(events: PeerEvents): Promise<void> {
    this.peersDirty = false;
    const choice = selectPeers(this.reflector.cache.views(), {
      name: this.o.nodeName, subnet: this.subnet, clusterCidr: this.o.clusterCidr, vni: this.o.endpoint.vni, vxlanPort: this.o.endpoint.vxlanPort,
      underlayIp: this.o.endpoint.underlayIp, vtepMac: this.o.endpoint.vtepMac,
    });
    this.skipped = choice.skipped;
    if (!samePeers(choice.peers, this.peers)) {
      try {
        await events.peersChanged(choice.peers);
      } catch (err) {
        this.peersDirty = true;
        throw err;
      }
      this.peers = choice.peers;
    }
    this.routesApplied = true;
    this.remember();
  }

  /** Takes the Node's pod CIDR as the subnet; false when it cannot be taken (none yet, or outside the cluster CIDR: fatal). */
  private async takeSubnet(self: NodeView, events: PeerEvents): Promise<boolean> {
    const cidr = self.podCidr;
    if (cidr === undefined || !cidr.ok) return true;
    if (!subnetInside(cidr.value, this.o.clusterCidr)) {
      this.fatalError = `Node "${self.name}" has spec.podCIDR ${formatSubnet(cidr.value)}, outside --cluster-cidr ${formatSubnet(this.o.clusterCidr)}: ` +
        "give --cluster-cidr the cluster's pod network (kube-controller-manager's --cluster-cidr)";
      this.deps.log.fatal(this.fatalError);
      events.fatal(this.fatalError);
      return false;
    }
    const s = this.subnet;
    if (s !== undefined && s.network === cidr.value.network && s.prefixLen === cidr.value.prefixLen) return true;
    if (s !== undefined) this.deps.log.warn(`Node "${self.name}"'s spec.podCIDR changed from ${formatSubnet(s)} to ${formatSubnet(cidr.value)}; pods in the old subnet lose their network`);
    await events.subnetChanged(cidr.value);
    this.subnet = cidr.value;
    // The peers are selected again in this pass, which remembers both.
    this.peersDirty = true;
    this.deps.log.info({ subnet: formatSubnet(cidr.value) }, `subnet ${formatSubnet(cidr.value)} from Node "${self.name}"'s spec.podCIDR`);
    return true;
  }

  /** Puts our vxmesh.io/ annotations on the Node when they differ (through nodes/status, as flannel does: one permission). */
  private async publishEndpoint(self: NodeView): Promise<void> {
    const patch = endpointPatch(self.annotations, this.o.endpoint);
    if (patch === undefined) return;
    if (await this.patchStatus({ metadata: { annotations: patch } })) {
      this.patches.annotations++;
      this.deps.log.info({ annotations: patch }, `published this node's VXLAN endpoint on Node "${self.name}"`);
    }
  }

  /** Node condition NetworkUnavailable=False: what kubelet and the scheduler read once routes are in place. */
  private async setNetworkAvailable(): Promise<void> {
    const now = new Date(this.deps.clock.now()).toISOString().replace(/\.\d{3}Z$/, "Z");
    const condition = {
      type: "NetworkUnavailable", status: "False", reason: "VxmeshIsUp", message: "vxmesh routes pod traffic on this node",
      lastTransitionTime: now, lastHeartbeatTime: now,
    };
    if (await this.patchStatus({ status: { conditions: [condition] } })) {
      this.patches.condition++;
      this.deps.log.info(`set NetworkUnavailable=False on Node "${this.o.nodeName}"`);
    }
  }

  /** A strategic-merge patch of our Node's status subresource; the answer goes into the cache at once. */
  private async patchStatus(patch: object): Promise<boolean> {
    const r = await this.deps.api.patchNode(this.o.nodeName, patch, { type: "strategic", subresource: "status" });
    if (this.stopped) return false;
    if (!r.ok) {
      this.patches.failed++;
      const message = this.describe(r.error, "patch");
      if (this.patchError !== message) this.deps.log.error({ status: r.error.status }, `updating Node "${this.o.nodeName}": ${message}; retrying every ${PATCH_RETRY_MS / 1000} s`);
      this.patchError = message;
      this.retryLater();
      return false;
    }
    this.patchError = undefined;
    this.reflector.cache.putWritten(r.value);
    return true;
  }

  status(): SourceStatus {
    return { kubernetes: this.kubernetesStatus() };
  }

  private kubernetesStatus(): KubernetesStatus {
    const r = this.reflector;
    const now = this.deps.clock.now();
    const seconds = (at: number | undefined): number | null => (at === undefined ? null : Math.round((now - at) / 100) / 10);
    const skippedByReason = Object.fromEntries(SKIP_REASONS.map((k) => [k, 0])) as Record<SkipReason, number>;
    for (const s of this.skipped) skippedByReason[s.reason]++;
    const err = r.lastError;
    return {
      server: this.deps.api.server,
      credentials: this.o.credentialsFrom,
      node: this.o.nodeName,
      ready: this.ready,
      notReadyBecause: this.notReadyBecause,
      watch: {
        state: r.state, forSeconds: seconds(r.stateSince) ?? 0, inSync: r.inSync, resourceVersion: r.cache.resourceVersion,
        lastEventSecondsAgo: seconds(r.lastEventAt),
        lastError: err === undefined ? null : { message: this.describe(err.error, err.during), secondsAgo: seconds(err.at) ?? 0 },
      },
      nodes: r.cache.size,
      networkUnavailable: r.cache.get(this.o.nodeName)?.networkUnavailable ?? null,
      skipped: this.skipped.map((s) => ({ name: s.name, reason: s.reason, why: s.why })),
      skippedByReason,
      counters: { ...r.counters, events: { ...r.counters.events }, errors: { ...r.counters.errors }, patches: { ...this.patches } },
    };
  }

  trace(): SourceTrace {
    const heard = this.reflector.lastEventAt;
    const members: TraceMember[] = [];
    for (const v of this.reflector.cache.views()) {
      const e = v.endpoint?.ok === true ? v.endpoint.value : undefined;
      members.push({
        name: v.name, state: "alive", underlayIp: e?.underlayIp, vtepMac: e?.vtepMac,
        subnet: v.podCidr?.ok === true ? v.podCidr.value : undefined, lease: v.podCidr?.ok === true ? "confirmed" : undefined,
        heardAgoMs: heard === undefined ? undefined : this.deps.clock.now() - heard, stateForMs: 0, via: "kubernetes",
      });
    }
    return { members, skipped: this.skipped };
  }

  reload(): string | undefined {
    return "the Kubernetes source has no key file (a rotated service-account token is read on the next request)";
  }

  logFields(): Record<string, unknown> {
    return { apiServer: this.deps.api.server, credentials: this.o.credentialsFrom, clusterCidr: formatSubnet(this.o.clusterCidr) };
  }
}
