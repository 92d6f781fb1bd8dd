// The CNI side of the daemon: the native shim `vxmesh-cni` forwards each CNI call (its
// environment and stdin) over the control socket as {"op":"cni", env, stdin}; the daemon
// answers with what the shim prints and its exit code.
//
// (Interface only; the implementation lands with the CNI issue.)

import type { Subnet } from "../encap/types";
import type { Logger } from "../daemon/log";

export interface CniRequest {
  op: "cni";
  /** The CNI_* variables (and CNI_ARGS) the runtime set for the shim. */
  env: Record<string, string>;
  /** The network configuration the runtime wrote to the shim's stdin. */
  stdin: string;
}

export interface CniResponse {
  /** 0 on success; non-zero with a spec error object on stdout otherwise. */
  exitCode: number;
  /** What the shim prints to stdout: a result or a {cniVersion, code, msg, details} error. */
  stdout: string;
}

export interface CniHandlerOptions {
  /** This node's confirmed pod subnet; pods get addresses from it, the gateway is its first. */
  nodeSubnet: Subnet;
  /** Pod MTU: the TAP's. */
  mtu: number;
  /** The node bridge pods attach to. */
  bridge: string;
  /** Where the address store and the DEL queue live (survives restarts). */
  stateDir: string;
  log: Logger;
}

export interface CniHandler {
  handle(request: CniRequest): Promise<CniResponse>;
  close(): Promise<void>;
}

export function isCniRequest(req: { op: string }): req is CniRequest {
  const r = req as Partial<CniRequest>;
  return r.op === "cni" && typeof r.stdin === "string" && typeof r.env === "object" && r.env !== null;
}
