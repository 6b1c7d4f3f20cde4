// onnxruntime-node peers: the com.microsoft MultiHeadAttention op for the core, and Attention
// (packed QKV projection, optional past/present) + MatMul + Add for the whole module.
import * as ort from 'onnxruntime-node';
import type { MultiHeadAttention } from '../src/mha.ts';
import { f32ToF16 } from '../src/io/npy.ts';
import { onnxModel } from './onnx.ts';

export type Feeds = Record<string, ort.Tensor>;
export type OrtTensor = ort.Tensor;

function session(model: Uint8Array, threads: number): Promise<ort.InferenceSession> {
  // No spinning: ORT's idle workers would otherwise spin after each run and steal the cores
  // from whichever system runs next in the alternation.
  return ort.InferenceSession.create(model, {
    intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential',
    extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } },
  });
}

/** q [B,T,H·d], k/v [B,S,H·d] -> o [B,T,H·d]. */
export function coreSession(heads: number, width: number, causal: boolean, threads: number) {
  return session(onnxModel({
    nodes: [{ op: 'MultiHeadAttention', domain: 'com.microsoft', inputs: ['q', 'k', 'v'], outputs: ['o'], attrs: [{ name: 'num_heads', int: heads }, { name: 'unidirectional', int: causal ? 1 : 0 }] }],
    inputs: [{ name: 'q', dims: ['B', 'T', width] }, { name: 'k', dims: ['B', 'S', width] }, { name: 'v', dims: ['B', 'S', width] }],
    outputs: [{ name: 'o', dims: ['B', 'T', width] }],
  }), threads);
}

/**
 * The module with `mha`'s weights: x [B,T,d_model] (+ past [2,B,H,P,d]) -> y [B,T,d_out]
 * (+ present [2,B,H,P+T,d]). Requires H_kv = H and d_k = d_v (the Attention op's layout).
 */
export function moduleSession(mha: MultiHeadAttention, causal: boolean, withPast: boolean, threads: number) {
  const { dModel, numHeads: H, dK, dOut } = mha.config;
  const w = mha.weights;
  const hidden = H * dK;
  const qkv = new Float32Array(dModel * 3 * hidden);
  for (let i = 0; i < dModel; i++) {
    qkv.set(w.wQ.data.subarray(i * hidden, (i + 1) * hidden), i * 3 * hidden);
    qkv.set(w.wK.data.subarray(i * hidden, (i + 1) * hidden), i * 3 * hidden + hidden);
    qkv.set(w.wV.data.subarray(i * hidden, (i + 1) * hidden), i * 3 * hidden + 2 * hidden);
  }
  const bias = new Float32Array(3 * hidden);
  bias.set(w.bQ!.data, 0);
  bias.set(w.bK!.data, hidden);
  bias.set(w.bV!.data, 2 * hidden);
  return session(onnxModel({
    nodes: [
      { op: 'Attention', domain: 'com.microsoft', inputs: ['x', 'w_qkv', 'b_qkv', '', ...(withPast ? ['past'] : [])], outputs: ['a', ...(withPast ? ['present'] : [])], attrs: [{ name: 'num_heads', int: H }, { name: 'unidirectional', int: causal ? 1 : 0 }] },
      { op: 'MatMul', inputs: ['a', 'w_o'], outputs: ['ao'] },
      { op: 'Add', inputs: ['ao', 'b_o'], outputs: ['y'] },
    ],
    inputs: [{ name: 'x', dims: ['B', 'T', dModel] }, ...(withPast ? [{ name: 'past', dims: [2, 'B', H, 'P', dK] }] : [])],
    outputs: [{ name: 'y', dims: ['B', 'T', dOut] }, ...(withPast ? [{ name: 'present', dims: [2, 'B', H, 'PT', dK] }] : [])],
    initializers: [
      { name: 'w_qkv', dims: [dModel, 3 * hidden], data: qkv },
      { name: 'b_qkv', dims: [3 * hidden], data: bias },
      { name: 'w_o', dims: [hidden, dOut], data: w.wO.data },
      { name: 'b_o', dims: [dOut], data: w.bO!.data },
    ],
  }), threads);
}

export const f32 = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims);
export const version = ort.env.versions.common;

const CAST_INT32 = 6, FLOAT16 = 10;

/** A float16 tensor of fp32 data (round to nearest even). */
export const f16 = (data: Float32Array, dims: number[]) => new ort.Tensor('float16', f32ToF16(data), dims);

export interface GqaModuleOptions {
  /** local_window_size: key s visible to query t iff t - W < s (test/interop/gqa.test.ts pins W = local_window_size). */
  window?: number;
  /** sliding_window_cache=1: past/present keep a fixed buffer of the most recent positions (with window). */
  slidingWindowCache?: boolean;
  /** do_rotary=1 (half-split, rotary over the whole head) with cos_cache/sin_cache inputs [maxPos, d/2]. */
  rotary?: boolean;
  /**
   * 'fp16': GQA runs in fp16 (ORT's CPU GQA has fp16 kernels, no bf16): past/present are float16
   * tensors, the projections stay fp32 with Casts around GQA.
   */
  cache?: 'fp32' | 'fp16';
}

/**
 * The module with `mha`'s weights around com.microsoft GroupQueryAttention (causal, with past):
 * x [B,T,d_model], past_key/past_value [B,H_kv,P,d] -> y [B,T,d_out], present_key/present_value.
 * seqlens_k and total_sequence_length enter as fp32 and go through Cast (bench/onnx.ts writes
 * fp32 inputs only), as test/helpers/ort-gqa.ts does. Requires d_k = d_v.
 */
