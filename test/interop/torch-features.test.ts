// kvstream's score options against torch (float32, written as the model code does it:
// test/interop/torch_features.py): ALiBi (Bloom's slopes and bias, and the symmetric distance
// form), sliding window, softcap (Gemma 2), rotary (transformers' rotate_half and GPT-J's
// rotate_every_two, partial), sinks (gpt-oss's concatenated sink column), ragged rows (left and
// right padding with per-row query offsets), and all of them at once. Both sides are held to the
// float64 reference: kvstream within refFeaturesBound, torch within twice it (its matmul and
// softmax are not the kernels the bound was derived for). Torch's rotary angles come from fp32
// tables (inv_freq and pos·inv_freq in fp32); their measured difference to kvstream's float64
// angles enters torch's bound (cachedRopeBound). Skipped with a message when /usr/bin/python3
// cannot import torch.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { attention, Rng } from '../../src/index.ts';
import type { AttentionOptions } from '../../src/index.ts';
import { angleErrors, cachedRopeBound } from '../helpers/ort-gqa.ts';
import { refAlibiSlopes, refFeaturesBound, refRope, refRopeBound } from '../helpers/reference-features.ts';
import type { FeatureBoundOpts } from '../helpers/reference-features.ts';
import { chunkedRescales } from '../helpers/reference.ts';
import { checkWithin } from '../helpers/assert.ts';

const PY = '/usr/bin/python3';
const B = 2, H = 6, Hkv = 2;

interface Rope { dim: number; theta: number; style: 'half' | 'interleaved' }
interface Case {
  name: string;
  T: number;
  S: number;
  d: number;
  causal: boolean;
  qOffsets: number[];
  window?: number;
  softcap?: number;
  /** Torch's form: Bloom's + slope·s (causal only: the same softmax) or - slope·|t - s|. */
  alibi?: 'bloom' | 'distance';
  sinks?: number[];
  kvRanges?: number[];
  rope?: Rope;
  /** Query amplitude (large scores for softcap). */
  amp?: number;
}

const sinks = [0.5, -1, 2, 0, -3, 1.5];
const CASES: Case[] = [
  { name: 'alibi (Bloom bias + slope·s, causal, H=6: non-power-of-2 slopes)', T: 5, S: 9, d: 16, causal: true, qOffsets: [4, 4], alibi: 'bloom' },
  { name: 'alibi (- slope·|t - s|, bidirectional)', T: 4, S: 7, d: 16, causal: false, qOffsets: [3, 3], alibi: 'distance' },
  { name: 'sliding window 3 (Mistral mask)', T: 6, S: 12, d: 16, causal: true, qOffsets: [6, 6], window: 3 },
  { name: 'softcap 2 (Gemma 2)', T: 5, S: 8, d: 16, causal: true, qOffsets: [3, 3], softcap: 2, amp: 4 },
  { name: 'rotary half (rotate_half), queries at 6..9', T: 4, S: 10, d: 16, causal: true, qOffsets: [6, 6], rope: { dim: 16, theta: 10000, style: 'half' } },
  { name: 'rotary interleaved (rotate_every_two), rotary_dim 8 of 16, theta 500000', T: 4, S: 10, d: 16, causal: true, qOffsets: [6, 6], rope: { dim: 8, theta: 500000, style: 'interleaved' } },
  { name: 'sinks with window 4 (gpt-oss)', T: 6, S: 10, d: 16, causal: true, qOffsets: [4, 4], sinks, window: 4 },
  { name: 'ragged rows: left padding 2 (row 0), right padding at 6 (row 1), per-row query offsets', T: 4, S: 9, d: 16, causal: true, qOffsets: [5, 2], kvRanges: [2, 9, 0, 6] },
  {
    name: 'all at once: rotary, ALiBi, softcap, window, sinks, ragged rows', T: 4, S: 11, d: 16, causal: true, qOffsets: [7, 3], kvRanges: [1, 11, 0, 7],
    rope: { dim: 16, theta: 10000, style: 'half' }, alibi: 'distance', softcap: 3, window: 5, sinks, amp: 2,
  },
];

function randn(n: number, seed: number, amp = 1): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => amp * r.normal());
}

const inputs = CASES.map((c, i) => ({
  q: randn(B * H * c.T * c.d, 100 + 3 * i, c.amp ?? 1), k: randn(B * Hkv * c.S * c.d, 101 + 3 * i), v: randn(B * Hkv * c.S * c.d, 102 + 3 * i),
}));

