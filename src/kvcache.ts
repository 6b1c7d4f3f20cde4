// KV cache: owns storage [B,H_kv,capacity,d], the valid length S and append. Kernels read the
// storage in place through `keys()` / `values()` (KvView with capacity); positions [0, S) are
// valid and every append fills the half-open range [S, S + n).
import type { KvView } from './attention.ts';
import { ShapeError } from './errors.ts';
import { expectAllocatable, expectDim, MAX_TENSOR_BYTES, expectObject, expectRank, expectShape } from './tensor.ts';
import type { Tensor } from './tensor.ts';

export interface KvCacheConfig {
  batch: number;
  numKvHeads: number;
  dK: number;
  dV: number;
  /**
   * Positions to reserve up front (default 16); storage doubles when full. Each of the K and V
   * storages [B,H_kv,capacity,d] must fit MAX_TENSOR_BYTES (2 GiB), here and when growing.
   */
  capacity?: number;
}

export class KvCache {
  readonly batch: number;
  readonly numKvHeads: number;
  readonly dK: number;
  readonly dV: number;
  private kData: Float32Array;
  private vData: Float32Array;
  private cap: number;
  private len = 0;

  constructor(config: KvCacheConfig) {
    expectObject('config', config);
    this.batch = expectDim('batch', config.batch);
    this.numKvHeads = expectDim('numKvHeads', config.numKvHeads);
    this.dK = expectDim('dK', config.dK);
    this.dV = expectDim('dV', config.dV);
    this.cap = expectDim('capacity', config.capacity ?? 16);
    this.kData = new Float32Array(this.storageSize('k', this.cap, this.dK));
    this.vData = new Float32Array(this.storageSize('v', this.cap, this.dV));
  }

  /** Valid positions S. */
  get length(): number {
    return this.len;
  }

  /** Positions stored per head before the next growth. */
  get capacity(): number {
    return this.cap;
  }

  /** Appends k [B,H_kv,n,d_k] and v [B,H_kv,n,d_v]; returns the half-open range [start, end) they now occupy. */
  append(k: Tensor, v: Tensor): { start: number; end: number } {
    const [, , n] = expectRank('k', k, ['B', 'H_kv', 'n', 'd_k']);
    expectShape('k', k, ['B', 'H_kv', 'n', 'd_k'], [this.batch, this.numKvHeads, n, this.dK]);
    expectShape('v', v, ['B', 'H_kv', 'n', 'd_v'], [this.batch, this.numKvHeads, n, this.dV]);
    const start = this.len, end = start + n;
    if (end > this.cap) this.grow(end);
    copyRows(k.data, n, this.kData, this.cap, start, this.batch * this.numKvHeads, this.dK);
    copyRows(v.data, n, this.vData, this.cap, start, this.batch * this.numKvHeads, this.dV);
    this.len = end;
    return { start, end };
  }

  /** Keys [B,H_kv,S,d_k], read in place (no copy); valid until the next append. */
  keys(): KvView {
    return { data: this.kData, shape: [this.batch, this.numKvHeads, this.len, this.dK], capacity: this.cap };
  }

  /** Values [B,H_kv,S,d_v], read in place (no copy); valid until the next append. */
  values(): KvView {
    return { data: this.vData, shape: [this.batch, this.numKvHeads, this.len, this.dV], capacity: this.cap };
  }

  /** Compact copies k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] of the first S positions (default all). */
  snapshot(S = this.len): { k: Tensor; v: Tensor } {
    expectDim('S', S, 0);
    if (S > this.len) throw new ShapeError(`Expected S <= cache length ${this.len}, got ${S}`);
    const heads = this.batch * this.numKvHeads;
    return {
      k: { data: compact(this.kData, this.cap, S, heads, this.dK), shape: [this.batch, this.numKvHeads, S, this.dK] },
      v: { data: compact(this.vData, this.cap, S, heads, this.dV), shape: [this.batch, this.numKvHeads, S, this.dV] },
    };
  }

  /** Rolls back to the first n positions (n <= length). */
  crop(n: number): void {
    expectDim('n', n, 0);
    if (n > this.len) throw new ShapeError(`Expected crop length <= cache length ${this.len}, got ${n}`);
    this.len = n;
  }

  /** Empties the cache; storage is kept for reuse. */
  reset(): void {
    this.len = 0;
  }

  private storageSize(name: string, capacity: number, d: number): number {
    return expectAllocatable(`${name} cache storage`, ['B', 'H_kv', 'capacity', name === 'k' ? 'd_k' : 'd_v'], [this.batch, this.numKvHeads, capacity, d]);
  }

  /** Storage for at least `needed` positions: double the capacity, capped at the size limit. */
  private grow(needed: number): void {
    const heads = this.batch * this.numKvHeads;
    const maxCap = Math.floor(MAX_TENSOR_BYTES / 4 / (heads * Math.max(this.dK, this.dV)));
    const capacity = Math.max(needed, Math.min(2 * this.cap, maxCap)); // over maxCap only when needed is: then storageSize throws
    const k = new Float32Array(this.storageSize('k', capacity, this.dK));
    const v = new Float32Array(this.storageSize('v', capacity, this.dV));
    copyRows(this.kData, this.len, k, capacity, 0, heads, this.dK, this.cap);
    copyRows(this.vData, this.len, v, capacity, 0, heads, this.dV, this.cap);
    this.kData = k;
    this.vData = v;
    this.cap = capacity;
  }
}

/** dst[head, at + i, :] = src[head, i, :] for i < n; src holds srcCap positions per head. */
function copyRows(src: Float32Array, n: number, dst: Float32Array, dstCap: number, at: number, heads: number, d: number, srcCap = n): void {
  for (let bh = 0; bh < heads; bh++) {
    dst.set(src.subarray(bh * srcCap * d, (bh * srcCap + n) * d), (bh * dstCap + at) * d);
  }
}

function compact(src: Float32Array, cap: number, S: number, heads: number, d: number): Float32Array {
  const out = new Float32Array(heads * S * d);
  copyRows(src, S, out, S, 0, heads, d, cap);
  return out;
}
