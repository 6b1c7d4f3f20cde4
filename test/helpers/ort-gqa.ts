// onnxruntime-node's com.microsoft GroupQueryAttention (CPU EP) as a one-node graph, for the
// parity tests of test/interop/gqa.test.ts. The graph is written with bench/onnx.ts's protobuf
// writer, whose graph inputs are fp32 only: the int32 inputs (seqlens_k, total_sequence_length)
// and int64 position_ids enter as fp32 (exact: small integers) and go through a Cast node.
// Layouts are ORT's: query [B,S,H·d], key/value [B,S,H_kv·d] (BSNH), past/present [B,H_kv,P,d] (BNSH).
import * as ort from 'onnxruntime-node';
import { onnxModel } from '../../bench/onnx.ts';
import type { Attr, Node, Value } from '../../bench/onnx.ts';
import { refRopeBound } from './reference-features.ts';
import { SECOND_ORDER } from './reference.ts';

export interface GqaAttrs {
  numHeads: number;
  kvNumHeads: number;
  /** ORT's attribute as given (-1 or absent: off). */
  localWindowSize?: number;
  doRotary?: boolean;
  rotaryInterleaved?: boolean;
  softcap?: number;
  smoothSoftmax?: boolean;
  scale?: number;
  /** ORT's `causal` attribute (default 1); 0 is bidirectional. */
  causal?: boolean;
  /** sliding_window_cache=1: past/present hold the most recent positions only (needs localWindowSize). */
  slidingWindowCache?: boolean;
}

/** Which optional inputs the graph has. */
export interface GqaGraphInputs {
  past?: boolean;
  rotary?: boolean;
  positionIds?: boolean;
  attentionBias?: boolean;
  headSink?: boolean;
}

export interface GqaFeeds {
  /** [B,S,H·d] */
  query: Float32Array;
  /** [B,S,H_kv·d] */
  key: Float32Array;
  value: Float32Array;
  /** [B,H_kv,P,d] */
  pastKey?: Float32Array;
  pastValue?: Float32Array;
  pastLength?: number;
  /** [B]: ORT's seqlens_k (total length of row b minus 1). */
  seqlensK: ArrayLike<number>;
  totalSequenceLength: number;
  /** [maxPos, rotaryHalf] */
  cos?: Float32Array;
  /** rotary_dim / 2: the caches' row width. */
  rotaryHalf?: number;
  sin?: Float32Array;
  /** [B,S] */
  positionIds?: ArrayLike<number>;
  /** [1,H,S,totalSequenceLength], added to the scaled (and capped) scores. */
  attentionBias?: Float32Array;
  /** [H] */
  headSink?: Float32Array;
}

export interface GqaResult {
  /** [B,S,H·d] */
  output: Float32Array;
  /** [B,H_kv,P_present,d] */
  presentKey: Float32Array;
  presentValue: Float32Array;
  presentDims: number[];
}

const CAST_INT32 = 6, CAST_INT64 = 7;

