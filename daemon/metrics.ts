// Prometheus metrics, /healthz and /readyz over HTTP (localhost by default). Text exposition
// format 0.0.4, built from the daemon's status on each scrape: nothing is kept twice.

import * as http from "node:http";
import type { BatchHistogram } from "../encap/counters";
import type { DaemonStatus } from "./daemon";

export interface MetricsAddress {
  host: string;
  port: number;
}

/** Renders the status as Prometheus text. Pure, for tests. */
export function renderMetrics(s: DaemonStatus): string {
  const out: string[] = [];
  const family = (name: string, type: "counter" | "gauge", help: string, samples: [string, number][]): void => {
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
  const c = s.counters;
  const n = (k: string): number => c[k] ?? 0;
  family("vxmesh_tap_frames_total", "counter", "Frames read from and written to the TAP.", [
    ['{direction="in"}', n("tap_rx_frames")], ['{direction="out"}', n("tap_tx_frames")]]);
  family("vxmesh_tap_bytes_total", "counter", "Bytes read from and written to the TAP.", [
    ['{direction="in"}', n("tap_rx_bytes")], ['{direction="out"}', n("tap_tx_bytes")]]);
  family("vxmesh_underlay_datagrams_total", "counter", "VXLAN datagrams received from and sent to the underlay.", [
    ['{direction="in"}', n("udp_rx_datagrams")], ['{direction="out"}', n("udp_tx_datagrams")]]);
  family("vxmesh_underlay_bytes_total", "counter", "VXLAN bytes received from and sent to the underlay.", [
    ['{direction="in"}', n("udp_rx_bytes")], ['{direction="out"}', n("udp_tx_bytes")]]);
  family("vxmesh_drops_total", "counter", "Frames and datagrams dropped, by reason.",
    Object.entries(c).filter(([k]) => k.startsWith("drop_")).map(([k, v]) => [`{reason="${k.slice(5)}"}`, v]));
  family("vxmesh_forwarder_batches_total", "counter", "Forwarder wake-ups that moved traffic, by source (frames ÷ batches = batch size).", [
    ['{source="tap"}', n("tap_read_batches")], ['{source="underlay"}', n("udp_recv_batches")]]);
  family("vxmesh_forwarder_wakeups_total", "counter", "Forwarder wake-ups that found traffic: while busy-polling (--busy-poll), or after sleeping in poll().", [
    ['{how="busy_poll"}', n("wakeups_busy_poll")], ['{how="sleep"}', n("wakeups_sleep")]]);
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
  family("vxmesh_offload_super_frames_total", "counter", "Fast path: TCP super-frames cut into segments (in) and merged (out).", [
    ['{direction="in"}', n("tap_rx_super_frames")], ['{direction="out"}', n("tap_tx_super_frames")]]);
  family("vxmesh_peers", "gauge", "Peers the data plane forwards to.", [["", s.peers.length]]);
  family("vxmesh_ready", "gauge", "1 when the node has a confirmed subnet and forwards.", [["", s.ready ? 1 : 0]]);
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
  return out.join("\n") + "\n";
}

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
