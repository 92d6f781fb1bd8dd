// The CNI protocol as data (CNI SPEC 1.1.0, also accepting 0.4.0 and 1.0.0 configurations):
// the environment, the request configuration, results in each version's shape, and errors
// with the spec's codes. Pure: no I/O, so every rule here is testable without a kernel.

import { formatIpv4, parseIpv4, parseMac, type Ipv4, type MacAddr } from "../encap/types";

const CURRENT_VERSION = "1.1.0";
export const SUPPORTED_VERSIONS: readonly string[] = ["0.4.0", "1.0.0", "1.1.0"];

/** Error codes: 0–99 are the spec's well-known ones, 100+ are ours (cni/README.md). */
export const ErrorCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironment: 4,
  IoFailure: 5,
  DecodingFailure: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  NotAvailable: 50,
  LimitedConnectivity: 51,
  /** ADD: every address of the node subnet is reserved. */
  AddressesExhausted: 100,
  /** CHECK: the attachment is not as prevResult describes it. */
  CheckFailed: 101,
  /** The kernel refused a change (netlink error). */
  KernelFailure: 102,
  /** ADD: the interface name is taken in the container, or the host veth name by someone else. */
  Conflict: 103,
  /** ADD: the address the runtime asked for (CNI_ARGS IP=, runtimeConfig ips) is taken or not in the node's pod range. */
  AddressUnavailable: 104,
  /** Anything unexpected (the reference plugins' skel uses 999 the same way). */
  Internal: 999,
} as const;

export class CniError extends Error {
  override readonly name = "CniError";
  constructor(readonly code: number, msg: string, readonly details = "") {
    super(msg);
  }
}

export type Command = "ADD" | "DEL" | "CHECK" | "VERSION" | "GC" | "STATUS";
const COMMANDS: readonly Command[] = ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"];

export interface CniEnv {
  command: Command;
  /** Empty for GC, STATUS, VERSION. */
  containerID: string;
  /** Empty when not given (DEL may omit it). */
  netns: string;
  ifname: string;
  args: string;
  path: string;
}

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** Container IDs and network names: alphanumeric first, then alphanumerics, _ . - */
export function validName(s: string): boolean {
  return NAME_RE.test(s);
}

/** The spec's interface-name rules (and the kernel's): 1–15 bytes, not . or .., no / : or whitespace. */
function ifnameProblem(s: string): string | undefined {
  if (s.length === 0) return "is empty";
  if (Buffer.byteLength(s, "utf8") > 15) return "is longer than 15 bytes";
  if (s === "." || s === "..") return "is . or ..";
  if (/[/:\s]/u.test(s)) return "contains / or : or whitespace";
  return undefined;
}

