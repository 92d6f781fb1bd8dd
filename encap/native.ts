// Typed face of the native shim (encap/native/vxmesh_native.c). The shim only makes syscalls
// Node lacks; every decision about what to send where stays in TypeScript.
//
// Conventions:
// - IPv4 addresses cross the boundary as unsigned 32-bit numbers in network order read as a
//   big-endian integer (192.0.2.1 is 0xC0000201); ports as plain numbers.
// - Batched calls never throw on EAGAIN: they return how many frames/datagrams they moved.
//   They throw (an Error with `code` set to the errno name) only for real failures such as
//   EBADF, which are bugs or a vanished device.
// - Slabs are caller-owned Uint8Arrays; the shim reads/writes in place, never allocates per
//   packet.

import { nativeAddonPath } from "./artefacts";

export interface TapOpenOptions {
  /** Ask for IFF_VNET_HDR (frames prefixed by a virtio_net_hdr). Default false. */
  vnetHdr?: boolean;
  /** Ask for IFF_MULTI_QUEUE. Default false. */
  multiQueue?: boolean;
}

export interface TapHandle {
  fd: number;
  /** The name the kernel gave the device (equal to the requested one when it was free). */
  name: string;
}

export interface NativeShim {
  /** open("/dev/net/tun") + TUNSETIFF(IFF_TAP|IFF_NO_PI[...]), O_NONBLOCK, close-on-exec. */
  tapOpen(name: string, options?: TapOpenOptions): TapHandle;

  /**
   * socket(AF_INET, SOCK_DGRAM|SOCK_NONBLOCK|SOCK_CLOEXEC), SO_REUSEADDR, optional
   * SO_RCVBUF/SO_SNDBUF (0 = leave the default; uses the FORCE variants when permitted),
   * bind(ip, port). ip 0 binds INADDR_ANY; port 0 lets the kernel choose.
   */
  udpOpen(ip: number, port: number, rcvbuf: number, sndbuf: number): number;

  /** getsockname port of a UDP socket (for port-0 binds). */
  udpLocalPort(fd: number): number;

  /**
   * read(2) frames from a TAP fd until EAGAIN or `max` frames. Frame i is written at
   * slab[base + i*stride], at most `stride` bytes; its length goes to lens[i].
   * A frame longer than `stride` gets lens[i] = 0xFFFFFFFF (like recvBatch) so the caller
   * drops it. Returns the number of frames read.
   */
  readFrames(fd: number, slab: Uint8Array, base: number, stride: number, max: number, lens: Uint32Array): number;

  /**
   * Writes frames to a TAP fd, one writev each: frame i is slab[offs[i] .. offs[i]+lens[i]),
   * preceded by hdrs[i*hdrLen .. +hdrLen) when hdrs is given (a virtio_net_hdr for a TAP opened
   * with vnetHdr). Stops at EAGAIN and returns how many entries it consumed. A frame the kernel
   * refuses (EIO while the TAP is down, EINVAL) is skipped: its lens[i] becomes 0 and errors[0]
   * grows by one. Only errors of the descriptor itself throw.
   */
  writeFrames(fd: number, slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, count: number, errors: Uint32Array,
    hdrs?: Uint8Array, hdrLen?: number): number;

  /**
   * recvmmsg(MSG_DONTWAIT) up to `max` datagrams; datagram i lands at slab[base + i*stride]
   * (at most `stride` bytes; a longer one is truncated and its lens[i] is set to 0xFFFFFFFF
   * so the caller drops it), its length in lens[i], sender in srcIps[i] / srcPorts[i].
   * With `segSizes` (and UDP_GRO on), segSizes[i] is the size of the equal datagrams the
   * kernel coalesced into entry i, or 0 for a single datagram.
   * Returns the count (0 on EAGAIN).
   */
  recvBatch(fd: number, slab: Uint8Array, base: number, stride: number, max: number,
    lens: Uint32Array, srcIps: Uint32Array, srcPorts: Uint16Array, segSizes?: Uint16Array): number;

  /**
   * sendmmsg(MSG_DONTWAIT): datagram i is slab[offs[i] .. offs[i]+lens[i]) to dstIps[i]:dstPorts[i].
   * Returns how many it consumed: sent, or skipped after an error (stops at EAGAIN/ENOBUFS).
   * Per-datagram errors such as EHOSTUNREACH or ECONNREFUSED (from an earlier ICMP) skip that
   * datagram and go on; the number skipped is added to `errors[0]`.
   * With `segSizes`, entry i longer than segSizes[i] (> 0) goes out with UDP_SEGMENT: the
   * kernel cuts it into datagrams of segSizes[i] bytes (the last may be shorter).
   */
  sendBatch(fd: number, slab: Uint8Array, offs: Uint32Array, lens: Uint32Array,
    dstIps: Uint32Array, dstPorts: Uint16Array, count: number, errors: Uint32Array,
    segSizes?: Uint16Array): number;

