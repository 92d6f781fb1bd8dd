// Exercises the real native shim (build/Release/vxmesh_native.node): UDP batches over loopback,
// eventfd wake-ups (also from a worker thread), and a TAP device inside a throw-away network
// namespace so the root namespace's configuration is never touched.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { Worker } from "node:worker_threads";
import { waitFor } from "../bench/lab";
import { nativeAddonPath } from "../encap/artefacts";
import { loadNative } from "../encap/native";

const shim = loadNative();
const ADDON_PATH = nativeAddonPath();

const LOOPBACK = 0x7f000001;
const TRUNCATED = 0xffffffff;
const BATCH_MAX = 256;
const POLLIN = 0x1;

function udpPair(): { a: number; b: number; portA: number; portB: number } {
  const a = shim.udpOpen(LOOPBACK, 0, 1 << 20, 1 << 20);
  const b = shim.udpOpen(LOOPBACK, 0, 1 << 20, 1 << 20);
  return { a, b, portA: shim.udpLocalPort(a), portB: shim.udpLocalPort(b) };
}

/** Datagram i: varying length, first byte i, the rest a pattern that depends on i. */
function datagram(i: number): Uint8Array {
  const d = new Uint8Array(1 + ((i * 97) % 1400));
  d[0] = i & 0xff;
  for (let j = 1; j < d.length; j++) d[j] = (i * 31 + j * 7 + (j >> 8)) & 0xff;
  return d;
}

interface Outgoing {
  slab: Uint8Array;
  offs: Uint32Array;
  lens: Uint32Array;
  ips: Uint32Array;
  ports: Uint16Array;
}

/** Packs datagrams into one slab at unaligned offsets, all addressed to ip:port. */
function pack(datagrams: Uint8Array[], ip: number, port: number): Outgoing {
  const total = datagrams.reduce((s, d) => s + d.length + 3, 5);
  const slab = new Uint8Array(total);
  const n = datagrams.length;
  const out: Outgoing = {
    slab,
    offs: new Uint32Array(n),
    lens: new Uint32Array(n),
    ips: new Uint32Array(n).fill(ip),
    ports: new Uint16Array(n).fill(port),
  };
  let at = 5;
  datagrams.forEach((d, i) => {
    slab.set(d, at);
    out.offs[i] = at;
    out.lens[i] = d.length;
    at += d.length + 3;
  });
  return out;
}

/** sendBatch until every datagram is consumed (loopback rarely pushes back), with a deadline. */
function sendAll(fd: number, o: Outgoing, errors: Uint32Array, deadlineMs = 5000): number {
  const n = o.offs.length;
  const end = Date.now() + deadlineMs;
  let done = 0;
  while (done < n && Date.now() < end) {
    done += shim.sendBatch(fd, o.slab, o.offs.subarray(done), o.lens.subarray(done),
      o.ips.subarray(done), o.ports.subarray(done), n - done, errors);
  }
  return done;
}

interface Received {
  slab: Uint8Array;
  base: number;
  stride: number;
  lens: Uint32Array;
  ips: Uint32Array;
  ports: Uint16Array;
  got: number;
}

/**
 * Polls and recvBatch-es until `want` datagrams arrived or the deadline passed. Each call writes
 * at the next free slot, through subarrays of the result arrays (exercises view offsets).
 */
function recvAll(fd: number, want: number, stride: number, deadlineMs = 5000): Received {
  const base = 16;
  const r: Received = {
    slab: new Uint8Array(base + want * stride),
    base,
    stride,
    lens: new Uint32Array(want),
    ips: new Uint32Array(want),
    ports: new Uint16Array(want),
    got: 0,
  };
  const fds = Int32Array.of(fd);
  const revents = new Int32Array(1);
  const end = Date.now() + deadlineMs;
  while (r.got < want) {
    const left = end - Date.now();
    if (left <= 0) break;
    shim.pollIn(fds, revents, Math.min(left, 1000));
    r.got += shim.recvBatch(fd, r.slab, base + r.got * stride, stride, want - r.got,
      r.lens.subarray(r.got), r.ips.subarray(r.got), r.ports.subarray(r.got));
  }
  return r;
}

