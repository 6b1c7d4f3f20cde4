// KV cache: owns the key/value storage, appends chunks at absolute positions [length, length + n),
// and gives attention the parts to fold (`parts()`), each read in place. Three layouts:
//  - contiguous (default): k [B,H_kv,capacity,d_k], v [B,H_kv,capacity,d_v]; position s at slot s.
//  - ring (`window` W, optional `sinkTokens` N0): per head, N0 sink slots then R ring slots
//    (capacity = N0 + R). Positions [0, N0) sit at slots [0, N0) forever; the last `ringHeld`
//    positions >= N0 sit at slots N0 + (ringStart + j) % R, oldest first. After an append of n
//    the ring holds at least the last W + n - 1 positions (it grows, relinearising, for a bigger
//    chunk), which is what the chunk's queries can see under the window mask.
//  - paged (`pageSize` P): a pool of pages [pages,H_kv,P,d] shared by forks and selections
//    (refcounted, copy on write) and a block table [B,maxBlocks] per cache; batch row b's
//    position s is row s % P of page blockTable[b, s / P] (-1: no page). With `window` (paged
//    sliding window, vLLM-style): the sinks [0, N0) have a table of their own, and the table of
//    the positions >= N0 starts at `origin` (a position), dropping its leading pages (and moving
//    origin by whole pages) once the ring rule no longer needs them.
// Storage is of `dtype`: fp32 (Float32Array), fp16 / bf16 (Uint16Array bits), int8 (Int8Array,
// with fp32 scales [rows, ceil(d/32)]: element = q · scale of its row and group of 32 channels).
// Appends are encoded by the addon (kvEncode); keys are rotated first when `rope` is set.
// All batch rows share one length (ragged rows are masked by attention's kvRanges).
import { CACHE_DTYPES, NATIVE_DTYPE } from './attention.ts';
import type { CacheDtype, KvView } from './attention.ts';
import { ArgumentError, ShapeError } from './errors.ts';
import { bf16ToF32, f16ToF32 } from './io/npy.ts';
import { addon } from './native.ts';
import type { KvStorage } from './native.ts';
import { applyRope, resolveRope } from './rope.ts';
import type { ResolvedRope, RopeOptions } from './rope.ts';
import { expectAllocatable, expectDim, expectObject, expectOptions, expectRank, expectShape, MAX_TENSOR_BYTES, show } from './tensor.ts';
import type { Tensor } from './tensor.ts';

export interface KvCacheConfig {
  batch: number;
  numKvHeads: number;
  dK: number;
  dV: number;
  /**
   * Positions to reserve up front per batch row (default 16); storage doubles when full. With
   * `window`: the initial ring slots (default min(16, window); it grows to what the ring rule
   * needs; more than `window` leaves room to crop back). With `pageSize`: the initial pool, in
   * positions per row. Each storage (K and V) must fit MAX_TENSOR_BYTES (2 GiB, counted as 4
   * bytes an element).
   */
  capacity?: number;
  /** Storage type (default 'fp32'); appends are encoded on the way in, snapshot() decodes. */
  dtype?: CacheDtype;
  /** Sliding window W: keeps (at least) the last W positions (a ring buffer; paged: pages left of it released); parts carry `window: W`. */
  window?: number;
  /** StreamingLLM sink tokens (with `window`): positions [0, sinkTokens) are also kept forever. */
  sinkTokens?: number;
  /** Paged storage: pages of this many positions and a block table per batch row. */
  pageSize?: number;
  /** Keys are rotated on append at their absolute positions (or options.positions), once: cached rotated. */
  rope?: RopeOptions;
}

/** One run of positions to fold: keys/values read in place, at absolute positions [sOffset, sOffset + S). */
export interface KvPart {
  /** [B,H_kv,S,d_k] */
  k: KvView;
  /** [B,H_kv,S,d_v] */
  v: KvView;
  /** Absolute position of the part's row 0. */
  sOffset: number;
  /** Window mask for this part: the cache's window on ring parts, 0 (none) on the sink part; absent otherwise. */
  window?: number;
}

/** A cache's stored form: data [B,H_kv,S,d] of `dtype` (+ int8 scales [B,H_kv,S,ceil(d/32)]). */
export interface StoredTensor {
  data: KvStorage;
  shape: number[];
  dtype: CacheDtype;
  scale?: Float32Array;
}

export interface AppendOptions {
  /** [B,n] rope position ids of the new keys (default length + i for every row); needs `rope`. */
  positions?: Int32Array;
}

type Layout = 'contiguous' | 'ring' | 'paged';

/** Rows of d elements of one storage type (+ int8 scales [rows, groups]). */
interface Rows {
  readonly data: KvStorage;
  readonly scale: Float32Array | undefined;
  readonly d: number;
  readonly groups: number;
}

/** K or V storage: rows of d elements of one dtype (+ int8 scales [rows, ceil(d/32)]). */
class Store implements Rows {
  readonly data: KvStorage;
  readonly scale: Float32Array | undefined;
  readonly groups: number;

  /** `dims` (named `names`) multiply to the row count times d; checked against the size limit. */
  constructor(readonly dtype: CacheDtype, readonly d: number, name: string, names: readonly string[], dims: readonly number[]) {
    const n = expectAllocatable(name, names, dims);
    this.groups = Math.ceil(d / 32);
    this.data = dtype === 'fp32' ? new Float32Array(n) : dtype === 'int8' ? new Int8Array(n) : new Uint16Array(n);
    this.scale = dtype === 'int8' ? new Float32Array((n / d) * this.groups) : undefined;
  }

