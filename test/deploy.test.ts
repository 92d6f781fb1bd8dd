// The deployment files in deploy/ say what the daemon needs and agree with the code: the
// DaemonSet manifest parses (every document, with the `yaml` package the config file uses), holds the kinds and fields the README
// relies on, its settings are valid daemon flags, its init container's flags are install-cni's;
// the systemd unit has the hardening it claims. `systemd-analyze verify` accepting it, with the
// built CLI: test/deploy-lab.test.ts.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { packageRoot } from "../encap/artefacts";
import { daemonFlags, parseDaemonConfig } from "../daemon/config";
import { envName, parseFlags } from "../daemon/flags";
import { installCniFlags } from "../daemon/install-cni";

const DEPLOY = join(packageRoot(), "deploy");

type Doc = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- parsed YAML, checked field by field

async function loadYaml(file: string): Promise<Doc[]> {
  // YAML 1.1, as Kubernetes reads it (0400 is octal there).
  const docs = parseAllDocuments(readFileSync(file, "utf8"), { version: "1.1" });
  for (const d of docs) if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join("; ")}`);
  return docs.map((d) => d.toJS() as Doc);
}

const DAEMON_ENV = new Set(Object.values(daemonFlags).map((f) => envName(f.name)));

describe("deploy/kubernetes/vxmesh-daemonset.yaml", async () => {
  const docs = await loadYaml(join(DEPLOY, "kubernetes", "vxmesh-daemonset.yaml"));
  const byKind = (kind: string): Doc => {
    const d = docs.find((x) => x["kind"] === kind);
    if (d === undefined) throw new Error(`no ${kind} in the manifest`);
    return d;
  };
  const ds = byKind("DaemonSet");
  const pod = ds["spec"]["template"]["spec"] as Doc;
  const daemon = (pod["containers"] as Doc[]).find((c) => c["name"] === "vxmesh") as Doc;
  const init = (pod["initContainers"] as Doc[])[0] as Doc;
  const config = byKind("ConfigMap")["data"] as Record<string, string>;

  it("holds a Namespace, ServiceAccount, ConfigMap, Secret and DaemonSet, all in one namespace", () => {
    expect(docs.map((d) => d["kind"])).toEqual(["Namespace", "ServiceAccount", "ConfigMap", "Secret", "DaemonSet"]);
    const ns = byKind("Namespace")["metadata"]["name"] as string;
    for (const d of docs.slice(1)) expect(d["metadata"]["namespace"], d["kind"] as string).toBe(ns);
    expect(pod["serviceAccountName"]).toBe(byKind("ServiceAccount")["metadata"]["name"]);
    expect(ds["spec"]["selector"]["matchLabels"]).toEqual(ds["spec"]["template"]["metadata"]["labels"]);
  });

  it("runs on the host network on every node, with only NET_ADMIN and SYS_ADMIN and no privilege escalation", () => {
    expect(pod["hostNetwork"]).toBe(true);
    expect(pod["tolerations"]).toEqual([{ operator: "Exists" }]);
    const sc = daemon["securityContext"] as Doc;
    expect(sc["capabilities"]).toEqual({ drop: ["ALL"], add: ["NET_ADMIN", "SYS_ADMIN"] });
    expect(sc["allowPrivilegeEscalation"]).toBe(false);
    expect(sc["privileged"]).toBeUndefined();
    expect(init["securityContext"]["capabilities"]).toEqual({ drop: ["ALL"] });
  });

  it("mounts /dev/net/tun as a CharDevice and the host's CNI, run, state and netns directories", () => {
    const volumes = new Map((pod["volumes"] as Doc[]).map((v) => [v["name"] as string, v]));
    const hostPathOf = (mountPath: string, c: Doc = daemon): Doc => {
      const m = (c["volumeMounts"] as Doc[]).find((x) => x["mountPath"] === mountPath);
      if (m === undefined) throw new Error(`nothing mounted at ${mountPath}`);
      return volumes.get(m["name"] as string)?.["hostPath"] as Doc;
    };
    expect(hostPathOf("/dev/net/tun")).toEqual({ path: "/dev/net/tun", type: "CharDevice" });
    expect(hostPathOf("/run/vxmesh")["path"]).toBe("/run/vxmesh");
    expect(hostPathOf("/var/lib/vxmesh")["path"]).toBe("/var/lib/vxmesh");
    expect(hostPathOf("/var/run/netns")["path"]).toBe("/var/run/netns");
    expect(hostPathOf("/host/opt/cni/bin", init)["path"]).toBe("/opt/cni/bin");
    expect(hostPathOf("/host/etc/cni/net.d", init)["path"]).toBe("/etc/cni/net.d");
    // The key file: a Secret, mode 0400 (the daemon refuses one readable by others), where VXMESH_KEY_FILE points.
    const keyEnv = (daemon["env"] as Doc[]).find((e) => e["name"] === "VXMESH_KEY_FILE")?.["value"] as string;
    const keyMount = (daemon["volumeMounts"] as Doc[]).find((m) => keyEnv.startsWith(`${m["mountPath"] as string}/`)) as Doc;
    const secretVolume = volumes.get(keyMount["name"] as string)?.["secret"] as Doc;
    expect(secretVolume["secretName"]).toBe(byKind("Secret")["metadata"]["name"]);
    expect(secretVolume["defaultMode"]).toBe(0o400);
    expect(Object.keys(byKind("Secret")["stringData"] as object)).toEqual([keyEnv.slice(keyEnv.lastIndexOf("/") + 1)]);
  });

  it("the init container runs `vxmesh install-cni` with valid flags pointing at the daemon's dirs", () => {
    const cmd = init["command"] as string[];
    expect(cmd.slice(0, 2)).toEqual(["vxmesh", "install-cni"]);
    const parsed = parseFlags(installCniFlags, cmd.slice(2), {});
    expect(parsed.ok && parsed.positional).toEqual([]);
    expect(parsed.ok && parsed.values.runDir).toBe("/run/vxmesh");
    expect(parsed.ok && parsed.values.stateDir).toBe("/var/lib/vxmesh");
  });

  it("its settings are valid daemon flags, and the probes reach /healthz and /readyz on the metrics address", () => {
    for (const key of Object.keys(config)) expect(DAEMON_ENV.has(key), `${key} is not a daemon flag`).toBe(true);
    const env: NodeJS.ProcessEnv = { ...config, VXMESH_NODE_NAME: "node-1", VXMESH_UNDERLAY_IP: "192.0.2.11" };
    for (const e of daemon["env"] as Doc[]) if (typeof e["value"] === "string") env[e["name"] as string] = e["value"] as string;
    const parsed = parseDaemonConfig([], env);
    expect(parsed.ok ? "" : parsed.error).toBe("");
    const fieldEnv = (daemon["env"] as Doc[]).filter((e) => e["valueFrom"] !== undefined).map((e) => [e["name"], e["valueFrom"]["fieldRef"]["fieldPath"]]);
    expect(fieldEnv).toEqual([["VXMESH_NODE_NAME", "spec.nodeName"], ["VXMESH_UNDERLAY_IP", "status.hostIP"]]);
    const [host, port] = (config["VXMESH_METRICS_ADDR"] as string).split(":");
    expect(daemon["livenessProbe"]["httpGet"]).toEqual({ host, port: Number(port), path: "/healthz" });
    expect(daemon["readinessProbe"]["httpGet"]).toEqual({ host, port: Number(port), path: "/readyz" });
    expect(daemon["command"]).toEqual(["vxmesh", "daemon"]);
  });
});

/** [Section] Key=Value lines; repeated keys keep every value. */
function parseUnit(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec !== null) {
      section = sec[1] as string;
      continue;
    }
    const eq = line.indexOf("=");
    const key = `${section}.${line.slice(0, eq)}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