function slot(r: Received, i: number): Uint8Array {
  const len = r.lens[i] as number;
  const start = r.base + i * r.stride;
  return r.slab.subarray(start, start + len);
}

function errnoOf(fn: () => unknown): { code?: string; message: string; syscall?: string } {
  try {
    fn();
  } catch (e) {
    const err = e as Error & { code?: string; syscall?: string };
    expect(err).toBeInstanceOf(Error);
    return { code: err.code, message: err.message, syscall: err.syscall };
  }
  throw new Error("expected the call to throw");
}

describe("native shim: UDP batches on loopback", () => {
  it("moves 64 datagrams of varying sizes with sendBatch/recvBatch", () => {
    const { a, b, portA, portB } = udpPair();
    try {
      expect(portA).toBeGreaterThan(0);
      expect(portB).toBeGreaterThan(0);
      const datagrams = Array.from({ length: 64 }, (_, i) => datagram(i));
      const out = pack(datagrams, LOOPBACK, portB);
      const errors = new Uint32Array(1);
      expect(sendAll(a, out, errors)).toBe(64);
      expect(errors[0]).toBe(0);

      const r = recvAll(b, 64, 2048);
      expect(r.got).toBe(64);
      for (let i = 0; i < 64; i++) {
        const want = datagrams[i] as Uint8Array;
        expect(r.lens[i]).toBe(want.length);
        expect(r.ips[i]).toBe(LOOPBACK);
        expect(r.ports[i]).toBe(portA);
        expect(Buffer.from(slot(r, i)).equals(Buffer.from(want))).toBe(true);
      }
      // Nothing was written in front of the first slot.
      expect(r.slab.subarray(0, r.base).every((x) => x === 0)).toBe(true);
    } finally {
      shim.close(a);
      shim.close(b);
    }
  });

  it("marks a datagram longer than the stride as truncated and keeps going", () => {
    const { a, b, portA, portB } = udpPair();
    try {
      const big = new Uint8Array(3000).fill(0xab);
      const small = Uint8Array.of(1, 2, 3, 4, 5);
      const errors = new Uint32Array(1);
      expect(sendAll(a, pack([big, small], LOOPBACK, portB), errors)).toBe(2);

      const r = recvAll(b, 2, 1024);
      expect(r.got).toBe(2);
      expect(r.lens[0]).toBe(TRUNCATED);
      expect(r.ports[0]).toBe(portA);
      // The datagram was cut at the stride, not written past it.
      expect(r.slab[r.base + 1023]).toBe(0xab);
      expect(r.lens[1]).toBe(5);
      expect(Array.from(slot(r, 1))).toEqual([1, 2, 3, 4, 5]);
    } finally {
      shim.close(a);
      shim.close(b);
    }
  });

  it("returns 0 on EAGAIN instead of throwing, and pollIn times out with 0", () => {
    const { a, b } = udpPair();
    try {
      const slab = new Uint8Array(4 * 256);
      expect(shim.recvBatch(b, slab, 0, 256, 4, new Uint32Array(4), new Uint32Array(4),
        new Uint16Array(4))).toBe(0);
      const revents = Int32Array.of(-1);
      expect(shim.pollIn(Int32Array.of(b), revents, 0)).toBe(0);
      expect(revents[0]).toBe(0);
      // A zero-length batch is not an error either.
      expect(shim.recvBatch(b, slab, 0, 256, 0, new Uint32Array(0), new Uint32Array(0),
        new Uint16Array(0))).toBe(0);
    } finally {
      shim.close(a);
      shim.close(b);
    }
  });

  it("skips a datagram the kernel refuses, counts it in errors[0] and sends the rest", () => {
    const { a, b, portA, portB } = udpPair();
    try {
      const out = pack([Uint8Array.of(10), Uint8Array.of(20), Uint8Array.of(30)], LOOPBACK, portB);
      out.ports[1] = 0; // sending to port 0 fails with EINVAL for that datagram only
      const errors = Uint32Array.of(5);
      expect(shim.sendBatch(a, out.slab, out.offs, out.lens, out.ips, out.ports, 3, errors)).toBe(3);
      expect(errors[0]).toBe(6); // added to, not overwritten

      const r = recvAll(b, 2, 64);
      expect(r.got).toBe(2);
      expect([slot(r, 0)[0], slot(r, 1)[0]]).toEqual([10, 30]);
      expect([r.ports[0], r.ports[1]]).toEqual([portA, portA]);
    } finally {
      shim.close(a);
      shim.close(b);
    }
  });

  it("clamps count and max to the batch limit of 256", () => {
    const { a, b } = udpPair();
    try {
      const portB = shim.udpLocalPort(b);
      const out = pack(Array.from({ length: 300 }, (_, i) => Uint8Array.of(i & 0xff, i >> 8)),
        LOOPBACK, portB);
      const errors = new Uint32Array(1);
      expect(shim.sendBatch(a, out.slab, out.offs, out.lens, out.ips, out.ports, 300, errors))
        .toBe(BATCH_MAX);
      expect(errors[0]).toBe(0);

      const stride = 16;
      const slab = new Uint8Array(BATCH_MAX * stride);
      const lens = new Uint32Array(BATCH_MAX);
      const ips = new Uint32Array(BATCH_MAX);
      const ports = new Uint16Array(BATCH_MAX);
      const fds = Int32Array.of(b);
      const revents = new Int32Array(1);
      expect(shim.pollIn(fds, revents, 5000)).toBe(1);
      expect(revents[0]! & POLLIN).toBe(POLLIN);
      // max 1000 is clamped to 256, so arrays of 256 entries are enough.
      const got = shim.recvBatch(b, slab, 0, stride, 1000, lens, ips, ports);
      expect(got).toBeGreaterThan(0);
      expect(got).toBeLessThanOrEqual(BATCH_MAX);
      for (let i = 0; i < got; i++) {
        expect(lens[i]).toBe(2);
        expect(slab[i * stride]! | (slab[i * stride + 1]! << 8)).toBe(i);
      }
    } finally {
      shim.close(a);
      shim.close(b);
    }
  });

  it("rejects bad arguments with TypeError/RangeError before any syscall", () => {
    const { a, b } = udpPair();
    try {
      const slab = new Uint8Array(1024);
      const u32 = new Uint32Array(4);
      const u16 = new Uint16Array(4);
      const recv = (...args: unknown[]) => () =>
        (shim.recvBatch as (...a: unknown[]) => number)(...args);
      expect(recv(b, slab, 0, 256, 4, u32, u32, u16)()).toBe(0);
      // Wrong typed-array kinds or not a typed array at all.
      expect(recv(b, new Uint16Array(512), 0, 256, 4, u32, u32, u16)).toThrow(TypeError);
      expect(recv(b, Array.from(slab), 0, 256, 4, u32, u32, u16)).toThrow(TypeError);
      expect(recv(b, slab, 0, 256, 4, u16, u32, u16)).toThrow(TypeError);
      expect(recv(b, slab, 0, 256, 4, u32, u32, u32)).toThrow(TypeError);
      expect(recv(b, slab, "0", 256, 4, u32, u32, u16)).toThrow(TypeError);
      expect(recv(b, slab, 0, 256, 4, u32, u32)).toThrow(TypeError);
      // Slots past the slab, arrays too short, non-integers, negative fds.
      expect(recv(b, slab, 1, 256, 4, u32, u32, u16)).toThrow(RangeError);
      expect(recv(b, slab, 0, 257, 4, u32, u32, u16)).toThrow(RangeError);
      expect(recv(b, slab, 0, 0, 4, u32, u32, u16)).toThrow(RangeError);
      expect(recv(b, slab, 0, 128, 5, u32, u32, u16)).toThrow(RangeError);
      expect(recv(b, slab, 0, 1.5, 4, u32, u32, u16)).toThrow(RangeError);
      expect(recv(-1, slab, 0, 256, 4, u32, u32, u16)).toThrow(RangeError);
      expect(recv(b, slab, 0, 256, NaN, u32, u32, u16)).toThrow(RangeError);

      const errors = new Uint32Array(1);
      const ips = Uint32Array.of(LOOPBACK);
      const ports = Uint16Array.of(9);
      expect(() => shim.sendBatch(a, slab, Uint32Array.of(1000), Uint32Array.of(25), ips, ports, 1,
        errors)).toThrow(RangeError);
      expect(() => shim.sendBatch(a, slab, Uint32Array.of(0xffffffff), Uint32Array.of(2), ips,
        ports, 1, errors)).toThrow(RangeError);
      expect(() => shim.sendBatch(a, slab, Uint32Array.of(0), Uint32Array.of(1), ips, ports, 1,
        new Uint32Array(0))).toThrow(RangeError);
      expect(() => shim.writeFrames(a, slab, Uint32Array.of(0, 1020), Uint32Array.of(4, 5), 2, errors))
        .toThrow(RangeError);
      expect(() => shim.writeFrames(a, slab, Uint32Array.of(0), Uint32Array.of(4), 1, errors, new Uint8Array(5), 10))
        .toThrow(RangeError);
      expect(() => shim.readFrames(a, slab, 0, 512, 3, new Uint32Array(3))).toThrow(RangeError);
      expect(() => shim.udpOpen(LOOPBACK, 65536, 0, 0)).toThrow(RangeError);
      expect(() => shim.udpOpen(-1, 0, 0, 0)).toThrow(RangeError);
      expect(() => shim.pollIn(new Int32Array(1), new Int32Array(0), 0)).toThrow(RangeError);
      expect(() => shim.pollIn(new Int32Array(1), new Int32Array(1), -2)).toThrow(RangeError);
      expect(() => shim.tapOpen("a-name-longer-than-15")).toThrow(RangeError);
      expect(() => shim.tapOpen("vxbad", { vnetHdr: 1 as unknown as boolean })).toThrow(TypeError);
      expect(() => (shim.tapOpen as (n: unknown) => unknown)(7)).toThrow(TypeError);
      // Nothing was consumed by the rejected calls.
      expect(errors[0]).toBe(0);
    } finally {
      shim.close(a);
      shim.close(b);
    }
  });

  it("throws an Error with code EBADF once the socket is closed", () => {
    const { a, b } = udpPair();
    shim.close(b);
    shim.close(a);
    // Synchronous right after close: no JS in between could have reused the fd numbers.
    const slab = new Uint8Array(64);
    const recv = errnoOf(() => shim.recvBatch(b, slab, 0, 64, 1, new Uint32Array(1),
      new Uint32Array(1), new Uint16Array(1)));
    const send = errnoOf(() => shim.sendBatch(a, slab, Uint32Array.of(0), Uint32Array.of(8),
      Uint32Array.of(LOOPBACK), Uint16Array.of(9), 1, new Uint32Array(1)));
    const port = errnoOf(() => shim.udpLocalPort(a));
    const again = errnoOf(() => shim.close(a));
    expect(recv.code).toBe("EBADF");
    expect(recv.message).toMatch(/^recvmmsg: Bad file descriptor/);
    expect(send.code).toBe("EBADF");
    expect(send.message).toMatch(/^sendmmsg: /);
    expect(port.code).toBe("EBADF");
    expect(again.code).toBe("EBADF");
    expect(again.syscall).toBe("close");
  });

  it("reports a failed bind with the errno name", () => {
    // 192.0.2.1 (TEST-NET-1) is not a local address: bind fails, nothing is configured.
    const err = errnoOf(() => shim.udpOpen(0xc0000201, 0, 0, 0));
    expect(err.code).toBe("EADDRNOTAVAIL");
    expect(err.message).toMatch(/^bind: /);
  });
});

