// How long the forwarder busy-polls after a wake-up that found traffic. Sparse traffic (a
// request now and then) gets the whole --busy-poll window, so that the next request finds the
// forwarder awake instead of paying a wake-up at every hop. A burst gets at most BURST_SPIN_US:
// its frames come soon anyway, and spinning through a long pause in a burst (its sender was
// descheduled) takes CPU from the very threads the next frames wait for. In the bench, a
// 2 ms window without this cap cost one TCP stream a fifth of its throughput.

/** The longest busy-poll during a burst, µs. */
export const BURST_SPIN_US = 50;
/** A burst: more than this many wake-ups with traffic within BURST_PERIOD_MS. */
export const BURST_WAKES = 8;
export const BURST_PERIOD_MS = 1;

export class SpinPolicy {
  /** Times (ms) of the last BURST_WAKES wake-ups with traffic, a ring; -Infinity where none yet. */
  private readonly stamps = new Float64Array(BURST_WAKES).fill(-Infinity);
  private next = 0;

  /** windowUs: the --busy-poll window, 0 to never busy-poll. */
  constructor(private readonly windowUs: number) {}

  /** Records a wake-up with traffic at nowMs; returns how many µs to busy-poll before sleeping. */
  afterTraffic(nowMs: number): number {
    const wakesAgo = this.stamps[this.next] as number;
    this.stamps[this.next] = nowMs;
    this.next = (this.next + 1) % BURST_WAKES;
    const burst = nowMs - wakesAgo < BURST_PERIOD_MS;
    return burst ? Math.min(this.windowUs, BURST_SPIN_US) : this.windowUs;
  }
}
