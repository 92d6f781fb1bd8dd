// Egress and forwarding rules (--ip-masq, --forward-accept), the pure part: which rules vxmesh
// wants, reading `iptables-save` output, deciding the back end (nft or legacy) the node uses, and
// the `iptables-restore --noflush` input that takes the kernel from what it holds to what we want
// (or removes everything of ours). No I/O here; control/iptables.ts runs the programs.
//
// What vxmesh owns: two chains and one jump to each, nothing else.
//   nat    VXMESH-POSTROUTING, jumped to from POSTROUTING (appended):
//            marked 0x4000/0x4000 by kube-proxy          → RETURN (KUBE-POSTROUTING masquerades it)
//            to a cluster CIDR                           → RETURN (pod↔pod, node↔pod: no NAT)
//            from a cluster CIDR, not to 224.0.0.0/4     → MASQUERADE --random-fully
//   filter VXMESH-FORWARD, jumped to from FORWARD (inserted first):
//            conntrack state INVALID → RETURN (left to kube-proxy's drop and the policy)
//            from a cluster CIDR → ACCEPT;  to a cluster CIDR → ACCEPT
// The rules never set or clear a mark. Every rule is written in the form iptables-save prints it
// back (checked against both back ends by test/e2e-masq.test.ts), so an untouched kernel compares
// equal and a pass changes nothing.

import { formatSubnet, subnetInside, type Parsed, type Subnet } from "../encap/types";

export type IptablesBackend = "nft" | "legacy";
/** --iptables-backend. */
export type BackendChoice = IptablesBackend | "auto";

export function parseIptablesBackend(text: string): Parsed<BackendChoice> {
  const t = text.trim().toLowerCase();
  return t === "auto" || t === "nft" || t === "legacy"
    ? { ok: true, value: t }
    : { ok: false, error: "auto (the back end the node's rules are in, as kube-proxy's iptables-wrapper decides), nft or legacy" };
}

export const NAT_CHAIN = "VXMESH-POSTROUTING";
export const FORWARD_CHAIN = "VXMESH-FORWARD";
/** kube-proxy's masquerade mark (KUBE-MARK-MASQ sets it, KUBE-POSTROUTING masquerades on it). */
const KUBE_MASQ_MARK = "0x4000/0x4000";

export type Table = "nat" | "filter";

/** One chain of ours: where it lives, what it holds, and the jump to it from a built-in chain. */
export interface OwnedChain {
  table: Table;
  name: string;
  /** The built-in chain that jumps to it. */
  hook: "POSTROUTING" | "FORWARD";
  /** Each rule's arguments after `-A <name> `, as iptables-save prints them. */
  rules: string[];
  /** The jump's arguments after `-A <hook> `. */
  jump: string;
  /**
   * Where a missing jump goes: "first" (-I <hook> 1) so a DROP or REJECT rule of someone else
   * cannot come before it, or "last" (-A) so others' explicit SNAT rules keep precedence.
   */
  placement: "first" | "last";
}

/** Every chain vxmesh may have made, whether or not it is wanted now (for removal). */
const OWNED_CHAINS: readonly { table: Table; name: string; hook: OwnedChain["hook"] }[] = [
  { table: "nat", name: NAT_CHAIN, hook: "POSTROUTING" },
  { table: "filter", name: FORWARD_CHAIN, hook: "FORWARD" },
];

export interface EgressPolicy {
  /** --ip-masq. */
  masquerade: boolean;
  /** --forward-accept. */
  forwardAccept: boolean;
  /** The pod addresses: the cluster CIDR (gossip), or this node's subnet and every peer's (static). */
  clusterCidrs: readonly Subnet[];
}

/** The CIDRs in order, each once, leaving out any inside an earlier or later one (a --subnet inside --cluster-cidr). */
function outermost(cidrs: readonly Subnet[]): string[] {
  const kept = cidrs.filter((c, i) => !cidrs.some((o, j) => j !== i && subnetInside(c, o) && (!subnetInside(o, c) || j < i)));
  return [...new Set(kept.map(formatSubnet))];
}

