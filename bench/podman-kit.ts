// Test and measurement tooling only (never used by the daemon): Debian's podman (4.3, its CNI
// network backend, runc) as the container runtime of a lab node, so that a real runtime drives
// vxmesh-cni. Each PodmanNode keeps everything podman writes in one directory of its own
// (storage root, run root, tmp dir, configuration, CNI conflists, plugin dir), normally under the
// lab's per-run work dir, and its containers in a cgroup parent of its own; cleanup() removes all
// of it, including what podman leaves elsewhere when a test fails half-way (its netns mounts in
// /run/netns, runc state, libcni's result cache, conmon and container processes, mounts).
//
// What podman 4.3 needs on these machines, found by trying:
// - It runs in the node's network namespace through `nsenter --net=…`, not `ip netns exec`: the
//   latter gives podman a private mount namespace, so the netns bind mounts podman makes under
//   /run/netns are invisible to everyone else: to the next podman call, to conmon's `podman
//   container cleanup`, and to the vxmesh daemon, which then answers the ADD with "CNI_NETNS
//   /run/netns/netns-… is not a network namespace" (it sees only the empty mount point).
// - runc, not crun (crun refuses the hybrid cgroup v1/v2 layout), with cgroupfs and file events
//   (no systemd, no journald), a `--cgroup-parent` per node so its cgroups can be found again.
// - Explicit ulimits: without them podman asks runc for RLIMIT_NOFILE 1048576, and the sandbox has
//   no CAP_SYS_RESOURCE to raise the hard limit ("error setting rlimit type 7"). nproc has to stay
//   under podman's own (lowered) hard limit too; root in the container is exempt from it anyway.
// - CONTAINERS_CONF replaces every other containers.conf; conmon passes it on to the cleanup
//   command it runs when a container exits, which is how that command finds the plugin dirs.
//   Storage settings reach the cleanup command as flags (--root, --runroot, --storage-driver).
// - `podman import` checks the signature policy: ours is passed with --signature-policy, so
//   nothing depends on /etc/containers/policy.json. (It still writes its blob info cache to
//   /var/lib/containers/cache as root; podman 4.3 has no setting for that, nor for runc's state in
//   /run/runc or libcni's result cache in /var/lib/cni, whose entries cleanup removes.)

import { execFile, spawnSync } from "node:child_process";
import type { Dirent } from "node:fs";
import {
  copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync, closeSync, readdirSync,
  rmdirSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { LAB_NS_PATTERN, waitFor, type ExecResult } from "./lab";

const execFileP = promisify(execFile);

/** The image every podman node imports: busybox-static and its applets, nothing else. */
export const BUSYBOX_IMAGE = "localhost/vxmesh-busybox:latest";
const BUSYBOX_APPLETS = [
  "sh", "ash", "cat", "echo", "env", "false", "grep", "hostname", "httpd", "ifconfig", "ip", "kill", "ls",
  "mkdir", "nc", "ping", "ps", "route", "sleep", "true",
];
/** ulimits every container gets (see the header). */
export const CONTAINER_ULIMITS = ["nofile=1024:1024", "nproc=1024:1024"];
/** Where runc keeps container state and libcni its result cache: podman 4.3 has no setting for either. */
const RUNC_ROOT = "/run/runc";
const CNI_CACHE = "/var/lib/cni/results";
/** What a node made outside its storage, in its dir (for cleanupPodmanLeftovers). */
const RECORD_FILE = "podman-kit.json";
const PODMAN_CGROUP_SUFFIX = "-podman";
const PATH_DEFAULT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export type StorageDriver = "overlay" | "vfs";

export interface PodmanNodeOptions {
  /** The network namespace podman runs in (a name under /run/netns, e.g. a lab node's). */
  namespace: string;
  /** Everything of this node's podman goes here; cleanup() removes it. */
  dir: string;
  /** Where podman looks for CNI plugins, in order. */
  pluginDirs: readonly string[];
  /** Where podman reads the CNI conflists (its network_config_dir). */
  networkConfigDir: string;
  /** The cgroup parent of this node's containers and conmons, e.g. "/vxm123x1-n1-podman". */
  cgroupParent: string;
  /** Default: overlay when podman can use it here, else vfs. */
  driver?: StorageDriver;
}

export interface ContainerInfo {
  id: string;
  name: string;
  running: boolean;
  pid: number;
  /** The container's network namespace (podman's /run/netns/netns-… bind mount), "" when none. */
  sandboxKey: string;
  /** By network name. */
  networks: Record<string, { ip: string; prefixLen: number; gateway: string; mac: string }>;
}

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null;
}