/** Reads and validates the CNI_* variables for the command they name. Throws CniError 4. */
export function parseEnv(env: Readonly<Record<string, string>>): CniEnv {
  const get = (k: string): string => {
    const v = env[k];
    return typeof v === "string" ? v : "";
  };
  const cmd = get("CNI_COMMAND");
  if (cmd === "") throw new CniError(ErrorCode.InvalidEnvironment, "required env variables [CNI_COMMAND] missing");
  if (!(COMMANDS as readonly string[]).includes(cmd)) {
    throw new CniError(ErrorCode.InvalidEnvironment, `unknown CNI_COMMAND: ${cmd}`, `valid: ${COMMANDS.join(", ")}`);
  }
  const command = cmd as Command;
  const out: CniEnv = {
    command,
    containerID: get("CNI_CONTAINERID"),
    netns: get("CNI_NETNS"),
    ifname: get("CNI_IFNAME"),
    args: get("CNI_ARGS"),
    path: get("CNI_PATH"),
  };
  const attachment = command === "ADD" || command === "DEL" || command === "CHECK";
  if (!attachment) return out;
  const missing: string[] = [];
  if (out.containerID === "") missing.push("CNI_CONTAINERID");
  if (out.netns === "" && command !== "DEL") missing.push("CNI_NETNS");
  if (out.ifname === "") missing.push("CNI_IFNAME");
  if (missing.length > 0) throw new CniError(ErrorCode.InvalidEnvironment, `required env variables [${missing.join(",")}] missing`);
  if (!validName(out.containerID)) {
    throw new CniError(ErrorCode.InvalidEnvironment, "CNI_CONTAINERID: invalid characters in containerID", out.containerID);
  }
  const bad = ifnameProblem(out.ifname);
  if (bad !== undefined) throw new CniError(ErrorCode.InvalidEnvironment, `CNI_IFNAME: interface name ${bad}`, out.ifname);
  if (out.netns !== "" && !out.netns.startsWith("/")) {
    // The daemon resolves the path, not the runtime: a relative one would name something else.
    throw new CniError(ErrorCode.InvalidEnvironment, "CNI_NETNS must be an absolute path", out.netns);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Results

export interface Interface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
  socketPath?: string;
  pciID?: string;
}

export interface IpConfig {
  /** CIDR, "10.244.1.5/24". */
  address: string;
  gateway?: string;
  interface?: number;
}

export interface Route {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

export interface Dns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

export interface Result {
  interfaces: Interface[];
  ips: IpConfig[];
  routes: Route[];
  dns: Dns;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function optString(o: Record<string, unknown>, k: string, what: string): string | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new CniError(ErrorCode.InvalidConfig, `${what}.${k} must be a string`);
  return v;
}

function optUint(o: Record<string, unknown>, k: string, what: string): number | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw new CniError(ErrorCode.InvalidConfig, `${what}.${k} must be a non-negative integer`);
  return v;
}

function optStrings(o: Record<string, unknown>, k: string, what: string): string[] | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw new CniError(ErrorCode.InvalidConfig, `${what}.${k} must be a list of strings`);
  return v as string[];
}

function arrayOf(o: Record<string, unknown>, k: string, what: string): Record<string, unknown>[] {
  const v = o[k];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every(isObject)) throw new CniError(ErrorCode.InvalidConfig, `${what}.${k} must be a list of objects`);
  return v as Record<string, unknown>[];
}

function parseDns(v: unknown, what: string): Dns {
  if (v === undefined || v === null) return {};
  if (!isObject(v)) throw new CniError(ErrorCode.InvalidConfig, `${what} must be an object`);
  const dns: Dns = {};
  const ns = optStrings(v, "nameservers", what);
  const domain = optString(v, "domain", what);
  const search = optStrings(v, "search", what);
  const options = optStrings(v, "options", what);
  if (ns !== undefined) dns.nameservers = ns;
  if (domain !== undefined) dns.domain = domain;
  if (search !== undefined) dns.search = search;
  if (options !== undefined) dns.options = options;
  return dns;
}

/** Reads a result of any supported version (a prevResult); 0.4.0's ip "version" is dropped. */
export function parseResult(v: unknown, what = "prevResult"): Result {
  if (!isObject(v)) throw new CniError(ErrorCode.InvalidConfig, `${what} must be an object`);
  const interfaces = arrayOf(v, "interfaces", what).map((i, n): Interface => {
    const w = `${what}.interfaces[${n}]`;
    const name = optString(i, "name", w);
    if (name === undefined) throw new CniError(ErrorCode.InvalidConfig, `${w}.name is missing`);
    const out: Interface = { name };
    const mac = optString(i, "mac", w);
    const mtu = optUint(i, "mtu", w);
    const sandbox = optString(i, "sandbox", w);
    const socketPath = optString(i, "socketPath", w);
    const pciID = optString(i, "pciID", w);
    if (mac !== undefined) out.mac = mac;
    if (mtu !== undefined) out.mtu = mtu;
    if (sandbox !== undefined) out.sandbox = sandbox;
    if (socketPath !== undefined) out.socketPath = socketPath;
    if (pciID !== undefined) out.pciID = pciID;
    return out;
  });
  const ips = arrayOf(v, "ips", what).map((ip, n): IpConfig => {
    const w = `${what}.ips[${n}]`;
    const address = optString(ip, "address", w);
    if (address === undefined) throw new CniError(ErrorCode.InvalidConfig, `${w}.address is missing`);
    const out: IpConfig = { address };
    const gateway = optString(ip, "gateway", w);
    const iface = optUint(ip, "interface", w);
    if (gateway !== undefined) out.gateway = gateway;
    if (iface !== undefined) out.interface = iface;
    return out;
  });
  const routes = arrayOf(v, "routes", what).map((r, n): Route => {
    const w = `${what}.routes[${n}]`;
    const dst = optString(r, "dst", w);
    if (dst === undefined) throw new CniError(ErrorCode.InvalidConfig, `${w}.dst is missing`);
    const out: Route = { dst };
    for (const k of ["mtu", "advmss", "priority", "table", "scope"] as const) {
      const x = optUint(r, k, w);
      if (x !== undefined) out[k] = x;
    }
    const gw = optString(r, "gw", w);
    if (gw !== undefined) out.gw = gw;
    return out;
  });
  return { interfaces, ips, routes, dns: parseDns(v["dns"], `${what}.dns`) };
}

