// The daemon's config file (`--config FILE`): YAML or JSON, a flat mapping of setting → value
// whose keys are the flag names (`cluster-cidr`) or their camelCase (`clusterCidr`). The file
// is turned into text per flag, so each value goes through the same parser as on the command
// line. Pure core (`parseConfigFile`), thin shell (`readConfigFile`).

import * as fs from "node:fs";
import { extname } from "node:path";
import type * as Yaml from "yaml";
import type { Parsed } from "../encap/types";
import { fileLocation, type FileLayer, type FlagSpecs } from "./flags";

export type ConfigFormat = "yaml" | "json";

// Loaded on first use: the parser costs ~60 ms at start-up, which `vxmesh status`, `keygen`
// and every run without --config need not pay.
let yamlModule: typeof Yaml | undefined;
function yaml(): typeof Yaml {
  return (yamlModule ??= require("yaml") as typeof Yaml);
}

/** By extension (.json, .yaml, .yml); otherwise by content: a file starting with `{` is JSON. */
export function configFormatOf(file: string, text: string): ConfigFormat {
  const ext = extname(file).toLowerCase();
  if (ext === ".json") return "json";
  if (ext === ".yaml" || ext === ".yml") return "yaml";
  return text.trimStart().startsWith("{") ? "json" : "yaml";
}

export function camelCase(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * Parses a config file's text against the flag specs. `forbidden` lists flags that cannot be
 * set from a file (`config` itself). Errors name the file, the line when known, and the key.
 */
export function parseConfigFile(file: string, text: string, specs: FlagSpecs, forbidden: readonly string[] = ["config"]): Parsed<FileLayer> {
  const format = configFormatOf(file, text);
  let json: unknown;
  if (format === "json") {
    try {
      json = JSON.parse(text);
    } catch (err) {
      return { ok: false, error: `${jsonErrorLocation(file, text, (err as Error).message)}: not valid JSON: ${(err as Error).message}` };
    }
  }
  // Lines of keys come from the YAML parser for both formats (JSON is YAML's flow style); for
  // JSON this is best effort, the values themselves come from JSON.parse.
  const { LineCounter, parseDocument } = yaml();
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  if (format === "yaml") {
    const first = doc.errors[0];
    if (first !== undefined) {
      const at = first.linePos?.[0];
      const where = at === undefined ? file : `${file}:${at.line}:${at.col}`;
      const message = (first.message.split("\n")[0] ?? "").replace(/ at line \d+, column \d+:?$/, "");
      return { ok: false, error: `${where}: not valid YAML: ${message}` };
    }
    json = doc.toJS();
  }
  const duplicate = doc.errors.find((e) => e.code === "DUPLICATE_KEY");
  if (duplicate !== undefined) {
    const at = duplicate.linePos?.[0];
    return { ok: false, error: `${at === undefined ? file : `${file}:${at.line}:${at.col}`}: a setting appears twice` };
  }
  const lines = doc.errors.length === 0 ? keyLines(doc, lineCounter) : new Map<string, number>();

  // An empty YAML file (or one of only comments) sets nothing.
  if ((json === null || json === undefined) && format === "yaml") return { ok: true, value: { file, settings: new Map() } };
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    const what = json === null ? "null" : Array.isArray(json) ? "a list" : typeof json;
    return { ok: false, error: `${file}: expected a mapping of setting: value (such as "vni: 1"), not ${what}` };
  }

  const byKey = new Map<string, string>();
  for (const spec of Object.values(specs)) {
    byKey.set(spec.name, spec.name);
    byKey.set(camelCase(spec.name), spec.name);
  }
  const specOf = new Map(Object.values(specs).map((s) => [s.name, s]));
  const settings = new Map<string, { text: string; key: string; line: number | undefined }>();
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    const line = lines.get(key);
    const at = fileLocation(file, line);
    const flag = byKey.get(key);
    if (flag === undefined || forbidden.includes(flag)) {
      if (flag !== undefined) return { ok: false, error: `${at}: "${key}" cannot be set inside a config file` };
      const near = nearMatches(key, [...specOf.keys()].filter((k) => !forbidden.includes(k)));
      const hint = near.length > 0 ? `; did you mean ${near.join(" or ")}?` : "";
      return { ok: false, error: `${at}: unknown setting "${key}"${hint} (settings are the flag names of \`vxmesh daemon --help\`, or their camelCase)` };
    }
    const spec = specOf.get(flag);
    if (spec === undefined) continue;
    const other = settings.get(flag);
    if (other !== undefined) return { ok: false, error: `${at}: ${flag} is set twice (also as ${other.key})` };
    const textValue = valueText(value, spec.repeatable === true);
    if (!textValue.ok) return { ok: false, error: `${at}: ${key} ${textValue.error} (${spec.help})` };
    settings.set(flag, { text: textValue.value, key, line });
  }
  return { ok: true, value: { file, settings } };
}

