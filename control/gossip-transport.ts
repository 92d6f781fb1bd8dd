// The gossip transport: a UDP socket for SWIM datagrams and a TCP listener for push-pull
// streams, both on the node's underlay address and gossip port, and every byte sealed with the
// keyring (AES-256-GCM). Anything that fails to open or decode is dropped and counted. A shell:
// it knows sockets and framing, nothing of the protocol.

import * as dgram from "node:dgram";
import * as net from "node:net";
import { formatIpv4, parseIpv4, type Ipv4 } from "../encap/types";
import type { Keyring, OpenFailure } from "./keyring";
import type { Address } from "./membership";

/** A stream frame on the wire: u32 length, then the sealed push-pull. */
const STREAM_LENGTH_BYTES = 4;
const STREAM_MAX_BYTES = 8 * 1024 * 1024;
const STREAM_TIMEOUT_MS = 10_000;

export interface TransportCounters {
  datagramsIn: number;
  datagramsOut: number;
  bytesIn: number;
  bytesOut: number;
  streamsIn: number;
  streamsOut: number;
  /** Sealed input we could not open, by reason (wrong key, tampered, truncated, version). */
  rejected: Record<OpenFailure, number>;
  /** Opened but not a valid message. */
  malformed: number;
  streamErrors: number;
}

export type StreamReply =
  | { ok: true; value: Uint8Array }
  | { ok: false; why: "unreachable" | "unanswered" | "timeout" | "malformed" | "rejected" };

export interface TransportHandlers {
  datagram(from: Address, plaintext: Uint8Array): void;
  /** A push-pull request arrived; resolve with the sealed-able reply, or undefined for none. */
  stream(from: Address, plaintext: Uint8Array): Promise<Uint8Array | undefined> | Uint8Array | undefined;
  /** Something could not be opened: say it once in a while, it is how a wrong key shows. */
  rejected(from: Address, reason: OpenFailure, error: string): void;
}

export class GossipTransport {
  readonly counters: TransportCounters = {
    datagramsIn: 0, datagramsOut: 0, bytesIn: 0, bytesOut: 0, streamsIn: 0, streamsOut: 0,
    rejected: { truncated: 0, version: 0, "unknown-key": 0, auth: 0 }, malformed: 0, streamErrors: 0,
  };
  private readonly connections = new Set<net.Socket>();

  private constructor(
    private readonly udp: dgram.Socket,
    private readonly tcp: net.Server,
    private keyring: Keyring,
  ) {}