function atLeast(version: string, min: string): boolean {
  const a = version.split(".").map(Number);
  const b = min.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}

/** A result as JSON in the shape of `version` (1.1.0 adds MTUs and route extras; 0.4.0 has ip versions). */
export function formatResult(r: Result, version: string): Record<string, unknown> {
  const v11 = atLeast(version, "1.1.0");
  const v04 = !atLeast(version, "1.0.0");
  const interfaces = r.interfaces.map((i) => {
    const o: Record<string, unknown> = { name: i.name };
    if (i.mac !== undefined) o["mac"] = i.mac;
    if (v11 && i.mtu !== undefined) o["mtu"] = i.mtu;
    if (i.sandbox !== undefined && i.sandbox !== "") o["sandbox"] = i.sandbox;
    if (v11 && i.socketPath !== undefined) o["socketPath"] = i.socketPath;
    if (v11 && i.pciID !== undefined) o["pciID"] = i.pciID;
    return o;
  });
  const ips = r.ips.map((ip) => {
    const o: Record<string, unknown> = {};
    if (v04) o["version"] = ip.address.includes(":") ? "6" : "4";
    if (ip.interface !== undefined) o["interface"] = ip.interface;
    o["address"] = ip.address;
    if (ip.gateway !== undefined) o["gateway"] = ip.gateway;
    return o;
  });
  const routes = r.routes.map((rt) => {
    const o: Record<string, unknown> = { dst: rt.dst };
    if (rt.gw !== undefined) o["gw"] = rt.gw;
    if (v11) for (const k of ["mtu", "advmss", "priority", "table", "scope"] as const) if (rt[k] !== undefined) o[k] = rt[k];
    return o;
  });
  return { cniVersion: version, interfaces, ips, routes, dns: { ...r.dns } };
}

/**
 * ADD with a prevResult: what came before stays, ours is appended, our ips' interface indexes
 * are shifted past the earlier interfaces, and earlier DNS settings win over ours.
 */
export function mergeResults(prev: Result | undefined, ours: Result): Result {
  if (prev === undefined) return ours;
  const shift = prev.interfaces.length;
  const dns = Object.keys(prev.dns).length > 0 ? prev.dns : ours.dns;
  return {
    interfaces: [...prev.interfaces, ...ours.interfaces],
    ips: [...prev.ips, ...ours.ips.map((ip) => (ip.interface === undefined ? ip : { ...ip, interface: ip.interface + shift }))],
    routes: [...prev.routes, ...ours.routes],
    dns,
  };
}

// ---------------------------------------------------------------------------------------------
// Configuration

export interface Attachment {
  containerID: string;
  ifname: string;
}

export interface NetConf {
  cniVersion: string;
  name: string;
  /** An MTU the configuration asks for (at most the daemon's). */
  mtu: number | undefined;
  dns: Dns;
  prevResult: Result | undefined;
  /** GC only: `cni.dev/valid-attachments`; undefined when absent. */
  validAttachments: Attachment[] | undefined;
  /** The `ips` and `mac` capabilities (CONVENTIONS.md), and the `args.cni.ips` convention. */
  runtime: { ips: string[]; mac: string | undefined };
  raw: Record<string, unknown>;
}

/**
 * Decodes and checks the request configuration for `command` (not VERSION). Unknown fields are
 * tolerated. Throws CniError 6 (not JSON), 7 (invalid), 1 (version).
 */
