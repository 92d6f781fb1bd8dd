import { describe, expect, it } from "vitest";
import { CleanupStack } from "../daemon/cleanup-stack";

describe("cleanup stack", () => {
  it("undoes last made first, runs each step once, and a failing step does not stop the rest", async () => {
    const ran: string[] = [];
    const warned: unknown[] = [];
    const stack = new CleanupStack({ warn: (obj: unknown) => { warned.push(obj); } });
    stack.push(() => { ran.push("tap"); });
    stack.push(async () => { ran.push("routes"); throw new Error("EBUSY"); });
    stack.push(async () => { await new Promise((r) => setTimeout(r, 5)); ran.push("socket"); });
    await stack.unwind();
    expect(ran).toEqual(["socket", "routes", "tap"]);
    expect(warned).toHaveLength(1);
    await stack.unwind();
    expect(ran).toHaveLength(3);
  });
});
