// MultiHeadAttention and linear vs float64 references, with and without a KV cache.
import test from 'ava';
import { MultiHeadAttention } from '../src/mha.ts';
import { addon } from '../src/native.ts';
import { Rng } from '../src/random.ts';
import type { Tensor } from '../src/tensor.ts';
import { refAttention, refLinear } from './helpers/reference.ts';
import { assertClose } from './helpers/assert.ts';

// Projections add fp32 dot products of length d_model (<= 96 here) to the attention error:
// relative error ~ sqrt(K)·2^-24 per output, so the kernel tolerances still hold.
const TOL = { atol: 1e-5, rtol: 1e-4 };

test('linear matches float64 on odd sizes, with and without bias', (t) => {
  const rng = new Rng(11);
  for (const [M, K, N] of [[1, 1, 1], [7, 13, 5], [130, 70, 33], [3, 300, 257]]) {
    const x = rng.normalTensor([M, K]), w = rng.normalTensor([K, N]), b = rng.normalTensor([N]);
    for (const bias of [b.data, null]) {
      const y = new Float32Array(M * N);
      addon.linear(x.data, w.data, bias, y, M, K, N);
      // Inputs are N(0,1): |y| ~ sqrt(K), so the absolute bound scales with sqrt(K).
      assertClose(t, y, refLinear(x.data, w.data, bias, M, K, N), { atol: 1e-5 * Math.sqrt(K), rtol: 1e-4 }, `linear ${M}x${K}x${N} bias=${!!bias}`, [M, N]);
    }
  }
});

/** The whole module in float64: projections, heads, attention, output projection. */
function refForward(mha: MultiHeadAttention, xQ: Tensor, xKvAll: Tensor, opts: { causal: boolean; qOffset: number; kPast?: Tensor; vPast?: Tensor }) {
  const { dModel, dKvIn, dOut, numHeads: H, numKvHeads: Hkv, dK, dV, scale } = mha.config;
  const w = mha.weights;
  const [B, T] = xQ.shape, Snew = xKvAll.shape[1];
  const Spast = opts.kPast?.shape[2] ?? 0, S = Spast + Snew;
  const qf = refLinear(xQ.data, w.wQ.data, w.bQ?.data ?? null, B * T, dModel, H * dK);
  const kf = refLinear(xKvAll.data, w.wK.data, w.bK?.data ?? null, B * Snew, dKvIn, Hkv * dK);
  const vf = refLinear(xKvAll.data, w.wV.data, w.bV?.data ?? null, B * Snew, dKvIn, Hkv * dV);
  const q = new Float64Array(B * H * T * dK), k = new Float64Array(B * Hkv * S * dK), v = new Float64Array(B * Hkv * S * dV);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) for (let tt = 0; tt < T; tt++) for (let i = 0; i < dK; i++) q[((b * H + h) * T + tt) * dK + i] = qf[(b * T + tt) * H * dK + h * dK + i];
    for (let h = 0; h < Hkv; h++)
      for (let s = 0; s < S; s++) {
        for (let i = 0; i < dK; i++) k[((b * Hkv + h) * S + s) * dK + i] = s < Spast ? opts.kPast!.data[((b * Hkv + h) * Spast + s) * dK + i] : kf[(b * Snew + s - Spast) * Hkv * dK + h * dK + i];
        for (let i = 0; i < dV; i++) v[((b * Hkv + h) * S + s) * dV + i] = s < Spast ? opts.vPast!.data[((b * Hkv + h) * Spast + s) * dV + i] : vf[(b * Snew + s - Spast) * Hkv * dV + h * dV + i];
      }
  }
  const att = refAttention(q, k, v, { B, H, Hkv, T, S, dK, dV }, { scale, causal: opts.causal, qOffset: opts.qOffset });
  const merged = new Float64Array(B * T * H * dV);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let tt = 0; tt < T; tt++) for (let i = 0; i < dV; i++) merged[(b * T + tt) * H * dV + h * dV + i] = att.out[((b * H + h) * T + tt) * dV + i];
  return { output: refLinear(merged, w.wO.data, w.bO?.data ?? null, B * T, H * dV, dOut), lse: att.lse };
}

const CONFIGS = [
  { name: 'self, bias', config: { dModel: 32, numHeads: 4 } },
  { name: 'cross, d_kv_in != d_model, no bias', config: { dModel: 24, dKvIn: 40, dOut: 16, numHeads: 2, bias: false } },
  { name: 'd_k != d_v, grouped kv', config: { dModel: 32, numHeads: 4, numKvHeads: 2, dK: 8, dV: 12 } },
  { name: 'multi-query, custom scale', config: { dModel: 48, numHeads: 6, numKvHeads: 1, scale: 0.2 } },
];

