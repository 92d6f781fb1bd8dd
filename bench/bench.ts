// The bench suite (docs/DESIGN.md §7, issue 5): for each data path — the kernel's VXLAN device (the
// baseline), vxmesh daemons, and fastd's null method when installed — build the same two-node
// lab (one pod per node), run the same load pod → pod, and report medians of repetitions with
// ratios to the kernel. `vxmesh bench` (daemon/bench-command.ts) is the command-line face.
//
// Scenarios, all from pod n1p1 to pod n2p1 across the overlay:
//   tcp1     one TCP stream, iperf3 (first second omitted), Gbit/s received; during it the CPU
//            (% of one core, /proc/<pid>/stat) and peak RSS (/proc/<pid>/status) of the
//            userspace data path's processes (vxmesh daemons, fastd) — the busier node's figure
//   tcp4     four TCP streams, the same way
//   udp64    64-byte UDP datagrams from 2–4 sendmmsg(2) senders, one per core (a small C helper
//            compiled into the lab's directory; Python if there is no C compiler) at nice 19,
//            offered without a rate limit; received datagrams/s counted at the receiving pod's
//            UDP layer (/proc/net/snmp) over a window after one second of warm-up, loss against
//            what the sending pod's interface sent in the same window
//   udp1400  the same with 1400-byte datagrams; Gbit/s of UDP payload received
//   rtt      UDP ping-pong of 64-byte datagrams between the pods (the same C helper,
//            CLOCK_MONOTONIC per round trip; Node with process.hrtime without a compiler — Node
//            adds ~100 µs at p50 and milliseconds at p99 of its own), N samples one per
//            millisecond after a warm-up; p50 and p99 in µs; the busier daemon's CPU during
//            them (what a busy-polling forwarder spends to keep the round trip short)
//
// Labs are torn down after each path, on failure, and on Ctrl-C (the lab's signal handlers);
// daemons and fastd run as tracked children of the lab, so they end with it.

import { execFile } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, hostname, loadavg, release } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Cluster } from "./cluster";
import { fastdAvailable, fastdVersion, startFastd, FASTD_BIN } from "./fastd";
import { Lab, waitFor, type LabNode, type LabPod, type OverlayKind } from "./lab";
import {
  FIGURES,
  figureResult,
  formatNumber,
  formatRatio,
  percentile,
  DATA_PATH_FLAGS,
  POLL_PATH_FLAGS,
  renderJson,
  renderMarkdown,
  renderSvg,
  ratio,
  type BenchResults,
  type MachineInfo,
  type PathName,
  type PathResult,
  type ScenarioName,
  type ScenarioResult,
} from "./report";

export { PATH_NAMES, POLL_PATH_FLAGS, SCENARIO_NAMES } from "./report";
export type { BenchResults, PathName, ScenarioName } from "./report";

const execFileP = promisify(execFile);

export interface SuiteOptions {
  paths: readonly PathName[];
  scenarios: readonly ScenarioName[];
  /** Length of each measurement. */
  seconds: number;
  /** Repetitions of each measurement; the median is reported. */
  repeat: number;
  /** Extra flags for the vxmesh daemons. */
  daemonArgs?: readonly string[];
  /** Round trips per rtt repetition (default 2000). */
  rttSamples?: number;
  /**
   * CPUs the sending and the receiving pod's processes are pinned to, the same for every path;
   * undefined leaves placement to the scheduler.
   */
  podCpus?: readonly [number, number];
  /** One line per step and per measurement; default: to stderr. */
  progress?: (line: string) => void;
  /** Recorded in the results, e.g. "vxmesh bench --repeat 3". */
  command?: string;
  fastdBin?: string;
}

const IPERF_PORT = 5201;
const UDP_PORT = 9000;
const RTT_PORT = 9100;
const UDP_WARMUP_MS = 1000;
const RTT_WARMUP = 100;
const RTT_GAP_US = 1000;
const PAUSE_BETWEEN_MS = 300;
/**
 * UDP senders offer load without a rate limit; at the lowest priority they take only the CPU
 * the data path leaves idle, so on a small machine the path (kernel softirq, daemon threads),
 * not a sender starving it, sets the rate.
 */
const NICE = ["nice", "-n", "19"];

// ---------------------------------------------------------------------------------------------
// Helpers that the tests exercise

/** utime + stime (clock ticks) from the text of /proc/<pid>/stat. */
export function parseProcStatTicks(text: string): number {
  const fields = statFieldsAfterName(text);
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error("unexpected /proc/<pid>/stat format");
  return utime + stime;
}

/** The CPU a task last ran on (field 39) from the text of /proc/<pid>/stat. */
/** The command name of /proc/<pid>/stat (field 2, between the first "(" and the last ")"). */
export function procStatComm(text: string): string {
  return text.slice(text.indexOf("(") + 1, text.lastIndexOf(")"));
}

/** What a pod's command runs as before it becomes the measured program. */
const LAUNCHERS = new Set(["ip", "taskset"]);

export function parseProcStatCpu(text: string): number {
  const cpu = Number(statFieldsAfterName(text)[36]);
  if (!Number.isInteger(cpu) || cpu < 0) throw new Error("unexpected /proc/<pid>/stat format");
  return cpu;
}

/**
 * Fields 3 onwards of /proc/<pid>/stat: the command name (field 2) is in parentheses and may
 * contain spaces, so the split starts after its last ")"; field n is at index n - 3.
 */
function statFieldsAfterName(text: string): string[] {
  const close = text.lastIndexOf(")");
  if (close < 0) throw new Error("unexpected /proc/<pid>/stat format");
  return text.slice(close + 2).split(" ");
}