/** The chains this policy wants, with their rules; empty when both switches are off. */
export function desiredChains(policy: EgressPolicy): OwnedChain[] {
  const cidrs = outermost(policy.clusterCidrs);
  const out: OwnedChain[] = [];
  if (policy.masquerade) {
    out.push({
      table: "nat", name: NAT_CHAIN, hook: "POSTROUTING", placement: "last",
      jump: `-m comment --comment "vxmesh: pod egress masquerade" -j ${NAT_CHAIN}`,
      rules: [
        `-m mark --mark ${KUBE_MASQ_MARK} -m comment --comment "vxmesh: kube-proxy marked it, KUBE-POSTROUTING masquerades" -j RETURN`,
        ...cidrs.map((c) => `-d ${c} -m comment --comment "vxmesh: to pods, never masqueraded" -j RETURN`),
        ...cidrs.map((c) => `-s ${c} ! -d 224.0.0.0/4 -m comment --comment "vxmesh: pod egress leaves with the node address" -j MASQUERADE --random-fully`),
      ],
    });
  }
  if (policy.forwardAccept) {
    out.push({
      table: "filter", name: FORWARD_CHAIN, hook: "FORWARD", placement: "first",
      jump: `-m comment --comment "vxmesh: accept pod traffic" -j ${FORWARD_CHAIN}`,
      rules: [
        // Inserted first, the accepts would come before kube-proxy's own INVALID drop (KUBE-FORWARD):
        // a packet conntrack cannot place (a late retransmit whose NAT is gone) is not ours to accept.
        `-m conntrack --ctstate INVALID -m comment --comment "vxmesh: conntrack-invalid, not ours to accept" -j RETURN`,
        ...cidrs.map((c) => `-s ${c} -m comment --comment "vxmesh: from pods" -j ACCEPT`),
        ...cidrs.map((c) => `-d ${c} -m comment --comment "vxmesh: to pods" -j ACCEPT`),
      ],
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// iptables-save output

export interface SavedRule {
  chain: string;
  /** Everything after `-A <chain> `, exactly as printed. */
  args: string;
  /** The `-j` / `-g` target, when there is one. */
  target: string | undefined;
}

export interface SavedTable {
  /** Chain name → policy ("-" for user chains). */
  chains: Map<string, string>;
  /** In order. */
  rules: SavedRule[];
}

export type SavedTables = Map<string, SavedTable>;

/**
 * Splits a rule's arguments as iptables-save quotes them: words, and "…" strings in which
 * a backslash escapes the next character.
 */
export function splitRuleArgs(text: string): Parsed<string[]> {
  const out: string[] = [];
  let i = 0;
  while (i < text.length) {
    if (text[i] === " " || text[i] === "\t") { i++; continue; }
    let word = "";
    while (i < text.length && text[i] !== " " && text[i] !== "\t") {
      if (text[i] === "\"") {
        i++;
        for (;;) {
          if (i >= text.length) return { ok: false, error: `unterminated quote in ${JSON.stringify(text)}` };
          const c = text[i] as string;
          if (c === "\"") { i++; break; }
          if (c === "\\" && i + 1 < text.length) { word += text[i + 1]; i += 2; continue; }
          word += c;
          i++;
        }
      } else {
        word += text[i];
        i++;
      }
    }
    out.push(word);
  }
  return { ok: true, value: out };
}

function targetOf(words: readonly string[]): string | undefined {
  for (let i = 0; i < words.length - 1; i++) {
    const w = words[i];
    if (w === "-j" || w === "--jump" || w === "-g" || w === "--goto") return words[i + 1];
  }
  return undefined;
}

/** Parses `iptables-save` output (any number of tables). */
export function parseIptablesSave(text: string): Parsed<SavedTables> {
  const tables: SavedTables = new Map();
  let current: SavedTable | undefined;
  const lines = text.split("\n");
  for (let n = 0; n < lines.length; n++) {
    const line = (lines[n] as string).replace(/\r$/, "");
    const where = `line ${n + 1}`;
    if (line.trim() === "" || line.startsWith("#")) continue;
    if (line.startsWith("*")) {
      const name = line.slice(1).trim();
      current = tables.get(name) ?? { chains: new Map(), rules: [] };
      tables.set(name, current);
      continue;
    }
    if (line === "COMMIT") { current = undefined; continue; }
    if (current === undefined) return { ok: false, error: `${where}: ${JSON.stringify(line)} outside a table` };
    if (line.startsWith(":")) {
      const m = /^:(\S+)\s+(\S+)/.exec(line);
      if (m === null) return { ok: false, error: `${where}: malformed chain line ${JSON.stringify(line)}` };
      current.chains.set(m[1] as string, m[2] as string);
      continue;
    }
    const m = /^-A (\S+)(?: (.*))?$/.exec(line);
    if (m === null) return { ok: false, error: `${where}: unexpected ${JSON.stringify(line)}` };
    const args = m[2] ?? "";
    const words = splitRuleArgs(args);
    if (!words.ok) return { ok: false, error: `${where}: ${words.error}` };
    current.rules.push({ chain: m[1] as string, args, target: targetOf(words.value) });
  }
  return { ok: true, value: tables };
}

function isOwnedName(name: string | undefined): boolean {
  return name !== undefined && OWNED_CHAINS.some((c) => c.name === name);
}

// ---------------------------------------------------------------------------------------------
// Which back end

/** kubelet makes these (mangle table, 1.17+) in the back end the node uses; iptables-wrapper looks for them. */
const HINT_CHAINS = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

export interface BackendDecision {
  backend: IptablesBackend;
  reason: string;
}

function hintIn(tables: SavedTables): string | undefined {
  for (const [name, t] of tables) {
    for (const chain of HINT_CHAINS) if (t.chains.has(chain)) return `${chain} in ${name}`;
  }
  return undefined;
}

/** Rules that are not vxmesh's own (ours would make a restarted daemon vote for its last choice). */
function foreignRules(tables: SavedTables): number {
  let n = 0;
  for (const t of tables.values()) n += t.rules.filter((r) => !isOwnedName(r.chain) && !isOwnedName(r.target)).length;
  return n;
}

/**
 * The back end the node's rules are in, as kube-proxy's iptables-wrapper decides: kubelet's hint
 * chain in nft, else in legacy; else whichever holds more rules, legacy only when it holds more
 * (so a node with no rules at all gets nft, Debian 12's default). `undefined` text: that back
 * end's iptables-save is not installed or failed, and counts as empty.
 */
export function decideBackend(saves: { nft: string | undefined; legacy: string | undefined }): BackendDecision {
  const parse = (text: string | undefined): SavedTables => {
    if (text === undefined) return new Map();
    const p = parseIptablesSave(text);
    return p.ok ? p.value : new Map();
  };
  const nft = parse(saves.nft);
  const legacy = parse(saves.legacy);
  const nftHint = hintIn(nft);
  if (nftHint !== undefined) return { backend: "nft", reason: `kubelet's ${nftHint} (iptables-nft-save)` };
  const legacyHint = hintIn(legacy);
  if (legacyHint !== undefined) return { backend: "legacy", reason: `kubelet's ${legacyHint} (iptables-legacy-save)` };
  const n = foreignRules(nft);
  const l = foreignRules(legacy);
  if (l > n) return { backend: "legacy", reason: `${l} legacy rules, ${n} nft rules` };
  if (n > 0) return { backend: "nft", reason: `${n} nft rules, ${l} legacy rules` };
  return { backend: "nft", reason: "no rules in either back end: nft, the default of Debian 12's iptables" };
}

// ---------------------------------------------------------------------------------------------
// Plans: iptables-restore --noflush input

export interface RestorePlan {
  /** Input for `iptables-restore --noflush`; undefined when nothing needs doing. */
  restore: string | undefined;
  /** What it changes, for the log ("nat VXMESH-POSTROUTING: created", …). */
  changes: string[];
  /** Things left alone that an operator should know. */
  notes: string[];
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

const TERMINAL_DROPS = new Set(["DROP", "REJECT"]);

/** The lines that delete chain `name` and every jump to it from `hook`. */
function removalLines(t: SavedTable, name: string, hook: string, notes: string[], tableName: string): { lines: string[]; changes: string[] } {
  const lines: string[] = [];
  const changes: string[] = [];
  for (const r of t.rules.filter((x) => x.chain === hook && x.target === name)) {
    lines.push(`-D ${hook} ${r.args}`);
    changes.push(`${tableName} ${hook}: jump to ${name} removed`);
  }
  if (t.chains.has(name)) {
    lines.push(`-F ${name}`);
    const others = t.rules.filter((x) => x.target === name && x.chain !== hook && x.chain !== name);
    if (others.length === 0) {
      lines.push(`-X ${name}`);
      changes.push(`${tableName} ${name}: removed`);
    } else {
      changes.push(`${tableName} ${name}: flushed`);
      notes.push(`${tableName} ${name} is left empty, not deleted: ${others.map((o) => `-A ${o.chain} ${o.args}`).join("; ")} still jumps to it`);
    }
  }
  return { lines, changes };
}

function wrap(byTable: Map<Table, string[]>): string | undefined {
  const parts: string[] = [];
  for (const [table, lines] of byTable) if (lines.length > 0) parts.push(`*${table}`, ...lines, "COMMIT");
  return parts.length === 0 ? undefined : parts.join("\n") + "\n";
}

/**
 * What to apply so the kernel (as `saved`) holds exactly the `desired` chains and one jump to
 * each, and none of vxmesh's chains that are not desired. A chain whose rules differ is declared
 * again, which iptables-restore --noflush flushes and refills in one transaction; jumps that are
 * duplicated, different from ours, or behind a DROP/REJECT rule (for "first") are deleted and
 * ours put in place. Anything else in the tables stays as it is. Only chains in `tables` are
 * looked at (the tables `saved` holds in full).
 */
export function planEnsure(desired: readonly OwnedChain[], saved: SavedTables, tables: readonly Table[] = allTables()): RestorePlan {
  const byTable = new Map<Table, string[]>();
  const changes: string[] = [];
  const notes: string[] = [];
  const add = (table: Table, lines: string[]): void => { byTable.set(table, [...(byTable.get(table) ?? []), ...lines]); };
  for (const owned of OWNED_CHAINS.filter((c) => tables.includes(c.table))) {
    const t = saved.get(owned.table) ?? { chains: new Map(), rules: [] };
    const want = desired.find((d) => d.table === owned.table && d.name === owned.name);
    if (want === undefined) {
      const r = removalLines(t, owned.name, owned.hook, notes, owned.table);
      add(owned.table, r.lines);
      changes.push(...r.changes);
      continue;
    }
    const lines: string[] = [];
    const have = t.rules.filter((r) => r.chain === want.name).map((r) => r.args);
    if (!t.chains.has(want.name)) {
      lines.push(`:${want.name} - [0:0]`, ...want.rules.map((r) => `-A ${want.name} ${r}`));
      changes.push(`${want.table} ${want.name}: created with ${want.rules.length} rules`);
    } else if (!sameList(have, want.rules)) {
      lines.push(`:${want.name} - [0:0]`, ...want.rules.map((r) => `-A ${want.name} ${r}`));
      changes.push(`${want.table} ${want.name}: ${have.length} rules replaced by ${want.rules.length}`);
    }
    const hookRules = t.rules.filter((r) => r.chain === want.hook);
    const jumps = hookRules.map((r, index) => ({ r, index })).filter((x) => x.r.target === want.name);
    const firstDrop = hookRules.findIndex((r) => r.target !== undefined && TERMINAL_DROPS.has(r.target));
    const only = jumps.length === 1 ? jumps[0] : undefined;
    const placed = only !== undefined && only.r.args === want.jump && (want.placement === "last" || firstDrop < 0 || only.index < firstDrop);
    if (!placed) {
      for (const j of jumps) lines.push(`-D ${want.hook} ${j.r.args}`);
      lines.push(want.placement === "first" ? `-I ${want.hook} 1 ${want.jump}` : `-A ${want.hook} ${want.jump}`);
      const how = jumps.length === 0 ? "added" : jumps.length > 1 ? `${jumps.length} jumps replaced by one` : "replaced";
      changes.push(`${want.table} ${want.hook}: jump to ${want.name} ${how}${want.placement === "first" ? " (first)" : ""}`);
    }
    add(want.table, lines);
  }
  return { restore: wrap(byTable), changes, notes };
}

/** What to apply to remove every chain of vxmesh in `tables` and every jump to it, and nothing else. */
export function planRemove(saved: SavedTables, tables: readonly Table[] = allTables()): RestorePlan {
  return planEnsure([], saved, tables);
}

/** The tables of every chain vxmesh may own. */
export function allTables(): Table[] {
  return [...new Set(OWNED_CHAINS.map((c) => c.table))];
}

/** Whether `saved` holds any chain of vxmesh's, or a jump to one. */
export function holdsOwned(saved: SavedTables): boolean {
  for (const t of saved.values()) {
    if ([...t.chains.keys()].some(isOwnedName) || t.rules.some((r) => isOwnedName(r.target))) return true;
  }
  return false;
}
