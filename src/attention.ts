// Scaled dot-product attention over per-head tensors, on the native online-softmax kernels.
//   q [B,H,T,d_k], k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] -> output [B,H,T,d_v], lse [B,H,T]
// Query head h reads key/value head floor(h / (H / H_kv)).
import { ArgumentError, KvstreamError, NativeError, ShapeError } from './errors.ts';
import { addon, packDims } from './native.ts';
import type { KvDtype, KvStorage, NativeOpts } from './native.ts';
import { applyRope, positionIds, resolveRope } from './rope.ts';
import type { ResolvedRope, RopeOptions } from './rope.ts';
import { alloc, expectDim, expectDisjoint, expectFlag, expectNumber, expectObject, expectOptions, expectRank, expectSeed, expectShape, Scratch, show } from './tensor.ts';
import type { Tensor } from './tensor.ts';

/** Dropout on probabilities; the keep bits are Philox4x32-10 keyed by (seed, b, h, t_abs, s_abs). */
export interface Dropout {
  /** Drop probability in [0, 1). */
  p: number;
  /** Integer in [0, 2^53). */
  seed: number;
}

/**
 * Score modifiers and ragged-batch options (docs/semantics.md), shared by attention(),
 * OnlineSoftmaxState, MultiHeadAttention.forward and the operators. Positions are absolute.
 */
export interface ScoreOptions {
  /** Logit softcap: the scaled score s becomes cap · tanh(s / cap) (Gemma 2), first. */
  softcap?: number;
  /** ALiBi: s -= slope_h · |t_abs - s_abs|; `true` for alibiSlopes(H), or [H] slopes. */
  alibi?: boolean | Float32Array | readonly number[];
  /** Sliding window W: query t_abs sees key s_abs only if t_abs - W < s_abs. */
  window?: number;
  /** [B,2] flat: batch row b sees only keys start_b <= s_abs < end_b (padding outside). */
  kvRanges?: Int32Array | readonly number[];
  /** [B]: absolute position of batch row b's query 0 (replaces qOffset row by row). */
  qOffsets?: Int32Array | readonly number[];
  /** [H] learnable sink logits (gpt-oss, onnxruntime's head sinks): exp(sink_h) joins each softmax denominator. */
  sinks?: Float32Array | readonly number[];
  /**
   * Rotary embeddings of the queries at their positions (qOffset + t, qOffsets[b] + t, or
   * ropePositions). attention() rotates the keys as well (at positions 0..S-1); a state's keys
   * arrive rotated (KvCache({ rope }) rotates on append; applyRope does it by hand).
   */
  rope?: RopeOptions;
  /** [B,T] explicit query position ids for rope (e.g. left padding: ids start at 0 after the pad). */
  ropePositions?: Int32Array;
}

export interface AttentionOptions extends ScoreOptions {
  /** Score scale; default 1/sqrt(d_k). */
  scale?: number;
  /** Query t (absolute qOffset + t) sees key s iff s <= qOffset + t. */
  causal?: boolean;
  /** Absolute position of query 0; default S - T (the queries are the newest tokens). */
  qOffset?: number;
  dropout?: Dropout;
  /** Also return the probabilities [B,H,T,S] (and the dropout keep mask when dropout is on). */
  returnWeights?: boolean;
  /**
   * Write the results into these tensors instead of fresh ones (as torch's `out=`), and return
   * them: output [B,H,T,d_v], lse [B,H,T]. Either may be given alone. They must not overlap
   * q, k, v or each other. A loop that passes the same `out` allocates nothing large per call.
   */
  out?: AttentionOut;
}

/** Caller-owned result tensors; see AttentionOptions.out. */
export interface AttentionOut {
  /** [B,H,T,d_v] */
  output?: Tensor;
  /** [B,H,T] */
  lse?: Tensor;
}

export interface FinalizeOptions {
  /** Write the output over the accumulator (no copy); the state is spent until reset(). */
  consume?: boolean;
  /** Write output [B,H,T,d_v] and/or lse [B,H,T] into these tensors (not with consume). */
  out?: AttentionOut;
}

export interface AttentionResult {
  /** [B,H,T,d_v] */
  output: Tensor;
  /** [B,H,T]: log of the sum of exp(score) over unmasked keys, before dropout; -inf for a row with none. */
  lse: Tensor;
  /** [B,H,T,S] probabilities after dropout, when returnWeights. */
  weights?: Tensor;
  /** [B,H,T,S] keep mask (1 = kept), when returnWeights and dropout. */
  mask?: { data: Uint8Array; shape: number[] };
}

