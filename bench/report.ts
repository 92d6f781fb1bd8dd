// Bench results and their three renderings (docs/DESIGN.md §7): JSON, a Markdown table with a
// ratio-to-kernel column per path, and a self-contained SVG bar chart of those ratios.
// Everything here is a pure function of its arguments (no I/O, no clock), so the tests can
// pin the shapes down; bench/bench.ts measures and writes the files.

// ---------------------------------------------------------------------------------------------
// Names

export const PATH_NAMES = ["kernel", "vxmesh", "vxmesh-poll", "fastd"] as const;
export type PathName = (typeof PATH_NAMES)[number];

/** The flags that make the vxmesh-poll path: vxmesh tuned for latency by busy-polling for 2 ms. */
export const POLL_PATH_FLAGS: readonly string[] = ["--busy-poll", "2000"];
/**
 * Flags every vxmesh path starts with (--daemon-args come after and win): the kernel path runs no
 * iptables rules, so neither do the daemons; with --ip-masq's MASQUERADE in place conntrack
 * tracks every packet of the node, which costs the userspace path about a fifth (BENCHMARKS.md).
 */
export const DATA_PATH_FLAGS: readonly string[] = ["--ip-masq=false", "--forward-accept=false"];

export const SCENARIO_NAMES = ["tcp1", "tcp4", "udp64", "udp1400", "rtt"] as const;
export type ScenarioName = (typeof SCENARIO_NAMES)[number];

/** The path every ratio is taken against. */
export const BASELINE_PATH: PathName = "kernel";

/** What one scenario reports; a scenario may report several figures (tcp1: Gbit/s, CPU, RSS). */
export interface FigureDef {
  readonly scenario: ScenarioName;
  /** Key within the scenario, e.g. "gbps"; `${scenario}.${key}` names the figure. */
  readonly key: string;
  /** Row label in the table, e.g. "tcp1 — one TCP stream". */
  readonly label: string;
  readonly unit: string;
  /** Which way is better; "neither" for a figure that describes the run (not charted). */
  readonly better: "higher" | "lower" | "neither";
  /** Decimal places in the table. */
  readonly digits: number;
  /** Drawn in the SVG chart. */
  readonly chart: boolean;
  /** No ratio to the kernel: loss, where the kernel's is about 0 and a ratio says nothing. */
  readonly noRatio?: boolean;
  /** Short label under the chart's bar group. */
  readonly chartLabel?: string;
}

export const FIGURES: readonly FigureDef[] = [
  { scenario: "tcp1", key: "gbps", label: "tcp1 — one TCP stream", unit: "Gbit/s", better: "higher", digits: 2, chart: true, chartLabel: "tcp1" },
  { scenario: "tcp1", key: "cpu_pct", label: "tcp1 — daemon CPU (busier node)", unit: "% of a core", better: "lower", digits: 0, chart: false },
  { scenario: "tcp1", key: "rss_mb", label: "tcp1 — daemon RSS (larger node)", unit: "MB", better: "lower", digits: 1, chart: false },
  { scenario: "tcp4", key: "gbps", label: "tcp4 — four TCP streams", unit: "Gbit/s", better: "higher", digits: 2, chart: true, chartLabel: "tcp4" },
  { scenario: "udp64", key: "kpps", label: "udp64 — 64-byte UDP received", unit: "kpps", better: "higher", digits: 0, chart: true, chartLabel: "udp64 pps" },
  { scenario: "udp64", key: "loss_pct", label: "udp64 — loss (offered without limit)", unit: "%", better: "lower", digits: 1, chart: false, noRatio: true },
  { scenario: "udp1400", key: "gbps", label: "udp1400 — 1400-byte UDP received", unit: "Gbit/s", better: "higher", digits: 2, chart: true, chartLabel: "udp1400" },
  { scenario: "udp1400", key: "loss_pct", label: "udp1400 — loss (offered without limit)", unit: "%", better: "lower", digits: 1, chart: false, noRatio: true },
  { scenario: "rtt", key: "p50_us", label: "rtt — round trip p50", unit: "µs", better: "lower", digits: 0, chart: true, chartLabel: "rtt p50" },
  { scenario: "rtt", key: "p99_us", label: "rtt — round trip p99", unit: "µs", better: "lower", digits: 0, chart: true, chartLabel: "rtt p99" },
  { scenario: "rtt", key: "cpu_pct", label: "rtt — daemon CPU (busier node)", unit: "% of a core", better: "lower", digits: 0, chart: false },
  { scenario: "rtt", key: "same_cpu_pct", label: "rtt — both pods on one CPU", unit: "% of the time", better: "neither", digits: 0, chart: false, noRatio: true },
];