async function run(file: string, args: readonly string[], opts: RunOptions & { env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
  const p = execFileP(file, [...args], {
    encoding: "utf8", timeout: opts.timeoutMs ?? 60_000, killSignal: "SIGKILL", maxBuffer: 16 * 1024 * 1024, env: opts.env,
  });
  p.child.stdin?.on("error", () => undefined);
  p.child.stdin?.end(opts.input ?? "");
  try {
    const { stdout, stderr } = await p;
    return { code: 0, signal: null, timedOut: false, stdout, stderr };
  } catch (e: unknown) {
    if (!isObject(e) || typeof e["code"] === "string") throw e;
    const signal = typeof e["signal"] === "string" ? (e["signal"] as NodeJS.Signals) : null;
    return {
      code: typeof e["code"] === "number" ? e["code"] : null,
      signal,
      timedOut: e["killed"] === true && signal !== null,
      stdout: typeof e["stdout"] === "string" ? e["stdout"] : "",
      stderr: typeof e["stderr"] === "string" ? e["stderr"] : "",
    };
  }
}

/** True when the ELF file at `path` has no program interpreter (a static executable). */
function isStaticElf(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const head = Buffer.alloc(64);
    readSync(fd, head, 0, 64, 0);
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2) return false; // ELF64 only
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    return true;
  } finally {
    closeSync(fd);
  }
}

function findBusybox(): string {
  for (const p of ["/usr/bin/busybox", "/bin/busybox"]) {
    if (existsSync(p) && isStaticElf(p)) return p;
  }
  throw new Error("no static busybox in /usr/bin or /bin: install the Debian package busybox-static");
}

/** Mount points at or under `dir`, deepest first (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const mp = line.split(" ")[4];
    if (mp === undefined) continue;
    const path = mp.replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (path === dir || path.startsWith(dir + "/")) out.push(path);
  }
  return [...new Set(out)].sort((a, b) => b.length - a.length);
}

/**
 * Pids of the processes a podman node made: those whose command line names a path inside `dir`
 * (conmon, podman's cleanup commands) and those in a cgroup under `cgroupParent` (the containers'
 * processes; their root directory says nothing, as they live in a mount namespace of their own).
 */
export function processesOf(dir: string, cgroupParent: string): number[] {
  const pids = new Set(cgroupPids(cgroupParent));
  for (const e of dir === "" ? [] : readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(dir + "/")) pids.add(pid);
    } catch {
      /* gone */
    }
  }
  pids.delete(process.pid);
  return [...pids];
}

/** Every pid in the cgroup trees named `parent`, in all hierarchies. */
function cgroupPids(parent: string): number[] {
  const out = new Set<number>();
  const walk = (dir: string): void => {
    let entries: Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else if (e.name === "cgroup.procs") {
        try {
          for (const l of readFileSync(join(dir, e.name), "utf8").split("\n")) if (/^\d+$/.test(l)) out.add(Number(l));
        } catch {
          /* removed meanwhile */
        }
      }
    }
  };
  for (const d of cgroupDirs(parent)) walk(d);
  return [...out];
}

function unmountAll(paths: readonly string[]): void {
  for (const p of paths) {
    // Lazily if still busy: what matters is that nothing stays mounted.
    if (spawnSync("umount", [p], { stdio: "ignore" }).status !== 0) spawnSync("umount", ["-l", p], { stdio: "ignore" });
  }
}

/** Removes a cgroup directory and its child cgroups (only directories; cgroupfs refuses the rest). */
function rmCgroupTree(path: string): void {
  let entries: string[];
  try {
    entries = readdirSync(path);
  } catch {
    return;
  }
  for (const e of entries) {
    const child = join(path, e);
    try {
      if (statSync(child).isDirectory()) rmCgroupTree(child);
    } catch {
      /* gone */
    }
  }
  try {
    rmdirSync(path);
  } catch {
    /* still has tasks, or gone */
  }
}