/** A KV cache's storage type: fp32, fp16 (IEEE binary16), bf16, or int8 with scales (docs/semantics.md). */
export type CacheDtype = 'fp32' | 'fp16' | 'bf16' | 'int8';
export const CACHE_DTYPES: readonly CacheDtype[] = ['fp32', 'fp16', 'bf16', 'int8'];
/** The binding's names of the storage types. */
export const NATIVE_DTYPE: Record<CacheDtype, KvDtype> = { fp32: 'f32', fp16: 'f16', bf16: 'bf16', int8: 'i8' };

/**
 * Keys or values [B,H_kv,S,d] as the kernels read them, in place. `data` is the storage
 * [B,H_kv,capacity,d] (contiguous) or a pool of pages [pages,H_kv,pageSize,d] (with `pages`),
 * of `dtype`: Float32Array (fp32), Uint16Array bit patterns (fp16, bf16), Int8Array (int8, with
 * `scale`).
 */
export interface KvView {
  readonly data: KvStorage;
  /** [B,H_kv,S,d]: S positions are read. */
  readonly shape: readonly number[];
  /** Positions stored per head (default S); with pages, blocks · pageSize. */
  readonly capacity?: number;
  /** First slot read in each head's storage (default 0; start + S <= capacity; contiguous only). */
  readonly start?: number;
  /** Default 'fp32'. */
  readonly dtype?: CacheDtype;
  /** int8: scales [B,H_kv,capacity,ceil(d/32)] (pages: [pages,H_kv,pageSize,ceil(d/32)]). */
  readonly scale?: Float32Array;
  /** Paged storage: batch row b's position s is row s % pageSize of page blockTable[b, s / pageSize]. */
  readonly pages?: { readonly pageSize: number; readonly blockTable: Int32Array };
}

const STORAGE: Record<CacheDtype, { ctor: Function; what: string }> = {
  fp32: { ctor: Float32Array, what: 'a Float32Array' },
  fp16: { ctor: Uint16Array, what: 'a Uint16Array' },
  bf16: { ctor: Uint16Array, what: 'a Uint16Array' },
  int8: { ctor: Int8Array, what: 'an Int8Array' },
};

/** The native fields of a checked view: storage type, slot offset, pages. */
interface ViewFields {
  sCap: number;
  kvDtype: KvDtype;
  sStart: number;
  pageSize?: number;
  blockTable?: Int32Array;
  scale: Float32Array | null;
}

/** Checks a key or value view against [B,H_kv,S,d]; the binding re-checks page numbers. */
function expectKv(name: string, t: KvView, B: number, Hkv: number, S: number, d: number, dimName: string): ViewFields {
  expectObject(name, t);
  const dtype = t.dtype ?? 'fp32';
  if (!(dtype in STORAGE)) throw new ArgumentError(`Expected ${name}.dtype to be one of ${CACHE_DTYPES.map((x) => `'${x}'`).join(', ')}, got ${show(dtype)}`);
  const names = ['B', 'H_kv', 'S', dimName];
  const shape = t.shape;
  if (!Array.isArray(shape) || shape.length !== 4 || shape[0] !== B || shape[1] !== Hkv || shape[2] !== S || shape[3] !== d) {
    const unit = dtype === 'fp32' ? 'floats' : 'elements', len = (t.data as ArrayLike<number> | undefined)?.length;
    const want = `${name} shape [${names.join(',')}]=[${[B, Hkv, S, d].join(',')}] (${B * Hkv * S * d} ${unit})`;
    throw new ShapeError(`Expected ${want}, got ${Array.isArray(shape) ? `shape [${shape.map(show).join(',')}] (${len} ${unit})` : show(t)}`);
  }
  const { ctor, what } = STORAGE[dtype];
  if (!(t.data instanceof ctor)) throw new ShapeError(`Expected ${name}.data to be ${what} for dtype '${dtype}', got ${show(t.data)}`);
  const cap = expectDim(`${name}.capacity`, t.capacity ?? S, S);
  const start = expectDim(`${name}.start`, t.start ?? 0, 0);
  if (start + S > cap) throw new ShapeError(`Expected ${name}.start + S <= capacity=${cap}, got start=${start}, S=${S}`);
  const groups = Math.ceil(d / 32);
  const fields: ViewFields = { sCap: cap, kvDtype: NATIVE_DTYPE[dtype], sStart: start, scale: null };
  let rows: number; // rows of d stored: B·H_kv·capacity, or pages·H_kv·pageSize
  if (t.pages !== undefined) {
    expectObject(`${name}.pages`, t.pages);
    const page = expectDim(`${name}.pages.pageSize`, t.pages.pageSize);
    if (cap % page !== 0) throw new ShapeError(`Expected ${name}.capacity to be a multiple of pages.pageSize=${page}, got ${cap}`);
    if (start !== 0) throw new ShapeError(`Expected ${name}.start 0 with pages, got ${start}`);
    const table = t.pages.blockTable;
    if (!(table instanceof Int32Array) || table.length !== B * (cap / page)) {
      throw new ShapeError(`Expected ${name}.pages.blockTable [B,blocks]=[${B},${cap / page}] (${B * (cap / page)} elements) as an Int32Array, got ${show(table)}`);
    }
    const perPage = Hkv * page * d;
    if (t.data.length === 0 || t.data.length % perPage !== 0) {
      throw new ShapeError(`Expected ${name}.data whole pages [pages,H_kv,pageSize,${dimName}]=[*,${Hkv},${page},${d}] (a positive multiple of ${perPage} elements), got ${t.data.length}`);
    }
    rows = (t.data.length / perPage) * Hkv * page;
    fields.pageSize = page;
    fields.blockTable = table;
  } else {
    rows = B * Hkv * cap;
    if (t.data.length !== rows * d) {
      throw new ShapeError(`Expected ${name} storage [${names.map((n, i) => (i === 2 ? 'S_cap' : n)).join(',')}]=[${[B, Hkv, cap, d].join(',')}] (${rows * d} elements), got ${t.data.length}`);
    }
  }
  if (dtype === 'int8') {
    if (!(t.scale instanceof Float32Array) || t.scale.length !== rows * groups) {
      throw new ShapeError(`Expected ${name}.scale [rows,ceil(${dimName}/32)]=[${rows},${groups}] (${rows * groups} floats) for int8 storage, got ${show(t.scale)}`);
    }
    fields.scale = t.scale;
  } else if (t.scale !== undefined) {
    throw new ArgumentError(`Expected no ${name}.scale for dtype '${dtype}', got ${show(t.scale)}`);
  }
  return fields;
}

