// A small flag parser with the error messages we want: every failure names the setting, the
// value it was given, where that value came from and what would be valid. Each flag may also
// come from the environment as VXMESH_<FLAG> (e.g. --vxlan-port → VXMESH_VXLAN_PORT) and, for
// commands that take one, from a config file (config-file.ts turns the file into a FileLayer).
// Precedence: flag > environment > file > default.

import type { Parsed } from "../encap/types";

export interface FlagSpec<T> {
  readonly name: string;
  readonly help: string;
  /** Shown in --help; undefined with `required` means the flag must be given. */
  readonly defaultText?: string;
  /**
   * The value when the flag is set nowhere, where it is one value: spread `withDefault(value)`
   * into the spec, so `defaultText` is derived from it, and apply it as `?? spec.default`.
   */
  readonly default?: T;
  readonly required?: boolean;
  /**
   * A variable read last, after the flag, VXMESH_<FLAG> and the file: a name other software
   * sets (NODE_NAME from Kubernetes' downward API).
   */
  readonly fallbackEnv?: string;
  /** A boolean switch takes no value. */
  readonly isSwitch?: boolean;
  /** May be given more than once (the values are joined with ","); a list in a config file. */
  readonly repeatable?: boolean;
  readonly parse: (text: string) => Parsed<T>;
}

export type FlagSpecs = Record<string, FlagSpec<unknown>>;

/** A flag's default, typed once: the value, and its text for --help derived from it. */
export function withDefault<T>(value: T, text: (value: T) => string = String): { readonly default: T; readonly defaultText: string } {
  return { default: value, defaultText: text(value) };
}

export type FlagValues<S extends FlagSpecs> = {
  [K in keyof S]: S[K] extends FlagSpec<infer T> ? T | undefined : never;
};

/** Where a setting's value came from. */
export type Origin =
  | { kind: "flag"; flag: string }
  | { kind: "env"; variable: string }
  /** `key` as the file spells it (kebab-case or camelCase); `line` when the parser knows it. */
  | { kind: "file"; file: string; key: string; line: number | undefined }
  | { kind: "default" };

/** A config file's settings, keyed by flag name, still as text for the flag's own parser. */
export interface FileLayer {
  readonly file: string;
  readonly settings: ReadonlyMap<string, { text: string; key: string; line: number | undefined }>;
}

export function envName(flag: string): string {
  return "VXMESH_" + flag.toUpperCase().replace(/-/g, "_");
}

/** "file.yaml:3" or "file.yaml". */
export function fileLocation(file: string, line: number | undefined): string {
  return line === undefined ? file : `${file}:${line}`;
}

/**
 * A setting and its value as the operator wrote it, for messages that relate two settings:
 * `--subnet-len 8`, `VXMESH_SUBNET_LEN=8`, `subnet-len 8 (in vxmesh.yaml:3)`, `--cluster-cidr
 * 10.244.0.0/16 (the default)`.
 */
export function describeSetting(flag: string, value: string, origin: Origin): string {
  switch (origin.kind) {
    case "flag": return `--${flag} ${value}`;
    case "env": return `${origin.variable}=${value}`;
    case "file": return `${origin.key} ${value} (in ${fileLocation(origin.file, origin.line)})`;
    case "default": return `--${flag} ${value} (the default)`;
  }
}

/** Where a value came from: "--service-cidr", "VXMESH_SERVICE_CIDR", "service-cidr in vxmesh.yaml:4". */
export function describeOrigin(flag: string, origin: Origin): string {
  switch (origin.kind) {
    case "flag": return origin.flag;
    case "env": return origin.variable;
    case "file": return `${origin.key} in ${fileLocation(origin.file, origin.line)}`;
    case "default": return `the default --${flag}`;
  }
}

function invalid(spec: FlagSpec<unknown>, text: string, origin: Origin, expected: string): string {
  const value = JSON.stringify(text);
  switch (origin.kind) {
    case "flag": return `--${spec.name} ${value} is not valid: expected ${expected}`;
    case "env": return `${origin.variable} ${value} is not valid: expected ${expected}`;
    case "file": return `${origin.key} ${value} in ${fileLocation(origin.file, origin.line)} is not valid: expected ${expected}`;
    case "default": return `the default --${spec.name} ${value} is not valid: expected ${expected}`;
  }
}

export type ParsedFlags<S extends FlagSpecs> =
  | { ok: true; values: FlagValues<S>; origins: Record<keyof S, Origin>; positional: string[] }
  | { ok: false; error: string };

/**
 * Parses argv against the specs, then fills what argv left open from the environment and then
 * from the config file. Returns the values (undefined where no source gave one) with where
 * each came from, or a usage error message.
 */
