// The deployment files in deploy/ say what the daemon needs and agree with the code. The two
// DaemonSet manifests (the default on the Kubernetes source, and the gossip variant) parse
// (every document, with the `yaml` package the config file uses), hold the kinds and fields the
// README relies on, and their settings, with the env the pod would have, are valid daemon
// settings choosing the source each file is for; the default's ClusterRole is exactly what the
// Kubernetes source uses; the init container's flags are install-cni's; apart from the source,
// the two DaemonSets are the same. The systemd unit has the hardening it claims.
// `systemd-analyze verify` accepting it, with the built CLI: test/deploy-lab.test.ts.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { packageRoot } from "../encap/artefacts";
import { formatIpv4, formatSubnet } from "../encap/types";
import { daemonFlags, parseDaemonConfig, type DaemonConfig } from "../daemon/config";
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

/** What the downward API gives the pod, for the fields the manifests ask for. */
const SAMPLE_FIELDS: Readonly<Record<string, string>> = { "spec.nodeName": "node-1", "status.hostIP": "192.0.2.11" };

/** A DaemonSet manifest, and the parts of it the checks look at. */
interface Manifest {
  docs: Doc[];
  byKind(kind: string): Doc;
  ds: Doc;
  pod: Doc;
  daemon: Doc;
  init: Doc;
  config: Record<string, string>;
  /** The daemon container's environment as the pod would have it, downward-API fields given SAMPLE_FIELDS. */
  podEnv(): NodeJS.ProcessEnv;
  /** The daemon's settings from that environment, or the error. */
  settings(): DaemonConfig;
}

async function loadManifest(name: string): Promise<Manifest> {
  const docs = await loadYaml(join(DEPLOY, "kubernetes", name));
  const byKind = (kind: string): Doc => {
    const d = docs.find((x) => x["kind"] === kind);
    if (d === undefined) throw new Error(`no ${kind} in ${name}`);
    return d;
  };
  const ds = byKind("DaemonSet");
  const pod = ds["spec"]["template"]["spec"] as Doc;
  const daemon = (pod["containers"] as Doc[]).find((c) => c["name"] === "vxmesh") as Doc;
  const init = (pod["initContainers"] as Doc[])[0] as Doc;
  const config = byKind("ConfigMap")["data"] as Record<string, string>;
  const podEnv = (): NodeJS.ProcessEnv => {
    const env: NodeJS.ProcessEnv = { ...config };
    for (const e of daemon["env"] as Doc[]) {
      const field = e["valueFrom"]?.["fieldRef"]?.["fieldPath"] as string | undefined;
      if (field !== undefined && SAMPLE_FIELDS[field] === undefined) throw new Error(`no sample value for the downward API's ${field}`);
      env[e["name"] as string] = field === undefined ? (e["value"] as string) : SAMPLE_FIELDS[field];
    }
    return env;
  };
  const settings = (): DaemonConfig => {
    const parsed = parseDaemonConfig([], podEnv());
    if (!parsed.ok) throw new Error(`${name}: ${parsed.error}`);
    return parsed.value;
  };
  return { docs, byKind, ds, pod, daemon, init, config, podEnv, settings };
}

/** [name, fieldPath] of the daemon's downward-API variables. */
function fieldEnv(m: Manifest): [string, string][] {
  return (m.daemon["env"] as Doc[]).filter((e) => e["valueFrom"] !== undefined).map((e) => [e["name"] as string, e["valueFrom"]["fieldRef"]["fieldPath"] as string]);
}

/** The host path mounted at `mountPath` in container `c`. */
function hostPathOf(m: Manifest, mountPath: string, c: Doc = m.daemon): Doc {
  const volumes = new Map((m.pod["volumes"] as Doc[]).map((v) => [v["name"] as string, v]));
  const mount = (c["volumeMounts"] as Doc[]).find((x) => x["mountPath"] === mountPath);
  if (mount === undefined) throw new Error(`nothing mounted at ${mountPath}`);
  return volumes.get(mount["name"] as string)?.["hostPath"] as Doc;
}

/** Settings that only the gossip source reads: the Kubernetes variant must not carry them (they would be ignored or refused). */
const GOSSIP_ONLY = ["VXMESH_JOIN", "VXMESH_KEY_FILE", "VXMESH_GOSSIP_PORT", "VXMESH_GOSSIP_PROFILE", "VXMESH_SUBNET_LEN", "VXMESH_CLAIM_WAIT", "VXMESH_SUBNET", "VXMESH_PEERS"];