/** Checked score options for B batch rows and H heads (typed arrays the binding reads). */
export interface ResolvedScore {
  softcap: number;
  alibi?: Float32Array;
  window: number;
  kvRanges?: Int32Array;
  qOffsets?: Int32Array;
  sinks?: Float32Array;
  rope?: ResolvedRope;
  ropePositions?: Int32Array;
}

/**
 * ALiBi slopes for H heads (Press et al.; Bloom's and FlashAttention's): for the largest power of
 * two n <= H, 2^(-8i/n) for i = 1..n, then 2^(-4(2j-1)/n) for j = 1..H-n.
 */
export function alibiSlopes(H: number): Float32Array {
  expectDim('H', H);
  const n = 2 ** Math.floor(Math.log2(H));
  const slopes = new Float32Array(H);
  for (let i = 0; i < n; i++) slopes[i] = 2 ** (-8 * (i + 1) / n);
  for (let j = 0; j < H - n; j++) slopes[n + j] = 2 ** (-4 * (2 * j + 1) / n);
  return slopes;
}

function int32s(name: string, value: Int32Array | readonly number[] | undefined, names: string, n: number): Int32Array | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof Int32Array) && !Array.isArray(value)) throw new ArgumentError(`Expected ${name} to be an Int32Array or an array of integers, got ${show(value)}`);
  if (value.length !== n) throw new ShapeError(`Expected ${name} shape [${names}] (${n} elements), got ${value.length}`);
  const out = Int32Array.from(value as ArrayLike<number>);
  for (let i = 0; i < n; i++) if (out[i] !== value[i]) throw new ArgumentError(`Expected ${name} to hold 32-bit integers, got ${show(value[i])} at ${i}`);
  return out;
}

function float32s(name: string, value: Float32Array | readonly number[], names: string, n: number): Float32Array {
  if (!(value instanceof Float32Array) && !Array.isArray(value)) throw new ArgumentError(`Expected ${name} to be a Float32Array or an array of numbers, got ${show(value)}`);
  if (value.length !== n) throw new ShapeError(`Expected ${name} shape [${names}] (${n} elements), got ${value.length}`);
  const out = Float32Array.from(value as ArrayLike<number>);
  for (let i = 0; i < n; i++) if (!Number.isFinite(out[i])) throw new ArgumentError(`Expected ${name} to be finite, got ${show(value[i])} at ${i}`);
  return out;
}

