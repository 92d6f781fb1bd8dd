// `npm run soak` flags: parsing and validation, pure (errors as values).

import type { SoakOptions } from "./soak-report";

export const SOAK_DEFAULTS: SoakOptions = {
  durationMs: 10 * 60_000,
  nodes: 5,
  intervalMs: 60_000,
  loss: 0.05,
  delayMs: 2,
  jitterMs: 1,
  seed: 1,
  streamRateBytesPerS: 2 * 1024 * 1024,
  probeIntervalMs: 100,
  recoveryTimeoutMs: 60_000,
  stallMs: 3000,
};

export interface SoakCli {
  options: SoakOptions;
  jsonFile: string | undefined;
  help: boolean;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

export const SOAK_USAGE = `usage: npm run soak -- [flags]   (or: node dist/bench/soak.js [flags])

Runs real vxmesh daemons in a network-namespace lab under underlay loss and jitter, kills one
with SIGKILL and restarts it every interval (round-robin), and checks membership, traffic and
byte streams all along. Prints a Markdown report; exit 0 when it passed, 1 when not.

  --duration D     kill schedule length, e.g. 600, 90s, 10m (default 10m; at least one interval)
  --nodes N        nodes, one pod each, 2–32 (default 5)
  --interval D     time between kills, at least 5s (default 60s)
  --loss P         loss per datagram on each node-to-node path, percent 0–50 (default 5)
  --delay MS       one-way delay per path, ms 0–1000 (default 2)
  --jitter MS      standard deviation of that delay, ms 0–1000 (default 1)
  --seed N         seed of the fault pattern and stream contents, 0–4294967295 (default 1)
  --stream-rate R  bytes per second per checked stream, e.g. 2M, 512K, 0 = unlimited (default 2M)
  --json FILE      also write the report as JSON to FILE
  --help           this text`;

function duration(flag: string, text: string, minMs: number): Parsed<number> {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text);
  const ms = m === null ? NaN : Number(m[1]) * (m[2] === "ms" ? 1 : m[2] === "m" ? 60_000 : 1000);
  if (!Number.isFinite(ms) || ms < minMs) {
    return { ok: false, error: `${flag} "${text}" is not valid: expected a duration of at least ${minMs / 1000} s, like 90, 90s or 10m` };
  }
  return { ok: true, value: Math.round(ms) };
}

function number(flag: string, text: string, lo: number, hi: number, what: string, integer = false): Parsed<number> {
  const v = /^-?\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
  if (!Number.isFinite(v) || v < lo || v > hi || (integer && !Number.isInteger(v))) {
    return { ok: false, error: `${flag} "${text}" is not valid: expected ${what} from ${lo} to ${hi}` };
  }
  return { ok: true, value: v };
}

function rate(flag: string, text: string): Parsed<number> {
  const m = /^(\d+(?:\.\d+)?)([KkMm])?$/.exec(text);
  if (m === null) return { ok: false, error: `${flag} "${text}" is not valid: expected bytes per second like 2M, 512K or 0 (unlimited)` };
  const unit = m[2]?.toUpperCase() === "M" ? 1024 * 1024 : m[2]?.toUpperCase() === "K" ? 1024 : 1;
  return { ok: true, value: Math.round(Number(m[1]) * unit) };
}

/** Parses the soak's command line (without node and the script). */
export function parseSoakArgs(argv: readonly string[]): Parsed<SoakCli> {
  const o: SoakOptions = { ...SOAK_DEFAULTS };
  let jsonFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--help" || arg === "-h") return { ok: true, value: { options: o, jsonFile, help: true } };
    const eq = arg.indexOf("=");
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const known = ["--duration", "--nodes", "--interval", "--loss", "--delay", "--jitter", "--seed", "--stream-rate", "--json"];
    if (!known.includes(flag)) return { ok: false, error: `unknown flag "${arg}": expected one of ${known.join(", ")}, --help` };
    let value: string;
    if (eq > 0) value = arg.slice(eq + 1);
    else {
      const next = argv[++i];
      if (next === undefined) return { ok: false, error: `${flag} needs a value` };
      value = next;
    }
    let r: Parsed<number> = { ok: true, value: 0 };
    switch (flag) {
      case "--duration": r = duration(flag, value, 1000); if (r.ok) o.durationMs = r.value; break;
      case "--interval": r = duration(flag, value, 5000); if (r.ok) o.intervalMs = r.value; break;
      case "--nodes": r = number(flag, value, 2, 32, "an integer", true); if (r.ok) o.nodes = r.value; break;
      case "--loss": r = number(flag, value.replace(/%$/, ""), 0, 50, "a percentage"); if (r.ok) o.loss = r.value / 100; break;
      case "--delay": r = number(flag, value.replace(/ms$/, ""), 0, 1000, "milliseconds"); if (r.ok) o.delayMs = r.value; break;
      case "--jitter": r = number(flag, value.replace(/ms$/, ""), 0, 1000, "milliseconds"); if (r.ok) o.jitterMs = r.value; break;
      case "--seed": r = number(flag, value, 0, 0xffffffff, "an integer", true); if (r.ok) o.seed = r.value; break;
      case "--stream-rate": r = rate(flag, value); if (r.ok) o.streamRateBytesPerS = r.value; break;
      case "--json":
        if (value === "") return { ok: false, error: `--json "" is not valid: expected a file name` };
        jsonFile = value;
        break;
    }
    if (!r.ok) return r;
  }
  if (o.durationMs < o.intervalMs) {
    return { ok: false, error: `--duration ${o.durationMs / 1000} s is shorter than --interval ${o.intervalMs / 1000} s: expected at least one kill` };
  }
  return { ok: true, value: { options: o, jsonFile, help: false } };
}
