// Attend over keys that arrive in chunks, and check it against one full pass.
import { attention, info, OnlineSoftmaxState, Rng } from '../src/index.ts';

const rng = new Rng(1);
const q = rng.normalTensor([1, 8, 4, 64]); // [B,H,T,d_k]
const k = rng.normalTensor([1, 2, 96, 64]); // [B,H_kv,S,d_k]: grouped-query, 4 query heads per kv head
const v = rng.normalTensor([1, 2, 96, 32]); // [B,H_kv,S,d_v]

const full = attention(q, k, v);

const state = new OnlineSoftmaxState(q, { dV: 32 });
for (let s0 = 0; s0 < 96; s0 += 32) {
  const chunk = (x: typeof k, d: number) => ({
    data: new Float32Array([0, 1].flatMap((h) => [...x.data.subarray((h * 96 + s0) * d, (h * 96 + s0 + 32) * d)])),
    shape: [1, 2, 32, d],
  });
  state.update(chunk(k, 64), chunk(v, 32), s0);
}
const streamed = state.finalize();

const maxDiff = streamed.output.data.reduce((m, x, i) => Math.max(m, Math.abs(x - full.output.data[i])), 0);
console.log(`BLAS: ${info().blas}; streamed vs full, largest difference: ${maxDiff.toExponential(2)}`);
