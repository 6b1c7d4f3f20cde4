// Chunked vs one pass through the RxJS operators, checked against the float64 module with the
// error bound of test/helpers/reference.ts (projection errors carried through attention and the
// output projection): attendChunk (fixed queries over a stream of key chunks) and prefillChunk
// (chunked causal self-attention into a cache), with dropout, MQA, d_k != d_v, causal query
// offsets of every sign, chunks of 1 and batch 2. Each emitted partial is checked against the
// reference over its prefix; the final result against the one-pass result within the sum of
// the two bounds (both are fp32 results of different GEMM shapes: never bit-compared).
import test from 'ava';
import { lastValueFrom, toArray } from 'rxjs';
import { MultiHeadAttention } from '../../src/mha.ts';
import type { MhaConfig } from '../../src/mha.ts';
import { attendChunk, chunkSizes, concatTokens, prefillChunk, projectKv, sliceTokens, splitTokens } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import type { Tensor } from '../../src/tensor.ts';
import { assertWithin, sumBounds } from '../helpers/assert.ts';
import { chunkedRescales, refModuleBound } from '../helpers/reference.ts';

/** lse parts [B,H,n_i] concatenated along their last axis. */
function concatRows(parts: readonly Tensor[]): Tensor {
  const [B, H] = parts[0].shape;
  const T = parts.reduce((a, p) => a + p.shape[2], 0);
  const out = new Float32Array(B * H * T);
  let t0 = 0;
  for (const p of parts) {
    const n = p.shape[2];
    for (let bh = 0; bh < B * H; bh++) out.set(p.data.subarray(bh * n, (bh + 1) * n), bh * T + t0);
    t0 += n;
  }
  return { data: out, shape: [B, H, T] };
}

const B = 2;
// T = 20 > 16 queries take the query-block (tile or BLAS) path, each chunk at sOffset > 0.
const MODULES: { name: string; config: MhaConfig; T: number }[] = [
  { name: 'MQA, d_k < d_v', config: { dModel: 32, dKvIn: 24, dOut: 20, numHeads: 4, numKvHeads: 1, dK: 16, dV: 24 }, T: 3 },
  { name: 'GQA 2, d_k > d_v, no bias', config: { dModel: 48, numHeads: 4, numKvHeads: 2, dK: 24, dV: 8, bias: false }, T: 3 },
  { name: 'MQA, d_k 32 > d_v 16, T 20', config: { dModel: 64, dKvIn: 40, numHeads: 4, numKvHeads: 1, dK: 32, dV: 16 }, T: 20 },
];

// attendChunk: fixed queries xQ [B,T,dModel] over S keys streamed from absolute position sOffset.
const ATTEND = [
  { name: 'plain', opts: {} },
  { name: 'causal qOffset 10 (positive)', opts: { causal: true, qOffset: 10 } },
  { name: 'causal qOffset 0, dropout', opts: { causal: true, qOffset: 0, dropout: { p: 0.3, seed: 2 ** 33 + 9 } } },
  { name: 'causal qOffset -2 (negative), dropout', opts: { causal: true, qOffset: -2, dropout: { p: 0.5, seed: 4 } } },
  { name: 'causal, stream at sOffset 5, dropout, async', opts: { causal: true, qOffset: 9, sOffset: 5, dropout: { p: 0.2, seed: 8 }, async: true } },
];
const S = 26;
const CHUNKINGS: (number | number[])[] = [1, 4, [11, 1, 13, 1], S];

