// The queue of gossip updates waiting to be piggybacked or gossiped. Each update is sent a
// limited number of times (the limit is computed when sending, from the current cluster
// size); the least-sent updates go first, the newest first among equals; a newer update about
// a member replaces whatever was queued about it (memberlist's TransmitLimitedQueue).

import type { GossipMsg } from "./types";
import { messageSize } from "./wire";

/**
 * What an update is about (a member): the queue keeps its pending update there, so replacing
 * it costs no lookup.
 */
export interface BroadcastSlot {
  queued: object | null;
}

interface Item {
  readonly slot: BroadcastSlot;
  readonly msg: GossipMsg;
  readonly size: number;
  transmits: number;
  done: boolean;
  readonly onDone: (() => void) | undefined;
}

export class BroadcastQueue {
  private count = 0;
  /** Bytes (sizes plus overheads) of what the last take() returned. */
  lastTakeBytes = 0;
  /** buckets[t] holds the items sent t times, oldest first. */
  private readonly buckets: Item[][] = [];
  private smallest = Infinity;

  get size(): number {
    return this.count;
  }

  /** Queues `msg` about `slot`'s member, replacing an older update about the same member. */
  enqueue(slot: BroadcastSlot, msg: GossipMsg, onDone?: () => void): void {
    const old = slot.queued as Item | null;
    if (old !== null) this.finish(old);
    const item: Item = { slot, msg, size: messageSize(msg), transmits: 0, done: false, onDone };
    slot.queued = item;
    this.count++;
    this.bucket(0).push(item);
    if (item.size < this.smallest) this.smallest = item.size;
  }

  /**
   * Takes updates that fit in `space` bytes, each costing its size plus `overhead`, at most
   * `maxCount` of them, counting one transmission each; an update reaching `limit`
   * transmissions leaves the queue. Updates in `already` (the datagram holds them) are skipped.
   */
  take(space: number, overhead: number, maxCount: number, limit: number, already?: readonly object[]): GossipMsg[] {
    const out: GossipMsg[] = [];
    this.lastTakeBytes = 0;
    if (this.count === 0 || maxCount <= 0) return out;
    const space0 = space;
    const moved: Item[] = [];
    for (let t = 0; t < this.buckets.length; t++) {
      if (space < this.smallest + overhead || out.length >= maxCount) break;
      const b = this.buckets[t] as Item[];
      if (b.length === 0) continue;
      const takenBefore = moved.length;
      let sawDone = false;
      for (let i = b.length - 1; i >= 0; i--) {
        const item = b[i] as Item;
        if (item.done) {
          sawDone = true;
          continue;
        }
        const cost = item.size + overhead;
        if (cost > space || (already !== undefined && already.includes(item.msg))) continue;
        space -= cost;
        out.push(item.msg);
        item.transmits++;
        moved.push(item);
        if (out.length >= maxCount || space < this.smallest + overhead) break;
      }
      if (moved.length > takenBefore || sawDone) {
        // Keep what stays at this level, in order; taken items moved up one level.
        let w = 0;
        for (let i = 0; i < b.length; i++) {
          const item = b[i] as Item;
          if (item.done || item.transmits !== t) continue;
          b[w++] = item;
        }
        b.length = w;
      }
    }
    for (const item of moved) {
      if (item.transmits >= limit) this.finish(item);
      else this.bucket(item.transmits).push(item);
    }
    if (this.count === 0) {
      this.smallest = Infinity;
      for (const b of this.buckets) b.length = 0;
    }
    this.lastTakeBytes = space0 - space;
    return out;
  }

  private finish(item: Item): void {
    if (item.done) return;
    item.done = true;
    this.count--;
    if (item.slot.queued === item) item.slot.queued = null;
    item.onDone?.();
  }

  private bucket(t: number): Item[] {
    while (this.buckets.length <= t) this.buckets.push([]);
    return this.buckets[t] as Item[];
  }
}