describe("native shim: eventfd", () => {
  it("wakes pollIn on signal; drain returns the count and resets", () => {
    const efd = shim.eventfdOpen();
    try {
      const fds = Int32Array.of(efd);
      const revents = new Int32Array(1);
      expect(shim.eventfdDrain(efd)).toBe(0);
      expect(shim.pollIn(fds, revents, 0)).toBe(0);

      shim.eventfdSignal(efd);
      shim.eventfdSignal(efd);
      shim.eventfdSignal(efd);
      expect(shim.pollIn(fds, revents, 5000)).toBe(1);
      expect(revents[0]! & POLLIN).toBe(POLLIN);
      expect(shim.eventfdDrain(efd)).toBe(3);

      expect(shim.pollIn(fds, revents, 0)).toBe(0);
      expect(revents[0]).toBe(0);
      expect(shim.eventfdDrain(efd)).toBe(0);
    } finally {
      shim.close(efd);
    }
  });

  it("wakes a worker thread blocked in pollIn (the addon loads per thread)", async () => {
    const efd = shim.eventfdOpen();
    const worker = new Worker(
      `
      const { parentPort, workerData } = require("node:worker_threads");
      const shim = require(workerData.addon);
      const fds = Int32Array.of(workerData.efd);
      const revents = new Int32Array(1);
      parentPort.postMessage({ ready: true });
      const started = Date.now();
      const n = shim.pollIn(fds, revents, 20000);
      parentPort.postMessage({ n, revents: revents[0], drained: shim.eventfdDrain(workerData.efd),
        waitedMs: Date.now() - started });
      `,
      { eval: true, workerData: { addon: ADDON_PATH, efd } },
    );
    try {
      const result = await new Promise<{ n: number; revents: number; drained: number }>(
        (resolve, reject) => {
          worker.on("error", reject);
          worker.on("exit", (code) => reject(new Error(`worker exited early with ${code}`)));
          worker.on("message", (m: { ready?: boolean; n: number; revents: number; drained: number }) => {
            if (m.ready === true) shim.eventfdSignal(efd);
            else resolve(m);
          });
        },
      );
      expect(result.n).toBe(1);
      expect(result.revents & POLLIN).toBe(POLLIN);
      expect(result.drained).toBe(1);
    } finally {
      await worker.terminate();
      shim.close(efd);
    }
  });
});

