// BatchIo over the native shim: production's. Each method is the one native call the loop
// made before the seam existed, with the same descriptors, slabs and arguments; nothing is
// copied or allocated per packet or per batch.

import { receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import { Ready, type BatchIo, type Clock, type ControlChannel, type FromForwarder, type ToForwarder } from "./batch-io";
import type { NativeShim } from "./native";

export interface NativeIoFds {
  tapFd: number;
  /** The socket bound to the VXLAN port: everything is received here. */
  udpFd: number;
  /** Sockets datagrams are sent from, one per source port. */
  sendFds: readonly number[];
  /** The eventfd the daemon signals after posting a control message. */
  wakeFd: number;
}

export class NativeBatchIo implements BatchIo {
  readonly sendSockets: number;
  private readonly tapFd: number;
  private readonly udpFd: number;
  private readonly wakeFd: number;
  private readonly sendFds: readonly number[];
  private readonly pollFds: Int32Array;
  private readonly revents = new Int32Array(3);

  constructor(private readonly native: NativeShim, fds: NativeIoFds) {
    this.tapFd = fds.tapFd;
    this.udpFd = fds.udpFd;
    this.wakeFd = fds.wakeFd;
    this.sendFds = fds.sendFds;
    this.sendSockets = fds.sendFds.length;
    this.pollFds = Int32Array.of(fds.tapFd, fds.udpFd, fds.wakeFd);
  }

  wait(timeoutMs: number, spinUs: number): number {
    const ready = this.native.pollIn(this.pollFds, this.revents, timeoutMs, spinUs);
    const r = this.revents;
    // pollIn returns the count negated when it found the fds while busy-polling.
    return (r[0] !== 0 ? Ready.Tap : 0) | (r[1] !== 0 ? Ready.Underlay : 0) | (r[2] !== 0 ? Ready.Wake : 0)
      | (ready < 0 ? Ready.BusyPolled : 0);
  }

  drainWake(): void {
    this.native.eventfdDrain(this.wakeFd);
  }

  readTap(slab: Uint8Array, base: number, stride: number, max: number, lens: Uint32Array): number {
    return this.native.readFrames(this.tapFd, slab, base, stride, max, lens);
  }

  writeTap(slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, count: number, errors: Uint32Array,
    hdrs?: Uint8Array, hdrLen?: number): number {
    return this.native.writeFrames(this.tapFd, slab, offs, lens, count, errors, hdrs, hdrLen);
  }

  recvUnderlay(slab: Uint8Array, base: number, stride: number, max: number, lens: Uint32Array,
    srcIps: Uint32Array, srcPorts: Uint16Array, segSizes?: Uint16Array): number {
    return this.native.recvBatch(this.udpFd, slab, base, stride, max, lens, srcIps, srcPorts, segSizes);
  }

  sendUnderlay(socket: number, slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, dstIps: Uint32Array,
    dstPorts: Uint16Array, count: number, errors: Uint32Array, segSizes: Uint16Array): number {
    return this.native.sendBatch(this.sendFds[socket] as number, slab, offs, lens, dstIps, dstPorts, count, errors, segSizes);
  }
}

/** The worker thread's control channel: its parent port, read without returning to the event loop. */
export class PortControl implements ControlChannel {
  constructor(private readonly port: MessagePort) {}

  receive(): ToForwarder | undefined {
    const m = receiveMessageOnPort(this.port);
    return m === undefined ? undefined : (m.message as ToForwarder);
  }

  post(msg: FromForwarder): void {
    this.port.postMessage(msg);
  }
}

/** Monotonic time of the running thread. */
export const performanceClock: Clock = { nowMs: () => performance.now() };
