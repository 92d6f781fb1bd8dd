// Gossip crypto: AES-256-GCM under a keyring. The first key (the primary) seals; every key in
// the ring is tried to open, so keys rotate without downtime:
//
//   1. add the new key as a second line on every node (restart or reload each);
//   2. once all nodes hold it, move it to the first line everywhere (each node now seals with
//      it, and still opens what the others seal with the old one);
//   3. once all nodes seal with it, delete the old key's line everywhere.
//
// Envelope, version 1 (33 bytes of overhead):
//
//   byte 0       envelope version (1)
//   bytes 1-4    key id: the first 4 bytes of SHA-256("vxmesh-key-id\0" ‖ key) of the sealing key;
//                the receiver tries that key first and can say "sealed with a key we do not
//                hold" instead of just "failed"
//   bytes 5-16   nonce, 12 random bytes (fresh per message)
//   bytes 17-    ciphertext, as long as the plaintext
//   last 16      GCM tag
//
// Authenticated data: the message kind (datagram or stream frame, never sent) followed by the
// 5 header bytes, so a datagram cannot be replayed as a stream frame or the reverse, and the
// header cannot be altered. The TCP stream's own length prefix belongs to the framing layer.

import { createCipheriv, createDecipheriv, createHash, createSecretKey, randomBytes, randomFillSync, type KeyObject } from "node:crypto";
import * as fs from "node:fs";
import type { Parsed } from "../encap/types";

const ENVELOPE_VERSION = 1;
const KEY_BYTES = 32;
const KEY_ID_BYTES = 4;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
export const ENVELOPE_HEADER_BYTES = 1 + KEY_ID_BYTES + NONCE_BYTES;
/** Bytes a sealed message adds to its plaintext: 1 + 4 + 12 + 16 = 33. */
export const ENVELOPE_OVERHEAD = ENVELOPE_HEADER_BYTES + TAG_BYTES;

export type MessageKind = "datagram" | "stream";
const KIND_BYTE: Record<MessageKind, number> = { datagram: 0x01, stream: 0x02 };

export type OpenFailure = "truncated" | "version" | "unknown-key" | "auth";
export type OpenResult =
  | { ok: true; value: Uint8Array; /** index in the ring of the key that opened it (0 = primary) */ keyIndex: number }
  | { ok: false; reason: OpenFailure; error: string };

interface RingKey {
  readonly key: KeyObject;
  readonly id: number;
  readonly idHex: string;
}

const KEY_ID_LABEL = Buffer.from("vxmesh-key-id\0", "ascii");

/** The 8-hex-digit id of a key, as carried in envelopes and shown to operators. */
export function keyIdOf(key: Uint8Array): string {
  return createHash("sha256").update(KEY_ID_LABEL).update(key).digest().subarray(0, KEY_ID_BYTES).toString("hex");
}

/** A new key for `vxmesh keygen`: base64 of 32 random bytes. */
export function generateKey(): string {
  return randomBytes(KEY_BYTES).toString("base64");
}

export class Keyring {
  private readonly keys: readonly RingKey[];
  private readonly primary: RingKey;
  /** Scratch for the authenticated data; setAAD copies it, so one buffer serves every call. */
  private readonly aad = Buffer.alloc(1 + 1 + KEY_ID_BYTES);
  /**
   * Random bytes drawn 256 nonces at a time: one randomFillSync costs about as much as the
   * AES-GCM pass over a whole datagram. Every nonce is taken from it exactly once.
   */
  private readonly noncePool = Buffer.allocUnsafe(NONCE_BYTES * 256);
  private nonceOffset = this.noncePool.length;

  private constructor(keys: readonly RingKey[]) {
    this.keys = keys;
    this.primary = keys[0] as RingKey;
  }

