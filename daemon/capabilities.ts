// Least privilege. Before set-up: the daemon must hold CAP_NET_ADMIN (a clear error, not a
// half-made TAP). After set-up: it keeps only what it still needs, on every thread
// (encap/native's dropCapabilities), and checks in /proc that every thread holds exactly that.
//
// What needs what (checked by experiment, see deploy/README.md):
// - CAP_NET_ADMIN, for the daemon's whole life: the TAP (TUNSETIFF), routes and neighbours
//   (programmed at start, repaired later, removed at SIGTERM), disable_ipv6 on the TAP, forced
//   socket buffer sizes, and the CNI handler's bridge, veths and pod addresses.
// - CAP_SYS_ADMIN, for the CNI handler only: it enters a pod's network namespace (setns) to make
//   its netlink socket there, which the kernel allows only with CAP_SYS_ADMIN.
// - CAP_NET_BIND_SERVICE only at start, and only for a configured port below 1024: every socket
//   is bound during set-up, so it is never kept.
// - What a program the daemon runs needs (`ExecNeeds`: iptables-restore for --ip-masq and
//   --forward-accept, CAP_NET_ADMIN, plus CAP_NET_RAW for iptables-legacy): kept by `auto`, and
//   for a non-root daemon also kept inheritable and ambient, the only way an exec'd program
//   without file capabilities gets any. A root daemon's programs get the bounding set ∩ the
//   permitted set (no_new_privs), which already holds them.

import { readdirSync, readFileSync } from "node:fs";
import type { Parsed } from "../encap/types";
import { loadNative, type NativeShim } from "../encap/native";

/** Capability numbers from linux/capability.h; the index is the number. */
const CAP_NAMES = [
  "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
  "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
  "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
  "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
  "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
  "checkpoint_restore",
] as const;

export const CAP_NET_ADMIN = 1n << 12n;
export const CAP_NET_RAW = 1n << 13n;
export const CAP_SYS_ADMIN = 1n << 21n;

/** --keep-caps: `auto`, `all` (drop nothing) or an explicit set. */
export type KeepCaps = { kind: "auto" } | { kind: "all" } | { kind: "set"; mask: bigint };

export function parseKeepCaps(text: string): Parsed<KeepCaps> {
  const valid = "auto, all, or a comma-separated list of capability names that includes net_admin (e.g. net_admin,sys_admin)";
  const t = text.trim().toLowerCase();
  if (t === "auto") return { ok: true, value: { kind: "auto" } };
  if (t === "all") return { ok: true, value: { kind: "all" } };
  let mask = 0n;
  for (const part of t.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const name = part.startsWith("cap_") ? part.slice(4) : part;
    const bit = (CAP_NAMES as readonly string[]).indexOf(name);
    if (bit < 0) return { ok: false, error: `${valid}; ${JSON.stringify(part)} is not a capability` };
    mask |= 1n << BigInt(bit);
  }
  if ((mask & CAP_NET_ADMIN) === 0n) return { ok: false, error: `${valid}: the daemon needs net_admin as long as it runs` };
  return { ok: true, value: { kind: "set", mask } };
}

/** ["net_admin", "sys_admin"]; unknown bits as "cap_<n>". */
export function capNames(mask: bigint): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((mask >> BigInt(bit)) & 1n) out.push(CAP_NAMES[bit] ?? `cap_${bit}`);
  }
  return out;
}

/** One thread's capability sets, as /proc/<pid>/task/<tid>/status shows them. */
export interface ThreadCaps {
  tid: number;
  inheritable: bigint;
  permitted: bigint;
  effective: bigint;
  bounding: bigint;
  ambient: bigint;
  noNewPrivs: boolean;
}

