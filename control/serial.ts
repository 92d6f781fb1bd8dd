// The one promise serializer of the product: jobs that must not overlap run one after another,
// in the order they were queued, and a failed job does not stop the ones queued behind it.
// `Serial` is one queue (a netlink socket's requests, host plumbing's operations, iptables
// passes, the CNI bridge); `KeyedSerial` is one queue per key, created on first use and dropped
// once idle (the CNI handler's per-attachment lock).

/** One queue: `run` starts `fn` once every job queued before it has settled. */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const job = this.tail.then(fn);
    this.tail = job.catch(() => undefined);
    return job;
  }

  /** Resolves once every job queued so far has settled (never rejects). */
  idle(): Promise<void> {
    return this.tail.then(() => undefined);
  }
}

/** One queue per key; a key is present (see `busy`) while a job of its queue is queued or running. */
export class KeyedSerial {
  private readonly tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const job = (this.tails.get(key) ?? Promise.resolve()).then(fn);
    const tail = job.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await job;
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** The keys with a job queued or running. */
  busy(): string[] {
    return [...this.tails.keys()];
  }
}
