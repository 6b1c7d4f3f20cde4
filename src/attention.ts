// Scaled dot-product attention over per-head tensors, on the native online-softmax kernels.
//   q [B,H,T,d_k], k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] -> output [B,H,T,d_v], lse [B,H,T]
// Query head h reads key/value head floor(h / (H / H_kv)).
import { ArgumentError, KvstreamError, NativeError, ShapeError } from './errors.ts';
import { addon } from './native.ts';
import type { NativeDims, NativeOpts } from './native.ts';
import { expectDim, expectNumber, expectRank, expectSeed, expectShape, numel } from './tensor.ts';
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
  const cap = t.capacity ?? S;
  expectDim(`${name}.capacity`, cap, S);
  expectShape(name, t, ['B', 'H_kv', 'S', dimName], [B, Hkv, S, d], cap);
}

function nativeOpts(o: { scale: number; causal: boolean; qOffset: number; dropout?: Dropout }, sOffset: number): NativeOpts {
  return { scale: o.scale, causal: o.causal, qOffset: o.qOffset, sOffset, dropoutP: o.dropout?.p ?? 0, seed: o.dropout?.seed ?? 0 };
}

/** Checked native options from user-facing ones (scale required, qOffset resolved by the caller). */
export function attentionOptions(o: { scale: number; causal?: boolean; qOffset: number; dropout?: Dropout }, sOffset: number): NativeOpts {
  expectNumber('scale', o.scale, -3.4e38, 3.4e38);
  return nativeOpts({ scale: o.scale, causal: o.causal ?? false, qOffset: expectOffset(o.qOffset), dropout: checkDropout(o.dropout) }, sOffset);
}

/** A query offset: any 32-bit signed integer (queries before key 0 are allowed; they see nothing). */
function expectOffset(qOffset: number): number {
  if (!Number.isInteger(qOffset) || Math.abs(qOffset) > 2 ** 31 - 1) throw new ArgumentError(`Expected qOffset to be a 32-bit integer, got ${qOffset}`);
  return qOffset;
}

function checkDropout(dropout: Dropout | undefined): Dropout | undefined {
  if (dropout === undefined) return undefined;
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
  readonly qOffset: number;
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

  constructor(readonly q: Tensor, options: StateOptions) {
    [this.B, this.H, this.T, this.dK] = expectRank('q', q, ['B', 'H', 'T', 'd_k']);
    expectShape('q', q, ['B', 'H', 'T', 'd_k'], [this.B, this.H, this.T, this.dK]);
    this.dV = expectDim('dV', options.dV);
    this.scale = expectNumber('scale', options.scale ?? 1 / Math.sqrt(this.dK), -3.4e38, 3.4e38);
    this.causal = options.causal ?? false;
    this.dropout = checkDropout(options.dropout);
    if (options.qOffset === undefined && (this.causal || this.dropout)) {
      throw new ArgumentError('Expected qOffset (absolute position of query 0) for a streaming state with causal or dropout, got undefined');
    }
    this.qOffset = expectOffset(options.qOffset ?? 0);
    const rows = this.B * this.H * this.T;
    this.m = new Float32Array(rows).fill(-Infinity);
    this.l = new Float32Array(rows);
    this.acc = new Float32Array(rows * this.dV);
  }

  /** Folds in keys k [B,H_kv,S,d_k] and values v [B,H_kv,S,d_v] at absolute positions [sOffset, sOffset + S). */
  update(k: KvView, v: KvView, sOffset = this.keysSeen): this {
    const dims = this.updateDims(k, v, sOffset);
    addon.attnUpdate(dims, nativeOpts(this, sOffset), this.q.data, k.data, v.data, this.m, this.l, this.acc);
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
        addon.attnUpdateAsync(dims, nativeOpts(this, sOffset), this.q.data, k.data, v.data, this.m, this.l, this.acc, (err) =>
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
    return dims;
  }

  private expectIdle(): void {
    if (this.busy) throw new KvstreamError('Expected an idle state, got one with an updateAsync still running');
  }

  /** Absorbs a state over a disjoint set of keys for the same queries (the log-sum-exp rule). */
  merge(other: OnlineSoftmaxState): this {
    this.expectIdle();
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
    const c = new OnlineSoftmaxState(this.q, { dV: this.dV, scale: this.scale, causal: this.causal, qOffset: this.qOffset, dropout: this.dropout });
    c.m.set(this.m);
    c.l.set(this.l);
    c.acc.set(this.acc);
    c.keysSeen = this.keysSeen;
    return c;
  }

  /**
   * output [B,H,T,d_v] = acc / l and lse [B,H,T] = m + log l; rows that saw no key give 0 and -inf.
   * `consume` writes the output over the accumulator (no copy); the state is then spent.
   */
  finalize(consume = false): { output: Tensor; lse: Tensor } {
    this.expectIdle();
    const out = consume ? this.acc : new Float32Array(this.acc.length);
    const lse = new Float32Array(this.m.length);
    addon.attnFinalize(this.m.length, this.dV, this.m, this.l, this.acc, out, lse);
    return { output: { data: out, shape: [this.B, this.H, this.T, this.dV] }, lse: { data: lse, shape: [this.B, this.H, this.T] } };
  }
}

/**
 * One full attention pass.
 * q [B,H,T,d_k], k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] -> output [B,H,T,d_v], lse [B,H,T]
 * (+ weights [B,H,T,S] and mask [B,H,T,S] when asked).
 */
export function attention(q: Tensor, k: KvView, v: KvView, options: AttentionOptions = {}): AttentionResult {
  const [, , T] = expectRank('q', q, ['B', 'H', 'T', 'd_k']);
  const [, Hkv, S, dK] = expectRank('k', k, ['B', 'H_kv', 'S', 'd_k']);
  const [, , , dV] = expectRank('v', v, ['B', 'H_kv', 'S', 'd_v']);
  const qOffset = options.qOffset ?? S - T;
  const state = new OnlineSoftmaxState(q, { dV, scale: options.scale, causal: options.causal, qOffset, dropout: options.dropout });
  if (state.dK !== dK) throw new ShapeError(`Expected k shape [B,H_kv,S,d_k] with d_k=${state.dK} (as q), got d_k=${dK}`);
  const { output, lse } = state.update(k, v, 0).finalize(true);
  if (!options.returnWeights) return { output, lse };

  const [B, H] = q.shape;
  const weights = new Float32Array(numel([B, H, T, S]));
  const mask = state.dropout ? new Uint8Array(weights.length) : null;
  const dims: NativeDims = { B, H, Hkv, T, S, sCap: k.capacity ?? S, dK, dV };
  addon.attnProbs(dims, nativeOpts(state, 0), q.data, k.data, lse.data, weights, mask);
  const result: AttentionResult = { output, lse, weights: { data: weights, shape: [B, H, T, S] } };
  if (mask) result.mask = { data: mask, shape: [B, H, T, S] };
  return result;
}