/** Checks the score options for B batch rows, H heads, T queries of width dK. */
export function resolveScore(o: ScoreOptions, B: number, H: number, T: number, dK: number): ResolvedScore {
  const r: ResolvedScore = { softcap: 0, window: 0 };
  if (o.softcap !== undefined) r.softcap = expectNumber('softcap', o.softcap, 0, 3.4e38);
  if (o.window !== undefined) r.window = expectDim('window', o.window, 0);
  if (o.alibi !== undefined && o.alibi !== false) r.alibi = o.alibi === true ? alibiSlopes(H) : float32s('alibi', o.alibi, `H]=[${H}`, H);
  r.kvRanges = int32s('kvRanges', o.kvRanges, `B,2]=[${B},2`, 2 * B);
  if (r.kvRanges) {
    for (let b = 0; b < B; b++) {
      const [s0, s1] = [r.kvRanges[2 * b], r.kvRanges[2 * b + 1]];
      if (!(s0 >= 0 && s0 <= s1)) throw new ArgumentError(`Expected kvRanges row ${b} to satisfy 0 <= start <= end, got [${s0}, ${s1})`);
    }
  }
  r.qOffsets = int32s('qOffsets', o.qOffsets, `B]=[${B}`, B);
  if (o.sinks !== undefined) r.sinks = float32s('sinks', o.sinks, `H]=[${H}`, H);
  if (o.rope !== undefined) r.rope = resolveRope(o.rope, dK);
  if (o.ropePositions !== undefined) {
    if (!r.rope) throw new ArgumentError('Expected ropePositions only with rope, got ropePositions without rope');
    if (!(o.ropePositions instanceof Int32Array) || o.ropePositions.length !== B * T) {
      throw new ShapeError(`Expected ropePositions shape [B,T]=[${B},${T}] (${B * T} elements) as an Int32Array, got ${show(o.ropePositions)}`);
    }
    r.ropePositions = o.ropePositions;
  }
  return r;
}

/** Query position ids [B,T] for rope: explicit, per-row offsets, or qOffset + t. */
export function queryPositions(score: { ropePositions?: Int32Array; qOffsets?: ArrayLike<number> }, B: number, T: number, qOffset: number, out?: Int32Array): Int32Array {
  return score.ropePositions ?? positionIds(B, T, score.qOffsets ?? qOffset, out);
}

function nativeOpts(o: { scale: number; causal: boolean; qOffset: number; dropout?: Dropout; score?: ResolvedScore }, sOffset: number, view?: ViewFields, window?: number): NativeOpts {
  const n: NativeOpts = { scale: o.scale, causal: o.causal, qOffset: o.qOffset, sOffset, dropoutP: o.dropout?.p ?? 0, seed: o.dropout?.seed ?? 0 };
  const sc = o.score;
  if (sc) {
    if (sc.softcap) n.softcap = sc.softcap;
    if (sc.alibi) n.alibi = sc.alibi;
    if (sc.kvRanges) n.kvRanges = sc.kvRanges;
    if (sc.qOffsets) n.qOffsets = sc.qOffsets;
    if (sc.window) n.window = sc.window;
  }
  if (window !== undefined) n.window = window;
  if (view) {
    if (view.kvDtype !== 'f32') n.kvDtype = view.kvDtype;
    if (view.sStart) n.sStart = view.sStart;
    if (view.pageSize) [n.pageSize, n.blockTable] = [view.pageSize, view.blockTable];
  }
  return n;
}

/** Checked native options from user-facing ones (scale required, qOffset resolved by the caller). */
export function attentionOptions(o: { scale: number; causal?: boolean; qOffset: number; dropout?: Dropout; score?: ResolvedScore }, sOffset: number): NativeOpts {
  expectNumber('scale', o.scale, -3.4e38, 3.4e38);
  return nativeOpts({ scale: o.scale, causal: expectFlag('causal', o.causal) ?? false, qOffset: expectOffset(o.qOffset), dropout: checkDropout(o.dropout), score: o.score }, sOffset);
}

/** The state's buffers when a caller supplies them (attention() folds straight into its output). */
interface StateBuffers {
  m: Float32Array;
  l: Float32Array;
  acc: Float32Array;
  /** acc is freshly allocated (already zero). */
  accZeroed: boolean;
}

// m and l of attention() calls: [B,H,T] floats reused across calls (1/d_v of the output).
const scratch = new Scratch();
const ROW_NAMES = ['B', 'H', 'T'];
const OUT_NAMES = ['B', 'H', 'T', 'd_v'];
const QKV = ['q', 'k', 'v'], QKV_OUT = ['q', 'k', 'v', 'out.output'];
const STATE = ['m', 'l', 'acc'], STATE_OUT = ['m', 'l', 'acc', 'out.output'];

/** Checks caller-supplied out tensors and returns their arrays (or fresh ones). */
function outTensors(out: AttentionOut, B: number, H: number, T: number, dV: number, q: Float32Array, k: ArrayBufferView, v: ArrayBufferView) {
  const output = out.output === undefined ? undefined : expectShape('out.output', out.output, OUT_NAMES, [B, H, T, dV]).data;
  const lse = out.lse === undefined ? undefined : expectShape('out.lse', out.lse, ROW_NAMES, [B, H, T]).data;
  if (output) expectDisjoint('out.output', output, QKV, [q, k, v]);
  if (lse) expectDisjoint('out.lse', lse, QKV_OUT, [q, k, v, output]);
  return {
    output: output ?? alloc('output', OUT_NAMES, [B, H, T, dV]).data,
    lse: lse ?? alloc('lse', ROW_NAMES, [B, H, T]).data,
    freshOutput: !output,
  };
}

