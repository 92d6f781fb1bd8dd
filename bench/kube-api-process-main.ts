// The child side of bench/kube-api-process.ts: runs a KubeApiDouble (inside a lab namespace, by
// `ip netns exec`) and serves its test controls over the Node IPC channel the parent opened.
// Messages: {id, op, args} in, {id, ok, value} or {id, ok: false, error} out; the first is
// {op: "init", args: [options]}, answered once the double listens. It exits when the parent goes
// (the channel closes), so a crashed test run cannot leave it behind.

import { KubeApiDouble, type KubeApiDoubleOptions } from "./kube-api-double";

interface Request {
  readonly id: number;
  readonly op: string;
  readonly args: readonly unknown[];
}

let double: KubeApiDouble | undefined;

function isRequest(m: unknown): m is Request {
  return typeof m === "object" && m !== null && typeof (m as Request).id === "number" && typeof (m as Request).op === "string"
    && Array.isArray((m as Request).args);
}

/** Every control the parent may call, by name; arguments arrive as JSON values. */
function control(d: KubeApiDouble, op: string, args: readonly unknown[]): unknown {
  const a0 = args[0];
  const a1 = args[1];
  switch (op) {
    case "upsertNode": return d.upsertNode(a0 as object);
    case "deleteNode": return d.deleteNode(String(a0));
    case "node": return d.node(String(a0)) ?? null;
    case "nodes": return d.nodes();
    case "resourceVersion": return d.resourceVersion;
    case "compact": return d.compact();
    case "expireWatches": return d.expireWatches();
    case "dropWatches": return d.dropWatches();
    case "openWatches": return d.openWatches;
    case "stop": return d.stop({ graceful: a0 === true });
    case "start": return d.start();
    case "setToken": return d.setToken(String(a0), a1 as Parameters<KubeApiDouble["setToken"]>[1]);
    case "revokeToken": return d.revokeToken(String(a0));
    case "setCertGrant": return d.setCertGrant(String(a0), a1 as Parameters<KubeApiDouble["setCertGrant"]>[1]);
    case "setGoneAsHttpStatus": d.goneAsHttpStatus = a0 === true; return undefined;
    case "requests": return d.requests;
    case "clearRequests": return d.clearRequests();
    case "counts": return d.counts(String(a0));
    case "allCounts": return d.allCounts();
    default: throw new Error(`unknown control "${op}"`);
  }
}

async function onMessage(m: unknown): Promise<void> {
  if (!isRequest(m)) return;
  try {
    let value: unknown;
    if (m.op === "init") {
      if (double !== undefined) throw new Error("already initialised");
      double = await KubeApiDouble.start(m.args[0] as KubeApiDoubleOptions);
      value = { url: double.url, port: double.port };
    } else {
      if (double === undefined) throw new Error("not initialised");
      value = await control(double, m.op, m.args);
    }
    process.send?.({ id: m.id, ok: true, value: value ?? null });
  } catch (e) {
    process.send?.({ id: m.id, ok: false, error: e instanceof Error ? e.message : String(e) });
  }
}

if (process.send === undefined) {
  process.stderr.write("kube-api-process-main: no IPC channel (start it through bench/kube-api-process.ts)\n");
  process.exit(2);
}
process.on("message", (m: unknown) => void onMessage(m));
process.on("disconnect", () => {
  void (double?.stop() ?? Promise.resolve()).finally(() => process.exit(0));
});
process.on("SIGTERM", () => {
  void (double?.stop() ?? Promise.resolve()).finally(() => process.exit(0));
});
