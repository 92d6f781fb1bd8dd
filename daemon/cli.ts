#!/usr/bin/env node
// `vxmesh` — one executable, several subcommands.

import { formatHelp, parseFlags, anyText, boolSwitch, withDefault } from "./flags";
import { CONFIG_HELP_NOTES, daemonFlags, loadDaemonSettings } from "./config";
import { queryControl } from "./control-socket";
import { createLogger } from "./log";
import { StartupError, startDaemon } from "./daemon";
import { generateKey } from "../control/keyring";
import { DEFAULT_RUN_DIR } from "./default-dirs";
import type { KubernetesStatus } from "./status";

const USAGE = `usage: vxmesh <command> [flags]

commands:
  daemon    run the overlay daemon on this node
  status    show a running daemon's peers, members and counters
  trace     show where a packet to a pod IP goes from this node, and what is in the way
  install-cni  put the CNI plugin vxmesh-cni and a conflist in place for a container runtime
  doctor    check this host and a daemon configuration before starting (changes nothing)
  keygen    print a new gossip key (base64 of 32 random bytes) for a --key-file
  demo      build a 3-node lab in network namespaces and show pods talking across nodes
  bench     compare throughput and latency of the kernel's VXLAN, vxmesh and fastd in a namespace lab
  help      this text

\`vxmesh <command> --help\` lists a command's flags.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "daemon": return runDaemon(rest);
    case "status": return runStatus(rest);
    case "doctor": {
      const { runDoctor } = await import("./doctor");
      return runDoctor(rest);
    }
    case "trace": {
      const { runTrace } = await import("./trace-command");
      return runTrace(rest);
    }
    case "bench": {
      const { runBench } = await import("./bench-command");
      return runBench(rest);
    }
    case "install-cni": {
      const { runInstallCni } = await import("./install-cni");
      return runInstallCni(rest);
    }
    case "keygen":
      process.stdout.write(generateKey() + "\n");
      return 0;
    case "demo": {
      const { runDemo } = await import("./demo");
      return runDemo(rest);
    }
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE + "\n");
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`vxmesh: unknown command ${JSON.stringify(command)}\n\n${USAGE}\n`);
      return 2;
  }
}

async function runDaemon(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(formatHelp("daemon", "Runs the overlay daemon: creates the TAP, programs routes and neighbours for every peer, forwards pod traffic inside VXLAN.", daemonFlags, CONFIG_HELP_NOTES) + "\n");
    return 0;
  }
  const parsed = loadDaemonSettings(argv, process.env);
  if (!parsed.ok) {
    process.stderr.write(`vxmesh daemon: ${parsed.error}\n`);
    return 2;
  }
  const config = parsed.value;
  const log = createLogger(config.logLevel, "vxmesh", config.logFormat);
  let daemon;
  try {
    daemon = await startDaemon(config, log);
  } catch (err) {
    if (err instanceof StartupError) {
      log.error(err.message);
      process.stderr.write(`vxmesh daemon: ${err.message}\n`);
      return err.exitCode;
    }
    throw err;
  }
  const running = daemon;
  return new Promise<number>((resolve) => {
    let exiting = false;
    const shutdown = (why: string, code: number): void => {
      if (exiting) return;
      exiting = true;
      log.info({ why }, "shutting down");
      running.stop().then(() => {
        log.info("stopped; routes, neighbours and the TAP removed");
        resolve(code);
      }, (err: unknown) => {
        log.error({ err }, "shutdown failed");
        resolve(1);
      });
    };
    process.on("SIGTERM", () => shutdown("SIGTERM", 0));
    process.on("SIGINT", () => shutdown("SIGINT", 0));
    process.on("SIGHUP", () => {
      const error = running.reloadKeys();
      // A bad file keeps the keys in use: the cluster must not lose a member over a typo.
      if (error !== undefined) log.error(`key file not reloaded, keeping the current keys: ${error}`);
    });
    void running.failed.then((err) => {
      log.fatal({ err }, err.message);
      process.stderr.write(`vxmesh daemon: ${err.message}\n`);
      shutdown(err.message, 1);
    });
  });
}

async function runStatus(argv: string[]): Promise<number> {
  const flags = {
    runDir: { name: "run-dir", help: "the daemon's run directory", ...withDefault(DEFAULT_RUN_DIR), parse: anyText },
    json: { name: "json", help: "print JSON", isSwitch: true, parse: boolSwitch },
  };
  if (argv.includes("--help")) {
    process.stdout.write(formatHelp("status", "Shows a running daemon's members, peers, subnets, the routes and neighbours it owns in the kernel, and its counters.", flags) + "\n");
    return 0;
  }
  const parsed = parseFlags(flags, argv, process.env);
  if (!parsed.ok) {
    process.stderr.write(`vxmesh status: ${parsed.error}\n`);
    return 2;
  }
  try {
    const status = await queryControl(parsed.values.runDir ?? DEFAULT_RUN_DIR, "status");
    if (parsed.values.json) {
      process.stdout.write(JSON.stringify(status, null, 2) + "\n");
    } else {
      process.stdout.write(formatStatus(status as import("./daemon").DaemonStatus));
    }
    return 0;
  } catch (err) {
    process.stderr.write(`vxmesh status: ${(err as Error).message}\n`);
    return 1;
  }
}

function formatStatus(s: import("./daemon").DaemonStatus): string {
  const g = s.gossip as { members?: { name: string; state: string; subnet?: string; underlayIp?: string; vtepMac?: string; lease?: string; heardSecondsAgo?: number }[] } | undefined;
  const k = s.kernel;
  const drift = k === undefined ? [] : [
    ...k.drift.missingRoutes.map((r) => `  MISSING route ${r}`), ...k.drift.unexpectedRoutes.map((r) => `  UNEXPECTED route ${r}`),
    ...k.drift.missingOrWrongNeighbours.map((n) => `  MISSING/WRONG neighbour ${n}`), ...k.drift.unexpectedNeighbours.map((n) => `  UNEXPECTED neighbour ${n}`)];
  const changes = s.kernelChanges;
  const batch = (h: { sum: number; count: number } | undefined): string => (h === undefined || h.count === 0 ? "-" : (h.sum / h.count).toFixed(1));
  const lines = [
    `node ${s.node}  ${s.mode}  ${s.ready ? "ready" : `NOT READY${s.notReadyBecause === undefined ? "" : ` (${s.notReadyBecause})`}`}`,
    `underlay ${s.underlayIp}  subnet ${s.subnet ?? "none yet"}  vtep ${s.vtepMac}  vni ${s.vni}  port ${s.vxlanPort}  tap ${s.tap} mtu ${s.mtu}`,
    "",
    ...(g?.members === undefined ? [] : [
      "members:                  state    underlay         subnet             vtep mac           lease      heard",
      ...g.members.map((m) => `  ${m.name.padEnd(23)} ${m.state.padEnd(8)} ${(m.underlayIp ?? "").padEnd(16)} ${(m.subnet ?? "").padEnd(18)} ${(m.vtepMac ?? "").padEnd(18)} ${(m.lease ?? "").padEnd(10)} ${m.name === s.node ? "self" : m.heardSecondsAgo === undefined ? "never" : `${m.heardSecondsAgo} s ago`}`),
      "",
    ]),
    ...(s.kubernetes === undefined ? [] : kubernetesLines(s.kubernetes)),
    "peers:                    underlay         subnet             vtep mac           path   out frames/bytes   in frames/bytes",
    ...s.peers.map((p) => `  ${p.name.padEnd(23)} ${p.underlayIp.padEnd(16)} ${p.subnet.padEnd(18)} ${p.vtepMac.padEnd(18)} ${p.path.padEnd(6)} ` +
      (p.traffic === undefined ? "" : `${`${p.traffic.txFrames}/${p.traffic.txBytes}`.padEnd(18)} ${p.traffic.rxFrames}/${p.traffic.rxBytes}`)),
    "",
    ...(k === undefined ? [`routes: not read (${s.kernelError ?? "no kernel state in this answer"})`] : [
      `routes (kernel, proto 118, dev ${s.tap}):`, ...k.routes.map((r) => `  ${r}`),
      `neighbours (kernel, permanent, dev ${s.tap}):`, ...k.neighbours.map((n) => `  ${n}`),
      drift.length === 0 ? "kernel state: as wanted" : "kernel state differs from what vxmesh wants (repaired on the next reconcile):", ...drift,
    ]),
    ...(changes === undefined ? [] : [
      `kernel changes: peers/subnet routes +${changes.change.route.added} -${changes.change.route.removed} neighbours +${changes.change.neighbour.added} ~${changes.change.neighbour.replaced} -${changes.change.neighbour.removed}; ` +
      `repairs routes +${changes.repair.route.added} -${changes.repair.route.removed} neighbours +${changes.repair.neighbour.added} ~${changes.repair.neighbour.replaced} -${changes.repair.neighbour.removed}`,
    ]),
    "",
    `counters (mean batch: tap ${batch(s.batchSizes?.tap)}, underlay ${batch(s.batchSizes?.underlay)}):`,
    ...Object.entries(s.counters).filter(([, v]) => v !== 0).map(([k, v]) => `  ${k.padEnd(26)} ${v}`),
  ];
  return lines.join("\n") + "\n";
}

/** The Kubernetes source's part of `vxmesh status`: the watch, our Node, and the Nodes that are not peers. */
function kubernetesLines(k: KubernetesStatus): string[] {
  const w = k.watch;
  const reasons = Object.entries(k.skippedByReason).filter(([, n]) => n > 0).map(([r, n]) => `${r} ${n}`);
  const shown = k.skipped.slice(0, SKIPPED_SHOWN);
  return [
    `kubernetes ${k.server} (${k.credentials}); Node ${k.node} NetworkUnavailable=${k.networkUnavailable ?? "unset"}`,
    `watch      ${w.state} for ${w.forSeconds} s${w.inSync ? ", in sync" : ""}; resourceVersion ${w.resourceVersion || "-"}; ` +
      `last event ${w.lastEventSecondsAgo === null ? "never" : `${w.lastEventSecondsAgo} s ago`}; lists ${k.counters.lists} (after 410 ${k.counters.relists}), watches ${k.counters.watches}`,
    ...(w.lastError === null ? [] : [`last error ${w.lastError.secondsAgo} s ago: ${w.lastError.message}`]),
    `nodes      ${k.nodes} listed; skipped ${k.skipped.length}${reasons.length === 0 ? "" : ` (${reasons.join(", ")})`}`,
    ...shown.map((n) => `  ${n.name.padEnd(23)} ${n.reason.padEnd(21)} ${n.why}`),
    ...(k.skipped.length > shown.length ? [`  … ${k.skipped.length - shown.length} more (vxmesh status --json)`] : []),
    "",
  ];
}

const SKIPPED_SHOWN = 20;

// Exit explicitly: a stopped daemon has nothing left to do, and a stray handle must not keep
// the process (and so its TAP) alive.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`vxmesh: internal error: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(70);
  },
);