export function figureId(f: Pick<FigureDef, "scenario" | "key">): string {
  return `${f.scenario}.${f.key}`;
}

// ---------------------------------------------------------------------------------------------
// Results

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  kernel: string;
  node: string;
  /** ISO 8601, when the run started. */
  date: string;
  hostname: string;
  /** 1-minute load average at start and end: other work on the machine skews the figures. */
  loadAvgStart: number;
  loadAvgEnd: number;
  /** Tool versions as they print them ("iperf 3.12", "fastd v22"), where known. */
  tools: Record<string, string>;
}

export interface BenchConfig {
  paths: PathName[];
  scenarios: ScenarioName[];
  seconds: number;
  repeat: number;
  daemonArgs: string[];
  /** How the UDP load was generated and counted ("" when no UDP scenario ran). */
  udpGenerator: string;
  /** How round trips were timed ("" when rtt did not run). */
  rttMethod: string;
  rttSamples: number;
  /** CPUs the sending and receiving pods were pinned to (--pod-cpus); null: the scheduler's choice. */
  podCpus: [number, number] | null;
  /** The command line, for the record. */
  command: string;
}

export interface FigureResult {
  unit: string;
  /** One value per successful repetition. */
  values: number[];
  median: number | null;
}

export interface ScenarioResult {
  /** Figures by key (see FIGURES). */
  figures: Record<string, FigureResult>;
  /** Per repetition: whatever else was measured (per-node CPU, sent packets …). */
  details: Record<string, unknown>[];
  /** Messages of failed repetitions. */
  errors: string[];
}

export interface PathResult {
  path: PathName;
  /** Set when the path could not be set up at all; then `scenarios` is empty. */
  error?: string;
  /** How the path was set up where that differs from the plain lab. */
  notes?: string[];
  /** Seconds the lab took to build and become reachable. */
  setupS?: number;
  scenarios: Partial<Record<ScenarioName, ScenarioResult>>;
}

export interface BenchResults {
  schema: "vxmesh-bench/1";
  machine: MachineInfo;
  config: BenchConfig;
  /** Wall-clock seconds of the whole run. */
  durationS: number;
  paths: PathResult[];
}

// ---------------------------------------------------------------------------------------------
// Statistics

/** Median of the finite values; the mean of the middle two for an even count; null if none. */
export function median(values: readonly number[]): number | null {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
}

/**
 * Nearest-rank percentile (p in 0..100) of the finite values: the smallest value with at least
 * p % of the values at or below it. null if there are none.
 */
export function percentile(values: readonly number[], p: number): number | null {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const rank = Math.max(1, Math.ceil((Math.min(100, Math.max(0, p)) / 100) * v.length));
  return v[rank - 1] as number;
}

/** value ÷ baseline, or null when either is missing or the baseline is not positive. */
export function ratio(value: number | null | undefined, baseline: number | null | undefined): number | null {
  if (value === null || value === undefined || baseline === null || baseline === undefined) return null;
  if (!Number.isFinite(value) || !Number.isFinite(baseline) || baseline <= 0) return null;
  return value / baseline;
}

export function figureResult(unit: string, values: readonly number[]): FigureResult {
  const finite = values.filter((x) => Number.isFinite(x));
  return { unit, values: finite, median: median(finite) };
}

