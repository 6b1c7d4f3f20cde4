// Multi-head attention module (DESIGN.md): projections, grouped KV heads, d_k != d_v, an optional
// KV cache, output projection. Activations are [B,T,width]; per-head tensors are [B,H,T,d].
import { attention, attentionOptions, OnlineSoftmaxState, queryPositions, resolveScore } from './attention.ts';
import type { AttentionOut, AttentionResult, CacheDtype, Dropout, ScoreOptions } from './attention.ts';
import { ArgumentError, ShapeError } from './errors.ts';
import { KvCache } from './kvcache.ts';
import { applyRope, resolveRope } from './rope.ts';
import type { RopeOptions } from './rope.ts';
import { addon, packMhaDims } from './native.ts';
import { Rng } from './random.ts';
import { alloc, expectAllocatable, expectDim, expectDisjoint, expectFlag, expectNumber, expectObject, expectOptions, expectRank, expectShape, Scratch, show } from './tensor.ts';
import type { Tensor } from './tensor.ts';

export interface MhaConfig {
  dModel: number;
  /** Key/value input width; default dModel (cross-attention may differ). */
  dKvIn?: number;
  /** Output width; default dModel. */
  dOut?: number;
  numHeads: number;
  /** Key/value heads, dividing numHeads; default numHeads (1 = multi-query). */
  numKvHeads?: number;
  /** Default dModel / numHeads. */
  dK?: number;
  /** Default dK. */
  dV?: number;
  /** Default true. */
  bias?: boolean;
  /** Default 1/sqrt(dK). */
  scale?: number;
  /** Rotary embeddings: queries and keys rotated at their absolute positions (caches from newCache() rotate keys on append). */
  rope?: RopeOptions;
}

export type ResolvedMhaConfig = Required<Omit<MhaConfig, 'rope'>> & { rope?: RopeOptions };

/** Cache layout and storage for newCache() (see KvCacheConfig). */
export interface NewCacheOptions {
  capacity?: number;
  dtype?: CacheDtype;
  window?: number;
  sinkTokens?: number;
  pageSize?: number;
}

/** w_q [d_model,H·d_k], w_k [d_kv_in,H_kv·d_k], w_v [d_kv_in,H_kv·d_v], w_o [H·d_v,d_out]; biases [cols]. */
export interface MhaWeights {
  wQ: Tensor; wK: Tensor; wV: Tensor; wO: Tensor;
  bQ?: Tensor; bK?: Tensor; bV?: Tensor; bO?: Tensor;
}

/** Score options of forward(); rope comes from the module's config. */
export interface ForwardOptions extends Omit<ScoreOptions, 'rope' | 'ropePositions'> {
  /**
   * [B,T] rope position ids of this call's tokens (with config.rope; self-attention: x_kv holds
   * the same T tokens): the queries are rotated at them and the keys too, in the cache as well
   * (left padding: ids that start at 0 after each row's pad). Default: absolute positions.
   */
  positions?: Int32Array;
  causal?: boolean;
  /** Absolute position of query 0; default S - T. */
  qOffset?: number;
  /** When given, the new keys/values are appended first and attention reads the whole cache. */
  cache?: KvCache;
  dropout?: Dropout;
  /** Also return the attention weights [B,H,T,S]: without a cache or with a contiguous fp32 one (rope or not). */
  returnWeights?: boolean;
  /**
   * Write output [B,T,d_out] and/or lse [B,H,T] into these tensors (returned as they are)
   * instead of fresh ones; they must not overlap x_q or x_kv. With them a loop of forward()
   * calls allocates nothing large: the per-head q, k, v and attention output live in buffers
   * the module keeps and reuses (so one module must not run two forward() calls at once, which
   * synchronous calls cannot).
   */
  out?: AttentionOut;
}

