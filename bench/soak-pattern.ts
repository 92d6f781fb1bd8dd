// The byte sequence a soak stream carries: 32-bit words, word k = mix(k, key), little-endian.
// Every byte depends on its absolute offset in the stream, so a byte lost, duplicated,
// reordered or changed anywhere shows as a mismatch at the receiver.

/** murmur3's 32-bit finaliser: a cheap bijective mix. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The key of stream `streamId` in a soak run with seed `seed`. */
export function streamKey(seed: number, streamId: number): number {
  return fmix32(fmix32(seed >>> 0) ^ Math.imul(streamId + 1, 0x9e3779b9));
}

const TWO_32 = 2 ** 32;

/**
 * Fills `out` with the stream bytes at offsets [offset, offset + out.length). `scratch` must be
 * at least out.length + 8 bytes and 4-byte aligned (an ArrayBuffer-backed Uint32Array's buffer).
 */
export function fillPattern(key: number, offset: number, out: Uint8Array, scratch: Uint32Array): void {
  const firstWord = Math.floor(offset / 4);
  const words = Math.ceil((offset + out.length) / 4) - firstWord;
  if (scratch.length < words) throw new Error(`fillPattern: scratch of ${scratch.length} words, need ${words}`);
  let lo = firstWord % TWO_32;
  let hi = Math.floor(firstWord / TWO_32);
  let hiMix = fmix32(hi ^ key);
  for (let i = 0; i < words; i++) {
    scratch[i] = fmix32((lo ^ key ^ hiMix) >>> 0);
    lo++;
    if (lo === TWO_32) {
      lo = 0;
      hi++;
      hiMix = fmix32(hi ^ key);
    }
  }
  const bytes = new Uint8Array(scratch.buffer, scratch.byteOffset, words * 4);
  out.set(bytes.subarray(offset % 4, offset % 4 + out.length));
}

/** A generator and checker of one stream's bytes that reuses its buffers. */
export class Pattern {
  private scratch = new Uint32Array(0);
  private expected = Buffer.alloc(0);

  constructor(readonly key: number) {}

  /** The bytes at [offset, offset + length), in a buffer that is reused by the next call. */
  bytes(offset: number, length: number): Buffer {
    const words = Math.ceil(length / 4) + 2;
    if (this.scratch.length < words) this.scratch = new Uint32Array(Math.max(words, 4096));
    if (this.expected.length < length) this.expected = Buffer.alloc(Math.max(length, 16384));
    const out = this.expected.subarray(0, length);
    fillPattern(this.key, offset, out, this.scratch);
    return out;
  }

  /** How many bytes of `data`, read at stream offset `offset`, differ from the pattern. */
  mismatches(offset: number, data: Uint8Array): number {
    const want = this.bytes(offset, data.length);
    if (want.equals(data)) return 0;
    let n = 0;
    for (let i = 0; i < data.length; i++) if (want[i] !== data[i]) n++;
    return n;
  }
}