/** A query offset: any 32-bit signed integer (queries before key 0 are allowed; they see nothing). */
function expectOffset(qOffset: number): number {
  if (!Number.isInteger(qOffset) || Math.abs(qOffset) > 2 ** 31 - 1) throw new ArgumentError(`Expected qOffset to be a 32-bit integer, got ${show(qOffset)}`);
  return qOffset;
}

function checkDropout(dropout: Dropout | undefined): Dropout | undefined {
  if (dropout === undefined) return undefined;
  expectObject('dropout', dropout);
  expectNumber('dropout.p', dropout.p, 0, 1, true);
  expectSeed('dropout.seed', dropout.seed);
  return dropout.p > 0 ? dropout : undefined;
}

export interface StateOptions extends ScoreOptions {
  /** Width of the values, d_v. */
  dV: number;
  /** Score scale; default 1/sqrt(d_k). */
  scale?: number;
  causal?: boolean;
  /** Absolute position of query 0: required with causal or dropout (S is not known up front). */
  qOffset?: number;
  dropout?: Dropout;
}

/**
 * Online-softmax state for fixed queries q [B,H,T,d_k]: running max m [B,H,T], running sum
 * l [B,H,T] and accumulator acc [B,H,T,d_v]. Any split of the keys into `update` calls, and any
 * order of `merge`s of states over disjoint keys, gives one full pass within fp32 rounding.
 */
export class OnlineSoftmaxState {
  readonly B: number;
  readonly H: number;
  readonly T: number;
  readonly dK: number;
  readonly dV: number;
  readonly scale: number;
  readonly causal: boolean;
  readonly dropout?: Dropout;
  /** The checked score options (softcap, ALiBi slopes, window, ragged rows, sinks, rope). */
  readonly score: ResolvedScore;
  /** Running max [B,H,T]. */
  readonly m: Float32Array;
  /** Running sum of exp(score - m) [B,H,T]. */
  readonly l: Float32Array;
  /** Running sum of exp(score - m) · keep/(1-p) · v, [B,H,T,d_v]. */
  readonly acc: Float32Array;
  /** Number of keys folded in so far. */
  keysSeen = 0;
  /** Default sOffset of the next update: the position after the last fold. */
  private next = 0;
  /** The binding's dims, packed (read at each call, async ones too: reusable). */
  private readonly dimsBuf = new Int32Array(8);
  /** An updateAsync is running: the buffers belong to the worker thread. */
  private busy = false;
  /** The queries as given, and as the kernels read them (rotated when rope is on). */
  private qIn: Tensor;
  private q_: Tensor;
  /** Rope position ids of the queries [B,T], reused by reset(). */
  private ids: Int32Array | undefined;
  private qOffset_: number;
  /** Caller buffers not yet initialised (m, l; or all three). */
  private unfilled: 'no' | 'ml' | 'all' = 'no';

  /** `buffers` is internal (attention() folds into its output); callers leave it out. */
  constructor(q: Tensor, options: StateOptions, buffers?: StateBuffers) {
    [this.B, this.H, this.T, this.dK] = expectRank('q', q, ['B', 'H', 'T', 'd_k']);
    this.q_ = expectShape('q', q, ['B', 'H', 'T', 'd_k'], [this.B, this.H, this.T, this.dK]);
    expectObject('options', options);
    this.dV = expectDim('dV', options.dV);
    this.scale = expectNumber('scale', options.scale ?? 1 / Math.sqrt(this.dK), -3.4e38, 3.4e38);
    this.causal = expectFlag('causal', options.causal) ?? false;
    this.dropout = checkDropout(options.dropout);
    if (options.qOffset === undefined && options.qOffsets === undefined && (this.causal || this.dropout)) {
      throw new ArgumentError('Expected qOffset (absolute position of query 0) or qOffsets [B] for a streaming state with causal or dropout, got neither');
    }
    this.qOffset_ = expectOffset(options.qOffset ?? 0);
    this.score = resolveScore(options, this.B, this.H, this.T, this.dK);
    this.qIn = this.q_;
    if (this.score.rope) this.q_ = this.rotated(q);
    if (buffers) {
      // Filled by the first update, after its checks: a call that throws leaves them untouched.
      [this.m, this.l, this.acc] = [buffers.m, buffers.l, buffers.acc];
      this.unfilled = buffers.accZeroed ? 'ml' : 'all';
    } else {
      this.m = alloc('state m', ROW_NAMES, [this.B, this.H, this.T]).data.fill(-Infinity);
      this.l = new Float32Array(this.m.length);
      this.acc = alloc('state acc', ['B', 'H', 'T', 'd_v'], [this.B, this.H, this.T, this.dV]).data;
    }
  }

