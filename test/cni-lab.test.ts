// Pods made only through vxmesh-cni, on three lab nodes each running a real vxmesh daemon: the
// first ADD on a node creates its bridge, pods reach each other across nodes by their own
// addresses, and deleting them removes their veths and frees their addresses. The shim talks to
// the daemon's own control socket when the daemon serves op "cni"; until it is wired to, to the
// CNI handler served beside it (bench/cni-harness.ts) in the same node namespace.

import { execFile } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import * as net from "node:net";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster } from "../bench/cluster";
import { Lab } from "../bench/lab";
import { hostVethName } from "../cni/handler";
import { CniNode, addPodNs, nsNameOf, type PluginRun } from "../bench/cni-testkit";

const execFileP = promisify(execFile);

let lab: Lab | undefined;
let cluster: Cluster | undefined;

afterAll(async () => {
  await cluster?.stopAll().catch(() => undefined);
  await lab?.teardown();
});

describe("pods wired by vxmesh-cni on three daemon nodes", () => {
  const nodes: CniNode[] = [];
  const pods: { node: CniNode; netns: string; cid: string; ip: string }[] = [];

  beforeAll(async () => {
    lab = await Lab.build({ nodes: [{}, {}, {}] });
    cluster = new Cluster(lab);
    await cluster.startAll();
    for (const n of lab.nodes) {
      // The lab makes the bridge for its own pods; here the CNI handler must make it.
      await execFileP("ip", ["-n", n.namespace, "link", "del", n.bridge]);
      const daemon = cluster.daemon(n.name);
      const wired = await servesCni(join(daemon.runDir, "vxmesh.sock"));
      const node = CniNode.on(lab, n.namespace, {
        subnet: n.subnet, mtu: n.overlayMtu, bridge: n.bridge,
        ...(wired ? { external: { runDir: daemon.runDir, stateDir: join(dirname(daemon.runDir), `${n.name}-state`) } } : {}),
      });
      await node.start();
      nodes.push(node);
    }
  });

  it("ADDs two pods per node, all of them reach the pods on the other nodes, DELs leave nothing behind", async () => {
    const l = lab as Lab;
    await Promise.all(nodes.map(async (node, i) => {
      for (let k = 1; k <= 2; k++) {
        const netns = await addPodNs(l, `n${i + 1}c${k}`);
        const cid = `lab-n${i + 1}-pod${k}`;
        const r: PluginRun = await node.call({ command: "ADD", containerID: cid, netns, ifname: "eth0" });
        expect(r.code, r.stdout + r.stderr).toBe(0);
        const ips = (r.json as { ips: { address: string }[] }).ips;
        pods.push({ node, netns, cid, ip: (ips[0]?.address ?? "").split("/")[0] ?? "" });
      }
    }));
    expect(pods).toHaveLength(6);
    for (const [i, n] of l.nodes.entries()) {
      const mine = pods.filter((p) => p.node === nodes[i]);
      for (const p of mine) expect(p.ip.startsWith(n.subnet.split(".").slice(0, 3).join(".") + ".")).toBe(true);
    }

    const results = await Promise.all(pods.flatMap((from) => pods.filter((to) => to.node !== from.node).map(async (to) => ({
      from: from.cid, to: to.cid, ok: await l.ping(nsNameOf(from.netns), to.ip, { count: 2, timeoutMs: 2000 }),
    }))));
    expect(results.filter((r) => !r.ok)).toEqual([]);

    const dels = await Promise.all(pods.map((p) => p.node.call({ command: "DEL", containerID: p.cid, netns: p.netns, ifname: "eth0" })));
    for (const d of dels) expect(d.code, d.stdout).toBe(0);
    for (const node of nodes) {
      const { stdout } = await execFileP("ip", ["-n", node.namespace, "-j", "link", "show"], { encoding: "utf8" });
      const names = (JSON.parse(stdout) as { ifname: string }[]).map((x) => x.ifname);
      for (const p of pods) expect(names).not.toContain(hostVethName(p.cid, "eth0"));
      const dir = join(node.stateDir, "cni", "addresses");
      expect(existsSync(dir) ? readdirSync(dir).filter((f) => /^\d/.test(f)) : []).toEqual([]);
    }
  });
});

/** True when the daemon behind `socket` answers a CNI VERSION call itself. */
function servesCni(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    let buf = "";
    c.setEncoding("utf8");
    c.once("connect", () => c.write(JSON.stringify({ op: "cni", env: { CNI_COMMAND: "VERSION" }, stdin: "{}" }) + "\n"));
    c.on("data", (d: string) => {
      buf += d;
      if (!buf.includes("\n")) return;
      c.end();
      resolve((JSON.parse(buf) as { result?: unknown }).result !== undefined);
    });
    c.once("error", () => resolve(false));
  });
}
