// Online-softmax streaming: any chunking and any merge order equal one full pass.
import test from 'ava';
import { attention, OnlineSoftmaxState } from '../src/attention.ts';
import { Rng } from '../src/random.ts';
import type { Tensor } from '../src/tensor.ts';
import { assertClose } from './helpers/assert.ts';

// Both sides are fp32 and differ only in summation order and in when exp(m_old - m_new)
// rescales the accumulator: a few ulps per chunk boundary, far inside 1e-5 / 1e-4 for
// outputs of magnitude ~1 (the same bound the reference parity uses).
const TOL = { atol: 1e-5, rtol: 1e-4 };

const [B, H, Hkv, T, S, dK, dV] = [2, 4, 2, 5, 301, 16, 12];

/** Positions [s0, s1) of x [B,Hkv,S,d] as [B,Hkv,s1-s0,d]. */
function slice(x: Tensor, s0: number, s1: number): Tensor {
  const [b, h, s, d] = x.shape;
  const out = new Float32Array(b * h * (s1 - s0) * d);
  for (let bh = 0; bh < b * h; bh++) out.set(x.data.subarray((bh * s + s0) * d, (bh * s + s1) * d), bh * (s1 - s0) * d);
  return { data: out, shape: [b, h, s1 - s0, d] };
}

function sizes(chunk: number | number[]): number[] {
  if (Array.isArray(chunk)) return chunk;
  const out: number[] = [];
  for (let s = 0; s < S; s += chunk) out.push(Math.min(chunk, S - s));
  return out;
}

const rng = new Rng(42);
const q = rng.normalTensor([B, H, T, dK]);
const k = rng.normalTensor([B, Hkv, S, dK]);
const v = rng.normalTensor([B, Hkv, S, dV]);

const MODES = [
  { name: 'plain', opts: {} },
  { name: 'causal', opts: { causal: true, qOffset: 150 } },
  { name: 'dropout', opts: { dropout: { p: 0.2, seed: 77 }, qOffset: 0 } },
  { name: 'causal+dropout+scale', opts: { causal: true, qOffset: 296, dropout: { p: 0.5, seed: 2 ** 40 + 3 }, scale: 0.3 } },
];
const CHUNKINGS: (number | number[])[] = [1, 3, 64, S, [100, 1, 57, 143], [7, 250, 44]];

for (const mode of MODES) {
  const full = attention(q, k, v, mode.opts);
  for (const chunking of CHUNKINGS) {
    test(`${mode.name}: chunks ${JSON.stringify(chunking)} equal one full pass, and each partial state its prefix`, (t) => {
      const state = new OnlineSoftmaxState(q, { dV, ...mode.opts });
      let s0 = 0;
      for (const n of sizes(chunking)) {
        state.update(slice(k, s0, s0 + n), slice(v, s0, s0 + n), s0);
        s0 += n;
        // Partial state after this chunk = a full pass over keys [0, s0) (spot-checked on uneven lists).
        if (Array.isArray(chunking)) {
          const prefix = attention(q, slice(k, 0, s0), slice(v, 0, s0), { ...mode.opts, qOffset: mode.opts.qOffset ?? 0 });
          const partial = state.clone().finalize();
          assertClose(t, partial.output.data, prefix.output.data, TOL, `partial output after ${s0} keys`, prefix.output.shape);
          assertClose(t, partial.lse.data, prefix.lse.data, TOL, `partial lse after ${s0} keys`, prefix.lse.shape);
        }
      }
      t.is(state.keysSeen, S);
      const r = state.finalize();
      assertClose(t, r.output.data, full.output.data, TOL, 'output', full.output.shape);
      assertClose(t, r.lse.data, full.lse.data, TOL, 'lse', full.lse.shape);
    });
  }

  test(`${mode.name}: merging states over disjoint key sets, in either order, equals one full pass`, (t) => {
    const cut = [0, 120, 121, 260, S];
    const parts = cut.slice(1).map((end, i) =>
      new OnlineSoftmaxState(q, { dV, ...mode.opts, qOffset: mode.opts.qOffset ?? 0 }).update(slice(k, cut[i], end), slice(v, cut[i], end), cut[i]));
    for (const order of [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]]) {
      const acc = parts[order[0]].clone();
      for (const i of order.slice(1)) acc.merge(parts[i]);
      const r = acc.finalize();
      assertClose(t, r.output.data, full.output.data, TOL, `output, merge order ${order}`, full.output.shape);
      assertClose(t, r.lse.data, full.lse.data, TOL, `lse, merge order ${order}`, full.lse.shape);
    }
    // Tree merge: (0 ∪ 1) ∪ (2 ∪ 3).
    const left = parts[0].clone().merge(parts[1]);
    const right = parts[2].clone().merge(parts[3]);
    assertClose(t, left.merge(right).finalize().output.data, full.output.data, TOL, 'output, tree merge', full.output.shape);
  });
}

test('merging an empty state changes nothing; a state with no keys finalizes to 0 and -inf', (t) => {
  const empty = new OnlineSoftmaxState(q, { dV });
  const r0 = empty.clone().finalize();
  t.true(r0.lse.data.every((x) => x === -Infinity));
  t.true(r0.output.data.every((x) => x === 0));
  const s = new OnlineSoftmaxState(q, { dV }).update(k, v, 0);
  const before = s.clone().finalize();
  const after = s.merge(empty).finalize();
  t.deepEqual(after.output.data, before.output.data);
  t.deepEqual(after.lse.data, before.lse.data);
});