export interface ForwardResult {
  /** [B,T,d_out] */
  output: Tensor;
  /** [B,H,T] */
  lse: Tensor;
  /** [B,H,T,S], when returnWeights. */
  weights?: Tensor;
  /** [B,H,T,S] keep mask, when returnWeights and dropout. */
  mask?: AttentionResult['mask'];
  cache?: KvCache;
}

export function resolveConfig(config: MhaConfig): ResolvedMhaConfig {
  expectObject('config', config);
  const dModel = expectDim('dModel', config.dModel);
  const numHeads = expectDim('numHeads', config.numHeads);
  const numKvHeads = expectDim('numKvHeads', config.numKvHeads ?? numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ShapeError(`Expected numKvHeads to divide numHeads=${numHeads}, got ${numKvHeads}`);
  }
  if (config.dK === undefined && dModel % numHeads !== 0) {
    throw new ShapeError(`Expected dModel divisible by numHeads=${numHeads} (or an explicit dK), got dModel=${dModel}`);
  }
  const dK = expectDim('dK', config.dK ?? dModel / numHeads);
  const c: ResolvedMhaConfig = {
    dModel,
    dKvIn: expectDim('dKvIn', config.dKvIn ?? dModel),
    dOut: expectDim('dOut', config.dOut ?? dModel),
    numHeads,
    numKvHeads,
    dK,
    dV: expectDim('dV', config.dV ?? dK),
    bias: expectFlag('bias', config.bias) ?? true,
    scale: expectNumber('scale', config.scale ?? 1 / Math.sqrt(dK), -3.4e38, 3.4e38),
  };
  if (config.rope !== undefined) {
    const r = resolveRope(config.rope, dK, 'rope');
    c.rope = { dim: r.dim, theta: r.theta, style: r.style };
  }
  // Every weight within MAX_TENSOR_BYTES, before anything is allocated or drawn.
  for (const [name, shape] of Object.entries(weightShapes(c))) if (shape) expectAllocatable(name, shape.length === 2 ? ['rows', 'cols'] : ['cols'], shape);
  return c;
}

/** Weight shapes of a config, in the order `MultiHeadAttention.random` draws them. */
export function weightShapes(c: ResolvedMhaConfig): Record<keyof MhaWeights, number[] | null> {
  const { dModel, dKvIn, dOut, numHeads: H, numKvHeads: Hkv, dK, dV, bias } = c;
  return {
    wQ: [dModel, H * dK], wK: [dKvIn, Hkv * dK], wV: [dKvIn, Hkv * dV], wO: [H * dV, dOut],
    bQ: bias ? [H * dK] : null, bK: bias ? [Hkv * dK] : null, bV: bias ? [Hkv * dV] : null, bO: bias ? [dOut] : null,
  };
}

const X_NAMES = ['x_q', 'x_kv'], X_OUT_NAMES = ['x_q', 'x_kv', 'out.output'];

export class MultiHeadAttention {
  readonly config: ResolvedMhaConfig;
  readonly weights: MhaWeights;
  /** Per-head q, k, v and attention output of forward(), reused across calls. */
  private readonly scratch = new Scratch();
  /** Query position ids [B,T] reused across calls (rope over a contiguous cache). */
  private ropeIds: Int32Array = new Int32Array(0);
  /** packMhaDims' buffer for the fused call. */
  private readonly mhaDims = new Int32Array(10);

  constructor(config: MhaConfig, weights: MhaWeights) {
    this.config = resolveConfig(config);
    expectObject('weights', weights);
    const shapes = weightShapes(this.config);
    for (const [name, shape] of Object.entries(shapes) as [keyof MhaWeights, number[] | null][]) {
      const w = weights[name];
      if (shape) expectShape(name, w, shape.length === 2 ? ['rows', 'cols'] : ['cols'], shape);
      else if (w !== undefined) throw new ShapeError(`Expected no ${name} (config.bias is false), got a tensor`);
    }
    this.weights = weights;
  }

