// The membership wire format: our own, versioned, big-endian, every length explicit.
//
// Datagram (one UDP payload, before the encryption envelope; at most DATAGRAM_PAYLOAD_BUDGET):
//   u8 version (1) | u8 count (1…255) | count × ( u16 length | message[length] )
// Message: u8 type | body, the body exactly filling its length:
//   1 ping     u32 seq | addr source | str sourceName | str target
//   2 pingReq  u32 seq | u8 flags (bit0 nack) | addr targetAddress | str target | addr source | str sourceName
//   3 ack      u32 seq
//   4 nack     u32 seq
//   5 alive    u32 incarnation | addr | str name | u16 metaLength | meta
//   6 suspect  u32 incarnation | str name | str from
//   7 dead     u32 incarnation | str name | str from
// addr: u8 family (4) | u32 ip | u16 port   (family 6 is reserved for an IPv6 underlay)
// str:  u8 length (1…255) | UTF-8 bytes
//
// Stream frame (push-pull over TCP), length-prefixed:
//   u32 length of what follows | u8 version | u8 type (16) | u8 flags (bit0 join, bit1 reply)
//   | u32 count | count × ( u8 state | u32 incarnation | addr | str name | u16 metaLength | meta )
//
// Decoders return an error value on malformed input and never throw.

import type { Ipv4, Parsed } from "../../encap/types";
import { DATAGRAM_PAYLOAD_BUDGET, META_MAX_BYTES } from "./config";
import type { Address, MemberState, Message, PushPullEntry, PushPullMsg } from "./types";

const WIRE_VERSION = 1;
/** version + count. */
export const PACKET_HEADER = 2;
/** The u16 length before each message of a datagram. */
export const MESSAGE_OVERHEAD = 2;
export const MAX_MESSAGES_PER_PACKET = 255;
/** Largest stream frame accepted (length field included). */
const STREAM_FRAME_MAX = 32 * 1024 * 1024;
const STREAM_HEADER = 4 + 1 + 1 + 1 + 4;
export const NAME_MAX_BYTES = 255;

const T_PING = 1, T_PING_REQ = 2, T_ACK = 3, T_NACK = 4, T_ALIVE = 5, T_SUSPECT = 6, T_DEAD = 7;
const T_PUSH_PULL = 16;
const ADDR_SIZE = 7;
const FAMILY_V4 = 4;
const STATES: readonly MemberState[] = ["alive", "suspect", "dead", "left"];

// ---- sizes ----

/** UTF-8 length of a string without encoding it. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) { n += 4; i++; } else n += 3;
    } else n += 3;
  }
  return n;
}

function strSize(s: string): number {
  return 1 + utf8Length(s);
}

/** Encoded size of one message body (type byte included, length prefix not). */
export function messageSize(m: Message): number {
  switch (m.type) {
    case "ping": return 1 + 4 + ADDR_SIZE + strSize(m.sourceName) + strSize(m.target);
    case "pingReq": return 1 + 4 + 1 + ADDR_SIZE + strSize(m.target) + ADDR_SIZE + strSize(m.sourceName);
    case "ack":
    case "nack": return 1 + 4;
    case "alive": return 1 + 4 + ADDR_SIZE + strSize(m.name) + 2 + m.meta.length;
    case "suspect":
    case "dead": return 1 + 4 + strSize(m.name) + strSize(m.from);
  }
}

/** Encoded size of a datagram holding `messages`. */
export function packetSize(messages: readonly Message[]): number {
  let n = PACKET_HEADER;
  for (const m of messages) n += MESSAGE_OVERHEAD + messageSize(m);
  return n;
}

function entrySize(e: PushPullEntry): number {
  return 1 + 4 + ADDR_SIZE + strSize(e.name) + 2 + e.meta.length;
}

/** Encoded size of a push-pull stream frame, its length prefix included. */
export function pushPullSize(m: PushPullMsg): number {
  let n = STREAM_HEADER;
  for (const e of m.members) n += entrySize(e);
  return n;
}

// ---- encoding ----

