// The caches real models use, on one module: rotary positions, a sliding window with sink
// tokens, an int8 cache, pages shared between beams, speculative rollback. Each streamed result
// is compared with one pass over the whole sequence. Run: npx tsx examples/model-cache.ts
import { MultiHeadAttention, Rng, sliceTokens } from '../src/index.ts';
import type { Tensor } from '../src/index.ts';

const [B, S, dModel] = [1, 64, 128];
const mha = MultiHeadAttention.random({ dModel, numHeads: 8, numKvHeads: 2, rope: { theta: 10000 } }, 7);
const x = new Rng(8).normalTensor([B, S, dModel]); // [B,S,d_model]

/** Largest |a - b| of rows [s0, s0 + n) of b against a chunk's output a. */
function maxDiff(a: Tensor, b: Tensor, s0: number): number {
  const n = a.shape[1], w = a.shape[2];
  let m = 0;
  for (let t = 0; t < n * w; t++) m = Math.max(m, Math.abs(a.data[t] - b.data[s0 * w + t]));
  return m;
}

/** Feeds x chunk by chunk (prefill of 40, then decode) through a cache; returns the worst difference. */
function stream(options: Parameters<MultiHeadAttention['newCache']>[1], full: Tensor, window?: number): number {
  const cache = mha.newCache(B, options);
  let worst = 0;
  for (let s0 = 0; s0 < S; ) {
    const n = s0 === 0 ? 40 : 1;
    const xc = sliceTokens(x, s0, s0 + n);
    const { output } = mha.forward(xc, xc, { cache, causal: true, ...(window ? { window } : {}) });
    worst = Math.max(worst, maxDiff(output, full, s0));
    s0 += n;
  }
  return worst;
}

// One pass over the whole sequence, causal (rope from the module's config).
const full = mha.forward(x, x, { causal: true }).output;
const windowed = mha.forward(x, x, { causal: true, window: 16 }).output;

console.log('contiguous fp32 cache   max |streamed - one pass| =', stream({}, full).toExponential(2));
console.log('ring cache, window 16   max |streamed - one pass| =', stream({ window: 16 }, windowed, 16).toExponential(2));
console.log('int8 cache              max |streamed - one pass| =', stream({ dtype: 'int8' }, full).toExponential(2));
console.log('bf16 paged cache (16)   max |streamed - one pass| =', stream({ dtype: 'bf16', pageSize: 16 }, full).toExponential(2));

// Speculative decoding: append a draft of 4 tokens, reject them (crop), continue: as if never appended.
const cache = mha.newCache(B, { pageSize: 16 });
mha.forward(sliceTokens(x, 0, 40), sliceTokens(x, 0, 40), { cache, causal: true });
const draft = new Rng(9).normalTensor([B, 4, dModel]);
mha.forward(draft, draft, { cache, causal: true });
cache.crop(40); // all 4 rejected: back to the prompt
const next = mha.forward(sliceTokens(x, 40, 41), sliceTokens(x, 40, 41), { cache, causal: true }).output;
console.log('rollback then re-append max |streamed - one pass| =', maxDiff(next, full, 40).toExponential(2));

// Beams: fork shares the prompt's pages (copy on write); select repeats a row for 3 beams.
const beams = cache.select([0, 0, 0]);
console.log(`beams: ${beams.batch} rows of ${beams.length} positions sharing the prompt's pages`);
