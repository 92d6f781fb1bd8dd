// The soak's program inside one pod namespace (run as `ip netns exec <pod-ns> node
// dist/bench/soak-pod.js '<config JSON>'`). Three jobs, all optional but the prober:
//
//   prober  every interval a UDP probe to every peer pod; answers the probes it receives. Each
//           answer is reported as a line {"e":"r","p":peer,"q":seq,"s":sentAt,"t":receivedAt}.
//   server  receives one checked stream (TCP) and verifies every byte against the pattern
//           (soak-pattern.ts); acknowledges what it has verified; accepts a reconnecting client
//           and tells it where to resume.
//   client  sends one checked stream, rate-limited; reconnects when the connection breaks or
//           stalls, and resumes at the offset the server says it has verified.
//
// Stream protocol. Client → server: hello (magic "VXSS", stream id u32, 8 zero bytes); server →
// client: resume offset (u64 LE) = the bytes verified so far; client → server: start offset
// (u64 LE), then the stream bytes from there. Server → client after that: verified offset
// (u64 LE) whenever it has grown, at most every 100 ms. A start offset beyond what the server
// holds is a gap (bytes lost); one before it is re-sent bytes (checked, not counted twice).
//
// Stats go to stdout as JSON lines {"e":"s",…} every statsMs. Commands on stdin: "drain" (stop
// sending, report {"e":"drained"} once everything sent is verified by the server) and "exit"
// (report {"e":"final"} and exit). The program exits when stdin closes.