const probe = spawnSync(PY, ['-c', 'import torch'], { encoding: 'utf8' });
if (probe.status !== 0) {
  test.skip(`torch features: skipped, ${PY} cannot import torch (apt-get install python3-torch): ${(probe.stderr || String(probe.error)).trim().split('\n').pop()}`, () => {});
} else {
  const payload = JSON.stringify({
    cases: CASES.map((c, i) => ({
      name: c.name, B, H, Hkv, T: c.T, S: c.S, d: c.d, q: Array.from(inputs[i].q), k: Array.from(inputs[i].k), v: Array.from(inputs[i].v),
      scale: 1 / Math.sqrt(c.d), causal: c.causal, q_offsets: c.qOffsets, window: c.window, softcap: c.softcap, alibi: c.alibi,
      sinks: c.sinks, kv_ranges: c.kvRanges, rope: c.rope,
    })),
  });
  const run = spawnSync(PY, ['test/interop/torch_features.py'], { input: payload, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (run.status !== 0) throw new Error(`torch_features.py failed (status ${run.status}): ${run.stderr}`);
  const { torch: version, results } = JSON.parse(run.stdout) as { torch: string; results: Record<string, { out: number[]; angles: number[] | null }> };

  for (const [i, c] of CASES.entries()) {
    test(`torch ${version}: ${c.name}`, (t) => check(t, c, inputs[i], results[c.name], version));
  }
}

function check(t: ExecutionContext, c: Case, x: { q: Float32Array; k: Float32Array; v: Float32Array }, r: { out: number[]; angles: number[] | null }, version: string): void {
  const { T, S, d } = c, scale = 1 / Math.sqrt(d);
  const dims = { B, H, Hkv, T, S, dK: d, dV: d };
  const qPos = new Int32Array(B * T), kPos = new Int32Array(B * S);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) qPos[b * T + t] = c.qOffsets[b] + t;
    for (let s = 0; s < S; s++) kPos[b * S + s] = s;
  }
  const o: FeatureBoundOpts = {
    scale, causal: c.causal, qOffsets: c.qOffsets, window: c.window, softcap: c.softcap, sinks: c.sinks, kvRanges: c.kvRanges,
    alibi: c.alibi ? refAlibiSlopes(H).map(Math.fround) : undefined, rescales: chunkedRescales(S, 1),
  };
  const kvOpts: AttentionOptions = {
    causal: c.causal, qOffsets: c.qOffsets, qOffset: 0, window: c.window, softcap: c.softcap, sinks: c.sinks, kvRanges: c.kvRanges,
    alibi: c.alibi ? true : undefined, rope: c.rope,
  };
  const kv = attention({ data: x.q, shape: [B, H, T, d] }, { data: x.k, shape: [B, Hkv, S, d] }, { data: x.v, shape: [B, Hkv, S, d] }, kvOpts);
  let ref, refTorch;
  if (c.rope) {
    const qd = { B, H, T, d }, kd = { B, H: Hkv, T: S, d };
    const q64 = refRope(x.q, qd, qPos, c.rope), k64 = refRope(x.k, kd, kPos, c.rope);
    ref = refFeaturesBound(q64, k64, x.v, dims, { ...o, dq: refRopeBound(x.q, qd, qPos, c.rope), dk: refRopeBound(x.k, kd, kPos, c.rope) });
    const maxPos = r.angles!.length / (c.rope.dim / 2);
    const dAngle = angleErrors(r.angles!, maxPos, c.rope.dim, c.rope.theta);
    refTorch = refFeaturesBound(q64, k64, x.v, dims, { ...o, dq: cachedRopeBound(x.q, qd, qPos, c.rope, dAngle), dk: cachedRopeBound(x.k, kd, kPos, c.rope, dAngle) });
    t.log(`torch's fp32 rotary angles vs float64, positions < ${maxPos}: max ${Math.max(...dAngle).toExponential(2)} rad`);
  } else {
    ref = refTorch = refFeaturesBound(x.q, x.k, x.v, dims, o);
  }
  for (let row = 0; row < ref.visible.length; row++) t.true(ref.visible[row] > 0, `row ${row} sees no key (torch would give NaN): fix the case`);
  const shape = [B, H, T, d];
  const a = checkWithin(kv.output.data, ref.out, ref.outBound, 'kvstream vs float64 reference', shape);
  const b = checkWithin(r.out, refTorch.out, refTorch.outBound.map((e) => 2 * e), `torch ${version} fp32 vs float64 reference (2x bound)`, shape);
  t.true(a.ok, a.message);
  t.true(b.ok, b.message);
  let pair = 0;
  for (let i = 0; i < r.out.length; i++) pair = Math.max(pair, Math.abs(r.out[i] - kv.output.data[i]));
  t.log(`max |kvstream - torch| ${pair.toExponential(2)}; ${a.message}`);
}
