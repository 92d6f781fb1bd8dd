// Which traffic-counter slot each peer uses (counters.ts). A peer keeps its slot, by name, for
// as long as the process lives, so its counters survive it leaving and coming back (counters
// only ever grow, as Prometheus expects). Only when every slot is taken is the slot of a peer
// that is in no table the forwarder may still be using handed to a new one, zeroed first.
// Pure: the Forwarder calls it before sending a table.

import { PEER_SLOTS } from "./counters";

export interface SlotAssignment {
  /** Slot per peer, in the order given; 0 (the unreported sink) when none is free. */
  slots: number[];
  /** Slots that changed hands: zero them before the forwarder sees the new table. */
  reset: number[];
}

export class PeerSlots {
  private readonly byName = new Map<string, number>();
  private next = 1;

  constructor(private readonly capacity = PEER_SLOTS) {}

  /**
   * Slots for `names`; `inUse` are the names of every table the forwarder may still be using
   * (the applied one and any not yet acknowledged).
   */
  assign(names: readonly string[], inUse: ReadonlySet<string>): SlotAssignment {
    const slots: number[] = [];
    const reset: number[] = [];
    const wanted = new Set(names);
    for (const name of names) {
      let slot = this.byName.get(name);
      if (slot === undefined) {
        if (this.next < this.capacity) {
          slot = this.next++;
        } else {
          slot = this.reclaim(wanted, inUse);
          if (slot !== 0) reset.push(slot);
        }
        if (slot !== 0) this.byName.set(name, slot);
      }
      slots.push(slot);
    }
    return { slots, reset };
  }

  slotOf(name: string): number | undefined {
    return this.byName.get(name);
  }

  private reclaim(wanted: ReadonlySet<string>, inUse: ReadonlySet<string>): number {
    for (const [name, slot] of this.byName) {
      if (wanted.has(name) || inUse.has(name)) continue;
      this.byName.delete(name);
      return slot;
    }
    return 0;
  }
}
