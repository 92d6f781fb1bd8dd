// The Node reflector (control/kube/reflector.ts) driven entirely by hand: a fake KubeApi whose
// list pages and watches the test answers, timers that fire only when the test moves the time
// on, and a fixed random (0.5: no jitter, so the backoff is exactly 500, 1000, 2000 … ms). No
// sockets, no real sleeps: promises are let settle with setImmediate.

import { describe, expect, it } from "vitest";
import type { KubeApi, KubeError, KubeResult, NodeListPage, WatchEvent, WatchHandle, WatchOptions } from "../control/kube/api";
import { NodeReflector, type Timers } from "../control/kube/reflector";

const T0 = 1_700_000_000_000;
const WATCH_TIMEOUT_S = 290;

/** Lets every promise chain that is ready run (the fakes never wait on I/O). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Timers that fire only when the test moves the time on. */
class FakeClock implements Timers {
  private t = T0;
  private seq = 0;
  private timers: { at: number; seq: number; fn: () => void }[] = [];

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.t + ms, seq: ++this.seq, fn };
    this.timers.push(timer);
    return () => { this.timers = this.timers.filter((t) => t !== timer); };
  }

  get pending(): number {
    return this.timers.length;
  }

  /** The delays (from now) of the timers set. */
  get pendingIn(): number[] {
    return this.timers.map((t) => t.at - this.t);
  }

  /** Moves the time on by `ms`, firing each timer due on the way at its own time. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (due === undefined) break;
      this.timers = this.timers.filter((t) => t !== due);
      this.t = due.at;
      due.fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
}

/** One watch the reflector asked for; the test opens it, pushes events, ends it. */
class FakeWatch {
  stops = 0;
  ended = false;
  private resolveDone!: (r: KubeResult<void>) => void;
  readonly done: Promise<KubeResult<void>> = new Promise((resolve) => (this.resolveDone = resolve));
  readonly handle: WatchHandle;

  constructor(
    readonly options: WatchOptions,
    private readonly onEvent: (event: WatchEvent) => void,
    private readonly onOpen: (() => void) | undefined,
  ) {
    this.handle = {
      done: this.done,
      stop: () => {
        this.stops++;
        this.finish({ ok: true, value: undefined });
      },
    };
  }

  async open(): Promise<void> {
    this.onOpen?.();
    await settle();
  }

  /** Delivers events as the stream would (the test decides whether the stream still runs). */
  async push(...events: WatchEvent[]): Promise<void> {
    for (const e of events) this.onEvent(e);
    await settle();
  }

  /** The server ends the stream: cleanly (no argument) or with an error. */
  async end(error?: KubeError): Promise<void> {
    this.finish(error === undefined ? { ok: true, value: undefined } : { ok: false, error });
    await settle();
  }

  private finish(r: KubeResult<void>): void {
    if (this.ended) return;
    this.ended = true;
    this.resolveDone(r);
  }
}

interface ListCall {
  readonly page: { limit: number; continueToken?: string };
  answered: boolean;
  resolve(r: KubeResult<NodeListPage>): void;
}

/** The KubeApi seam, answered by the test. */
class FakeApi implements KubeApi {
  readonly server = "https://fake.invalid:6443";
  readonly lists: ListCall[] = [];
  readonly watches: FakeWatch[] = [];

  listNodes(page: { limit: number; continueToken?: string }): Promise<KubeResult<NodeListPage>> {
    return new Promise((resolve) => {
      const call: ListCall = { page: { ...page }, answered: false, resolve: (r) => { call.answered = true; resolve(r); } };
      this.lists.push(call);
    });
  }

  watchNodes(options: WatchOptions, onEvent: (event: WatchEvent) => void, onOpen?: () => void): WatchHandle {
    const w = new FakeWatch({ ...options }, onEvent, onOpen);
    this.watches.push(w);
    return w.handle;
  }

  getNode(): Promise<KubeResult<unknown>> {
    throw new Error("the reflector does not get Nodes");
  }

  patchNode(): Promise<KubeResult<unknown>> {
    throw new Error("the reflector does not patch Nodes");
  }