  /** Rows held. */
  get rows(): number {
    return this.data.length / this.d;
  }

  /** Encodes src [rows, d] fp32 into rows [0, rows) (the addon's kvEncode; fp32 is not encoded). */
  encode(src: Float32Array, rows: number): void {
    const d = this.d, scale = this.scale ? this.scale.subarray(0, rows * this.groups) : null;
    addon.kvEncode(NATIVE_DTYPE[this.dtype] as 'f16' | 'bf16' | 'i8', src, this.data.subarray(0, rows * d) as Uint16Array | Int8Array, scale, rows, d);
  }

  /** Copies rows [srcRow, srcRow + rows) of `src` (same dtype and d) to rows [row, row + rows). */
  copyFrom(src: Rows, srcRow: number, row: number, rows: number): void {
    if (rows <= 0) return;
    const d = this.d, g = this.groups;
    copyElements(this.data, row * d, src.data, srcRow * d, rows * d);
    if (this.scale && src.scale) copyElements(this.scale, row * g, src.scale, srcRow * g, rows * g);
  }

  /** Decodes rows [row, row + rows) to fp32 into out[outOff ..]. */
  decode(row: number, rows: number, out: Float32Array, outOff: number): void {
    if (rows <= 0) return;
    const d = this.d, bits = this.data.subarray(row * d, (row + rows) * d);
    if (this.dtype === 'fp32') out.set(bits as Float32Array, outOff);
    else if (this.dtype === 'fp16') out.set(f16ToF32(bits as Uint16Array), outOff);
    else if (this.dtype === 'bf16') out.set(bf16ToF32(bits as Uint16Array), outOff);
    else {
      const g = this.groups, scale = this.scale!;
      for (let r = 0; r < rows; r++)
        for (let i = 0; i < d; i++) out[outOff + r * d + i] = Math.fround(bits[r * d + i] * scale[(row + r) * g + (i >> 5)]);
    }
  }
}

/**
 * Pages [pages,H_kv,pageSize,d] for K and V, shared by a paged cache and its forks/selections.
 * refs[p] counts the block-table entries naming page p; free pages are a stack.
 */
class PagePool {
  k: Store;
  v: Store;
  refs: Int32Array;
  private free: Int32Array;
  private nFree: number;

  constructor(readonly dtype: CacheDtype, readonly Hkv: number, readonly pageSize: number, readonly dK: number, readonly dV: number, public pages: number) {
    this.k = this.store('k', dK, pages);
    this.v = this.store('v', dV, pages);
    this.refs = new Int32Array(pages);
    this.free = new Int32Array(pages);
    for (let i = 0; i < pages; i++) this.free[i] = pages - 1 - i; // taken lowest first
    this.nFree = pages;
  }

  private store(name: 'k' | 'v', d: number, pages: number): Store {
    return new Store(this.dtype, d, `${name} page pool`, ['pages', 'H_kv', 'pageSize', name === 'k' ? 'd_k' : 'd_v'], [pages, this.Hkv, this.pageSize, d]);
  }

  /** Makes at least n pages free, doubling the pool (capped at the size limit) when short. */
  reserve(n: number): void {
    if (n <= this.nFree) return;
    const perPage = this.Hkv * this.pageSize * Math.max(this.dK, this.dV);
    const maxPages = Math.floor(MAX_TENSOR_BYTES / 4 / perPage);
    const need = this.pages + n - this.nFree;
    const pages = Math.max(need, Math.min(2 * this.pages, maxPages)); // over maxPages only when need is: store() throws
    const k = this.store('k', this.dK, pages), v = this.store('v', this.dV, pages);
    const rows = this.pages * this.Hkv * this.pageSize;
    k.copyFrom(this.k, 0, 0, rows);
    v.copyFrom(this.v, 0, 0, rows);
    const refs = new Int32Array(pages), free = new Int32Array(pages);
    refs.set(this.refs);
    free.set(this.free.subarray(0, this.nFree));
    let nFree = this.nFree;
    for (let p = pages - 1; p >= this.pages; p--) free[nFree++] = p;
    [this.k, this.v, this.refs, this.free, this.nFree, this.pages] = [k, v, refs, free, nFree, pages];
  }

  /** A free page with one reference (reserve first). */
  take(): number {
    const p = this.free[--this.nFree];
    this.refs[p] = 1;
    return p;
  }

  release(p: number): void {
    if (--this.refs[p] === 0) this.free[this.nFree++] = p;
  }

  /** Copies page `src` (all heads and rows) to page `dst`. */
  copyPage(src: number, dst: number): void {
    const rows = this.Hkv * this.pageSize;
    this.k.copyFrom(this.k, src * rows, dst * rows, rows);
    this.v.copyFrom(this.v, src * rows, dst * rows, rows);
  }
}

/**
 * A run of a paged cache's positions [lo, hi) with its own block table: position origin + r of
 * batch row b is row r % P of page table[b, r / P] (-1: none). origin starts at lo; a window
 * segment moves it by whole pages as it drops leading pages.
 */