  /** The queries [B,H,T,d_k] as given (replaced by reset(q)); unrotated with rope. */
  get q(): Tensor {
    return this.qIn;
  }

  /** q rotated at the query positions, into the state's own buffer. */
  private rotated(q: Tensor): Tensor {
    const out = this.q_ !== this.qIn ? this.q_ : alloc('rotated q', ['B', 'H', 'T', 'd_k'], [this.B, this.H, this.T, this.dK]);
    this.ids = queryPositions(this.score, this.B, this.T, this.qOffset_, this.ids);
    return applyRope(q, this.ids, this.score.rope!, out);
  }

  /** Absolute position of query 0 (changed by reset(q, { qOffset })). */
  get qOffset(): number {
    return this.qOffset_;
  }

  /**
   * Empties the state for reuse without allocating: m = -inf, l = 0, acc = 0, keysSeen = 0 (and
   * the default sOffset of the next update 0).
   * `q` (same shape [B,H,T,d_k]) replaces the queries, `options.qOffset` their position (a
   * decode loop: one state, reset per step).
   */
  reset(q?: Tensor, options: { qOffset?: number } = {}): this {
    this.expectIdle();
    expectOptions('reset options', options);
    // Both checked before either is taken: a rejected call leaves the state as it was.
    const qIn = q === undefined ? this.qIn : expectShape('q', q, ['B', 'H', 'T', 'd_k'], [this.B, this.H, this.T, this.dK]);
    const qOffset = options.qOffset === undefined ? this.qOffset_ : expectOffset(options.qOffset);
    [this.qIn, this.qOffset_] = [qIn, qOffset];
    if (this.score.rope) this.q_ = this.rotated(this.qIn);
    else this.q_ = this.qIn;
    this.m.fill(-Infinity);
    this.l.fill(0);
    this.acc.fill(0);
    this.keysSeen = 0;
    this.next = 0;
    return this;
  }

  /**
   * Folds in keys k [B,H_kv,S,d_k] and values v [B,H_kv,S,d_v] at absolute positions
   * [sOffset, sOffset + S) (default: right after the last fold). `mask.window` overrides the
   * state's window for this fold (0: none; a cache's sink tokens are folded so).
   */
  update(k: KvView, v: KvView, sOffset = this.next, mask: { window?: number } = {}): this {
    const u = this.updateArgs(k, v, sOffset, mask);
    addon.attnUpdate(u.dims, u.opts, this.q_.data, k.data, v.data, this.m, this.l, this.acc, u.kScale, u.vScale);
    this.keysSeen += u.S;
    this.next = sOffset + u.S;
    return this;
  }

  /** Folds every part of a cache (cache.parts(): its held positions, in place). */
  updateCache(cache: { parts(): readonly { k: KvView; v: KvView; sOffset: number; window?: number }[] }): this {
    if (typeof (cache as { parts?: unknown } | null)?.parts !== 'function') throw new ArgumentError(`Expected cache to be a KvCache, got ${show(cache)}`);
    const parts = cache.parts();
    // A window cache's parts carry its window (0 on sink tokens): the state's own must agree.
    for (const part of parts) {
      if (part.window && this.score.window && part.window !== this.score.window) {
        throw new ArgumentError(`Expected the state's window ${this.score.window} to be the cache's window ${part.window} (or absent)`);
      }
    }
    for (const part of parts) this.update(part.k, part.v, part.sOffset, part.window === undefined ? {} : { window: part.window });
    return this;
  }