  close(): void {}

  /** The list page asked for and not answered yet. */
  get pendingList(): ListCall {
    const last = this.lists[this.lists.length - 1];
    if (last === undefined || last.answered) throw new Error(`no list page pending (${this.lists.length} asked)`);
    return last;
  }

  get hasPendingList(): boolean {
    const last = this.lists[this.lists.length - 1];
    return last !== undefined && !last.answered;
  }

  /** Answers the pending page. */
  async page(resourceVersion: string, items: unknown[], continueToken?: string): Promise<void> {
    this.pendingList.resolve({ ok: true, value: { resourceVersion, items, continueToken } });
    await settle();
  }

  async failList(error: KubeError): Promise<void> {
    this.pendingList.resolve({ ok: false, error });
    await settle();
  }

  get watch(): FakeWatch {
    const w = this.watches[this.watches.length - 1];
    if (w === undefined) throw new Error("no watch asked for");
    return w;
  }
}

/** A v1 Node, trimmed: a podCIDR (what peers read) and a Ready condition (what they do not). */
function node(name: string, rv: string, o: { podCIDR?: string; ready?: string } = {}): Record<string, unknown> {
  const podCIDR = o.podCIDR ?? "10.244.1.0/24";
  return {
    metadata: { name, resourceVersion: rv },
    spec: { podCIDR, podCIDRs: [podCIDR] },
    status: { conditions: [{ type: "Ready", status: o.ready ?? "True" }] },
  };
}

const bookmark = (rv: string): WatchEvent => ({ type: "BOOKMARK", object: { kind: "Node", metadata: { resourceVersion: rv } } });
const added = (n: unknown): WatchEvent => ({ type: "ADDED", object: n });
const modified = (n: unknown): WatchEvent => ({ type: "MODIFIED", object: n });
const deleted = (n: unknown): WatchEvent => ({ type: "DELETED", object: n });
const errorEvent = (status: number, reason: string): WatchEvent => ({ type: "ERROR", status: { status, reason, message: `${reason} (${status})` } });

const GONE: KubeError = { status: 410, reason: "Expired", message: "too old resource version: 100 (200)" };
const RESET: KubeError = { status: undefined, reason: "ECONNRESET", message: "the watch stream broke" };
const E500: KubeError = { status: 500, reason: "InternalError", message: "etcd is down" };
const E403: KubeError = { status: 403, reason: "Forbidden", message: "nodes is forbidden" };

interface Harness {
  clock: FakeClock;
  api: FakeApi;
  r: NodeReflector;
  changes: [string, string | undefined][];
  errors: { error: KubeError; during: string; retryInMs: number }[];
}

function harness(o: { pageSize?: number } = {}): Harness {
  const clock = new FakeClock();
  const api = new FakeApi();
  const changes: Harness["changes"] = [];
  const errors: Harness["errors"] = [];
  const r = new NodeReflector(api, {
    timers: clock,
    random: () => 0.5,
    pageSize: o.pageSize ?? 500,
    watchTimeoutSeconds: WATCH_TIMEOUT_S,
    onChange: (change, name) => changes.push([change, name]),
    onError: (error, during, retryInMs) => errors.push({ error, during, retryInMs }),
  });
  return { clock, api, r, changes, errors };
}

/** Started, listed in one page (`items` at `rv`), the watch asked for and open. */
async function watching(items: unknown[] = [node("a", "90"), node("b", "95")], rv = "100"): Promise<Harness> {
  const h = harness();
  h.r.start();
  await settle();
  await h.api.page(rv, items);
  await h.api.watch.open();
  expect(h.r.state).toBe("watching");
  return h;
}

const names = (r: NodeReflector): string[] => [...r.cache.views()].map((v) => v.name).sort();

/** Whether `p` has settled once every ready chain has run. */
async function settledNow(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true));
  await settle();
  return done;
}