/** A file value as the text a flag would carry. */
function valueText(value: unknown, list: boolean): Parsed<string> {
  if (value === null || value === undefined) return { ok: false, error: "has no value" };
  if (typeof value === "string") return { ok: true, value };
  if (typeof value === "number") return Number.isFinite(value) ? { ok: true, value: String(value) } : { ok: false, error: `is ${String(value)}: expected a finite number` };
  if (typeof value === "boolean") return { ok: true, value: value ? "true" : "false" };
  if (Array.isArray(value)) {
    if (!list) return { ok: false, error: "is a list: expected a single value" };
    const parts: string[] = [];
    for (const item of value) {
      const t = valueText(item, false);
      if (!t.ok || typeof item === "object") return { ok: false, error: "must be a list of plain values" };
      parts.push(t.value);
    }
    return { ok: true, value: parts.join(",") };
  }
  return { ok: false, error: "is a mapping: expected a value" };
}

/** Line of each top-level key, from the YAML parser's ranges. */
function keyLines(doc: Yaml.Document, lineCounter: Yaml.LineCounter): Map<string, number> {
  const { isMap, isScalar } = yaml();
  const out = new Map<string, number>();
  if (!isMap(doc.contents)) return out;
  for (const pair of doc.contents.items) {
    const key = pair.key;
    if (isScalar(key) && key.range !== undefined && key.range !== null) {
      out.set(String(key.value), lineCounter.linePos(key.range[0]).line);
    }
  }
  return out;
}

/** "file:LINE:COL" from V8's "… at position N", or just the file. */
function jsonErrorLocation(file: string, text: string, message: string): string {
  const m = /at position (\d+)/.exec(message);
  if (m === null) return file;
  const pos = Math.min(Number(m[1]), text.length);
  const before = text.slice(0, pos);
  const line = before.split("\n").length;
  const col = pos - before.lastIndexOf("\n");
  return `${file}:${line}:${col}`;
}

/** Setting names close to a misspelt key: same letters ignoring case and dashes, or ≤ 2 edits. */
export function nearMatches(key: string, names: readonly string[]): string[] {
  const norm = (s: string): string => s.toLowerCase().replace(/[-_]/g, "");
  const k = norm(key);
  return names
    .map((n) => ({ n, d: editDistance(k, norm(n)) }))
    .filter(({ d }) => d <= 2)
    .sort((a, b) => a.d - b.d)
    .slice(0, 3)
    .map(({ n }) => n);
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur.push(Math.min((prev[j] as number) + 1, (cur[j - 1] as number) + 1, (prev[j - 1] as number) + cost));
    }
    prev = cur;
  }
  return prev[b.length] as number;
}

/** Reads and parses a config file: the only I/O here. */
export function readConfigFile(file: string, specs: FlagSpecs, via = "--config"): Parsed<FileLayer> {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return { ok: false, error: `${via} ${file}: cannot read it (${code})` };
  }
  return parseConfigFile(file, text, specs);
}