  /**
   * update() on a worker thread, so the event loop stays free during a large fold. Until the
   * promise settles, k, v and q must not change and the state must not be used (it throws).
   */
  async updateAsync(k: KvView, v: KvView, sOffset = this.next, mask: { window?: number } = {}): Promise<this> {
    const u = this.updateArgs(k, v, sOffset, mask);
    this.busy = true;
    try {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => (err ? reject(new NativeError(err.message, { cause: err })) : resolve());
        if (u.kScale) addon.attnUpdateAsync(u.dims, u.opts, this.q_.data, k.data, v.data, this.m, this.l, this.acc, u.kScale, u.vScale, done);
        else addon.attnUpdateAsync(u.dims, u.opts, this.q_.data, k.data, v.data, this.m, this.l, this.acc, done);
      });
    } finally {
      this.busy = false;
    }
    this.keysSeen += u.S;
    this.next = sOffset + u.S;
    return this;
  }

  /** Checks a chunk of keys/values against the state and gives the kernel's arguments. */
  private updateArgs(k: KvView, v: KvView, sOffset: number, mask: { window?: number }) {
    this.expectIdle();
    const [, Hkv, S] = expectRank('k', k, ['B', 'H_kv', 'S', 'd_k']);
    if (this.H % Hkv !== 0) throw new ShapeError(`Expected k H_kv to divide H=${this.H}, got H_kv=${Hkv}`);
    const kf = expectKv('k', k, this.B, Hkv, S, this.dK, 'd_k');
    const vf = expectKv('v', v, this.B, Hkv, S, this.dV, 'd_v');
    expectDim('sOffset', sOffset, 0);
    expectOptions('mask', mask);
    const window = mask.window === undefined ? undefined : expectDim('mask.window', mask.window, 0);
    const dims = packDims({ B: this.B, H: this.H, Hkv, T: this.T, S, sCap: kf.sCap, dK: this.dK, dV: this.dV }, this.dimsBuf);
    for (const key of ['sCap', 'kvDtype', 'sStart', 'pageSize', 'blockTable'] as const) {
      if (kf[key] !== vf[key]) throw new ShapeError(`Expected v ${key === 'sCap' ? 'capacity' : key} ${show(kf[key])} (as k), got ${show(vf[key])}`);
    }
    const args = { dims, S, opts: nativeOpts(this, sOffset, kf, window), kScale: kf.scale, vScale: vf.scale };
    if (this.unfilled !== 'no') {
      this.m.fill(-Infinity);
      this.l.fill(0);
      if (this.unfilled === 'all') this.acc.fill(0);
      this.unfilled = 'no';
    }
    return args;
  }

  private expectIdle(): void {
    if (this.busy) throw new KvstreamError('Expected an idle state, got one with an updateAsync still running');
  }

  /** Absorbs a state over a disjoint set of keys for the same queries (the log-sum-exp rule). */
  merge(other: OnlineSoftmaxState): this {
    this.expectIdle();
    if (!(other instanceof OnlineSoftmaxState)) throw new ArgumentError(`Expected other to be an OnlineSoftmaxState, got ${show(other)}`);
    if (other === this) throw new ArgumentError('Expected other to be a state over disjoint keys, got this same state (merge a clone() instead)');
    other.expectIdle();
    const same = other.B === this.B && other.H === this.H && other.T === this.T && other.dV === this.dV;
    if (!same) {
      throw new ShapeError(`Expected a state of shape [B,H,T,d_v]=[${this.B},${this.H},${this.T},${this.dV}], got [${other.B},${other.H},${other.T},${other.dV}]`);
    }
    addon.attnMerge(this.m.length, this.dV, this.m, this.l, this.acc, other.m, other.l, other.acc);
    this.keysSeen += other.keysSeen;
    return this;
  }

  /** A copy that can go on independently (for branching or partial results). */
  clone(): OnlineSoftmaxState {
    this.expectIdle();
    const sc = this.score;
    const c = new OnlineSoftmaxState(this.qIn, {
      dV: this.dV, scale: this.scale, causal: this.causal, qOffset: this.qOffset, dropout: this.dropout, softcap: sc.softcap || undefined,
      alibi: sc.alibi, window: sc.window || undefined, kvRanges: sc.kvRanges, qOffsets: sc.qOffsets, sinks: sc.sinks, rope: sc.rope, ropePositions: sc.ropePositions,
    });
    c.m.set(this.m);
    c.l.set(this.l);
    c.acc.set(this.acc);
    c.keysSeen = this.keysSeen;
    c.next = this.next;
    return c;
  }

  /**
   * output [B,H,T,d_v] = acc / l and lse [B,H,T] = m + log l; rows that saw no key give 0 and -inf.
   * The state is left as it was (more updates may follow), except with `consume`: the output is
   * written over the accumulator (no copy) and the state is spent until reset(). `out` gives the
   * tensors to write into (returned as they are). `finalize(true)` is `finalize({ consume: true })`.
   */
  finalize(options: boolean | FinalizeOptions = false): { output: Tensor; lse: Tensor } {
    this.expectIdle();
    const o = typeof options === 'boolean' ? { consume: options } : expectOptions('finalize options', options);
    const consume = expectFlag('consume', o.consume) ?? false;
    const out = expectOptions('out', o.out);
    if (consume && out.output !== undefined) throw new ArgumentError('Expected either consume or out.output, got both');
    const shape = [this.B, this.H, this.T, this.dV], rows = [this.B, this.H, this.T];
    const output = out.output ?? (consume ? { data: this.acc, shape } : alloc('output', OUT_NAMES, shape));
    if (out.output !== undefined) expectDisjoint('out.output', expectShape('out.output', out.output, OUT_NAMES, shape).data, STATE, [this.m, this.l, this.acc]);
    const lse = out.lse ?? alloc('lse', ROW_NAMES, rows);
    if (out.lse !== undefined) expectDisjoint('out.lse', expectShape('out.lse', out.lse, ROW_NAMES, rows).data, STATE_OUT, [this.m, this.l, this.acc, output.data]);
    addon.attnFinalize(this.m.length, this.dV, this.m, this.l, this.acc, output.data, lse.data, this.score.sinks ?? null, this.T);
    return { output, lse };
  }
}

