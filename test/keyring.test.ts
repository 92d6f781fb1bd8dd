import { createCipheriv, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
  ENVELOPE_HEADER_BYTES, ENVELOPE_OVERHEAD, generateKey, keyFileModeProblem, keyIdOf, Keyring, loadKeyring, parseKeyFile,
  type MessageKind,
} from "../control/keyring";

function ring(...keys: Uint8Array[]): Keyring {
  const r = Keyring.fromKeys(keys);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

const A = randomBytes(32);
const B = randomBytes(32);
const C = randomBytes(32);
const kindArb = fc.constantFrom<MessageKind>("datagram", "stream");

describe("keyring envelope", () => {
  it("has a fixed, exported overhead", () => {
    expect(ENVELOPE_OVERHEAD).toBe(33);
    expect(ENVELOPE_HEADER_BYTES).toBe(17);
    expect(ring(A).seal("datagram", new Uint8Array(1400 - ENVELOPE_OVERHEAD)).length).toBe(1400);
  });

  it("round-trips any plaintext of either kind", () => {
    const k = ring(A, B);
    fc.assert(fc.property(fc.uint8Array({ maxLength: 1400 }), kindArb, (plain, kind) => {
      const sealed = k.seal(kind, plain);
      expect(sealed.length).toBe(plain.length + ENVELOPE_OVERHEAD);
      const opened = k.open(kind, sealed);
      expect(opened.ok).toBe(true);
      if (opened.ok) {
        expect(Buffer.from(opened.value).equals(Buffer.from(plain))).toBe(true);
        expect(opened.keyIndex).toBe(0);
      }
    }), { numRuns: 300 });
  });

  it("uses a fresh nonce per message and names the sealing key", () => {
    const k = ring(A);
    const one = k.seal("datagram", Buffer.from("same"));
    const two = k.seal("datagram", Buffer.from("same"));
    expect(Buffer.from(one.subarray(5, 17)).equals(Buffer.from(two.subarray(5, 17)))).toBe(false);
    const nonces = new Set<string>();
    for (let i = 0; i < 2000; i++) nonces.add(Buffer.from(k.seal("stream", new Uint8Array(0)).subarray(5, 17)).toString("hex"));
    expect(nonces.size).toBe(2000);
    expect(one[0]).toBe(1);
    expect(Buffer.from(one.subarray(1, 5)).toString("hex")).toBe(keyIdOf(A));
    expect(k.primaryKeyId).toBe(keyIdOf(A));
  });

  it("binds the message kind: a datagram does not open as a stream frame, nor the reverse", () => {
    const k = ring(A);
    const d = k.open("stream", k.seal("datagram", Buffer.from("probe")));
    expect(d).toMatchObject({ ok: false, reason: "auth" });
    const s = k.open("datagram", k.seal("stream", Buffer.from("push-pull")));
    expect(s).toMatchObject({ ok: false, reason: "auth" });
  });

  it("rejects every single-bit change, truncation and unknown version, and never throws", () => {
    const k = ring(A, B);
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), kindArb, fc.nat(), fc.integer({ min: 0, max: 7 }), (plain, kind, pos, bit) => {
      const sealed = Buffer.from(k.seal(kind, plain));
      const at = pos % sealed.length;
      sealed[at] = (sealed[at] as number) ^ (1 << bit);
      const r = k.open(kind, sealed);
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.reason).toBe(at === 0 ? "version" : at < 5 ? "unknown-key" : "auth");
    }), { numRuns: 500 });
    fc.assert(fc.property(fc.uint8Array({ maxLength: 100 }), kindArb, fc.nat(), (plain, kind, cut) => {
      const sealed = k.seal(kind, plain);
      const r = k.open(kind, sealed.subarray(0, cut % sealed.length));
      expect(r.ok).toBe(false);
    }), { numRuns: 300 });
    fc.assert(fc.property(fc.uint8Array({ maxLength: 120 }), kindArb, (junk, kind) => {
      expect(k.open(kind, junk).ok).toBe(false);
    }), { numRuns: 500 });
    expect(k.open("datagram", new Uint8Array(32))).toMatchObject({
      ok: false, reason: "truncated", error: "sealed message of 32 bytes is shorter than the 33-byte envelope",
    });
    const v2 = Buffer.from(k.seal("datagram", Buffer.from("x")));
    v2[0] = 2;
    expect(k.open("datagram", v2)).toMatchObject({ ok: false, reason: "version", error: "envelope version 2 is not supported (this build reads version 1)" });
  });

  it("says which key sealed a message it cannot open", () => {
    const r = ring(B).open("datagram", ring(A).seal("datagram", Buffer.from("hello")));
    expect(r).toMatchObject({ ok: false, reason: "unknown-key" });
    if (!r.ok) expect(r.error).toBe(`sealed with key ${keyIdOf(A)}, which is not in this keyring (${keyIdOf(B)})`);
  });

  it("opens with any key in the ring, and falls back to all keys when the id hint matches none", () => {
    const opened = ring(B, C, A).open("datagram", ring(A).seal("datagram", Buffer.from("hi")));
    expect(opened).toMatchObject({ ok: true, keyIndex: 2 });
    // An envelope sealed with A whose id field names no key we hold (authenticated as such).
    const header = Buffer.from([1, 0xde, 0xad, 0xbe, 0xef, ...randomBytes(12)]);
    const cipher = createCipheriv("aes-256-gcm", A, header.subarray(5, 17), { authTagLength: 16 });
    cipher.setAAD(Buffer.concat([Buffer.from([0x01]), header.subarray(0, 5)]));
    const ct = Buffer.concat([cipher.update(Buffer.from("odd id")), cipher.final()]);
    const odd = Buffer.concat([header, ct, cipher.getAuthTag()]);
    const r = ring(B, A).open("datagram", odd);
    expect(r).toMatchObject({ ok: true, keyIndex: 1 });
    if (r.ok) expect(Buffer.from(r.value).toString()).toBe("odd id");
  });

  it("refuses bad key sets", () => {
    expect(Keyring.fromKeys([])).toEqual({ ok: false, error: "a keyring needs at least one key" });
    expect(Keyring.fromKeys([A, randomBytes(16)])).toEqual({ ok: false, error: "key 2 is 16 bytes; AES-256 keys are exactly 32 bytes" });
    expect(Keyring.fromKeys([A, B, A])).toEqual({ ok: false, error: "key 3 repeats key 1" });
  });
});