/** Parses the Cap* and NoNewPrivs lines of a status file; undefined when one is missing. */
export function parseStatusCaps(tid: number, text: string): ThreadCaps | undefined {
  const hex = (key: string): bigint | undefined => {
    const m = new RegExp(`^${key}:\\s*([0-9a-f]+)$`, "m").exec(text);
    return m === null ? undefined : BigInt(`0x${m[1] as string}`);
  };
  const nnp = /^NoNewPrivs:\s*([01])$/m.exec(text);
  const [inheritable, permitted, effective, bounding, ambient] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(hex);
  if (inheritable === undefined || permitted === undefined || effective === undefined || bounding === undefined || ambient === undefined || nnp === null) {
    return undefined;
  }
  return { tid, inheritable, permitted, effective, bounding, ambient, noNewPrivs: nnp[1] === "1" };
}

/** Every thread of a process (threads that exit while it reads are skipped). */
export function readThreadCaps(pid: number | "self" = "self"): ThreadCaps[] {
  const dir = `/proc/${pid}/task`;
  const out: ThreadCaps[] = [];
  for (const tid of readdirSync(dir)) {
    let text: string;
    try {
      text = readFileSync(`${dir}/${tid}/status`, "utf8");
    } catch {
      continue;
    }
    const caps = parseStatusCaps(Number(tid), text);
    if (caps !== undefined) out.push(caps);
  }
  return out;
}

/** The sets every thread must show after a drop. */
export interface ExpectedCaps {
  effective: bigint;
  permitted: bigint;
  bounding: bigint;
  /** The inheritable and ambient sets; empty when undefined. */
  ambient?: bigint;
}

/** A set for messages: its names, or its hex mask when it is long. */
function showCaps(mask: bigint): string {
  const names = capNames(mask);
  if (names.length === 0) return "none";
  return names.length <= 6 ? names.join(",") : `0x${mask.toString(16)}`;
}

/**
 * How the threads differ from the expected sets (inheritable and ambient as `want.ambient`,
 * empty by default; no_new_privs set); threads that differ alike share one entry. Empty when
 * all match.
 */
export function threadsNotAt(threads: readonly ThreadCaps[], want: ExpectedCaps): string[] {
  const byDiff = new Map<string, number[]>();
  const ambient = want.ambient ?? 0n;
  for (const t of threads) {
    const diffs: string[] = [];
    if (t.effective !== want.effective) diffs.push(`effective ${showCaps(t.effective)}`);
    if (t.permitted !== want.permitted) diffs.push(`permitted ${showCaps(t.permitted)}`);
    if (t.bounding !== want.bounding) diffs.push(`bounding ${showCaps(t.bounding)}`);
    if (t.inheritable !== ambient) diffs.push(`inheritable ${showCaps(t.inheritable)}`);
    if (t.ambient !== ambient) diffs.push(`ambient ${showCaps(t.ambient)}`);
    if (!t.noNewPrivs) diffs.push("no_new_privs unset");
    if (diffs.length === 0) continue;
    const key = diffs.join(", ");
    byDiff.set(key, [...(byDiff.get(key) ?? []), t.tid]);
  }
  return [...byDiff].map(([diff, tids]) => `${tids.length === 1 ? "thread" : "threads"} ${tids.join(" ")}: ${diff} (want ${showCaps(want.effective)})`);
}

/** The start-up check: undefined when `effective` holds CAP_NET_ADMIN, else the error. */
export function netAdminMissing(effective: bigint): string | undefined {
  if ((effective & CAP_NET_ADMIN) !== 0n) return undefined;
  return `vxmesh daemon needs CAP_NET_ADMIN (to create the TAP and program routes and neighbours); it holds ${capNames(effective).join(", ") || "no capabilities"}. ` +
    "Run it as root, or grant the capability: systemd AmbientCapabilities=CAP_NET_ADMIN, Kubernetes securityContext.capabilities.add: [NET_ADMIN], " +
    "or setpriv --inh-caps=+net_admin --ambient-caps=+net_admin";
}

/** Capabilities a program the daemon runs after the drop must hold, and what it is for. */
export interface ExecNeeds {
  caps: bigint;
  /** e.g. "iptables-nft-restore (--ip-masq, --forward-accept)". */
  why: string;
}

