// `vxmesh demo`: a multi-node overlay on this one machine, built from network namespaces,
// with pods pinging and streaming across nodes. Everything it makes is removed at the end,
// also on Ctrl-C or an error.

import { Cluster } from "../bench/cluster";
import { Lab, waitFor, type LabNode, type LabPod } from "../bench/lab";
import { formatHelp, intInRange, parseFlags } from "./flags";

const demoFlags = {
  nodes: { name: "nodes", help: "number of nodes, 2-8", defaultText: "3", parse: intInRange(2, 8) },
  pods: { name: "pods", help: "pods per node, 1-4", defaultText: "2", parse: intInRange(1, 4) },
  seconds: { name: "seconds", help: "length of the TCP throughput run, 1-30", defaultText: "3", parse: intInRange(1, 30) },
};

const out = (line = ""): void => { process.stdout.write(line + "\n"); };

export async function runDemo(argv: string[]): Promise<number> {
  if (argv.includes("--help")) {
    out(formatHelp("demo", "Builds a lab overlay in network namespaces, shows pods talking across nodes, removes it.", demoFlags));
    return 0;
  }
  const parsed = parseFlags(demoFlags, argv, process.env);
  if (!parsed.ok) {
    process.stderr.write(`vxmesh demo: ${parsed.error}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write("vxmesh demo: needs root (it creates network namespaces, veth pairs and TAP devices)\n");
    return 1;
  }
  const nodeCount = parsed.values.nodes ?? 3;
  const podCount = parsed.values.pods ?? 2;
  const seconds = parsed.values.seconds ?? 3;

  out(`building the lab: ${nodeCount} nodes × ${podCount} pods on one underlay bridge …`);
  const lab = await Lab.build({ nodes: Array.from({ length: nodeCount }, () => ({ overlay: "vxmesh" as const, pods: podCount })) });
  const cluster = new Cluster(lab);
  try {
    out(`starting a vxmesh daemon in each node's namespace; they find each other by gossip through ${lab.nodes[0]?.name} …`);
    const seed = lab.nodes[0] as LabNode;
    const t0 = Date.now();
    await cluster.start(seed, { gossip: { seed } });
    await Promise.all(lab.nodes.slice(1).map((n) => cluster.start(n, { gossip: { seed } })));
    await waitFor(async () => {
      for (const d of cluster.daemons.values()) if ((await d.status()).peers.length !== nodeCount - 1) return false;
      return true;
    }, { timeoutMs: 30_000, intervalMs: 100, what: "every daemon to learn every other node by gossip" });
    out(`every node knows every other node's subnet after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    out();
    out("node   underlay        pod subnet       VTEP MAC           pods");
    for (const n of lab.nodes) {
      out(`${n.name.padEnd(6)} ${n.underlayIp.padEnd(15)} ${n.subnet.padEnd(16)} ${n.vtepMac}  ${n.pods.map((p) => p.ip).join(", ")}`);
    }

    out();
    out("pod → pod ping across nodes (✓ = replied):");
    const pods = lab.pods;
    const results = await Promise.all(pods.map((from) => Promise.all(pods.map((to) =>
      from.node === to.node ? Promise.resolve(undefined) : lab.ping(from, to.ip, { count: 3, timeoutMs: 1000, intervalMs: 200 })))));
    const col = (p: LabPod): string => p.name.padStart(6);
    out(`${"".padEnd(8)}${pods.map(col).join("")}`);
    let failures = 0;
    results.forEach((row, i) => {
      const cells = row.map((ok) => (ok === undefined ? "·" : ok ? "✓" : "✗").padStart(6));
      failures += row.filter((ok) => ok === false).length;
      out(`${(pods[i] as LabPod).name.padEnd(8)}${cells.join("")}`);
    });

    const server = pods.find((p) => p.node !== pods[0]?.node) as LabPod;
    const client = pods[0] as LabPod;
    out();
    out(`TCP stream ${client.name} (${client.ip}) → ${server.name} (${server.ip}) for ${seconds} s through vxmesh …`);
    const gbps = await iperfTcp(lab, client, server, seconds);
    out(gbps === undefined ? "  iperf3 failed (is it installed?)" : `  ${gbps.toFixed(2)} Gbit/s`);

    const status = await cluster.daemon(server.node).status();
    const c = status.counters;
    out();
    out(`${server.node}'s forwarder: ${c["udp_rx_datagrams"]} datagrams in, ${c["tap_tx_frames"]} frames to its TAP, ` +
      `${Object.entries(c).filter(([k]) => k.startsWith("drop_")).reduce((s, [, v]) => s + v, 0)} dropped`);
    out();
    out(failures === 0 ? "every cross-node pod pair talks through vxmesh." : `${failures} pod pairs did not reach each other.`);
    return failures === 0 ? 0 : 1;
  } finally {
    out("tearing the lab down …");
    await cluster.stopAll();
    await lab.teardown();
    out("done: no namespace, link or process of the demo remains.");
  }
}

/** Runs iperf3 between two pods; returns Gbit/s received, or undefined if it failed. */
async function iperfTcp(lab: Lab, client: LabPod, server: LabPod, seconds: number, streams = 1): Promise<number | undefined> {
  const srv = lab.spawn(server, ["iperf3", "-s", "-1", "-B", server.ip]);
  srv.stdout?.resume();
  srv.stderr?.resume();
  try {
    // iperf3 -s takes a moment to bind; retry the client until it connects.
    for (let attempt = 0; attempt < 20; attempt++) {
      const r = await lab.exec(client, ["iperf3", "-c", server.ip, "-t", String(seconds), "-P", String(streams), "-J"], { timeoutMs: (seconds + 15) * 1000 });
      if (r.code === 0) {
        const report = JSON.parse(r.stdout) as { end?: { sum_received?: { bits_per_second?: number } } };
        const bps = report.end?.sum_received?.bits_per_second;
        return bps === undefined ? undefined : bps / 1e9;
      }
      if (!/Connection refused/.test(r.stdout + r.stderr)) return undefined;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return undefined;
  } finally {
    srv.kill("SIGKILL");
  }
}
