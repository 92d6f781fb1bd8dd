// Measurement (not a test): wall time of `podman run --rm <busybox image> true` on one lab node
// whose pods are wired by vxmesh-cni (the conflist `vxmesh install-cni` writes, a real daemon
// behind it), against the reference bridge + host-local on another subnet of the same node, and
// against `--network none` (what podman costs without any CNI plugin).
//
//   npm run build && node dist/bench/podman-run-time.js [--runs 30] [--warmup 3] [--json FILE]
//
// Each run is spawn to exit of `nsenter --net=… podman run --rm …` (bench/podman-kit.ts), so it
// includes container creation, the CNI ADD and DEL, runc and the removal. The networks take
// turns within each round (the order rotates), so a drift of the machine does not favour one.
// The reference conflist chains portmap when vxmesh's does, so both chains do the same work
// besides the main plugin.

import { execFile } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import { Cluster, cliPath } from "./cluster";
import { Lab } from "./lab";
import { median, percentile } from "./report";
import { BUSYBOX_IMAGE, PodmanNode, cgroupParentFor, cleanupPodmanLeftovers, podmanVersions } from "./podman-kit";

const execFileP = promisify(execFile);
const REFERENCE_PLUGINS = "/usr/lib/cni";
const REFERENCE_SUBNET = "10.244.200.0/24";

interface Stats {
  runs: number;
  median: number | null;
  p90: number | null;
  min: number;
  max: number;
  mean: number;
}

/** The bench's own median and nearest-rank percentile (bench/report.ts), plus range and mean. */
function stats(xs: readonly number[]): Stats {
  return { runs: xs.length, median: median(xs), p90: percentile(xs, 90), min: Math.min(...xs), max: Math.max(...xs), mean: xs.reduce((a, b) => a + b, 0) / xs.length };
}

function flag(argv: readonly string[], name: string, fallback: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : fallback;
}

function positiveInt(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${what} "${text}" is not valid: expected a whole number`);
  return n;
}

async function main(argv: readonly string[]): Promise<void> {
  const runs = positiveInt(flag(argv, "runs", "30"), "runs");
  const warmup = positiveInt(flag(argv, "warmup", "3"), "warmup");
  const jsonFile = flag(argv, "json", "");
  cleanupPodmanLeftovers();
  const lab = await Lab.build({ nodes: [{}] });
  const cluster = new Cluster(lab);
  let podman: PodmanNode | undefined;
  try {
    await cluster.startAll();
    const n = lab.nodes[0];
    if (n === undefined) throw new Error("no node");
    await execFileP("ip", ["-n", n.namespace, "link", "del", n.bridge]); // vxmesh-cni makes its own
    const daemon = cluster.daemon(n.name);
    const nodeDir = join(lab.workDir(), `podman-${n.name}`);
    const binDir = join(nodeDir, "bin");
    const confDir = join(nodeDir, "net.d");
    mkdirSync(binDir, { recursive: true });
    for (const p of readdirSync(REFERENCE_PLUGINS)) symlinkSync(join(REFERENCE_PLUGINS, p), join(binDir, p));
    await execFileP(process.execPath, [cliPath(), "install-cni", "--bin-dir", binDir, "--conf-dir", confDir,
      "--run-dir", daemon.runDir, "--state-dir", join(dirname(daemon.runDir), `${n.name}-state`)]);
    const ours = JSON.parse(readFileSync(join(confDir, "10-vxmesh.conflist"), "utf8")) as { cniVersion: string; plugins: { type: string }[] };
    const portmap = ours.plugins.some((p) => p.type === "portmap");
    writeFileSync(join(confDir, "20-refnet.conflist"), JSON.stringify({
      cniVersion: ours.cniVersion,
      name: "refnet",
      plugins: [
        {
          type: "bridge", bridge: "refbr0", isGateway: true, isDefaultGateway: true, hairpinMode: true, mtu: n.overlayMtu,
          ipam: { type: "host-local", ranges: [[{ subnet: REFERENCE_SUBNET }]], dataDir: join(nodeDir, "host-local") },
        },
        ...(portmap ? [{ type: "portmap", capabilities: { portMappings: true }, snat: true }] : []),
      ],
    }, null, 2));
    podman = await PodmanNode.create({
      namespace: n.namespace, dir: join(nodeDir, "podman"), pluginDirs: [binDir], networkConfigDir: confDir,
      cgroupParent: cgroupParentFor(lab.prefix, n.name),
    });
    await podman.importBusybox();

    const networks = ["vxmesh", "refnet", "none"];
    const times = new Map<string, number[]>(networks.map((x) => [x, []]));
    for (let round = 0; round < warmup + runs; round++) {
      const order = networks.map((_, i) => networks[(i + round) % networks.length] as string);
      for (const net of order) {
        const t0 = performance.now();
        const r = await podman.run(["--rm", "--network", net, BUSYBOX_IMAGE, "true"]);
        const ms = performance.now() - t0;
        if (r.code !== 0) throw new Error(`podman run --network ${net} failed: ${r.stderr.trim()}`);
        if (round >= warmup) times.get(net)?.push(ms);
      }
    }
    const v = await podmanVersions();
    const result = {
      podman: v.podman, libcni: v.libcni, storageDriver: podman.driver, portmapChained: portmap, warmup,
      networks: Object.fromEntries([...times].map(([k, xs]) => [k, stats(xs)])),
    };
    console.log(`podman ${v.podman} (libcni ${v.libcni}), ${podman.driver} storage, runc; ${runs} runs each after ${warmup} warm-up rounds` +
      `${portmap ? ", portmap chained on both CNI networks" : ""}`);
    console.log("network   median ms   p90 ms   min ms   max ms");
    for (const [k, s] of Object.entries(result.networks)) {
      console.log(`${k.padEnd(9)} ${(s.median ?? NaN).toFixed(0).padStart(9)} ${(s.p90 ?? NaN).toFixed(0).padStart(8)} ${s.min.toFixed(0).padStart(8)} ${s.max.toFixed(0).padStart(8)}`);
    }
    if (jsonFile !== "") writeFileSync(jsonFile, JSON.stringify(result, null, 2) + "\n");
  } finally {
    await podman?.cleanup();
    await cluster.stopAll().catch(() => undefined);
    await lab.teardown();
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  console.error(err instanceof Error ? err.stack ?? err.message : String(err));
  process.exitCode = 1;
});