/** Every cgroup hierarchy root: /sys/fs/cgroup itself (v2) and each mounted controller under it (v1). */
function cgroupRoots(): string[] {
  const roots = ["/sys/fs/cgroup"];
  try {
    for (const e of readdirSync("/sys/fs/cgroup")) {
      const p = join("/sys/fs/cgroup", e);
      if (mountsUnder(p).includes(p)) roots.push(p);
    }
  } catch {
    /* no cgroupfs */
  }
  return roots;
}

/** A cgroup parent this kit makes and removes: one path segment of its own, never a hierarchy's root. */
const CGROUP_PARENT_RE = /^\/[A-Za-z0-9_.-]+$/;

/** The directories of cgroup parent `parent` ("/name") in every hierarchy that has it. */
export function cgroupDirs(parent: string): string[] {
  if (!CGROUP_PARENT_RE.test(parent)) return [];
  return cgroupRoots().map((r) => join(r, parent)).filter((p) => existsSync(p));
}

/** What cleanup() found and removed, for a test to look at. */
export interface CleanupReport {
  /** Containers `podman rm -af` removed. */
  removed: number;
  /** Processes that had to be killed (podman's own removal did not end them): pid and command line. */
  killed: string[];
  /** Mounts that had to be unmounted. */
  unmounted: string[];
  /** podman netns bind mounts that had to be removed. */
  netns: string[];
  errors: string[];
}

/** A lab node's podman: its own storage, run root, tmp dir, configuration and cgroup parent. */
export class PodmanNode {
  readonly namespace: string;
  readonly dir: string;
  readonly root: string;
  readonly runRoot: string;
  readonly tmpDir: string;
  readonly confDir: string;
  readonly networkConfigDir: string;
  readonly cgroupParent: string;
  private storageDriver: StorageDriver;
  /** Every container id and netns this node made, so cleanup finds them even when podman cannot. */
  private readonly containerIds = new Set<string>();
  private readonly sandboxKeys = new Set<string>();
  private cidCounter = 0;

  private constructor(private readonly opts: PodmanNodeOptions) {
    this.namespace = opts.namespace;
    this.dir = opts.dir;
    this.root = join(opts.dir, "root");
    this.runRoot = join(opts.dir, "runroot");
    this.tmpDir = join(opts.dir, "tmp");
    this.confDir = join(opts.dir, "conf");
    this.networkConfigDir = opts.networkConfigDir;
    if (!CGROUP_PARENT_RE.test(opts.cgroupParent)) throw new Error(`cgroup parent "${opts.cgroupParent}" is not valid: expected "/" and one name, e.g. "/vxm1x1-n1-podman"`);
    this.cgroupParent = opts.cgroupParent;
    this.storageDriver = opts.driver ?? "overlay";
  }

  /** Writes the node's configuration and settles the storage driver (overlay, else vfs). */
  static async create(opts: PodmanNodeOptions): Promise<PodmanNode> {
    const node = new PodmanNode(opts);
    try {
      await node.settleDriver();
    } catch (e) {
      node.sweep(); // the caller never gets the node, so nothing else would remove its mounts
      throw e;
    }
    return node;
  }

  /** Writes the configuration; overlay unless told otherwise, vfs when podman cannot use overlay here. */
  private async settleDriver(): Promise<void> {
    this.writeConfig();
    const probe = await this.podman(["info", "--format", "{{.Store.GraphDriverName}}"]);
    if (probe.code === 0) return;
    if (this.opts.driver !== undefined) throw new Error(`podman info with ${this.opts.driver} storage failed: ${probe.stderr.trim()}`);
    // overlay is not usable on every file system (on overlayfs itself, say): vfs always is.
    unmountAll(mountsUnder(this.dir));
    rmSync(this.root, { recursive: true, force: true });
    rmSync(this.runRoot, { recursive: true, force: true });
    this.storageDriver = "vfs";
    this.writeConfig();
    const again = await this.podman(["info", "--format", "{{.Store.GraphDriverName}}"]);
    if (again.code !== 0) throw new Error(`podman cannot start with overlay (${probe.stderr.trim()}) nor vfs (${again.stderr.trim()})`);
  }

  get driver(): StorageDriver {
    return this.storageDriver;
  }

  private get policyFile(): string {
    return join(this.confDir, "policy.json");
  }

