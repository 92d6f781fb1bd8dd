// Retry delays after API errors, as client-go's reflector backs off: doubling from a short first
// wait to a cap, with jitter so a restarted API server is not met by every node at once.

export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 30_000;

/** The wait before retry number `attempt` (0 = the first retry); `random` in [0, 1). */
export function backoffMs(attempt: number, random: number): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(attempt, 16));
  // ±20 %: spread, without ever waiting much longer than the cap.
  return Math.round(base * (0.8 + 0.4 * random));
}
