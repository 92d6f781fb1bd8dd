// The one error of the netlink layer: a request the kernel refused, with its errno.

import { getSystemErrorMap, getSystemErrorName } from "node:util";

// strerror(3) texts for what rtnetlink answers here; libuv's texts are the fallback.
const STRERROR: Record<string, string> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  ESRCH: "No such process",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  E2BIG: "Argument list too long",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  ENODEV: "No such device",
  EINVAL: "Invalid argument",
  ENOSPC: "No space left on device",
  ERANGE: "Numerical result out of range",
  EMSGSIZE: "Message too long",
  EPROTONOSUPPORT: "Protocol not supported",
  EOPNOTSUPP: "Operation not supported",
  EAFNOSUPPORT: "Address family not supported by protocol",
  EADDRINUSE: "Address already in use",
  EADDRNOTAVAIL: "Cannot assign requested address",
  ENETDOWN: "Network is down",
  ENETUNREACH: "Network is unreachable",
  ENOBUFS: "No buffer space available",
  EHOSTUNREACH: "No route to host",
};

/**
 * A request the kernel refused. `errno` is negative, as the kernel answers it; `code` is its
 * name ("EEXIST"), `reason` the strerror text ("File exists"). The message is "<what>: <code>".
 */
export class NetlinkError extends Error {
  override readonly name = "NetlinkError";
  readonly errno: number;
  readonly code: string;
  readonly reason: string;

  constructor(errno: number, readonly what: string) {
    const neg = errno > 0 ? -errno : errno;
    let code = `errno ${-neg}`;
    try {
      code = getSystemErrorName(neg);
    } catch {
      /* unknown errno: keep the number */
    }
    super(`${what}: ${code}`);
    this.errno = neg;
    this.code = code;
    this.reason = STRERROR[code] ?? getSystemErrorMap().get(neg)?.[1] ?? code;
  }
}

/** The errno name an error carries as `code` (NetlinkError, or a Node system error), if any. */
export function errnoCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === "string" ? c : undefined;
}