  private writeConfig(): void {
    for (const d of [this.root, this.runRoot, this.tmpDir, this.confDir, this.networkConfigDir, join(this.dir, "cids")]) {
      mkdirSync(d, { recursive: true, mode: 0o700 });
    }
    const q = (s: string): string => JSON.stringify(s); // a TOML basic string is a JSON string here
    writeFileSync(join(this.confDir, "containers.conf"), [
      "[containers]",
      `default_ulimits = [${CONTAINER_ULIMITS.map(q).join(", ")}]`,
      "[network]",
      'network_backend = "cni"',
      `cni_plugin_dirs = [${this.opts.pluginDirs.map(q).join(", ")}]`,
      `network_config_dir = ${q(this.networkConfigDir)}`,
      "[engine]",
      'runtime = "runc"',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      `events_logfile_path = ${q(join(this.dir, "events.log"))}`,
      `tmp_dir = ${q(this.tmpDir)}`,
      `volume_path = ${q(join(this.root, "volumes"))}`,
      "",
    ].join("\n"));
    writeFileSync(join(this.confDir, "storage.conf"), [
      "[storage]",
      `driver = ${q(this.storageDriver)}`,
      `graphroot = ${q(this.root)}`,
      `runroot = ${q(this.runRoot)}`,
      "",
    ].join("\n"));
    // No registry is reachable, and no image is ever pulled: no search registries at all.
    writeFileSync(join(this.confDir, "registries.conf"), 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n');
    writeFileSync(this.policyFile, JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }) + "\n");
  }

  /** The environment every podman call of this node gets. */
  env(): NodeJS.ProcessEnv {
    const path = process.env["PATH"] ?? PATH_DEFAULT;
    return {
      ...process.env,
      // The reference plugins (portmap) run iptables: make sure the sbin dirs are searched.
      PATH: path.includes("/usr/sbin") ? path : `${path}:/usr/sbin:/sbin`,
      CONTAINERS_CONF: join(this.confDir, "containers.conf"),
      CONTAINERS_STORAGE_CONF: join(this.confDir, "storage.conf"),
      CONTAINERS_REGISTRIES_CONF: join(this.confDir, "registries.conf"),
      TMPDIR: this.tmpDir,
    };
  }

  /** Global flags: the same places as the configuration says, so no call depends on the env alone. */
  globalArgs(): string[] {
    return [
      "--root", this.root, "--runroot", this.runRoot, "--tmpdir", this.tmpDir, "--storage-driver", this.storageDriver,
      "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc",
      "--network-config-dir", this.networkConfigDir,
    ];
  }

  /** `podman <args>` inside the node's network namespace; never throws on a non-zero exit. */
  podman(args: readonly string[], opts: RunOptions = {}): Promise<ExecResult> {
    return run("nsenter", [`--net=/run/netns/${this.namespace}`, "podman", ...this.globalArgs(), ...args], { ...opts, env: this.env() });
  }

  /** Like podman(), but throws with podman's stderr unless it exits 0. */
  async podmanOk(args: readonly string[], opts: RunOptions = {}): Promise<ExecResult> {
    const r = await this.podman(args, opts);
    if (r.code !== 0) {
      const how = r.timedOut ? "timed out" : r.code !== null ? `exited ${r.code}` : `killed by ${r.signal ?? "?"}`;
      throw new Error(`podman ${args.join(" ")} on ${this.namespace} ${how}: ${r.stderr.trim()}`);
    }
    return r;
  }

  /** Builds BUSYBOX_IMAGE from the machine's busybox-static (`podman import`; no registry needed). */
  async importBusybox(): Promise<void> {
    const rootfs = join(this.dir, "image-rootfs");
    rmSync(rootfs, { recursive: true, force: true });
    for (const d of ["bin", "etc", "tmp", "www", "proc", "sys", "dev"]) mkdirSync(join(rootfs, d), { recursive: true });
    copyFileSync(findBusybox(), join(rootfs, "bin", "busybox"));
    for (const a of BUSYBOX_APPLETS) symlinkSync("busybox", join(rootfs, "bin", a));
    writeFileSync(join(rootfs, "etc", "passwd"), "root:x:0:0:root:/:/bin/sh\n");
    writeFileSync(join(rootfs, "etc", "group"), "root:x:0:\n");
    const tar = join(this.dir, "image.tar");
    await execFileP("tar", ["--numeric-owner", "--owner=0", "--group=0", "-C", rootfs, "-cf", tar, "."]);
    await this.podmanOk(["import", "--signature-policy", this.policyFile, "--change", 'CMD ["/bin/sh"]', tar, BUSYBOX_IMAGE], { timeoutMs: 120_000 });
    rmSync(rootfs, { recursive: true, force: true });
    rmSync(tar, { force: true });
  }

  /**
   * `podman run` with this node's cgroup parent and ulimits; `args` is the rest (options, image,
   * command). The container's id is recorded (through --cidfile) for cleanup; it is returned with
   * the result ("" when podman did not get as far as creating it).
   */
  async run(args: readonly string[], opts: RunOptions = {}): Promise<ExecResult & { id: string }> {
    const cidfile = join(this.dir, "cids", `${++this.cidCounter}`);
    const r = await this.podman([
      "run", "--cidfile", cidfile, "--cgroup-parent", this.cgroupParent,
      ...CONTAINER_ULIMITS.flatMap((u) => ["--ulimit", u]),
      ...args,
    ], { timeoutMs: 120_000, ...opts });
    let id = "";
    try {
      id = readFileSync(cidfile, "utf8").trim();
    } catch {
      /* not created */
    }
    this.remember(id, "");
    return { ...r, id };
  }

  /** `podman run -d … ` that must succeed; returns the container's inspect data. */
  async runDetached(args: readonly string[]): Promise<ContainerInfo> {
    const r = await this.run(["-d", ...args]);
    if (r.code !== 0) throw new Error(`podman run -d ${args.join(" ")} on ${this.namespace} exited ${String(r.code)}: ${r.stderr.trim()}`);
    return this.inspect(r.id);
  }

  async inspect(idOrName: string): Promise<ContainerInfo> {
    const r = await this.podmanOk(["container", "inspect", idOrName]);
    const list = JSON.parse(r.stdout) as unknown;
    const c = Array.isArray(list) ? (list[0] as unknown) : undefined;
    if (!isObject(c)) throw new Error(`podman container inspect ${idOrName}: unexpected output`);
    const state = isObject(c["State"]) ? c["State"] : {};
    const ns = isObject(c["NetworkSettings"]) ? c["NetworkSettings"] : {};
    const nets = isObject(ns["Networks"]) ? ns["Networks"] : {};
    const networks: ContainerInfo["networks"] = {};
    for (const [name, v] of Object.entries(nets)) {
      if (!isObject(v)) continue;
      networks[name] = {
        ip: String(v["IPAddress"] ?? ""), prefixLen: Number(v["IPPrefixLen"] ?? 0), gateway: String(v["Gateway"] ?? ""), mac: String(v["MacAddress"] ?? ""),
      };
    }
    const info: ContainerInfo = {
      id: String(c["Id"] ?? ""),
      name: String(c["Name"] ?? ""),
      running: state["Running"] === true,
      pid: Number(state["Pid"] ?? 0),
      sandboxKey: String(ns["SandboxKey"] ?? ""),
      networks,
    };
    this.remember(info.id, info.sandboxKey);
    return info;
  }

  private remember(id: string, sandboxKey: string): void {
    const known = (id === "" || this.containerIds.has(id)) && (sandboxKey === "" || this.sandboxKeys.has(sandboxKey));
    if (id !== "") this.containerIds.add(id);
    if (sandboxKey !== "") this.sandboxKeys.add(sandboxKey);
    if (!known) this.saveRecord();
  }

  /** `podman exec <container> <argv>`. */
  exec(container: string, argv: readonly string[], opts: RunOptions = {}): Promise<ExecResult> {
    return this.podman(["exec", container, ...argv], opts);
  }

  /** Container ids and netns paths this node has seen (for a test's leftover checks). */
  get seen(): { containerIds: string[]; sandboxKeys: string[] } {
    return { containerIds: [...this.containerIds], sandboxKeys: [...this.sandboxKeys] };
  }

  /**
   * Removes every container (through podman while the node's namespace exists, so the CNI DELs
   * run where the ADDs did), then whatever podman could not: processes, runc state, libcni cache
   * entries, netns mounts, mounts under the node's dir, its cgroups, and the dir itself.
   * Safe to call more than once and after the namespace is gone.
   */
  async cleanup(): Promise<CleanupReport> {
    const report = emptyReport();
    if (existsSync(this.dir) && existsSync(`/run/netns/${this.namespace}`)) {
      // Learn the netns of containers the test did not inspect, before they go.
      const ps = await this.podman(["ps", "-aq", "--no-trunc"]).catch(() => undefined);
      for (const id of (ps?.stdout ?? "").split("\n").map((s) => s.trim()).filter((s) => s !== "")) {
        await this.inspect(id).catch(() => undefined);
      }
      const rm = await this.podman(["rm", "-af", "-t", "0"], { timeoutMs: 120_000 }).catch((e: unknown) => {
        report.errors.push(`podman rm -af: ${e instanceof Error ? e.message : String(e)}`);
        return undefined;
      });
      if (rm !== undefined && rm.code !== 0) report.errors.push(`podman rm -af exited ${String(rm.code)}: ${rm.stderr.trim()}`);
      report.removed = (rm?.stdout ?? "").split("\n").filter((s) => s.trim() !== "").length;
      // conmon runs `podman container cleanup` when a container ends, which can outlive `rm`.
      await waitFor(() => processesOf(this.dir, this.cgroupParent).length === 0, { timeoutMs: 10_000, what: "podman's processes to end" }).catch(() => undefined);
    }
    this.sweep(report);
    return report;
  }

  /** The part of cleanup that needs no podman (also what a later run does after a crash). */
  sweep(report: CleanupReport = emptyReport()): CleanupReport {
    return sweepRecord(this.record(), report);
  }

  private record(): NodeRecord {
    return { dir: this.dir, cgroupParent: this.cgroupParent, containerIds: [...this.containerIds], sandboxKeys: [...this.sandboxKeys] };
  }

  /** On disk as well: a later run removes what a test process that died left behind. */
  private saveRecord(): void {
    try {
      writeFileSync(join(this.dir, RECORD_FILE), JSON.stringify(this.record()) + "\n");
    } catch {
      /* the dir is gone: nothing left to record for */
    }
  }
}

