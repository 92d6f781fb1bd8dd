// The DEL queue: when the daemon cannot be reached, the shim writes the DEL it was asked for to
// <stateDir>/cni/del-queue/<containerID>:<ifname>.json (the very request line it would have
// sent, written to a temporary name and renamed into place) and reports success, so a pod can
// always be torn down. The daemon completes queued DELs when it starts, and before any later
// call for the same attachment. The name is unambiguous: container IDs cannot contain ':' and
// interface names cannot either. cni/shim/vxmesh-cni.c writes these files; keep them in step.

import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { CniRequest } from "./protocol";

const QUEUE_SUBDIR = join("cni", "del-queue");
const SUFFIX = ".json";
/** A temporary file of the shim older than this was abandoned (the shim died mid-write). */
const STALE_TMP_MS = 60_000;

function queueDir(stateDir: string): string {
  return join(stateDir, QUEUE_SUBDIR);
}

export function queuedDelPath(stateDir: string, containerID: string, ifname: string): string {
  return join(queueDir(stateDir), `${containerID}:${ifname}${SUFFIX}`);
}

export interface QueuedDel {
  file: string;
  /** Undefined when the file does not hold a valid DEL request. */
  request: CniRequest | undefined;
  problem?: string;
}

/** Reads one queued DEL; undefined when the file is not there (any more). */
export function readQueuedDel(file: string): QueuedDel | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    return { file, request: undefined, problem: (e as Error).message };
  }
  try {
    const v = JSON.parse(text) as Partial<CniRequest>;
    if (v.op !== "cni" || typeof v.stdin !== "string" || typeof v.env !== "object" || v.env === null) {
      return { file, request: undefined, problem: "not a {op:\"cni\", env, stdin} request" };
    }
    const env: Record<string, string> = {};
    for (const [k, val] of Object.entries(v.env)) if (typeof val === "string") env[k] = val;
    if (env["CNI_COMMAND"] !== "DEL") return { file, request: undefined, problem: `CNI_COMMAND is ${JSON.stringify(env["CNI_COMMAND"])}, not DEL` };
    return { file, request: { op: "cni", env, stdin: v.stdin } };
  } catch (e) {
    return { file, request: undefined, problem: `not JSON: ${(e as Error).message}` };
  }
}

/** Every queued DEL, oldest name first; abandoned temporary files are removed on the way. */
export function listQueuedDels(stateDir: string): string[] {
  const dir = queueDir(stateDir);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw e;
  }
  const out: string[] = [];
  const now = Date.now();
  for (const name of names.sort()) {
    const file = join(dir, name);
    if (name.startsWith(".")) {
      try {
        if (now - statSync(file).mtimeMs > STALE_TMP_MS) rmSync(file, { force: true });
      } catch {
        /* gone */
      }
      continue;
    }
    if (name.endsWith(SUFFIX)) out.push(file);
  }
  return out;
}

export function removeQueued(file: string): void {
  rmSync(file, { force: true });
}
