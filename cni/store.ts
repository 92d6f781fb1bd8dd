// The pod address store: one file per reserved address, <dir>/<a.b.c.d>, holding the attachment
// that owns it as JSON. A reservation is made by writing a temporary file and hard-linking it
// to the address's name: link(2) fails with EEXIST when the name is taken, so a claim is atomic
// and exclusive (also against another process sharing the directory), and a reader never sees
// a half-written file. Releasing is unlink(2). The store survives restarts: it is reloaded from
// the directory.
//
// Within the daemon all calls are synchronous, so concurrent ADDs (interleaved only at awaits)
// can never pick the same address. Allocation is round-robin from the last address handed out,
// persisted in <dir>/last-reserved, so a just-freed address is not immediately reused
// (stale ARP entries and conntrack state of the old pod then do not hit the new one).

import { linkSync, mkdirSync, readdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatIpv4, formatSubnet, parseIpv4, prefixMask, type Subnet } from "../encap/types";

export interface Reservation {
  ip: number;
  containerID: string;
  ifname: string;
  /** The CNI network name the ADD came with. */
  network: string;
  /** The node subnet the address was taken from, "10.244.1.0/24". */
  subnet: string;
  /** ISO time of the reservation. */
  since: string;
}

const LAST_FILE = "last-reserved";
const TMP_PREFIX = ".tmp-";

export function attachmentKey(containerID: string, ifname: string): string {
  return `${containerID}/${ifname}`;
}

/** The addresses pods may get: all of the subnet except network, gateway (first) and broadcast. */
export function poolRange(subnet: Subnet): { first: number; last: number; size: number } {
  const hostBits = 32 - subnet.prefixLen;
  const first = subnet.network + 2;
  const last = subnet.network + (hostBits >= 32 ? 0xffffffff : 2 ** hostBits - 1) - 1;
  return { first, last, size: Math.max(0, last - first + 1) };
}

