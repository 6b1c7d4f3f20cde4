// Scaled dot-product attention over per-head tensors, on the native online-softmax kernels.
//   q [B,H,T,d_k], k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] -> output [B,H,T,d_v], lse [B,H,T]
// Query head h reads key/value head floor(h / (H / H_kv)).
import { ArgumentError, KvstreamError, NativeError, ShapeError } from './errors.ts';
import { addon } from './native.ts';
import type { NativeDims, NativeOpts } from './native.ts';
import { alloc, expectDim, expectDisjoint, expectFlag, expectNumber, expectObject, expectOptions, expectRank, expectSeed, expectShape, Scratch, show } from './tensor.ts';
import type { Tensor } from './tensor.ts';

/** Dropout on probabilities; the keep bits are Philox4x32-10 keyed by (seed, b, h, t_abs, s_abs). */
export interface Dropout {
  /** Drop probability in [0, 1). */
  p: number;
  /** Integer in [0, 2^53). */
  seed: number;
}

export interface AttentionOptions {
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

/**
 * Keys or values [B,H_kv,S,d]. `capacity` (>= S, default S) is the number of positions stored
 * per head in `data`, so a KV cache's storage [B,H_kv,capacity,d] is read without copying.
 */
export interface KvView extends Tensor {
  readonly capacity?: number;
}

function expectKv(name: string, t: KvView, B: number, Hkv: number, S: number, d: number, dimName: string): void {
  const cap = expectObject(name, t).capacity ?? S;
  expectDim(`${name}.capacity`, cap, S);
  expectShape(name, t, ['B', 'H_kv', 'S', dimName], [B, Hkv, S, d], cap);
}

function nativeOpts(o: { scale: number; causal: boolean; qOffset: number; dropout?: Dropout }, sOffset: number): NativeOpts {
  return { scale: o.scale, causal: o.causal, qOffset: o.qOffset, sOffset, dropoutP: o.dropout?.p ?? 0, seed: o.dropout?.seed ?? 0 };
}

/** Checked native options from user-facing ones (scale required, qOffset resolved by the caller). */
export function attentionOptions(o: { scale: number; causal?: boolean; qOffset: number; dropout?: Dropout }, sOffset: number): NativeOpts {
  expectNumber('scale', o.scale, -3.4e38, 3.4e38);
  return nativeOpts({ scale: o.scale, causal: expectFlag('causal', o.causal) ?? false, qOffset: expectOffset(o.qOffset), dropout: checkDropout(o.dropout) }, sOffset);
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
function outTensors(out: AttentionOut, B: number, H: number, T: number, dV: number, q: Float32Array, k: Float32Array, v: Float32Array) {
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

export interface StateOptions {
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
  /** Running max [B,H,T]. */
  readonly m: Float32Array;
  /** Running sum of exp(score - m) [B,H,T]. */
  readonly l: Float32Array;
  /** Running sum of exp(score - m) · keep/(1-p) · v, [B,H,T,d_v]. */
  readonly acc: Float32Array;
  /** Number of keys folded in so far. */
  keysSeen = 0;
  /** An updateAsync is running: the buffers belong to the worker thread. */
  private busy = false;
  private q_: Tensor;
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
    if (options.qOffset === undefined && (this.causal || this.dropout)) {
      throw new ArgumentError('Expected qOffset (absolute position of query 0) for a streaming state with causal or dropout, got undefined');
    }
    this.qOffset_ = expectOffset(options.qOffset ?? 0);
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

  /** The queries [B,H,T,d_k] (replaced by reset(q)). */
  get q(): Tensor {
    return this.q_;
  }

  /** Absolute position of query 0 (changed by reset(q, { qOffset })). */
  get qOffset(): number {
    return this.qOffset_;
  }

  /**
   * Empties the state for reuse without allocating: m = -inf, l = 0, acc = 0, keysSeen = 0.
   * `q` (same shape [B,H,T,d_k]) replaces the queries, `options.qOffset` their position (a
   * decode loop: one state, reset per step).
   */
  reset(q?: Tensor, options: { qOffset?: number } = {}): this {
    this.expectIdle();
    expectOptions('reset options', options);
    if (q !== undefined) this.q_ = expectShape('q', q, ['B', 'H', 'T', 'd_k'], [this.B, this.H, this.T, this.dK]);
    if (options.qOffset !== undefined) this.qOffset_ = expectOffset(options.qOffset);
    this.m.fill(-Infinity);
    this.l.fill(0);
    this.acc.fill(0);
    this.keysSeen = 0;
    return this;
  }

  /** Folds in keys k [B,H_kv,S,d_k] and values v [B,H_kv,S,d_v] at absolute positions [sOffset, sOffset + S). */
  update(k: KvView, v: KvView, sOffset = this.keysSeen): this {
    const dims = this.updateDims(k, v, sOffset);
    addon.attnUpdate(dims, nativeOpts(this, sOffset), this.q_.data, k.data, v.data, this.m, this.l, this.acc);
    this.keysSeen += dims.S;
    return this;
  }

  /**
   * update() on a worker thread, so the event loop stays free during a large fold. Until the
   * promise settles, k, v and q must not change and the state must not be used (it throws).
   */
  async updateAsync(k: KvView, v: KvView, sOffset = this.keysSeen): Promise<this> {
    const dims = this.updateDims(k, v, sOffset);
    this.busy = true;
    try {
      await new Promise<void>((resolve, reject) => {
        addon.attnUpdateAsync(dims, nativeOpts(this, sOffset), this.q_.data, k.data, v.data, this.m, this.l, this.acc, (err) =>
          err ? reject(new NativeError(err.message, { cause: err })) : resolve(),
        );
      });
    } finally {
      this.busy = false;
    }
    this.keysSeen += dims.S;
    return this;
  }

  /** Checks a chunk of keys/values against the state and gives the kernel's sizes. */
  private updateDims(k: KvView, v: KvView, sOffset: number): NativeDims {
    this.expectIdle();
    const [, Hkv, S] = expectRank('k', k, ['B', 'H_kv', 'S', 'd_k']);
    if (this.H % Hkv !== 0) throw new ShapeError(`Expected k H_kv to divide H=${this.H}, got H_kv=${Hkv}`);
    expectKv('k', k, this.B, Hkv, S, this.dK, 'd_k');
    expectKv('v', v, this.B, Hkv, S, this.dV, 'd_v');
    expectDim('sOffset', sOffset, 0);
    const dims: NativeDims = { B: this.B, H: this.H, Hkv, T: this.T, S, sCap: k.capacity ?? S, dK: this.dK, dV: this.dV };
    if ((v.capacity ?? S) !== dims.sCap) throw new ShapeError(`Expected v capacity ${dims.sCap} (as k), got ${v.capacity ?? S}`);
    if (this.unfilled !== 'no') {
      this.m.fill(-Infinity);
      this.l.fill(0);
      if (this.unfilled === 'all') this.acc.fill(0);
      this.unfilled = 'no';
    }
    return dims;
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
    const c = new OnlineSoftmaxState(this.q_, { dV: this.dV, scale: this.scale, causal: this.causal, qOffset: this.qOffset, dropout: this.dropout });
    c.m.set(this.m);
    c.l.set(this.l);
    c.acc.set(this.acc);
    c.keysSeen = this.keysSeen;
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
    addon.attnFinalize(this.m.length, this.dV, this.m, this.l, this.acc, output.data, lse.data);
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
  // The state folds straight into the output array (finalize then divides it in place).
  const m = scratch.get('m', ROW_NAMES, [B, H, T]), l = scratch.get('l', ROW_NAMES, [B, H, T]);
  const state = new OnlineSoftmaxState(q, { dV, scale: o.scale, causal: o.causal, qOffset, dropout: o.dropout }, { m, l, acc: outs.output, accZeroed: outs.freshOutput });
  if (state.dK !== dK) throw new ShapeError(`Expected k shape [B,H_kv,S,d_k] with d_k=${state.dK} (as q), got d_k=${dK}`);
  state.update(k, v, 0); // checks k and v, then fills m, l (and a caller's output) before the kernel
  addon.attnFinalize(m.length, dV, m, l, outs.output, outs.output, outs.lse);
  const output = o.out?.output ?? { data: outs.output, shape: [B, H, T, dV] };
  const lse = o.out?.lse ?? { data: outs.lse, shape: [B, H, T] };
  if (!returnWeights) return { output, lse };

  const weights = alloc('weights', ['B', 'H', 'T', 'S'], [B, H, T, S]).data;
  const mask = state.dropout ? new Uint8Array(weights.length) : null;
  const dims: NativeDims = { B, H, Hkv, T, S, sCap: k.capacity ?? S, dK, dV };
  addon.attnProbs(dims, nativeOpts(state, 0), q.data, k.data, lse.data, weights, mask);
  const result: AttentionResult = { output, lse, weights: { data: weights, shape: [B, H, T, S] } };
  if (mask) result.mask = { data: mask, shape: [B, H, T, S] };
  return result;
}
