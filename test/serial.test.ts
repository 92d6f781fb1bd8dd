// control/serial.ts: the one promise serializer (a queue, and a queue per key).

import { describe, expect, it } from "vitest";
import { KeyedSerial, Serial } from "../control/serial";

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe("Serial", () => {
  it("runs jobs one at a time in order, and a failure does not stop the ones behind it", async () => {
    const s = new Serial();
    const log: string[] = [];
    let running = 0;
    const job = (name: string, fail = false) => async (): Promise<string> => {
      running++;
      expect(running).toBe(1);
      log.push(`start ${name}`);
      await tick();
      log.push(`end ${name}`);
      running--;
      if (fail) throw new Error(name);
      return name;
    };
    const a = s.run(job("a"));
    const b = s.run(job("b", true));
    const c = s.run(job("c"));
    await expect(a).resolves.toBe("a");
    await expect(b).rejects.toThrow("b");
    await expect(c).resolves.toBe("c");
    expect(log).toEqual(["start a", "end a", "start b", "end b", "start c", "end c"]);
  });

  it("idle() waits for everything queued so far and never rejects", async () => {
    const s = new Serial();
    let done = false;
    void s.run(async () => {
      await tick();
      done = true;
      throw new Error("x");
    }).catch(() => undefined);
    await s.idle();
    expect(done).toBe(true);
  });

  it("a job that throws synchronously rejects its own promise only", async () => {
    const s = new Serial();
    await expect(s.run(() => { throw new Error("sync"); })).rejects.toThrow("sync");
    await expect(s.run(async () => 1)).resolves.toBe(1);
  });
});

describe("KeyedSerial", () => {
  it("serializes per key, runs different keys concurrently, and forgets idle keys", async () => {
    const k = new KeyedSerial();
    const log: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const a1 = k.run("a", async () => { log.push("a1 start"); await gate; log.push("a1 end"); });
    const a2 = k.run("a", async () => { log.push("a2"); });
    const b1 = k.run("b", async () => { log.push("b1"); });
    await b1;
    expect(log).toEqual(["a1 start", "b1"]);
    expect(k.busy().sort()).toEqual(["a"]);
    release();
    await Promise.all([a1, a2]);
    expect(log).toEqual(["a1 start", "b1", "a1 end", "a2"]);
    expect(k.busy()).toEqual([]);
  });

  it("a failed job releases its key", async () => {
    const k = new KeyedSerial();
    await expect(k.run("x", async () => { throw new Error("boom"); })).rejects.toThrow("boom");
    expect(k.busy()).toEqual([]);
    await expect(k.run("x", async () => 2)).resolves.toBe(2);
  });
});