export function gqaModuleSession(mha: MultiHeadAttention, threads: number, o: GqaModuleOptions = {}) {
  const { dModel, numHeads: H, numKvHeads: Hkv, dK: d, dOut } = mha.config;
  const w = mha.weights;
  const attrs = [{ name: 'num_heads', int: H }, { name: 'kv_num_heads', int: Hkv }];
  if (o.window !== undefined) attrs.push({ name: 'local_window_size', int: o.window });
  if (o.slidingWindowCache) attrs.push({ name: 'sliding_window_cache', int: 1 });
  if (o.rotary) attrs.push({ name: 'do_rotary', int: 1 }, { name: 'rotary_interleaved', int: 0 });
  const half = o.cache === 'fp16', et = half ? FLOAT16 : 1;
  const proj = (name: string, wName: string, bName: string) => [
    { op: 'MatMul', inputs: ['x', wName], outputs: [`${name}_mm`] },
    { op: 'Add', inputs: [`${name}_mm`, bName], outputs: [half ? `${name}_32` : name] },
    ...(half ? [{ op: 'Cast', inputs: [`${name}_32`], outputs: [name], attrs: [{ name: 'to', int: FLOAT16 }] }] : []),
  ];
  return session(onnxModel({
    nodes: [
      ...proj('query', 'w_q', 'b_q'), ...proj('key', 'w_k', 'b_k'), ...proj('value', 'w_v', 'b_v'),
      { op: 'Cast', inputs: ['seqlens_f'], outputs: ['seqlens_k'], attrs: [{ name: 'to', int: CAST_INT32 }] },
      { op: 'Cast', inputs: ['total_f'], outputs: ['total_sequence_length'], attrs: [{ name: 'to', int: CAST_INT32 }] },
      {
        op: 'GroupQueryAttention', domain: 'com.microsoft', attrs,
        inputs: ['query', 'key', 'value', 'past_key', 'past_value', 'seqlens_k', 'total_sequence_length', ...(o.rotary ? ['cos_cache', 'sin_cache'] : [])],
        outputs: [half ? 'a16' : 'a', 'present_key', 'present_value'],
      },
      ...(half ? [{ op: 'Cast', inputs: ['a16'], outputs: ['a'], attrs: [{ name: 'to', int: 1 }] }] : []),
      { op: 'MatMul', inputs: ['a', 'w_o'], outputs: ['ao'] },
      { op: 'Add', inputs: ['ao', 'b_o'], outputs: ['y'] },
    ],
    inputs: [
      { name: 'x', dims: ['B', 'T', dModel] }, { name: 'past_key', dims: ['B', Hkv, 'P', d], elemType: et }, { name: 'past_value', dims: ['B', Hkv, 'P', d], elemType: et },
      { name: 'seqlens_f', dims: ['B'] }, { name: 'total_f', dims: [1] },
      ...(o.rotary ? [{ name: 'cos_cache', dims: ['M', d / 2] }, { name: 'sin_cache', dims: ['M', d / 2] }] : []),
    ],
    outputs: [{ name: 'y', dims: ['B', 'T', dOut] }, { name: 'present_key', dims: ['B', Hkv, 'PT', d], elemType: et }, { name: 'present_value', dims: ['B', Hkv, 'PT', d], elemType: et }],
    initializers: [
      { name: 'w_q', dims: [dModel, H * d], data: w.wQ.data }, { name: 'b_q', dims: [H * d], data: w.bQ!.data },
      { name: 'w_k', dims: [dModel, Hkv * d], data: w.wK.data }, { name: 'b_k', dims: [Hkv * d], data: w.bK!.data },
      { name: 'w_v', dims: [dModel, Hkv * d], data: w.wV.data }, { name: 'b_v', dims: [Hkv * d], data: w.bV!.data },
      { name: 'w_o', dims: [H * d, dOut], data: w.wO.data }, { name: 'b_o', dims: [dOut], data: w.bO!.data },
    ],
  }), threads);
}

/** cos/sin caches [maxPos, d/2] for do_rotary (theta 10000, rotary over the whole head d). */
export function rotaryCaches(maxPos: number, d: number, theta = 10000) {
  const half = d / 2, cos = new Float32Array(maxPos * half), sin = new Float32Array(maxPos * half);
  for (let p = 0; p < maxPos; p++)
    for (let i = 0; i < half; i++) {
      const a = p * theta ** (-(2 * i) / d);
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  return { cos: f32(cos, [maxPos, half]), sin: f32(sin, [maxPos, half]) };
}

/**
 * One GQA-module step: x [B,T,d_model] after `past` positions held in pastK/pastV; returns the
 * present tensors (the next past). With a sliding window cache, past tensors keep their size.
 */
export async function gqaStep(s: ort.InferenceSession, x: Float32Array, dims: [number, number, number], pastK: ort.Tensor, pastV: ort.Tensor, past: number, extra: Feeds = {}) {
  const [B, T, dModel] = dims;
  const total = past + T;
  const r = await s.run({
    x: f32(x, [B, T, dModel]), past_key: pastK, past_value: pastV,
    seqlens_f: f32(new Float32Array(B).fill(total - 1), [B]), total_f: f32(Float32Array.of(total), [1]), ...extra,
  });
  return { k: r.present_key, v: r.present_value };
}
