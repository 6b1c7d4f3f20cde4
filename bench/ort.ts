// onnxruntime-node peers: the com.microsoft MultiHeadAttention op for the core, and Attention
// (packed QKV projection, optional past/present) + MatMul + Add for the whole module.
import * as ort from 'onnxruntime-node';
import type { MultiHeadAttention } from '../src/mha.ts';
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
