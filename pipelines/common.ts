// What the pipelines share: drawing inputs, weights as arrays and back, and the three kinds of
// run (one forward pass, streamed memory, chunked causal self-attention).
import { map, of, toArray } from 'rxjs';
import type { Observable } from 'rxjs';
import { f32 } from '../src/fixture.ts';
import type { Arrays } from '../src/fixture.ts';
import type { NpyArray } from '../src/io/npy.ts';
import type { CaseConfig } from '../src/manifest.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import type { MhaConfig, MhaWeights } from '../src/mha.ts';
import { appendKv, attendChunk, concatTokens, prefillChunk, projectKv, splitTokens } from '../src/operators/index.ts';
import { Rng } from '../src/random.ts';
import type { Tensor } from '../src/tensor.ts';

export const INPUT_NAMES = ['x_q', 'x_kv', 'w_q', 'w_k', 'w_v', 'w_o', 'b_q', 'b_k', 'b_v', 'b_o', 'k_cache_in', 'v_cache_in', 'chunk_sizes'] as const;

const WEIGHTS: [string, keyof MhaWeights][] = [['w_q', 'wQ'], ['w_k', 'wK'], ['w_v', 'wV'], ['w_o', 'wO'], ['b_q', 'bQ'], ['b_k', 'bK'], ['b_v', 'bV'], ['b_o', 'bO']];

/** A case config with the defaults filled in; sizes per DESIGN.md. */
export function caseConfig(c: Partial<CaseConfig> & Pick<CaseConfig, 'batch' | 'd_model' | 'num_heads' | 't_q' | 't_kv'>): CaseConfig {
  const d_k = c.d_k ?? c.d_model / c.num_heads;
  const t_past = c.t_past ?? 0;
  return {
    batch: c.batch, d_model: c.d_model, d_kv_in: c.d_kv_in ?? c.d_model, d_out: c.d_out ?? c.d_model,
    num_heads: c.num_heads, num_kv_heads: c.num_kv_heads ?? c.num_heads, d_k, d_v: c.d_v ?? d_k,
    t_q: c.t_q, t_kv: c.t_kv, t_past,
    causal: c.causal ?? false, q_offset: c.q_offset ?? t_past + c.t_kv - c.t_q,
    scale: c.scale ?? 1 / Math.sqrt(d_k), dropout_p: c.dropout_p ?? 0, bias: c.bias ?? true,
    chunk_sizes: c.chunk_sizes ?? null,
  };
}

export function mhaConfig(c: CaseConfig): MhaConfig {
  return { dModel: c.d_model, dKvIn: c.d_kv_in, dOut: c.d_out, numHeads: c.num_heads, numKvHeads: c.num_kv_heads, dK: c.d_k, dV: c.d_v, bias: c.bias, scale: c.scale };
}

export function tensorOf(a: NpyArray | undefined, name: string): Tensor {
  if (!a || !(a.data instanceof Float32Array)) throw new TypeError(`missing float32 input ${name}`);
  return { data: a.data, shape: a.shape };
}

/** The module with the weights stored among `inputs`. */
export function mhaFrom(inputs: Arrays, c: CaseConfig): MultiHeadAttention {
  const weights: Partial<MhaWeights> = {};
  for (const [file, key] of WEIGHTS) if (inputs.has(file)) weights[key] = tensorOf(inputs.get(file), file);
  return new MultiHeadAttention(mhaConfig(c), weights as MhaWeights);
}

export interface InputPlan {
  /** Self-attention: x_q is the same tokens as x_kv (t_q must equal t_kv). */
  self?: boolean;
  /** Draw a past cache k_cache_in / v_cache_in of t_past positions (projected from random tokens). */
  cacheIn?: boolean;
}

/**
 * Inputs from a seed: weights from Rng(seed) (MultiHeadAttention.random), then from Rng(seed, 1)
 * in this order: x_kv [B,t_kv,d_kv_in], x_q [B,t_q,d_model] (unless self), and with cacheIn the
 * tokens x_past [B,t_past,d_kv_in] whose projections become k_cache_in / v_cache_in.
 */
export function drawInputs(seed: number, c: CaseConfig, plan: InputPlan = {}): Arrays {
  const mha = MultiHeadAttention.random(mhaConfig(c), seed);
  const rng = new Rng(seed, 1);
  const xKv = rng.normalTensor([c.batch, c.t_kv, c.d_kv_in]);
  const xQ = plan.self ? xKv : rng.normalTensor([c.batch, c.t_q, c.d_model]);
  const arrays: Arrays = new Map([['x_q', f32(xQ)], ['x_kv', f32(xKv)]]);
  for (const [file, key] of WEIGHTS) {
    const w = mha.weights[key];
    if (w) arrays.set(file, f32(w));
  }
  if (plan.cacheIn) {
    const past = mha.projectKv(rng.normalTensor([c.batch, c.t_past, c.d_kv_in]));
    arrays.set('k_cache_in', f32(past.k));
    arrays.set('v_cache_in', f32(past.v));
  }
  if (c.chunk_sizes) arrays.set('chunk_sizes', { dtype: '<i4', shape: [c.chunk_sizes.length], data: Int32Array.from(c.chunk_sizes) });
  return arrays;
}

