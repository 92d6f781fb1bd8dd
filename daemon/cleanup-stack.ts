// Undo steps in the order that makes sense for tearing down: whatever was made last goes first.
// Used by the daemon's start (and stop) and by the data plane's start (and stop).

import type { Logger } from "./log";

export type CleanupStep = () => Promise<void> | void;

export class CleanupStack {
  private readonly steps: CleanupStep[] = [];

  constructor(private readonly log: Pick<Logger, "warn">) {}

  /** Registers the undo of something just made. */
  push(step: CleanupStep): void {
    this.steps.push(step);
  }

  /**
   * Runs every registered step, last pushed first, each once: a failing step is logged and
   * the rest still run. Steps pushed while unwinding wait for the next call.
   */
  async unwind(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch (err) {
        this.log.warn({ err }, "cleanup step failed");
      }
    }
  }
}
