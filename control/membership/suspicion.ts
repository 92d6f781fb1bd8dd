// Lifeguard's suspicion timer as plain data: it starts at `max` and falls logarithmically
// toward `min` as independent members confirm the suspicion (memberlist's suspicion.go
// formula). No timers here: the owner compares `deadline` with the time it is given.

export class Suspicion {
  /** Confirmations counted so far (the first suspecter is not one). */
  n = 0;
  /** When the suspect should be declared dead unless refuted. */
  deadline: number;
  /** Seq of the last-chance probe sent when the timer ran out (0: none yet). */
  verifySeq = 0;
  private readonly confirmations = new Set<string>();

  /**
   * @param from the member whose suspicion started the timer; never counted as a confirmation
   * @param k confirmations wanted to reach `min` (0: the timer stays at `max`)
   */
  constructor(from: string, readonly k: number, readonly min: number, readonly max: number, readonly start: number) {
    this.confirmations.add(from);
    this.deadline = start + max;
  }

  /** Registers a confirmation; true if it was new (and so worth gossiping on). */
  confirm(from: string): boolean {
    if (this.n >= this.k) return false;
    if (this.confirmations.has(from)) return false;
    this.confirmations.add(from);
    this.n++;
    if (this.verifySeq === 0) this.deadline = this.start + remainingSuspicionTime(this.n, this.k, this.min, this.max);
    return true;
  }
}

/**
 * Total suspicion time after n of k wanted confirmations:
 * max − (log(n+1) / log(k+1)) × (max − min), floored to ms, never below min.
 */
export function remainingSuspicionTime(n: number, k: number, min: number, max: number): number {
  if (k <= 0) return max;
  const frac = Math.log(n + 1) / Math.log(k + 1);
  const raw = Math.floor(max - frac * (max - min));
  return raw < min ? min : raw;
}