export class AddressStore {
  private readonly byIp = new Map<number, Reservation>();
  private readonly byKey = new Map<string, Reservation>();
  private last = 0;
  private tmpCounter = 0;

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.load();
  }

  private load(): void {
    for (const name of readdirSync(this.dir)) {
      if (name.startsWith(TMP_PREFIX)) {
        // A claim interrupted between write and link; never visible as a reservation.
        try {
          unlinkSync(join(this.dir, name));
        } catch {
          /* gone */
        }
        continue;
      }
      if (name === LAST_FILE) {
        const ip = parseIpv4(readFileSync(join(this.dir, name), "utf8").trim());
        if (ip.ok) this.last = ip.value;
        continue;
      }
      const r = this.readReservation(name);
      if (r !== undefined) this.remember(r);
    }
  }

  private readReservation(name: string): Reservation | undefined {
    const ip = parseIpv4(name);
    if (!ip.ok) return undefined;
    try {
      const o = JSON.parse(readFileSync(join(this.dir, name), "utf8")) as Partial<Reservation>;
      if (typeof o.containerID !== "string" || typeof o.ifname !== "string") return undefined;
      return {
        ip: ip.value,
        containerID: o.containerID,
        ifname: o.ifname,
        network: typeof o.network === "string" ? o.network : "",
        subnet: typeof o.subnet === "string" ? o.subnet : "",
        since: typeof o.since === "string" ? o.since : "",
      };
    } catch {
      return undefined;
    }
  }

  private remember(r: Reservation): void {
    this.byIp.set(r.ip, r);
    this.byKey.set(attachmentKey(r.containerID, r.ifname), r);
  }

  private forget(r: Reservation): void {
    this.byIp.delete(r.ip);
    const key = attachmentKey(r.containerID, r.ifname);
    if (this.byKey.get(key) === r) this.byKey.delete(key);
  }

  lookup(containerID: string, ifname: string): Reservation | undefined {
    return this.byKey.get(attachmentKey(containerID, ifname));
  }

  all(): Reservation[] {
    return [...this.byIp.values()];
  }

  /** Free addresses of the subnet's pool. */
  free(subnet: Subnet): number {
    const { first, last, size } = poolRange(subnet);
    let used = 0;
    for (const ip of this.byIp.keys()) if (ip >= first && ip <= last) used++;
    return size - used;
  }

  /**
   * The attachment's address: its existing reservation when it has one in `subnet`, else the
   * next free address after the last one handed out. Undefined when the pool is exhausted.
   */
  reserve(subnet: Subnet, owner: { containerID: string; ifname: string; network: string }): { reservation: Reservation; fresh: boolean } | undefined {
    const existing = this.lookup(owner.containerID, owner.ifname);
    if (existing !== undefined && ((existing.ip & prefixMask(subnet.prefixLen)) >>> 0) === subnet.network) {
      return { reservation: existing, fresh: false };
    }
    const { first, last, size } = poolRange(subnet);
    if (size <= 0) return undefined;
    let candidate = this.last >= first && this.last <= last ? this.last : last;
    for (let i = 0; i < size; i++) {
      candidate = candidate >= last ? first : candidate + 1;
      if (this.byIp.has(candidate)) continue;
      const r: Reservation = { ip: candidate, ...owner, subnet: formatSubnet(subnet), since: new Date().toISOString() };
      if (this.claim(r)) {
        if (existing !== undefined) this.release(existing.containerID, existing.ifname);
        this.remember(r);
        this.last = candidate;
        this.writeLast();
        return { reservation: r, fresh: true };
      }
    }
    return undefined;
  }

  /**
   * Reserves exactly `ip` (the runtime asked for it) for the attachment: its own reservation
   * when it already holds it, a new one when the address is free (any other address the
   * attachment held is released), else who holds it. The caller checks that `ip` is in the pool.
   */
  reserveExact(subnet: Subnet, ip: number, owner: { containerID: string; ifname: string; network: string }): { reservation: Reservation } | { takenBy: Reservation } {
    const holder = this.byIp.get(ip);
    const mine = (r: Reservation): boolean => r.containerID === owner.containerID && r.ifname === owner.ifname;
    if (holder !== undefined) return mine(holder) ? { reservation: holder } : { takenBy: holder };
    const existing = this.lookup(owner.containerID, owner.ifname);
    const r: Reservation = { ip, ...owner, subnet: formatSubnet(subnet), since: new Date().toISOString() };
    if (!this.claim(r)) {
      const other = this.byIp.get(ip) as Reservation;
      return mine(other) ? { reservation: other } : { takenBy: other };
    }
    if (existing !== undefined) this.release(existing.containerID, existing.ifname);
    this.remember(r);
    return { reservation: r };
  }

  /** Writes the reservation under its address's name unless that name exists. */
  private claim(r: Reservation): boolean {
    const tmp = join(this.dir, `${TMP_PREFIX}${process.pid}-${++this.tmpCounter}`);
    const final = join(this.dir, formatIpv4(r.ip));
    writeFileSync(tmp, JSON.stringify({ containerID: r.containerID, ifname: r.ifname, network: r.network, subnet: r.subnet, since: r.since }) + "\n", { mode: 0o600 });
    try {
      linkSync(tmp, final);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      // Taken behind our back (another process on the same directory): learn who has it.
      const other = this.readReservation(formatIpv4(r.ip));
      if (other !== undefined) this.remember(other);
      else this.byIp.set(r.ip, { ...r, containerID: "", ifname: "" });
      return false;
    } finally {
      try {
        unlinkSync(tmp);
      } catch {
        /* gone */
      }
    }
  }

  private writeLast(): void {
    const tmp = join(this.dir, `${TMP_PREFIX}last-${process.pid}`);
    writeFileSync(tmp, formatIpv4(this.last) + "\n", { mode: 0o600 });
    renameSync(tmp, join(this.dir, LAST_FILE));
  }

  /** Releases the attachment's reservation; returns it, or undefined when it had none. */
  release(containerID: string, ifname: string): Reservation | undefined {
    const r = this.lookup(containerID, ifname);
    if (r === undefined) return undefined;
    this.unlinkReservation(r);
    return r;
  }

  releaseReservation(r: Reservation): void {
    if (this.byIp.get(r.ip) === r) this.unlinkReservation(r);
  }

  private unlinkReservation(r: Reservation): void {
    try {
      unlinkSync(join(this.dir, formatIpv4(r.ip)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
    this.forget(r);
  }
}