describe("NodeReflector: the list", () => {
  it("lists in pages of pageSize, follows the continue tokens, keeps the first page's resourceVersion, then replaces the cache once", async () => {
    const h = harness({ pageSize: 2 });
    h.r.start();
    await settle();
    expect(h.api.lists.map((l) => l.page)).toEqual([{ limit: 2 }]);

    await h.api.page("100", [node("a", "90"), node("b", "95")], "tok-1");
    expect(h.api.lists.map((l) => l.page)).toEqual([{ limit: 2 }, { limit: 2, continueToken: "tok-1" }]);
    // Nothing applied until the list is complete.
    expect(h.r.cache.size).toBe(0);
    expect(h.changes).toEqual([]);
    expect(h.r.state).toBe("listing");
    expect(h.api.watches).toHaveLength(0);

    await h.api.page("100", [node("c", "97")], "tok-2");
    expect(h.api.lists[2]?.page).toEqual({ limit: 2, continueToken: "tok-2" });
    // A later page's version is not the snapshot's.
    await h.api.page("999", [node("d", "98")]);

    expect(h.api.lists).toHaveLength(3);
    expect(names(h.r)).toEqual(["a", "b", "c", "d"]);
    expect(h.r.cache.resourceVersion).toBe("100");
    expect(h.r.counters.lists).toBe(1);
    expect(h.changes).toEqual([["peers", undefined]]);
  });

  it("starts the watch from the list's resourceVersion, with bookmarks and the configured timeoutSeconds", async () => {
    const h = harness();
    h.r.start();
    await settle();
    await h.api.page("4242", [node("a", "40")]);
    expect(h.api.watches).toHaveLength(1);
    expect(h.api.watch.options).toEqual({ resourceVersion: "4242", bookmarks: true, timeoutSeconds: WATCH_TIMEOUT_S });
    expect(h.r.counters.watches).toBe(1);
  });

  it("a page that fails mid-list: the cache keeps what it had, the partial list is dropped, and the retry lists from the first page", async () => {
    const h = await watching([node("a", "90"), node("b", "95")], "100");
    await h.clock.advance(5000);
    await h.api.watch.end(GONE);
    expect(h.r.counters.relists).toBe(1);
    // The relist, in pages: the first answers, the second fails.
    await h.api.page("300", [node("x", "290")], "tok");
    await h.api.failList(E500);
    expect(names(h.r)).toEqual(["a", "b"]);
    expect(h.r.cache.resourceVersion).toBe("100");
    expect(h.changes).toEqual([["peers", undefined]]);
    expect(h.errors).toEqual([{ error: E500, during: "list", retryInMs: 500 }]);

    await h.clock.advance(500);
    expect(h.api.pendingList.page).toEqual({ limit: 500 });
  });

  it("a relist replaces the cache: Nodes gone from it are dropped, with onChange('peers', undefined) once more", async () => {
    const h = await watching([node("a", "90"), node("b", "95")], "100");
    await h.clock.advance(5000);
    await h.api.watch.push(errorEvent(410, "Expired"));
    await h.api.page("500", [node("b", "450"), node("c", "460")]);
    expect(names(h.r)).toEqual(["b", "c"]);
    expect(h.r.cache.resourceVersion).toBe("500");
    expect(h.r.counters.lists).toBe(2);
    expect(h.changes).toEqual([["peers", undefined], ["peers", undefined]]);
    expect(h.api.watch.options.resourceVersion).toBe("500");
  });
});

describe("NodeReflector: states", () => {
  it("goes starting → listing → connecting → watching (on open), in sync only once watching", async () => {
    const h = harness();
    expect(h.r.state).toBe("starting");
    expect(h.r.stateSince).toBe(T0);
    expect(h.r.inSync).toBe(false);

    await h.clock.advance(10);
    h.r.start();
    await settle();
    expect(h.r.state).toBe("listing");
    expect(h.r.stateSince).toBe(T0 + 10);
    expect(h.r.inSync).toBe(false);

    await h.clock.advance(20);
    await h.api.page("100", [node("a", "90")]);
    expect(h.r.state).toBe("connecting");
    expect(h.r.stateSince).toBe(T0 + 30);
    expect(h.r.inSync).toBe(false);
    expect(h.r.outOfSyncSince).toBeUndefined();

    await h.clock.advance(40);
    await h.api.watch.open();
    expect(h.r.state).toBe("watching");
    expect(h.r.stateSince).toBe(T0 + 70);
    expect(h.r.inSync).toBe(true);
    expect(h.r.outOfSyncSince).toBeUndefined();
  });

  it("an event proves the stream open too, for a client that does not report the open", async () => {
    const h = harness();
    h.r.start();
    await settle();
    await h.api.page("100", []);
    expect(h.r.state).toBe("connecting");
    await h.api.watch.push(bookmark("101"));
    expect(h.r.state).toBe("watching");
    expect(h.r.inSync).toBe(true);
  });

  it("start() twice runs one loop", async () => {
    const h = harness();
    h.r.start();
    h.r.start();
    await settle();
    expect(h.api.lists).toHaveLength(1);
  });
});

