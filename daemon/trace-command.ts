// `vxmesh trace <pod-ip>`: asks the running daemon over its control socket where a packet to
// that pod IP goes and prints the answer. The daemon does the lookup (daemon/trace.ts); this
// is the shell around it.

import { parseIpv4, type Parsed } from "../encap/types";
import { requestControl } from "./control-socket";
import { anyText, boolSwitch, formatHelp, parseFlags, withDefault } from "./flags";
import { formatTrace, verdictIsReachable, type TraceRecord } from "./trace";
import { DEFAULT_RUN_DIR } from "./default-dirs";

const flags = {
  runDir: { name: "run-dir", help: "the daemon's run directory (its control socket is vxmesh.sock in it)", ...withDefault(DEFAULT_RUN_DIR), parse: anyText },
  json: { name: "json", help: "print the trace as JSON", isSwitch: true, parse: boolSwitch },
};

const SUMMARY = "Shows where a packet to a pod IP goes from this node: local, or which node owns it (underlay address, VTEP MAC, " +
  "member state, last heard from), the kernel's route and neighbour for it now, MTU, VXLAN port and VNI, and traffic and drop counters.\n" +
  "Exit status: 0 when the IP is local or routed to its owner, 1 when it is not (outside the cluster, owned by nobody, owner not routed) " +
  "or the daemon does not answer, 2 for bad arguments.";

/** The command line, checked: the pod IP and the flags. Pure. */
export function parseTraceArgs(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<{ ip: string; runDir: string; json: boolean }> {
  const parsed = parseFlags(flags, argv, env);
  if (!parsed.ok) return parsed;
  const [ipText, extra] = parsed.positional;
  if (ipText === undefined) return { ok: false, error: "the pod IP is missing: vxmesh trace <pod-ip> [--run-dir DIR] [--json]" };
  if (extra !== undefined) return { ok: false, error: `unexpected argument ${JSON.stringify(extra)}: give one pod IP` };
  const ip = parseIpv4(ipText);
  if (!ip.ok) return { ok: false, error: `pod IP ${JSON.stringify(ipText)} is not valid: expected ${ip.error}` };
  return { ok: true, value: { ip: ipText, runDir: parsed.values.runDir ?? DEFAULT_RUN_DIR, json: parsed.values.json ?? false } };
}

export async function runTrace(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(formatHelp("trace <pod-ip>", SUMMARY, flags) + "\n");
    return 0;
  }
  const args = parseTraceArgs(argv, process.env);
  if (!args.ok) {
    process.stderr.write(`vxmesh trace: ${args.error}\n`);
    return 2;
  }
  let record: TraceRecord;
  try {
    record = await requestControl(args.value.runDir, { op: "trace", ip: args.value.ip }) as TraceRecord;
  } catch (err) {
    process.stderr.write(`vxmesh trace: ${(err as Error).message}\n`);
    return 1;
  }
  process.stdout.write(args.value.json ? JSON.stringify(record, null, 2) + "\n" : formatTrace(record));
  return verdictIsReachable(record.verdict) ? 0 : 1;
}