/** The GQA model bytes for these attributes and optional inputs (head width d, batch B). */
export function gqaModel(a: GqaAttrs, d: number, g: GqaGraphInputs = {}): Uint8Array {
  const { numHeads: H, kvNumHeads: Hkv } = a;
  const attrs: Attr[] = [{ name: 'num_heads', int: H }, { name: 'kv_num_heads', int: Hkv }];
  if (a.localWindowSize !== undefined) attrs.push({ name: 'local_window_size', int: a.localWindowSize });
  if (a.doRotary) attrs.push({ name: 'do_rotary', int: 1 });
  if (a.rotaryInterleaved !== undefined) attrs.push({ name: 'rotary_interleaved', int: a.rotaryInterleaved ? 1 : 0 });
  if (a.softcap !== undefined) attrs.push({ name: 'softcap', float: a.softcap });
  if (a.smoothSoftmax !== undefined) attrs.push({ name: 'smooth_softmax', int: a.smoothSoftmax ? 1 : 0 });
  if (a.scale !== undefined) attrs.push({ name: 'scale', float: a.scale });
  if (a.causal !== undefined) attrs.push({ name: 'causal', int: a.causal ? 1 : 0 });
  if (a.slidingWindowCache !== undefined) attrs.push({ name: 'sliding_window_cache', int: a.slidingWindowCache ? 1 : 0 });
  const inputs: Value[] = [
    { name: 'query', dims: ['B', 'S', H * d] }, { name: 'key', dims: ['B', 'S', Hkv * d] }, { name: 'value', dims: ['B', 'S', Hkv * d] },
    { name: 'seqlens_f', dims: ['B'] }, { name: 'total_f', dims: [1] },
  ];
  const nodes: Node[] = [
    { op: 'Cast', inputs: ['seqlens_f'], outputs: ['seqlens_k'], attrs: [{ name: 'to', int: CAST_INT32 }] },
    { op: 'Cast', inputs: ['total_f'], outputs: ['total_sequence_length'], attrs: [{ name: 'to', int: CAST_INT32 }] },
  ];
  if (g.past) inputs.push({ name: 'past_key', dims: ['B', Hkv, 'P', d] }, { name: 'past_value', dims: ['B', Hkv, 'P', d] });
  if (g.rotary) inputs.push({ name: 'cos_cache', dims: ['M', 'R'] }, { name: 'sin_cache', dims: ['M', 'R'] });
  if (g.positionIds) {
    inputs.push({ name: 'position_f', dims: ['B', 'S'] });
    nodes.push({ op: 'Cast', inputs: ['position_f'], outputs: ['position_ids'], attrs: [{ name: 'to', int: CAST_INT64 }] });
  }
  if (g.attentionBias) inputs.push({ name: 'attention_bias', dims: [1, H, 'S', 'T'] });
  if (g.headSink) inputs.push({ name: 'head_sink', dims: [H] });
  nodes.push({
    op: 'GroupQueryAttention', domain: 'com.microsoft', attrs,
    inputs: ['query', 'key', 'value', g.past ? 'past_key' : '', g.past ? 'past_value' : '', 'seqlens_k', 'total_sequence_length',
      g.rotary ? 'cos_cache' : '', g.rotary ? 'sin_cache' : '', g.positionIds ? 'position_ids' : '', g.attentionBias ? 'attention_bias' : '', g.headSink ? 'head_sink' : ''],
    outputs: ['output', 'present_key', 'present_value'],
  });
  // Trailing empty optional inputs are dropped (a node's input list may end early).
  const gqa = nodes[nodes.length - 1];
  while (gqa.inputs[gqa.inputs.length - 1] === '') gqa.inputs.pop();
  return onnxModel({
    nodes, inputs,
    outputs: [{ name: 'output', dims: ['B', 'S', H * d] }, { name: 'present_key', dims: ['B', Hkv, 'T', d] }, { name: 'present_value', dims: ['B', Hkv, 'T', d] }],
  });
}

// Session creations are serialized: the environment variable below is process-wide and ava runs a
// file's tests concurrently.
let creating: Promise<unknown> = Promise.resolve();

/**
 * A session of the GQA graph on the CPU EP. `disableFlash` creates it with
 * ORT_GQA_DISABLE_FLASH_ATTENTION=1 (ORT reads it when the kernel is built; it picks the tiled
 * online-softmax path or the full-matrix path), restored afterwards.
 */
export function gqaSession(a: GqaAttrs, d: number, g: GqaGraphInputs = {}, disableFlash = false): Promise<ort.InferenceSession> {
  const create = async () => {
    const key = 'ORT_GQA_DISABLE_FLASH_ATTENTION', before = process.env[key];
    if (disableFlash) process.env[key] = '1';
    else delete process.env[key];
    try {
      return await ort.InferenceSession.create(gqaModel(a, d, g), {
        intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential',
        extra: { session: { intra_op: { allow_spinning: '0' } } },
      });
    } finally {
      if (before === undefined) delete process.env[key];
      else process.env[key] = before;
    }
  };
  const session = creating.then(create);
  creating = session.catch(() => undefined);
  return session;
}