/** What both variants must hold: the same pod, whatever the source. */
function commonChecks(file: string, load: () => Promise<Manifest>): void {
  describe(`deploy/kubernetes/${file}: the pod`, async () => {
    const m = await load();

    it("runs on the host network on every node, with only NET_ADMIN and SYS_ADMIN and no privilege escalation", () => {
      expect(m.pod["hostNetwork"]).toBe(true);
      expect(m.pod["tolerations"]).toEqual([{ operator: "Exists" }]);
      const sc = m.daemon["securityContext"] as Doc;
      expect(sc["capabilities"]).toEqual({ drop: ["ALL"], add: ["NET_ADMIN", "SYS_ADMIN"] });
      expect(sc["allowPrivilegeEscalation"]).toBe(false);
      expect(sc["privileged"]).toBeUndefined();
      expect(m.init["securityContext"]["capabilities"]).toEqual({ drop: ["ALL"] });
      expect(m.pod["serviceAccountName"]).toBe(m.byKind("ServiceAccount")["metadata"]["name"]);
      expect(m.ds["spec"]["selector"]["matchLabels"]).toEqual(m.ds["spec"]["template"]["metadata"]["labels"]);
    });

    it("mounts /dev/net/tun as a CharDevice and the host's CNI, run, state and netns directories", () => {
      expect(hostPathOf(m, "/dev/net/tun")).toEqual({ path: "/dev/net/tun", type: "CharDevice" });
      expect(hostPathOf(m, "/run/vxmesh")["path"]).toBe("/run/vxmesh");
      expect(hostPathOf(m, "/var/lib/vxmesh")["path"]).toBe("/var/lib/vxmesh");
      expect(hostPathOf(m, "/var/run/netns")["path"]).toBe("/var/run/netns");
      expect(hostPathOf(m, "/host/opt/cni/bin", m.init)["path"]).toBe("/opt/cni/bin");
      expect(hostPathOf(m, "/host/etc/cni/net.d", m.init)["path"]).toBe("/etc/cni/net.d");
    });

    it("the init container runs `vxmesh install-cni` with valid flags pointing at the daemon's dirs", () => {
      const cmd = m.init["command"] as string[];
      expect(cmd.slice(0, 2)).toEqual(["vxmesh", "install-cni"]);
      const parsed = parseFlags(installCniFlags, cmd.slice(2), {});
      expect(parsed.ok && parsed.positional).toEqual([]);
      expect(parsed.ok && parsed.values.runDir).toBe("/run/vxmesh");
      expect(parsed.ok && parsed.values.stateDir).toBe("/var/lib/vxmesh");
    });

    it("its settings are daemon flags, valid with the pod's env, and the probes reach /healthz and /readyz on the metrics address", () => {
      for (const key of Object.keys(m.config)) expect(DAEMON_ENV.has(key), `${key} is not a daemon flag`).toBe(true);
      const c = m.settings();
      expect(formatIpv4(c.underlayIp)).toBe(SAMPLE_FIELDS["status.hostIP"]);
      expect(c.nodeName).toBe(SAMPLE_FIELDS["spec.nodeName"]);
      expect(c.runDir).toBe("/run/vxmesh");
      expect(c.stateDir).toBe("/var/lib/vxmesh");
      expect(c.vxlanPort).toBe(Number(m.config["VXMESH_VXLAN_PORT"]));
      const [host, port] = (m.config["VXMESH_METRICS_ADDR"] as string).split(":");
      expect(c.metricsAddr).toEqual({ host, port: Number(port) });
      expect(m.daemon["livenessProbe"]["httpGet"]).toEqual({ host, port: Number(port), path: "/healthz" });
      expect(m.daemon["readinessProbe"]["httpGet"]).toEqual({ host, port: Number(port), path: "/readyz" });
      expect(m.daemon["command"]).toEqual(["vxmesh", "daemon"]);
      const vxlan = (m.daemon["ports"] as Doc[]).find((p) => p["name"] === "vxlan");
      expect(vxlan).toEqual({ name: "vxlan", containerPort: c.vxlanPort, protocol: "UDP" });
    });
  });
}

const kubeManifest = loadManifest("vxmesh-daemonset.yaml");
const gossipManifest = loadManifest("vxmesh-daemonset-gossip.yaml");

