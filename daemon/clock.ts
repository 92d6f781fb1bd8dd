// The time and the timers a control loop uses, passed in so a test can drive them by hand.

export interface Clock {
  /** Wall-clock milliseconds (Date.now's scale: lease stamps travel between nodes). */
  now(): number;
  /** Calls `fn` once after `ms`; the returned function cancels it (harmless after it ran). */
  after(ms: number, fn: () => void): () => void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  after: (ms, fn) => {
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  },
};