interface Segment {
  readonly lo: number;
  readonly hi: number;
  origin: number;
  /** [B, maxBlocks] */
  table: Int32Array;
  maxBlocks: number;
  /** reorder's second table (same size), kept for the next reorder. */
  spare?: Int32Array;
}

/** A paged cache's tables, held apart so a collected cache can return its pages. */
interface Blocks {
  pool: PagePool;
  segs: Segment[];
}

const pageReturn = new FinalizationRegistry<Blocks>((blocks) => {
  for (const seg of blocks.segs) for (const p of seg.table) if (p >= 0) blocks.pool.release(p);
});

const DTYPE_LIST = CACHE_DTYPES.map((x) => `'${x}'`).join(', ');
const MAX_POSITION = 2 ** 31 - 1;

export class KvCache {
  readonly batch: number;
  readonly numKvHeads: number;
  readonly dK: number;
  readonly dV: number;
  readonly dtype: CacheDtype;
  /** Sliding window W (0: none). */
  readonly window: number;
  readonly sinkTokens: number;
  /** Page size (0: not paged). */
  readonly pageSize: number;
  readonly rope: ResolvedRope | undefined;
  private readonly layout: Layout;
  private readonly config: KvCacheConfig;
  // Contiguous and ring: K, V storage [B,H_kv,slots,d]; `spare` stores are reorder's second buffer.
  private k!: Store;
  private v!: Store;
  private spare: { k: Store; v: Store } | undefined;
  private slots = 0;
  private len = 0;
  // Ring: R = slots - sinkTokens ring slots.
  private ringStart = 0;
  private ringHeld = 0;
  // Paged: one segment [0, inf), or with a window the sinks [0, N0) (when N0 > 0) and [N0, inf).
  private blocks!: Blocks;
  // Rotated keys of the last append [B,H_kv,n,d_k] (rope only), reused while n fits.
  private ropeBuf: Float32Array | undefined;
  private ropeIds: Int32Array | undefined;
  // Encoded chunk rows [B·H_kv·n, d] for K and V (non-fp32 only), reused while n fits.
  private readonly chunkBuf: [Store | undefined, Store | undefined] = [undefined, undefined];

  /** `pool` is internal (forks and selections of a paged cache share it); callers leave it out. */
  constructor(config: KvCacheConfig, pool?: PagePool) {
    expectObject('config', config);
    this.config = { ...config };
    this.batch = expectDim('batch', config.batch);
    this.numKvHeads = expectDim('numKvHeads', config.numKvHeads);
    this.dK = expectDim('dK', config.dK);
    this.dV = expectDim('dV', config.dV);
    const dtype = config.dtype ?? 'fp32';
    if (!CACHE_DTYPES.includes(dtype)) throw new ArgumentError(`Expected dtype to be one of ${DTYPE_LIST}, got ${show(dtype)}`);
    this.dtype = dtype;
    this.window = config.window === undefined ? 0 : expectDim('window', config.window);
    this.sinkTokens = config.sinkTokens === undefined ? 0 : expectDim('sinkTokens', config.sinkTokens, 0);
    this.pageSize = config.pageSize === undefined ? 0 : expectDim('pageSize', config.pageSize);
    const capacity = expectDim('capacity', config.capacity ?? (this.window ? Math.min(16, this.window) : 16));
    if (this.sinkTokens > 0 && !this.window) {
      throw new ArgumentError(`Expected sinkTokens only with a window (sinks plus the last window positions), got sinkTokens=${this.sinkTokens} and window ${show(config.window)}`);
    }
    this.rope = config.rope === undefined ? undefined : resolveRope(config.rope, this.dK);
    this.layout = this.pageSize ? 'paged' : this.window ? 'ring' : 'contiguous';
    if (this.layout === 'paged') {
      const P = this.pageSize, N0 = this.sinkTokens, blocks = Math.ceil(capacity / P);
      const segs = [this.newSegment(N0, Infinity, blocks)];
      if (N0 > 0) segs.unshift(this.newSegment(0, N0, Math.ceil(N0 / P)));
      const pages = this.batch * segs.reduce((a, g) => a + g.maxBlocks, 0);
      this.blocks = { pool: pool ?? new PagePool(dtype, this.numKvHeads, P, this.dK, this.dV, pages), segs };
      pageReturn.register(this, this.blocks);
    } else {
      this.slots = this.sinkTokens + capacity;
      [this.k, this.v] = this.newStores(this.slots);
    }
  }

  /** Positions appended so far: the next absolute position. */
  get length(): number {
    return this.len;
  }

  /**
   * Positions stored per head before the next growth (ring: sink + ring slots; paged: blocks ·
   * pageSize of its tables).
   */
  get capacity(): number {
    return this.layout === 'paged' ? this.blocks.segs.reduce((a, g) => a + g.maxBlocks, 0) * this.pageSize : this.slots;
  }

  /** Positions held (readable by parts()): length, or for a window cache the sinks plus the window's positions. */
  get held(): number {
    if (this.layout === 'ring') return Math.min(this.len, this.sinkTokens) + this.ringHeld;
    if (this.layout === 'paged') return this.blocks.segs.reduce((a, g) => a + this.segRows(g), 0);
    return this.len;
  }

  /** Positions segment g holds: [origin, min(length, hi)). */
  private segRows(g: Segment): number {
    return Math.max(0, Math.min(this.len, g.hi) - g.origin);
  }