for (const { name, config } of CONFIGS) {
  test(`MultiHeadAttention matches the float64 module: ${name}`, (t) => {
    const mha = MultiHeadAttention.random(config, 1);
    const rng = new Rng(2);
    const [B, T, S] = [3, 5, 11];
    const xQ = rng.normalTensor([B, T, mha.config.dModel]);
    const xKv = rng.normalTensor([B, S, mha.config.dKvIn]);
    for (const causal of [false, true]) {
      const r = mha.forward(xQ, xKv, { causal });
      const ref = refForward(mha, xQ, xKv, { causal, qOffset: S - T });
      t.deepEqual(r.output.shape, [B, T, mha.config.dOut]);
      assertClose(t, r.output.data, ref.output, TOL, `output causal=${causal}`, r.output.shape);
      assertClose(t, r.lse.data, ref.lse, TOL, `lse causal=${causal}`, r.lse.shape);
    }
  });

  test(`MultiHeadAttention with a cache appends first and attends to the whole cache: ${name}`, (t) => {
    const mha = MultiHeadAttention.random(config, 5);
    const rng = new Rng(6);
    const [B, T] = [2, 3];
    const xPast = rng.normalTensor([B, 9, mha.config.dKvIn]);
    const xNew = rng.normalTensor([B, 4, mha.config.dKvIn]);
    const xQ = rng.normalTensor([B, T, mha.config.dModel]);
    const cache = mha.newCache(B, 2); // tiny capacity: forces growth
    const past = mha.projectKv(xPast);
    cache.append(past.k, past.v);
    const r = mha.forward(xQ, xNew, { cache, causal: true });
    t.is(r.cache, cache);
    t.is(cache.length, 13);
    const ref = refForward(mha, xQ, xNew, { causal: true, qOffset: 13 - T, kPast: past.k, vPast: past.v });
    assertClose(t, r.output.data, ref.output, TOL, 'output', r.output.shape);
    assertClose(t, r.lse.data, ref.lse, TOL, 'lse', r.lse.shape);
  });
}

test('MultiHeadAttention.random is reproducible from its seed and differs across seeds', (t) => {
  const a = MultiHeadAttention.random({ dModel: 16, numHeads: 2 }, 3);
  const b = MultiHeadAttention.random({ dModel: 16, numHeads: 2 }, 3);
  const c = MultiHeadAttention.random({ dModel: 16, numHeads: 2 }, 4);
  t.deepEqual(a.weights.wQ.data, b.weights.wQ.data);
  t.deepEqual(a.weights.bO!.data, b.weights.bO!.data);
  t.notDeepEqual(a.weights.wQ.data, c.weights.wQ.data);
  const bound = Math.sqrt(6 / (16 + 16));
  t.true(a.weights.wQ.data.every((x) => Math.abs(x) <= bound), 'Xavier-uniform bound');
});

test('forward with a cache: a rejected out or option leaves the cache as it was', (t) => {
  const mha = MultiHeadAttention.random({ dModel: 16, numHeads: 2 }, 4);
  const rng = new Rng(41);
  const cache = mha.newCache(1, 8);
  const x = rng.normalTensor([1, 3, 16]);
  t.throws(() => mha.forward(x, x, { cache, out: { output: { data: new Float32Array(47), shape: [1, 3, 16] } } }), {
    name: 'ShapeError', message: 'Expected out.output shape [B,T,d_out]=[1,3,16] (48 floats), got 47',
  });
  t.throws(() => mha.forward(x, x, { cache, causal: 'yes' as never }), { name: 'ArgumentError', message: 'Expected causal to be true, false or undefined, got "yes"' });
  t.throws(() => mha.forward(x, x, { cache, out: { output: { data: x.data, shape: [1, 3, 16] } } }), {
    name: 'ArgumentError', message: 'Expected out.output not to overlap x_q, got bytes [0, 192) of the same ArrayBuffer as x_q [0, 192)',
  });
  t.is(cache.length, 0);
  const out = { output: { data: new Float32Array(48), shape: [1, 3, 16] }, lse: { data: new Float32Array(6), shape: [1, 2, 3] } };
  const r = mha.forward(x, x, { cache, causal: true, out });
  t.is(r.output, out.output);
  t.is(cache.length, 3);
  const plain = mha.forward(x, x, { causal: true });
  assertClose(t, out.output.data, plain.output.data, TOL, 'cached forward into out vs the fused pass', [1, 3, 16]);
});