describe("deploy/kubernetes/vxmesh-daemonset.yaml (the Kubernetes source, the default)", async () => {
  const m = await kubeManifest;
  const ns = m.byKind("Namespace")["metadata"]["name"] as string;
  const sa = m.byKind("ServiceAccount");

  it("holds a Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding, ConfigMap and DaemonSet; the namespaced ones in one namespace", () => {
    expect(m.docs.map((d) => d["kind"])).toEqual(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]);
    for (const d of m.docs) {
      const clusterScoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(d["kind"] as string);
      expect(d["metadata"]["namespace"], d["kind"] as string).toBe(clusterScoped ? undefined : ns);
    }
    expect(m.byKind("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]).toBe("privileged");
  });

  it("the ClusterRole is exactly nodes get/list/watch and nodes/status patch, in the core API group", () => {
    // The grants the Kubernetes source is tested with, as this ServiceAccount, against the API
    // double (test/kubernetes-source.test.ts, test/e2e-kubernetes.test.ts).
    expect(m.byKind("ClusterRole")["rules"]).toEqual([
      { apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"] },
      { apiGroups: [""], resources: ["nodes/status"], verbs: ["patch"] },
    ]);
    expect(m.byKind("ClusterRole")["aggregationRule"]).toBeUndefined();
  });

  it("the ClusterRoleBinding gives that ClusterRole to the pod's ServiceAccount, whose token is mounted", () => {
    const binding = m.byKind("ClusterRoleBinding");
    expect(binding["roleRef"]).toEqual({ apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: m.byKind("ClusterRole")["metadata"]["name"] });
    expect(binding["subjects"]).toEqual([{ kind: "ServiceAccount", name: sa["metadata"]["name"], namespace: ns }]);
    expect(m.pod["serviceAccountName"]).toBe(sa["metadata"]["name"]);
    // In-cluster credentials are the mounted token and CA: neither the pod nor the account may turn the mount off.
    expect(m.pod["automountServiceAccountToken"]).toBe(true);
    expect(sa["automountServiceAccountToken"]).not.toBe(false);
  });

  it("NODE_NAME comes from spec.nodeName and the underlay address from status.hostIP", () => {
    expect(fieldEnv(m)).toEqual([["NODE_NAME", "spec.nodeName"], ["VXMESH_UNDERLAY_IP", "status.hostIP"]]);
    // NODE_NAME is --node-name's fallback: nothing with precedence over it may be set.
    expect(m.podEnv()["VXMESH_NODE_NAME"]).toBeUndefined();
    expect(daemonFlags.nodeName.fallbackEnv).toBe("NODE_NAME");
  });

  it("its settings choose the Kubernetes source, in-cluster, with the ConfigMap's cluster CIDR", () => {
    const c = m.settings();
    expect(c.source.kind).toBe("kubernetes");
    if (c.source.kind !== "kubernetes") return;
    expect(c.source.kubeconfig).toBeUndefined();
    expect(formatSubnet(c.source.clusterCidr)).toBe(m.config["VXMESH_CLUSTER_CIDR"]);
    expect(m.config["VXMESH_SUBNET_SOURCE"]).toBe("kubernetes");
  });

  it("carries nothing of gossip: no Secret, no key file, no seeds, no gossip ports", () => {
    expect(m.docs.some((d) => d["kind"] === "Secret")).toBe(false);
    const env = m.podEnv();
    for (const key of GOSSIP_ONLY) expect(env[key], key).toBeUndefined();
    expect((m.daemon["ports"] as Doc[]).map((p) => p["name"])).toEqual(["vxlan"]);
    expect((m.pod["volumes"] as Doc[]).filter((v) => v["secret"] !== undefined)).toEqual([]);
  });
});

describe("deploy/kubernetes/vxmesh-daemonset-gossip.yaml (the gossip variant)", async () => {
  const m = await gossipManifest;

  it("holds a Namespace, ServiceAccount, ConfigMap, Secret and DaemonSet, all in one namespace, and no RBAC", () => {
    expect(m.docs.map((d) => d["kind"])).toEqual(["Namespace", "ServiceAccount", "ConfigMap", "Secret", "DaemonSet"]);
    const ns = m.byKind("Namespace")["metadata"]["name"] as string;
    for (const d of m.docs.slice(1)) expect(d["metadata"]["namespace"], d["kind"] as string).toBe(ns);
    expect(m.byKind("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]).toBe("privileged");
    // It does not talk to the API server: no token to leak.
    expect(m.byKind("ServiceAccount")["automountServiceAccountToken"]).toBe(false);
    expect(m.pod["automountServiceAccountToken"]).toBe(false);
  });

  it("the key file is a Secret, mode 0400 (the daemon refuses one readable by others), where VXMESH_KEY_FILE points", () => {
    const volumes = new Map((m.pod["volumes"] as Doc[]).map((v) => [v["name"] as string, v]));
    const keyEnv = (m.daemon["env"] as Doc[]).find((e) => e["name"] === "VXMESH_KEY_FILE")?.["value"] as string;
    const keyMount = (m.daemon["volumeMounts"] as Doc[]).find((x) => keyEnv.startsWith(`${x["mountPath"] as string}/`)) as Doc;
    const secretVolume = volumes.get(keyMount["name"] as string)?.["secret"] as Doc;
    expect(secretVolume["secretName"]).toBe(m.byKind("Secret")["metadata"]["name"]);
    expect(secretVolume["defaultMode"]).toBe(0o400);
    expect(Object.keys(m.byKind("Secret")["stringData"] as object)).toEqual([keyEnv.slice(keyEnv.lastIndexOf("/") + 1)]);
  });

  it("its settings choose gossip, with the seeds, the key file and the gossip ports it opens", () => {
    expect(fieldEnv(m)).toEqual([["VXMESH_NODE_NAME", "spec.nodeName"], ["VXMESH_UNDERLAY_IP", "status.hostIP"]]);
    const c = m.settings();
    expect(c.source.kind).toBe("gossip");
    if (c.source.kind !== "gossip") return;
    expect(c.source.join.length).toBeGreaterThan(0);
    expect(c.source.keyFile).toBe(m.podEnv()["VXMESH_KEY_FILE"]);
    const ports = (m.daemon["ports"] as Doc[]).filter((p) => (p["name"] as string).startsWith("gossip-"));
    expect(ports.map((p) => [p["containerPort"], p["protocol"]])).toEqual([[c.source.gossipPort, "UDP"], [c.source.gossipPort, "TCP"]]);
  });
});

describe("the two DaemonSet manifests", async () => {
  const kube = await kubeManifest;
  const gossip = await gossipManifest;
  const names = (m: Manifest): Record<string, string> => Object.fromEntries(
    ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"].map((k) => [k, m.byKind(k)["metadata"]["name"] as string]),
  );

  it("are alternatives: the same names, so applying one replaces the other's daemon instead of running two", () => {
    expect(names(gossip)).toEqual(names(kube));
  });

  it("differ only in the source: with the source's own settings left out, the pods are the same", () => {
    const SOURCE_ENV = ["NODE_NAME", "VXMESH_NODE_NAME", "VXMESH_KEY_FILE"];
    const strip = (m: Manifest): Doc => {
      const pod = structuredClone(m.pod);
      delete pod["automountServiceAccountToken"];
      pod["volumes"] = (pod["volumes"] as Doc[]).filter((v) => v["secret"] === undefined);
      const c = (pod["containers"] as Doc[]).find((x) => x["name"] === "vxmesh") as Doc;
      c["env"] = (c["env"] as Doc[]).filter((e) => !SOURCE_ENV.includes(e["name"] as string));
      c["ports"] = (c["ports"] as Doc[]).filter((p) => !(p["name"] as string).startsWith("gossip-"));
      c["volumeMounts"] = (c["volumeMounts"] as Doc[]).filter((x) => (pod["volumes"] as Doc[]).some((v) => v["name"] === x["name"]));
      return pod;
    };
    expect(strip(gossip)).toEqual(strip(kube));
    // Settings both need, equal; the rest belong to one source.
    for (const key of ["VXMESH_CLUSTER_CIDR", "VXMESH_VXLAN_PORT", "VXMESH_METRICS_ADDR", "VXMESH_LOG_LEVEL", "VXMESH_KEEP_CAPS"]) {
      expect(gossip.config[key], key).toBe(kube.config[key]);
    }
  });
});

commonChecks("vxmesh-daemonset.yaml", () => kubeManifest);
commonChecks("vxmesh-daemonset-gossip.yaml", () => gossipManifest);

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