import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { connect, createServer, type Server, type Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { Pattern } from "./soak-pattern";

export interface SoakPodConfig {
  /** This pod's index among the soak's pods (its probes carry it). */
  index: number;
  probe: { port: number; intervalMs: number; peers: { index: number; ip: string }[] };
  server?: { port: number; streamId: number; key: number };
  client?: { host: string; port: number; streamId: number; key: number; rateBytesPerS: number; stallMs: number };
  statsMs: number;
}

export interface ServerStats {
  streamId: number;
  /** Stream bytes received and checked, in order, without a gap: the next expected offset. */
  verified: number;
  /** Bytes that differed from the pattern at their offset. */
  corrupted: number;
  /** Bytes skipped over because a client resumed beyond the verified offset. */
  gapBytes: number;
  /** Bytes received again after a resume (checked, not counted in verified). */
  resentBytes: number;
  connections: number;
  firstCorruptionAt: number | null;
}

export interface ClientStats {
  streamId: number;
  /** The next offset to send on the current connection. */
  offset: number;
  /** The highest offset ever written (across connections). */
  maxWritten: number;
  /** The last offset the server acknowledged as verified. */
  acked: number;
  /** Connections that got as far as resuming the stream. */
  connections: number;
  /** Established connections that broke or stalled, after which the client connected again. */
  reconnects: number;
  stalls: number;
  connected: boolean;
}

export interface PodStats {
  e: "s" | "drained" | "final";
  t: number;
  index: number;
  server?: ServerStats;
  client?: ClientStats;
  probes: Record<string, { sent: number; received: number }>;
}

const HELLO_MAGIC = 0x53535856; // "VXSS" little-endian
const HELLO_LEN = 16;
const PROBE_MAGIC = 0x50535856; // "VXSP"
const PROBE_LEN = 20;
const PROBE_REQ = 1;
const PROBE_REP = 2;
const CHUNK = 16 * 1024;
const ACK_EVERY_MS = 100;
const RECONNECT_DELAY_MS = 500;
const CONNECT_TIMEOUT_MS = 5000;

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function emit(line: object): void {
  process.stdout.write(JSON.stringify(line) + "\n");
}

// ---------------------------------------------------------------------------------------------

class Prober {
  private readonly sock: UdpSocket;
  private seq = 0;
  readonly counts = new Map<number, { sent: number; received: number }>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly index: number, private readonly cfg: SoakPodConfig["probe"]) {
    for (const p of cfg.peers) this.counts.set(p.index, { sent: 0, received: 0 });
    this.sock = createSocket("udp4");
    this.sock.on("message", (msg, rinfo) => this.onMessage(msg, rinfo.address, rinfo.port));
    this.sock.on("error", () => { /* ENETUNREACH and friends while a node is down: keep going */ });
  }

  start(): Promise<void> {
    return new Promise((resolve) => {
      this.sock.bind(this.cfg.port, () => {
        this.timer = setInterval(() => this.send(), this.cfg.intervalMs);
        resolve();
      });
    });
  }

  private send(): void {
    this.seq++;
    for (const p of this.cfg.peers) {
      const b = Buffer.alloc(PROBE_LEN);
      b.writeUInt32LE(PROBE_MAGIC, 0);
      b[4] = PROBE_REQ;
      b[5] = this.index;
      b[6] = p.index;
      b.writeUInt32LE(this.seq, 8);
      b.writeDoubleLE(nowMs(), 12);
      const c = this.counts.get(p.index);
      if (c !== undefined) c.sent++;
      this.sock.send(b, this.cfg.port, p.ip, () => { /* errors counted as unanswered */ });
    }
  }

  private onMessage(msg: Buffer, address: string, port: number): void {
    if (msg.length !== PROBE_LEN || msg.readUInt32LE(0) !== PROBE_MAGIC) return;
    if (msg[4] === PROBE_REQ && msg[6] === this.index) {
      msg[4] = PROBE_REP;
      this.sock.send(msg, port, address, () => { /* see send */ });
    } else if (msg[4] === PROBE_REP && msg[5] === this.index) {
      const peer = msg[6] as number;
      const c = this.counts.get(peer);
      if (c !== undefined) c.received++;
      emit({ e: "r", p: peer, q: msg.readUInt32LE(8), s: msg.readDoubleLE(12), t: nowMs() });
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.sock.close();
  }
}

// ---------------------------------------------------------------------------------------------

class StreamServer {
  readonly stats: ServerStats;
  private readonly pattern: Pattern;
  private readonly server: Server;
  private current: Socket | undefined;
  private ackTimer: NodeJS.Timeout | undefined;
  private lastAck = -1;

  constructor(private readonly cfg: NonNullable<SoakPodConfig["server"]>) {
    this.pattern = new Pattern(cfg.key);
    this.stats = { streamId: cfg.streamId, verified: 0, corrupted: 0, gapBytes: 0, resentBytes: 0, connections: 0, firstCorruptionAt: null };
    this.server = createServer((s) => this.onConnection(s));
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.cfg.port, "0.0.0.0", () => {
        this.ackTimer = setInterval(() => this.ack(), ACK_EVERY_MS);
        resolve();
      });
    });
  }

  private ack(): void {
    const s = this.current;
    if (s === undefined || s.destroyed || this.lastAck === this.stats.verified) return;
    this.lastAck = this.stats.verified;
    s.write(u64(this.stats.verified));
  }

  private onConnection(sock: Socket): void {
    sock.setNoDelay(true);
    sock.on("error", () => { /* a broken connection: the client comes back */ });
    let head: Buffer = Buffer.alloc(0);
    let phase: "hello" | "start" | "data" = "hello";
    let pos = 0;
    sock.on("data", (chunk: Buffer) => {
      if (phase !== "hello" && sock !== this.current) return; // retired: a newer connection took over
      let data = chunk;
      if (phase !== "data") {
        head = Buffer.concat([head, data]);
        if (phase === "hello") {
          if (head.length < HELLO_LEN) return;
          if (head.readUInt32LE(0) !== HELLO_MAGIC || head.readUInt32LE(4) !== this.cfg.streamId) {
            sock.destroy();
            return;
          }
          // Only one connection feeds the stream: the newest. Whatever the old one still
          // delivers is ignored from now on.
          if (this.current !== undefined && this.current !== sock) this.current.destroy();
          this.current = sock;
          this.stats.connections++;
          this.lastAck = this.stats.verified;
          sock.write(u64(this.stats.verified));
          head = head.subarray(HELLO_LEN);
          phase = "start";
        }
        if (head.length < 8) return;
        const start = Number(head.readBigUInt64LE(0));
        if (start > this.stats.verified) {
          this.stats.gapBytes += start - this.stats.verified;
          this.stats.verified = start;
        }
        pos = start;
        data = head.subarray(8);
        head = Buffer.alloc(0);
        phase = "data";
      }
      if (data.length === 0) return;
      const bad = this.pattern.mismatches(pos, data);
      if (bad > 0) {
        this.stats.corrupted += bad;
        this.stats.firstCorruptionAt ??= pos;
      }
      const end = pos + data.length;
      if (pos < this.stats.verified) this.stats.resentBytes += Math.min(end, this.stats.verified) - pos;
      if (end > this.stats.verified) this.stats.verified = end;
      pos = end;
    });
  }

  stop(): void {
    clearInterval(this.ackTimer);
    this.current?.destroy();
    this.server.close();
  }
}

// ---------------------------------------------------------------------------------------------

class StreamClient {
  readonly stats: ClientStats;
  private readonly pattern: Pattern;
  private sock: Socket | undefined;
  private sending = false;
  private draining = false;
  private stopped = false;
  private tokens: number;
  private lastRefill = nowMs();
  private lastAckProgress = nowMs();
  private timer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;

  constructor(private readonly cfg: NonNullable<SoakPodConfig["client"]>) {
    this.pattern = new Pattern(cfg.key);
    this.stats = { streamId: cfg.streamId, offset: 0, maxWritten: 0, acked: 0, connections: 0, reconnects: 0, stalls: 0, connected: false };
    this.tokens = this.burst();
  }

  private burst(): number {
    return this.cfg.rateBytesPerS > 0 ? Math.max(CHUNK, this.cfg.rateBytesPerS / 10) : Infinity;
  }

  start(): void {
    this.connect();
    this.timer = setInterval(() => this.tick(), 20);
  }

  get drained(): boolean {
    return this.stats.connected && this.stats.acked === this.stats.maxWritten;
  }

