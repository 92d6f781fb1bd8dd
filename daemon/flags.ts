// A small flag parser with the error messages we want: every failure names the setting, the
// value it was given and what would be valid. Each flag may also come from the environment as
// VXMESH_<FLAG> (e.g. --vxlan-port → VXMESH_VXLAN_PORT); a flag on the command line wins.

import type { Parsed } from "../encap/types";

export interface FlagSpec<T> {
  readonly name: string;
  readonly help: string;
  /** Shown in --help; undefined with `required` means the flag must be given. */
  readonly defaultText?: string;
  readonly required?: boolean;
  /** A boolean switch takes no value. */
  readonly isSwitch?: boolean;
  readonly parse: (text: string) => Parsed<T>;
}

export type FlagSpecs = Record<string, FlagSpec<unknown>>;

export type FlagValues<S extends FlagSpecs> = {
  [K in keyof S]: S[K] extends FlagSpec<infer T> ? T | undefined : never;
};

export class UsageError extends Error {
  override readonly name = "UsageError";
}

export function envName(flag: string): string {
  return "VXMESH_" + flag.toUpperCase().replace(/-/g, "_");
}

/**
 * Parses argv against the specs. Returns the values (undefined where neither a flag nor the
 * environment gave one), or a UsageError message.
 */
export function parseFlags<S extends FlagSpecs>(
  specs: S,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): { ok: true; values: FlagValues<S>; positional: string[] } | { ok: false; error: string } {
  const byName = new Map<string, [string, FlagSpec<unknown>]>();
  for (const [key, spec] of Object.entries(specs)) byName.set(spec.name, [key, spec]);
  const raw = new Map<string, { text: string; source: string }>();
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
    raw.set(key, { text, source: `--${name}` });
  }

  const values: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(specs)) {
    let given = raw.get(key);
    if (given === undefined) {
      const fromEnv = env[envName(spec.name)];
      if (fromEnv !== undefined && fromEnv !== "") given = { text: fromEnv, source: envName(spec.name) };
    }
    if (given === undefined) {
      if (spec.required) return { ok: false, error: `--${spec.name} is required: ${spec.help}` };
      values[key] = undefined;
      continue;
    }
    const parsed = spec.parse(given.text);
    if (!parsed.ok) return { ok: false, error: `${given.source} ${JSON.stringify(given.text)} is not valid: expected ${parsed.error}` };
    values[key] = parsed.value;
  }
  return { ok: true, values: values as FlagValues<S>, positional };
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

export function formatHelp(command: string, summary: string, specs: FlagSpecs): string {
  const lines = [`usage: vxmesh ${command} [flags]`, "", summary, "", "flags:"];
  for (const spec of Object.values(specs)) {
    const head = spec.isSwitch ? `  --${spec.name}` : `  --${spec.name} VALUE`;
    const dflt = spec.required ? " (required)" : spec.defaultText !== undefined ? ` (default ${spec.defaultText})` : "";
    lines.push(`${head.padEnd(26)} ${spec.help}${dflt}`);
    lines.push(`${"".padEnd(26)} env ${envName(spec.name)}`);
  }
  return lines.join("\n");
}