class Writer {
  readonly buf: Uint8Array;
  pos = 0;
  constructor(size: number) {
    this.buf = new Uint8Array(size);
  }
  u8(v: number): void {
    this.buf[this.pos++] = v & 0xff;
  }
  u16(v: number): void {
    this.buf[this.pos++] = (v >>> 8) & 0xff;
    this.buf[this.pos++] = v & 0xff;
  }
  u32(v: number): void {
    this.buf[this.pos++] = (v >>> 24) & 0xff;
    this.buf[this.pos++] = (v >>> 16) & 0xff;
    this.buf[this.pos++] = (v >>> 8) & 0xff;
    this.buf[this.pos++] = v & 0xff;
  }
  addr(a: Address): void {
    this.u8(FAMILY_V4);
    this.u32(a.ip);
    this.u16(a.port);
  }
  str(s: string): void {
    const lenAt = this.pos++;
    const start = this.pos;
    let ascii = true;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) { ascii = false; break; }
    }
    if (ascii) {
      for (let i = 0; i < s.length; i++) this.buf[this.pos++] = s.charCodeAt(i);
    } else {
      const r = encoder.encodeInto(s, this.buf.subarray(this.pos));
      this.pos += r.written;
    }
    this.buf[lenAt] = this.pos - start;
  }
  bytes16(b: Uint8Array): void {
    this.u16(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function checkU32(what: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`${what} ${v} is not a u32`);
}
function checkName(what: string, s: string): void {
  const n = utf8Length(s);
  if (n < 1 || n > NAME_MAX_BYTES) throw new RangeError(`${what} must be 1…${NAME_MAX_BYTES} UTF-8 bytes, got ${n}`);
}
function checkAddr(a: Address): void {
  checkU32("ip", a.ip);
  if (!Number.isInteger(a.port) || a.port < 0 || a.port > 0xffff) throw new RangeError(`port ${a.port} is not a u16`);
}
function checkMeta(b: Uint8Array): void {
  if (b.length > META_MAX_BYTES) throw new RangeError(`meta of ${b.length} bytes exceeds ${META_MAX_BYTES}`);
}

function writeMessage(w: Writer, m: Message): void {
  switch (m.type) {
    case "ping":
      checkU32("seq", m.seq); checkAddr(m.source); checkName("sourceName", m.sourceName); checkName("target", m.target);
      w.u8(T_PING); w.u32(m.seq); w.addr(m.source); w.str(m.sourceName); w.str(m.target);
      return;
    case "pingReq":
      checkU32("seq", m.seq); checkAddr(m.targetAddress); checkName("target", m.target);
      checkAddr(m.source); checkName("sourceName", m.sourceName);
      w.u8(T_PING_REQ); w.u32(m.seq); w.u8(m.nack ? 1 : 0); w.addr(m.targetAddress); w.str(m.target);
      w.addr(m.source); w.str(m.sourceName);
      return;
    case "ack":
    case "nack":
      checkU32("seq", m.seq);
      w.u8(m.type === "ack" ? T_ACK : T_NACK); w.u32(m.seq);
      return;
    case "alive":
      checkU32("incarnation", m.incarnation); checkAddr(m.address); checkName("name", m.name); checkMeta(m.meta);
      w.u8(T_ALIVE); w.u32(m.incarnation); w.addr(m.address); w.str(m.name); w.bytes16(m.meta);
      return;
    case "suspect":
    case "dead":
      checkU32("incarnation", m.incarnation); checkName("name", m.name); checkName("from", m.from);
      w.u8(m.type === "suspect" ? T_SUSPECT : T_DEAD); w.u32(m.incarnation); w.str(m.name); w.str(m.from);
      return;
  }
}

/**
 * Encodes one datagram. Throws (a programming error) on a value the format cannot carry;
 * the caller keeps the result within its budget (see packetSize).
 */
export function encodePacket(messages: readonly Message[]): Uint8Array {
  if (messages.length < 1 || messages.length > MAX_MESSAGES_PER_PACKET) {
    throw new RangeError(`a datagram holds 1…${MAX_MESSAGES_PER_PACKET} messages, got ${messages.length}`);
  }
  const w = new Writer(packetSize(messages));
  w.u8(WIRE_VERSION);
  w.u8(messages.length);
  for (const m of messages) {
    const lenAt = w.pos;
    w.pos += 2;
    writeMessage(w, m);
    const len = w.pos - lenAt - 2;
    w.buf[lenAt] = len >>> 8;
    w.buf[lenAt + 1] = len & 0xff;
  }
  return w.buf;
}

/** Encodes a push-pull as one stream frame, its u32 length prefix included. */
export function encodePushPull(m: PushPullMsg): Uint8Array {
  const size = pushPullSize(m);
  if (size > STREAM_FRAME_MAX) throw new RangeError(`push-pull of ${size} bytes exceeds ${STREAM_FRAME_MAX}`);
  const w = new Writer(size);
  w.u32(size - 4);
  w.u8(WIRE_VERSION);
  w.u8(T_PUSH_PULL);
  w.u8((m.join ? 1 : 0) | (m.reply ? 2 : 0));
  w.u32(m.members.length);
  for (const e of m.members) {
    checkU32("incarnation", e.incarnation); checkAddr(e.address); checkName("name", e.name); checkMeta(e.meta);
    w.u8(STATES.indexOf(e.state));
    w.u32(e.incarnation);
    w.addr(e.address);
    w.str(e.name);
    w.bytes16(e.meta);
  }
  return w.buf;
}

// ---- decoding ----

class Reader {
  pos: number;
  err: string | null = null;
  constructor(readonly buf: Uint8Array, start: number, readonly end: number) {
    this.pos = start;
  }
  private need(n: number, what: string): boolean {
    if (this.err !== null) return false;
    if (this.end - this.pos < n) {
      this.err = `truncated ${what} at byte ${this.pos}`;
      return false;
    }
    return true;
  }
  fail(msg: string): void {
    if (this.err === null) this.err = msg;
  }
  u8(what: string): number {
    if (!this.need(1, what)) return 0;
    return this.buf[this.pos++] as number;
  }
  u16(what: string): number {
    if (!this.need(2, what)) return 0;
    const b = this.buf;
    const v = ((b[this.pos] as number) << 8) | (b[this.pos + 1] as number);
    this.pos += 2;
    return v;
  }
  u32(what: string): number {
    if (!this.need(4, what)) return 0;
    const b = this.buf;
    const v = (((b[this.pos] as number) << 24) | ((b[this.pos + 1] as number) << 16) |
      ((b[this.pos + 2] as number) << 8) | (b[this.pos + 3] as number)) >>> 0;
    this.pos += 4;
    return v;
  }
  addr(what: string): Address {
    const family = this.u8(`${what} family`);
    if (this.err === null && family !== FAMILY_V4) this.fail(`${what}: unsupported address family ${family}`);
    const ip = this.u32(`${what} ip`) as Ipv4;
    const port = this.u16(`${what} port`);
    return { ip, port };
  }
  str(what: string): string {
    const len = this.u8(`${what} length`);
    if (this.err !== null) return "";
    if (len === 0) {
      this.fail(`${what}: empty`);
      return "";
    }
    if (!this.need(len, what)) return "";
    const start = this.pos;
    this.pos += len;
    const b = this.buf;
    let ascii = true;
    for (let i = start; i < start + len; i++) if ((b[i] as number) >= 0x80) { ascii = false; break; }
    if (ascii) {
      let s = "";
      for (let i = start; i < start + len; i++) s += String.fromCharCode(b[i] as number);
      return s;
    }
    try {
      return decoder.decode(b.subarray(start, start + len));
    } catch {
      this.fail(`${what}: invalid UTF-8`);
      return "";
    }
  }
  bytes16(what: string): Uint8Array {
    const len = this.u16(`${what} length`);
    if (this.err !== null) return EMPTY;
    if (len > META_MAX_BYTES) {
      this.fail(`${what}: ${len} bytes exceeds ${META_MAX_BYTES}`);
      return EMPTY;
    }
    if (!this.need(len, what)) return EMPTY;
    const out = this.buf.slice(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }
}

const EMPTY = new Uint8Array(0);

function readMessage(r: Reader): Message | null {
  const type = r.u8("message type");
  if (r.err !== null) return null;
  switch (type) {
    case T_PING: {
      const seq = r.u32("seq");
      const source = r.addr("source");
      const sourceName = r.str("source name");
      const target = r.str("target");
      return { type: "ping", seq, target, source, sourceName };
    }
    case T_PING_REQ: {
      const seq = r.u32("seq");
      const flags = r.u8("flags");
      if (r.err === null && (flags & ~1) !== 0) r.fail(`pingReq: reserved flag bits set (0x${flags.toString(16)})`);
      const targetAddress = r.addr("target address");
      const target = r.str("target");
      const source = r.addr("source");
      const sourceName = r.str("source name");
      return { type: "pingReq", seq, target, targetAddress, nack: (flags & 1) !== 0, source, sourceName };
    }
    case T_ACK:
      return { type: "ack", seq: r.u32("seq") };
    case T_NACK:
      return { type: "nack", seq: r.u32("seq") };
    case T_ALIVE: {
      const incarnation = r.u32("incarnation");
      const address = r.addr("address");
      const name = r.str("name");
      const meta = r.bytes16("meta");
      return { type: "alive", incarnation, name, address, meta };
    }
    case T_SUSPECT:
    case T_DEAD: {
      const incarnation = r.u32("incarnation");
      const name = r.str("name");
      const from = r.str("from");
      return { type: type === T_SUSPECT ? "suspect" : "dead", incarnation, name, from };
    }
    default:
      r.fail(`unknown message type ${type}`);
      return null;
  }
}

/** Decodes one datagram; any malformed part rejects the whole datagram. */
export function decodePacket(bytes: Uint8Array): Parsed<Message[]> {
  if (bytes.length < PACKET_HEADER) return { ok: false, error: `datagram of ${bytes.length} bytes is shorter than its header` };
  const version = bytes[0] as number;
  if (version !== WIRE_VERSION) return { ok: false, error: `unsupported wire version ${version}` };
  const count = bytes[1] as number;
  if (count === 0) return { ok: false, error: "datagram holds no messages" };
  const out: Message[] = [];
  let pos = PACKET_HEADER;
  for (let i = 0; i < count; i++) {
    if (bytes.length - pos < MESSAGE_OVERHEAD) return { ok: false, error: `truncated length of message ${i} at byte ${pos}` };
    const len = ((bytes[pos] as number) << 8) | (bytes[pos + 1] as number);
    pos += MESSAGE_OVERHEAD;
    if (len === 0) return { ok: false, error: `message ${i} is empty` };
    if (bytes.length - pos < len) return { ok: false, error: `message ${i} claims ${len} bytes, ${bytes.length - pos} left` };
    const r = new Reader(bytes, pos, pos + len);
    const m = readMessage(r);
    if (r.err !== null || m === null) return { ok: false, error: `message ${i}: ${r.err ?? "undecodable"}` };
    if (r.pos !== pos + len) return { ok: false, error: `message ${i}: ${pos + len - r.pos} trailing bytes` };
    out.push(m);
    pos += len;
  }
  if (pos !== bytes.length) return { ok: false, error: `${bytes.length - pos} bytes after the last message` };
  return { ok: true, value: out };
}

/**
 * For a stream reader: given the bytes received so far, the total length of the first frame
 * (prefix included), null when fewer than 4 bytes are in, or an error when it is too large.
 */
export function streamFrameLength(buf: Uint8Array): Parsed<number | null> {
  if (buf.length < 4) return { ok: true, value: null };
  const len = (((buf[0] as number) << 24) | ((buf[1] as number) << 16) | ((buf[2] as number) << 8) | (buf[3] as number)) >>> 0;
  const total = len + 4;
  if (total > STREAM_FRAME_MAX) return { ok: false, error: `stream frame of ${total} bytes exceeds ${STREAM_FRAME_MAX}` };
  if (total < STREAM_HEADER) return { ok: false, error: `stream frame of ${total} bytes is shorter than its header` };
  return { ok: true, value: total };
}

/** Decodes exactly one stream frame (its length prefix included). */
export function decodePushPull(frame: Uint8Array): Parsed<PushPullMsg> {
  const fl = streamFrameLength(frame);
  if (!fl.ok) return fl;
  if (fl.value === null) return { ok: false, error: "stream frame shorter than its length prefix" };
  if (fl.value !== frame.length) return { ok: false, error: `stream frame says ${fl.value} bytes, got ${frame.length}` };
  const r = new Reader(frame, 4, frame.length);
  const version = r.u8("version");
  if (r.err === null && version !== WIRE_VERSION) return { ok: false, error: `unsupported wire version ${version}` };
  const type = r.u8("type");
  if (r.err === null && type !== T_PUSH_PULL) return { ok: false, error: `unknown stream message type ${type}` };
  const flags = r.u8("flags");
  if (r.err === null && (flags & ~3) !== 0) return { ok: false, error: `push-pull: reserved flag bits set (0x${flags.toString(16)})` };
  const count = r.u32("count");
  if (r.err !== null) return { ok: false, error: r.err };
  const minEntry = 1 + 4 + ADDR_SIZE + 2 + 2;
  if (count > (frame.length - r.pos) / minEntry) return { ok: false, error: `push-pull claims ${count} members, too many for ${frame.length} bytes` };
  const members: PushPullEntry[] = [];
  for (let i = 0; i < count; i++) {
    const s = r.u8("state");
    const state = STATES[s];
    if (r.err === null && state === undefined) r.fail(`member ${i}: unknown state ${s}`);
    const incarnation = r.u32("incarnation");
    const address = r.addr("address");
    const name = r.str("name");
    const meta = r.bytes16("meta");
    if (r.err !== null || state === undefined) return { ok: false, error: `member ${i}: ${r.err ?? "bad state"}` };
    members.push({ name, address, meta, incarnation, state });
  }
  if (r.pos !== frame.length) return { ok: false, error: `${frame.length - r.pos} bytes after the last member` };
  return { ok: true, value: { type: "pushPull", join: (flags & 1) !== 0, reply: (flags & 2) !== 0, members } };
}

export { DATAGRAM_PAYLOAD_BUDGET };
