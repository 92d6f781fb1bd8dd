// What a soak run reports, the verdict on it, and its Markdown rendering. Pure: values in,
// values out.

export interface SoakOptions {
  /** How long the kill schedule runs (ms): kills at every interval up to and including this. */
  durationMs: number;
  nodes: number;
  /** Time between two kills (ms). */
  intervalMs: number;
  /** Loss per datagram on every node-to-node underlay path, 0–1. */
  loss: number;
  /** One-way delay added on every node-to-node underlay path (ms). */
  delayMs: number;
  /** Standard deviation of that delay (normal distribution, clipped at 0) (ms). */
  jitterMs: number;
  seed: number;
  /** Rate of each checked stream (bytes per second; 0: as fast as it goes). */
  streamRateBytesPerS: number;
  /** Interval of the UDP probes between every pod pair (ms). */
  probeIntervalMs: number;
  /** How long a restarted node may take to recover before it is reported as not recovered (ms). */
  recoveryTimeoutMs: number;
  /** A stream client reconnects when nothing it sent is acknowledged for this long (ms). */
  stallMs: number;
}

export interface RestartRecord {
  index: number;
  node: string;
  /** Seconds since the soak clock started. */
  killAtS: number;
  /** SIGKILL sent → the process gone (ms). */
  exitMs: number;
  /** Restart began → the new daemon answers on its control socket (ms). */
  controlSocketMs: number;
  /**
   * Restart began → every probe pair to and from the node's pod has had an answer to a probe
   * sent after the restart began (ms): the traffic-return time. null: never within the run.
   */
  trafficReturnMs: number | null;
  /** SIGKILL → the same moment (ms). */
  killToTrafficMs: number | null;
  /** Restart began → every running daemon lists every other as alive, with a peer entry (ms). */
  convergedMs: number | null;
  /** Restart began → each checked stream verified new bytes again (ms), by stream id. */
  streamProgressMs: Record<string, number | null>;
  /** Daemons that declared the killed node dead (or left) during its restart (expected, not false). */
  declaredDeadBy: string[];
  /** Restart began → traffic returned, converged and every stream progressed (ms). */
  recoveredMs: number | null;
  error?: string;
}

export interface DeathEvent {
  observer: string;
  member: string;
  /** Seconds since the soak clock started. */
  atS: number;
  /** "log": the observer logged the member failed/left; "status": its member list said so; "route": its route to the member's subnet vanished. */
  source: "log" | "status" | "route";
  state: string;
}

export interface StreamReport {
  id: number;
  from: string;
  to: string;
  verifiedBytes: number;
  corruptedBytes: number;
  /** Gaps in the verified sequence, plus bytes sent that were never verified by the end. */
  lostBytes: number;
  gapBytes: number;
  unverifiedAtEndBytes: number;
  resentBytes: number;
  connections: number;
  reconnects: number;
  stalls: number;
  firstCorruptionAt: number | null;
  drained: boolean;
}

export interface RssProcess {
  pid: number;
  /** Seconds since the soak clock started when the process was started (negative: before). */
  startedAtS: number;
  firstKb: number | null;
  lastKb: number | null;
  maxKb: number | null;
  samples: number;
}

export interface RssReport {
  node: string;
  processes: RssProcess[];
}

export interface FaultReport {
  node: string;
  seen: number;
  dropped: number;
  meanDelayMs: number;
  maxDelayMs: number;
  /** Kernel queue drops beyond the injected loss (queue full or socket overrun). */
  queueDropped: number;
}

export interface SoakReport {
  options: SoakOptions;
  startedAt: string;
  /** Soak clock: first kill schedule tick to the end of recovery of the last restart (s). */
  soakS: number;
  /** Whole run including lab build and teardown (s). */
  wallS: number;
  environment: { labPrefix: string; cpus: number; loadAvgStart: number[]; loadAvgEnd: number[]; kernel: string; faultMechanism: string };
  restarts: RestartRecord[];
  falseDeaths: DeathEvent[];
  victimDeaths: number;
  streams: StreamReport[];
  probes: { sent: number; answered: number };
  faults: FaultReport[];
  rss: RssReport[];
  /** Why the run stopped early, if it did (a pod program or fault injector died). */
  aborted: string | null;
  warnings: string[];
}

export interface Spread {
  n: number;
  min: number;
  median: number;
  max: number;
}

export function spread(values: readonly number[]): Spread | null {
  if (values.length === 0) return null;
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  const median = v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
  return { n: v.length, min: v[0] as number, median, max: v[v.length - 1] as number };
}

