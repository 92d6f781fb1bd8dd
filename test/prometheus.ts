// Prometheus text exposition (format 0.0.4), parsed strictly, for the metrics tests (the unit
// test of renderMetrics and the lab test against running daemons).

import { expect } from "vitest";

export interface Family {
  type: "counter" | "gauge" | "histogram" | undefined;
  help: string;
}

export interface Exposition {
  families: Map<string, Family>;
  /** Sample name + label text → value, e.g. `vxmesh_drops_total{reason="runt"}`. */
  samples: Map<string, number>;
}

/**
 * Parses Prometheus text exposition (format 0.0.4) strictly: every family has # HELP and
 * # TYPE before its samples and its samples are contiguous; every sample line is well-formed
 * and belongs to the family just typed; names carry the vxmesh_ prefix; a histogram has, per
 * label set, _bucket lines with le labels in increasing order ending at +Inf, cumulative
 * (non-decreasing) counts, then _sum and a _count equal to the +Inf bucket.
 */
export function parsePrometheus(text: string): Exposition {
  const families = new Map<string, Family>();
  const samples = new Map<string, number>();
  let current: string | undefined;
  let help: string | undefined;
  const histograms = new Map<string, { les: number[]; counts: number[]; sum?: number; count?: number }>();
  expect(text.endsWith("\n"), "the text ends with a newline").toBe(true);
  for (const line of text.slice(0, -1).split("\n")) {
    const h = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (h !== null) {
      expect(families.has(h[1] as string), `family ${h[1]} appears once`).toBe(false);
      help = h[1];
      families.set(h[1] as string, { type: undefined, help: h[2] as string });
      current = undefined;
      continue;
    }
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$/.exec(line);
    if (t !== null) {
      expect(t[1], "# TYPE follows the # HELP of the same family").toBe(help);
      (families.get(t[1] as string) as Family).type = t[2] as Family["type"];
      current = t[1];
      continue;
    }
    expect(line.startsWith("#"), `unexpected comment: ${line}`).toBe(false);
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?\d+(\.\d+)?(e[+-]?\d+)?|\+Inf|NaN)$/.exec(line);
    expect(m, `sample line: ${line}`).not.toBeNull();
    const [, name, labels = ""] = m as RegExpExecArray;
    const value = Number((m as RegExpExecArray)[5]);
    expect(current, `${line}: a sample right after its family's # TYPE and other samples of it`).toBeDefined();
    const fam = families.get(current as string) as Family;
    expect((name as string).startsWith("vxmesh_"), name).toBe(true);
    if (fam.type === "histogram") {
      const suffix = (name as string).slice((current as string).length);
      expect(name!.startsWith(current as string) && ["_bucket", "_sum", "_count"].includes(suffix), `${name} belongs to histogram ${current}`).toBe(true);
      const le = /(?:^\{|,)le="([^"]*)"/.exec(labels);
      const series = `${current}${labels.replace(/,?le="[^"]*"/, "").replace("{,", "{").replace("{}", "")}`;
      const hist = histograms.get(series) ?? { les: [], counts: [] };
      histograms.set(series, hist);
      if (suffix === "_bucket") {
        expect(le, `${line} has an le label`).not.toBeNull();
        expect(hist.sum, `${series}: buckets come before _sum`).toBeUndefined();
        hist.les.push(Number((le as RegExpExecArray)[1] === "+Inf" ? Infinity : (le as RegExpExecArray)[1]));
        hist.counts.push(value);
      } else if (suffix === "_sum") hist.sum = value;
      else hist.count = value;
    } else {
      expect(name, `sample ${name} belongs to family ${current}`).toBe(current);
    }
    samples.set(name + labels, value);
  }
  for (const [name, f] of families) expect(f.type, `${name} has a # TYPE line`).toBeDefined();
  for (const [series, h] of histograms) {
    expect(h.les.length, `${series} has buckets`).toBeGreaterThan(0);
    expect(h.les.at(-1), `${series}'s last bucket is +Inf`).toBe(Infinity);
    for (let i = 1; i < h.les.length; i++) {
      expect(h.les[i]!, `${series}: le increases`).toBeGreaterThan(h.les[i - 1]!);
      expect(h.counts[i]!, `${series}: bucket counts are cumulative`).toBeGreaterThanOrEqual(h.counts[i - 1]!);
    }
    expect(h.sum, `${series} has _sum`).toBeDefined();
    expect(h.count, `${series}: _count equals the +Inf bucket`).toBe(h.counts.at(-1));
  }
  return { families, samples };
}

/** The families issue 6 asks for, by what they measure. */
export const REQUIRED_FAMILIES: Record<string, string[]> = {
  "frames and bytes in and out": ["vxmesh_tap_frames_total", "vxmesh_tap_bytes_total", "vxmesh_underlay_datagrams_total", "vxmesh_underlay_bytes_total"],
  "drops by reason": ["vxmesh_drops_total"],
  "members by state": ["vxmesh_members"],
  "gossip messages and bytes": ["vxmesh_gossip_messages_total", "vxmesh_gossip_bytes_total"],
  "subnet lease state": ["vxmesh_subnet_lease"],
  "forwarder batch sizes": ["vxmesh_forwarder_batch_size"],
  "forwarder wake-ups": ["vxmesh_forwarder_wakeups_total"],
  "reconcile changes": ["vxmesh_reconcile_changes_total"],
};

export function expectRequiredFamilies(e: Exposition): void {
  for (const [what, names] of Object.entries(REQUIRED_FAMILIES)) {
    for (const name of names) expect(e.families.has(name), `${what}: ${name}`).toBe(true);
  }
  expect(e.families.get("vxmesh_forwarder_batch_size")?.type).toBe("histogram");
}
