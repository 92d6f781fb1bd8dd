// Test and measurement harness: serves the CNI handler on a daemon-style control socket
// (<run-dir>/vxmesh.sock, the same listenControl and protocol the daemon uses), the way the
// daemon will once it is wired (cni/README.md, "Wiring"). Not a product command: the daemon
// itself serves op "cni" next to "status".
//
//   node dist/bench/cni-harness.js --run-dir DIR --state-dir DIR [--subnet 10.244.1.0/24|none]
//                            [--mtu 1450] [--bridge vxmesh-br]
//
// Run it inside the node's network namespace. Prints "ready" on stdout once it serves; SIGTERM
// or SIGINT stops it (the bridge and the pods' veths stay, as they do when the daemon stops).

import { closeControl, listenControl } from "../daemon/control-socket";
import { createLogger } from "../daemon/log";
import { parseSubnet, type Subnet } from "../encap/types";
import { createCniHandler, isCniRequest } from "../cni/handler";

function flag(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}

async function main(argv: string[]): Promise<number> {
  const runDir = flag(argv, "run-dir");
  const stateDir = flag(argv, "state-dir");
  if (runDir === undefined || stateDir === undefined) {
    process.stderr.write("usage: harness --run-dir DIR --state-dir DIR [--subnet CIDR|none] [--mtu N] [--bridge NAME]\n");
    return 2;
  }
  const subnetText = flag(argv, "subnet") ?? "10.244.1.0/24";
  let subnet: Subnet | undefined;
  if (subnetText !== "none") {
    const p = parseSubnet(subnetText);
    if (!p.ok) {
      process.stderr.write(`harness: --subnet ${subnetText}: ${p.error}\n`);
      return 2;
    }
    subnet = p.value;
  }
  const log = createLogger(process.env["VXMESH_LOG_LEVEL"] ?? "warn", "vxmesh-cni-harness");
  const handler = createCniHandler({
    nodeSubnet: () => subnet,
    mtu: Number(flag(argv, "mtu") ?? "1450"),
    bridge: flag(argv, "bridge") ?? "vxmesh-br",
    stateDir,
    log,
  });
  await handler.completeQueuedDels();
  const server = await listenControl(runDir, (req) => {
    if (req.op === "status") return { ready: subnet !== undefined };
    if (isCniRequest(req)) return handler.handle(req);
    throw new Error(`unknown op ${JSON.stringify(req.op)}; valid: status, cni`);
  });
  await handler.completeQueuedDels();
  process.stdout.write("ready\n");
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", () => resolve());
    process.once("SIGINT", () => resolve());
  });
  await closeControl(server, runDir);
  await handler.close();
  return 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`harness: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
