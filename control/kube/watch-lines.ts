// A watch response body is one JSON object per line ({"type": …, "object": …}\n), sent as
// chunks that split lines anywhere, multi-byte UTF-8 characters included. Pure: bytes in,
// parsed objects or an error out. Lines are cut on the newline byte before any decoding — a
// UTF-8 continuation byte is never 0x0A — so a character split across chunks is whole again
// by the time its line is decoded.

import type { Parsed } from "../../encap/types";
import type { KubeError, WatchEvent } from "./api";

/** A Node object is a few KiB; etcd refuses objects over 1.5 MiB. A line past this is not a watch event. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;

const NEWLINE = 0x0a;

export class WatchLineDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private failed: string | undefined;
  private readonly utf8 = new TextDecoder("utf-8", { fatal: true });

  constructor(private readonly maxLineBytes: number = DEFAULT_MAX_LINE_BYTES) {}

  /** Why the stream is unreadable, once a line was bad; undefined until then. */
  get error(): string | undefined {
    return this.failed;
  }

  /**
   * The complete lines this chunk finishes, parsed; blank lines skipped. A bad line fails the
   * decoder: lines before it in the same chunk are still returned (ok), and `error` is set at
   * once; every later call returns the error.
   */
  push(chunk: Buffer): Parsed<unknown[]> {
    if (this.failed !== undefined) return { ok: false, error: this.failed };
    const out: unknown[] = [];
    const failWith = (error: string): Parsed<unknown[]> => {
      this.fail(error);
      return out.length > 0 ? { ok: true, value: out } : { ok: false, error };
    };
    let start = 0;
    for (let nl = chunk.indexOf(NEWLINE, start); nl >= 0; nl = chunk.indexOf(NEWLINE, start)) {
      const piece = chunk.subarray(start, nl);
      start = nl + 1;
      if (this.pendingBytes + piece.length > this.maxLineBytes) return failWith(this.tooLong());
      const line = this.pendingBytes === 0 ? piece : Buffer.concat([...this.pending, piece]);
      this.pending = [];
      this.pendingBytes = 0;
      const parsed = this.parseLine(line);
      if (!parsed.ok) return failWith(parsed.error);
      if (parsed.value !== undefined) out.push(parsed.value.json);
    }
    const rest = chunk.subarray(start);
    if (rest.length > 0) {
      if (this.pendingBytes + rest.length > this.maxLineBytes) return failWith(this.tooLong());
      // Copy: the caller may reuse the chunk's memory once we return.
      this.pending.push(Buffer.from(rest));
      this.pendingBytes += rest.length;
    }
    return { ok: true, value: out };
  }

  /** At the end of the body: an error when it stopped inside a line (the connection broke mid-event). */
  end(): Parsed<void> {
    if (this.failed !== undefined) return { ok: false, error: this.failed };
    const rest = Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    if (rest.toString("latin1").trim() !== "") return this.fail(`the watch stream ended inside a line (${rest.length} bytes without a newline)`);
    return { ok: true, value: undefined };
  }

  private parseLine(line: Buffer): Parsed<{ json: unknown } | undefined> {
    let text: string;
    try {
      text = this.utf8.decode(line);
    } catch {
      return { ok: false, error: `a watch line (${line.length} bytes) is not UTF-8` };
    }
    if (text.trim() === "") return { ok: true, value: undefined };
    try {
      return { ok: true, value: { json: JSON.parse(text) as unknown } };
    } catch (e) {
      return { ok: false, error: `a watch line is not JSON (${(e as Error).message}): ${excerpt(text)}` };
    }
  }

  private tooLong(): string {
    return `a watch line is longer than ${this.maxLineBytes} bytes`;
  }

  private fail(error: string): { ok: false; error: string } {
    this.failed = error;
    this.pending = [];
    this.pendingBytes = 0;
    return { ok: false, error };
  }
}

export function excerpt(text: string, max = 200): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length <= max ? flat : `${flat.slice(0, max)}…`;
}

type Obj = Record<string, unknown>;
const asObj = (v: unknown): Obj | undefined => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Obj) : undefined);

/** A metav1.Status (an ERROR event's object, a failed call's body) as a KubeError; undefined when `v` is not one. */
export function statusToKubeError(v: unknown, httpStatus?: number): KubeError | undefined {
  const o = asObj(v);
  if (o === undefined || (o["kind"] !== "Status" && typeof o["message"] !== "string" && typeof o["reason"] !== "string")) return undefined;
  const code = typeof o["code"] === "number" && Number.isInteger(o["code"]) ? o["code"] : httpStatus;
  const reason = typeof o["reason"] === "string" && o["reason"] !== "" ? o["reason"] : "Unknown";
  const message = typeof o["message"] === "string" && o["message"] !== "" ? o["message"] : `status ${code ?? "without a code"}`;
  return { status: code, reason, message };
}

const OBJECT_EVENTS = new Set(["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]);

/** One parsed watch line as an event. ERROR carries a metav1.Status (code 410 Gone: list again). */
export function toWatchEvent(v: unknown): Parsed<WatchEvent> {
  const o = asObj(v);
  const type = o?.["type"];
  if (o === undefined || typeof type !== "string") return { ok: false, error: `a watch line without a type: ${excerpt(JSON.stringify(v) ?? "")}` };
  if (type === "ERROR") {
    const status = statusToKubeError(o["object"]);
    return status === undefined
      ? { ok: false, error: `an ERROR watch event without a Status: ${excerpt(JSON.stringify(o["object"]) ?? "")}` }
      : { ok: true, value: { type: "ERROR", status } };
  }
  if (!OBJECT_EVENTS.has(type)) return { ok: false, error: `an unknown watch event type "${excerpt(type, 40)}"` };
  if (asObj(o["object"]) === undefined) return { ok: false, error: `a ${type} watch event without an object` };
  return { ok: true, value: { type: type as "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK", object: o["object"] } };
}
