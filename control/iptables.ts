// Egress and forwarding rules (--ip-masq, --forward-accept), the thin shell: finds the iptables
// programs, runs iptables-save and `iptables-restore --noflush` (one transaction per table) with
// what control/iptables-rules.ts plans, re-checks every reconcile period and removes everything
// of vxmesh's at stop. Programs run in the daemon's network namespace, as children of the
// daemon, so they hold what the daemon keeps for them after its capability drop
// (`execCapabilities`).

import { execFile } from "node:child_process";
import { accessSync, closeSync, constants, openSync } from "node:fs";
import { delimiter, join } from "node:path";
import type { Logger } from "pino";
import type { Parsed, Subnet } from "../encap/types";
import {
  allTables, decideBackend, desiredChains, holdsOwned, parseIptablesSave, planEnsure, planRemove,
  type BackendChoice, type BackendDecision, type EgressPolicy, type IptablesBackend, type RestorePlan, type SavedTables, type Table,
} from "./iptables-rules";
import { Serial } from "./serial";

/** Where iptables lives on Debian and most distributions, also when PATH (a service's, a non-root user's) lacks it. */
const SBIN_DIRS = ["/usr/local/sbin", "/usr/sbin", "/sbin"];
const EXEC_TIMEOUT_MS = 15_000;
/** iptables-restore -w: seconds to wait for the xtables lock (legacy; nft ignores it). */
const LOCK_WAIT_S = 5;
const DEFAULT_LOCK = "/run/xtables.lock";

/** linux/capability.h. */
const CAP_NET_ADMIN = 1n << 12n;
const CAP_NET_RAW = 1n << 13n;

export interface IptablesTools {
  backend: IptablesBackend;
  save: string;
  restore: string;
  /** The environment the programs run with (XTABLES_LOCKFILE when the usual lock cannot be used). */
  env: NodeJS.ProcessEnv;
}