  /**
   * Weights from a seed: Xavier-uniform matrices; biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
   * (nn.Linear's rule). Drawn from Rng(seed) in the order wQ, wK, wV, wO, bQ, bK, bV, bO.
   */
  static random(config: MhaConfig, seed: number): MultiHeadAttention {
    const c = resolveConfig(config);
    const rng = new Rng(seed);
    const shapes = weightShapes(c);
    const weights: Partial<MhaWeights> = {};
    for (const name of ['wQ', 'wK', 'wV', 'wO'] as const) weights[name] = rng.xavierUniform(shapes[name]![0], shapes[name]![1]);
    const fanIn = { bQ: c.dModel, bK: c.dKvIn, bV: c.dKvIn, bO: c.numHeads * c.dV };
    for (const name of ['bQ', 'bK', 'bV', 'bO'] as const) {
      const shape = shapes[name];
      if (shape) weights[name] = rng.uniformTensor(shape, -1 / Math.sqrt(fanIn[name]), 1 / Math.sqrt(fanIn[name]));
    }
    return new MultiHeadAttention(c, weights as MhaWeights);
  }

  /** A cache for this module's key/value heads (with the module's rope); `options` a capacity or the layout. */
  newCache(batch: number, options: number | NewCacheOptions = {}): KvCache {
    const o = typeof options === 'number' ? { capacity: options } : expectOptions('options', options);
    const { numKvHeads, dK, dV, rope } = this.config;
    return new KvCache({ capacity: o.capacity, dtype: o.dtype, window: o.window, sinkTokens: o.sinkTokens, pageSize: o.pageSize, batch, numKvHeads, dK, dV, ...(rope ? { rope } : {}) });
  }

  /** xQ [B,T,d_model] -> q [B,H,T,d_k] (written into `out` when given). */
  projectQ(xQ: Tensor, out?: Tensor): Tensor {
    const [B, T] = expectRank('x_q', xQ, ['B', 'T', 'd_model']);
    expectShape('x_q', xQ, ['B', 'T', 'd_model'], [B, T, this.config.dModel]);
    const { numHeads: H, dK } = this.config;
    const q = out === undefined ? alloc('q', ['B', 'H', 'T', 'd_k'], [B, H, T, dK]) : expectShape('out', out, ['B', 'H', 'T', 'd_k'], [B, H, T, dK]);
    if (out !== undefined) expectDisjoint('out', q.data, ['x_q'], [xQ.data]);
    project(xQ, this.weights.wQ, this.weights.bQ, q.data, B, T, H, dK);
    return q;
  }

  /** xKv [B,S,d_kv_in] -> k [B,H_kv,S,d_k], v [B,H_kv,S,d_v] */
  projectKv(xKv: Tensor): { k: Tensor; v: Tensor } {
    const [B, S] = expectRank('x_kv', xKv, ['B', 'S', 'd_kv_in']);
    expectShape('x_kv', xKv, ['B', 'S', 'd_kv_in'], [B, S, this.config.dKvIn]);
    const { numKvHeads: Hkv, dK, dV } = this.config;
    const k = alloc('k', ['B', 'H_kv', 'S', 'd_k'], [B, Hkv, S, dK]), v = alloc('v', ['B', 'H_kv', 'S', 'd_v'], [B, Hkv, S, dV]);
    project(xKv, this.weights.wK, this.weights.bK, k.data, B, S, Hkv, dK);
    project(xKv, this.weights.wV, this.weights.bV, v.data, B, S, Hkv, dV);
    return { k, v };
  }

  /** Per-head output o [B,H,T,d_v] -> concat_h · w_o + b_o, [B,T,d_out] (written into `out` when given). */
  projectOut(o: Tensor, out?: Tensor): Tensor {
    const [B, , T] = expectRank('o', o, ['B', 'H', 'T', 'd_v']);
    const { numHeads: H, dV, dOut } = this.config;
    expectShape('o', o, ['B', 'H', 'T', 'd_v'], [B, H, T, dV]);
    const y = out === undefined ? alloc('output', ['B', 'T', 'd_out'], [B, T, dOut]) : expectShape('out', out, ['B', 'T', 'd_out'], [B, T, dOut]);
    if (out !== undefined) expectDisjoint('out', y.data, ['o'], [o.data]);
    addon.mergeProject(o.data, this.weights.wO.data, this.weights.bO?.data ?? null, y.data, B, H, T, dV, dOut);
    return y;
  }