/** The median of a figure on a path, or null when it was not measured. */
export function medianOf(results: BenchResults, path: PathName, f: Pick<FigureDef, "scenario" | "key">): number | null {
  const p = results.paths.find((x) => x.path === path);
  return p?.scenarios[f.scenario]?.figures[f.key]?.median ?? null;
}

/** median(path) ÷ median(kernel) for a figure; null when either is missing. */
export function ratioToBaseline(results: BenchResults, path: PathName, f: Pick<FigureDef, "scenario" | "key">): number | null {
  return ratio(medianOf(results, path, f), medianOf(results, BASELINE_PATH, f));
}

/** The figures that belong to the scenarios of the run, in table order. */
export function figuresOf(results: BenchResults): FigureDef[] {
  const scen = new Set<ScenarioName>(results.config.scenarios);
  return FIGURES.filter((f) => scen.has(f.scenario));
}

// ---------------------------------------------------------------------------------------------
// Formatting

export function formatNumber(v: number, digits: number): string {
  if (!Number.isFinite(v)) return "n/a";
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits, useGrouping: false });
}

/** A ratio as "0.09×"; two significant decimals below 10, one above. */
export function formatRatio(r: number | null): string {
  if (r === null) return "–";
  if (r >= 10) return `${r.toFixed(1)}×`;
  if (r >= 0.1) return `${r.toFixed(2)}×`;
  return `${r.toFixed(3)}×`;
}

/** The table cell of a figure on a path: its median, "n/a" or "failed". */
function cell(results: BenchResults, path: PathResult, f: FigureDef): string {
  if (path.error !== undefined) return "failed";
  const s = path.scenarios[f.scenario];
  if (s === undefined) return "–";
  const m = s.figures[f.key]?.median ?? null;
  if (m === null) return s.errors.length > 0 ? "failed" : "n/a";
  return formatNumber(m, f.digits);
}

function escapeMd(text: string): string {
  return text.replace(/\|/g, "\\|");
}

/**
 * The results table: one row per figure; a column per path with its median, and after every
 * path but the kernel a "÷ kernel" column with the ratio of the medians.
 */
export function renderTable(results: BenchResults): string {
  const paths = results.paths;
  const head = ["figure", "unit"];
  const align = ["---", "---"];
  for (const p of paths) {
    head.push(p.path);
    align.push("---:");
    if (p.path !== BASELINE_PATH) {
      head.push(`${p.path} ÷ ${BASELINE_PATH}`);
      align.push("---:");
    }
  }
  const rows = [head, align];
  for (const f of figuresOf(results)) {
    const row = [f.label, f.unit];
    for (const p of paths) {
      row.push(cell(results, p, f));
      if (p.path !== BASELINE_PATH) row.push(f.noRatio === true ? "–" : formatRatio(ratioToBaseline(results, p.path, f)));
    }
    rows.push(row);
  }
  return rows.map((r) => `| ${r.map(escapeMd).join(" | ")} |`).join("\n") + "\n";
}

export function describeMachine(m: MachineInfo): string {
  return `${m.cpuModel}, ${m.cores} cores, Linux ${m.kernel}, Node.js ${m.node}`;
}