  drain(): void {
    this.draining = true;
    this.pump();
  }

  private tick(): void {
    const now = nowMs();
    if (this.cfg.rateBytesPerS > 0) {
      this.tokens = Math.min(this.burst(), this.tokens + ((now - this.lastRefill) / 1000) * this.cfg.rateBytesPerS);
    }
    this.lastRefill = now;
    const s = this.sock;
    if (s !== undefined && this.sending && this.stats.offset > this.stats.acked && now - this.lastAckProgress > this.cfg.stallMs) {
      this.stats.stalls++;
      s.destroy(); // 'close' reconnects
      return;
    }
    this.pump();
  }

  private connect(): void {
    if (this.stopped) return;
    const s = connect({ host: this.cfg.host, port: this.cfg.port });
    this.sock = s;
    this.sending = false;
    s.setNoDelay(true);
    s.setTimeout(CONNECT_TIMEOUT_MS, () => {
      if (!this.sending) s.destroy();
    });
    let head: Buffer = Buffer.alloc(0);
    let resumed = false;
    s.once("connect", () => {
      const hello = Buffer.alloc(HELLO_LEN);
      hello.writeUInt32LE(HELLO_MAGIC, 0);
      hello.writeUInt32LE(this.cfg.streamId, 4);
      s.write(hello);
    });
    s.on("data", (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      while (head.length >= 8) {
        const v = Number(head.readBigUInt64LE(0));
        head = head.subarray(8);
        if (!resumed) {
          resumed = true;
          this.stats.connections++;
          this.stats.connected = true;
          this.stats.offset = v;
          this.stats.acked = v;
          this.lastAckProgress = nowMs();
          s.write(u64(v));
          s.setTimeout(0);
          this.sending = true;
          this.pump();
        } else if (v > this.stats.acked) {
          this.stats.acked = v;
          this.lastAckProgress = nowMs();
        }
      }
    });
    s.on("drain", () => this.pump());
    s.on("error", () => { /* 'close' follows */ });
    s.on("close", () => {
      if (this.sock !== s) return;
      this.sock = undefined;
      this.sending = false;
      this.stats.connected = false;
      if (this.stopped) return;
      // A connection that carried the stream broke (not merely a refused attempt at the start).
      if (resumed) this.stats.reconnects++;
      this.reconnectTimer = setTimeout(() => this.connect(), RECONNECT_DELAY_MS);
    });
  }

  private pump(): void {
    const s = this.sock;
    if (s === undefined || !this.sending || this.stopped) return;
    // Draining: no new bytes, but what a broken connection lost is sent again.
    const limit = this.draining ? this.stats.maxWritten : Infinity;
    while (this.tokens >= 1 && !s.writableNeedDrain && this.stats.offset < limit) {
      const n = Math.min(CHUNK, Math.floor(this.tokens === Infinity ? CHUNK : this.tokens), limit - this.stats.offset);
      if (n <= 0) break;
      // A copy: the socket holds the buffer until it is sent, and the pattern reuses its own.
      const buf = Buffer.from(this.pattern.bytes(this.stats.offset, n));
      this.stats.offset += n;
      if (this.stats.offset > this.stats.maxWritten) this.stats.maxWritten = this.stats.offset;
      this.tokens -= n;
      s.write(buf);
    }
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.reconnectTimer);
    this.sock?.destroy();
  }
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const arg = process.argv[2];
  if (arg === undefined) {
    process.stderr.write("usage: soak-pod.js '<config JSON>'\n");
    process.exit(2);
  }
  const cfg = JSON.parse(arg) as SoakPodConfig;
  const prober = new Prober(cfg.index, cfg.probe);
  const server = cfg.server === undefined ? undefined : new StreamServer(cfg.server);
  const client = cfg.client === undefined ? undefined : new StreamClient(cfg.client);
  await prober.start();
  await server?.start();
  client?.start();

  const stats = (e: PodStats["e"]): PodStats => ({
    e, t: nowMs(), index: cfg.index,
    ...(server === undefined ? {} : { server: { ...server.stats } }),
    ...(client === undefined ? {} : { client: { ...client.stats } }),
    probes: Object.fromEntries([...prober.counts].map(([k, v]) => [String(k), { ...v }])),
  });
  const statsTimer = setInterval(() => emit(stats("s")), cfg.statsMs);
  emit({ e: "ready", index: cfg.index });

  let drainTimer: NodeJS.Timeout | undefined;
  const finish = (): void => {
    clearInterval(statsTimer);
    clearInterval(drainTimer);
    client?.stop();
    server?.stop();
    prober.stop();
    emit(stats("final"));
    process.stdout.write("", () => process.exit(0));
  };
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    const cmd = line.trim();
    if (cmd === "drain") {
      client?.drain();
      drainTimer = setInterval(() => {
        if (client === undefined || client.drained) {
          clearInterval(drainTimer);
          emit(stats("drained"));
        }
      }, 50);
    } else if (cmd === "exit") {
      finish();
    }
  });
  rl.on("close", finish);
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`soak-pod: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  });
}