  /**
   * Appends k [B,H_kv,n,d_k] and v [B,H_kv,n,d_v] at absolute positions [length, length + n);
   * returns that range. With `rope`, the keys are rotated at those positions (or at
   * options.positions [B,n]) before they are stored. A rejected call leaves the cache unchanged.
   */
  append(k: Tensor, v: Tensor, options?: AppendOptions): { start: number; end: number } {
    const [, , n] = expectRank('k', k, ['B', 'H_kv', 'n', 'd_k']);
    expectShape('k', k, ['B', 'H_kv', 'n', 'd_k'], [this.batch, this.numKvHeads, n, this.dK]);
    expectShape('v', v, ['B', 'H_kv', 'n', 'd_v'], [this.batch, this.numKvHeads, n, this.dV]);
    const o = expectOptions('options', options);
    const start = this.len, end = start + n;
    if (end > MAX_POSITION) throw new ShapeError(`Expected length + n <= ${MAX_POSITION} (32-bit positions), got ${start} + ${n}`);
    if (o.positions !== undefined) {
      if (!this.rope) throw new ArgumentError('Expected options.positions only for a cache with rope, got positions and no rope config');
      if (!(o.positions instanceof Int32Array) || o.positions.length !== this.batch * n) {
        throw new ShapeError(`Expected options.positions shape [B,n]=[${this.batch},${n}] (${this.batch * n} elements) as an Int32Array, got ${show(o.positions)}`);
      }
    }
    const keys = this.rope ? this.rotate(k, o.positions ?? start) : k;
    // The chunk encoded once (one addon call each for K and V), then copied into place.
    const rows = this.batch * this.numKvHeads * n;
    const ke = this.encoded(0, keys.data, this.dK, rows), ve = this.encoded(1, v.data, this.dV, rows);
    if (this.layout === 'contiguous') this.appendContiguous(ke, ve, n);
    else if (this.layout === 'ring') this.appendRing(ke, ve, n);
    else this.appendPaged(ke, ve, n);
    this.len = end;
    return { start, end };
  }

  /**
   * The one rope call site: k [B,H_kv,n,d_k] rotated at position ids [B,n] (default start + i)
   * into the cache's buffers (reused: a decode step allocates nothing).
   */
  private rotate(k: Tensor, positions: number | Int32Array): Tensor {
    const n = k.shape[2], size = this.batch * this.numKvHeads * n * this.dK;
    if (!this.ropeBuf || this.ropeBuf.length < size) this.ropeBuf = new Float32Array(expectAllocatable('rotated keys', ['B', 'H_kv', 'n', 'd_k'], k.shape));
    let ids = positions;
    if (typeof ids === 'number') {
      if (!this.ropeIds || this.ropeIds.length < this.batch * n) this.ropeIds = new Int32Array(this.batch * n);
      ids = this.ropeIds.subarray(0, this.batch * n);
      for (let b = 0; b < this.batch; b++) for (let i = 0; i < n; i++) ids[b * n + i] = (positions as number) + i;
    }
    return applyRope(k, ids, this.rope!, { data: this.ropeBuf.subarray(0, size), shape: k.shape });
  }

  /**
   * src [rows, d] in the storage type: fp32 as it is; else encoded into the cache's chunk buffer
   * `which` (0: K, 1: V), reused while it is big enough.
   */
  private encoded(which: 0 | 1, src: Float32Array, d: number, rows: number): Rows {
    if (this.dtype === 'fp32') return { data: src, scale: undefined, d, groups: Math.ceil(d / 32) };
    let buf = this.chunkBuf[which];
    if (!buf || buf.rows < rows) buf = this.chunkBuf[which] = new Store(this.dtype, d, `${which ? 'v' : 'k'} chunk`, ['B·H_kv·n', which ? 'd_v' : 'd_k'], [rows, d]);
    buf.encode(src, rows);
    return buf;
  }

  private appendContiguous(k: Rows, v: Rows, n: number): void {
    const end = this.len + n;
    if (end > this.slots) this.regrow(Math.max(end, Math.min(2 * this.slots, this.maxSlots())), this.len);
    for (let bh = 0; bh < this.batch * this.numKvHeads; bh++) {
      this.k.copyFrom(k, bh * n, bh * this.slots + this.len, n);
      this.v.copyFrom(v, bh * n, bh * this.slots + this.len, n);
    }
  }

  private appendRing(k: Rows, v: Rows, n: number): void {
    const N0 = this.sinkTokens, W = this.window, end = this.len + n;
    const nSink = Math.max(0, Math.min(n, N0 - this.len)), m = n - nSink;
    // The ring rule: hold the last min(ring positions, W + n - 1).
    const need = Math.min(Math.max(0, end - N0), W + n - 1);
    let R = this.slots - N0;
    if (need > R) {
      const slots = N0 + Math.max(need, Math.min(2 * R, W + n - 1, this.maxSlots() - N0));
      this.regrow(slots, Math.min(this.ringHeld, slots - N0 - m)); // keep what this append will not overwrite
      R = this.slots - N0;
    }
    const a = (this.ringStart + this.ringHeld) % R, m1 = Math.min(m, R - a); // m <= R: no slot written twice
    for (let bh = 0; bh < this.batch * this.numKvHeads; bh++) {
      const row = bh * this.slots, src = bh * n;
      this.k.copyFrom(k, src, row + this.len, nSink);
      this.v.copyFrom(v, src, row + this.len, nSink);
      this.k.copyFrom(k, src + nSink, row + N0 + a, m1);
      this.v.copyFrom(v, src + nSink, row + N0 + a, m1);
      this.k.copyFrom(k, src + nSink + m1, row + N0, m - m1);
      this.v.copyFrom(v, src + nSink + m1, row + N0, m - m1);
    }
    this.ringHeld += m;
    if (this.ringHeld > R) {
      this.ringStart = (this.ringStart + this.ringHeld - R) % R;
      this.ringHeld = R;
    }
  }