/** VmRSS in kB from the text of /proc/<pid>/status. */
export function parseVmRssKb(text: string): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(text);
  if (m === null) throw new Error("no VmRSS in /proc/<pid>/status");
  return Number(m[1]);
}

export interface IfCounters {
  rxPackets: number;
  txPackets: number;
  /** Packets the interface could not pass on (counted as sent-but-lost). */
  txDropped: number;
}

/** Interface counters from `ip -s -j link show dev X`. */
export function parseIpLinkStats(json: string): IfCounters {
  const v = JSON.parse(json) as unknown;
  const first = Array.isArray(v) ? (v[0] as Record<string, unknown> | undefined) : undefined;
  const stats = first?.["stats64"] as { rx?: { packets?: number }; tx?: { packets?: number; dropped?: number } } | undefined;
  if (stats?.rx?.packets === undefined || stats.tx?.packets === undefined) throw new Error("no stats64 in ip -s -j link output");
  return { rxPackets: stats.rx.packets, txPackets: stats.tx.packets, txDropped: stats.tx.dropped ?? 0 };
}

export interface UdpRates {
  pps: number;
  /** Gbit/s of UDP payload received. */
  gbps: number;
  lossPct: number;
  sent: number;
  received: number;
}

/**
 * Datagrams that reached the UDP layer of a network namespace, from its /proc/net/snmp:
 * delivered to a socket (InDatagrams) or dropped there for a full receive buffer
 * (RcvbufErrors). Counted here rather than on the interface because an interface counts a
 * GSO super-frame once, however many datagrams the kernel later cuts it into.
 */
export function parseUdpDatagramsIn(snmp: string): number {
  const lines = snmp.split("\n").filter((l) => l.startsWith("Udp: "));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const get = (name: string): number => {
    const i = names.indexOf(name);
    const v = i < 0 ? undefined : values[i];
    if (v === undefined || !/^\d+$/.test(v)) throw new Error(`no Udp ${name} in /proc/net/snmp`);
    return Number(v);
  };
  return get("InDatagrams") + get("RcvbufErrors");
}

/**
 * Rates of a UDP window: datagrams that reached the receiving pod's UDP layer at its start
 * and end, and the sending pod's interface counters.
 */
export function udpRates(rx0: number, rx1: number, tx0: IfCounters, tx1: IfCounters, seconds: number, payloadBytes: number): UdpRates {
  const received = rx1 - rx0;
  const sent = tx1.txPackets + tx1.txDropped - (tx0.txPackets + tx0.txDropped);
  const pps = received / seconds;
  return {
    pps,
    gbps: (pps * payloadBytes * 8) / 1e9,
    lossPct: sent > 0 ? Math.max(0, (1 - received / sent) * 100) : 0,
    sent,
    received,
  };
}

// ---------------------------------------------------------------------------------------------
// Load and latency tools (compiled into the lab's directory, run inside the pods)

/**
 * `benchnet`, four modes:
 *   send DST PORT SECONDS SIZE   UDP datagrams of SIZE bytes, 64 per sendmmsg(2), no rate limit
 *   hold PORT SECONDS            a bound UDP socket nobody reads: datagrams reach the pod's UDP
 *                                layer (and are counted there) without an ICMP port-unreachable
 *                                going back, and without a reader competing for CPU
 *   echo PORT SECONDS            sends every datagram back to its sender
 *   ping DST PORT COUNT WARM GAP_US
 *                                one 64-byte datagram at a time, blocking until its echo (200 ms
 *                                timeout = lost), CLOCK_MONOTONIC around send → receive, GAP_US
 *                                pause; the first WARM round trips are not recorded. Prints
 *                                {"lost":N,"samples":[µs …]}
 * "hold" and "echo" print "bound" once their socket is bound.
 */