describe("NodeReflector: watch events", () => {
  it("applies events in order, telling onChange 'peers' or 'other' with the Node's name; no call for what changes nothing", async () => {
    const h = await watching([node("a", "90"), node("b", "95")], "100");
    h.changes.length = 0;
    await h.clock.advance(7);
    await h.api.watch.push(
      added(node("c", "101", { podCIDR: "10.244.3.0/24" })),
      modified(node("c", "102", { podCIDR: "10.244.3.0/24", ready: "False" })), // status only: other
      modified(node("a", "103", { podCIDR: "10.244.9.0/24" })), // the pod CIDR: peers
      deleted(node("b", "104")),
      deleted(node("zz", "105")), // never seen: nothing changes
      bookmark("106"),
    );
    expect(h.changes).toEqual([["peers", "c"], ["other", "c"], ["peers", "a"], ["peers", "b"]]);
    expect(names(h.r)).toEqual(["a", "c"]);
    expect(h.r.cache.get("c")?.networkUnavailable).toBeUndefined();
    expect(h.r.cache.get("a")?.resourceVersion).toBe("103");
    expect(h.r.cache.resourceVersion).toBe("106");
    expect(h.r.counters.events).toEqual({ ADDED: 1, MODIFIED: 2, DELETED: 2, BOOKMARK: 1, ERROR: 0 });
    expect(h.r.lastEventAt).toBe(T0 + 7);
  });

  it("order matters: an ADDED then DELETED of one Node leaves it gone, a DELETED then ADDED leaves it there", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.api.watch.push(added(node("x", "101")), deleted(node("x", "102")), deleted(node("a", "103")), added(node("a", "104", { podCIDR: "10.244.4.0/24" })));
    expect(names(h.r)).toEqual(["a"]);
    expect(h.r.cache.get("a")?.resourceVersion).toBe("104");
    expect(h.r.cache.resourceVersion).toBe("104");
  });

  it("bookmarks move the resourceVersion without an onChange, and a lived watch the server closes is resumed from there at once (no timer, no list)", async () => {
    const h = await watching([node("a", "90")], "100");
    h.changes.length = 0;
    await h.api.watch.push(bookmark("250"));
    expect(h.r.cache.resourceVersion).toBe("250");
    expect(h.changes).toEqual([]);
    expect(h.r.counters.events.BOOKMARK).toBe(1);

    await h.clock.advance(1000);
    await h.api.watch.end();
    expect(h.api.watches).toHaveLength(2);
    expect(h.api.watch.options).toEqual({ resourceVersion: "250", bookmarks: true, timeoutSeconds: WATCH_TIMEOUT_S });
    expect(h.clock.pending).toBe(0);
    expect(h.api.lists).toHaveLength(1);
    expect(h.r.counters.lists).toBe(1);
    expect(h.r.counters.watches).toBe(2);
    expect(h.errors).toEqual([]);
    expect(h.r.counters.errors).toEqual({});
    expect(h.r.state).toBe("connecting");
    // Lost, for the moment between the two watches.
    expect(h.r.outOfSyncSince).toBe(T0 + 1000);
    await h.api.watch.open();
    expect(h.r.inSync).toBe(true);
    expect(h.r.outOfSyncSince).toBeUndefined();
  });

  it("a watch closed at once that brought an event is resumed at once too", async () => {
    const h = await watching([], "100");
    await h.clock.advance(10);
    await h.api.watch.push(added(node("a", "101")));
    await h.api.watch.end();
    expect(h.api.watches).toHaveLength(2);
    expect(h.api.watch.options.resourceVersion).toBe("101");
    expect(h.clock.pending).toBe(0);
    expect(h.errors).toEqual([]);
  });

  it("a watch the server closes at once, without an event, is an error: onError and the backoff, then a watch (not a list) from the same resourceVersion", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(999);
    await h.api.watch.end();
    expect(h.errors).toHaveLength(1);
    expect(h.errors[0]).toMatchObject({ during: "watch", retryInMs: 500, error: { status: undefined, reason: "WatchClosed" } });
    expect(h.r.counters.errors).toEqual({ none: 1 });
    expect(h.r.lastError).toMatchObject({ during: "watch", at: T0 + 999, error: { reason: "WatchClosed" } });
    expect(h.r.state).toBe("retrying");
    expect(h.clock.pendingIn).toEqual([500]);
    expect(h.api.watches).toHaveLength(1);

    await h.clock.advance(499);
    expect(h.api.watches).toHaveLength(1);
    await h.clock.advance(1);
    expect(h.api.watches).toHaveLength(2);
    expect(h.api.watch.options.resourceVersion).toBe("100");
    expect(h.api.lists).toHaveLength(1);

    // Again at once: the wait doubles.
    await h.api.watch.open();
    await h.api.watch.end();
    expect(h.errors.map((e) => e.retryInMs)).toEqual([500, 1000]);
  });

  it("events after an ERROR on the same stream are not applied", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(5000);
    const first = h.api.watch;
    // The stream keeps talking after the ERROR (the reflector has already asked it to stop).
    await first.push(errorEvent(410, "Expired"), added(node("late", "300")));
    expect(first.stops).toBeGreaterThanOrEqual(1);
    expect(h.r.cache.get("late")).toBeUndefined();
    expect(h.r.counters.events).toMatchObject({ ERROR: 1, ADDED: 0 });
  });
});

