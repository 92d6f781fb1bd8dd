// The seam between the Kubernetes source and the API server: the few calls it makes on Nodes.
// The real side is client.ts (HTTPS on node:https); tests put an in-memory one behind it.
// Objects are passed as parsed JSON (`unknown`): node-view.ts checks their shape, so a field
// the server leaves out or mangles is a skip reason, never an exception.

/** Why a call failed: the HTTP status and the server's metav1.Status, or the socket's error. */
export interface KubeError {
  /** HTTP status; undefined when no answer came (connection refused, TLS, timeout). */
  readonly status: number | undefined;
  /** metav1.Status reason ("Forbidden", "Expired", "NotFound" …), or the socket error code. */
  readonly reason: string;
  /** The server's message, or the socket error's. */
  readonly message: string;
}

export type KubeResult<T> = { ok: true; value: T } | { ok: false; error: KubeError };

export interface NodeListPage {
  /** The list's metadata.resourceVersion: where a watch continues from. */
  readonly resourceVersion: string;
  readonly items: readonly unknown[];
  /** metadata.continue: the next page's token; undefined on the last page. */
  readonly continueToken: string | undefined;
}

/** One line of a watch stream. ERROR carries a metav1.Status (410 Gone: list again). */
export type WatchEvent =
  | { readonly type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK"; readonly object: unknown }
  | { readonly type: "ERROR"; readonly status: KubeError };

export interface WatchHandle {
  /**
   * Resolves when the stream ends: ok when the server closed it cleanly (its timeoutSeconds),
   * else why (an HTTP error before the stream began, a broken connection, an unparsable line).
   */
  readonly done: Promise<KubeResult<void>>;
  /** Ends the stream from this side; `done` then resolves ok. Idempotent. */
  stop(): void;
}

export interface WatchOptions {
  /** Continue after this resourceVersion. */
  readonly resourceVersion: string;
  /** Asked of the server (allowWatchBookmarks). */
  readonly bookmarks: boolean;
  /** The server ends the stream after this long (timeoutSeconds); the client then watches again. */
  readonly timeoutSeconds: number;
}

export type PatchType = "merge" | "strategic";

export interface KubeApi {
  /** "https://host:port", for messages. */
  readonly server: string;
  getNode(name: string): Promise<KubeResult<unknown>>;
  /** One page of GET /api/v1/nodes (limit, continue). */
  listNodes(page: { limit: number; continueToken?: string }): Promise<KubeResult<NodeListPage>>;
  /**
   * GET /api/v1/nodes?watch=1: `onOpen` once the server has answered 200 (the stream is open),
   * then `onEvent` for each line, in order, until `done`.
   */
  watchNodes(options: WatchOptions, onEvent: (event: WatchEvent) => void, onOpen?: () => void): WatchHandle;
  /**
   * PATCH /api/v1/nodes/NAME (or its status subresource) with a merge or strategic-merge patch;
   * the object after. `dryRun`: checked and authorised, not stored (`vxmesh doctor`).
   */
  patchNode(name: string, patch: object, options: { type: PatchType; subresource?: "status"; dryRun?: boolean }): Promise<KubeResult<unknown>>;
  /** Closes idle connections (at stop). */
  close(): void;
}
