// The daemon's unix control socket: one JSON request per line, one JSON answer per line.

import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";

export type ControlHandler = (request: { op: string }) => Promise<unknown> | unknown;

export const CONTROL_SOCKET_NAME = "vxmesh.sock";
const MAX_REQUEST_BYTES = 1024 * 1024;

export function controlSocketPath(runDir: string): string {
  return path.join(runDir, CONTROL_SOCKET_NAME);
}

/**
 * Listens on <runDir>/vxmesh.sock (mode 0600). A stale socket left by a crashed daemon is
 * replaced; a live one means another daemon uses this run dir, which is an error.
 */
export async function listenControl(runDir: string, handler: ControlHandler): Promise<net.Server> {
  fs.mkdirSync(runDir, { recursive: true, mode: 0o755 });
  const file = controlSocketPath(runDir);
  if (fs.existsSync(file)) {
    if (await isAlive(file)) throw new Error(`another vxmesh daemon is serving ${file}; give this one its own --run-dir`);
    fs.unlinkSync(file);
  }
  const server = net.createServer((conn) => {
    let buf = "";
    conn.setEncoding("utf8");
    conn.on("data", (chunk: string) => {
      buf += chunk;
      // A CNI request carries the network config and prevResult: room for large ones.
      if (buf.length > MAX_REQUEST_BYTES) { conn.destroy(); return; }
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void answer(line).then((reply) => conn.write(JSON.stringify(reply) + "\n"));
      }
    });
    conn.on("error", () => conn.destroy());
  });
  const answer = async (line: string): Promise<unknown> => {
    try {
      const req = JSON.parse(line) as unknown;
      if (typeof req !== "object" || req === null || typeof (req as { op?: unknown }).op !== "string") {
        return { error: "request must be a JSON object with a string field \"op\"" };
      }
      return { result: await handler(req as { op: string }) };
    } catch (err) {
      return { error: (err as Error).message };
    }
  };
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(file, () => { server.off("error", reject); resolve(); });
  });
  fs.chmodSync(file, 0o600);
  return server;
}

export async function closeControl(server: net.Server, runDir: string): Promise<void> {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  try { fs.unlinkSync(controlSocketPath(runDir)); } catch { /* already gone */ }
}

/** True when a daemon answers on <runDir>/vxmesh.sock. */
export function controlInUse(runDir: string): Promise<boolean> {
  const file = controlSocketPath(runDir);
  return fs.existsSync(file) ? isAlive(file) : Promise.resolve(false);
}

function isAlive(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(file);
    c.once("connect", () => { c.destroy(); resolve(true); });
    c.once("error", () => resolve(false));
  });
}

/** Sends one request to a daemon's control socket and returns its result. */
export function queryControl(runDir: string, op: string, timeoutMs = 3000): Promise<unknown> {
  return requestControl(runDir, { op }, timeoutMs);
}

/** Like queryControl, for a request with fields besides `op`. */
export function requestControl(runDir: string, request: { op: string; [field: string]: unknown }, timeoutMs = 3000): Promise<unknown> {
  const file = controlSocketPath(runDir);
  return new Promise((resolve, reject) => {
    const c = net.connect(file);
    let buf = "";
    const timer = setTimeout(() => { c.destroy(); reject(new Error(`no answer from ${file} within ${timeoutMs} ms`)); }, timeoutMs);
    c.setEncoding("utf8");
    c.once("connect", () => c.write(JSON.stringify(request) + "\n"));
    c.on("data", (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      clearTimeout(timer);
      c.end();
      try {
        const reply = JSON.parse(buf.slice(0, nl)) as { result?: unknown; error?: string };
        if (reply.error !== undefined) reject(new Error(reply.error));
        else resolve(reply.result);
      } catch (err) {
        reject(err as Error);
      }
    });
    c.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(err.code === "ENOENT" || err.code === "ECONNREFUSED"
        ? `no vxmesh daemon is listening on ${file} (${err.code})` : `${file}: ${err.message}`));
    });
  });
}