  private appendPaged(k: Rows, v: Rows, n: number): void {
    const P = this.pageSize, start = this.len, end = start + n, B = this.batch, Hkv = this.numKvHeads;
    const { pool, segs } = this.blocks;
    // Window: the leading blocks of the last segment wholly before the last W + n - 1 positions
    // (the ring rule) are released, their pages free for this append to reuse.
    const last = segs[segs.length - 1];
    const drop = this.window ? Math.max(0, Math.floor((end - (this.window + n - 1) - last.origin) / P)) : 0;
    // The references the drop removes, per page, and the pages it frees.
    const dropped = new Map<number, number>();
    for (let b = 0; b < B && drop > 0; b++)
      for (let j = 0; j < drop; j++) {
        const p = last.table[b * last.maxBlocks + j];
        if (p >= 0) dropped.set(p, (dropped.get(p) ?? 0) + 1);
      }
    let freed = 0;
    for (const [p, c] of dropped) if (pool.refs[p] === c) freed++;
    // Pages to take after the drop: missing blocks and shared ones (copy on write). The tables
    // are grown and the pool reserved before anything changes (either may throw, and a refused
    // append leaves the cache as it was); releasing and writing cannot fail.
    let want = 0;
    for (const g of segs) {
      const p0 = Math.max(start, g.lo), p1 = Math.min(end, g.hi);
      if (p0 >= p1) continue;
      const shift = g === last ? drop : 0, origin = g.origin + shift * P;
      const j0 = Math.floor((p0 - origin) / P), j1 = Math.ceil((p1 - origin) / P);
      if (j1 > g.maxBlocks) this.growTable(g, Math.max(j1, 2 * g.maxBlocks));
      for (let b = 0; b < B; b++)
        for (let j = j0; j < j1; j++) {
          const p = j + shift < g.maxBlocks ? g.table[b * g.maxBlocks + j + shift] : -1;
          if (p < 0 || pool.refs[p] - (dropped.get(p) ?? 0) > 1) want++;
        }
    }
    pool.reserve(Math.max(0, want - freed));
    if (drop > 0) this.dropLeading(last, drop);
    for (const g of segs) {
      const p0 = Math.max(start, g.lo), p1 = Math.min(end, g.hi);
      if (p0 >= p1) continue;
      const table = g.table, mb = g.maxBlocks;
      for (let b = 0; b < B; b++)
        for (let j = Math.floor((p0 - g.origin) / P); g.origin + j * P < p1; j++) {
          const at = b * mb + j;
          let p = table[at];
          if (p < 0) p = table[at] = pool.take();
          else if (pool.refs[p] > 1) {
            const q = pool.take();
            pool.copyPage(p, q);
            pool.release(p);
            p = table[at] = q;
          }
          const base = g.origin + j * P, s0 = Math.max(p0, base), s1 = Math.min(p1, base + P);
          for (let h = 0; h < Hkv; h++) {
            const row = (p * Hkv + h) * P + (s0 - base), src = (b * Hkv + h) * n + (s0 - start);
            pool.k.copyFrom(k, src, row, s1 - s0);
            pool.v.copyFrom(v, src, row, s1 - s0);
          }
        }
    }
  }

  /**
   * What attention must fold, in position order: one part (contiguous, paged), or for a window
   * cache the sink part (window 0) and one or two window parts (window W; paged: one). Views
   * read the storage in place and are valid until this cache's next append, crop, reorder or
   * reset (forks and selections never write into pages this cache reads). Empty cache: no parts.
   */
  parts(): KvPart[] {
    if (this.len === 0) return [];
    if (this.layout === 'contiguous') return [{ k: this.view(this.k, 0, this.len), v: this.view(this.v, 0, this.len), sOffset: 0 }];
    if (this.layout === 'paged') {
      const pool = this.blocks.pool, parts: KvPart[] = [];
      for (const g of this.blocks.segs) {
        const S = this.segRows(g);
        if (S === 0) continue;
        const cap = g.maxBlocks * this.pageSize, pages = { pageSize: this.pageSize, blockTable: g.table };
        const view = (s: Store, d: number): KvView => ({ data: s.data, shape: [this.batch, this.numKvHeads, S, d], capacity: cap, dtype: this.dtype, pages, ...(s.scale ? { scale: s.scale } : {}) });
        const part: KvPart = { k: view(pool.k, this.dK), v: view(pool.v, this.dV), sOffset: g.origin };
        if (this.window) part.window = g.hi === Infinity ? this.window : 0;
        parts.push(part);
      }
      return parts;
    }
    const N0 = this.sinkTokens, R = this.slots - N0, parts: KvPart[] = [];
    const sinks = Math.min(this.len, N0);
    if (sinks > 0) parts.push({ k: this.view(this.k, 0, sinks), v: this.view(this.v, 0, sinks), sOffset: 0, window: 0 });
    const n1 = Math.min(this.ringHeld, R - this.ringStart), n2 = this.ringHeld - n1, first = this.len - this.ringHeld;
    if (n1 > 0) parts.push({ k: this.view(this.k, N0 + this.ringStart, n1), v: this.view(this.v, N0 + this.ringStart, n1), sOffset: first, window: this.window });
    if (n2 > 0) parts.push({ k: this.view(this.k, N0, n2), v: this.view(this.v, N0, n2), sOffset: first + n1, window: this.window });
    return parts;
  }

