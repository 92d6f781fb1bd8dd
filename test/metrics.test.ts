// The Prometheus rendering of a daemon's status, without a daemon: every family, valid text,
// and every forwarder counter exported by the Counter enum. Running daemons serving it over
// HTTP: test/metrics-lab.test.ts.

import { describe, expect, it } from "vitest";
import type { DaemonStatus, GossipMemberStatus, KernelChanges } from "../daemon/status";
import {
  BATCH_BUCKETS, BatchSource, COUNTER_COUNT, Counter, countBatch, newCounterView, snapshotBatchHistogram, snapshotCounters, type BatchHistogram,
} from "../encap/counters";
import { COUNTER_METRICS, renderMetrics } from "../daemon/metrics";
import { expectRequiredFamilies, parsePrometheus } from "./prometheus";

/** A histogram as Forwarder.batchSizes() reports it, from raw per-bucket counts. */
function histogramOf(perBucket: number[], sum: number): BatchHistogram {
  let cumulative = 0;
  const buckets = BATCH_BUCKETS.map((le, i) => ({ le: String(le), count: (cumulative += perBucket[i] ?? 0) }));
  cumulative += perBucket[BATCH_BUCKETS.length] ?? 0;
  buckets.push({ le: "+Inf", count: cumulative });
  return { buckets, sum, count: cumulative };
}

function member(name: string, state: GossipMemberStatus["state"]): GossipMemberStatus {
  return { name, state, incarnation: 1, underlayIp: undefined, subnet: undefined, vtepMac: undefined, lease: undefined, stateForSeconds: 1, heardSecondsAgo: undefined };
}

function zeroChanges(): KernelChanges {
  return { route: { added: 0, removed: 0 }, neighbour: { added: 0, replaced: 0, removed: 0 } };
}