describe("NodeReflector: 410 Gone", () => {
  it("an ERROR event with status 410 stops the watch and lists again at once (relists), and the events after it are seen", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(5000);
    const first = h.api.watch;
    await first.push(errorEvent(410, "Expired"));
    expect(first.stops).toBe(1);
    expect(h.r.counters.relists).toBe(1);
    expect(h.r.counters.events.ERROR).toBe(1);
    expect(h.errors).toEqual([]);
    expect(h.clock.pending).toBe(0);
    expect(h.r.state).toBe("listing");
    expect(h.r.outOfSyncSince).toBe(T0 + 5000);
    // The cache stays as it was until the new list is complete.
    expect(names(h.r)).toEqual(["a"]);

    await h.api.page("700", [node("a", "650"), node("b", "660")]);
    expect(h.r.counters.lists).toBe(2);
    expect(h.api.watches).toHaveLength(2);
    expect(h.api.watch.options.resourceVersion).toBe("700");
    await h.api.watch.open();
    expect(h.r.inSync).toBe(true);
    h.changes.length = 0;
    await h.api.watch.push(added(node("c", "701", { podCIDR: "10.244.3.0/24" })));
    expect(h.changes).toEqual([["peers", "c"]]);
    expect(names(h.r)).toEqual(["a", "b", "c"]);
  });

  it("a watch that ends with HTTP 410 lists again at once", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(2000);
    await h.api.watch.end(GONE);
    expect(h.r.counters.relists).toBe(1);
    expect(h.api.lists).toHaveLength(2);
    expect(h.api.hasPendingList).toBe(true);
    expect(h.clock.pending).toBe(0);
    expect(h.errors).toEqual([]);
    expect(h.r.counters.errors).toEqual({});
    await h.api.page("800", []);
    expect(h.r.counters.lists).toBe(2);
    expect(h.api.watch.options.resourceVersion).toBe("800");
  });

  it("a 410 right after a fresh list waits a backoff before the relist, growing if it repeats (no tight loop)", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.api.watch.push(errorEvent(410, "Expired"));
    expect(h.r.counters.relists).toBe(1);
    expect(h.api.lists).toHaveLength(1);
    expect(h.clock.pendingIn).toEqual([500]);
    // Stale beats empty meanwhile.
    expect(names(h.r)).toEqual(["a"]);
    await h.clock.advance(499);
    expect(h.api.lists).toHaveLength(1);
    await h.clock.advance(1);
    expect(h.api.lists).toHaveLength(2);

    // The same again, this time as the watch's HTTP answer (before it opened).
    await h.api.page("100", [node("a", "90")]);
    await h.api.watch.end(GONE);
    expect(h.r.counters.relists).toBe(2);
    expect(h.clock.pendingIn).toEqual([1000]);
    await h.clock.advance(999);
    expect(h.api.lists).toHaveLength(2);
    await h.clock.advance(1);
    expect(h.api.lists).toHaveLength(3);
  });

  it("while waiting out the backoff before a relist after a quick 410, the reflector does not claim to be in sync", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.api.watch.push(errorEvent(410, "Expired"));
    expect(h.clock.pendingIn).toEqual([500]);
    expect(h.r.inSync).toBe(false);
  });
});