  private view(s: Store, start: number, S: number): KvView {
    const view: { -readonly [K in keyof KvView]: KvView[K] } = { data: s.data, shape: [this.batch, this.numKvHeads, S, s.d], capacity: this.slots };
    if (start) view.start = start;
    if (this.dtype !== 'fp32') view.dtype = this.dtype;
    if (s.scale) view.scale = s.scale;
    return view;
  }

  /** Keys [B,H_kv,S,d_k] of a contiguous cache, read in place; valid until the next append. */
  keys(): KvView {
    this.expectContiguous('keys()');
    return this.view(this.k, 0, this.len);
  }

  /** Values [B,H_kv,S,d_v] of a contiguous cache, read in place; valid until the next append. */
  values(): KvView {
    this.expectContiguous('values()');
    return this.view(this.v, 0, this.len);
  }

  private expectContiguous(what: string): void {
    if (this.layout !== 'contiguous') throw new ArgumentError(`Expected a contiguous cache for ${what}, got a ${this.layout} cache (fold parts(), or state.updateCache(cache))`);
  }

  /**
   * fp32 copies k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] of the first S held positions in position
   * order (default all held: a ring's sinks, then its ring positions oldest first), decoded.
   */
  snapshot(S = this.held): { k: Tensor; v: Tensor } {
    this.expectHeld(S);
    const B = this.batch, Hkv = this.numKvHeads;
    const k = new Float32Array(expectAllocatable('k snapshot', ['B', 'H_kv', 'S', 'd_k'], [B, Hkv, S, this.dK]));
    const v = new Float32Array(expectAllocatable('v snapshot', ['B', 'H_kv', 'S', 'd_v'], [B, Hkv, S, this.dV]));
    this.forEachRun(S, (ks, vs, row, rows, at) => {
      ks.decode(row, rows, k, at * this.dK);
      vs.decode(row, rows, v, at * this.dV);
    });
    return { k: { data: k, shape: [B, Hkv, S, this.dK] }, v: { data: v, shape: [B, Hkv, S, this.dV] } };
  }

  /**
   * The stored form of the first S held positions in position order (as snapshot(), not
   * decoded): k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] in the cache's dtype (fp16 / bf16 as Uint16Array
   * bits), with int8 scales [B,H_kv,S,ceil(d/32)].
   */
  storedSnapshot(S = this.held): { k: StoredTensor; v: StoredTensor } {
    this.expectHeld(S);
    const dims = [this.batch, this.numKvHeads, S];
    const k = new Store(this.dtype, this.dK, 'k snapshot', ['B', 'H_kv', 'S', 'd_k'], [...dims, this.dK]);
    const v = new Store(this.dtype, this.dV, 'v snapshot', ['B', 'H_kv', 'S', 'd_v'], [...dims, this.dV]);
    this.forEachRun(S, (ks, vs, row, rows, at) => {
      k.copyFrom(ks, row, at, rows);
      v.copyFrom(vs, row, at, rows);
    });
    const out = (x: Store, d: number): StoredTensor => ({ data: x.data, shape: [...dims, d], dtype: this.dtype, ...(x.scale ? { scale: x.scale } : {}) });
    return { k: out(k, this.dK), v: out(v, this.dV) };
  }

  private expectHeld(S: number): void {
    expectDim('S', S, 0);
    if (S > this.held) throw new ShapeError(`Expected S <= positions held ${this.held}, got ${S}`);
  }

  /**
   * Calls fn for the runs of stored rows holding the first S held positions of every head, in
   * position order: rows [row, row + rows) of stores (ks, vs) go to output row `at` of
   * [B·H_kv·S] rows.
   */
  private forEachRun(S: number, fn: (ks: Store, vs: Store, row: number, rows: number, at: number) => void): void {
    const Hkv = this.numKvHeads, parts = this.layout === 'paged' ? [] : this.parts();
    for (let b = 0; b < this.batch; b++)
      for (let h = 0; h < Hkv; h++) {
        const bh = b * Hkv + h;
        let at = 0;
        const run = (ks: Store, vs: Store, row: number, rows: number) => {
          rows = Math.min(rows, S - at);
          if (rows > 0) fn(ks, vs, row, rows, bh * S + at);
          at += rows;
        };
        if (this.layout === 'paged') {
          const pool = this.blocks.pool, P = this.pageSize;
          for (const g of this.blocks.segs)
            for (let j = 0, left = this.segRows(g); left > 0; j++, left -= P) run(pool.k, pool.v, (g.table[b * g.maxBlocks + j] * Hkv + h) * P, Math.min(P, left));
        } else for (const part of parts) run(this.k, this.v, bh * this.slots + (part.k.start ?? 0), part.k.shape[2]);
      }
  }