describe("deploy/systemd/vxmesh.service", () => {
  const unitFile = join(DEPLOY, "systemd", "vxmesh.service");
  const unit = parseUnit(readFileSync(unitFile, "utf8"));
  const one = (key: string): string => {
    const v = unit.get(`Service.${key}`);
    if (v === undefined || v.length !== 1) throw new Error(`Service.${key}: ${JSON.stringify(v)}`);
    return v[0] as string;
  };

  it("runs as its own user with CAP_NET_ADMIN (+ CAP_SYS_ADMIN for CNI) only, and no_new_privs", () => {
    expect(one("User")).toBe("vxmesh");
    expect(one("AmbientCapabilities")).toBe("CAP_NET_ADMIN CAP_SYS_ADMIN");
    expect(one("CapabilityBoundingSet")).toBe(one("AmbientCapabilities"));
    expect(one("NoNewPrivileges")).toBe("yes");
    expect(one("DevicePolicy")).toBe("closed");
    expect(one("DeviceAllow")).toBe("/dev/net/tun rw");
    expect(one("ProtectSystem")).toBe("strict");
    expect(one("Restart")).toBe("on-failure");
    expect(one("KillSignal")).toBe("SIGTERM");
  });

  it("its directories and settings agree with the daemon's flags", () => {
    const env = new Map((unit.get("Service.Environment") ?? []).map((e) => e.split("=", 2) as [string, string]));
    for (const key of env.keys()) expect(DAEMON_ENV.has(key), `${key} is not a daemon flag`).toBe(true);
    expect(env.get("VXMESH_RUN_DIR")).toBe(`/run/${one("RuntimeDirectory")}`);
    expect(env.get("VXMESH_STATE_DIR")).toBe(`/var/lib/${one("StateDirectory")}`);
    expect(one("ExecStart")).toMatch(/^\/usr\/local\/bin\/vxmesh daemon --key-file \$\{CREDENTIALS_DIRECTORY\}\/gossip\.key$/);
    expect(one("LoadCredential")).toMatch(/^gossip\.key:/);
    // The example environment file: valid settings for the daemon.
    const example = readFileSync(join(DEPLOY, "systemd", "vxmesh.env"), "utf8").split("\n")
      .filter((l) => /^VXMESH_/.test(l)).map((l) => l.split("=", 2) as [string, string]);
    for (const [k] of example) expect(DAEMON_ENV.has(k), `${k} is not a daemon flag`).toBe(true);
    const parsed = parseDaemonConfig(["--key-file", "/run/credentials/vxmesh.service/gossip.key"], { ...Object.fromEntries(env), ...Object.fromEntries(example), VXMESH_NODE_NAME: "node-1" });
    expect(parsed.ok ? "" : parsed.error).toBe("");
  });
});