export interface SoakVerdict {
  ok: boolean;
  problems: string[];
}

/** What must hold: no false death, no byte corrupted or lost, every restart recovered. */
export function verdict(r: SoakReport): SoakVerdict {
  const problems: string[] = [];
  if (r.aborted !== null) problems.push(`aborted: ${r.aborted}`);
  if (r.falseDeaths.length > 0) problems.push(`${r.falseDeaths.length} false death(s): ${r.falseDeaths.map((d) => `${d.observer} saw ${d.member} ${d.state} at ${d.atS.toFixed(1)} s (${d.source})`).join("; ")}`);
  for (const s of r.streams) {
    if (s.corruptedBytes > 0) problems.push(`stream ${s.id} (${s.from}→${s.to}): ${s.corruptedBytes} bytes corrupted (first at offset ${String(s.firstCorruptionAt)})`);
    if (s.lostBytes > 0) problems.push(`stream ${s.id} (${s.from}→${s.to}): ${s.lostBytes} bytes lost (gaps ${s.gapBytes}, unverified at the end ${s.unverifiedAtEndBytes})`);
    if (!s.drained) problems.push(`stream ${s.id} (${s.from}→${s.to}): did not drain at the end`);
  }
  for (const x of r.restarts) {
    if (x.error !== undefined) problems.push(`restart ${x.index} of ${x.node}: ${x.error}`);
    else if (x.recoveredMs === null || x.recoveredMs > r.options.recoveryTimeoutMs) {
      problems.push(`restart ${x.index} of ${x.node}: did not recover within ${fmtMs(r.options.recoveryTimeoutMs)} (traffic ${fmtMs(x.trafficReturnMs)}, converged ${fmtMs(x.convergedMs)}, streams ${JSON.stringify(x.streamProgressMs)})`);
    }
  }
  return { ok: problems.length === 0, problems };
}

function fmtMs(v: number | null): string {
  return v === null ? "never" : `${(v / 1000).toFixed(2)} s`;
}

function fmtS(v: number | null | undefined): string {
  return v === null || v === undefined ? "—" : (v / 1000).toFixed(2);
}

function fmtBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

function fmtKb(kb: number | null): string {
  return kb === null ? "—" : `${(kb / 1024).toFixed(1)} MiB`;
}