export interface KeepPlan {
  keep: bigint;
  /** Kept inheritable and ambient too, for exec'd programs (non-root only). */
  ambient: bigint;
  /** Things the operator should know (a capability asked for but not held, CNI without CAP_SYS_ADMIN). */
  notes: string[];
}

/**
 * What to keep, given --keep-caps, the permitted set at start, what exec'd programs need and
 * whether the daemon runs as root (whose programs get their capabilities from the bounding set).
 */
export function planKeep(
  want: { kind: "auto" } | { kind: "set"; mask: bigint }, permitted: bigint, exec?: ExecNeeds, root = true,
): KeepPlan {
  const execCaps = exec?.caps ?? 0n;
  const asked = want.kind === "auto" ? CAP_NET_ADMIN | CAP_SYS_ADMIN | execCaps : want.mask;
  const keep = asked & permitted;
  const notes: string[] = [];
  const missing = want.kind === "set" ? asked & ~permitted : 0n;
  if (missing !== 0n) notes.push(`--keep-caps names ${capNames(missing).join(", ")}, which the daemon does not hold; they cannot be kept`);
  if ((keep & CAP_SYS_ADMIN) === 0n) {
    notes.push("without CAP_SYS_ADMIN the CNI handler cannot enter pod network namespaces: CNI ADD and CHECK through vxmesh-cni fail (DEL still works)");
  }
  const lacking = execCaps & ~keep;
  if (exec !== undefined && lacking !== 0n) {
    notes.push(`${exec.why} needs ${capNames(lacking).join(", ")}, which ${want.kind === "set" ? "--keep-caps does not name" : "the daemon does not hold"}: ` +
      "the periodic re-check of its rules and their removal at exit will fail");
  }
  return { keep, ambient: root ? 0n : execCaps & keep, notes };
}

export interface DropOutcome {
  kept: bigint;
  /** Kept inheritable and ambient (for exec'd programs of a non-root daemon). */
  ambient: bigint;
  bounding: bigint;
  threads: number;
  notes: string[];
}

const DROP_DEADLINE_MS = 2000;

/**
 * Drops every capability outside the plan on every thread, then reads every thread's sets back
 * from /proc and compares. An error names the threads that failed and how.
 */
export function dropCapabilities(
  want: { kind: "auto" } | { kind: "set"; mask: bigint }, exec?: ExecNeeds, native: NativeShim = loadNative(),
): Parsed<DropOutcome> {
  const self = readThreadCaps("self").find((t) => t.tid === process.pid);
  if (self === undefined) return { ok: false, error: "cannot read this process's capabilities from /proc/self/task" };
  const plan = planKeep(want, self.permitted, exec, process.geteuid?.() === 0);
  const report = native.dropCapabilities(plan.keep, DROP_DEADLINE_MS, plan.ambient);
  if (!report.ok) {
    const parts = [
      ...(report.error === undefined ? [] : [report.error]),
      ...report.failed.map((f) => `thread ${f.tid} (${f.step}: ${f.code})`),
      ...report.silent.map((tid) => `thread ${tid} (no answer to signal ${report.signal} within ${DROP_DEADLINE_MS} ms)`),
    ];
    return { ok: false, error: `dropping capabilities failed: ${parts.join("; ")}` };
  }
  const notes = [...plan.notes];
  if (!report.boundingReduced) {
    notes.push(`the bounding set still holds ${capNames(report.bounding & ~plan.keep).join(", ")}: shrinking it needs CAP_SETPCAP, so start the daemon with it reduced ` +
      "(systemd CapabilityBoundingSet=, Kubernetes capabilities drop: [ALL], setpriv --bounding-set); no_new_privs already keeps exec from granting any of them");
  }
  const wrong = threadsNotAt(readThreadCaps("self"), { effective: plan.keep, permitted: plan.keep, bounding: report.bounding, ambient: plan.ambient });
  if (wrong.length > 0) return { ok: false, error: `after dropping capabilities, threads still differ: ${wrong.join("; ")}` };
  return { ok: true, value: { kept: report.kept, ambient: plan.ambient, bounding: report.bounding, threads: report.threads, notes } };
}