for (const [mi, { name, config, T }] of MODULES.entries()) {
  const mha = MultiHeadAttention.random(config, 100 + mi);
  const rng = new Rng(200 + mi);
  const xQ = rng.normalTensor([B, T, mha.config.dModel]);
  const xKv = rng.normalTensor([B, S, mha.config.dKvIn]);

  for (const mode of ATTEND) {
    test(`attendChunk, ${name}, ${mode.name}: every partial within the bound of its prefix; final vs one pass`, async (t) => {
      const o = mode.opts as { causal?: boolean; qOffset?: number; sOffset?: number; dropout?: { p: number; seed: number } };
      const base = { causal: o.causal ?? false, qOffset: o.qOffset ?? 0, sOffset: o.sOffset ?? 0, dropout: o.dropout };
      // One pass (keys from position 0 only; the sOffset case has no one-pass counterpart).
      const full = base.sOffset === 0 ? mha.forward(xQ, xKv, { causal: base.causal, qOffset: base.qOffset, dropout: base.dropout }) : undefined;
      const fullRef = refModuleBound(mha, xQ, xKv, { ...base, rescales: chunkedRescales(S, 1) });
      if (full) {
        assertWithin(t, full.output.data, fullRef.output, fullRef.outputBound, 'one pass: output', full.output.shape);
        assertWithin(t, full.lse.data, fullRef.lse, fullRef.lseBound, 'one pass: lse', full.lse.shape);
      }
      for (const chunking of CHUNKINGS) {
        const steps = await lastValueFrom(splitTokens(xKv, chunking).pipe(projectKv(mha), attendChunk(mha, xQ, mode.opts), toArray()));
        const n = chunkSizes(S, chunking).length;
        t.is(steps.length, n);
        for (const step of steps) {
          const ref = refModuleBound(mha, xQ, sliceTokens(xKv, 0, step.end), { ...base, rescales: chunkedRescales(step.end, n) });
          const at = `chunks ${JSON.stringify(chunking)}, after ${step.end} keys`;
          assertWithin(t, step.output.data, ref.output, ref.outputBound, `${at}: output`, step.output.shape);
          assertWithin(t, step.lse.data, ref.lse, ref.lseBound, `${at}: lse`, step.lse.shape);
        }
        const last = steps[steps.length - 1];
        if (full) {
          const ref = refModuleBound(mha, xQ, xKv, { ...base, rescales: chunkedRescales(S, n) });
          assertWithin(t, last.output.data, full.output.data, sumBounds(ref.outputBound, fullRef.outputBound), `chunks ${JSON.stringify(chunking)} vs one pass: output`, full.output.shape);
          assertWithin(t, last.lse.data, full.lse.data, sumBounds(ref.lseBound, fullRef.lseBound), `chunks ${JSON.stringify(chunking)} vs one pass: lse`, full.lse.shape);
        }
      }
    });
  }
}

// prefillChunk: x [B,N,dModel] in chunks into a cache that may hold a prompt of P tokens; the
// chunk outputs concatenated equal one causal pass of the N queries (at P..P+N-1) over P+N keys.
const PREFILL = [
  { name: 'no prompt', P: 0, dropout: undefined },
  { name: 'prompt of 6, dropout', P: 6, dropout: { p: 0.25, seed: 31 } },
  { name: 'no prompt, dropout', P: 0, dropout: { p: 0.5, seed: 2 ** 45 } },
];
const N = 13;

for (const [mi, { name, config }] of [
  { name: 'MQA, d_k < d_v', config: { dModel: 32, numHeads: 4, numKvHeads: 1, dK: 16, dV: 24 } },
  { name: 'GQA 2, d_k > d_v', config: { dModel: 24, numHeads: 6, numKvHeads: 3, dK: 16, dV: 8, dOut: 16 } },
].entries()) {
  for (const mode of PREFILL) {
    test(`prefillChunk, ${name}, ${mode.name}: chunks 1, 4, uneven and whole within the bound; chunked vs one pass`, async (t) => {
      const mha = MultiHeadAttention.random(config, 300 + mi);
      const rng = new Rng(400 + mi);
      const xPrompt = rng.normalTensor([B, Math.max(mode.P, 1), mha.config.dModel]);
      const x = rng.normalTensor([B, N, mha.config.dModel]);
      const all = mode.P ? concatTokens([sliceTokens(xPrompt, 0, mode.P), x]) : x;
      const createCache = () => {
        const cache = mha.newCache(B, 2); // small: appends grow it
        if (mode.P) {
          const kv = mha.projectKv(sliceTokens(xPrompt, 0, mode.P));
          cache.append(kv.k, kv.v);
        }
        return cache;
      };
      let previous: { output: Tensor; lse: Tensor; bound: Float64Array; lseBound: Float64Array } | undefined;
      for (const chunking of [1, 4, [5, 1, 7], N]) {
        const steps = await lastValueFrom(splitTokens(x, chunking).pipe(prefillChunk(mha, createCache, { dropout: mode.dropout }), toArray()));
        const output = concatTokens(steps.map((s) => s.output)), lse = concatRows(steps.map((s) => s.lse));
        t.is(steps[steps.length - 1].cache.length, mode.P + N);
        const n = chunkSizes(N, chunking).length;
        const ref = refModuleBound(mha, x, all, { causal: true, qOffset: mode.P, dropout: mode.dropout, rescales: chunkedRescales(mode.P + N, n) });
        const label = `chunks ${JSON.stringify(chunking)}`;
        assertWithin(t, output.data, ref.output, ref.outputBound, `${label}: output`, output.shape);
        assertWithin(t, lse.data, ref.lse, ref.lseBound, `${label}: lse`, lse.shape);
        // Against the previous chunking (the last one is the whole input in one pass).
        if (previous) {
          assertWithin(t, output.data, previous.output.data, sumBounds(ref.outputBound, previous.bound), `${label} vs the previous chunking: output`, output.shape);
          assertWithin(t, lse.data, previous.lse.data, sumBounds(ref.lseBound, previous.lseBound), `${label} vs the previous chunking: lse`, lse.shape);
        }
        previous = { output, lse, bound: ref.outputBound, lseBound: ref.lseBound };
      }
    });
  }
}