describe("NodeReflector: errors and the backoff", () => {
  it("list errors: onError(error, 'list', 500 × 2^attempt), counters.errors by status ('none' without one), lastError; then the list again", async () => {
    const h = harness();
    h.r.start();
    await settle();
    await h.api.failList(E500);
    expect(h.errors).toEqual([{ error: E500, during: "list", retryInMs: 500 }]);
    expect(h.r.counters.errors).toEqual({ 500: 1 });
    expect(h.r.lastError).toEqual({ error: E500, during: "list", at: T0 });
    expect(h.r.state).toBe("retrying");
    expect(h.r.stateSince).toBe(T0);
    expect(h.r.counters.lists).toBe(0);
    expect(h.api.watches).toHaveLength(0);
    // Never watched: nothing was lost.
    expect(h.r.outOfSyncSince).toBeUndefined();

    await h.clock.advance(499);
    expect(h.api.lists).toHaveLength(1);
    await h.clock.advance(1);
    expect(h.api.lists).toHaveLength(2);
    expect(h.r.state).toBe("listing");

    await h.api.failList(RESET);
    expect(h.errors[1]).toEqual({ error: RESET, during: "list", retryInMs: 1000 });
    await h.clock.advance(1000);
    await h.api.failList(E403);
    expect(h.errors[2]).toEqual({ error: E403, during: "list", retryInMs: 2000 });
    await h.clock.advance(2000);
    await h.api.failList(E500);
    expect(h.errors.map((e) => e.retryInMs)).toEqual([500, 1000, 2000, 4000]);
    expect(h.r.counters.errors).toEqual({ 500: 2, none: 1, 403: 1 });
    expect(h.r.lastError).toEqual({ error: E500, during: "list", at: T0 + 3500 });
    expect(h.changes).toEqual([]);

    await h.clock.advance(4000);
    await h.api.page("100", [node("a", "90")]);
    expect(h.r.counters.lists).toBe(1);
    expect(h.changes).toEqual([["peers", undefined]]);
    expect(h.api.watch.options.resourceVersion).toBe("100");
  });

  it("a watch error: onError(error, 'watch', backoff), the cache keeps its Nodes, outOfSyncSince is when the watch was lost; then a watch from the last resourceVersion", async () => {
    const h = await watching([node("a", "90"), node("b", "95")], "100");
    await h.api.watch.push(bookmark("150"));
    await h.clock.advance(60_000);
    await h.api.watch.end(RESET);
    const lost = T0 + 60_000;
    expect(h.errors).toEqual([{ error: RESET, during: "watch", retryInMs: 500 }]);
    expect(h.r.counters.errors).toEqual({ none: 1 });
    expect(h.r.lastError).toEqual({ error: RESET, during: "watch", at: lost });
    expect(h.r.state).toBe("retrying");
    expect(h.r.inSync).toBe(false);
    expect(h.r.outOfSyncSince).toBe(lost);
    expect(names(h.r)).toEqual(["a", "b"]);

    await h.clock.advance(500);
    expect(h.api.lists).toHaveLength(1);
    expect(h.api.watches).toHaveLength(2);
    expect(h.api.watch.options.resourceVersion).toBe("150");
    expect(h.r.state).toBe("connecting");
    // Still lost since then, while connecting again.
    expect(h.r.outOfSyncSince).toBe(lost);

    // The second try fails too, at once: the wait doubles, the outage still dates from the first loss.
    await h.api.watch.end(E500);
    expect(h.errors[1]).toEqual({ error: E500, during: "watch", retryInMs: 1000 });
    expect(h.r.counters.errors).toEqual({ none: 1, 500: 1 });
    expect(h.r.outOfSyncSince).toBe(lost);
    expect(names(h.r)).toEqual(["a", "b"]);

    await h.clock.advance(1000);
    await h.api.watch.open();
    expect(h.r.inSync).toBe(true);
    expect(h.r.outOfSyncSince).toBeUndefined();
    expect(h.changes).toEqual([["peers", undefined]]);
  });

  it("an ERROR event other than 410 is a watch error with its status", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(3000);
    const first = h.api.watch;
    await first.push(errorEvent(500, "InternalError"));
    expect(first.stops).toBe(1);
    expect(h.errors).toEqual([{ error: { status: 500, reason: "InternalError", message: "InternalError (500)" }, during: "watch", retryInMs: 500 }]);
    expect(h.r.counters.errors).toEqual({ 500: 1 });
    expect(h.r.counters.relists).toBe(0);
    expect(h.r.state).toBe("retrying");
    await h.clock.advance(500);
    expect(h.api.lists).toHaveLength(1);
    expect(h.api.watches).toHaveLength(2);
  });

  it("the backoff keeps growing across list errors, a list and a watch that fails at once; a watch that lived ≥ 1 s starts it again at 500", async () => {
    const h = harness();
    h.r.start();
    await settle();
    await h.api.failList(E500); // 500
    await h.clock.advance(500);
    await h.api.failList(E500); // 1000
    await h.clock.advance(1000);
    await h.api.page("100", [node("a", "90")]);
    await h.api.watch.end(RESET); // at once: 2000
    await h.clock.advance(2000);
    await h.api.watch.open();
    await h.clock.advance(999);
    await h.api.watch.end(RESET); // 999 ms: still at once, 4000
    await h.clock.advance(4000);
    await h.api.watch.open();
    await h.clock.advance(1000);
    await h.api.watch.end(RESET); // lived 1 s: 500 again
    await h.clock.advance(500);
    await h.api.watch.end(E500); // at once: 1000
    expect(h.errors.map((e) => [e.during, e.retryInMs])).toEqual([
      ["list", 500], ["list", 1000], ["watch", 2000], ["watch", 4000], ["watch", 500], ["watch", 1000],
    ]);
  });

  it("the backoff is capped at 30 s", async () => {
    const h = harness();
    h.r.start();
    await settle();
    for (let i = 0; i < 9; i++) {
      await h.api.failList(RESET);
      await h.clock.advance(h.errors[h.errors.length - 1]?.retryInMs ?? 0);
    }
    expect(h.errors.map((e) => e.retryInMs)).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(h.r.counters.errors).toEqual({ none: 9 });
  });

  it("a watch answered at once, again and again, by an ERROR event backs off 500, 1000, 2000 ms", async () => {
    const h = await watching([node("a", "90")], "100");
    for (let i = 0; i < 3; i++) {
      await h.api.watch.push(errorEvent(500, "InternalError"));
      await h.clock.advance(h.errors[h.errors.length - 1]?.retryInMs ?? 0);
      await h.api.watch.open();
    }
    expect(h.errors.map((e) => e.retryInMs)).toEqual([500, 1000, 2000]);
  });
});

