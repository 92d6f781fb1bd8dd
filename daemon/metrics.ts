// Prometheus metrics, /healthz and /readyz over HTTP (localhost by default). Text exposition
// format 0.0.4, built from the daemon's status on each scrape: nothing is kept twice.

import * as http from "node:http";
import { COUNTER_NAMES, Counter, type BatchHistogram } from "../encap/counters";
import type { SyncState } from "../control/kube/reflector";
import type { DaemonStatus, KubernetesStatus, SourceKind } from "./status";

export interface MetricsAddress {
  host: string;
  port: number;
}

/** The families forwarder counters are exported in, with their help text. */
const COUNTER_FAMILIES = {
  vxmesh_tap_frames_total: "Frames read from and written to the TAP.",
  vxmesh_tap_bytes_total: "Bytes read from and written to the TAP.",
  vxmesh_underlay_datagrams_total: "VXLAN datagrams received from and sent to the underlay.",
  vxmesh_underlay_bytes_total: "VXLAN bytes received from and sent to the underlay.",
  vxmesh_drops_total: "Frames and datagrams dropped, by reason.",
  vxmesh_forwarder_batches_total: "Forwarder wake-ups that moved traffic, by source (frames ÷ batches = batch size).",
  vxmesh_forwarder_wakeups_total: "Forwarder wake-ups that found traffic: while busy-polling (--busy-poll), or after sleeping in poll().",
  vxmesh_offload_super_frames_total: "Fast path: TCP super-frames cut into segments (in) and merged (out).",
} as const;

export type CounterFamily = keyof typeof COUNTER_FAMILIES;

/** One forwarder counter's sample: its family and its label set (as label text). */
export interface CounterSample {
  family: CounterFamily;
  labels: string;
}

const sample = (family: CounterFamily, labels: string): CounterSample => ({ family, labels });
const drop = (reason: string): CounterSample => sample("vxmesh_drops_total", `{reason="${reason}"}`);

/**
 * Where each forwarder counter (encap/counters.ts) is exported, keyed by the Counter enum's
 * member names: a counter added or renamed there without its line here does not compile
 * (a missing or an unknown property), so no family can silently read 0. The labels are
 * spelled out, so renaming a counter never renames what dashboards see. Samples appear in
 * their family in this order. null: shown by `vxmesh status` only, not exported.
 */
export const COUNTER_METRICS: { readonly [K in keyof typeof Counter]: CounterSample | null } = {
  TapRxFrames: sample("vxmesh_tap_frames_total", '{direction="in"}'),
  TapTxFrames: sample("vxmesh_tap_frames_total", '{direction="out"}'),
  TapRxBytes: sample("vxmesh_tap_bytes_total", '{direction="in"}'),
  TapTxBytes: sample("vxmesh_tap_bytes_total", '{direction="out"}'),
  UdpRxDatagrams: sample("vxmesh_underlay_datagrams_total", '{direction="in"}'),
  UdpTxDatagrams: sample("vxmesh_underlay_datagrams_total", '{direction="out"}'),
  UdpRxBytes: sample("vxmesh_underlay_bytes_total", '{direction="in"}'),
  UdpTxBytes: sample("vxmesh_underlay_bytes_total", '{direction="out"}'),
  TapReadBatches: sample("vxmesh_forwarder_batches_total", '{source="tap"}'),
  UdpRecvBatches: sample("vxmesh_forwarder_batches_total", '{source="underlay"}'),
  WakeupsBusyPoll: sample("vxmesh_forwarder_wakeups_total", '{how="busy_poll"}'),
  WakeupsSleep: sample("vxmesh_forwarder_wakeups_total", '{how="sleep"}'),
  TapRxSuperFrames: sample("vxmesh_offload_super_frames_total", '{direction="in"}'),
  TapTxSuperFrames: sample("vxmesh_offload_super_frames_total", '{direction="out"}'),
  // Reads from the underlay socket (the kernel's Udp InDatagrams) and UDP_GRO runs received:
  // diagnostics for `vxmesh status`; the batch-size histogram covers reads per wake-up.
  UdpRxReads: null,
  UdpRxGroRuns: null,
  DropRunt: drop("runt"),
  DropMissingIFlag: drop("missing_iflag"),
  DropReservedBits: drop("reserved_bits"),
  DropWrongVni: drop("wrong_vni"),
  DropUnknownVtep: drop("unknown_vtep"),
  DropSpoofedSource: drop("spoofed_source"),
  DropUnsupportedInner: drop("unsupported_inner"),
  DropTruncated: drop("truncated"),
  DropNoRoute: drop("no_route"),
  DropGroupDestination: drop("group_destination"),
  DropTapQueueFull: drop("tap_queue_full"),
  DropUdpQueueFull: drop("udp_queue_full"),
  DropSendError: drop("send_error"),
  DropTapWriteError: drop("tap_write_error"),
  DropBadOffload: drop("bad_offload"),
};