/** Runs the session: dims B, S (queries), H, H_kv, d. */
export async function runGqa(session: ort.InferenceSession, f: GqaFeeds, dims: { B: number; S: number; H: number; Hkv: number; d: number }): Promise<GqaResult> {
  const { B, S, H, Hkv, d } = dims;
  const t = (data: Float32Array, shape: number[]) => new ort.Tensor('float32', data, shape);
  const feeds: Record<string, ort.Tensor> = {
    query: t(f.query, [B, S, H * d]), key: t(f.key, [B, S, Hkv * d]), value: t(f.value, [B, S, Hkv * d]),
    seqlens_f: t(Float32Array.from(f.seqlensK), [B]), total_f: t(Float32Array.of(f.totalSequenceLength), [1]),
  };
  const names = session.inputNames;
  if (names.includes('past_key')) {
    const P = f.pastLength ?? 0;
    feeds.past_key = t(f.pastKey ?? new Float32Array(0), [B, Hkv, P, d]);
    feeds.past_value = t(f.pastValue ?? new Float32Array(0), [B, Hkv, P, d]);
  }
  if (names.includes('cos_cache')) {
    const R = f.rotaryHalf!, M = f.cos!.length / R;
    feeds.cos_cache = t(f.cos!, [M, R]);
    feeds.sin_cache = t(f.sin!, [M, R]);
  }
  if (names.includes('position_f')) feeds.position_f = t(Float32Array.from(f.positionIds!), [B, S]);
  if (names.includes('attention_bias')) feeds.attention_bias = t(f.attentionBias!, [1, H, S, f.totalSequenceLength]);
  if (names.includes('head_sink')) feeds.head_sink = t(f.headSink!, [H]);
  const r = await session.run(feeds);
  return {
    output: r.output.data as Float32Array, presentKey: r.present_key.data as Float32Array,
    presentValue: r.present_value.data as Float32Array, presentDims: [...r.present_key.dims],
  };
}

// ---------------------------------------------------------------------------------------------
// Rotary tables as peers build them (ORT's cos_cache/sin_cache, transformers' rotary embedding):
// inv_freq = 1 / theta^(2i/dim) and pos·inv_freq in fp32, where kvstream computes the angle
// pos·theta^(-2i/dim) in float64 (src/rope.ts). The difference is measured, not assumed.
// ---------------------------------------------------------------------------------------------

export interface RopeCaches {
  /** [maxPos, half] */
  cos: Float32Array;
  sin: Float32Array;
  /** [maxPos, half]: |fp32 angle - float64 angle|. */
  dAngle: Float64Array;
  half: number;
}

/** cos/sin tables [maxPos, dim/2] from fp32 angles (each fp32 op emulated by Math.fround). */
export function ropeCachesFp32(maxPos: number, dim: number, theta: number): RopeCaches {
  const half = dim / 2, angles = new Float32Array(maxPos * half);
  for (let i = 0; i < half; i++) {
    const inv = Math.fround(1 / Math.fround(Math.fround(theta) ** Math.fround((2 * i) / dim)));
    for (let p = 0; p < maxPos; p++) angles[p * half + i] = Math.fround(p * inv);
  }
  return { cos: angles.map(Math.cos), sin: angles.map(Math.sin), dAngle: angleErrors(angles, maxPos, dim, theta), half };
}

/** |angle - pos·theta^(-2i/dim)| per entry of a peer's angle table [maxPos, dim/2]. */
export function angleErrors(angles: ArrayLike<number>, maxPos: number, dim: number, theta: number): Float64Array {
  const half = dim / 2, out = new Float64Array(maxPos * half);
  for (let p = 0; p < maxPos; p++) for (let i = 0; i < half; i++) out[p * half + i] = Math.abs(angles[p * half + i] - p * theta ** (-(2 * i) / dim));
  return out;
}

/**
 * refRopeBound plus the angle error of a peer's tables, for x [B,heads,T,d] at positions [B,T]:
 * cos and sin each move by <= |Δ|, so a rotated pair moves by <= |Δ|(|x1| + |x2|) per element.
 */
export function cachedRopeBound(x: Float32Array, dims: { B: number; H: number; T: number; d: number }, pos: Int32Array,
  rope: { dim: number; theta: number; style: 'half' | 'interleaved' }, dAngle: Float64Array): Float64Array {
  const bound = refRopeBound(x, dims, pos, rope);
  const { B, H: heads, T, d } = dims, half = rope.dim / 2;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < heads; h++)
      for (let t = 0; t < T; t++) {
        const o = ((b * heads + h) * T + t) * d, p = pos[b * T + t];
        for (let i = 0; i < half; i++) {
          const [i1, i2] = rope.style === 'interleaved' ? [2 * i, 2 * i + 1] : [i, i + half];
          const e = SECOND_ORDER * dAngle[p * half + i] * (Math.abs(x[o + i1]) + Math.abs(x[o + i2]));
          bound[o + i1] += e;
          bound[o + i2] += e;
        }
      }
  return bound;
}
