// Native attention vs the independent float64 reference on a seeded grid.
import test from 'ava';
import { attention, OnlineSoftmaxState } from '../src/attention.ts';
import { Rng } from '../src/random.ts';
import { refAttention } from './helpers/reference.ts';
import { assertClose } from './helpers/assert.ts';

// fp32 vs float64: each output is a convex combination of v rows (|v| ~ 1) whose weights carry
// ~1e-7 relative error from exp and the d_k-term dot products, plus the accumulation over S
// terms in fp32 (~S·2^-24 relative in the worst case, far less on average). 1e-5 absolute and
// 1e-4 relative cover S = 1500 with margin; lse (|lse| up to ~10) gets the same bound.
const TOL = { atol: 1e-5, rtol: 1e-4 };

const HEADS: [number, number][] = [[1, 1], [2, 1], [2, 2], [4, 1], [4, 2], [4, 4], [8, 1], [8, 2], [8, 4], [8, 8]];
const TS = [1, 5, 64];
const SS = [1, 7, 300, 1500];

interface Case { B: number; H: number; Hkv: number; T: number; S: number; dK: number; dV: number; causal: boolean; qOffset?: number; scale?: number; dropout?: { p: number; seed: number } }

// Every (H, H_kv) × T × S; B, d_k/d_v, mask, q_offset, scale and dropout drawn from a seeded stream.
function grid(): Case[] {
  const rng = new Rng(20261126, 7);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rng.uniform() * xs.length)];
  const cases: Case[] = [];
  for (const [H, Hkv] of HEADS)
    for (const T of TS)
      for (const S of SS) {
        const [dK, dV] = pick([[16, 24], [8, 4], [32, 16]]);
        const c: Case = { B: pick([1, 3]), H, Hkv, T, S, dK, dV, causal: rng.uniform() < 0.5 };
        if (c.causal) c.qOffset = pick([undefined, 0, S - 1, S, -T, Math.floor(S / 2)]);
        if (rng.uniform() < 0.3) c.scale = pick([0.05, 0.5, 1.0]);
        if (rng.uniform() < 0.3) c.dropout = { p: pick([0.1, 0.5]), seed: Math.floor(rng.uniform() * 2 ** 32) };
        cases.push(c);
      }
  return cases;
}

for (const c of grid()) {
  const name = `B${c.B} H${c.H}/${c.Hkv} T${c.T} S${c.S} dk${c.dK} dv${c.dV}${c.causal ? ` causal@${c.qOffset ?? 'default'}` : ''}${c.scale ? ` scale${c.scale}` : ''}${c.dropout ? ` drop${c.dropout.p}` : ''}`;
  test(`native vs float64 reference: ${name}`, (t) => {
    const rng = new Rng(c.B * 1000003 + c.H * 1009 + c.T * 31 + c.S);
    const q = rng.normalTensor([c.B, c.H, c.T, c.dK]);
    const k = rng.normalTensor([c.B, c.Hkv, c.S, c.dK]);
    const v = rng.normalTensor([c.B, c.Hkv, c.S, c.dV]);
    const small = c.T * c.S <= 64 * 300;
    const r = attention(q, k, v, { causal: c.causal, qOffset: c.qOffset, scale: c.scale, dropout: c.dropout, returnWeights: small || c.dropout !== undefined });
    const ref = refAttention(q.data, k.data, v.data, c, {
      scale: c.scale ?? 1 / Math.sqrt(c.dK),
      causal: c.causal,
      qOffset: c.qOffset ?? c.S - c.T,
      keep: r.mask?.data,
      p: c.dropout?.p,
    });
    t.deepEqual(r.output.shape, [c.B, c.H, c.T, c.dV]);
    assertClose(t, r.output.data, ref.out, TOL, 'output', r.output.shape);
    assertClose(t, r.lse.data, ref.lse, TOL, 'lse', r.lse.shape);
    if (r.weights) assertClose(t, r.weights.data, ref.probs, TOL, 'weights', r.weights.shape);
    if (c.dropout) t.truthy(r.mask, 'mask returned with dropout');
  });
}

test('a fully masked row gives output 0 and lse -inf, never NaN', (t) => {
  const rng = new Rng(5);
  const [B, H, T, S, d] = [2, 2, 6, 9, 8];
  const q = rng.normalTensor([B, H, T, d]), k = rng.normalTensor([B, 1, S, d]), v = rng.normalTensor([B, 1, S, d]);
  // qOffset -3: queries 0..2 sit before key 0 and see nothing; queries 3..5 see keys 0..2.
  for (const dropout of [undefined, { p: 0.3, seed: 9 }]) {
    const r = attention(q, k, v, { causal: true, qOffset: -3, dropout, returnWeights: true });
    for (let bh = 0; bh < B * H; bh++)
      for (let tt = 0; tt < T; tt++) {
        const row = bh * T + tt;
        if (tt < 3) {
          t.is(r.lse.data[row], -Infinity);
          t.true(r.output.data.subarray(row * d, (row + 1) * d).every((x) => x === 0), `row ${row} output is 0`);
          t.true(r.weights!.data.subarray(row * S, (row + 1) * S).every((x) => x === 0), `row ${row} weights are 0`);
        } else {
          t.true(Number.isFinite(r.lse.data[row]));
        }
      }
    t.false(r.output.data.some(Number.isNaN));
  }
});

