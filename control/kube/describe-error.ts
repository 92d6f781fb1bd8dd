// What an operator reads when a call to the API server fails: the permission a 403 lacks, the
// credentials a 401 refused, the socket's or TLS's own words when there was no answer. Shared by
// the Kubernetes source and `vxmesh doctor`.

import type { KubeError } from "./api";

/** What the daemon needs, as the ClusterRole in deploy/ grants it. */
export const KUBE_PERMISSIONS_NEEDED = "nodes get, list, watch and nodes/status patch (the ClusterRole in deploy/kubernetes/vxmesh-daemonset.yaml)";

export interface KubeCallContext {
  /** The API server's URL. */
  readonly server: string;
  /** The verb and resource asked for: "list nodes", "patch nodes/status". */
  readonly what: string;
  /** Where the credentials came from ("kubeconfig FILE", "in-cluster service account (…)"). */
  readonly credentialsFrom: string;
}

export function describeKubeError(e: KubeError, c: KubeCallContext): string {
  if (e.status === 401) {
    return `the API server ${c.server} rejected vxmesh's credentials (401 Unauthorized; from ${c.credentialsFrom}): ` +
      "the token is wrong, expired or revoked, or the client certificate is not trusted";
  }
  if (e.status === 403) return `the API server ${c.server} forbids vxmesh to ${c.what} (403 Forbidden: ${e.message}); it needs ${KUBE_PERMISSIONS_NEEDED}`;
  if (e.status === undefined) return `cannot reach the API server ${c.server} to ${c.what}: ${e.message}`;
  return `the API server ${c.server} answered ${e.status} ${e.reason} to ${c.what}: ${e.message}`;
}