/** A family's samples from the status' counters (keyed by COUNTER_NAMES), in COUNTER_METRICS order. */
function counterSamples(counters: Readonly<Record<string, number>>, family: CounterFamily): [string, number][] {
  const out: [string, number][] = [];
  for (const [name, m] of Object.entries(COUNTER_METRICS) as [keyof typeof Counter, CounterSample | null][]) {
    if (m?.family === family) out.push([m.labels, counters[COUNTER_NAMES[Counter[name]] as string] ?? 0]);
  }
  return out;
}

/** Renders the status as Prometheus text. Pure, for tests. */
export function renderMetrics(s: DaemonStatus): string {
  const out: string[] = [];
  const family: FamilyWriter = (name, type, help, samples) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) out.push(`${name}${labels} ${value}`);
  };
  /** A histogram family: per label set, cumulative le buckets, then _sum and _count. */
  const histogram = (name: string, help: string, series: [Record<string, string>, BatchHistogram][]): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    for (const [labels, h] of series) {
      for (const b of h.buckets) out.push(`${name}_bucket${labelText({ ...labels, le: b.le })} ${b.count}`);
      out.push(`${name}_sum${labelText(labels)} ${h.sum}`, `${name}_count${labelText(labels)} ${h.count}`);
    }
  };
  const counterFamily = (name: CounterFamily): void => family(name, "counter", COUNTER_FAMILIES[name], counterSamples(s.counters, name));
  counterFamily("vxmesh_tap_frames_total");
  counterFamily("vxmesh_tap_bytes_total");
  counterFamily("vxmesh_underlay_datagrams_total");
  counterFamily("vxmesh_underlay_bytes_total");
  counterFamily("vxmesh_drops_total");
  counterFamily("vxmesh_forwarder_batches_total");
  counterFamily("vxmesh_forwarder_wakeups_total");
  if (s.batchSizes !== undefined) {
    histogram("vxmesh_forwarder_batch_size", "Entries per forwarder read: frames (or super-frames) from the TAP, datagrams (or GRO runs) from the underlay.", [
      [{ source: "tap" }, s.batchSizes.tap], [{ source: "underlay" }, s.batchSizes.underlay]]);
  }
  if (s.kernelChanges !== undefined) {
    const samples: [string, number][] = [];
    for (const [trigger, ch] of Object.entries(s.kernelChanges)) {
      for (const [action, v] of Object.entries(ch.route)) samples.push([labelText({ kind: "route", action, trigger }), v]);
      for (const [action, v] of Object.entries(ch.neighbour)) samples.push([labelText({ kind: "neighbour", action, trigger }), v]);
    }
    family("vxmesh_reconcile_changes_total", "counter", "Routes and neighbours vxmesh added, replaced or removed in the kernel; trigger=change for peer or subnet changes, trigger=repair for drift a reconcile found.", samples);
  }
  const traffic = s.peers.flatMap((p) => (p.traffic === undefined ? [] : [[p.name, p.traffic] as const]));
  family("vxmesh_peer_frames_total", "counter", "Inner frames encapsulated for (out) and accepted from (in) each peer.", traffic.flatMap(([peer, t]) => [
    [labelText({ peer, direction: "out" }), t.txFrames], [labelText({ peer, direction: "in" }), t.rxFrames]] as [string, number][]));
  family("vxmesh_peer_bytes_total", "counter", "Inner bytes encapsulated for (out) and accepted from (in) each peer.", traffic.flatMap(([peer, t]) => [
    [labelText({ peer, direction: "out" }), t.txBytes], [labelText({ peer, direction: "in" }), t.rxBytes]] as [string, number][]));
  counterFamily("vxmesh_offload_super_frames_total");
  family("vxmesh_peers", "gauge", "Peers the data plane forwards to.", [["", s.peers.length]]);
  family("vxmesh_ready", "gauge", "1 when the node has a confirmed subnet and forwards.", [["", s.ready ? 1 : 0]]);
  family("vxmesh_peer_source", "gauge", "Where the subnet and the peers come from: 1 for the source in use.",
    PEER_SOURCES.map((kind) => [labelText({ kind }), s.mode === kind ? 1 : 0]));
  const g = s.gossip as GossipStatus | undefined;
  if (g !== undefined) {
    const states = ["alive", "suspect", "dead", "left"];
    family("vxmesh_members", "gauge", "Cluster members by state, this node included.",
      states.map((st) => [`{state="${st}"}`, g.members.filter((m) => m.state === st).length]));
    family("vxmesh_gossip_messages_total", "counter", "Gossip datagrams and streams, by direction.", [
      ['{kind="datagram",direction="in"}', g.gossip.datagramsIn], ['{kind="datagram",direction="out"}', g.gossip.datagramsOut],
      ['{kind="stream",direction="in"}', g.gossip.streamsIn], ['{kind="stream",direction="out"}', g.gossip.streamsOut]]);
    family("vxmesh_gossip_bytes_total", "counter", "Gossip bytes, sealed, by direction.", [
      ['{direction="in"}', g.gossip.bytesIn], ['{direction="out"}', g.gossip.bytesOut]]);
    family("vxmesh_gossip_rejected_total", "counter", "Gossip that failed to open (wrong key, tampered, truncated), by reason.",
      Object.entries(g.gossip.rejected).map(([k, v]) => [`{reason="${k}"}`, v]));
    family("vxmesh_subnet_lease", "gauge", "The node's subnet lease: 1 for its current state.",
      ["none", "claiming", "confirmed"].map((st) => [`{state="${st}"}`, (g.lease?.state ?? "none") === st ? 1 : 0]));
    family("vxmesh_subnet_conflicts_lost_total", "counter", "Confirmed subnets lost to another node's claim (partition heals).", [["", g.subnetConflictsLost]]);
  }
  if (s.kubernetes !== undefined) kubernetesFamilies(s.kubernetes, family);
  return out.join("\n") + "\n";
}