const BENCHNET_C = `
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#define BATCH 64
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int addr(const char *ip, const char *port, struct sockaddr_in *a) {
  memset(a, 0, sizeof *a); a->sin_family = AF_INET; a->sin_port = htons(atoi(port));
  if (ip == NULL) return 0;
  if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) { fprintf(stderr, "bad address %s\\n", ip); return -1; }
  return 0;
}
static int bound(const char *port, int rcvbuf) {
  struct sockaddr_in a; addr(NULL, port, &a);
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) { perror("socket"); exit(1); }
  if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); exit(1); }
  printf("bound\\n"); fflush(stdout);
  return fd;
}
int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (argc == 6 && strcmp(mode, "send") == 0) {
    struct sockaddr_in dst; if (addr(argv[2], argv[3], &dst) != 0) return 2;
    double secs = atof(argv[4]); int size = atoi(argv[5]);
    if (size < 1 || size > 65000) { fprintf(stderr, "bad size\\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int sb = 4 << 20; setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sb, sizeof sb);
    static char buf[65536]; struct iovec iov[BATCH]; struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
      iov[i].iov_base = buf; iov[i].iov_len = size;
      msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &dst; msgs[i].msg_hdr.msg_namelen = sizeof dst;
    }
    unsigned long long sent = 0, errors = 0; double end = now() + secs;
    while (now() < end) for (int k = 0; k < 8; k++) { int n = sendmmsg(fd, msgs, BATCH, 0); if (n > 0) sent += n; else errors++; }
    printf("{\\"sent\\":%llu,\\"errors\\":%llu}\\n", sent, errors);
    return 0;
  }
  if (argc == 4 && strcmp(mode, "hold") == 0) {
    bound(argv[2], 4096);
    double end = now() + atof(argv[3]);
    while (now() < end) { struct timespec s = { 0, 50000000 }; nanosleep(&s, NULL); }
    return 0;
  }
  if (argc == 4 && strcmp(mode, "echo") == 0) {
    int fd = bound(argv[2], 0);
    struct timeval tv = { 0, 100000 }; setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    double end = now() + atof(argv[3]); char buf[2048];
    while (now() < end) {
      struct sockaddr_in from; socklen_t fl = sizeof from;
      ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
      if (n > 0) sendto(fd, buf, n, 0, (struct sockaddr *)&from, fl);
    }
    return 0;
  }
  if (argc == 7 && strcmp(mode, "ping") == 0) {
    struct sockaddr_in dst; if (addr(argv[2], argv[3], &dst) != 0) return 2;
    int count = atoi(argv[4]), warm = atoi(argv[5]); long gapUs = atol(argv[6]);
    if (count < 1) return 2;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0) { perror("connect"); return 1; }
    struct timeval tv = { 0, 200000 }; setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    unsigned char out[64] = { 0 }, in[2048]; int lost = 0, got = 0;
    double *us = calloc(count, sizeof *us);
    if (us == NULL) return 1;
    for (unsigned seq = 1; got + lost < count; seq++) {
      memcpy(out, &seq, 4);
      double t0 = now();
      if (send(fd, out, sizeof out, 0) < 0) { if ((int)seq > warm) lost++; }
      else for (;;) {
        ssize_t n = recv(fd, in, sizeof in, 0);
        if (n < 0) { if ((int)seq > warm) lost++; break; } /* timeout, or an ICMP error */
        unsigned r; if (n < 4) continue; memcpy(&r, in, 4);
        if (r != seq) continue; /* a late echo of an earlier probe */
        if ((int)seq > warm) us[got++] = (now() - t0) * 1e6;
        break;
      }
      struct timespec g = { gapUs / 1000000, (gapUs % 1000000) * 1000 }; nanosleep(&g, NULL);
    }
    printf("{\\"lost\\":%d,\\"samples\\":[", lost);
    for (int i = 0; i < got; i++) printf(i ? ",%.1f" : "%.1f", us[i]);
    printf("]}\\n");
    return 0;
  }
  fprintf(stderr, "usage: benchnet send DST PORT SECONDS SIZE | hold PORT SECONDS | echo PORT SECONDS | ping DST PORT COUNT WARM GAP_US\\n");
  return 2;
}
`;

/** "send" and "hold" in Python, for machines without a C compiler (a much weaker sender). */
const UDPGEN_PY = `
import json, socket, sys, time
mode = sys.argv[1]
if mode == "send":
    dst, port, secs, size = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = bytes(size); end = time.monotonic() + secs; sent = 0; errors = 0
    while time.monotonic() < end:
        for _ in range(256):
            try:
                s.sendto(b, (dst, port)); sent += 1
            except OSError:
                errors += 1
    print(json.dumps({"sent": sent, "errors": errors}))
elif mode == "hold":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    print("bound", flush=True)
    time.sleep(float(sys.argv[3]))
`;

/** "echo" and "ping" in Node (process.hrtime), for machines without a C compiler. */
const RTT_ECHO_JS = `
const dgram = require("node:dgram");
const [port, secs] = process.argv.slice(1).map(Number);
const s = dgram.createSocket("udp4");
s.on("message", (m, r) => s.send(m, r.port, r.address));
s.bind(port, () => process.stdout.write("bound\\n"));
setTimeout(() => process.exit(0), secs * 1000);
`;

const RTT_PING_JS = `
const dgram = require("node:dgram");
const [host, port, count, warm, gapUs] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
const s = dgram.createSocket("udp4");
const buf = Buffer.alloc(64);
const samples = [];
let seq = 0, lost = 0, t0 = 0n, timer;
function send() {
  seq++;
  buf.writeUInt32BE(seq, 0);
  timer = setTimeout(onTimeout, 200);
  t0 = process.hrtime.bigint();
  s.send(buf, port, host);
}
function next() {
  if (samples.length + lost >= count) {
    process.stdout.write(JSON.stringify({ lost, samples }) + "\\n");
    s.close();
    return;
  }
  setTimeout(send, Math.max(1, Math.round(gapUs / 1000)));
}
function onTimeout() { if (seq > warm) lost++; next(); }
s.on("message", (m) => {
  if (m.length < 4 || m.readUInt32BE(0) !== seq) return;
  const us = Number(process.hrtime.bigint() - t0) / 1000;
  clearTimeout(timer);
  if (seq > warm) samples.push(us);
  next();
});
s.bind(0, () => send());
`;

interface BenchTools {
  /** How the UDP load is made, for the record. */
  udpDescribe: string;
  /** How round trips are timed, for the record. */
  rttDescribe: string;
  senders: number;
  send(dst: string, port: number, seconds: number, size: number): string[];
  hold(port: number, seconds: number): string[];
  echo(port: number, seconds: number): string[];
  ping(dst: string, port: number, count: number, warm: number, gapUs: number): string[];
}

