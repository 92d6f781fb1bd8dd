// The `vxmesh` executable's refusals (docs/DESIGN.md §6: "every bad value is rejected at start with a
// message that names the setting, the value and what would be valid"): bad flags exit 2, start-up
// problems an operator can fix exit 1, and a refused start leaves nothing behind — no TAP, no
// route of protocol 118, no neighbour, no control socket.
//
// Flag and peers-file errors are found before anything is touched, so those run in the root
// namespace (with a TAP name unique to this run, whose absence is then checked). Anything that
// needs a real underlay address runs inside a lab node's namespace.

import { execFile } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { Lab } from "../bench/lab";
import type { LabNode } from "../bench/lab";
import { Cluster, cliPath } from "../bench/cluster";
import { daemonFlags } from "../daemon/config";
import { envName, type FlagSpec } from "../daemon/flags";
import { generateKey } from "../control/keyring";

const execFileP = promisify(execFile);

interface Run { code: number | null; stdout: string; stderr: string }

/** The environment without any VXMESH_* variable, so only what a case sets is in force. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("VXMESH_")) env[k] = v;
  return { ...env, ...extra };
}

/** Runs the CLI in the root namespace. */
async function cli(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [cliPath(), ...args], { env: cleanEnv(env), timeout: 20_000, encoding: "utf8" });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof err.code !== "number") throw e;
    return { code: err.code, stdout: err.stdout ?? "", stderr: err.stderr ?? "" };
  }
}

async function ip(args: readonly string[]): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileP("ip", [...args], { encoding: "utf8" });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: unknown; stdout?: string; stderr?: string };
    return { code: typeof err.code === "number" ? err.code : -1, stdout: err.stdout ?? "", stderr: err.stderr ?? "" };
  }
}

const dir = mkdtempSync(join(tmpdir(), "vxmesh-cli-errors-"));
const tapBase = `vxe${process.pid}`;
let tapCounter = 0;
/** A TAP name nobody else uses (≤ 15 characters). */
function uniqueTap(): string {
  return `${tapBase}x${++tapCounter}`.slice(0, 15);
}

function file(name: string, text: string): string {
  const f = join(dir, name);
  writeFileSync(f, text);
  return f;
}

const goodPeers = (): string => file("good-peers.json", JSON.stringify([
  { name: "t1", underlayIp: "192.0.2.250", subnet: "10.244.1.0/24" },
  { name: "t2", underlayIp: "192.0.2.251", subnet: "10.244.2.0/24" },
]));

/** A daemon command line that is valid as far as flags go; `over` replaces or adds flags. */
function daemonArgs(over: Record<string, string | null> = {}, tap = uniqueTap()): string[] {
  const flags: Record<string, string | null> = {
    "node-name": "t1",
    "underlay-ip": "192.0.2.250",
    subnet: "10.244.1.0/24",
    peers: goodPeers(),
    tap,
    "run-dir": join(dir, `run-${tap}`),
    ...over,
  };
  const args = ["daemon"];
  for (const [k, v] of Object.entries(flags)) if (v !== null) args.push(`--${k}`, v);
  return args;
}

function argValue(args: readonly string[], flag: string): string {
  const i = args.indexOf(flag);
  if (i < 0 || args[i + 1] === undefined) throw new Error(`no ${flag} in ${args.join(" ")}`);
  return args[i + 1] as string;
}

let rootRoutesBefore = "";

/** Nothing of a refused start is left in the root namespace. */
async function expectNothingLeftInRoot(args: readonly string[]): Promise<void> {
  const tap = argValue(args, "--tap");
  const link = await ip(["link", "show", tap]);
  expect(link.code, `TAP ${tap} exists in the root namespace: ${link.stdout}`).not.toBe(0);
  expect((await ip(["-4", "route", "show", "proto", "118"])).stdout).toBe(rootRoutesBefore);
  expect(existsSync(join(argValue(args, "--run-dir"), "vxmesh.sock"))).toBe(false);
}