export function parseFlags<S extends FlagSpecs>(
  specs: S,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  file?: FileLayer,
): ParsedFlags<S> {
  const byName = new Map<string, [string, FlagSpec<unknown>]>();
  for (const [key, spec] of Object.entries(specs)) byName.set(spec.name, [key, spec]);
  const raw = new Map<string, { text: string; origin: Origin }>();
  const positional: string[] = [];

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith("--")) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const found = byName.get(name);
    if (found === undefined) {
      const valid = [...byName.keys()].map((n) => "--" + n).join(", ");
      return { ok: false, error: `unknown flag --${name}; valid flags: ${valid}` };
    }
    const [key, spec] = found;
    let text: string;
    if (spec.isSwitch) {
      text = eq < 0 ? "true" : arg.slice(eq + 1);
    } else if (eq >= 0) {
      text = arg.slice(eq + 1);
    } else {
      const next = argv[i + 1];
      if (next === undefined) return { ok: false, error: `--${name} needs a value: ${spec.help}` };
      text = next;
      i++;
    }
    const earlier = raw.get(key);
    if (earlier !== undefined && spec.repeatable) text = `${earlier.text},${text}`;
    raw.set(key, { text, origin: { kind: "flag", flag: `--${name}` } });
  }

  const values: Record<string, unknown> = {};
  const origins: Record<string, Origin> = {};
  for (const [key, spec] of Object.entries(specs)) {
    let given = raw.get(key);
    if (given === undefined) {
      const variable = envName(spec.name);
      const fromEnv = env[variable];
      if (fromEnv !== undefined && fromEnv !== "") given = { text: fromEnv, origin: { kind: "env", variable } };
    }
    if (given === undefined && file !== undefined) {
      const fromFile = file.settings.get(spec.name);
      if (fromFile !== undefined) given = { text: fromFile.text, origin: { kind: "file", file: file.file, key: fromFile.key, line: fromFile.line } };
    }
    const fallback = spec.fallbackEnv === undefined ? undefined : env[spec.fallbackEnv];
    if (given === undefined && fallback !== undefined && fallback !== "") given = { text: fallback, origin: { kind: "env", variable: spec.fallbackEnv as string } };
    if (given === undefined) {
      if (spec.required) {
        const alternatives = `${envName(spec.name)}${file === undefined ? "" : `, or ${spec.name} in ${file.file}`}${spec.fallbackEnv === undefined ? "" : `, or ${spec.fallbackEnv}`}`;
        return { ok: false, error: `--${spec.name} is required (or ${alternatives}): ${spec.help}` };
      }
      values[key] = undefined;
      origins[key] = { kind: "default" };
      continue;
    }
    const parsed = spec.parse(given.text);
    if (!parsed.ok) return { ok: false, error: invalid(spec, given.text, given.origin, parsed.error) };
    values[key] = parsed.value;
    origins[key] = given.origin;
  }
  return { ok: true, values: values as FlagValues<S>, origins: origins as Record<keyof S, Origin>, positional };
}

export function intInRange(min: number, max: number): (text: string) => Parsed<number> {
  return (text) => {
    if (!/^\d+$/.test(text)) return { ok: false, error: `an integer from ${min} to ${max}` };
    const n = Number(text);
    if (n < min || n > max) return { ok: false, error: `an integer from ${min} to ${max}` };
    return { ok: true, value: n };
  };
}

export function boolSwitch(text: string): Parsed<boolean> {
  if (text === "true" || text === "1" || text === "yes") return { ok: true, value: true };
  if (text === "false" || text === "0" || text === "no") return { ok: true, value: false };
  return { ok: false, error: "true or false" };
}

export function anyText(text: string): Parsed<string> {
  return text.length > 0 ? { ok: true, value: text } : { ok: false, error: "a non-empty value" };
}

/** Column where help texts start. */
const HELP_COLUMN = 26;

export function formatHelp(command: string, summary: string, specs: FlagSpecs, notes: readonly string[] = []): string {
  const lines = [`usage: vxmesh ${command} [flags]`, "", summary, ...(notes.length > 0 ? ["", ...notes] : []), "", "flags:"];
  for (const spec of Object.values(specs)) {
    const head = spec.isSwitch ? `  --${spec.name}` : `  --${spec.name} VALUE`;
    const dflt = spec.required ? " (required)" : spec.defaultText !== undefined ? ` (default ${spec.defaultText})` : "";
    const more = spec.repeatable ? "; may be repeated" : "";
    lines.push(`${head.padEnd(HELP_COLUMN)} ${spec.help}${more}${dflt}`);
    lines.push(`${"".padEnd(HELP_COLUMN)} env ${envName(spec.name)}${spec.fallbackEnv === undefined ? "" : `, else ${spec.fallbackEnv}`}`);
  }
  return lines.join("\n");
}