function emptyReport(): CleanupReport {
  return { removed: 0, killed: [], unmounted: [], netns: [], errors: [] };
}

/** What a podman node made outside podman's own storage, kept in RECORD_FILE in its dir. */
interface NodeRecord {
  /** "" when unknown (a dead run's container found through runc). */
  dir: string;
  cgroupParent: string;
  containerIds: string[];
  sandboxKeys: string[];
}

function waitGone(pids: readonly number[], ms: number): void {
  // Synchronous on purpose (callable from anywhere); a killed process's mounts and cgroup
  // membership go only once it has been reaped.
  const deadline = Date.now() + ms;
  while (pids.some((p) => existsSync(`/proc/${p}`)) && Date.now() < deadline) spawnSync("sleep", ["0.05"]);
}

/**
 * Removes whatever a podman node left: runc containers, processes, libcni cache entries, netns
 * mounts, mounts under its dir, its cgroups and the dir.
 */
function sweepRecord(rec: NodeRecord, report: CleanupReport): CleanupReport {
  for (const id of rec.containerIds) {
    // runc kills the container's processes and removes its state and cgroups.
    if (existsSync(join(RUNC_ROOT, id))) spawnSync("runc", ["delete", "--force", id], { stdio: "ignore", timeout: 30_000 });
  }
  const pids = processesOf(rec.dir, rec.cgroupParent);
  for (const pid of pids) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
      process.kill(pid, "SIGKILL");
      report.killed.push(`${pid} ${cmd}`);
    } catch {
      /* gone */
    }
  }
  waitGone(pids, 5000);
  let cache: string[] = [];
  try {
    cache = readdirSync(CNI_CACHE);
  } catch {
    /* no cache dir */
  }
  for (const id of rec.containerIds) for (const f of cache) if (f.includes(`-${id}-`)) rmSync(join(CNI_CACHE, f), { force: true });
  for (const key of rec.sandboxKeys) {
    if (!/^\/run\/netns\/[A-Za-z0-9_.-]+$/.test(key) || !existsSync(key)) continue;
    unmountAll([key]);
    try {
      unlinkSync(key);
      report.netns.push(key);
    } catch (e) {
      report.errors.push(`removing ${key}: ${(e as Error).message}`);
    }
  }
  const mounts = rec.dir !== "" && existsSync(rec.dir) ? mountsUnder(rec.dir) : [];
  unmountAll(mounts);
  report.unmounted.push(...mounts);
  for (const d of cgroupDirs(rec.cgroupParent)) rmCgroupTree(d);
  try {
    if (rec.dir !== "") rmSync(rec.dir, { recursive: true, force: true });
  } catch (e) {
    report.errors.push(`removing ${rec.dir}: ${(e as Error).message}`);
  }
  return report;
}

