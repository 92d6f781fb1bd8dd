// Where the daemon's Kubernetes credentials come from: `--kubeconfig FILE`, else the pod's own
// service account (in-cluster). A thin shell over kubeconfig.ts: it reads the files and checks
// that what the client will read later is there now, so a missing piece is named at start.
// KUBECONFIG and ~/.kube/config are deliberately not consulted: a node daemon should not pick up
// an administrator's credentials by accident.

import * as fs from "node:fs";
import * as path from "node:path";
import type { Parsed } from "../../encap/types";
import { parseKubeconfig, type KubeCredentials, type PemSource } from "./kubeconfig";

export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

const HOW =
  "give --kubeconfig FILE, or run vxmesh in a pod whose service account token is mounted " +
  "(automountServiceAccountToken must not be false on the pod or its ServiceAccount)";

export interface LoadCredentialsOptions {
  /** --kubeconfig: used when given; otherwise in-cluster. */
  readonly kubeconfig?: string;
  /** A context other than the kubeconfig's current-context (no daemon flag sets it yet). */
  readonly context?: string;
  readonly env: NodeJS.ProcessEnv;
  readonly serviceAccountDir?: string;
}

/** The credentials and where they came from ("kubeconfig /etc/vxmesh/kubeconfig", "in-cluster service account"). */
export function loadCredentials(o: LoadCredentialsOptions): Parsed<KubeCredentials & { source: string }> {
  return o.kubeconfig !== undefined ? fromKubeconfig(o.kubeconfig, o.context) : inCluster(o.env, o.serviceAccountDir ?? SERVICE_ACCOUNT_DIR);
}

function fromKubeconfig(file: string, context: string | undefined): Parsed<KubeCredentials & { source: string }> {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    return { ok: false, error: `kubeconfig ${file} cannot be read: ${(e as Error).message}` };
  }
  const parsed = parseKubeconfig(text, path.dirname(path.resolve(file)), context === undefined ? { file } : { file, context });
  if (!parsed.ok) return parsed;
  const c = parsed.value;
  const files: [string, PemSource | undefined][] = [["certificate-authority", c.ca]];
  if (c.auth.kind === "client-cert") files.push(["client-certificate", c.auth.cert], ["client-key", c.auth.key]);
  if (c.auth.kind === "token-file") files.push(["tokenFile", { kind: "file", path: c.auth.path }]);
  for (const [field, src] of files) {
    const problem = src?.kind === "file" ? unreadable(src.path) : undefined;
    if (problem !== undefined) return { ok: false, error: `kubeconfig ${file}: ${field} ${problem}` };
  }
  return { ok: true, value: { ...c, source: `kubeconfig ${file}` } };
}

function inCluster(env: NodeJS.ProcessEnv, dir: string): Parsed<KubeCredentials & { source: string }> {
  const host = env["KUBERNETES_SERVICE_HOST"] ?? "";
  const port = env["KUBERNETES_SERVICE_PORT"] ?? "";
  if (host === "" || port === "") {
    const missing = [host === "" ? "KUBERNETES_SERVICE_HOST" : "", port === "" ? "KUBERNETES_SERVICE_PORT" : ""].filter((s) => s !== "").join(" and ");
    return { ok: false, error: `no Kubernetes credentials: ${missing} not set, so not running in a pod; ${HOW}` };
  }
  if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    return { ok: false, error: `KUBERNETES_SERVICE_PORT is "${port}", not a port number` };
  }
  // An IPv6 service address goes in brackets (what net.JoinHostPort does for client-go).
  const server = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
  try {
    new URL(server);
  } catch {
    return { ok: false, error: `KUBERNETES_SERVICE_HOST is "${host}", not a host name or address` };
  }
  const token = path.join(dir, "token");
  const ca = path.join(dir, "ca.crt");
  for (const [what, file] of [["service-account token", token], ["service-account CA", ca]] as const) {
    const problem = unreadable(file);
    if (problem !== undefined) return { ok: false, error: `in-cluster credentials: the ${what} ${problem}; ${HOW}` };
  }
  return {
    ok: true,
    value: { server, ca: { kind: "file", path: ca }, auth: { kind: "token-file", path: token }, source: `in-cluster service account (${dir})` },
  };
}

/** Why `file` cannot serve as a credential file, or undefined when it can be read and is not empty. */
function unreadable(file: string): string | undefined {
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) return `${file} is not a regular file`;
    fs.accessSync(file, fs.constants.R_OK);
    if (st.size === 0) return `${file} is empty`;
    return undefined;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "ENOENT" ? `${file} does not exist` : `${file} cannot be read: ${(e as Error).message}`;
  }
}
