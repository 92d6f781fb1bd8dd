// Keeps a NodeCache in step with the API server, as client-go's reflector does: list (in pages),
// then watch from the list's resourceVersion with bookmarks; a watch the server ends is resumed
// from the last resourceVersion seen; 410 Gone (the server no longer has that history) means a
// fresh list; any other error waits (backoff with jitter) and resumes. Between attempts the cache
// keeps what it last had: stale beats empty. I/O only through the KubeApi seam; time and chance
// come in, so test/kube-reflector.test.ts drives every branch by hand.

import type { KubeApi, KubeError, WatchEvent, WatchHandle } from "./api";
import { backoffMs } from "./backoff";
import { NodeCache, type CacheChange } from "./node-cache";

/** The timers a loop uses (daemon/clock.ts's Clock is one). */
export interface Timers {
  now(): number;
  after(ms: number, fn: () => void): () => void;
}

/** A watch the server closes sooner than this, without an event, counts as a failure (backoff). */
const MIN_WATCH_MS = 1000;

/** connecting: a watch was asked for and the server has not answered yet. */
export type SyncState = "starting" | "listing" | "connecting" | "watching" | "retrying" | "stopped";

export interface ReflectorOptions {
  timers: Timers;
  /** [0, 1): the jitter's source. */
  random(): number;
  /** Nodes per list page. */
  pageSize: number;
  /** How long the server keeps one watch open (timeoutSeconds). */
  watchTimeoutSeconds: number;
  /** A Node changed (`name`), or a list replaced them all (undefined); `change` says whether peers may differ. */
  onChange(change: Exclude<CacheChange, "none">, name: string | undefined): void;
  /** A call failed; the loop retries after `retryInMs` (0: at once, with a fresh list). */
  onError(error: KubeError, during: "list" | "watch", retryInMs: number): void;
}

export interface ReflectorCounters {
  lists: number;
  /** Lists after 410 Gone. */
  relists: number;
  watches: number;
  events: Record<"ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR", number>;
  /** Failed calls by HTTP status ("none" when no answer came). */
  errors: Record<string, number>;
}