  /**
   * Rolls back to the first n positions (n <= length): appending again then equals never having
   * appended past n. A ring cache must still hold the window - 1 positions before n that the
   * next queries can see (or every position since the sinks, if none was overwritten).
   */
  crop(n: number): void {
    expectDim('n', n, 0);
    if (n > this.len) throw new ShapeError(`Expected crop length <= cache length ${this.len}, got ${n}`);
    if (this.window) {
      const N0 = this.sinkTokens, first = this.layout === 'ring' ? this.len - this.ringHeld : this.blocks.segs[this.blocks.segs.length - 1].origin;
      const lowest = first > N0 ? Math.min(this.len, first + this.window - 1) : 0;
      if (n < lowest) {
        throw new ShapeError(
          `Expected crop length n >= ${lowest} for this window cache (it holds positions [${first}, ${this.len}) after ${N0} sinks, ` +
            `and the next queries see the ${this.window - 1} positions before n), got ${n}; ${this.layout === 'ring' ? 'give it capacity > window' : 'append drafts as one chunk'} to crop further back`,
        );
      }
      if (this.layout === 'ring') {
        this.ringHeld = Math.max(0, n - Math.max(first, N0));
        if (this.ringHeld === 0) this.ringStart = 0;
      }
    }
    if (this.layout === 'paged') for (const g of this.blocks.segs) this.dropBlocks(g, Math.max(0, Math.ceil((n - g.origin) / this.pageSize)));
    this.len = n;
  }

  /** Empties the cache; storage is kept for reuse (a paged cache returns its pages to the pool). */
  reset(): void {
    if (this.layout === 'paged') {
      for (const g of this.blocks.segs) {
        this.dropBlocks(g, 0);
        g.origin = g.lo;
      }
    }
    this.len = this.ringStart = this.ringHeld = 0;
  }

  /** Releases every page of blocks >= j0 of every row of segment g. */
  private dropBlocks(g: Segment, j0: number): void {
    const { pool } = this.blocks, table = g.table;
    for (let b = 0; b < this.batch; b++)
      for (let j = j0; j < g.maxBlocks; j++) {
        const at = b * g.maxBlocks + j;
        if (table[at] >= 0) pool.release(table[at]);
        table[at] = -1;
      }
  }

  /** Releases the first `count` blocks of every row of segment g and shifts the rest down; origin moves with them. */
  private dropLeading(g: Segment, count: number): void {
    const { pool } = this.blocks, table = g.table, mb = g.maxBlocks;
    for (let b = 0; b < this.batch; b++) {
      const row = b * mb;
      for (let j = 0; j < count; j++) if (table[row + j] >= 0) pool.release(table[row + j]);
      table.copyWithin(row, row + count, row + mb);
      table.fill(-1, row + mb - count, row + mb);
    }
    g.origin += count * this.pageSize;
  }

  /**
   * Beam reorder in place: batch row b <- old row indices[b] (indices [B], rows may repeat).
   * Paged: block-table rows are remapped (pages shared, copied on the next write); otherwise the
   * rows are copied (through a second buffer kept for the next reorder).
   */
  reorder(indices: readonly number[] | Int32Array): void {
    const idx = this.expectIndices('indices', indices, this.batch);
    if (this.layout === 'paged') {
      const { pool } = this.blocks;
      for (const g of this.blocks.segs) {
        const table = g.table, mb = g.maxBlocks;
        const next = g.spare?.length === table.length ? g.spare : new Int32Array(table.length);
        for (let b = 0; b < this.batch; b++) next.set(table.subarray(idx[b] * mb, (idx[b] + 1) * mb), b * mb);
        for (const p of next) if (p >= 0) pool.refs[p]++;
        for (const p of table) if (p >= 0) pool.release(p);
        [g.spare, g.table] = [table, next];
      }
      return;
    }
    const spare = this.spare ? [this.spare.k, this.spare.v] : this.newStores(this.slots);
    const rows = this.layout === 'ring' ? this.slots : this.len;
    copyBatchRows(this.k, spare[0], idx, this.numKvHeads, this.slots, this.slots, rows);
    copyBatchRows(this.v, spare[1], idx, this.numKvHeads, this.slots, this.slots, rows);
    this.spare = { k: this.k, v: this.v };
    [this.k, this.v] = spare;
  }

  /**
   * A new cache of batch indices.length whose row b is this cache's row indices[b] (batch select,
   * or repeat for beams: [0,0,0,1,1,1]). Paged: shares the pages (copy on write).
   */
  select(indices: readonly number[] | Int32Array): KvCache {
    const idx = this.expectIndices('indices', indices);
    const B = idx.length;
    if (this.layout === 'paged') {
      const { pool, segs } = this.blocks;
      const c = new KvCache({ ...this.config, batch: B, capacity: segs[segs.length - 1].maxBlocks * this.pageSize }, pool);
      for (const [i, g] of segs.entries()) {
        const cg = c.blocks.segs[i], mb = g.maxBlocks;
        if (cg.maxBlocks !== mb) [cg.table, cg.maxBlocks] = [c.newTable(mb), mb];
        for (let b = 0; b < B; b++) cg.table.set(g.table.subarray(idx[b] * mb, (idx[b] + 1) * mb), b * mb);
        for (const p of cg.table) if (p >= 0) pool.refs[p]++;
        cg.origin = g.origin;
      }
      c.len = this.len;
      return c;
    }
    const c = new KvCache({ ...this.config, batch: B, capacity: this.slots - this.sinkTokens });
    const rows = this.layout === 'ring' ? this.slots : this.len;
    copyBatchRows(this.k, c.k, idx, this.numKvHeads, this.slots, c.slots, rows);
    copyBatchRows(this.v, c.v, idx, this.numKvHeads, this.slots, c.slots, rows);
    [c.len, c.ringStart, c.ringHeld] = [this.len, this.ringStart, this.ringHeld];
    return c;
  }