async function prepareTools(dir: string, senders: number): Promise<BenchTools> {
  const src = join(dir, "benchnet.c");
  const bin = join(dir, "benchnet");
  writeFileSync(src, BENCHNET_C);
  const rttC = "C ping-pong of 64-byte UDP datagrams between the pods, CLOCK_MONOTONIC per round trip";
  const senderText = (kind: string): string => `${senders} × ${kind} sender${senders === 1 ? "" : "s"} at nice 19, no rate limit; received = datagrams reaching the receiving pod's UDP layer (/proc/net/snmp)`;
  try {
    await execFileP("cc", ["-O2", "-o", bin, src], { timeout: 60_000 });
    return {
      udpDescribe: senderText("sendmmsg(2) (C, 64 datagrams per call)"),
      rttDescribe: rttC,
      senders,
      send: (dst, port, seconds, size) => [...NICE, bin, "send", dst, String(port), String(seconds), String(size)],
      hold: (port, seconds) => [bin, "hold", String(port), String(seconds)],
      echo: (port, seconds) => [bin, "echo", String(port), String(seconds)],
      ping: (dst, port, count, warm, gapUs) => [bin, "ping", dst, String(port), String(count), String(warm), String(gapUs)],
    };
  } catch {
    const py = join(dir, "udpgen.py");
    writeFileSync(py, UDPGEN_PY);
    return {
      udpDescribe: senderText("Python sendto (no C compiler found)"),
      rttDescribe: "Node ping-pong of 64-byte UDP datagrams between the pods, process.hrtime per round trip (no C compiler found; adds Node's own latency)",
      senders,
      send: (dst, port, seconds, size) => [...NICE, "python3", py, "send", dst, String(port), String(seconds), String(size)],
      hold: (port, seconds) => ["python3", py, "hold", String(port), String(seconds)],
      echo: (port, seconds) => [process.execPath, "-e", RTT_ECHO_JS, String(port), String(seconds)],
      ping: (dst, port, count, warm, gapUs) => [process.execPath, "-e", RTT_PING_JS, dst, String(port), String(count), String(warm), String(gapUs)],
    };
  }
}

function udpSenderCount(): number {
  return Math.min(4, Math.max(2, cpus().length));
}

// ---------------------------------------------------------------------------------------------
// Resource sampling

let clkTck: number | undefined;