/** A whole Markdown report: heading, machine, command, table, notes on method and failures. */
export function renderMarkdown(results: BenchResults): string {
  const c = results.config;
  const m = results.machine;
  const lines: string[] = [
    `# vxmesh bench — ${m.date}`,
    "",
    `- machine: ${describeMachine(m)} (host ${m.hostname}; load average ${m.loadAvgStart.toFixed(2)} at start, ${m.loadAvgEnd.toFixed(2)} at end)`,
    `- tools: ${Object.entries(m.tools).map(([k, v]) => `${k} ${v}`).join(", ") || "n/a"}`,
    `- command: \`${c.command}\``,
    `- ${c.repeat} repetition${c.repeat === 1 ? "" : "s"} of ${c.seconds} s per measurement, median shown; run took ${Math.round(results.durationS)} s`,
  ];
  if (c.udpGenerator !== "") lines.push(`- UDP load: ${c.udpGenerator}`);
  if (c.rttMethod !== "") lines.push(`- RTT: ${c.rttMethod}; ${c.rttSamples} samples per repetition, one per millisecond`);
  if (c.podCpus !== null) lines.push(`- pods pinned: the sending pod's processes to CPU ${c.podCpus[0]}, the receiving pod's to CPU ${c.podCpus[1]} (\`--pod-cpus\`), on every path`);
  if (c.daemonArgs.length > 0) lines.push(`- vxmesh daemon flags: \`${c.daemonArgs.join(" ")}\``);
  if (c.paths.includes("vxmesh-poll")) lines.push(`- vxmesh-poll: the vxmesh daemons with \`${POLL_PATH_FLAGS.join(" ")}\`${c.daemonArgs.length > 0 ? " and the flags above" : ""}`);
  lines.push("", renderTable(results).trimEnd(), "");
  lines.push(
    `Ratios are median ÷ the ${BASELINE_PATH} median: above 1 is better for throughput and packet rate, below 1 is better for latency. CPU and RSS have no kernel figure (no process to measure), loss has no ratio (the kernel's is about 0), and the share of time both pods sat on one CPU describes the scheduler's placement, which moves round trips on every path.`,
    "",
  );
  const notes = results.paths.flatMap((p) => (p.notes ?? []).map((n) => `- ${p.path}: ${n}`));
  if (notes.length > 0) lines.push("Notes:", "", ...notes, "");
  const problems: string[] = [];
  for (const p of results.paths) {
    if (p.error !== undefined) problems.push(`- ${p.path}: ${p.error}`);
    for (const [name, s] of Object.entries(p.scenarios)) for (const e of s?.errors ?? []) problems.push(`- ${p.path} ${name}: ${e}`);
  }
  if (problems.length > 0) lines.push("Failures:", "", ...problems, "");
  return lines.join("\n");
}

export function renderJson(results: BenchResults): string {
  return JSON.stringify(results, null, 2) + "\n";
}

// ---------------------------------------------------------------------------------------------
// SVG chart

export const PATH_COLOURS: Record<PathName, string> = {
  kernel: "#6b7280",
  vxmesh: "#2563eb",
  "vxmesh-poll": "#0891b2",
  fastd: "#d97706",
};

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ v (v > 0). */
export function niceCeil(v: number): number {
  if (!(v > 0) || !Number.isFinite(v)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v - 1e-12) return m * p;
  return 10 * p;
}

interface Panel {
  title: string;
  figures: FigureDef[];
}

const r3 = (v: number): string => String(Math.round(v * 1000) / 1000);

/**
 * A grouped bar chart of ratios to the kernel: one panel for throughput and packet rate
 * (higher is better), one for latency (lower is better); a group per figure, a bar per path,
 * bar height proportional to the ratio on the panel's linear scale, a dashed line at 1 (the
 * kernel). Self-contained SVG 1.1; every bar carries data-path, data-figure and data-ratio.
 */