  /** setsockopt(UDP_GRO): recvBatch may then return runs of equal-size datagrams as one entry. */
  udpSetGro(fd: number, enable: boolean): void;

  /** ioctl(TUNSETOFFLOAD, flags) on a TAP opened with vnetHdr (TUN_F_* flags, see offload.ts). */
  tapSetOffload(fd: number, flags: number): void;


  /**
   * The Internet checksum's ones' complement sum of slab[off .. off+len) as big-endian 16-bit
   * words, plus `initial`, folded to 16 bits and not inverted.
   */
  checksum(slab: Uint8Array, off: number, len: number, initial: number): number;

  /**
   * checksum() for many spans in one call: for i < count, sums[i] becomes the sum of
   * slab[offs[i] .. offs[i]+lens[i]) added to the initial value sums[i] held.
   */
  checksumMany(slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, sums: Uint32Array, count: number): void;

  /**
   * poll(2) for POLLIN on each fd, waiting at most timeoutMs (-1 forever). Writes revents to
   * revents[i] (nonzero means readable or error/hangup). Returns the number of ready fds,
   * 0 on timeout; EINTR counts as 0.
   *
   * With spinUs > 0 (at most 1,000,000) it busy-polls first: poll without sleeping, yield the
   * CPU to any runnable thread, again, for up to spinUs µs; only then does it sleep. Fds found
   * ready while busy-polling are returned negated (−n), so callers can count wake-ups that cost
   * no sleep.
   */
  pollIn(fds: Int32Array, revents: Int32Array, timeoutMs: number, spinUs?: number): number;

  /** eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC) for waking a thread blocked in pollIn. */
  eventfdOpen(): number;
  /** Add 1 to an eventfd. */
  eventfdSignal(fd: number): void;
  /** Read (reset) an eventfd; returns the counter, 0 if it was not signalled. */
  eventfdDrain(fd: number): number;

  close(fd: number): void;

  /**
   * Runs `fn` synchronously with the calling thread inside the network namespace at `nsPath`
   * (setns(CLONE_NEWNET)) and switches back before returning, also when `fn` throws. For
   * creating a socket that must live in another namespace (the CNI handler's rtnetlink socket
   * inside a pod); keep `fn` short and synchronous. Throws ENOENT when the path does not exist
   * and EINVAL when it is not a network namespace.
   */
  inNetns<T>(nsPath: string, fn: () => T): T;

  /**
   * Reduces the capabilities of every thread of the process (capability sets are per thread on
   * Linux; capset and prctl change only the caller's): effective and permitted become
   * `keep` ∩ permitted, inheritable and ambient become `ambient` ∩ that (empty by default; a
   * non-root process keeps there what a program it execs must hold), the bounding set shrinks to
   * `keep` when CAP_SETPCAP allows it, and no_new_privs is set. Each other thread does it in the
   * handler of the signal SIGRTMIN-1, the one the C library reserves for setuid() across threads,
   * which no thread can block; `deadlineMs` bounds the wait for their answers. Never throws for a
   * failed drop: the report says what happened.
   */
  dropCapabilities(keep: bigint, deadlineMs: number, ambient?: bigint): CapDropReport;
}

export interface CapDropReport {
  /** Every thread answered and dropped without error. */
  ok: boolean;
  /** Why the drop could not run at all (installing the handler, reading the sets). */
  error?: string;
  /** The calling thread's effective set afterwards. */
  kept: bigint;
  /** The calling thread's bounding set afterwards. */
  bounding: bigint;
  /** The bounding set holds nothing beyond `keep` (false: CAP_SETPCAP was missing). */
  boundingReduced: boolean;
  /** Threads that dropped (the calling one included). */
  threads: number;
  /** The signal used (33 with glibc). */
  signal: number;
  /** Threads that answered with an error: which step failed and the errno name. */
  failed: { tid: number; step: string; code: string }[];
  /** Threads that did not answer before the deadline. */
  silent: number[];
}

let cached: NativeShim | undefined;

/** Loads build/Release/vxmesh_native.node, built by node-gyp at `npm ci`. */
export function loadNative(): NativeShim {
  if (cached === undefined) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    cached = require(nativeAddonPath()) as NativeShim;
  }
  return cached;
}