describe("NodeReflector: stop()", () => {
  it("during a backoff wait: returns at once, cancels the timer, nothing happens after it", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(2000);
    await h.api.watch.end(RESET);
    expect(h.r.state).toBe("retrying");
    expect(h.clock.pending).toBe(1);
    const changes = h.changes.length;
    const errors = h.errors.length;

    expect(await settledNow(h.r.stop())).toBe(true);
    expect(h.r.state).toBe("stopped");
    expect(h.clock.pending).toBe(0);
    await h.clock.advance(60_000);
    expect(h.api.watches).toHaveLength(1);
    expect(h.api.lists).toHaveLength(1);
    expect(h.changes).toHaveLength(changes);
    expect(h.errors).toHaveLength(errors);
    expect(h.r.inSync).toBe(false);
    expect(names(h.r)).toEqual(["a"]);
  });

  it("during the backoff wait before a relist after a quick 410: returns at once, no list", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.api.watch.push(errorEvent(410, "Expired"));
    expect(h.clock.pending).toBe(1);
    expect(await settledNow(h.r.stop())).toBe(true);
    expect(h.r.state).toBe("stopped");
    await h.clock.advance(60_000);
    expect(h.api.lists).toHaveLength(1);
  });

  it("during an open watch: stops the watch handle, returns at once, no new watch, no timer, nothing after it", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(100);
    const w = h.api.watch;
    const changes = h.changes.length;

    expect(await settledNow(h.r.stop())).toBe(true);
    expect(w.stops).toBe(1);
    expect(h.r.state).toBe("stopped");
    expect(h.r.inSync).toBe(false);
    expect(h.api.watches).toHaveLength(1);
    expect(h.clock.pending).toBe(0);
    await h.clock.advance(60_000);
    expect(h.api.watches).toHaveLength(1);
    expect(h.api.lists).toHaveLength(1);
    expect(h.changes).toHaveLength(changes);
    expect(h.errors).toEqual([]);
    expect(h.r.counters.errors).toEqual({});
  });

  it("during a watch not yet open (connecting): stops its handle too", async () => {
    const h = harness();
    h.r.start();
    await settle();
    await h.api.page("100", []);
    expect(h.r.state).toBe("connecting");
    expect(await settledNow(h.r.stop())).toBe(true);
    expect(h.api.watch.stops).toBe(1);
    expect(h.r.state).toBe("stopped");
    expect(h.errors).toEqual([]);
  });

  it("during a list page in flight: once the page settles (api.close() aborts it), stop() returns; the failure is not reported, nothing is retried", async () => {
    const h = await watching([node("a", "90")], "100");
    await h.clock.advance(5000);
    await h.api.watch.end(GONE);
    // The relist's first page answered, the second in flight.
    await h.api.page("300", [node("x", "290")], "tok");
    expect(h.api.hasPendingList).toBe(true);
    const changes = h.changes.length;

    const stopping = h.r.stop();
    await h.api.failList(RESET);
    expect(await settledNow(stopping)).toBe(true);
    expect(h.r.state).toBe("stopped");
    expect(h.errors).toEqual([]);
    expect(h.r.counters.errors).toEqual({});
    expect(h.clock.pending).toBe(0);
    await h.clock.advance(60_000);
    expect(h.api.lists).toHaveLength(3);
    expect(h.api.watches).toHaveLength(1);
    expect(h.changes).toHaveLength(changes);
    expect(names(h.r)).toEqual(["a"]);
  });

  it("during a list page in flight that then answers: the list is not applied, no onChange, no watch", async () => {
    const h = harness();
    h.r.start();
    await settle();
    const stopping = h.r.stop();
    await h.api.page("100", [node("a", "90")]);
    expect(await settledNow(stopping)).toBe(true);
    expect(h.r.state).toBe("stopped");
    expect(h.r.cache.size).toBe(0);
    expect(h.r.counters.lists).toBe(0);
    expect(h.changes).toEqual([]);
    expect(h.api.watches).toHaveLength(0);
    expect(h.api.lists).toHaveLength(1);
  });

  it("before start(): stopped, and a start() after it does nothing", async () => {
    const h = harness();
    expect(await settledNow(h.r.stop())).toBe(true);
    expect(h.r.state).toBe("stopped");
    h.r.start();
    await settle();
    expect(h.api.lists).toHaveLength(0);
  });
});