/**
 * One full attention pass.
 * q [B,H,T,d_k], k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] -> output [B,H,T,d_v], lse [B,H,T]
 * (+ weights [B,H,T,S] and mask [B,H,T,S] when asked).
 */
export function attention(q: Tensor, k: KvView, v: KvView, options: AttentionOptions = {}): AttentionResult {
  const o = expectOptions('options', options);
  const [B, H, T] = expectRank('q', q, ['B', 'H', 'T', 'd_k']);
  const [, Hkv, S, dK] = expectRank('k', k, ['B', 'H_kv', 'S', 'd_k']);
  const [, , , dV] = expectRank('v', v, ['B', 'H_kv', 'S', 'd_v']);
  const returnWeights = expectFlag('returnWeights', o.returnWeights);
  const qOffset = o.qOffset ?? S - T;
  const outs = outTensors(expectOptions('out', o.out), B, H, T, dV, q.data, k.data, v.data);
  // rope: queries at their positions, keys at 0..S-1 (rotated copies; the inputs are left alone).
  const { rope, ropePositions } = o;
  if (rope !== undefined) {
    const sc = resolveScore({ rope, ropePositions, qOffsets: o.qOffsets }, B, H, T, q.shape[3]!);
    if ((k.dtype ?? 'fp32') !== 'fp32' || k.pages || k.start) throw new ArgumentError('Expected fp32 contiguous keys from slot 0 with rope (attention() rotates them), got a cache view; fold a KvCache({ rope }) into an OnlineSoftmaxState instead');
    expectShape('k', k as Tensor, ['B', 'H_kv', 'S', 'd_k'], [B, Hkv, S, dK], k.capacity);
    k = applyRope({ data: k.data as Float32Array, shape: [B, Hkv, k.capacity ?? S, dK] }, 0, sc.rope!);
    k = { data: k.data, shape: [B, Hkv, S, dK], capacity: (k.shape as number[])[2] };
    q = applyRope(q, queryPositions(sc, B, T, qOffset), sc.rope!);
  }
  // The state folds straight into the output array (finalize then divides it in place).
  const m = scratch.get('m', ROW_NAMES, [B, H, T]), l = scratch.get('l', ROW_NAMES, [B, H, T]);
  // A literal of fixed shape, not a spread of o: V8 clones a spread options bag field by field
  // (the spreads were a third of a decode step's TypeScript time). rope is applied above.
  const state = new OnlineSoftmaxState(q, {
    dV, qOffset, scale: o.scale, causal: o.causal, dropout: o.dropout, softcap: o.softcap, alibi: o.alibi, window: o.window,
    kvRanges: o.kvRanges, qOffsets: o.qOffsets, sinks: o.sinks,
  }, { m, l, acc: outs.output, accZeroed: outs.freshOutput });
  if (state.dK !== dK) throw new ShapeError(`Expected k shape [B,H_kv,S,d_k] with d_k=${state.dK} (as q), got d_k=${dK}`);
  if (returnWeights && (k.pages || k.start)) throw new ArgumentError('Expected contiguous keys from slot 0 with returnWeights, got a paged or offset view');
  state.update(k, v, 0); // checks k and v, then fills m, l (and a caller's output) before the kernel
  addon.attnFinalize(m.length, dV, m, l, outs.output, outs.output, outs.lse, state.score.sinks ?? null, T);
  const output = o.out?.output ?? { data: outs.output, shape: [B, H, T, dV] };
  const lse = o.out?.lse ?? { data: outs.lse, shape: [B, H, T] };
  if (!returnWeights) return { output, lse };

  const weights = alloc('weights', ['B', 'H', 'T', 'S'], [B, H, T, S]).data;
  const mask = state.dropout ? new Uint8Array(weights.length) : null;
  const view = expectKv('k', k, B, Hkv, S, dK, 'd_k');
  const dims = packDims({ B, H, Hkv, T, S, sCap: view.sCap, dK, dV });
  addon.attnProbs(dims, nativeOpts(state, 0, view), q.data, k.data, lse.data, weights, mask, view.scale);
  const result: AttentionResult = { output, lse, weights: { data: weights, shape: [B, H, T, S] } };
  if (mask) result.mask = { data: mask, shape: [B, H, T, S] };
  return result;
}