export function renderSvg(results: BenchResults): string {
  const paths = results.paths.map((p) => p.path);
  const charted = figuresOf(results).filter((f) => f.chart);
  const panels: Panel[] = [
    { title: "Throughput and packet rate ÷ kernel (higher is better)", figures: charted.filter((f) => f.better === "higher") },
    { title: "Round-trip latency ÷ kernel (lower is better)", figures: charted.filter((f) => f.better === "lower") },
  ].filter((p) => p.figures.length > 0);

  const barW = 26;
  const barGap = 4;
  const groupGap = 30;
  const left = 56;
  const right = 20;
  const panelH = 220;
  const plotTop = 34; // inside a panel: room for the title
  const plotH = 150;
  const top = 70; // heading + legend
  const groupW = Math.max(1, paths.length) * (barW + barGap) - barGap;
  const maxGroups = Math.max(1, ...panels.map((p) => p.figures.length));
  const width = Math.max(480, left + right + maxGroups * (groupW + groupGap) + groupGap);
  const height = top + Math.max(1, panels.length) * panelH + 10;

  const out: string[] = [];
  out.push(`<?xml version="1.0" encoding="UTF-8"?>`);
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<title>${escapeXml(`vxmesh bench ${results.machine.date}: ratios to the kernel's VXLAN`)}</title>`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="22" font-size="15" font-weight="bold">${escapeXml("vxmesh bench: each path ÷ the kernel's VXLAN (median of " + results.config.repeat + ")")}</text>`);
  out.push(`<text x="${left}" y="40" fill="#555555">${escapeXml(describeMachine(results.machine))}</text>`);
  // Legend
  let lx = left;
  for (const p of paths) {
    out.push(`<rect class="legend" x="${lx}" y="50" width="12" height="12" fill="${PATH_COLOURS[p]}"/>`);
    out.push(`<text x="${lx + 16}" y="60">${escapeXml(p)}</text>`);
    lx += 28 + p.length * 8;
  }

  panels.forEach((panel, pi) => {
    const y0 = top + pi * panelH;
    const base = y0 + plotTop + plotH; // y of ratio 0
    const ratios: number[] = [1];
    for (const f of panel.figures) for (const p of paths) {
      const r = ratioToBaseline(results, p, f);
      if (r !== null) ratios.push(r);
    }
    const scaleMax = niceCeil(Math.max(...ratios) * 1.05);
    const yOf = (r: number): number => base - (r / scaleMax) * plotH;
    out.push(`<g class="panel" data-scale-max="${scaleMax}">`);
    out.push(`<text x="${left}" y="${y0 + 18}" font-weight="bold">${escapeXml(panel.title)}</text>`);
    // Axis with ticks at 0, ½ and the top, and the kernel line at 1.
    out.push(`<line x1="${left}" y1="${base}" x2="${width - right}" y2="${base}" stroke="#333333"/>`);
    out.push(`<line x1="${left}" y1="${r3(yOf(scaleMax))}" x2="${left}" y2="${base}" stroke="#333333"/>`);
    for (const t of [0, scaleMax / 2, scaleMax]) {
      out.push(`<text x="${left - 6}" y="${r3(yOf(t) + 4)}" text-anchor="end" fill="#555555">${t === 0 ? "0" : `${Number(t.toPrecision(3))}×`}</text>`);
    }
    out.push(`<line class="baseline" x1="${left}" y1="${r3(yOf(1))}" x2="${width - right}" y2="${r3(yOf(1))}" stroke="#6b7280" stroke-dasharray="4 3"/>`);
    panel.figures.forEach((f, gi) => {
      const gx = left + groupGap + gi * (groupW + groupGap);
      paths.forEach((p, bi) => {
        const x = gx + bi * (barW + barGap);
        const r = ratioToBaseline(results, p, f);
        if (r === null) {
          out.push(`<text x="${x + barW / 2}" y="${base - 4}" text-anchor="middle" font-size="9" fill="#999999">n/a</text>`);
          return;
        }
        const h = (r / scaleMax) * plotH;
        out.push(`<rect class="bar" data-path="${escapeXml(p)}" data-figure="${escapeXml(figureId(f))}" data-ratio="${r}" x="${x}" y="${r3(base - h)}" width="${barW}" height="${r3(h)}" fill="${PATH_COLOURS[p]}"/>`);
        out.push(`<text x="${x + barW / 2}" y="${r3(base - h - 3)}" text-anchor="middle" font-size="9">${escapeXml(formatRatio(r))}</text>`);
      });
      out.push(`<text x="${gx + groupW / 2}" y="${base + 16}" text-anchor="middle">${escapeXml(f.chartLabel ?? figureId(f))}</text>`);
    });
    out.push(`</g>`);
  });
  if (panels.length === 0) out.push(`<text x="${left}" y="${top + 20}">no charted figures in this run</text>`);
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