export function parseConfig(stdin: string, command: Command): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (e) {
    throw new CniError(ErrorCode.DecodingFailure, `error decoding network config: ${(e as Error).message}`);
  }
  if (!isObject(raw)) throw new CniError(ErrorCode.DecodingFailure, "error decoding network config: not a JSON object");
  const name = raw["name"];
  if (name === undefined || name === "") throw new CniError(ErrorCode.InvalidConfig, "missing network name");
  if (typeof name !== "string" || !validName(name)) {
    throw new CniError(ErrorCode.InvalidConfig, "invalid characters found in network name", String(name));
  }
  const version = raw["cniVersion"];
  if (typeof version !== "string" || version === "") {
    throw new CniError(ErrorCode.IncompatibleVersion, "incompatible CNI versions", `the config has no cniVersion; supported: ${SUPPORTED_VERSIONS.join(", ")}`);
  }
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new CniError(ErrorCode.IncompatibleVersion, "incompatible CNI versions", `config is "${version}", plugin supports [${SUPPORTED_VERSIONS.map((v) => `"${v}"`).join(" ")}]`);
  }
  if ((command === "GC" || command === "STATUS") && !atLeast(version, "1.1.0")) {
    throw new CniError(ErrorCode.IncompatibleVersion, `config version does not allow ${command}`, `${command} needs cniVersion 1.1.0 or later; the config is ${version}`);
  }
  let mtu: number | undefined;
  if (raw["mtu"] !== undefined && raw["mtu"] !== null) {
    const m = raw["mtu"];
    if (typeof m !== "number" || !Number.isInteger(m) || m < 68 || m > 65535) {
      throw new CniError(ErrorCode.InvalidConfig, "mtu must be an integer from 68 to 65535", JSON.stringify(m));
    }
    mtu = m;
  }
  const prevResult = raw["prevResult"] === undefined || raw["prevResult"] === null ? undefined : parseResult(raw["prevResult"]);
  let validAttachments: Attachment[] | undefined;
  if (command === "GC" && raw["cni.dev/valid-attachments"] !== undefined) {
    const list = raw["cni.dev/valid-attachments"];
    if (!Array.isArray(list)) throw new CniError(ErrorCode.InvalidConfig, "cni.dev/valid-attachments must be a list");
    validAttachments = list.map((a, i) => {
      if (!isObject(a) || typeof a["containerID"] !== "string" || typeof a["ifname"] !== "string") {
        throw new CniError(ErrorCode.InvalidConfig, `cni.dev/valid-attachments[${i}] must be {"containerID": string, "ifname": string}`);
      }
      return { containerID: a["containerID"], ifname: a["ifname"] };
    });
  }
  return { cniVersion: version, name, mtu, dns: parseDns(raw["dns"], "dns"), prevResult, validAttachments, runtime: command === "ADD" ? parseRuntime(raw) : { ips: [], mac: undefined }, raw };
}

/**
 * runtimeConfig.ips / runtimeConfig.mac, and args.cni.ips, as given (checked by
 * requestedAttachment). Read for ADD only: a DEL, CHECK or GC must never fail (or a queued DEL be
 * dropped) over fields only an ADD uses.
 */
function parseRuntime(raw: Record<string, unknown>): NetConf["runtime"] {
  const rc = raw["runtimeConfig"];
  const ips: string[] = [];
  let mac: string | undefined;
  if (rc !== undefined && rc !== null) {
    if (!isObject(rc)) throw new CniError(ErrorCode.InvalidConfig, "runtimeConfig must be an object");
    ips.push(...(optStrings(rc, "ips", "runtimeConfig") ?? []));
    mac = optString(rc, "mac", "runtimeConfig");
  }
  const args = raw["args"];
  if (isObject(args) && isObject(args["cni"])) ips.push(...(optStrings(args["cni"], "ips", "args.cni") ?? []));
  return { ips, mac };
}

/** What the runtime asked of an ADD: a fixed address and/or MAC for the pod's interface. */
export interface Requested {
  ip: Ipv4 | undefined;
  mac: MacAddr | undefined;
}