type FamilyWriter = (name: string, type: "counter" | "gauge", help: string, samples: [string, number][]) => void;

/** The Kubernetes source: the watch's state and age, the Nodes by why they are skipped, the API calls. */
function kubernetesFamilies(k: KubernetesStatus, family: FamilyWriter): void {
  const w = k.watch;
  family("vxmesh_kube_watch_in_sync", "gauge", "1 when a complete list of Nodes is applied and its watch is open.", [["", w.inSync ? 1 : 0]]);
  family("vxmesh_kube_watch_state", "gauge", "The Node list/watch loop: 1 for its current state.",
    SYNC_STATES.map((st) => [labelText({ state: st }), w.state === st ? 1 : 0]));
  family("vxmesh_kube_watch_state_seconds", "gauge", "Seconds the list/watch loop has been in its current state.", [["", w.forSeconds]]);
  family("vxmesh_kube_last_event_age_seconds", "gauge", "Seconds since the watch last delivered an event or bookmark (-1: never).", [["", w.lastEventSecondsAgo ?? -1]]);
  family("vxmesh_kube_nodes", "gauge", "Nodes listed on the API server, this one included.", [["", k.nodes]]);
  family("vxmesh_kube_nodes_skipped", "gauge", "Nodes that are not peers, by reason.",
    Object.entries(k.skippedByReason).map(([reason, n]) => [labelText({ reason }), n]));
  const c = k.counters;
  family("vxmesh_kube_lists_total", "counter", "Complete lists of Nodes; reason=gone for those after 410 Gone.", [
    [labelText({ reason: "all" }), c.lists], [labelText({ reason: "gone" }), c.relists]]);
  family("vxmesh_kube_watches_total", "counter", "Watches on Nodes opened.", [["", c.watches]]);
  family("vxmesh_kube_watch_events_total", "counter", "Watch events received, by type.",
    Object.entries(c.events).map(([type, n]) => [labelText({ type }), n]));
  family("vxmesh_kube_api_errors_total", "counter", "Failed list and watch calls, by HTTP status (none: no answer).",
    Object.entries(c.errors).map(([code, n]) => [labelText({ code }), n]));
  family("vxmesh_kube_node_patches_total", "counter", "Patches of this node's Node: annotations, the condition, and failures.", [
    [labelText({ what: "annotations" }), c.patches.annotations], [labelText({ what: "condition" }), c.patches.condition], [labelText({ what: "failed" }), c.patches.failed]]);
}

const PEER_SOURCES: readonly SourceKind[] = ["static", "gossip", "kubernetes"];
const SYNC_STATES: readonly SyncState[] = ["starting", "listing", "connecting", "watching", "retrying", "stopped"];

/** {a="x",b="y"} with label values escaped as the text format wants. */
function labelText(labels: Record<string, string>): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

interface GossipStatus {
  members: { state: string }[];
  lease: { state: string } | null;
  subnetConflictsLost: number;
  gossip: { datagramsIn: number; datagramsOut: number; streamsIn: number; streamsOut: number; bytesIn: number; bytesOut: number; rejected: Record<string, number> };
}

export async function serveMetrics(addr: MetricsAddress, status: () => DaemonStatus): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/metrics") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(renderMetrics(status()));
    } else if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    } else if (path === "/readyz") {
      const ready = status().ready;
      res.writeHead(ready ? 200 : 503, { "content-type": "text/plain" }).end(ready ? "ready\n" : "not ready\n");
    } else {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: try /metrics, /healthz or /readyz\n");
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(addr.port, addr.host, () => { server.off("error", reject); resolve(); });
  });
  return server;
}