describe("Prometheus metrics", () => {
  it("renders every family of a status as valid exposition text", () => {
    const status: DaemonStatus = {
      node: "n1", mode: "gossip", ready: false, underlayIp: "192.0.2.11", subnet: null, vtepMac: "02:00:00:00:00:01",
      vni: 1, vxlanPort: 4789, tap: "vxmesh0", mtu: 1450,
      peers: [{ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", vtepMac: "02:00:00:00:00:02", path: "vxlan",
        traffic: { txFrames: 3, txBytes: 300, rxFrames: 4, rxBytes: 400 } }],
      counters: { tap_rx_frames: 5, tap_tx_frames: 7, udp_rx_datagrams: 9, drop_runt: 2, drop_wrong_vni: 1 },
      batchSizes: { tap: histogramOf([4, 0, 2, 0, 0, 0, 0, 0, 0, 1], 4 + 8 + 300), underlay: histogramOf([], 0) },
      kernelChanges: { change: { route: { added: 2, removed: 1 }, neighbour: { added: 2, replaced: 1, removed: 0 } }, repair: { ...zeroChanges(), route: { added: 1, removed: 0 } } },
      gossip: {
        ready: false, notReadyBecause: "claiming 10.244.3.0/24", profile: "lan", incarnation: 1, health: 0, skipped: [],
        members: [member("n1", "alive"), member("n2", "alive"), member("n3", "dead")], lease: { subnet: "10.244.3.0/24", state: "claiming", stamp: 1 }, subnetConflictsLost: 0,
        gossip: { datagramsIn: 1, datagramsOut: 2, streamsIn: 3, streamsOut: 4, bytesIn: 5, bytesOut: 6, rejected: { auth: 1, "unknown-key": 2, truncated: 0, version: 0 }, malformed: 0, streamErrors: 0 },
      },
    };
    const e = parsePrometheus(renderMetrics(status));
    expectRequiredFamilies(e);
    const m = e.samples;
    expect(m.get('vxmesh_tap_frames_total{direction="out"}')).toBe(7);
    expect(m.get('vxmesh_drops_total{reason="runt"}')).toBe(2);
    expect(m.get('vxmesh_members{state="alive"}')).toBe(2);
    expect(m.get('vxmesh_members{state="dead"}')).toBe(1);
    expect(m.get('vxmesh_gossip_rejected_total{reason="unknown-key"}')).toBe(2);
    expect(m.get('vxmesh_gossip_bytes_total{direction="out"}')).toBe(6);
    expect(m.get('vxmesh_subnet_lease{state="claiming"}')).toBe(1);
    expect(m.get("vxmesh_ready")).toBe(0);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="1"}')).toBe(4);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="4"}')).toBe(6);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="256"}')).toBe(6);
    expect(m.get('vxmesh_forwarder_batch_size_bucket{source="tap",le="+Inf"}')).toBe(7);
    expect(m.get('vxmesh_forwarder_batch_size_count{source="tap"}')).toBe(7);
    expect(m.get('vxmesh_forwarder_batch_size_sum{source="tap"}')).toBe(312);
    expect(m.get('vxmesh_forwarder_batch_size_count{source="underlay"}')).toBe(0);
    expect(m.get('vxmesh_reconcile_changes_total{kind="route",action="added",trigger="change"}')).toBe(2);
    expect(m.get('vxmesh_reconcile_changes_total{kind="neighbour",action="replaced",trigger="change"}')).toBe(1);
    expect(m.get('vxmesh_reconcile_changes_total{kind="route",action="added",trigger="repair"}')).toBe(1);
    expect(m.get('vxmesh_peer_frames_total{peer="n2",direction="out"}')).toBe(3);
    expect(m.get('vxmesh_peer_bytes_total{peer="n2",direction="in"}')).toBe(400);
  });

  it("renders the Kubernetes source's watch, Nodes by skip reason and API calls", () => {
    const status: DaemonStatus = {
      node: "n1", mode: "kubernetes", ready: false, notReadyBecause: "lost the watch", underlayIp: "192.0.2.11", subnet: "10.244.1.0/24",
      vtepMac: "02:00:00:00:00:01", vni: 1, vxlanPort: 4789, tap: "vxmesh0", mtu: 1450, peers: [], counters: {},
      kubernetes: {
        server: "https://192.0.2.2:6443", credentials: "kubeconfig /k", node: "n1", ready: false, notReadyBecause: "lost the watch",
        watch: { state: "retrying", forSeconds: 12.5, inSync: false, resourceVersion: "42", lastEventSecondsAgo: null, lastError: { message: "down", secondsAgo: 12.5 } },
        nodes: 4, networkUnavailable: "False",
        skipped: [{ name: "plain", reason: "no_annotations", why: "…" }],
        skippedByReason: { no_pod_cidr: 0, bad_pod_cidr: 0, outside_cluster_cidr: 0, no_annotations: 1, bad_annotations: 0, other_vxlan: 0, overlapping_pod_cidr: 0, shared_endpoint: 0 },
        counters: { lists: 3, relists: 1, watches: 5, events: { ADDED: 4, MODIFIED: 7, DELETED: 1, BOOKMARK: 9, ERROR: 1 }, errors: { none: 2, "403": 1 }, patches: { annotations: 1, condition: 1, failed: 0 } },
      },
    };
    const e = parsePrometheus(renderMetrics(status));
    const m = e.samples;
    expect(m.get('vxmesh_peer_source{kind="kubernetes"}')).toBe(1);
    expect(m.get('vxmesh_peer_source{kind="gossip"}')).toBe(0);
    expect(m.get("vxmesh_kube_watch_in_sync")).toBe(0);
    expect(m.get('vxmesh_kube_watch_state{state="retrying"}')).toBe(1);
    expect(m.get('vxmesh_kube_watch_state{state="watching"}')).toBe(0);
    expect(m.get("vxmesh_kube_watch_state_seconds")).toBe(12.5);
    expect(m.get("vxmesh_kube_last_event_age_seconds")).toBe(-1);
    expect(m.get("vxmesh_kube_nodes")).toBe(4);
    expect(m.get('vxmesh_kube_nodes_skipped{reason="no_annotations"}')).toBe(1);
    expect(m.get('vxmesh_kube_nodes_skipped{reason="shared_endpoint"}')).toBe(0);
    expect(m.get('vxmesh_kube_lists_total{reason="gone"}')).toBe(1);
    expect(m.get('vxmesh_kube_watch_events_total{type="BOOKMARK"}')).toBe(9);
    expect(m.get('vxmesh_kube_api_errors_total{code="403"}')).toBe(1);
    expect(m.get('vxmesh_kube_node_patches_total{what="condition"}')).toBe(1);
    expect(m.get("vxmesh_members")).toBeUndefined();
  });

  it("exports every forwarder counter, found by the Counter enum, under the family and labels it always had", () => {
    // The table's type already demands an entry per enum member; tests run without a type check, so check it here too.
    const members = Object.keys(Counter).filter((k) => Number.isNaN(Number(k))) as (keyof typeof Counter)[];
    expect(members.length).toBe(COUNTER_COUNT);
    expect(Object.keys(COUNTER_METRICS).sort()).toEqual([...members].sort());
    const view = newCounterView();
    for (let i = 0; i < COUNTER_COUNT; i++) view[i] = 1000 + i;
    const status: DaemonStatus = {
      node: "n1", mode: "static", ready: true, underlayIp: "192.0.2.11", subnet: "10.244.1.0/24", vtepMac: "02:00:00:00:00:01",
      vni: 1, vxlanPort: 4789, tap: "vxmesh0", mtu: 1450, peers: [], counters: snapshotCounters(view),
    };
    const m = parsePrometheus(renderMetrics(status)).samples;
    const statusOnly: string[] = [];
    const exported: string[] = [];
    for (const name of members) {
      const e = COUNTER_METRICS[name];
      if (e === null) {
        statusOnly.push(name);
        continue;
      }
      exported.push(e.family + e.labels);
      expect(m.get(e.family + e.labels), `Counter.${name} → ${e.family}${e.labels}`).toBe(1000 + Counter[name]);
    }
    // Shown by `vxmesh status` only; exporting one more is a decision, made here and in the README's table.
    expect(statusOnly).toEqual(["UdpRxReads", "UdpRxGroRuns"]);
    expect(new Set(exported).size, "no two counters share a sample").toBe(exported.length);
    // The names and labels dashboards know (the README's metrics table): renaming a counter must not change them.
    expect(exported.sort()).toEqual([
      'vxmesh_drops_total{reason="bad_offload"}', 'vxmesh_drops_total{reason="group_destination"}', 'vxmesh_drops_total{reason="missing_iflag"}',
      'vxmesh_drops_total{reason="no_route"}', 'vxmesh_drops_total{reason="reserved_bits"}', 'vxmesh_drops_total{reason="runt"}',
      'vxmesh_drops_total{reason="send_error"}', 'vxmesh_drops_total{reason="spoofed_source"}', 'vxmesh_drops_total{reason="tap_queue_full"}',
      'vxmesh_drops_total{reason="tap_write_error"}', 'vxmesh_drops_total{reason="truncated"}', 'vxmesh_drops_total{reason="udp_queue_full"}',
      'vxmesh_drops_total{reason="unknown_vtep"}', 'vxmesh_drops_total{reason="unsupported_inner"}', 'vxmesh_drops_total{reason="wrong_vni"}',
      'vxmesh_forwarder_batches_total{source="tap"}', 'vxmesh_forwarder_batches_total{source="underlay"}',
      'vxmesh_forwarder_wakeups_total{how="busy_poll"}', 'vxmesh_forwarder_wakeups_total{how="sleep"}',
      'vxmesh_offload_super_frames_total{direction="in"}', 'vxmesh_offload_super_frames_total{direction="out"}',
      'vxmesh_tap_bytes_total{direction="in"}', 'vxmesh_tap_bytes_total{direction="out"}',
      'vxmesh_tap_frames_total{direction="in"}', 'vxmesh_tap_frames_total{direction="out"}',
      'vxmesh_underlay_bytes_total{direction="in"}', 'vxmesh_underlay_bytes_total{direction="out"}',
      'vxmesh_underlay_datagrams_total{direction="in"}', 'vxmesh_underlay_datagrams_total{direction="out"}',
    ].sort());
  });

  it("the parser rejects what Prometheus would: a sample without its family, a bad bucket order, a count that is not the +Inf bucket", () => {
    const ok = "# HELP vxmesh_x h\n# TYPE vxmesh_x histogram\nvxmesh_x_bucket{le=\"1\"} 1\nvxmesh_x_bucket{le=\"+Inf\"} 2\nvxmesh_x_sum 3\nvxmesh_x_count 2\n";
    expect(() => parsePrometheus(ok)).not.toThrow();
    expect(() => parsePrometheus(ok.replace("# HELP vxmesh_x h\n# TYPE vxmesh_x histogram\n", ""))).toThrow();
    expect(() => parsePrometheus(ok.replace('le="1"} 1', 'le="1"} 3'))).toThrow(/cumulative/);
    expect(() => parsePrometheus(ok.replace("vxmesh_x_count 2", "vxmesh_x_count 5"))).toThrow(/\+Inf bucket/);
    expect(() => parsePrometheus(ok.replace('vxmesh_x_bucket{le="+Inf"} 2\n', ""))).toThrow(/\+Inf/);
    expect(() => parsePrometheus("# HELP vxmesh_y h\n# TYPE vxmesh_y counter\nvxmesh_z 1\n")).toThrow(/belongs to family/);
  });

  it("the forwarder's batch-size counters land in the right buckets (⌈log2 n⌉), with the sum", () => {
    const c = newCounterView();
    for (const n of [1, 2, 3, 4, 5, 64, 65, 256, 300]) countBatch(c, BatchSource.Underlay, n);
    const h = snapshotBatchHistogram(c, BatchSource.Underlay);
    const at = (le: string): number | undefined => h.buckets.find((b) => b.le === le)?.count;
    expect([at("1"), at("2"), at("4"), at("8"), at("64"), at("128"), at("256"), at("+Inf")]).toEqual([1, 2, 4, 5, 6, 7, 8, 9]);
    expect(h.sum).toBe(1 + 2 + 3 + 4 + 5 + 64 + 65 + 256 + 300);
    expect(h.count).toBe(9);
    expect(snapshotBatchHistogram(c, BatchSource.Tap).count).toBe(0);
  });
});