  /** Builds a ring from raw keys, the first being the primary. */
  static fromKeys(keys: readonly Uint8Array[]): Parsed<Keyring> {
    if (keys.length === 0) return { ok: false, error: "a keyring needs at least one key" };
    const ring: RingKey[] = [];
    const seen = new Map<string, number>();
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i] as Uint8Array;
      if (k.length !== KEY_BYTES) return { ok: false, error: `key ${i + 1} is ${k.length} bytes; AES-256 keys are exactly ${KEY_BYTES} bytes` };
      const hex = Buffer.from(k).toString("hex");
      const earlier = seen.get(hex);
      if (earlier !== undefined) return { ok: false, error: `key ${i + 1} repeats key ${earlier + 1}` };
      seen.set(hex, i);
      const idHex = keyIdOf(k);
      ring.push({ key: createSecretKey(Buffer.from(k)), id: Number.parseInt(idHex, 16), idHex });
    }
    return { ok: true, value: new Keyring(ring) };
  }

  /** Key ids, primary first. */
  get keyIds(): readonly string[] {
    return this.keys.map((k) => k.idHex);
  }

  get primaryKeyId(): string {
    return this.primary.idHex;
  }

  private setAad(kind: MessageKind, header: Uint8Array): Buffer {
    const a = this.aad;
    a[0] = KIND_BYTE[kind];
    for (let i = 0; i < 1 + KEY_ID_BYTES; i++) a[1 + i] = header[i] as number;
    return a;
  }

  /** Seals `plaintext` under the primary key. The result is `plaintext.length + ENVELOPE_OVERHEAD` bytes. */
  seal(kind: MessageKind, plaintext: Uint8Array): Uint8Array {
    const k = this.primary;
    const n = plaintext.length;
    const out = Buffer.allocUnsafe(ENVELOPE_OVERHEAD + n);
    out[0] = ENVELOPE_VERSION;
    out.writeUInt32BE(k.id, 1);
    if (this.nonceOffset === this.noncePool.length) {
      randomFillSync(this.noncePool);
      this.nonceOffset = 0;
    }
    this.noncePool.copy(out, 1 + KEY_ID_BYTES, this.nonceOffset, this.nonceOffset + NONCE_BYTES);
    this.nonceOffset += NONCE_BYTES;
    const cipher = createCipheriv("aes-256-gcm", k.key, out.subarray(1 + KEY_ID_BYTES, ENVELOPE_HEADER_BYTES), { authTagLength: TAG_BYTES });
    cipher.setAAD(this.setAad(kind, out));
    const ct = cipher.update(plaintext);
    ct.copy(out, ENVELOPE_HEADER_BYTES);
    let written = ct.length;
    const tail = cipher.final();
    if (tail.length > 0) {
      tail.copy(out, ENVELOPE_HEADER_BYTES + written);
      written += tail.length;
    }
    if (written !== n) throw new Error(`AES-GCM produced ${written} bytes for ${n}`);
    cipher.getAuthTag().copy(out, ENVELOPE_HEADER_BYTES + n);
    return out;
  }

  /**
   * Opens a sealed message of the given kind. Tries the key the envelope names first, then the
   * others. Never throws: truncated, unknown-version and unauthentic input yield an error value
   * whose `reason` suits a drop counter.
   */
  open(kind: MessageKind, sealed: Uint8Array): OpenResult {
    if (sealed.length < ENVELOPE_OVERHEAD) {
      return { ok: false, reason: "truncated", error: `sealed message of ${sealed.length} bytes is shorter than the ${ENVELOPE_OVERHEAD}-byte envelope` };
    }
    const version = sealed[0] as number;
    if (version !== ENVELOPE_VERSION) {
      return { ok: false, reason: "version", error: `envelope version ${version} is not supported (this build reads version ${ENVELOPE_VERSION})` };
    }
    const id = (((sealed[1] as number) << 24) >>> 0) + (((sealed[2] as number) << 16) | ((sealed[3] as number) << 8) | (sealed[4] as number));
    const nonce = sealed.subarray(1 + KEY_ID_BYTES, ENVELOPE_HEADER_BYTES);
    const ct = sealed.subarray(ENVELOPE_HEADER_BYTES, sealed.length - TAG_BYTES);
    const tag = sealed.subarray(sealed.length - TAG_BYTES);
    const aad = this.setAad(kind, sealed);
    let matched = false;
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < this.keys.length; i++) {
        const k = this.keys[i] as RingKey;
        if ((k.id === id) !== (pass === 0)) continue;
        if (pass === 0) matched = true;
        const plain = tryOpen(k.key, nonce, aad, ct, tag);
        if (plain !== null) return { ok: true, value: plain, keyIndex: i };
      }
    }
    if (!matched) {
      const hex = id.toString(16).padStart(8, "0");
      return { ok: false, reason: "unknown-key", error: `sealed with key ${hex}, which is not in this keyring (${this.keyIds.join(", ")})` };
    }
    return { ok: false, reason: "auth", error: `authentication failed (tampered, or not a ${kind} message)` };
  }
}