function isDeadLabEntry(name: string): boolean {
  const m = LAB_NS_PATTERN.exec(name);
  if (m === null) return false;
  const pid = Number(m[1]);
  return pid !== process.pid && !existsSync(`/proc/${pid}`);
}

/**
 * What podman nodes of dead lab runs (a test process that was killed) left behind: the lab's own
 * leftover cleanup removes their namespaces and deletes their work dirs, but knows nothing of
 * containers, podman's netns mounts, mounts (on which deleting the dir fails) and cgroups. Run
 * before Lab.create. Returns what it removed.
 */
export function cleanupPodmanLeftovers(): CleanupReport {
  const report = emptyReport();
  // runc containers in a dead run's cgroup parent (found even when its dir is already gone).
  let runcIds: string[] = [];
  try {
    runcIds = readdirSync(RUNC_ROOT);
  } catch {
    /* no runc state at all */
  }
  for (const id of runcIds) {
    try {
      const state = JSON.parse(readFileSync(join(RUNC_ROOT, id, "state.json"), "utf8")) as { config?: { cgroups?: { path?: unknown } } };
      const path = state.config?.cgroups?.path;
      const parent = typeof path === "string" ? (path.split("/")[1] ?? "") : "";
      if (parent.endsWith(PODMAN_CGROUP_SUFFIX) && isDeadLabEntry(parent)) {
        sweepRecord({ dir: "", cgroupParent: `/${parent}`, containerIds: [id], sandboxKeys: [] }, report);
      }
    } catch {
      /* not a runc container we can read */
    }
  }
  for (const entry of readdirSync(tmpdir())) {
    if (!isDeadLabEntry(entry)) continue;
    for (const file of findFiles(join(tmpdir(), entry), RECORD_FILE, 3)) {
      try {
        sweepRecord(JSON.parse(readFileSync(file, "utf8")) as NodeRecord, report);
      } catch (e) {
        report.errors.push(`${file}: ${(e as Error).message}`);
      }
    }
    // Whatever is still mounted there (a node that died before writing its record).
    const mounts = mountsUnder(join(tmpdir(), entry));
    unmountAll(mounts);
    report.unmounted.push(...mounts);
  }
  for (const root of cgroupRoots()) {
    let entries: string[] = [];
    try {
      entries = readdirSync(root);
    } catch {
      continue;
    }
    for (const e of entries) {
      if (!e.endsWith(PODMAN_CGROUP_SUFFIX) || !isDeadLabEntry(e)) continue;
      const pids = cgroupPids(`/${e}`);
      for (const p of pids) {
        try {
          process.kill(p, "SIGKILL");
          report.killed.push(String(p));
        } catch {
          /* gone */
        }
      }
      waitGone(pids, 5000);
      for (const d of cgroupDirs(`/${e}`)) rmCgroupTree(d);
    }
  }
  return report;
}

function findFiles(dir: string, name: string, depth: number): string[] {
  const out: string[] = [];
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    if (e.isFile() && e.name === name) out.push(join(dir, e.name));
    else if (e.isDirectory() && depth > 0) out.push(...findFiles(join(dir, e.name), name, depth - 1));
  }
  return out;
}

/** Cgroup parent name for a node of a lab: recognisable as the lab's (its prefix). */
export function cgroupParentFor(labPrefix: string, nodeName: string): string {
  return `/${labPrefix}${nodeName}${PODMAN_CGROUP_SUFFIX}`;
}

/** The `podman version` line and the libcni version Debian built podman with (its Built-Using). */
export async function podmanVersions(): Promise<{ podman: string; libcni: string }> {
  const v = await run("podman", ["version", "--format", "{{.Client.Version}}"]);
  const dpkg = await run("dpkg-query", ["-W", "-f", "${Built-Using}", "podman"]).catch(() => undefined);
  // Debian's golang-github-appc-cni is github.com/containernetworking/cni.
  const m = /golang-github-appc-cni \(= ([^)]+)\)/.exec(dpkg?.stdout ?? "");
  return { podman: v.stdout.trim(), libcni: m?.[1] ?? "unknown" };
}