  /** projectKv into the module's reused buffers (forward() only: valid until the next call). */
  private projectKvInto(xKv: Tensor): { k: Tensor; v: Tensor } {
    const [B, S] = expectRank('x_kv', xKv, ['B', 'S', 'd_kv_in']);
    expectShape('x_kv', xKv, ['B', 'S', 'd_kv_in'], [B, S, this.config.dKvIn]);
    const { numKvHeads: Hkv, dK, dV } = this.config;
    const k = { data: this.scratch.get('k', ['B', 'H_kv', 'S', 'd_k'], [B, Hkv, S, dK]), shape: [B, Hkv, S, dK] };
    const v = { data: this.scratch.get('v', ['B', 'H_kv', 'S', 'd_v'], [B, Hkv, S, dV]), shape: [B, Hkv, S, dV] };
    project(xKv, this.weights.wK, this.weights.bK, k.data, B, S, Hkv, dK);
    project(xKv, this.weights.wV, this.weights.bV, v.data, B, S, Hkv, dV);
    return { k, v };
  }

  /** Caller's out tensors (checked) or fresh ones: output [B,T,d_out], lse [B,H,T]. */
  private outputs(out: AttentionOut, B: number, T: number, xQ: Float32Array, xKv: Float32Array | null): { output: Tensor; lse: Tensor } {
    const { numHeads: H, dOut } = this.config;
    const output = out.output === undefined ? alloc('output', ['B', 'T', 'd_out'], [B, T, dOut]) : expectShape('out.output', out.output, ['B', 'T', 'd_out'], [B, T, dOut]);
    const lse = out.lse === undefined ? alloc('lse', ['B', 'H', 'T'], [B, H, T]) : expectShape('out.lse', out.lse, ['B', 'H', 'T'], [B, H, T]);
    if (out.output !== undefined) expectDisjoint('out.output', output.data, X_NAMES, [xQ, xKv]);
    if (out.lse !== undefined) expectDisjoint('out.lse', lse.data, X_OUT_NAMES, [xQ, xKv, output.data]);
    return { output, lse };
  }

  /** forward() without a cache or weights: the whole module in one native call. */
  private fused(xQ: Tensor, xKv: Tensor, options: ForwardOptions): ForwardResult {
    const c = this.config;
    const [B, T] = expectRank('x_q', xQ, ['B', 'T', 'd_model']);
    expectShape('x_q', xQ, ['B', 'T', 'd_model'], [B, T, c.dModel]);
    const [, S] = expectRank('x_kv', xKv, ['B', 'S', 'd_kv_in']);
    expectShape('x_kv', xKv, ['B', 'S', 'd_kv_in'], [B, S, c.dKvIn]);
    const score = resolveScore(options, B, c.numHeads, T, c.dK);
    const opts = attentionOptions({ scale: c.scale, causal: options.causal, qOffset: options.qOffset ?? S - T, dropout: options.dropout, score }, 0);
    const w = this.weights;
    const { output, lse } = this.outputs(expectOptions('out', options.out), B, T, xQ.data, xKv.data);
    addon.mhaForward(
      packMhaDims({ B, T, S, dModel: c.dModel, dKvIn: c.dKvIn, dOut: c.dOut, H: c.numHeads, Hkv: c.numKvHeads, dK: c.dK, dV: c.dV }, this.mhaDims), opts,
      xQ.data, xKv.data, w.wQ.data, w.bQ?.data ?? null, w.wK.data, w.bK?.data ?? null, w.wV.data, w.bV?.data ?? null, w.wO.data, w.bO?.data ?? null, output.data, lse.data,
    );
    return { output, lse };
  }