describe("key rotation", () => {
  // Three nodes; each step is applied to one node at a time, and after every single change
  // every ordered pair of nodes must still open each other's datagrams and stream frames.
  it("add, promote, retire: every pair can talk at every intermediate point", () => {
    const oldKey = A;
    const newKey = B;
    const nodes: Uint8Array[][] = [[oldKey], [oldKey], [oldKey]];
    const steps: { name: string; apply: (keys: Uint8Array[]) => Uint8Array[] }[] = [
      { name: "add", apply: (keys) => [...keys, newKey] },
      { name: "promote", apply: () => [newKey, oldKey] },
      { name: "retire", apply: () => [newKey] },
    ];
    const checkAllPairs = (where: string): void => {
      const rings = nodes.map((keys) => ring(...keys));
      for (let from = 0; from < rings.length; from++) {
        for (let to = 0; to < rings.length; to++) {
          for (const kind of ["datagram", "stream"] as const) {
            const msg = Buffer.from(`${where}: ${from}->${to} ${kind}`);
            const r = (rings[to] as Keyring).open(kind, (rings[from] as Keyring).seal(kind, msg));
            expect(r.ok, `${where}: node ${from} -> node ${to} (${kind}) ${r.ok ? "" : r.error}`).toBe(true);
            if (r.ok) expect(Buffer.from(r.value).equals(msg)).toBe(true);
          }
        }
      }
    };
    checkAllPairs("before");
    for (const step of steps) {
      for (let n = 0; n < nodes.length; n++) {
        nodes[n] = step.apply(nodes[n] as Uint8Array[]);
        checkAllPairs(`${step.name}, node ${n} done`);
      }
    }
    expect(nodes.map((keys) => ring(...keys).keyIds)).toEqual([[keyIdOf(newKey)], [keyIdOf(newKey)], [keyIdOf(newKey)]]);
  });

  it("skipping the add step breaks (why the order matters)", () => {
    const promotedEarly = ring(B, A);
    const notYetAdded = ring(A);
    expect(notYetAdded.open("datagram", promotedEarly.seal("datagram", Buffer.from("x")))).toMatchObject({ ok: false, reason: "unknown-key" });
  });
});