describe("native shim: busy-polling pollIn", () => {
  /**
   * A worker thread calls pollIn(eventfd, timeout 20 s, spinUs) and reports what it returned;
   * `signal` decides when the eventfd is written, given the worker's thread id.
   */
  async function pollInWorker(spinUs: number, signal: (tid: string) => Promise<void>): Promise<{ n: number; revents: number }> {
    const efd = shim.eventfdOpen();
    const worker = new Worker(
      `
      const { parentPort, workerData } = require("node:worker_threads");
      const { readlinkSync } = require("node:fs");
      const shim = require(workerData.addon);
      const revents = new Int32Array(1);
      parentPort.postMessage({ tid: readlinkSync("/proc/thread-self").split("/").pop() });
      const n = shim.pollIn(Int32Array.of(workerData.efd), revents, 20000, workerData.spinUs);
      parentPort.postMessage({ n, revents: revents[0] });
      `,
      { eval: true, workerData: { addon: ADDON_PATH, efd, spinUs } },
    );
    try {
      return await new Promise((resolve, reject) => {
        worker.on("error", reject);
        worker.on("exit", (code) => reject(new Error(`worker exited early with ${code}`)));
        worker.on("message", (m: { tid?: string; n: number; revents: number }) => {
          if (m.tid !== undefined) signal(m.tid).then(() => shim.eventfdSignal(efd), reject);
          else resolve(m);
        });
      });
    } finally {
      await worker.terminate();
      shim.close(efd);
    }
  }

  /** Where the thread sleeps in the kernel ("0" while it runs or yields). */
  const wchan = (tid: string): string => readFileSync(`/proc/self/task/${tid}/wchan`, "utf8");

  it("returns the ready count negated when it found the fd without sleeping", async () => {
    // The largest window, 1 s: the signal comes right after the worker reports in, while it polls.
    const r = await pollInWorker(1_000_000, async () => {});
    expect(r.n).toBe(-1);
    expect(r.revents & POLLIN).toBe(POLLIN);
  });

  it("sleeps in poll() once the window has passed, and then returns a positive count", async () => {
    const r = await pollInWorker(1000, async (tid) => {
      await waitFor(() => /^(?!ep_).*poll/.test(wchan(tid)), { timeoutMs: 5000, intervalMs: 5, what: "the worker to sleep in poll()" });
    });
    expect(r.n).toBe(1);
    expect(r.revents & POLLIN).toBe(POLLIN);
  });

  it("rejects a window outside 0..1000000 µs", () => {
    const fds = Int32Array.of(0);
    expect(() => shim.pollIn(fds, new Int32Array(1), 0, -1)).toThrow(RangeError);
    expect(() => shim.pollIn(fds, new Int32Array(1), 0, 1_000_001)).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------------------------
// TAP, inside a private network namespace
// ---------------------------------------------------------------------------------------------

/**
 * Runs inside `ip netns exec`. argv[2] is the addon path. Prints one JSON line with what it saw;
 * the test asserts on it. Only 10.244.0.0/24 is used, on a device that dies with the namespace.
 */
const TAP_CHILD = `
"use strict";
const { execFileSync } = require("node:child_process");
const dgram = require("node:dgram");
const shim = require(process.argv[2]);

const TAP = "vxt0";
const TAP_MAC = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
const PEER_MAC = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];
const TAP_IP = [10, 244, 0, 1];
const PEER_IP = [10, 244, 0, 2];
const STRIDE = 2048;
const MAX = 64;

const macText = (m) => m.map((b) => b.toString(16).padStart(2, "0")).join(":");
const ipText = (a) => a.join(".");
const ipCmd = (...args) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
const u16 = (b, o) => (b[o] << 8) | b[o + 1];
const bytesText = (b) => Array.from(b).join(",");

function ipChecksum(b, start, len) {
  let sum = 0;
  for (let i = start; i < start + len; i += 2) sum += u16(b, i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return (~sum) & 0xffff;
}

/** Polls the TAP and reads frames until match(frame, len) returns a value, or the deadline. */
function readUntil(fd, stride, match, ms) {
  const slab = new Uint8Array(MAX * stride);
  const lens = new Uint32Array(MAX);
  const fds = Int32Array.of(fd);
  const revents = new Int32Array(1);
  const end = Date.now() + ms;
  const seen = [];
  for (;;) {
    const left = end - Date.now();
    if (left <= 0) return { found: null, seen };
    shim.pollIn(fds, revents, Math.min(left, 500));
    const n = shim.readFrames(fd, slab, 0, stride, MAX, lens);
    for (let i = 0; i < n; i++) {
      const frame = slab.subarray(i * stride, i * stride + Math.min(lens[i], stride));
      seen.push(lens[i]);
      const hit = match(frame, lens[i]);
      if (hit !== undefined) return { found: hit, seen };
    }
  }
}

function parseIpv4Udp(f) {
  if (f.length < 42 || u16(f, 12) !== 0x0800 || f[14] !== 0x45 || f[23] !== 17) return undefined;
  return {
    dstMac: macText(Array.from(f.subarray(0, 6))),
    srcMac: macText(Array.from(f.subarray(6, 12))),
    ipTotalLen: u16(f, 16),
    ipChecksumOk: ipChecksum(f, 14, 20) === 0,
    srcIp: ipText(Array.from(f.subarray(26, 30))),
    dstIp: ipText(Array.from(f.subarray(30, 34))),
    srcPort: u16(f, 34),
    dstPort: u16(f, 36),
    udpLen: u16(f, 38),
  };
}

/** An Ethernet/IPv4/UDP frame from PEER to the TAP's own address, UDP checksum 0. */
function buildFrame(slab, at, srcPort, dstPort, payload) {
  const total = 20 + 8 + payload.length;
  const f = slab.subarray(at, at + 14 + total);
  f.set(TAP_MAC, 0);
  f.set(PEER_MAC, 6);
  f.set([0x08, 0x00], 12);
  f.set([0x45, 0, total >> 8, total & 255, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0], 14);
  f.set(PEER_IP, 26);
  f.set(TAP_IP, 30);
  const sum = ipChecksum(f, 14, 20);
  f[24] = sum >> 8;
  f[25] = sum & 255;
  f.set([srcPort >> 8, srcPort & 255, dstPort >> 8, dstPort & 255, (8 + payload.length) >> 8,
    (8 + payload.length) & 255, 0, 0], 34);
  f.set(payload, 42);
  return f.length;
}

// dgram sends on a later tick: wait for it before blocking the loop in pollIn.
const sendTo = (socket, buf, port, host) => new Promise((resolve, reject) => {
  socket.send(buf, port, host, (err) => (err ? reject(err) : resolve()));
});

const once = (emitter, event) => new Promise((resolve, reject) => {
  emitter.once(event, resolve);
  emitter.once("error", reject);
});

async function main() {
  const out = {};
  const tap = shim.tapOpen(TAP);
  out.name = tap.name;
  out.fdIsNumber = Number.isInteger(tap.fd) && tap.fd >= 0;
  out.emptyRead = shim.readFrames(tap.fd, new Uint8Array(STRIDE), 0, STRIDE, 1, new Uint32Array(1));

  ipCmd("link", "set", "dev", TAP, "address", macText(TAP_MAC));
  ipCmd("addr", "add", ipText(TAP_IP) + "/24", "dev", TAP);
  ipCmd("link", "set", "dev", TAP, "up");
  // A permanent neighbour: the kernel sends IPv4 frames to it straight away, no ARP.
  ipCmd("neigh", "replace", ipText(PEER_IP), "lladdr", macText(PEER_MAC), "dev", TAP,
    "nud", "permanent");

  // Kernel -> TAP: a UDP datagram to the neighbour comes out of the TAP as a frame.
  const sender = dgram.createSocket("udp4");
  sender.bind(0, ipText(TAP_IP));
  await once(sender, "listening");
  out.senderPort = sender.address().port;
  const probe = Buffer.from("vxmesh tap probe");
  await sendTo(sender, probe, 9999, ipText(PEER_IP));
  const read = readUntil(tap.fd, STRIDE, (f, len) => {
    const h = parseIpv4Udp(f);
    if (h === undefined || h.dstPort !== 9999) return undefined;
    return { ...h, len, payload: Buffer.from(f.subarray(42, len)).toString() };
  }, 10000);
  out.probe = read.found;
  out.probeSeenLens = read.seen;

  // A frame longer than the stride: cut, and marked with 0xFFFFFFFF.
  await sendTo(sender, Buffer.alloc(300, 0x5a), 9998, ipText(PEER_IP));
  const cut = readUntil(tap.fd, 64, (f, len) => {
    const h = parseIpv4Udp(f);
    if (h === undefined || h.dstPort !== 9998) return undefined;
    return { len, ipTotalLen: h.ipTotalLen };
  }, 10000);
  out.truncated = cut.found;

  // A frame exactly as long as the stride is whole, not truncated.
  await sendTo(sender, Buffer.alloc(64 - 42, 0x3c), 9997, ipText(PEER_IP));
  const exact = readUntil(tap.fd, 64, (f, len) => {
    const h = parseIpv4Udp(f);
    if (h === undefined || h.dstPort !== 9997) return undefined;
    return { len, lastByte: f[63] };
  }, 10000);
  out.exactFit = exact.found;

  // TAP -> kernel: frames written to the TAP arrive at a socket bound to the TAP's address.
  const receiver = dgram.createSocket("udp4");
  receiver.bind(0, ipText(TAP_IP));
  await once(receiver, "listening");
  const rport = receiver.address().port;
  const got = [];
  const arrived = new Promise((resolve) => {
    receiver.on("message", (msg, rinfo) => {
      got.push({ payload: msg.toString(), address: rinfo.address, port: rinfo.port });
      if (got.length === 2) resolve();
    });
  });
  const slab = new Uint8Array(4096);
  const offs = Uint32Array.of(100, 1001);
  const lens = Uint32Array.of(
    buildFrame(slab, 100, 5555, rport, Buffer.from("vxmesh inject one")),
    buildFrame(slab, 1001, 5556, rport, Buffer.from("vxmesh inject two")),
  );
  out.written = shim.writeFrames(tap.fd, slab, offs, lens, 2, new Uint32Array(1));
  let timer;
  await Promise.race([
    arrived,
    new Promise((resolve) => { timer = setTimeout(resolve, 10000); }),
  ]);
  clearTimeout(timer);
  out.injected = got;

  // Multi-queue with a vnet header: two queues of one device.
  const q1 = shim.tapOpen("vxt1", { multiQueue: true, vnetHdr: true });
  const q2 = shim.tapOpen("vxt1", { multiQueue: true, vnetHdr: true });
  out.multiQueue = [q1.name, q2.name];
  shim.close(q1.fd);
  shim.close(q2.fd);

  // A closed TAP fd is a real error.
  shim.close(tap.fd);
  try {
    shim.readFrames(tap.fd, new Uint8Array(STRIDE), 0, STRIDE, 1, new Uint32Array(1));
    out.closedRead = "no error";
  } catch (e) {
    out.closedRead = { code: e.code, message: e.message };
  }
  sender.close();
  receiver.close();
  return out;
}

main().then(
  (out) => { process.stdout.write(JSON.stringify(out) + "\\n"); process.exit(0); },
  (e) => { process.stdout.write(JSON.stringify({ error: String(e && e.stack || e) }) + "\\n"); process.exit(0); },
);
`;

describe("native shim: TAP in a private network namespace", () => {
  const netns = `vxmnative${process.pid}`;
  let dir: string | undefined;
  let script = "";

  function deleteNetns(): void {
    try {
      execFileSync("ip", ["netns", "del", netns], { stdio: "ignore" });
    } catch {
      // not there
    }
  }

  beforeAll(() => {
    deleteNetns(); // a leftover of a crashed run with the same pid
    dir = mkdtempSync(path.join(tmpdir(), "vxmnative-"));
    script = path.join(dir, "tap-child.js");
    writeFileSync(script, TAP_CHILD);
    execFileSync("ip", ["netns", "add", netns], { stdio: ["ignore", "ignore", "pipe"] });
  });

  afterAll(() => {
    deleteNetns();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it("reads kernel frames with readFrames and injects frames with writeFrames", async () => {
    const { stdout } = await promisify(execFile)(
      "ip", ["netns", "exec", netns, process.execPath, script, ADDON_PATH],
      { timeout: 50_000 },
    );
    const r = JSON.parse(stdout.trim());
    expect(r.error).toBeUndefined();
    expect(r.name).toBe("vxt0");
    expect(r.fdIsNumber).toBe(true);
    expect(r.emptyRead).toBe(0);

    const payload = "vxmesh tap probe";
    expect(r.probe).toEqual({
      dstMac: "02:00:5e:10:00:02",
      srcMac: "02:00:5e:10:00:01",
      ipTotalLen: 20 + 8 + payload.length,
      ipChecksumOk: true,
      srcIp: "10.244.0.1",
      dstIp: "10.244.0.2",
      srcPort: r.senderPort,
      dstPort: 9999,
      udpLen: 8 + payload.length,
      len: 14 + 20 + 8 + payload.length,
      payload,
    });

    expect(r.truncated).toEqual({ len: TRUNCATED, ipTotalLen: 20 + 8 + 300 });
    expect(r.exactFit).toEqual({ len: 64, lastByte: 0x3c });

    expect(r.written).toBe(2);
    expect(r.injected).toEqual([
      { payload: "vxmesh inject one", address: "10.244.0.2", port: 5555 },
      { payload: "vxmesh inject two", address: "10.244.0.2", port: 5556 },
    ]);

    expect(r.multiQueue).toEqual(["vxt1", "vxt1"]);
    expect(r.closedRead.code).toBe("EBADF");
    expect(r.closedRead.message).toMatch(/^readv: Bad file descriptor/);
  });
});