export class NodeReflector {
  readonly cache = new NodeCache();
  readonly counters: ReflectorCounters = {
    lists: 0, relists: 0, watches: 0, events: { ADDED: 0, MODIFIED: 0, DELETED: 0, BOOKMARK: 0, ERROR: 0 }, errors: {},
  };
  private stateNow: SyncState = "starting";
  private stateAt: number;
  /** Whether a complete list has been applied since the start. */
  private listed = false;
  private lastEvent: number | undefined;
  private lostAt: number | undefined;
  /** Failures since a watch last lived past MIN_WATCH_MS: the backoff's exponent. */
  private attempt = 0;
  private lastErr: { error: KubeError; during: "list" | "watch"; at: number } | undefined;
  private watch: WatchHandle | undefined;
  private cancelRetry: () => void = () => undefined;
  private wakeRetry: () => void = () => undefined;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly api: KubeApi, private readonly o: ReflectorOptions) {
    this.stateAt = o.timers.now();
  }

  get state(): SyncState {
    return this.stateNow;
  }

  /** Since when the loop is in its state (ms, the timers' clock). */
  get stateSince(): number {
    return this.stateAt;
  }

  /** When the last watch event (bookmarks included) arrived. */
  get lastEventAt(): number | undefined {
    return this.lastEvent;
  }

  get lastError(): { error: KubeError; during: "list" | "watch"; at: number } | undefined {
    return this.lastErr;
  }

  /** Since when the watch is lost (it had been open); undefined while in sync or before the first watch. */
  get outOfSyncSince(): number | undefined {
    return this.lostAt;
  }

  /** A complete list has been applied and the watch on it is open. */
  get inSync(): boolean {
    return this.listed && this.stateNow === "watching";
  }

  start(): void {
    this.running ??= this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelRetry();
    this.wakeRetry();
    this.watch?.stop();
    await this.running;
    this.setState("stopped");
  }

  private setState(s: SyncState): void {
    if (s === this.stateNow) return;
    const now = this.o.timers.now();
    if (s === "watching") this.lostAt = undefined;
    else if (this.stateNow === "watching") this.lostAt = now;
    this.stateNow = s;
    this.stateAt = now;
  }

  private async loop(): Promise<void> {
    let needList = true;
    while (!this.stopped) {
      if (needList) {
        const listed = await this.list();
        if (this.stopped) return;
        if (listed !== undefined) {
          await this.retryAfter(listed, "list");
          continue;
        }
        needList = false;
      }
      const opened = this.o.timers.now();
      const events = this.eventCount();
      let end = await this.watchOnce();
      if (this.stopped) return;
      // An ERROR that ends the watch is no sign of life: only other events count.
      const atOnce = this.o.timers.now() - opened < MIN_WATCH_MS && this.eventCount() === events;
      // A watch that lived: the next failure starts the backoff afresh, as client-go does after a healthy watch.
      if (!atOnce) this.attempt = 0;
      // A server that ends every watch at once would otherwise be asked again in a tight loop.
      if (end === "closed" && atOnce) end = { status: undefined, reason: "WatchClosed", message: "the server ended the watch at once, without an event" };
      if (end === "gone") {
        this.counters.relists++;
        needList = true;
        // 410 on a watch of a list just made: list again, but not in a tight loop.
        if (atOnce) {
          this.setState("retrying");
          await this.pause(backoffMs(this.attempt++, this.o.random()));
        }
      } else if (end !== "closed") {
        // The server is back after the wait: resume from where the cache stands (a 410 then lists).
        await this.retryAfter(end, "watch");
      }
    }
  }

  /** Every page of the list, then the cache replaced at once; the error instead, if a page fails. */
  private async list(): Promise<KubeError | undefined> {
    this.setState("listing");
    const items: unknown[] = [];
    let continueToken: string | undefined;
    let resourceVersion = "";
    do {
      const page = await this.api.listNodes({ limit: this.o.pageSize, ...(continueToken === undefined ? {} : { continueToken }) });
      if (this.stopped) return undefined;
      if (!page.ok) return page.error;
      items.push(...page.value.items);
      // The first page's version is the snapshot's; later pages belong to it.
      if (resourceVersion === "") resourceVersion = page.value.resourceVersion;
      continueToken = page.value.continueToken;
    } while (continueToken !== undefined);
    this.counters.lists++;
    this.cache.replace(items, resourceVersion);
    this.listed = true;
    this.o.onChange("peers", undefined);
    return undefined;
  }

  /** One watch until it ends: closed by the server, 410 Gone, or an error. */
  private async watchOnce(): Promise<"closed" | "gone" | KubeError> {
    this.setState("connecting");
    this.counters.watches++;
    let gone = false;
    let failed: KubeError | undefined;
    let handle: WatchHandle | undefined;
    handle = this.api.watchNodes(
      { resourceVersion: this.cache.resourceVersion, bookmarks: true, timeoutSeconds: this.o.watchTimeoutSeconds },
      (ev) => {
        if (gone || failed !== undefined || this.stopped) return;
        // An event proves the stream open too (a client that does not report the open).
        this.setState("watching");
        const r = this.onEvent(ev);
        if (r === "gone") gone = true;
        else if (r !== undefined) failed = r;
        if (r !== undefined) handle?.stop();
      },
      () => this.setState("watching"),
    );
    if (gone || failed !== undefined) handle.stop();
    this.watch = handle;
    const done = await handle.done;
    this.watch = undefined;
    if (gone) return "gone";
    if (failed !== undefined) return failed;
    if (!done.ok) return done.error.status === 410 ? "gone" : done.error;
    return "closed";
  }

  /** Watch events other than ERROR, since the start. */
  private eventCount(): number {
    const e = this.counters.events;
    return e.ADDED + e.MODIFIED + e.DELETED + e.BOOKMARK;
  }

  private onEvent(ev: WatchEvent): "gone" | KubeError | undefined {
    this.counters.events[ev.type]++;
    this.lastEvent = this.o.timers.now();
    if (ev.type === "ERROR") return ev.status.status === 410 ? "gone" : ev.status;
    const change = this.cache.apply(ev.type, ev.object);
    if (change !== "none") this.o.onChange(change, nameOf(ev.object));
    return undefined;
  }

  private async retryAfter(error: KubeError, during: "list" | "watch"): Promise<void> {
    const key = error.status === undefined ? "none" : String(error.status);
    this.counters.errors[key] = (this.counters.errors[key] ?? 0) + 1;
    this.lastErr = { error, during, at: this.o.timers.now() };
    const wait = backoffMs(this.attempt++, this.o.random());
    this.setState("retrying");
    this.o.onError(error, during, wait);
    await this.pause(wait);
  }

  /** Waits `ms` on the timers; stop() ends the wait at once. */
  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wakeRetry = resolve;
      this.cancelRetry = this.o.timers.after(ms, resolve);
    });
  }
}

function nameOf(o: unknown): string | undefined {
  const meta = (o as { metadata?: { name?: unknown } } | null)?.metadata;
  return typeof meta?.name === "string" ? meta.name : undefined;
}