/** A program's absolute path: the first executable `name` in PATH, then in the sbin directories. */
export function findProgram(name: string, pathEnv: string = process.env["PATH"] ?? "", extraDirs: readonly string[] = SBIN_DIRS): string | undefined {
  const dirs = [...pathEnv.split(delimiter).filter((d) => d.startsWith("/")), ...extraDirs];
  for (const dir of dirs) {
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Capabilities iptables-<backend>-save/-restore need: CAP_NET_ADMIN; legacy's raw socket also CAP_NET_RAW. */
export function execCapabilities(backend: IptablesBackend): bigint {
  return backend === "legacy" ? CAP_NET_ADMIN | CAP_NET_RAW : CAP_NET_ADMIN;
}

export interface EgressOptions {
  masquerade: boolean;
  forwardAccept: boolean;
  backend: BackendChoice;
  /** For a private xtables lock when the node's cannot be opened (legacy only). */
  runDir: string;
  /** Directories searched for the programs instead of PATH and the sbin directories (tests). */
  searchDirs?: readonly string[];
}

/** Which flags want iptables: for messages, and as the operator would turn them off. */
function flagsInUse(o: EgressOptions): { label: string; names: string; off: string } {
  const on = [...(o.masquerade ? ["--ip-masq"] : []), ...(o.forwardAccept ? ["--forward-accept"] : [])];
  return {
    label: on.join(", "),
    names: on.length === 2 ? "--ip-masq and --forward-accept (both on by default)" : `${on[0] as string} (on by default)`,
    off: on.map((f) => `${f}=false`).join(" "),
  };
}

/** The start-up error when a back end's programs are missing. */
export function missingProgramsMessage(o: EgressOptions, backend: IptablesBackend | "any", missing: readonly string[]): string {
  const f = flagsInUse(o);
  const what = backend === "any"
    ? "neither iptables-nft-save/-restore nor iptables-legacy-save/-restore is installed"
    : `${missing.join(" and ")} ${missing.length === 1 ? "is" : "are"} not installed${o.backend === "auto" ? ` (the node's rules are in the ${backend} back end)` : ` (--iptables-backend ${o.backend})`}`;
  return `${f.names} need${f.names.includes(" and ") ? "" : "s"} iptables: ${what}; looked in PATH and ${SBIN_DIRS.join(", ")}. ` +
    `Install the Debian package iptables (apt-get install iptables), or start with ${f.off}`;
}

function locate(backend: IptablesBackend, o: EgressOptions): { save?: string; restore?: string } {
  const find = (name: string): string | undefined => (o.searchDirs === undefined ? findProgram(name) : findProgram(name, "", o.searchDirs));
  const save = find(`iptables-${backend}-save`);
  const restore = find(`iptables-${backend}-restore`);
  return { ...(save === undefined ? {} : { save }), ...(restore === undefined ? {} : { restore }) };
}

function run(file: string, args: readonly string[], env: NodeJS.ProcessEnv, input?: string): Promise<Parsed<string>> {
  return new Promise((resolve) => {
    const child = execFile(file, [...args], { encoding: "utf8", timeout: EXEC_TIMEOUT_MS, killSignal: "SIGKILL", maxBuffer: 256 * 1024 * 1024, env },
      (err, stdout, stderr) => {
        if (err === null) { resolve({ ok: true, value: stdout }); return; }
        const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean; signal?: string };
        const how = typeof e.code === "string" ? e.code : e.killed === true ? `killed after ${EXEC_TIMEOUT_MS} ms` : e.signal ? `killed by ${e.signal}` : `exit ${String(e.code)}`;
        const text = stderr.trim().split("\n").filter((l) => l !== "").slice(-3).join("; ");
        resolve({ ok: false, error: `${file} ${args.join(" ")}: ${how}${text === "" ? "" : `: ${text}`}` });
      });
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(input ?? "");
  });
}

/** Adds what an operator can do about a failure that looks like missing privileges. */
function explain(error: string, backend: IptablesBackend): string {
  if (!/Permission denied|Operation not permitted|you must be root|can't open lock file/i.test(error)) return error;
  return `${error} (iptables-${backend} needs ${backend === "legacy" ? "CAP_NET_ADMIN and CAP_NET_RAW, and the xtables lock file" : "CAP_NET_ADMIN"})`;
}

async function save(tools: IptablesTools, table?: Table): Promise<Parsed<SavedTables>> {
  const out = await run(tools.save, table === undefined ? [] : ["-t", table], tools.env);
  if (!out.ok) return { ok: false, error: explain(out.error, tools.backend) };
  const parsed = parseIptablesSave(out.value);
  return parsed.ok ? parsed : { ok: false, error: `${tools.save}: cannot read its output: ${parsed.error}` };
}

async function restore(tools: IptablesTools, text: string): Promise<Parsed<void>> {
  const out = await run(tools.restore, ["--noflush", "-w", String(LOCK_WAIT_S)], tools.env, text);
  if (out.ok) return { ok: true, value: undefined };
  const lines = text.trimEnd().split("\n");
  const shown = lines.length > 16 ? [...lines.slice(0, 16), `… (${lines.length - 16} more lines)`] : lines;
  return { ok: false, error: `${explain(out.error, tools.backend)}; input:\n${shown.join("\n")}` };
}

/**
 * The legacy back end serialises writers with a lock file (XTABLES_LOCKFILE, else
 * /run/xtables.lock), opened with O_CREAT as iptables opens it, and iptables-legacy-restore exits
 * when it cannot open it. When this process cannot (a non-root daemon and root's 0600 file, a
 * read-only /run), iptables could not either: a lock of its own in the run dir is used instead,
 * and the caller warns.
 */
function lockEnv(runDir: string): { env: NodeJS.ProcessEnv; fallback?: { wanted: string; used: string; reason: string } } {
  const wanted = process.env["XTABLES_LOCKFILE"] || DEFAULT_LOCK;
  try {
    closeSync(openSync(wanted, constants.O_CREAT | constants.O_RDONLY, 0o600));
    return { env: process.env };
  } catch (err) {
    const used = join(runDir, "xtables.lock");
    return { env: { ...process.env, XTABLES_LOCKFILE: used }, fallback: { wanted, used, reason: (err as NodeJS.ErrnoException).code ?? (err as Error).message } };
  }
}

export interface PreparedEgress {
  readonly tools: IptablesTools;
  readonly decision: BackendDecision;
  /** The other back end's tools and tables, when they hold leftovers of vxmesh (a back end switch). */
  readonly other: { tools: IptablesTools; saved: SavedTables } | undefined;
  /** Capabilities iptables needs after the daemon's capability drop. */
  readonly capabilities: bigint;
}

/** iptables-legacy-save without -t lists the tables in /proc/net/ip_tables_names, which only root may read. */
const CANNOT_LIST = /Failed to list table names/;

/**
 * Before anything is made: finds the programs, decides the back end (reading both back ends'
 * rules whole, as iptables-wrapper does: `-t` would make a legacy table that is not there) and
 * checks that the chosen one can be read. Undefined when neither --ip-masq nor
 * --forward-accept is on: then iptables is never run.
 */
export async function prepareEgress(o: EgressOptions, log: Logger): Promise<Parsed<PreparedEgress | undefined>> {
  if (!o.masquerade && !o.forwardAccept) return { ok: true, value: undefined };
  const found = { nft: locate("nft", o), legacy: locate("legacy", o) };
  const complete = (b: IptablesBackend): boolean => found[b].save !== undefined && found[b].restore !== undefined;
  // Only a legacy back end that will be written to looks at the lock (opening it creates it).
  const toolsOf = (b: IptablesBackend): IptablesTools => ({
    backend: b, save: found[b].save as string, restore: found[b].restore as string, env: b === "legacy" ? lockEnv(o.runDir).env : process.env,
  });
  if (o.backend === "auto" && !complete("nft") && !complete("legacy")) return { ok: false, error: missingProgramsMessage(o, "any", []) };

  // Both back ends' rules, read once: for the decision, and to find leftovers of a switch.
  const saves: Record<IptablesBackend, SavedTables | undefined> = { nft: undefined, legacy: undefined };
  const texts: Record<IptablesBackend, string | undefined> = { nft: undefined, legacy: undefined };
  const failed: Partial<Record<IptablesBackend, string>> = {};
  for (const b of ["nft", "legacy"] as const) {
    if (!complete(b)) continue;
    const out = await run(found[b].save as string, [], process.env);
    if (!out.ok) { failed[b] = out.error; continue; }
    texts[b] = out.value;
    const parsed = parseIptablesSave(out.value);
    if (parsed.ok) saves[b] = parsed.value;
  }
  const decision: BackendDecision = o.backend === "auto" ? decideBackend(texts) : { backend: o.backend, reason: "--iptables-backend" };
  const backend = decision.backend;
  const otherBackend: IptablesBackend = backend === "nft" ? "legacy" : "nft";
  if (!complete(backend)) {
    const missing = [`iptables-${backend}-save`, `iptables-${backend}-restore`].filter((_, i) => (i === 0 ? found[backend].save : found[backend].restore) === undefined);
    return { ok: false, error: missingProgramsMessage(o, backend, missing) };
  }
  const unreadable = failed[otherBackend];
  if (o.backend === "auto" && unreadable !== undefined) {
    log.warn({ chosen: backend, unreadable: explain(unreadable, otherBackend) },
      `could not read the ${otherBackend} rules to choose a back end; if this node's rules are in iptables-${otherBackend}, set --iptables-backend ${otherBackend}`);
  }
  const own = failed[backend];
  // A non-root daemon cannot list legacy tables; it reads its own tables one by one (-t) instead.
  if (own !== undefined && !(backend === "legacy" && CANNOT_LIST.test(own))) {
    return { ok: false, error: `${flagsInUse(o).label}: reading the ${backend} rules failed: ${explain(own, backend)}` };
  }
  const tools = toolsOf(backend);
  if (backend === "legacy") {
    const lock = lockEnv(o.runDir);
    if (lock.fallback !== undefined) {
      log.warn({ lock: lock.fallback.wanted, reason: lock.fallback.reason, using: lock.fallback.used },
        "cannot open the xtables lock: iptables-legacy runs with a lock of its own, so it is not serialised with other iptables writers on this node (legacy iptables replaces whole tables: a change another writer makes in the same instant can be lost); give the daemon's user access to the lock file, or mount the host's");
    }
  }
  const otherSaved = saves[otherBackend];
  const other = complete(otherBackend) && otherSaved !== undefined && holdsOwned(otherSaved) ? { tools: toolsOf(otherBackend), saved: otherSaved } : undefined;
  return { ok: true, value: { tools, decision, other, capabilities: execCapabilities(backend) } };
}

/** The FORWARD chain's policy in the back end the daemon would choose (for `vxmesh doctor`). */
export interface ForwardPolicy {
  backend: IptablesBackend;
  /** Why that back end. */
  reason: string;
  /** "ACCEPT", "DROP"; undefined when the back end has no filter table yet (then nothing filters: ACCEPT). */
  policy: string | undefined;
}

/**
 * Reads the FORWARD policy without changing anything: both back ends' rules whole (never `-t`,
 * which would make a table), the back end decided as at start. An error says what is missing.
 */
export async function readForwardPolicy(o: EgressOptions): Promise<Parsed<ForwardPolicy>> {
  const found = { nft: locate("nft", o), legacy: locate("legacy", o) };
  const texts: Record<IptablesBackend, string | undefined> = { nft: undefined, legacy: undefined };
  const errors: string[] = [];
  for (const b of ["nft", "legacy"] as const) {
    const file = found[b].save;
    if (file === undefined) continue;
    const out = await run(file, [], process.env);
    if (out.ok) texts[b] = out.value;
    else errors.push(explain(out.error, b));
  }
  const decision: BackendDecision = o.backend === "auto" ? decideBackend(texts) : { backend: o.backend, reason: "--iptables-backend" };
  const text = texts[decision.backend];
  if (text === undefined) {
    return { ok: false, error: found[decision.backend].save === undefined ? missingProgramsMessage(o, decision.backend, [`iptables-${decision.backend}-save`]) : (errors[0] ?? "iptables-save failed") };
  }
  const parsed = parseIptablesSave(text);
  if (!parsed.ok) return { ok: false, error: `iptables-${decision.backend}-save: cannot read its output: ${parsed.error}` };
  return { ok: true, value: { backend: decision.backend, reason: decision.reason, policy: parsed.value.get("filter")?.chains.get("FORWARD") } };
}

/** What one pass changed. */
export interface PassResult {
  changes: string[];
  notes: string[];
}

/**
 * Holds vxmesh's chains and jumps in the chosen back end: `start` applies them (and removes
 * leftovers elsewhere), a timer re-checks them every `intervalMs` and repairs drift, `stop`
 * removes them. Passes run one at a time; none runs after stop.
 */
export class EgressRules {
  private readonly passes = new Serial();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private inFlight = false;

  private constructor(
    private readonly prepared: PreparedEgress,
    private readonly policy: () => EgressPolicy,
    private readonly log: Logger,
  ) {}

  /**
   * Applies the rules (an error when that fails: the caller stops the start) and starts the
   * periodic re-check. `cidrs` is asked on every pass, so changed peers change the rules.
   */
  static async start(
    prepared: PreparedEgress, o: { masquerade: boolean; forwardAccept: boolean; cidrs: () => readonly Subnet[]; intervalMs: number }, log: Logger,
  ): Promise<Parsed<EgressRules>> {
    const rules = new EgressRules(prepared, () => ({ masquerade: o.masquerade, forwardAccept: o.forwardAccept, clusterCidrs: o.cidrs() }), log);
    const flags = [o.masquerade ? "--ip-masq" : "", o.forwardAccept ? "--forward-accept" : ""].filter((f) => f !== "").join(", ");
    if (prepared.other !== undefined) {
      const removed = await rules.applyPlan(prepared.other.tools, planRemove(prepared.other.saved));
      if (removed.ok) log.info({ backend: prepared.other.tools.backend, changes: removed.value.changes }, "removed vxmesh iptables rules left in the other back end");
      else log.warn({ err: removed.error }, "could not remove vxmesh iptables rules left in the other back end");
    }
    // The first pass reads whole tables when it can, so chains no longer wanted (a restart with
    // other flags) go too; a non-root legacy daemon reads only the tables it writes.
    const whole = await save(prepared.tools);
    const first = whole.ok
      ? await rules.applyPlan(prepared.tools, planEnsure(desiredChains(rules.policy()), whole.value, allTables()))
      : await rules.pass(rules.wantedTables());
    if (!first.ok) {
      // One table may have been written before the other failed: leave nothing behind.
      await rules.removeFrom(prepared.tools, rules.wantedTables());
      return { ok: false, error: `${flags}: applying the iptables rules failed: ${first.error}` };
    }
    const again = await rules.pass(rules.wantedTables());
    if (again.ok && again.value.changes.length > 0) {
      log.warn({ changes: again.value.changes }, "iptables rules do not read back as written; every pass will rewrite them");
    }
    // A pass still running (iptables waiting for the xtables lock) is not queued behind.
    rules.timer = setInterval(() => {
      if (rules.inFlight) return;
      rules.inFlight = true;
      void rules.reconcile().finally(() => { rules.inFlight = false; });
    }, o.intervalMs);
    rules.timer.unref();
    log.info({
      backend: prepared.tools.backend, why: prepared.decision.reason, masquerade: o.masquerade, forwardAccept: o.forwardAccept,
      chains: desiredChains(rules.policy()).map((c) => `${c.table} ${c.name}`), changes: first.value.changes,
    }, "iptables rules in place");
    for (const note of first.value.notes) log.warn(note);
    return { ok: true, value: rules };
  }

  /** One re-check: reads the tables of our chains and repairs what differs. */
  reconcile(): Promise<Parsed<PassResult>> {
    return this.serial(async () => {
      if (this.stopped) return { ok: true, value: { changes: [], notes: [] } };
      const r = await this.pass(this.wantedTables());
      if (!r.ok) this.log.warn({ err: r.error }, "iptables re-check failed");
      else if (r.value.changes.length > 0) this.log.warn({ changes: r.value.changes }, "iptables rules had drifted from what vxmesh owns; repaired");
      return r;
    });
  }

  /** Stops the re-check and removes our chains and jumps; nothing else. */
  stop(): Promise<Parsed<PassResult>> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    return this.serial(async () => {
      if (this.stopped) return { ok: true, value: { changes: [], notes: [] } };
      this.stopped = true;
      const r = await this.removeFrom(this.prepared.tools, this.wantedTables());
      if (r.ok) this.log.info({ changes: r.value.changes }, "iptables rules removed");
      else this.log.warn({ err: r.error }, "removing the iptables rules failed");
      for (const note of r.ok ? r.value.notes : []) this.log.warn(note);
      return r;
    });
  }

  private wantedTables(): Table[] {
    return [...new Set(desiredChains(this.policy()).map((c) => c.table))];
  }

  /** The tables one by one (-t): only tables vxmesh writes, so reading never makes one that was not there. */
  private async readTables(tools: IptablesTools, tables: readonly Table[]): Promise<Parsed<SavedTables>> {
    const merged: SavedTables = new Map();
    for (const t of tables) {
      const s = await save(tools, t);
      if (!s.ok) return s;
      const got = s.value.get(t);
      if (got !== undefined) merged.set(t, got);
    }
    return { ok: true, value: merged };
  }

  private async pass(tables: readonly Table[]): Promise<Parsed<PassResult>> {
    const saved = await this.readTables(this.prepared.tools, tables);
    if (!saved.ok) return saved;
    return this.applyPlan(this.prepared.tools, planEnsure(desiredChains(this.policy()), saved.value, tables));
  }

  private async removeFrom(tools: IptablesTools, tables: readonly Table[]): Promise<Parsed<PassResult>> {
    const saved = await this.readTables(tools, tables);
    if (!saved.ok) return saved;
    return this.applyPlan(tools, planRemove(saved.value, tables));
  }

  private async applyPlan(tools: IptablesTools, plan: RestorePlan): Promise<Parsed<PassResult>> {
    if (plan.restore !== undefined) {
      const applied = await restore(tools, plan.restore);
      if (!applied.ok) return applied;
    }
    return { ok: true, value: { changes: plan.changes, notes: plan.notes } };
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    return this.passes.run(fn);
  }
}
