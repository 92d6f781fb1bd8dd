import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { statusToKubeError, toWatchEvent, WatchLineDecoder } from "../control/kube/watch-lines";

function pushAll(d: WatchLineDecoder, chunks: Buffer[]): unknown[] {
  const out: unknown[] = [];
  for (const c of chunks) {
    const r = d.push(c);
    if (!r.ok) throw new Error(r.error);
    out.push(...r.value);
  }
  const end = d.end();
  if (!end.ok) throw new Error(end.error);
  return out;
}

/** `bytes` cut at the given offsets (sorted, deduplicated, inside the buffer). */
function cut(bytes: Buffer, offsets: number[]): Buffer[] {
  const at = [...new Set(offsets.map((o) => o % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const o of [...at, bytes.length]) {
    out.push(bytes.subarray(prev, o));
    prev = o;
  }
  return out;
}

const EVENTS = [
  { type: "ADDED", object: { kind: "Node", metadata: { name: "n1", resourceVersion: "10", annotations: { "vxmesh.io/x": "ünïcödé ✓ 🚀" } } } },
  { type: "MODIFIED", object: { kind: "Node", metadata: { name: "nœud-2", resourceVersion: "11" } } },
  { type: "BOOKMARK", object: { kind: "Node", metadata: { resourceVersion: "12" } } },
  { type: "DELETED", object: { kind: "Node", metadata: { name: "n1", resourceVersion: "13" } } },
];
const STREAM = Buffer.from(EVENTS.map((e) => `${JSON.stringify(e)}\n`).join(""));

describe("WatchLineDecoder", () => {
  it("decodes whole lines in one chunk", () => {
    expect(pushAll(new WatchLineDecoder(), [STREAM])).toEqual(EVENTS);
  });

  it("decodes the same whatever the chunk boundaries, multi-byte characters split included", () => {
    fc.assert(fc.property(fc.array(fc.nat(), { maxLength: 40 }), (offsets) => {
      expect(pushAll(new WatchLineDecoder(), cut(STREAM, offsets))).toEqual(EVENTS);
    }));
    // Every single byte on its own, the emoji's four bytes in four chunks.
    const bytes = [...STREAM].map((b) => Buffer.from([b]));
    expect(pushAll(new WatchLineDecoder(), bytes)).toEqual(EVENTS);
  });

  it("does not keep a reference to the caller's chunk", () => {
    const d = new WatchLineDecoder();
    const chunk = Buffer.from('{"a":');
    expect(d.push(chunk)).toEqual({ ok: true, value: [] });
    chunk.fill(0x20);
    expect(d.push(Buffer.from("1}\n"))).toEqual({ ok: true, value: [{ a: 1 }] });
  });

  it("skips blank lines, and tolerates CRLF", () => {
    expect(pushAll(new WatchLineDecoder(), [Buffer.from('\n\n  \n{"a":1}\r\n\r\n{"b":2}\n')])).toEqual([{ a: 1 }, { b: 2 }]);
  });

  it("an invalid line is an error, and stays one", () => {
    const d = new WatchLineDecoder();
    expect(d.push(Buffer.from('{"a":1}\n'))).toEqual({ ok: true, value: [{ a: 1 }] });
    expect(d.error).toBeUndefined();
    const r = d.push(Buffer.from('{"a":\n{"b":2}\n'));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(/^a watch line is not JSON .*: \{"a":$/);
    expect(d.error).toMatch(/not JSON/);
    expect(d.push(Buffer.from('{"c":3}\n')).ok).toBe(false);
    expect(d.end().ok).toBe(false);
  });

  it("lines before a bad one in the same chunk are still returned, with the error set", () => {
    const d = new WatchLineDecoder();
    expect(d.push(Buffer.from('{"a":1}\n{"b":2}\nnot json\n{"c":3}\n'))).toEqual({ ok: true, value: [{ a: 1 }, { b: 2 }] });
    expect(d.error).toMatch(/^a watch line is not JSON .*: not json$/);
    expect(d.push(Buffer.from('{"d":4}\n'))).toEqual({ ok: false, error: d.error });
  });

  it("a line that is not UTF-8 is an error", () => {
    const r = new WatchLineDecoder().push(Buffer.from([0x22, 0xff, 0x22, 0x0a]));
    expect(!r.ok && r.error).toContain("not UTF-8");
  });

  it("a line over the limit is an error, even before its newline arrives", () => {
    const d = new WatchLineDecoder(64);
    expect(d.push(Buffer.from(`"${"x".repeat(40)}`)).ok).toBe(true);
    const r = d.push(Buffer.from("x".repeat(40)));
    expect(!r.ok && r.error).toBe("a watch line is longer than 64 bytes");
    const exact = new WatchLineDecoder(10);
    expect(exact.push(Buffer.from(`"${"y".repeat(8)}"\n`))).toEqual({ ok: true, value: ["yyyyyyyy"] });
    expect(exact.push(Buffer.from(`"${"y".repeat(9)}"\n`)).ok).toBe(false);
  });

  it("end() reports a trailing partial line, and accepts trailing whitespace", () => {
    const d = new WatchLineDecoder();
    expect(d.push(Buffer.from('{"a":1}\n{"type":"ADD')).ok).toBe(true);
    expect(d.end()).toEqual({ ok: false, error: "the watch stream ended inside a line (12 bytes without a newline)" });
    const w = new WatchLineDecoder();
    expect(w.push(Buffer.from('{"a":1}\n  ')).ok).toBe(true);
    expect(w.end()).toEqual({ ok: true, value: undefined });
  });
});

describe("toWatchEvent", () => {
  it("passes object events through", () => {
    for (const e of EVENTS) expect(toWatchEvent(e)).toEqual({ ok: true, value: e });
  });

  it("turns an ERROR's metav1.Status into a KubeError (410 Gone: list again)", () => {
    const gone = {
      type: "ERROR",
      object: { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: "too old resource version: 5 (120)", reason: "Expired", code: 410 },
    };
    expect(toWatchEvent(gone)).toEqual({ ok: true, value: { type: "ERROR", status: { status: 410, reason: "Expired", message: "too old resource version: 5 (120)" } } });
    expect(toWatchEvent({ type: "ERROR", object: { kind: "Status", code: 500 } })).toEqual({
      ok: true, value: { type: "ERROR", status: { status: 500, reason: "Unknown", message: "status 500" } },
    });
  });

  it("refuses lines that are not events", () => {
    expect(toWatchEvent({ object: {} })).toMatchObject({ ok: false, error: expect.stringContaining("without a type") });
    expect(toWatchEvent([1, 2])).toMatchObject({ ok: false });
    expect(toWatchEvent({ type: "SYNC", object: {} })).toEqual({ ok: false, error: 'an unknown watch event type "SYNC"' });
    expect(toWatchEvent({ type: "ADDED" })).toEqual({ ok: false, error: "a ADDED watch event without an object" });
    expect(toWatchEvent({ type: "ERROR", object: 42 })).toMatchObject({ ok: false, error: expect.stringContaining("without a Status") });
  });
});

describe("statusToKubeError", () => {
  it("takes the code from the Status, else from the HTTP status", () => {
    expect(statusToKubeError({ kind: "Status", reason: "Forbidden", message: "nodes is forbidden", code: 403 })).toEqual({
      status: 403, reason: "Forbidden", message: "nodes is forbidden",
    });
    expect(statusToKubeError({ kind: "Status", reason: "Unauthorized", message: "Unauthorized" }, 401)).toEqual({ status: 401, reason: "Unauthorized", message: "Unauthorized" });
    expect(statusToKubeError({ items: [] })).toBeUndefined();
    expect(statusToKubeError("text")).toBeUndefined();
  });
});
