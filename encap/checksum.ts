// The Internet checksum (RFC 1071) pieces the offload path needs. The bulk sum over payload
// bytes is the native shim's (a 64-bit loop in C is several times faster than one in JS);
// these helpers do the small fixed-size parts and keep the arithmetic in one place.

/** Sums slab[off .. off+len) as big-endian 16-bit words onto `initial`; folded, not inverted. */
export type SumFn = (slab: Uint8Array, off: number, len: number, initial: number) => number;

/** A JS implementation of SumFn, for tests and as the reference. */
export const sumJs: SumFn = (slab, off, len, initial) => {
  let sum = initial;
  let i = off;
  const end = off + len;
  for (; i + 1 < end; i += 2) sum += ((slab[i] as number) << 8) | (slab[i + 1] as number);
  if (i < end) sum += (slab[i] as number) << 8;
  return fold(sum);
};

/**
 * Sums many spans in one call: for i < count, sums[i] = SumFn(slab, offs[i], lens[i], sums[i]).
 * The native shim's checksumMany; a batch of segments pays the N-API call once.
 */
export type SumManyFn = (slab: Uint8Array, offs: Uint32Array, lens: Uint32Array, sums: Uint32Array, count: number) => void;

/** Reusable span lists for a SumManyFn: fill with add(), run, read sums[i]. */
export class ChecksumSpans {
  readonly offs: Uint32Array;
  readonly lens: Uint32Array;
  readonly sums: Uint32Array;
  count = 0;

  constructor(readonly capacity: number) {
    this.offs = new Uint32Array(capacity);
    this.lens = new Uint32Array(capacity);
    this.sums = new Uint32Array(capacity);
  }

  /** Adds a span with its initial sum; returns its index, or -1 when full. */
  add(off: number, len: number, initial: number): number {
    const i = this.count;
    if (i === this.capacity) return -1;
    this.offs[i] = off;
    this.lens[i] = len;
    this.sums[i] = initial;
    this.count = i + 1;
    return i;
  }

  run(sumMany: SumManyFn, slab: Uint8Array): void {
    if (this.count > 0) sumMany(slab, this.offs, this.lens, this.sums, this.count);
  }
}

export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** The IPv4 pseudo-header sum for a transport segment of `l4Len` bytes. */
export function pseudoHeaderSum(slab: Uint8Array, ipOff: number, protocol: number, l4Len: number): number {
  let sum = protocol + l4Len;
  for (let i = 12; i < 20; i += 2) sum += ((slab[ipOff + i] as number) << 8) | (slab[ipOff + i + 1] as number);
  return fold(sum);
}

/** Recomputes the header checksum of the IPv4 header at ipOff (length ihl bytes). */
export function writeIpv4HeaderChecksum(slab: Uint8Array, ipOff: number, ihl: number): void {
  slab[ipOff + 10] = 0;
  slab[ipOff + 11] = 0;
  let sum = 0;
  for (let i = 0; i < ihl; i += 2) sum += ((slab[ipOff + i] as number) << 8) | (slab[ipOff + i + 1] as number);
  const c = ~fold(sum) & 0xffff;
  slab[ipOff + 10] = c >>> 8;
  slab[ipOff + 11] = c & 0xff;
}