describe("key file", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vxmesh-keyring-test-"));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const a = A.toString("base64");
  const b = B.toString("base64");

  it("reads keys, primary first, skipping blanks and comments", () => {
    const text = `# rotation 2026-01\r\n\n   ${b}  \n# old key, retire after promotion\n${a}\n`;
    const r = parseKeyFile(text, "k");
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.value.map((k) => Buffer.from(k).toString("base64"))).toEqual([b, a]);
    // Unpadded base64 of 32 bytes is accepted too.
    expect(parseKeyFile(a.slice(0, 43)).ok).toBe(true);
  });

  it("names the line of every error", () => {
    const cases: [string, string][] = [
      [`${a}\n\nnot-base64!\n`, "keys:3: expected base64 of exactly 32 bytes (44 characters, as printed by `vxmesh keygen`)"],
      [`# c\n${randomBytes(16).toString("base64")}\n`, "keys:2: expected base64 of exactly 32 bytes (44 characters, as printed by `vxmesh keygen`), got 16 bytes"],
      [`${a}\n${b}\n${a}\n`, "keys:3: repeats the key on line 1"],
      [`${a.slice(0, 42)}B=\n`, "keys:1: not canonical base64 of 32 bytes"],
      ["# only a comment\n\n", "keys: holds no key (one base64 key per line; `vxmesh keygen` makes one)"],
    ];
    for (const [text, error] of cases) expect(parseKeyFile(text, "keys")).toEqual({ ok: false, error });
  });

  it("generates keys the parser accepts", () => {
    const k = generateKey();
    expect(k).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect(generateKey()).not.toBe(k);
    expect(parseKeyFile(k).ok).toBe(true);
  });

  it("refuses a file that group or others can read or write, telling how to fix it", () => {
    const file = path.join(dir, "key");
    fs.writeFileSync(file, `${a}\n`);
    for (const mode of [0o644, 0o640, 0o604, 0o620, 0o602, 0o660]) {
      fs.chmodSync(file, mode);
      const r = loadKeyring(file);
      expect(r.ok, mode.toString(8)).toBe(false);
      if (!r.ok) {
        expect(r.error).toContain(`chmod 600 ${file}`);
        expect(r.error).toContain(`mode 0${mode.toString(8)}`);
      }
    }
    fs.chmodSync(file, 0o600);
    const ok = loadKeyring(file);
    expect(ok.ok).toBe(true);
    if (ok.ok) expect(ok.value.keyIds).toEqual([keyIdOf(A)]);
    fs.chmodSync(file, 0o400);
    expect(loadKeyring(file).ok).toBe(true);
    expect(keyFileModeProblem("/k", 0o100600)).toBeNull();
    expect(keyFileModeProblem("/k", 0o100644)).toBe("key file /k is readable or writable by group or others (mode 0644); run: chmod 600 /k");
  });

  it("reports unreadable and malformed files as errors", () => {
    const missing = loadKeyring(path.join(dir, "absent"));
    expect(missing.ok).toBe(false);
    if (!missing.ok) expect(missing.error).toMatch(/^key file .*absent cannot be opened: ENOENT/);
    const sub = path.join(dir, "sub");
    fs.mkdirSync(sub, { mode: 0o700 });
    expect(loadKeyring(sub)).toEqual({ ok: false, error: `key file ${sub} is not a regular file` });
    const bad = path.join(dir, "bad");
    fs.writeFileSync(bad, `${a}\nxyz\n`, { mode: 0o600 });
    expect(loadKeyring(bad)).toEqual({ ok: false, error: `${bad}:2: expected base64 of exactly 32 bytes (44 characters, as printed by \`vxmesh keygen\`), got 2 bytes` });
  });
});