  /**
   * xQ [B,T,d_model], xKv [B,S_new,d_kv_in] (may be omitted with a cache) -> output [B,T,d_out],
   * lse [B,H,T]. With a cache, the new keys/values are appended first and the queries attend
   * to all S = S_past + S_new cached positions.
   */
  forward(xQ: Tensor, xKv: Tensor | null, options: ForwardOptions = {}): ForwardResult {
    expectOptions('options', options);
    const { cache } = options;
    if (cache !== undefined && !(cache instanceof KvCache)) throw new ArgumentError(`Expected options.cache to be a KvCache or undefined, got ${show(cache)}`);
    const plain = !this.config.rope && options.sinks === undefined && options.positions === undefined;
    if (!cache && !expectFlag('returnWeights', options.returnWeights) && xKv && plain) return this.fused(xQ, xKv, options);
    const [B, T] = expectRank('x_q', xQ, ['B', 'T', 'd_model']);
    const { numHeads: H, dK, dV } = this.config;
    // Everything checkable is checked before the cache is appended to: a rejected call leaves it as it was.
    attentionOptions({ scale: this.config.scale, causal: options.causal, qOffset: options.qOffset ?? 0, dropout: options.dropout }, 0);
    // Fixed-shape literals below, not spreads of options: V8 clones a spread options bag field by
    // field (the spreads were a third of a decode step's TypeScript time).
    const o = options, rope = this.config.rope;
    resolveScore({ softcap: o.softcap, alibi: o.alibi, window: o.window, kvRanges: o.kvRanges, qOffsets: o.qOffsets, sinks: o.sinks, rope }, B, H, T, dK);
    if (cache instanceof KvCache && !sameRope(cache.rope, this.config.rope)) {
      throw new ArgumentError(`Expected options.cache with the module's rope ${JSON.stringify(this.config.rope ?? null)}, got ${JSON.stringify(cache.rope ?? null)} (use mha.newCache())`);
    }
    if (cache instanceof KvCache && cache.window && options.window !== undefined && options.window !== cache.window) {
      throw new ArgumentError(`Expected options.window to be the cache's window ${cache.window} (or absent), got ${show(options.window)}`);
    }
    const positions = options.positions;
    if ((options as ScoreOptions).ropePositions !== undefined) throw new ArgumentError('Expected options.positions for rope position ids in forward(), got options.ropePositions (a state option)');
    if (positions !== undefined) {
      if (!this.config.rope) throw new ArgumentError('Expected options.positions only for a module with rope, got positions and no config.rope');
      if (!(positions instanceof Int32Array) || positions.length !== B * T) throw new ShapeError(`Expected options.positions shape [B,T]=[${B},${T}] (${B * T} elements) as an Int32Array, got ${show(positions)}`);
      if (xKv && xKv.shape[1] !== T) throw new ShapeError(`Expected x_kv of the same T=${T} tokens as x_q with options.positions, got ${xKv.shape[1]}`);
    }
    // A ring or paged cache is folded part by part into a state. A contiguous cache of any storage
    // type is read whole, with rope too: its keys were rotated on append. Weights need fp32 and
    // one part.
    const folded = cache instanceof KvCache && (cache.window > 0 || cache.pageSize > 0);
    if (cache instanceof KvCache && (folded || cache.dtype !== 'fp32') && expectFlag('returnWeights', options.returnWeights)) {
      throw new ArgumentError('Expected returnWeights only with a contiguous fp32 cache, got a ' + describeCache(cache));
    }
    const outs = this.outputs(expectOptions('out', options.out), B, T, xQ.data, xKv?.data ?? null);
    const q = this.projectQ(xQ, { data: this.scratch.get('q', ['B', 'H', 'T', 'd_k'], [B, H, T, dK]), shape: [B, H, T, dK] });
    let k, v;
    if (cache) {
      if (cache.batch !== q.shape[0] || cache.numKvHeads !== this.config.numKvHeads || cache.dK !== this.config.dK || cache.dV !== this.config.dV) {
        throw new ShapeError(`Expected cache [B,H_kv,d_k,d_v]=[${q.shape[0]},${this.config.numKvHeads},${this.config.dK},${this.config.dV}], got [${cache.batch},${cache.numKvHeads},${cache.dK},${cache.dV}]`);
      }
      if (xKv) {
        const kv = this.projectKvInto(xKv);
        cache.append(kv.k, kv.v, positions ? { positions } : {});
      }
      if (folded) {
        // Fold the cache's parts (ring, pages; rotated keys) into a state.
        const heads = { data: this.scratch.get('o', ['B', 'H', 'T', 'd_v'], [B, H, T, dV]), shape: [B, H, T, dV] };
        const state = new OnlineSoftmaxState(q, {
          softcap: o.softcap, alibi: o.alibi, window: o.window, kvRanges: o.kvRanges, qOffsets: o.qOffsets, sinks: o.sinks, rope, ropePositions: positions,
          dV, scale: this.config.scale, causal: o.causal, qOffset: o.qOffset ?? cache.length - T, dropout: o.dropout,
        });
        state.updateCache(cache);
        state.finalize({ out: { output: heads, lse: outs.lse } });
        return { output: this.projectOut(heads, outs.output), lse: outs.lse, cache };
      }
      [k, v] = [cache.keys(), cache.values()];
      if (this.config.rope) {
        // The queries rotated in the module's buffer at their positions (the state's rule).
        const ids = queryPositions({ ropePositions: positions, qOffsets: options.qOffsets }, B, T, options.qOffset ?? cache.length - T, this.ropeIds);
        if (ids !== positions) this.ropeIds = ids;  // ours to reuse; a caller's positions are not
        applyRope(q, ids, this.config.rope, q);
      }
    } else {
      if (!xKv) throw new ShapeError('Expected x_kv shape [B,S,d_kv_in] (or a cache), got null');
      ({ k, v } = this.projectKvInto(xKv));
      if (positions) {
        // Queries and keys are the same tokens: both rotated at the ids, in the module's buffers.
        applyRope(q, positions, this.config.rope!, q);
        applyRope(k, positions, this.config.rope!, k);
      }
    }
    const heads = { data: this.scratch.get('o', ['B', 'H', 'T', 'd_v'], [B, H, T, dV]), shape: [B, H, T, dV] };
    const r = attention(q, k, v, {
      softcap: o.softcap, alibi: o.alibi, window: o.window, kvRanges: o.kvRanges, qOffsets: o.qOffsets, sinks: o.sinks,
      rope: cache || positions ? undefined : rope, scale: this.config.scale, causal: o.causal, qOffset: o.qOffset, dropout: o.dropout,
      returnWeights: o.returnWeights, out: { output: heads, lse: outs.lse },
    });
    const result: ForwardResult = { output: this.projectOut(heads, outs.output), lse: r.lse };
    if (r.weights) result.weights = r.weights;
    if (r.mask) result.mask = r.mask;
    if (cache) result.cache = cache;
    return result;
  }
}

/** x [B,T,in] · w [in,heads·d] + b -> out [B,heads,T,d] */
function project(x: Tensor, w: Tensor, b: Tensor | undefined, out: Float32Array, B: number, T: number, heads: number, d: number): void {
  addon.projectHeads(x.data, w.data, b?.data ?? null, out, B, T, x.shape[2], heads, d);
}

function sameRope(a: RopeOptions | undefined, b: RopeOptions | undefined): boolean {
  if (!a || !b) return !a && !b;
  return a.dim === b.dim && a.theta === b.theta && a.style === b.style;
}

function describeCache(c: KvCache): string {
  return [c.window ? `window ${c.window}` : '', c.pageSize ? `paged (${c.pageSize})` : '', c.dtype !== 'fp32' ? c.dtype : '', c.rope ? 'rope' : ''].filter(Boolean).join(', ') + ' cache';
}