async function clockTicks(): Promise<number> {
  if (clkTck === undefined) {
    try {
      const { stdout } = await execFileP("getconf", ["CLK_TCK"], { timeout: 5000 });
      const v = Number(stdout.trim());
      clkTck = Number.isFinite(v) && v > 0 ? v : 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

interface ProcUsage {
  pid: number;
  cpuPct: number;
  rssMb: number;
}

/** Samples CPU time and RSS of processes from now until finish(). */
class ResourceSampler {
  private readonly start = new Map<number, number>();
  private readonly peakKb = new Map<number, number>();
  private readonly t0 = process.hrtime.bigint();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pids: readonly number[], private readonly hz: number) {
    for (const pid of pids) {
      const t = readTicks(pid);
      if (t !== undefined) this.start.set(pid, t);
    }
    this.sampleRss();
    this.timer = setInterval(() => this.sampleRss(), 250);
  }

  private sampleRss(): void {
    for (const pid of this.pids) {
      try {
        const kb = parseVmRssKb(readFileSync(`/proc/${pid}/status`, "utf8"));
        this.peakKb.set(pid, Math.max(kb, this.peakKb.get(pid) ?? 0));
      } catch {
        /* exited */
      }
    }
  }

  finish(): ProcUsage[] {
    clearInterval(this.timer);
    this.sampleRss();
    const secs = Number(process.hrtime.bigint() - this.t0) / 1e9;
    const out: ProcUsage[] = [];
    for (const pid of this.pids) {
      const a = this.start.get(pid);
      const b = readTicks(pid);
      const kb = this.peakKb.get(pid);
      if (a === undefined || b === undefined || kb === undefined) continue;
      out.push({ pid, cpuPct: ((b - a) / this.hz / secs) * 100, rssMb: kb / 1024 });
    }
    return out;
  }
}

function readTicks(pid: number): number | undefined {
  try {
    return parseProcStatTicks(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// A data path set up in its lab

interface ActivePath {
  readonly name: PathName;
  readonly lab: Lab;
  /** Traffic goes from client (pod of n1) to server (pod of n2). */
  readonly client: LabPod;
  readonly server: LabPod;
  readonly tools: BenchTools;
  /** argv to run in `pod`: pinned to the pod's CPU when --pod-cpus is given, else as it is. */
  inPod(pod: LabPod, argv: readonly string[]): string[];
  /** Pids of the userspace data path (daemons, fastd); empty for the kernel. */
  pids(): number[];
  /** How this path's lab differs from a plain Lab.build, for the record. */
  readonly notes: string[];
  /** A message when the data path has died (a daemon exited), else undefined. */
  health(): string | undefined;
  stop(): Promise<void>;
}

async function setupPath(name: PathName, opts: SuiteOptions, log: (l: string) => void): Promise<ActivePath> {
  const overlay: OverlayKind = name === "kernel" ? "kernel" : "vxmesh";
  const lab = await Lab.build({ nodes: [{ overlay, pods: 1 }, { overlay, pods: 1 }], programPeers: name === "kernel" });
  let cluster: Cluster | undefined;
  let stopPath: () => Promise<void> = async () => {};
  let pids: () => number[] = () => [];
  let health: () => string | undefined = () => undefined;
  const notes: string[] = [];
  try {
    if (name === "vxmesh" || name === "vxmesh-poll") {
      const c = new Cluster(lab);
      cluster = c;
      await c.startAll({ extraArgs: [...DATA_PATH_FLAGS, ...(name === "vxmesh-poll" ? POLL_PATH_FLAGS : []), ...(opts.daemonArgs ?? [])] });
      stopPath = () => c.stopAll();
      pids = () => [...c.daemons.values()].map((d) => d.child.pid).filter((p): p is number => p !== undefined);
      health = () => {
        for (const d of c.daemons.values()) {
          if (!d.running) return `the vxmesh daemon on ${d.node.name} exited (${String(d.child.exitCode ?? d.child.signalCode)}); last output: ${d.log.trim().split("\n").slice(-5).join(" | ")}`;
        }
        return undefined;
      };
    } else if (name === "fastd") {
      const f = await startFastd(lab, { bin: opts.fastdBin ?? FASTD_BIN });
      stopPath = () => f.stop();
      pids = () => f.pids();
      health = () => {
        for (const p of f.processes) {
          if (p.child.exitCode !== null || p.child.signalCode !== null) return `fastd on ${p.node.name} exited; last output: ${p.log().trim().split("\n").slice(-5).join(" | ")}`;
        }
        return undefined;
      };
    }
    if (name === "kernel") notes.push(...(await kernelDefaults(lab)));
    const [n1, n2] = lab.nodes;
    const client = n1?.pods[0];
    const server = n2?.pods[0];
    if (client === undefined || server === undefined) throw new Error("lab has no pods");
    await waitFor(async () => (await lab.ping(client, server.ip, { count: 1, timeoutMs: 500 })) && (await lab.ping(server, client.ip, { count: 1, timeoutMs: 500 })), {
      timeoutMs: 30_000,
      intervalMs: 200,
      what: `${client.name} and ${server.name} to reach each other through ${name}`,
    });
    const tools = await prepareTools(lab.workDir(), udpSenderCount());
    const inPod = (pod: LabPod, argv: readonly string[]): string[] => {
      if (opts.podCpus === undefined) return [...argv];
      return ["taskset", "-c", String(pod === client ? opts.podCpus[0] : opts.podCpus[1]), ...argv];
    };
    const iperf = lab.spawn(server, inPod(server, ["iperf3", "-s", "-B", server.ip, "-p", String(IPERF_PORT)]));
    iperf.stdout?.resume();
    iperf.stderr?.resume();
    log(`[${name}] lab ${lab.prefix} ready: ${client.name} ${client.ip} → ${server.name} ${server.ip}`);
    return {
      name,
      lab,
      client,
      server,
      tools,
      inPod,
      pids,
      health,
      notes,
      stop: async () => {
        try {
          await stopPath();
        } finally {
          await lab.teardown();
        }
      },
    };
  } catch (e) {
    try {
      await cluster?.stopAll();
    } finally {
      await lab.teardown();
    }
    throw e;
  }
}

/**
 * The lab turns TX checksum offload off on a "kernel" node's VXLAN device, because a userspace
 * peer reading the veth "wire" would otherwise see unfinished inner checksums. Between two
 * kernel nodes nobody reads those bytes, and the baseline must be the kernel's VXLAN as it
 * ships: with checksum offload (and so TSO) on, 64 KB TCP super-packets are encapsulated
 * once. Turn it back on and say so.
 */
async function kernelDefaults(lab: Lab): Promise<string[]> {
  const txCsum = async (n: LabNode): Promise<string | undefined> => {
    const k = await lab.exec(n, ["ethtool", "-k", n.overlayIf], { timeoutMs: 10_000 });
    return k.code === 0 ? /^tx-checksumming:\s*(\S+)/m.exec(k.stdout)?.[1] : undefined;
  };
  const notes: string[] = [];
  for (const n of lab.nodes) {
    const before = await txCsum(n);
    if (before === undefined || before === "on") continue; // no ethtool, or already the default
    const r = await lab.exec(n, ["ethtool", "-K", n.overlayIf, "tx", "on"], { timeoutMs: 10_000 });
    const after = await txCsum(n);
    notes.push(r.code === 0 && after === "on"
      ? `${n.name}: TX checksum offload of ${n.overlayIf} turned back on (the lab turns it off for mixed kernel/userspace labs; between two kernel nodes the kernel's default applies)`
      : `${n.name}: could not turn TX checksum offload of ${n.overlayIf} back on (${r.stderr.trim() || `still ${after ?? "?"}`}); the baseline is slower than the kernel's default`);
  }
  return notes;
}

// ---------------------------------------------------------------------------------------------
// Measurements

interface Measurement {
  figures: Record<string, number>;
  detail: Record<string, unknown>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface IperfReport {
  error?: string;
  end?: { sum_received?: { bits_per_second?: number }; sum_sent?: { retransmits?: number } };
}

async function iperfTcp(p: ActivePath, seconds: number, streams: number): Promise<{ gbps: number; retransmits: number | undefined }> {
  const argv = ["iperf3", "-c", p.server.ip, "-p", String(IPERF_PORT), "-t", String(seconds), "-O", "1", "-P", String(streams), "-J"];
  let last = "";
  for (let attempt = 0; attempt < 40; attempt++) {
    const r = await p.lab.exec(p.client, p.inPod(p.client, argv), { timeoutMs: (seconds + 30) * 1000 });
    let report: IperfReport | undefined;
    try {
      report = JSON.parse(r.stdout) as IperfReport;
    } catch {
      report = undefined;
    }
    const bps = report?.end?.sum_received?.bits_per_second;
    if (r.code === 0 && bps !== undefined && report?.error === undefined) {
      return { gbps: bps / 1e9, retransmits: report?.end?.sum_sent?.retransmits };
    }
    last = report?.error ?? (r.stderr.trim() || r.stdout.trim().slice(0, 300) || `exit ${String(r.code)}`);
    // The server may still be starting, or busy finishing the previous test.
    if (!/refused|busy|Connection reset|unable to (connect|receive|send)/i.test(last)) break;
    await sleep(250);
  }
  throw new Error(`iperf3 ${streams} stream(s): ${last}`);
}

async function measureTcp(p: ActivePath, seconds: number, streams: number, withResources: boolean): Promise<Measurement> {
  const pids = withResources ? p.pids() : [];
  const hz = await clockTicks();
  const sampling: { sampler?: ResourceSampler; usage?: ProcUsage[] } = {};
  // Sample over the part of the run iperf3 reports: after its one omitted second.
  const startSampling = pids.length > 0 ? setTimeout(() => (sampling.sampler = new ResourceSampler(pids, hz)), 1000) : undefined;
  const stopSampling = (): ProcUsage[] | undefined => {
    if (startSampling !== undefined) clearTimeout(startSampling);
    if (sampling.usage === undefined && sampling.sampler !== undefined) sampling.usage = sampling.sampler.finish();
    return sampling.usage;
  };
  try {
    const r = await iperfTcp(p, seconds, streams);
    const usage = stopSampling();
    const figures: Record<string, number> = { gbps: r.gbps };
    const detail: Record<string, unknown> = { retransmits: r.retransmits };
    if (usage !== undefined && usage.length > 0) {
      figures["cpu_pct"] = Math.max(...usage.map((u) => u.cpuPct));
      figures["rss_mb"] = Math.max(...usage.map((u) => u.rssMb));
      detail["processes"] = usage.map((u) => ({ pid: u.pid, cpuPct: round(u.cpuPct, 1), rssMb: round(u.rssMb, 1) }));
    }
    return { figures, detail };
  } finally {
    stopSampling();
  }
}

async function ifCounters(lab: Lab, pod: LabPod): Promise<IfCounters> {
  const r = await lab.exec(pod, ["ip", "-s", "-j", "link", "show", "dev", pod.ifName], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`ip -s link in ${pod.name}: ${r.stderr.trim()}`);
  return parseIpLinkStats(r.stdout);
}

async function udpDatagramsIn(lab: Lab, pod: LabPod): Promise<number> {
  const r = await lab.exec(pod, ["cat", "/proc/net/snmp"], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`/proc/net/snmp in ${pod.name}: ${r.stderr.trim()}`);
  return parseUdpDatagramsIn(r.stdout);
}

/** A child's output (stdout and stderr interleaved in `out`, stdout alone too) and its exit. */
function collect(child: ChildProcess): { out: () => string; stdout: () => string; exited: Promise<number | null> } {
  let out = "";
  let stdout = "";
  child.stdout?.setEncoding("utf8").on("data", (c: string) => {
    out += c;
    stdout += c;
  });
  child.stderr?.setEncoding("utf8").on("data", (c: string) => (out += c));
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once("exit", (code) => resolve(code));
  });
  return { out: () => out, stdout: () => stdout, exited };
}

async function measureUdp(p: ActivePath, seconds: number, size: number): Promise<Measurement> {
  const total = UDP_WARMUP_MS / 1000 + seconds + 1;
  const hold = p.lab.spawn(p.server, p.inPod(p.server, p.tools.hold(UDP_PORT, total + 3)));
  const holdOut = collect(hold);
  try {
    await waitFor(() => {
      if (hold.exitCode !== null) throw new Error(`UDP sink exited: ${holdOut.out().trim()}`);
      return holdOut.out().includes("bound");
    }, { timeoutMs: 10_000, intervalMs: 20, what: `the UDP sink in ${p.server.name}` });
    const senders = Array.from({ length: p.tools.senders }, () => {
      const c = p.lab.spawn(p.client, p.inPod(p.client, p.tools.send(p.server.ip, UDP_PORT, total, size)));
      return { child: c, ...collect(c) };
    });
    try {
      await sleep(UDP_WARMUP_MS);
      const [rx0, tx0] = await Promise.all([udpDatagramsIn(p.lab, p.server), ifCounters(p.lab, p.client)]);
      const t0 = process.hrtime.bigint();
      await sleep(seconds * 1000);
      const [rx1, tx1] = await Promise.all([udpDatagramsIn(p.lab, p.server), ifCounters(p.lab, p.client)]);
      const window = Number(process.hrtime.bigint() - t0) / 1e9;
      const codes = await Promise.all(senders.map((s) => s.exited));
      const bad = codes.findIndex((c) => c !== 0);
      if (bad >= 0) throw new Error(`UDP sender exited ${String(codes[bad])}: ${senders[bad]?.out().trim() ?? ""}`);
      const rates = udpRates(rx0, rx1, tx0, tx1, window, size);
      if (rates.received <= 0) throw new Error(`no datagram arrived in ${p.server.name} (${rates.sent} sent)`);
      const figures: Record<string, number> = { loss_pct: rates.lossPct };
      if (size <= 64) figures["kpps"] = rates.pps / 1000;
      else figures["gbps"] = rates.gbps;
      return {
        figures,
        detail: {
          windowS: round(window, 3),
          sent: rates.sent,
          received: rates.received,
          senders: senders.map((s) => safeJson(s.out())),
        },
      };
    } finally {
      for (const s of senders) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill("SIGKILL");
    }
  } finally {
    if (hold.exitCode === null && hold.signalCode === null) hold.kill("SIGKILL");
  }
}

async function measureRtt(p: ActivePath, samples: number): Promise<Measurement> {
  const budgetMs = (samples + RTT_WARMUP) * (RTT_GAP_US / 1000 + 5) + 30_000;
  const server = p.lab.spawn(p.server, p.inPod(p.server, p.tools.echo(RTT_PORT, Math.ceil(budgetMs / 1000) + 5)));
  const serverOut = collect(server);
  try {
    await waitFor(() => {
      if (server.exitCode !== null) throw new Error(`rtt echo server exited: ${serverOut.out().trim()}`);
      return serverOut.out().includes("bound");
    }, { timeoutMs: 10_000, intervalMs: 20, what: `the rtt echo server in ${p.server.name}` });
    const pids = p.pids();
    const hz = await clockTicks();
    const client = p.lab.spawn(p.client, p.inPod(p.client, p.tools.ping(p.server.ip, RTT_PORT, samples, RTT_WARMUP, RTT_GAP_US)));
    const clientOut = collect(client);
    const placement = new PlacementSampler(client.pid, server.pid);
    // What keeping the round trip short costs: a busy-polling daemon stays on a CPU between pings.
    const resources = pids.length > 0 ? new ResourceSampler(pids, hz) : undefined;
    const deadline = setTimeout(() => client.kill("SIGKILL"), budgetMs);
    const code = await clientOut.exited;
    clearTimeout(deadline);
    const sameCpu = placement.finish();
    const usage = resources?.finish() ?? [];
    if (code !== 0) throw new Error(`rtt client exited ${String(code ?? client.signalCode)}: ${clientOut.out().trim()}`);
    const res = JSON.parse(clientOut.stdout().trim().split("\n").pop() ?? "") as { samples: number[]; lost: number };
    const p50 = percentile(res.samples, 50);
    const p99 = percentile(res.samples, 99);
    if (p50 === null || p99 === null) throw new Error(`no round trip completed (${res.lost} lost)`);
    const mean = res.samples.reduce((x, y) => x + y, 0) / res.samples.length;
    const figures: Record<string, number> = { p50_us: p50, p99_us: p99 };
    if (sameCpu !== undefined) figures["same_cpu_pct"] = sameCpu;
    if (usage.length > 0) figures["cpu_pct"] = Math.max(...usage.map((u) => u.cpuPct));
    return {
      figures,
      detail: {
        samples: res.samples.length,
        lost: res.lost,
        meanUs: round(mean, 1),
        minUs: round(Math.min(...res.samples), 1),
        p90Us: round(percentile(res.samples, 90) ?? 0, 1),
        maxUs: round(Math.max(...res.samples), 1),
      },
    };
  } finally {
    if (server.exitCode === null && server.signalCode === null) server.kill("SIGKILL");
  }
}

/**
 * Where the two pods' processes run while a round trip is timed: every 20 ms, the CPU each last
 * ran on. A wake-up across CPUs costs far more than one on the same CPU on small VMs, so the
 * round trip of any path depends on this placement, which the scheduler picks.
 */
class PlacementSampler {
  private samples = 0;
  private same = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly a: number | undefined, private readonly b: number | undefined) {
    this.timer = setInterval(() => this.sample(), 20);
  }

  private sample(): void {
    if (this.a === undefined || this.b === undefined) return;
    try {
      const sa = readFileSync(`/proc/${this.a}/stat`, "utf8");
      const sb = readFileSync(`/proc/${this.b}/stat`, "utf8");
      // The pid starts as the launcher (`ip netns exec`, then `taskset`, which pins only as it
      // execs the program): where the launcher ran says nothing about the pods' placement.
      if (LAUNCHERS.has(procStatComm(sa)) || LAUNCHERS.has(procStatComm(sb))) return;
      const ca = parseProcStatCpu(sa);
      const cb = parseProcStatCpu(sb);
      this.samples++;
      if (ca === cb) this.same++;
    } catch {
      /* exited */
    }
  }

  /** Percent of samples with both on one CPU; undefined without samples. */
  finish(): number | undefined {
    clearInterval(this.timer);
    return this.samples === 0 ? undefined : (this.same / this.samples) * 100;
  }
}

function measure(p: ActivePath, scenario: ScenarioName, opts: SuiteOptions): Promise<Measurement> {
  switch (scenario) {
    case "tcp1": return measureTcp(p, opts.seconds, 1, true);
    case "tcp4": return measureTcp(p, opts.seconds, 4, false);
    case "udp64": return measureUdp(p, opts.seconds, 64);
    case "udp1400": return measureUdp(p, opts.seconds, 1400);
    case "rtt": return measureRtt(p, opts.rttSamples ?? 2000);
  }
}

// ---------------------------------------------------------------------------------------------
// The suite

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text.trim());
  } catch {
    return text.trim().slice(0, 200);
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** "12.41 Gbit/s · CPU 98 % · RSS 61.0 MB" for a progress line. */
function describeFigures(scenario: ScenarioName, figures: Record<string, number>): string {
  const parts: string[] = [];
  for (const f of FIGURES) {
    if (f.scenario !== scenario) continue;
    const v = figures[f.key];
    if (v === undefined) continue;
    const name = f.key === "cpu_pct" ? "CPU " : f.key === "rss_mb" ? "RSS " : f.key === "loss_pct" ? "loss " : f.key === "p50_us" ? "p50 " : f.key === "p99_us" ? "p99 " : f.key === "same_cpu_pct" ? "pods on one CPU " : "";
    parts.push(`${name}${formatNumber(v, f.digits)} ${f.unit}`);
  }
  return parts.join(" · ");
}

async function toolVersion(argv: readonly string[]): Promise<string | undefined> {
  try {
    const { stdout } = await execFileP(argv[0] as string, argv.slice(1), { timeout: 5000 });
    return stdout.split("\n")[0]?.trim() || undefined;
  } catch (e) {
    // iperf3 --version exits 0, but some tools print their version with a non-zero code.
    const out = (e as { stdout?: unknown }).stdout;
    return typeof out === "string" ? out.split("\n")[0]?.trim() || undefined : undefined;
  }
}

async function machineInfo(paths: readonly PathName[], fastdBin: string): Promise<MachineInfo> {
  const c = cpus();
  const tools: Record<string, string> = {};
  const iperf = await toolVersion(["iperf3", "--version"]);
  if (iperf !== undefined) tools["iperf3"] = iperf.replace(/^iperf\s+/, "");
  if (paths.includes("fastd")) {
    const v = await fastdVersion(fastdBin);
    if (v !== undefined) tools["fastd"] = v.replace(/^fastd\s+/, "");
  }
  const cc = await toolVersion(["cc", "--version"]);
  if (cc !== undefined) tools["cc"] = cc;
  return {
    cpuModel: c[0]?.model.trim() ?? "unknown",
    cores: c.length,
    kernel: release(),
    node: process.version,
    date: new Date().toISOString(),
    hostname: hostname(),
    loadAvgStart: round(loadavg()[0] ?? 0, 2),
    loadAvgEnd: 0,
    tools,
  };
}

/** Whether the fastd path can run here. */
export function fastdInstalled(bin = FASTD_BIN): boolean {
  return fastdAvailable(bin);
}

/** Runs every scenario on every path, sequentially, and returns the results. */
export async function runSuite(opts: SuiteOptions): Promise<BenchResults> {
  const log = opts.progress ?? ((line: string) => void process.stderr.write(line + "\n"));
  const t0 = Date.now();
  const fastdBin = opts.fastdBin ?? FASTD_BIN;
  const machine = await machineInfo(opts.paths, fastdBin);
  const results: BenchResults = {
    schema: "vxmesh-bench/1",
    machine,
    config: {
      paths: [...opts.paths],
      scenarios: [...opts.scenarios],
      seconds: opts.seconds,
      repeat: opts.repeat,
      daemonArgs: [...DATA_PATH_FLAGS, ...(opts.daemonArgs ?? [])],
      udpGenerator: "",
      rttMethod: "",
      rttSamples: opts.rttSamples ?? 2000,
      podCpus: opts.podCpus === undefined ? null : [opts.podCpus[0], opts.podCpus[1]],
      command: opts.command ?? "vxmesh bench",
    },
    durationS: 0,
    paths: [],
  };
  const needsUdp = opts.scenarios.some((s) => s === "udp64" || s === "udp1400");
  const needsRtt = opts.scenarios.includes("rtt");

  for (const name of opts.paths) {
    const pr: PathResult = { path: name, scenarios: {} };
    results.paths.push(pr);
    log(`[${name}] building a 2-node lab …`);
    const ts = Date.now();
    let active: ActivePath;
    try {
      active = await setupPath(name, opts, log);
    } catch (e) {
      pr.error = `setup failed: ${errorText(e)}`;
      log(`[${name}] ${pr.error}`);
      continue;
    }
    pr.setupS = round((Date.now() - ts) / 1000, 1);
    if (active.notes.length > 0) pr.notes = [...active.notes];
    for (const n of active.notes) log(`[${name}] note: ${n}`);
    if (needsUdp && results.config.udpGenerator === "") results.config.udpGenerator = active.tools.udpDescribe;
    if (needsRtt && results.config.rttMethod === "") results.config.rttMethod = active.tools.rttDescribe;
    try {
      for (const scenario of opts.scenarios) {
        const sr: ScenarioResult = { figures: {}, details: [], errors: [] };
        pr.scenarios[scenario] = sr;
        const values = new Map<string, number[]>();
        for (let rep = 1; rep <= opts.repeat; rep++) {
          const dead = active.health();
          if (dead !== undefined) {
            sr.errors.push(dead);
            log(`[${name}] ${scenario} ${rep}/${opts.repeat}: ${dead}`);
            break;
          }
          try {
            const m = await measure(active, scenario, opts);
            for (const [k, v] of Object.entries(m.figures)) values.set(k, [...(values.get(k) ?? []), v]);
            // The 1-minute load average when it ended: other work on the machine shows up here.
            sr.details.push({ rep, loadAvg1: round(loadavg()[0] ?? 0, 2), ...m.detail });
            log(`[${name}] ${scenario} ${rep}/${opts.repeat}: ${describeFigures(scenario, m.figures)}`);
          } catch (e) {
            sr.errors.push(`repetition ${rep}: ${errorText(e)}`);
            log(`[${name}] ${scenario} ${rep}/${opts.repeat}: failed: ${errorText(e)}`);
          }
          await sleep(PAUSE_BETWEEN_MS);
        }
        for (const f of FIGURES) {
          if (f.scenario !== scenario) continue;
          const v = values.get(f.key);
          if (v !== undefined) sr.figures[f.key] = figureResult(f.unit, v);
        }
        const medians: Record<string, number> = {};
        for (const [k, fr] of Object.entries(sr.figures)) if (fr.median !== null) medians[k] = fr.median;
        if (Object.keys(medians).length > 0) {
          const main = FIGURES.find((f) => f.scenario === scenario && f.chart);
          const base = results.paths.find((x) => x.path === "kernel")?.scenarios[scenario]?.figures[main?.key ?? ""]?.median;
          const r = main !== undefined && name !== "kernel" ? ratio(medians[main.key], base) : null;
          log(`[${name}] ${scenario} median: ${describeFigures(scenario, medians)}${r !== null ? ` (${formatRatio(r)} kernel)` : ""}`);
        }
      }
    } finally {
      log(`[${name}] tearing the lab down …`);
      await active.stop();
    }
  }
  results.machine.loadAvgEnd = round(loadavg()[0] ?? 0, 2);
  results.durationS = round((Date.now() - t0) / 1000, 1);
  return results;
}

export interface WrittenFiles {
  json: string;
  markdown: string;
  svg: string;
}

/** Writes bench-<date>.json / .md / .svg into `dir` (created if missing). */
export function writeResults(results: BenchResults, dir: string): WrittenFiles {
  mkdirSync(dir, { recursive: true });
  const stamp = results.machine.date.replace(/\.\d+Z$/, "Z").replace(/:/g, "-");
  const base = join(dir, `bench-${stamp}`);
  const files: WrittenFiles = { json: `${base}.json`, markdown: `${base}.md`, svg: `${base}.svg` };
  writeFileSync(files.json, renderJson(results));
  writeFileSync(files.markdown, renderMarkdown(results));
  writeFileSync(files.svg, renderSvg(results));
  return files;
}

/** True when every path was set up and every repetition produced its figures. */
export function runSucceeded(results: BenchResults): boolean {
  return results.paths.every((p) => p.error === undefined && Object.values(p.scenarios).every((s) => s !== undefined && s.errors.length === 0));
}