// The tile (d_k, d_v multiples of 16, T > 16) with every edge at once: a query block of 128 plus
// a tail of 2, key blocks of 512 plus a tail that is not a multiple of its 12-key (AVX-512) or
// 6-key (AVX2) micro-tile, the causal diagonal inside a block, dropout, grouped heads. (Where
// info().tile is false, the same case checks the BLAS path.)
test('tile-shaped case: d 64, T 130, S 1100, causal, dropout, grouped heads', (t) => {
  const [B, H, Hkv, T, S, dK, dV] = [1, 4, 2, 130, 1100, 64, 48];
  const rng = new Rng(99);
  const q = rng.normalTensor([B, H, T, dK]), k = rng.normalTensor([B, Hkv, S, dK]), v = rng.normalTensor([B, Hkv, S, dV]);
  for (const qOffset of [S - T, 400]) {
    const r = attention(q, k, v, { causal: true, qOffset, dropout: { p: 0.2, seed: 7 }, returnWeights: true });
    const ref = refAttention(q.data, k.data, v.data, { B, H, Hkv, T, S, dK, dV }, { scale: 1 / Math.sqrt(dK), causal: true, qOffset, keep: r.mask!.data, p: 0.2 });
    assertClose(t, r.output.data, ref.out, TOL, `output, qOffset ${qOffset}`, r.output.shape);
    assertClose(t, r.lse.data, ref.lse, TOL, `lse, qOffset ${qOffset}`, r.lse.shape);
  }
});

test('out tensors: checked with the shape template, not overlapping the inputs, untouched on error', (t) => {
  const rng = new Rng(31);
  const [B, H, T, S, d] = [1, 2, 3, 5, 8];
  const q = rng.normalTensor([B, H, T, d]), k = rng.normalTensor([B, 1, S, d]), v = rng.normalTensor([B, 1, S, d]);
  const lse = { data: new Float32Array(6), shape: [1, 2, 3] };
  t.throws(() => attention(q, k, v, { out: { output: { data: new Float32Array(40), shape: [1, 2, 3, 8] } } }), {
    name: 'ShapeError', message: 'Expected out.output shape [B,H,T,d_v]=[1,2,3,8] (48 floats), got 40',
  });
  t.throws(() => attention(q, k, v, { out: { lse: { data: new Float32Array(6), shape: [2, 3] } } }), {
    name: 'ShapeError', message: 'Expected out.lse shape [B,H,T]=[1,2,3] (6 floats), got shape [2,3] (6 floats)',
  });
  t.throws(() => attention(q, k, v, { out: { output: { data: q.data.subarray(0, 48), shape: [1, 2, 3, 8] } } }), {
    name: 'ArgumentError', message: 'Expected out.output not to overlap q, got bytes [0, 192) of the same ArrayBuffer as q [0, 192)',
  });
  const both = new Float32Array(54);
  t.throws(() => attention(q, k, v, { out: { output: { data: both.subarray(0, 48), shape: [1, 2, 3, 8] }, lse: { data: both.subarray(46, 52), shape: [1, 2, 3] } } }), {
    name: 'ArgumentError', message: 'Expected out.lse not to overlap out.output, got bytes [184, 208) of the same ArrayBuffer as out.output [0, 192)',
  });
  // A bad k after good out tensors: the call throws before writing into them.
  const output = { data: new Float32Array(48).fill(3), shape: [1, 2, 3, 8] };
  t.throws(() => attention(q, k, { data: v.data, shape: [1, 1, 5, 9] }, { out: { output, lse } }), { name: 'ShapeError' });
  t.true(output.data.every((x) => x === 3), 'out.output untouched after a rejected call');
  const r = attention(q, k, v, { out: { lse } });
  t.is(r.lse, lse, 'out.lse alone is used; output is fresh');
  t.deepEqual(r.output.shape, [1, 2, 3, 8]);
});

test('finalize options and reset checks', (t) => {
  const rng = new Rng(32);
  const q = rng.normalTensor([1, 2, 3, 8]), k = rng.normalTensor([1, 2, 4, 8]), v = rng.normalTensor([1, 2, 4, 8]);
  const s = new OnlineSoftmaxState(q, { dV: 8 }).update(k, v);
  const output = { data: new Float32Array(48), shape: [1, 2, 3, 8] };
  t.throws(() => s.finalize({ consume: true, out: { output } }), { name: 'ArgumentError', message: 'Expected either consume or out.output, got both' });
  t.throws(() => s.finalize({ out: { output: { data: s.acc, shape: [1, 2, 3, 8] } } }), { name: 'ArgumentError', message: /^Expected out.output not to overlap acc/ });
  t.throws(() => s.reset(rng.normalTensor([1, 2, 4, 8])), { name: 'ShapeError', message: 'Expected q shape [B,H,T,d_k]=[1,2,3,8] (48 floats), got shape [1,2,4,8] (64 floats)' });
  t.throws(() => s.reset(undefined, { qOffset: 0.5 }), { name: 'ArgumentError', message: 'Expected qOffset to be a 32-bit integer, got 0.5' });
  const a = s.finalize(), b = s.finalize(true); // the first leaves the state as it was
  t.deepEqual(a.output.data, b.output.data);
  t.is(b.output.data, s.acc, 'consume writes over the accumulator');
  s.reset().update(k, v);
  t.deepEqual(s.finalize().output.data, a.output.data, 'a spent state is usable again after reset()');
  t.is(s.keysSeen, 4);
});

test('update with a missing key or value chunk names it (not an engine TypeError)', (t) => {
  const rng = new Rng(77);
  const state = new OnlineSoftmaxState(rng.normalTensor([1, 1, 1, 4]), { dV: 4 });
  const k = rng.normalTensor([1, 1, 3, 4]);
  t.throws(() => state.update(k, null as never), { name: 'ArgumentError', message: 'Expected v to be an object, got null' });
  t.throws(() => state.update(undefined as never, k), { name: 'ShapeError', message: 'Expected k rank 4 [B,H_kv,S,d_k], got undefined' });
});