/**
 * The address and MAC the runtime asked for, from CNI_ARGS (`IP=`, `MAC=`, as podman --ip /
 * --mac-address and `podman network reload` pass them) and the `ips`/`mac` capabilities, as the
 * reference bridge and host-local read them. Other CNI_ARGS keys are ignored (runtimes pass
 * K8S_POD_NAME and such). An address may carry a prefix length ("10.244.1.5/24"); its length is
 * the node subnet's anyway. Throws CniError 4 (malformed CNI_ARGS) or 7 (malformed or more than
 * one IPv4 address, or IPv6, which vxmesh does not carry yet).
 */
export function requestedAttachment(args: string, conf: NetConf): Requested {
  const fromArgs: { ips: string[]; mac: string | undefined } = { ips: [], mac: undefined };
  for (const pair of args.split(";")) {
    if (pair.trim() === "") continue;
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new CniError(ErrorCode.InvalidEnvironment, "CNI_ARGS: expected KEY=VALUE pairs separated by ;", pair);
    const key = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    if (key === "IP") fromArgs.ips.push(...value.split(",").map((v) => v.trim()).filter((v) => v !== ""));
    else if (key === "MAC") fromArgs.mac = value;
  }
  const wanted = new Set<number>();
  const check = (text: string, where: string, code: number): void => {
    const slash = text.indexOf("/");
    const addr = slash < 0 ? text : text.slice(0, slash);
    if (addr.includes(":")) throw new CniError(code, `${where}: ${text} is an IPv6 address; vxmesh-cni gives pods IPv4 addresses only`);
    const ip = parseIpv4(addr);
    if (!ip.ok || (slash >= 0 && !/^\d{1,2}$/.test(text.slice(slash + 1)))) throw new CniError(code, `${where}: ${JSON.stringify(text)} is not an IPv4 address`, "expected a.b.c.d or a.b.c.d/len");
    wanted.add(ip.value);
  };
  for (const t of fromArgs.ips) check(t, "CNI_ARGS IP", ErrorCode.InvalidEnvironment);
  for (const t of conf.runtime.ips) check(t, "runtimeConfig ips", ErrorCode.InvalidConfig);
  if (wanted.size > 1) {
    throw new CniError(ErrorCode.InvalidConfig, "more than one IPv4 address requested; vxmesh-cni gives an attachment one",
      [...wanted].map((ip) => formatIpv4(ip)).join(", "));
  }
  const macText = fromArgs.mac !== undefined && fromArgs.mac !== "" ? fromArgs.mac : conf.runtime.mac;
  let mac: MacAddr | undefined;
  if (macText !== undefined && macText !== "") {
    const m = parseMac(macText.toLowerCase());
    if (!m.ok) throw new CniError(fromArgs.mac !== undefined ? ErrorCode.InvalidEnvironment : ErrorCode.InvalidConfig, `${fromArgs.mac !== undefined ? "CNI_ARGS MAC" : "runtimeConfig mac"}: ${JSON.stringify(macText)} is not valid: expected ${m.error}`);
    mac = m.value;
  }
  const [ip] = wanted;
  return { ip: ip as Ipv4 | undefined, mac };
}

/** The cniVersion to put in an error: the config's when it is one we speak. */
export function errorVersion(stdin: string): string {
  try {
    const v = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    if (typeof v === "string" && SUPPORTED_VERSIONS.includes(v)) return v;
  } catch {
    /* not JSON */
  }
  return CURRENT_VERSION;
}

export function formatError(version: string, code: number, msg: string, details: string): string {
  const o: Record<string, unknown> = { cniVersion: version, code, msg };
  if (details !== "") o["details"] = details;
  return JSON.stringify(o);
}

/** The VERSION answer: the version asked about (the current one when none), and ours. */
export function versionResult(stdin: string): Record<string, unknown> {
  let asked = CURRENT_VERSION;
  try {
    const v = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    if (typeof v === "string" && v !== "") asked = v;
  } catch {
    /* VERSION ignores a malformed stdin */
  }
  return { cniVersion: asked, supportedVersions: [...SUPPORTED_VERSIONS] };
}
