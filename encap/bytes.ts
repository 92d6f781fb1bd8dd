// Big-endian reads and writes on slabs, without allocation. One home for them: the codecs,
// the offload path and the node record all use these.

export function readU16(slab: Uint8Array, off: number): number {
  return ((slab[off] as number) << 8) | (slab[off + 1] as number);
}

export function readU32(slab: Uint8Array, off: number): number {
  return (((slab[off] as number) << 24) | ((slab[off + 1] as number) << 16) | ((slab[off + 2] as number) << 8) | (slab[off + 3] as number)) >>> 0;
}

export function writeU16(slab: Uint8Array, off: number, v: number): void {
  slab[off] = (v >>> 8) & 0xff;
  slab[off + 1] = v & 0xff;
}

export function writeU32(slab: Uint8Array, off: number, v: number): void {
  slab[off] = (v >>> 24) & 0xff;
  slab[off + 1] = (v >>> 16) & 0xff;
  slab[off + 2] = (v >>> 8) & 0xff;
  slab[off + 3] = v & 0xff;
}