/** A cache for the module holding k_cache_in / v_cache_in when the inputs have them. */
function cacheFrom(mha: MultiHeadAttention, inputs: Arrays, batch: number) {
  const cache = mha.newCache(batch);
  if (inputs.has('k_cache_in')) cache.append(tensorOf(inputs.get('k_cache_in'), 'k_cache_in'), tensorOf(inputs.get('v_cache_in'), 'v_cache_in'));
  return cache;
}

export interface ForwardPlan {
  returnWeights?: boolean;
  /** Run over a cache (holding k_cache_in when present) and return it as k_cache / v_cache. */
  cache?: boolean;
}

/** One forward pass of the module. */
export function runForward(inputs: Arrays, c: CaseConfig, seed: number, plan: ForwardPlan = {}): Observable<Arrays> {
  return of(inputs).pipe(
    map((inp) => {
      const mha = mhaFrom(inp, c);
      const cache = plan.cache ? cacheFrom(mha, inp, c.batch) : undefined;
      const dropout = c.dropout_p > 0 ? { p: c.dropout_p, seed } : undefined;
      const r = mha.forward(tensorOf(inp.get('x_q'), 'x_q'), tensorOf(inp.get('x_kv'), 'x_kv'), { causal: c.causal, qOffset: c.q_offset, cache, dropout, returnWeights: plan.returnWeights });
      const out: Arrays = new Map([['output', f32(r.output)], ['lse', f32(r.lse)]]);
      if (r.weights) out.set('attn_weights', f32(r.weights));
      if (r.mask) out.set('dropout_mask', { dtype: '|u1', shape: r.mask.shape, data: r.mask.data });
      if (cache) {
        const snap = cache.snapshot();
        out.set('k_cache', f32(snap.k)).set('v_cache', f32(snap.v));
      }
      return out;
    }),
  );
}

function chunksOf(inputs: Arrays, c: CaseConfig): number[] {
  const sizes = inputs.get('chunk_sizes');
  return sizes ? [...sizes.data] : c.chunk_sizes ?? [c.t_kv];
}

/**
 * Streamed memory: x_kv split by chunk_sizes, projected, appended to a kept cache and folded
 * into the queries' online-softmax state; emits partial_outputs [n,B,T,d_out], the final
 * output and lse, and the cache.
 */
export function runStreaming(inputs: Arrays, c: CaseConfig): Observable<Arrays> {
  const mha = mhaFrom(inputs, c);
  return splitTokens(tensorOf(inputs.get('x_kv'), 'x_kv'), chunksOf(inputs, c)).pipe(
    projectKv(mha),
    appendKv(() => cacheFrom(mha, inputs, c.batch)),
    attendChunk(mha, tensorOf(inputs.get('x_q'), 'x_q'), { causal: c.causal, qOffset: c.q_offset, sOffset: c.t_past }),
    toArray(),
    map((steps) => {
      const last = steps[steps.length - 1];
      const partial = new Float32Array(steps.length * last.output.data.length);
      steps.forEach((s, i) => partial.set(s.output.data, i * last.output.data.length));
      const snap = last.cache.snapshot();
      return new Map([
        ['output', f32(last.output)],
        ['lse', f32(last.lse)],
        ['partial_outputs', { dtype: '<f4', shape: [steps.length, ...last.output.shape], data: partial }],
        ['k_cache', f32(snap.k)],
        ['v_cache', f32(snap.v)],
      ]) as Arrays;
    }),
  );
}

/**
 * Chunked causal self-attention over a cache (holding k_cache_in when present): x_kv split by
 * chunk_sizes; the chunk outputs are concatenated into output [B,t_kv,d_out] and lse [B,H,t_kv].
 */
export function runPrefill(inputs: Arrays, c: CaseConfig, seed: number): Observable<Arrays> {
  const mha = mhaFrom(inputs, c);
  const dropout = c.dropout_p > 0 ? { p: c.dropout_p, seed } : undefined;
  return splitTokens(tensorOf(inputs.get('x_kv'), 'x_kv'), chunksOf(inputs, c)).pipe(
    prefillChunk(mha, () => cacheFrom(mha, inputs, c.batch), { dropout }),
    toArray(),
    map((steps) => {
      const output = concatTokens(steps.map((s) => s.output));
      // lse [B,H,n_i] -> [B,H,T]: the same concatenation with B·H rows of one value per token.
      const lse = concatTokens(steps.map((s) => ({ data: s.lse.data, shape: [s.lse.shape[0] * s.lse.shape[1], s.lse.shape[2], 1] })));
      const snap = steps[steps.length - 1].cache.snapshot();
      return new Map([
        ['output', f32(output)],
        ['lse', { dtype: '<f4', shape: [c.batch, c.num_heads, c.t_kv], data: lse.data }],
        ['k_cache', f32(snap.k)],
        ['v_cache', f32(snap.v)],
      ]) as Arrays;
    }),
  );
}