function table(head: readonly string[], rows: readonly (readonly string[])[]): string {
  return [`| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
}

function spreadLine(what: string, values: readonly number[]): string {
  const s = spread(values);
  return s === null ? `${what}: none` : `${what} (n=${s.n}): min ${fmtS(s.min)} s, median ${fmtS(s.median)} s, max ${fmtS(s.max)} s`;
}

export function renderMarkdown(r: SoakReport): string {
  const o = r.options;
  const v = verdict(r);
  const out: string[] = [];
  out.push(`## vxmesh soak — ${v.ok ? "PASS" : "FAIL"}`, "");
  out.push(`${o.nodes} nodes, ${(o.durationMs / 1000).toFixed(0)} s kill schedule (one daemon kill -9 and restarted every ${(o.intervalMs / 1000).toFixed(0)} s, round-robin), ` +
    `underlay ${(o.loss * 100).toFixed(1)} % loss and ${o.delayMs} ms ± ${o.jitterMs} ms delay per node-to-node path (${r.environment.faultMechanism}), ` +
    `checked streams at ${o.streamRateBytesPerS > 0 ? `${fmtBytes(o.streamRateBytesPerS)}/s` : "full speed"} each, probes every ${o.probeIntervalMs} ms between every pod pair, seed ${o.seed}.`);
  out.push(`Started ${r.startedAt}; soak ${r.soakS.toFixed(0)} s, wall ${r.wallS.toFixed(0)} s; ${r.environment.cpus} CPUs, load average ${r.environment.loadAvgStart.map((x) => x.toFixed(2)).join("/")} at the start, ${r.environment.loadAvgEnd.map((x) => x.toFixed(2)).join("/")} at the end (other work on the machine counts in these figures); kernel ${r.environment.kernel}.`, "");

  const returns = r.restarts.flatMap((x) => (x.trafficReturnMs === null ? [] : [x.trafficReturnMs]));
  const streamsBytes = r.streams.reduce((a, s) => a + s.verifiedBytes, 0);
  out.push("### Summary", "");
  out.push(table(["what", "figure"], [
    ["false deaths", String(r.falseDeaths.length)],
    ["restarts", `${r.restarts.length} (recovered: ${r.restarts.filter((x) => x.recoveredMs !== null).length})`],
    ["killed node declared dead by others (expected, not false)", `${r.victimDeaths} time(s)`],
    ["traffic return after restart, min / median / max", (() => { const s = spread(returns); return s === null ? "—" : `${fmtS(s.min)} / ${fmtS(s.median)} / ${fmtS(s.max)} s`; })()],
    ["bytes verified (all streams)", `${fmtBytes(streamsBytes)} (${streamsBytes})`],
    ["bytes corrupted", String(r.streams.reduce((a, s) => a + s.corruptedBytes, 0))],
    ["bytes lost", String(r.streams.reduce((a, s) => a + s.lostBytes, 0))],
    ["stream reconnects", String(r.streams.reduce((a, s) => a + s.reconnects, 0))],
    ["probes answered", `${r.probes.answered} of ${r.probes.sent} (${r.probes.sent === 0 ? "—" : ((100 * r.probes.answered) / r.probes.sent).toFixed(1)} %, round trips cross the loss twice, and restarts)`],
  ]), "");
  if (!v.ok) out.push("Problems:", ...v.problems.map((p) => `- ${p}`), "");

  out.push("### Restarts", "", "Times in seconds from the moment the restart began (the killed process had exited). Traffic return: every probe pair to and from the node's pod answered a probe sent after that moment.", "");
  out.push(table(["#", "node", "kill at", "exit", "control socket", "traffic back", "kill → traffic", "converged", "streams progress", "declared dead by", "recovered"],
    r.restarts.map((x) => [String(x.index), x.node, x.killAtS.toFixed(1), fmtS(x.exitMs), fmtS(x.controlSocketMs), fmtS(x.trafficReturnMs), fmtS(x.killToTrafficMs), fmtS(x.convergedMs),
      Object.entries(x.streamProgressMs).filter(([, ms]) => ms === null || ms > 0).map(([id, ms]) => `s${id} ${fmtS(ms)}`).join(", ") || "—",
      x.declaredDeadBy.join(" ") || "—", x.error ?? fmtS(x.recoveredMs)])), "");
  out.push(spreadLine("Traffic return", returns), "");

  out.push("### Checked streams", "");
  out.push(table(["stream", "from → to", "verified", "corrupted", "lost", "re-sent", "connections", "stalls"],
    r.streams.map((s) => [String(s.id), `${s.from} → ${s.to}`, fmtBytes(s.verifiedBytes), String(s.corruptedBytes), String(s.lostBytes), fmtBytes(s.resentBytes), String(s.connections), String(s.stalls)])), "");

  out.push("### Daemon RSS", "", "Per node: the first sample of its first process once ready, the last sample of its last process, the highest sample of any; then every process, start → end.", "");
  out.push(table(["node", "start", "end", "max", "processes (start → end, max)"], r.rss.map((n) => {
    const first = n.processes[0];
    const last = n.processes[n.processes.length - 1];
    const maxes = n.processes.flatMap((p) => (p.maxKb === null ? [] : [p.maxKb]));
    return [n.node, fmtKb(first?.firstKb ?? null), fmtKb(last?.lastKb ?? null), fmtKb(maxes.length === 0 ? null : Math.max(...maxes)),
      n.processes.map((p) => `${fmtKb(p.firstKb)} → ${fmtKb(p.lastKb)} (${fmtKb(p.maxKb)})`).join("; ")];
  })), "");

  out.push("### Underlay faults", "");
  out.push(table(["node egress", "datagrams", "dropped", "loss", "mean delay", "max delay", "queue overruns"], r.faults.map((f) => [f.node, String(f.seen), String(f.dropped),
    f.seen === 0 ? "—" : `${((100 * f.dropped) / f.seen).toFixed(2)} %`, `${f.meanDelayMs.toFixed(2)} ms`, `${f.maxDelayMs.toFixed(2)} ms`, String(f.queueDropped)])), "");
  if (r.falseDeaths.length > 0) {
    out.push("### False deaths", "", table(["at (s)", "observer", "member", "state", "seen in"], r.falseDeaths.map((d) => [d.atS.toFixed(1), d.observer, d.member, d.state, d.source])), "");
  }
  if (r.warnings.length > 0) out.push("### Warnings", "", ...r.warnings.map((w) => `- ${w}`), "");
  return out.join("\n");
}