  static async listen(ip: Ipv4, port: number, keyring: Keyring, handlers: TransportHandlers): Promise<GossipTransport> {
    const host = formatIpv4(ip);
    const udp = dgram.createSocket({ type: "udp4", reuseAddr: false });
    const tcp = net.createServer();
    const t = new GossipTransport(udp, tcp, keyring);
    udp.on("message", (msg, rinfo) => t.onDatagram(msg, rinfo, handlers));
    udp.on("error", () => { /* ICMP errors for unreachable peers; SWIM handles silence */ });
    tcp.on("connection", (sock) => t.onConnection(sock, handlers));
    await new Promise<void>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind(port, host, () => { udp.off("error", reject); resolve(); });
    });
    try {
      await new Promise<void>((resolve, reject) => {
        tcp.once("error", reject);
        tcp.listen(port, host, () => { tcp.off("error", reject); resolve(); });
      });
    } catch (err) {
      udp.close();
      throw err;
    }
    return t;
  }

  /** Swaps the keyring (key rotation without a restart). */
  setKeyring(keyring: Keyring): void {
    this.keyring = keyring;
  }

  sendDatagram(to: Address, plaintext: Uint8Array): void {
    const sealed = this.keyring.seal("datagram", plaintext);
    this.counters.datagramsOut++;
    this.counters.bytesOut += sealed.length;
    this.udp.send(sealed, to.port, formatIpv4(to.ip));
  }

  /**
   * Sends a push-pull request and resolves with the opened reply, or with why there is none.
   * "unanswered" means the peer took the connection and closed it without a word: what a node
   * does with a stream it cannot open, so usually a key mismatch.
   */
  request(to: Address, plaintext: Uint8Array): Promise<StreamReply> {
    this.counters.streamsOut++;
    return new Promise((resolve) => {
      const sock = net.connect({ host: formatIpv4(to.ip), port: to.port });
      this.track(sock);
      const reader = new FrameReader();
      let connected = false;
      let done = false;
      const finish = (reply: StreamReply): void => {
        if (done) return;
        done = true;
        if (!reply.ok) this.counters.streamErrors++;
        sock.destroy();
        resolve(reply);
      };
      sock.setTimeout(STREAM_TIMEOUT_MS, () => finish({ ok: false, why: "timeout" }));
      sock.on("connect", () => {
        connected = true;
        sock.write(this.frame(plaintext));
      });
      sock.on("data", (chunk: Buffer) => {
        const frame = reader.push(chunk);
        if (frame === "error") return finish({ ok: false, why: "malformed" });
        if (frame === null) return;
        this.counters.bytesIn += frame.length;
        const opened = this.openOrCount("stream", frame, to, undefined);
        finish(opened === undefined ? { ok: false, why: "rejected" } : { ok: true, value: opened });
      });
      sock.on("error", () => finish({ ok: false, why: connected ? "unanswered" : "unreachable" }));
      sock.on("close", () => finish({ ok: false, why: connected ? "unanswered" : "unreachable" }));
    });
  }

  async close(): Promise<void> {
    for (const s of this.connections) s.destroy();
    await Promise.all([
      new Promise<void>((resolve) => this.udp.close(() => resolve())),
      new Promise<void>((resolve) => this.tcp.close(() => resolve())),
    ]);
  }

  private frame(plaintext: Uint8Array): Buffer {
    const sealed = this.keyring.seal("stream", plaintext);
    const out = Buffer.allocUnsafe(STREAM_LENGTH_BYTES + sealed.length);
    out.writeUInt32BE(sealed.length, 0);
    out.set(sealed, STREAM_LENGTH_BYTES);
    this.counters.bytesOut += out.length;
    return out;
  }

  private track(sock: net.Socket): void {
    this.connections.add(sock);
    sock.once("close", () => this.connections.delete(sock));
  }

  private onDatagram(msg: Buffer, rinfo: dgram.RemoteInfo, handlers: TransportHandlers): void {
    this.counters.datagramsIn++;
    this.counters.bytesIn += msg.length;
    const from = addressOf(rinfo.address, rinfo.port);
    if (from === undefined) return;
    const plain = this.openOrCount("datagram", msg, from, handlers);
    if (plain !== undefined) handlers.datagram(from, plain);
  }

  private onConnection(sock: net.Socket, handlers: TransportHandlers): void {
    this.counters.streamsIn++;
    this.track(sock);
    const from = addressOf(sock.remoteAddress ?? "", sock.remotePort ?? 0);
    const reader = new FrameReader();
    sock.setTimeout(STREAM_TIMEOUT_MS, () => sock.destroy());
    sock.on("error", () => sock.destroy());
    sock.on("data", (chunk: Buffer) => {
      const frame = reader.push(chunk);
      if (frame === "error" || from === undefined) {
        this.counters.streamErrors++;
        sock.destroy();
        return;
      }
      if (frame === null) return;
      sock.pause();
      this.counters.bytesIn += frame.length;
      const plain = this.openOrCount("stream", frame, from, handlers);
      if (plain === undefined) {
        sock.destroy();
        return;
      }
      void Promise.resolve(handlers.stream(from, plain)).then((reply) => {
        if (reply === undefined) sock.end();
        else sock.end(this.frame(reply));
      }, () => sock.destroy());
    });
  }

  private openOrCount(kind: "datagram" | "stream", sealed: Uint8Array, from: Address, handlers: TransportHandlers | undefined): Uint8Array | undefined {
    const opened = this.keyring.open(kind, sealed);
    if (opened.ok) return opened.value;
    this.counters.rejected[opened.reason]++;
    handlers?.rejected(from, opened.reason, opened.error);
    return undefined;
  }

  /** Counts a datagram or stream that opened but did not decode. */
  countMalformed(): void {
    this.counters.malformed++;
  }
}

/** Accumulates one length-prefixed frame; returns it (without the prefix) once complete. */
class FrameReader {
  private chunks: Buffer[] = [];
  private have = 0;

  push(chunk: Buffer): Buffer | null | "error" {
    this.chunks.push(chunk);
    this.have += chunk.length;
    if (this.have < STREAM_LENGTH_BYTES) return null;
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    this.chunks = [all];
    const len = all.readUInt32BE(0);
    if (len > STREAM_MAX_BYTES) return "error";
    if (all.length < STREAM_LENGTH_BYTES + len) return null;
    return all.subarray(STREAM_LENGTH_BYTES, STREAM_LENGTH_BYTES + len);
  }
}

function addressOf(host: string, port: number): Address | undefined {
  const ip = parseIpv4(host.startsWith("::ffff:") ? host.slice(7) : host);
  return ip.ok ? { ip: ip.value, port } : undefined;
}