function tryOpen(key: KeyObject, nonce: Uint8Array, aad: Buffer, ct: Uint8Array, tag: Uint8Array): Uint8Array | null {
  try {
    const d = createDecipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
    d.setAAD(aad);
    d.setAuthTag(tag);
    const plain = d.update(ct);
    const tail = d.final();
    return tail.length === 0 ? plain : Buffer.concat([plain, tail]);
  } catch {
    // Node reports a failed tag check by throwing from final(); here that is an ordinary outcome.
    return null;
  }
}

const BASE64_32 = /^[A-Za-z0-9+/]{43}=?$/;

/**
 * Parses key file text: one key per line (base64 of exactly 32 bytes), the first the primary;
 * blank lines and lines starting with `#` are ignored. Errors name `file:line`.
 */
export function parseKeyFile(text: string, file = "key file"): Parsed<Uint8Array[]> {
  const keys: Uint8Array[] = [];
  const lineOf = new Map<string, number>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).trim();
    if (line === "" || line.startsWith("#")) continue;
    const where = `${file}:${i + 1}`;
    if (!BASE64_32.test(line)) {
      const hint = /^[A-Za-z0-9+/]*={0,2}$/.test(line) ? `, got ${Buffer.from(line, "base64").length} bytes` : "";
      return { ok: false, error: `${where}: expected base64 of exactly ${KEY_BYTES} bytes (44 characters, as printed by \`vxmesh keygen\`)${hint}` };
    }
    const key = Buffer.from(line, "base64");
    if (key.length !== KEY_BYTES || key.toString("base64") !== (line.endsWith("=") ? line : line + "=")) {
      return { ok: false, error: `${where}: not canonical base64 of ${KEY_BYTES} bytes` };
    }
    const hex = key.toString("hex");
    const first = lineOf.get(hex);
    if (first !== undefined) return { ok: false, error: `${where}: repeats the key on line ${first}` };
    lineOf.set(hex, i + 1);
    keys.push(new Uint8Array(key));
  }
  if (keys.length === 0) return { ok: false, error: `${file}: holds no key (one base64 key per line; \`vxmesh keygen\` makes one)` };
  return { ok: true, value: keys };
}

/** Why a key file with this mode must be refused, or null. */
export function keyFileModeProblem(file: string, mode: number): string | null {
  if ((mode & 0o077) === 0) return null;
  const perms = (mode & 0o777).toString(8).padStart(4, "0");
  return `key file ${file} is readable or writable by group or others (mode ${perms}); run: chmod 600 ${file}`;
}

/** Reads and checks a key file (a shell function: the only I/O in this module) and builds the ring. */
export function loadKeyring(file: string): Parsed<Keyring> {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (e) {
    return { ok: false, error: `key file ${file} cannot be opened: ${(e as Error).message}` };
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) return { ok: false, error: `key file ${file} is not a regular file` };
    const modeProblem = keyFileModeProblem(file, st.mode);
    if (modeProblem !== null) return { ok: false, error: modeProblem };
    const parsed = parseKeyFile(fs.readFileSync(fd, "utf8"), file);
    if (!parsed.ok) return parsed;
    return Keyring.fromKeys(parsed.value);
  } catch (e) {
    return { ok: false, error: `key file ${file} cannot be read: ${(e as Error).message}` };
  } finally {
    fs.closeSync(fd);
  }
}