  /** An independent copy (paged: sharing every page until one side writes to it). */
  fork(): KvCache {
    return this.select(Array.from({ length: this.batch }, (_, b) => b));
  }

  private expectIndices(name: string, indices: readonly number[] | Int32Array, length?: number): readonly number[] | Int32Array {
    if (!Array.isArray(indices) && !(indices instanceof Int32Array)) throw new ArgumentError(`Expected ${name} to be an array of batch rows, got ${show(indices)}`);
    if (length !== undefined && indices.length !== length) throw new ShapeError(`Expected ${name} shape [B]=[${length}] (one source row per batch row), got ${indices.length} elements`);
    if (indices.length === 0) throw new ShapeError(`Expected ${name} to name at least one batch row, got 0 elements`);
    for (let i = 0; i < indices.length; i++) {
      const x = indices[i];
      if (!Number.isInteger(x) || x < 0 || x >= this.batch) throw new ArgumentError(`Expected ${name}[${i}] to be a batch row in [0, ${this.batch}), got ${show(x)}`);
    }
    return indices;
  }

  private newStores(slots: number): [Store, Store] {
    const dims = [this.batch, this.numKvHeads, slots];
    return [
      new Store(this.dtype, this.dK, 'k cache storage', ['B', 'H_kv', 'capacity', 'd_k'], [...dims, this.dK]),
      new Store(this.dtype, this.dV, 'v cache storage', ['B', 'H_kv', 'capacity', 'd_v'], [...dims, this.dV]),
    ];
  }

  /** Largest slots per head the size limit allows. */
  private maxSlots(): number {
    return Math.floor(MAX_TENSOR_BYTES / 4 / (this.batch * this.numKvHeads * Math.max(this.dK, this.dV)));
  }

  /**
   * New storage of `slots` per head: contiguous copies the first `keep` slots; a ring copies its
   * sinks and its newest `keep` ring positions, oldest first from slot N0 (relinearised).
   */
  private regrow(slots: number, keep: number): void {
    const [k, v] = this.newStores(slots); // throws past the size limit, before anything changes
    const heads = this.batch * this.numKvHeads, N0 = this.sinkTokens, R = this.slots - N0;
    for (let bh = 0; bh < heads; bh++) {
      const from = bh * this.slots, to = bh * slots;
      if (this.layout === 'contiguous') {
        k.copyFrom(this.k, from, to, keep);
        v.copyFrom(this.v, from, to, keep);
        continue;
      }
      const first = (this.ringStart + this.ringHeld - keep) % R, n1 = Math.min(keep, R - first);
      for (const [dst, src] of [[k, this.k], [v, this.v]] as const) {
        dst.copyFrom(src, from, to, Math.min(this.len, N0));
        dst.copyFrom(src, from + N0 + first, to + N0, n1);
        dst.copyFrom(src, from + N0, to + N0 + n1, keep - n1);
      }
    }
    [this.k, this.v, this.slots, this.spare] = [k, v, slots, undefined];
    if (this.layout === 'ring') [this.ringStart, this.ringHeld] = [0, keep];
  }

  private newTable(maxBlocks: number): Int32Array {
    return new Int32Array(expectAllocatable('block table', ['B', 'maxBlocks'], [this.batch, maxBlocks])).fill(-1);
  }

  private newSegment(lo: number, hi: number, maxBlocks: number): Segment {
    return { lo, hi, origin: lo, table: this.newTable(maxBlocks), maxBlocks };
  }

  private growTable(g: Segment, maxBlocks: number): void {
    const table = this.newTable(maxBlocks), mb = g.maxBlocks;
    for (let b = 0; b < this.batch; b++) table.set(g.table.subarray(b * mb, (b + 1) * mb), b * maxBlocks);
    [g.table, g.maxBlocks, g.spare] = [table, maxBlocks, undefined];
  }
}

/** dst row b <- src row idx[b]: per head, the first `rows` of each head's slots. */
function copyBatchRows(src: Store, dst: Store, idx: readonly number[] | Int32Array, Hkv: number, srcSlots: number, dstSlots: number, rows: number): void {
  for (let b = 0; b < idx.length; b++)
    for (let h = 0; h < Hkv; h++) dst.copyFrom(src, (idx[b] * Hkv + h) * srcSlots, (b * Hkv + h) * dstSlots, rows);
}

/**
 * dst[at, at + n) = src[from, from + n) for typed arrays of one kind: a plain loop for short
 * runs (a decode step's rows: no view objects), set() on views for long ones.
 */
function copyElements(dst: KvStorage, at: number, src: KvStorage, from: number, n: number): void {
  if (n <= 256) for (let i = 0; i < n; i++) dst[at + i] = src[from + i];
  else (dst as Float32Array).set((src as Float32Array).subarray(from, from + n), at);
}