/** Nothing of a refused start is left in a lab node's namespace. */
async function expectNothingLeftIn(node: LabNode, tap: string, runDir: string): Promise<void> {
  const link = await ip(["-n", node.namespace, "link", "show", tap]);
  expect(link.code, `TAP ${tap} exists in ${node.namespace}: ${link.stdout}`).not.toBe(0);
  expect((await ip(["-n", node.namespace, "-4", "route", "show", "proto", "118"])).stdout.trim()).toBe("");
  expect((await ip(["-n", node.namespace, "-4", "neigh", "show", "nud", "permanent"])).stdout.trim()).toBe("");
  expect(existsSync(join(runDir, "vxmesh.sock"))).toBe(false);
}

beforeAll(async () => {
  rootRoutesBefore = (await ip(["-4", "route", "show", "proto", "118"])).stdout;
  // The root-namespace cases rely on 192.0.2.250 being nobody's address here.
  expect((await ip(["-4", "-o", "addr", "show"])).stdout).not.toContain("192.0.2.250");
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("vxmesh CLI: usage", () => {
  it("`vxmesh daemon --help` exits 0 and lists every flag with its default and environment variable, and --config", async () => {
    const r = await cli(["daemon", "--help"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.split("\n");
    const specs: FlagSpec<unknown>[] = Object.values(daemonFlags);
    expect(specs.length).toBeGreaterThanOrEqual(12);
    for (const spec of specs) {
      const i = lines.findIndex((l) => new RegExp(`^\\s+--${spec.name}(\\s|$)`).test(l));
      expect(i, `--${spec.name} in:\n${r.stdout}`).toBeGreaterThanOrEqual(0);
      expect(lines[i], `default of --${spec.name}`).toMatch(spec.required ? /\(required\)$/ : new RegExp(`\\(default ${spec.defaultText?.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\)$`));
      expect(lines[i + 1]?.trim(), `env var of --${spec.name}`).toBe(`env ${envName(spec.name)}${spec.fallbackEnv === undefined ? "" : `, else ${spec.fallbackEnv}`}`);
    }
    for (const [flag, dflt] of [["vxlan-port", "4789"], ["cluster-cidr", "10.244.0.0/16"], ["offload", "true"], ["service-cidr", "none"], ["metrics-addr", "127.0.0.1:9464"]]) {
      expect(lines.find((l) => l.startsWith(`  --${flag} `))).toContain(`(default ${dflt})`);
    }
    expect(r.stdout).toContain("--config (YAML or JSON");
    expect(r.stdout).toContain("Precedence: flag > environment > config file > default.");
    for (const required of ["node-name", "underlay-ip"]) {
      expect(lines.find((l) => l.includes(`--${required} `))).toContain("(required)");
    }
  });

  it("`vxmesh bogus` exits 2 naming the command", async () => {
    const r = await cli(["bogus"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown command "bogus"');
    expect(r.stderr).toContain("usage: vxmesh");
  });

  it("`vxmesh bench --pod-cpus` with a CPU this machine lacks exits 2 naming the flag and the range, before building anything", async () => {
    const r = await cli(["bench", "--pod-cpus", `${cpus().length},0`]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(`vxmesh bench: --pod-cpus "${cpus().length},0" is not valid: expected two CPU numbers from 0 to ${cpus().length - 1}, the sending pod's first (e.g. 0,${Math.min(1, cpus().length - 1)})`);
  });

  it("`vxmesh status --run-dir /nonexistent` exits 1 saying no daemon is listening", async () => {
    const r = await cli(["status", "--run-dir", "/nonexistent"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no vxmesh daemon is listening on /nonexistent/vxmesh.sock");
  });
});

describe("vxmesh daemon: bad flags exit 2 naming the flag, the value and what is valid", () => {
  const cases: { name: string; over?: Record<string, string | null>; extra?: string[]; env?: Record<string, string>; want: string[] }[] = [
    { name: "--vni 16777216", over: { vni: "16777216" }, want: ['--vni "16777216" is not valid', "0 to 16777215"] },
    { name: "--vxlan-port 70000", over: { "vxlan-port": "70000" }, want: ['--vxlan-port "70000" is not valid', "1 to 65535"] },
    { name: "--vxlan-port 0", over: { "vxlan-port": "0" }, want: ['--vxlan-port "0" is not valid', "1 to 65535"] },
    { name: "--mtu 10", over: { mtu: "10" }, want: ['--mtu "10" is not valid', "576 to 9000"] },
    { name: "--vtep-mac 01:00:00:00:00:00 (multicast)", over: { "vtep-mac": "01:00:00:00:00:00" }, want: ['--vtep-mac "01:00:00:00:00:00" is not valid', "unicast MAC"] },
    { name: "--vtep-mac not a MAC", over: { "vtep-mac": "02:00:00:00:00" }, want: ['--vtep-mac "02:00:00:00:00" is not valid', "a MAC address such as"] },
    { name: "--subnet 10.244.1.7/24 (host bits set)", over: { subnet: "10.244.1.7/24" }, want: ['--subnet "10.244.1.7/24" is not valid', "host bits zero", "10.244.1.0/24"] },
    { name: "--underlay-ip 192.0.2.256", over: { "underlay-ip": "192.0.2.256" }, want: ['--underlay-ip "192.0.2.256" is not valid', "octets 0-255"] },
    { name: "--node-name Bad_Name", over: { "node-name": "Bad_Name" }, want: ['--node-name "Bad_Name" is not valid', "a-z, 0-9"] },
    { name: "--batch 0", over: { batch: "0" }, want: ['--batch "0" is not valid', "1 to 256"] },
    { name: "--log-level loud", over: { "log-level": "loud" }, want: ['--log-level "loud" is not valid', "fatal, error, warn, info, debug, trace"] },
    { name: "--tap longer than 15 characters", over: { tap: "averyveryverylongname" }, want: ['--tap "averyveryverylongname" is not valid', "1-15 characters"] },
    { name: "unknown flag --bogus", extra: ["--bogus", "1"], want: ["unknown flag --bogus", "valid flags: --node-name", "--vni"] },
    { name: "a flag without its value", extra: ["--vni"], want: ["--vni needs a value", "0-16777215"] },
    { name: "an unexpected positional argument", extra: ["extra"], want: ['unexpected argument "extra"'] },
    { name: "neither --peers nor --key-file", over: { peers: null }, want: ["--key-file is required for gossip (or give --peers FILE for static peers, or --subnet-source kubernetes)"] },
    { name: "--peers without --subnet", over: { subnet: null }, want: ["--subnet is required with --peers"] },
    { name: "--peers together with --key-file", extra: ["--key-file", "/tmp/k"], want: ["--peers (static peers) cannot be combined with --key-file"] },
    { name: "a bad --join list", over: { peers: null }, extra: ["--key-file", "/tmp/k", "--join", "192.0.2.1:99999"], want: ['--join "192.0.2.1:99999" is not valid', "IPv4:PORT"] },
    { name: "missing required --node-name", over: { "node-name": null }, want: ["--node-name is required"] },
    { name: "VXMESH_VNI=abc in the environment", env: { VXMESH_VNI: "abc" }, want: ['VXMESH_VNI "abc" is not valid', "0 to 16777215"] },
    { name: "VXMESH_MTU=10 in the environment", env: { VXMESH_MTU: "10" }, want: ['VXMESH_MTU "10" is not valid', "576 to 9000"] },
  ];

  it.each(cases)("$name", async ({ over, extra, env, want }) => {
    const args = [...daemonArgs(over ?? {}), ...(extra ?? [])];
    const r = await cli(args, env);
    expect(r.code, r.stderr).toBe(2);
    const message = r.stderr.trim();
    expect(message.startsWith("vxmesh daemon: "), message).toBe(true);
    expect(message.split("\n")).toHaveLength(1);
    for (const w of want) expect(message).toContain(w);
    expect(r.stdout).toBe("");
    await expectNothingLeftInRoot(args);
  });

  it("a flag on the command line wins over a bad VXMESH_ variable", async () => {
    // --vni 5 overrides VXMESH_VNI=abc, so the start gets as far as the underlay check.
    const args = daemonArgs({ vni: "5" });
    const r = await cli(args, { VXMESH_VNI: "abc" });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("--underlay-ip 192.0.2.250 is not assigned to any interface");
    await expectNothingLeftInRoot(args);
  });
});

describe("vxmesh daemon: a bad peers file exits 1 naming the file and the entry", () => {
  const peer = (name: string, underlayIp: string, subnet: string, more: Record<string, string> = {}) => ({ name, underlayIp, subnet, ...more });
  const cases: { name: string; text: string | null; want: string[] }[] = [
    { name: "the file does not exist", text: null, want: ["cannot read it (ENOENT)"] },
    { name: "the file is not JSON", text: "[{name: n2}", want: ["not valid JSON"] },
    { name: "the file is empty", text: "", want: ["not valid JSON"] },
    { name: "the JSON is not an array", text: JSON.stringify({ name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24" }), want: ["expected a JSON array"] },
    { name: "an entry is not an object", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.2.0/24"), "n3"]), want: ["entry 1: expected an object"] },
    { name: "an entry has a bad underlayIp", text: JSON.stringify([peer("n2", "192.0.2.300", "10.244.2.0/24")]), want: ['entry 0 (n2): underlayIp "192.0.2.300" is not valid', "octets 0-255"] },
    { name: "an entry lacks underlayIp", text: JSON.stringify([{ name: "n2", subnet: "10.244.2.0/24" }]), want: ['entry 0: field "underlayIp" must be a string'] },
    { name: "an entry has this node's own underlayIp", text: JSON.stringify([peer("n2", "192.0.2.250", "10.244.2.0/24")]), want: ["entry 0 (n2): underlayIp is this node's own --underlay-ip"] },
    { name: "an entry's subnet overlaps this node's", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.1.128/25")]), want: ["entry 0 (n2): subnet 10.244.1.128/25 overlaps this node's --subnet 10.244.1.0/24"] },
    { name: "two entries' subnets overlap", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.2.0/24"), peer("n3", "192.0.2.13", "10.244.2.128/25")]), want: ["entry 1 (n3): subnet 10.244.2.128/25 overlaps n2's 10.244.2.0/24"] },
    { name: "an entry's subnet has host bits set", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.2.1/24")]), want: ['entry 0 (n2): subnet "10.244.2.1/24" is not valid', "did you mean 10.244.2.0/24"] },
    { name: "a name appears twice", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.2.0/24"), peer("n2", "192.0.2.13", "10.244.3.0/24")]), want: ["entry 1 (n2): the name appears twice"] },
    { name: "an entry has an unknown field", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.2.0/24", { vtep: "02:00:00:00:00:02" })]), want: ['entry 0: unknown field "vtep"', "valid fields: name, underlayIp, subnet, vtepMac"] },
    { name: "an entry has a multicast vtepMac", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.2.0/24", { vtepMac: "03:00:00:00:00:02" })]), want: ['entry 0 (n2): vtepMac "03:00:00:00:00:02" is not valid', "unicast"] },
    { name: "an entry has this node's own VTEP MAC", text: JSON.stringify([peer("n2", "192.0.2.12", "10.244.2.0/24", { vtepMac: "02:00:00:00:00:01" })]), want: ["entry 0 (n2): vtepMac is this node's own VTEP MAC"] },
  ];

  it.each(cases)("$name", async ({ name, text, want }) => {
    const peersFile = text === null ? join(dir, "does-not-exist.json") : file(`peers-${name.replace(/\W+/g, "-")}.json`, text);
    const args = daemonArgs({ peers: peersFile, "vtep-mac": "02:00:00:00:00:01" });
    const r = await cli(args);
    expect(r.code, r.stderr).toBe(1);
    const message = r.stderr.trim();
    expect(message.startsWith(`vxmesh daemon: --peers ${JSON.stringify(peersFile)}: `), message).toBe(true);
    expect(message.split("\n")).toHaveLength(1);
    for (const w of want) expect(message).toContain(w);
    await expectNothingLeftInRoot(args);
  });
});

describe("vxmesh daemon --config: a bad file exits 2 naming the file, the line, the key and what is valid", () => {
  const cases: { name: string; file: string; text: string | null; want: (f: string) => string }[] = [
    { name: "a bad value in YAML", file: "bad-value.yaml", text: "vni: 1\nvxlan-port: 70000\n", want: (f) => `vxlan-port "70000" in ${f}:2 is not valid: expected an integer from 1 to 65535` },
    { name: "a bad value in JSON", file: "bad-value.json", text: '{\n  "mtu": 10\n}', want: (f) => `mtu "10" in ${f}:2 is not valid: expected an integer from 576 to 9000` },
    { name: "a bad boolean", file: "bad-bool.yaml", text: "offload: perhaps\n", want: (f) => `offload "perhaps" in ${f}:1 is not valid: expected true or false` },
    { name: "an unknown key", file: "unknown.yaml", text: "vni: 1\nvxlanport: 8472\n", want: (f) => `${f}:2: unknown setting "vxlanport"; did you mean vxlan-port?` },
    { name: "malformed YAML", file: "broken.yaml", text: "vni: 1\njoin: [192.0.2.1\ntap: x\n", want: (f) => `${f}:3:1: not valid YAML: ` },
    { name: "malformed JSON", file: "broken.json", text: '{\n  "vni": 1,\n}', want: (f) => `${f}:3:1: not valid JSON: ` },
    { name: "an unreadable file", file: "missing.yaml", text: null, want: (f) => `--config ${f}: cannot read it (ENOENT)` },
  ];

  it.each(cases)("$name", async ({ file: name, text, want }) => {
    const f = text === null ? join(dir, name) : file(name, text);
    const args = [...daemonArgs(), "--config", f];
    const r = await cli(args);
    expect(r.code, r.stderr).toBe(2);
    const message = r.stderr.trim();
    expect(message.split("\n")).toHaveLength(1);
    expect(message).toContain(`vxmesh daemon: ${want(f)}`);
    await expectNothingLeftInRoot(args);
  });

  it("VXMESH_CONFIG names the file too, and a flag beats the file's bad value", async () => {
    const f = file("env-named.yaml", "vni: 99999999\n");
    const viaEnv = await cli(daemonArgs(), { VXMESH_CONFIG: f });
    expect(viaEnv.code, viaEnv.stderr).toBe(2);
    expect(viaEnv.stderr).toContain(`vni "99999999" in ${f}:1 is not valid`);
    // --vni wins over the file, so the start gets as far as the underlay check (exit 1).
    const args = [...daemonArgs({ vni: "5" }), "--config", f];
    const won = await cli(args);
    expect(won.code, won.stderr).toBe(1);
    expect(won.stderr).toContain("--underlay-ip 192.0.2.250 is not assigned to any interface");
    await expectNothingLeftInRoot(args);
  });

  it("every required setting may come from the file", async () => {
    const tap = uniqueTap();
    const f = file("complete.yaml", [
      "node-name: t1", "underlayIp: 192.0.2.250", "subnet: 10.244.1.0/24", `peers: ${goodPeers()}`, `tap: ${tap}`, `run-dir: ${join(dir, `run-${tap}`)}`,
    ].join("\n"));
    const r = await cli(["daemon", "--config", f]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("--underlay-ip 192.0.2.250 is not assigned to any interface");
  });
});

describe("vxmesh daemon: pod addresses overlapping a --service-cidr exit 2", () => {
  it("the node's subnet", async () => {
    const args = daemonArgs({ "service-cidr": "10.96.0.0/12,10.244.0.0/20" });
    const r = await cli(args);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim()).toBe("vxmesh daemon: --subnet 10.244.1.0/24 overlaps service CIDR 10.244.0.0/20 (--service-cidr): pod and service addresses must not overlap; choose pod addresses outside every service CIDR");
    await expectNothingLeftInRoot(args);
  });

  it("the cluster CIDR (service CIDR from the environment)", async () => {
    const args = daemonArgs({ peers: null, subnet: null, "key-file": "/nonexistent-key" });
    const r = await cli(args, { VXMESH_SERVICE_CIDR: "10.244.128.0/17" });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim()).toBe("vxmesh daemon: --cluster-cidr 10.244.0.0/16 overlaps service CIDR 10.244.128.0/17 (VXMESH_SERVICE_CIDR): pod and service addresses must not overlap; choose pod addresses outside every service CIDR");
  });

  it("a static peer's subnet (from the config file)", async () => {
    const f = file("svc.yaml", "service-cidr:\n  - 10.96.0.0/12\n  - 10.244.2.0/24\n");
    const args = [...daemonArgs(), "--config", f];
    const r = await cli(args);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trim()).toBe(`vxmesh daemon: peer t2's subnet 10.244.2.0/24 (in --peers ${goodPeers()}) overlaps service CIDR 10.244.2.0/24 (service-cidr in ${f}:1): pod and service addresses must not overlap; choose pod addresses outside every service CIDR`);
    await expectNothingLeftInRoot(args);
  });
});

describe("vxmesh daemon: start-up errors in the root namespace", () => {
  it("an --underlay-ip assigned to no interface exits 1 before creating anything", async () => {
    const args = daemonArgs();
    const r = await cli(args);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("vxmesh daemon: --underlay-ip 192.0.2.250 is not assigned to any interface in this network namespace");
    await expectNothingLeftInRoot(args);
  });
});

describe("vxmesh daemon: start-up errors inside a lab node", () => {
  let lab: Lab | undefined;
  let n1: LabNode;
  let peersFile = "";

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{ overlay: "vxmesh" }, { overlay: "vxmesh" }] });
    n1 = lab.node("n1");
    peersFile = file("lab-peers.json", JSON.stringify(lab.peersFor("n1")));
  });

  afterAll(async () => {
    await lab?.teardown();
  });

  /** Runs `vxmesh daemon` as n1 inside n1's namespace with a peer (so a start would add a route). */
  async function startInN1(over: Record<string, string> = {}, drop: readonly string[] = []): Promise<Run & { tap: string; runDir: string }> {
    const l = lab as Lab;
    const tap = uniqueTap();
    const runDir = join(dir, `lab-run-${tap}`);
    const flags: Record<string, string> = {
      "node-name": "n1", "underlay-ip": n1.underlayIp, subnet: n1.subnet, peers: peersFile, tap, "run-dir": runDir, ...over,
    };
    for (const k of drop) delete flags[k];
    const argv = [process.execPath, cliPath(), "daemon", ...Object.entries(flags).flatMap(([k, v]) => [`--${k}`, v])];
    const r = await l.exec(n1, argv, { env: cleanEnv(), timeoutMs: 20_000 });
    return { code: r.code, stdout: r.stdout, stderr: r.stderr, tap, runDir };
  }

  it("an --underlay-ip not assigned in the node's namespace exits 1 and leaves nothing", async () => {
    const r = await startInN1({ "underlay-ip": "192.0.2.250" });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("vxmesh daemon: --underlay-ip 192.0.2.250 is not assigned to any interface in this network namespace");
    await expectNothingLeftIn(n1, r.tap, r.runDir);
  });

  it("--mtu 1451 on a 1500-byte underlay exits 1 naming 1450 as the maximum, and leaves nothing", async () => {
    const r = await startInN1({ mtu: "1451" });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("vxmesh daemon: --mtu 1451 is too large: the underlay eth0 has MTU 1500, so at most 1450 fits inside VXLAN");
    await expectNothingLeftIn(n1, r.tap, r.runDir);
  });

  it("--vxlan-port already taken exits 1 naming the port, and the TAP it had opened is gone", async () => {
    const l = lab as Lab;
    const holder = l.spawn(n1, [process.execPath, "-e",
      `const s = require("node:dgram").createSocket("udp4"); s.bind(4799, "${n1.underlayIp}", () => console.log("bound"));`]);
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout?.setEncoding("utf8").on("data", (c: string) => { if (c.includes("bound")) resolve(); });
        holder.once("exit", (code) => reject(new Error(`port holder exited ${String(code)}`)));
      });
      const r = await startInN1({ "vxlan-port": "4799" });
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain(`vxmesh daemon: --vxlan-port 4799: UDP ${n1.underlayIp}:4799 is already in use`);
      await expectNothingLeftIn(n1, r.tap, r.runDir);
    } finally {
      holder.kill("SIGKILL");
    }
  });

  it("control: the same start with --mtu 1450 runs, programs its route, answers `vxmesh status`, and SIGTERM removes it all", async () => {
    const l = lab as Lab;
    const cluster = new Cluster(l);
    const tap = uniqueTap();
    try {
      const d = await cluster.start(n1, { extraArgs: ["--mtu", "1450", "--tap", tap] });
      const link = JSON.parse((await ip(["-n", n1.namespace, "-j", "link", "show", tap])).stdout) as { mtu: number }[];
      expect(link[0]?.mtu).toBe(1450);
      expect((await ip(["-n", n1.namespace, "-4", "route", "show", "proto", "118"])).stdout).toContain(`10.244.2.0/24 via 10.244.2.0 dev ${tap}`);
      const st = await cli(["status", "--run-dir", d.runDir, "--json"]);
      expect(st.code, st.stderr).toBe(0);
      expect(JSON.parse(st.stdout)).toMatchObject({ node: "n1", tap, mtu: 1450, peers: [{ name: "n2" }] });
      expect(await d.stop()).toBe(0);
      await expectNothingLeftIn(n1, tap, d.runDir);
    } finally {
      await cluster.stopAll();
    }
  });

  // Conflicts found only once the daemon looks at the peers together or at the kernel: each
  // start is refused with exit 1 and one clear line, and leaves nothing behind.
  const defects: { name: string; run: () => Promise<Run & { tap: string; runDir: string }>; want: string }[] = [
    {
      name: "two peers with the same underlayIp",
      run: () => startInN1({ peers: file("dup-ip.json", JSON.stringify([
        { name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24" },
        { name: "n3", underlayIp: "192.0.2.12", subnet: "10.244.3.0/24" },
      ])) }),
      want: "n3",
    },
    {
      name: "two peers with the same vtepMac",
      run: () => startInN1({ peers: file("dup-mac.json", JSON.stringify([
        { name: "n2", underlayIp: "192.0.2.12", subnet: "10.244.2.0/24", vtepMac: "02:00:00:00:00:22" },
        { name: "n3", underlayIp: "192.0.2.13", subnet: "10.244.3.0/24", vtepMac: "02:00:00:00:00:22" },
      ])) }),
      want: "n3",
    },
    {
      name: "--tap naming an existing device that is not a TAP (the pod bridge)",
      run: async () => {
        const r = await startInN1({ tap: n1.bridge });
        return { ...r, tap: "vxmesh-none" };
      },
      want: "--tap vxmesh-br",
    },
    {
      // What a second daemon in the same namespace, or any other owner of that route, meets.
      name: "a route to a peer's subnet that someone else already owns",
      run: async () => {
        const ns = n1.namespace;
        expect((await ip(["-n", ns, "route", "add", "10.244.2.0/24", "dev", n1.bridge, "proto", "static"])).code).toBe(0);
        try {
          const r = await startInN1();
          // Never touches what it does not own: the other route is still there, unchanged.
          expect((await ip(["-n", ns, "route", "show", "10.244.2.0/24"])).stdout.trim()).toMatch(new RegExp(`^10\\.244\\.2\\.0/24 dev ${n1.bridge} proto static scope link`));
          return r;
        } finally {
          await ip(["-n", ns, "route", "del", "10.244.2.0/24", "dev", n1.bridge]);
        }
      },
      want: "10.244.2.0/24",
    },
  ];
  // The pod addresses meet a route the host already has (not vxmesh's, not on the pod bridge):
  // refused before anything is made, naming the route and its device; the route stays.
  const hostRouteCases: { name: string; route: string; over: () => { set: Record<string, string>; drop: string[] }; want: string }[] = [
    {
      name: "static peers: a host route inside a peer's subnet",
      route: "10.244.2.128/25", over: () => ({ set: {}, drop: [] }),
      want: "vxmesh daemon: peer n2's subnet 10.244.2.0/24 (in --peers PEERS) overlaps the host route 10.244.2.128/25 dev eth0 proto static (device eth0)",
    },
    {
      name: "gossip: a host route inside the cluster CIDR",
      route: "10.244.200.0/24",
      over: () => {
        const key = file("lab-key", generateKey() + "\n");
        chmodSync(key, 0o600);
        return { set: { "key-file": key, "state-dir": join(dir, "lab-state") }, drop: ["peers", "subnet"] };
      },
      want: "vxmesh daemon: --cluster-cidr 10.244.0.0/16 overlaps the host route 10.244.200.0/24 dev eth0 proto static (device eth0)",
    },
  ];
  for (const c of hostRouteCases) {
    it(`${c.name}: exits 1 naming the route and its device, and leaves nothing`, async () => {
      const ns = n1.namespace;
      expect(n1.underlayIf).toBe("eth0");
      expect((await ip(["-n", ns, "route", "add", c.route, "dev", "eth0", "proto", "static"])).code).toBe(0);
      try {
        const { set, drop } = c.over();
        const r = await startInN1(set, drop);
        expect(r.code, r.stderr).toBe(1);
        expect(r.stderr.trim().split("\n")).toHaveLength(1);
        expect(r.stderr.trim()).toContain(c.want.replace("PEERS", peersFile));
        await expectNothingLeftIn(n1, r.tap, r.runDir);
        expect((await ip(["-n", ns, "route", "show", c.route])).stdout.trim()).toBe(`${c.route} dev eth0 proto static scope link`);
      } finally {
        await ip(["-n", ns, "route", "del", c.route, "dev", "eth0"]);
      }
    });
  }

  const results = new Map<string, Run & { tap: string; runDir: string }>();

  for (const d of defects) {
    it(`${d.name}: refused, and nothing is left`, async () => {
      const r = await d.run();
      results.set(d.name, r);
      expect(r.code, r.stderr).not.toBe(0);
      await expectNothingLeftIn(n1, r.tap, r.runDir);
      const bridge = await ip(["-n", n1.namespace, "-d", "-j", "link", "show", n1.bridge]);
      expect(bridge.code).toBe(0);
    });
    it(`${d.name}: exits 1 with one clear line`, () => {
      const r = results.get(d.name);
      expect(r).toBeDefined();
      expect(r?.code).toBe(1);
      expect(r?.stderr.trim().split("\n")).toHaveLength(1);
      expect(r?.stderr).toContain(d.want);
      expect(r?.stderr).not.toContain("internal error");
    });
  }
});
