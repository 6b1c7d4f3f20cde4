// MultiHeadAttention over the caches real models use: a stream fed chunk by chunk through
// forward(x_chunk, x_chunk, { cache, causal }) must give, row for row, the float64 module
// reference over the whole stream under the cache's mask (window, sink tokens), its storage
// rounding, the module's rope and the score options (softcap, ALiBi, head sinks). The bound is
// the reference's: projection errors (refProjectHeads) feed the rope bound and the attention
// bound (refFeaturesBound), whose output bound feeds the output projection (refLinearBound).
import test from 'ava';
import type { ExecutionContext } from 'ava';
import type { ScoreOptions } from '../src/attention.ts';
import { ArgumentError } from '../src/errors.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import type { NewCacheOptions } from '../src/mha.ts';
import { sliceTokens } from '../src/operators/chunks.ts';
import { Rng } from '../src/random.ts';
import type { RopeOptions } from '../src/rope.ts';
import type { Tensor } from '../src/tensor.ts';
import { assertWithin } from './helpers/assert.ts';
import { refModuleFeatures, tokenRows } from './helpers/module-features.ts';

const [B, S, dModel, H, Hkv] = [2, 29, 48, 4, 2];
const dK = dModel / H, dV = dK;

interface Case {
  name: string;
  cache: NewCacheOptions;
  rope?: RopeOptions;
  score?: Omit<ScoreOptions, 'rope' | 'window' | 'ropePositions'>;
  /** [B,S] rope position ids of the stream's tokens (default 0..S-1). */
  positions?: Int32Array;
}

// A ragged batch, left padded: row 1's first 3 tokens are padding (masked by kvRanges) and its
// rope ids start at 0 after them, as transformers' position_ids = cumsum(mask) - 1.
const PAD = 3;
const leftPadIds = Int32Array.from({ length: B * S }, (_, i) => (i < S ? i : Math.max(0, i - S - PAD)));
const leftPadRanges = [0, 2 ** 31 - 1, PAD, 2 ** 31 - 1];

const CASES: Case[] = [
  { name: 'contiguous fp32', cache: {} },
  { name: 'contiguous fp32, rope', cache: {}, rope: { theta: 100 } },
  { name: 'ring window 5', cache: { window: 5 } },
  { name: 'ring window 5 + 2 sink tokens, rope', cache: { window: 5, sinkTokens: 2 }, rope: {} },
  { name: 'paged 4, rope interleaved partial', cache: { pageSize: 4 }, rope: { dim: 8, style: 'interleaved', theta: 1000 } },
  { name: 'bf16, softcap and ALiBi', cache: { dtype: 'bf16' }, score: { softcap: 3, alibi: true } },
  { name: 'int8, rope', cache: { dtype: 'int8' }, rope: { theta: 300 } },
  { name: 'left-padded ragged batch, fp16, rope at position ids', cache: { dtype: 'fp16' }, rope: {}, score: { kvRanges: leftPadRanges }, positions: leftPadIds },
  { name: 'fp16 ring window 7, head sinks', cache: { dtype: 'fp16', window: 7 }, score: { sinks: [0.5, -1, 2, 0] } },
  { name: 'int8 paged 8, rope', cache: { dtype: 'int8', pageSize: 8 }, rope: { theta: 500 } },
  { name: 'int8 ring window 6 + 1 sink token, softcap', cache: { dtype: 'int8', window: 6, sinkTokens: 1 }, score: { softcap: 2 } },
  { name: 'left-padded ragged batch, rope at position ids', cache: {}, rope: {}, score: { kvRanges: leftPadRanges }, positions: leftPadIds },
  { name: 'left-padded ragged batch, paged bf16, rope at position ids', cache: { pageSize: 8, dtype: 'bf16' }, rope: { style: 'interleaved' }, score: { kvRanges: leftPadRanges }, positions: leftPadIds },
];
const CHUNKINGS = [[S], Array<number>(S).fill(1), [5, 1, 9, 14]];

/** The module in float64 over the whole stream x [B,S,dModel] (causal, queries = keys = x), with its bound. */
/** `calls`: the update calls the keys were folded in (default S: chunks of 1; module-features counts 3 parts each). */
function reference(mha: MultiHeadAttention, x: Tensor, c: Case, calls = S) {
  return refModuleFeatures(mha, x, x, {
    calls,
    causal: true, qOffset: 0, window: c.cache.window, sinkTokens: c.cache.sinkTokens, softcap: c.score?.softcap, alibi: c.score?.alibi === true,
    kvRanges: c.score?.kvRanges as number[] | undefined, sinks: c.score?.sinks as number[] | undefined, dtype: c.cache.dtype ?? 'fp32',
    rope: c.rope, qPositions: c.positions, kPositions: c.positions,
  });
}

/** Rows [s0, s1) of every batch row of x [B,S,w]. */
const rows = (x: ArrayLike<number>, w: number, s0: number, s1: number) => tokenRows(x, B, S, w, s0, s1);

function streamCase(t: ExecutionContext, c: Case, seed: number): void {
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv, ...(c.rope ? { rope: c.rope } : {}) }, seed);
  const x = new Rng(seed + 1).normalTensor([B, S, dModel]);
  const ref = reference(mha, x, c);
  for (const chunks of CHUNKINGS) {
    const cache = mha.newCache(B, { capacity: 4, ...c.cache });
    let s0 = 0;
    for (const n of chunks) {
      const xc = sliceTokens(x, s0, s0 + n);
      const positions = c.positions ? Int32Array.from({ length: B * n }, (_, i) => c.positions![Math.floor(i / n) * S + s0 + (i % n)]) : undefined;
      const got = mha.forward(xc, xc, { cache, causal: true, ...(c.cache.window ? { window: c.cache.window } : {}), ...c.score, ...(positions ? { positions } : {}) });
      const label = `${c.name}, chunks ${chunks.length === S ? 'of 1' : JSON.stringify(chunks)}, rows [${s0}, ${s0 + n})`;
      if (!assertWithin(t, got.output.data, rows(ref.y, dModel, s0, s0 + n), rows(ref.bound, dModel, s0, s0 + n), label, [B, n, dModel])) return;
      s0 += n;
    }
    t.is(cache.length, S);
  }
}

CASES.forEach((c, i) => test(`forward over a ${c.name} cache, chunk by chunk, equals the float64 module over the whole stream`, (t) => streamCase(t, c, 40 + i)));

test('one pass without a cache takes position ids for rope and ragged rows', (t) => {
  const c = CASES.find((x) => x.name.startsWith('left-padded ragged batch, rope'))!;
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv, rope: c.rope }, 5);
  const x = new Rng(6).normalTensor([B, S, dModel]);
  const ref = reference(mha, x, c, 1);
  assertWithin(t, mha.forward(x, x, { causal: true, kvRanges: leftPadRanges, positions: leftPadIds }).output.data, ref.y, ref.bound, 'one pass, position ids', [B, S, dModel]);
  t.throws(() => MultiHeadAttention.random({ dModel, numHeads: H }, 1).forward(x, x, { positions: leftPadIds }), { instanceOf: ArgumentError, message: 'Expected options.positions only for a module with rope, got positions and no config.rope' });
});

test('one pass without a cache takes the same options (window, rope, softcap, ALiBi, sinks)', (t) => {
  const c: Case = { name: 'one pass', cache: { window: 6 }, rope: { dim: 10 }, score: { softcap: 4, alibi: true, sinks: [1, 0, -1, 0.5] } };
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv, rope: c.rope }, 7);
  const x = new Rng(8).normalTensor([B, S, dModel]);
  const ref = reference(mha, x, c, 1);
  const got = mha.forward(x, x, { causal: true, window: 6, ...c.score });
  assertWithin(t, got.output.data, ref.y, ref.bound, 'one pass', [B, S, dModel]);
});

test('the fused one-call module path takes softcap, ALiBi and a window', (t) => {
  const c: Case = { name: 'fused', cache: { window: 9 }, score: { softcap: 5, alibi: true } };
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv }, 9);
  const x = new Rng(10).normalTensor([B, S, dModel]);
  const ref = reference(mha, x, c, 1);
  assertWithin(t, mha.forward(x, x, { causal: true, window: 9, ...c.score }).output.data, ref.y, ref.bound, 'fused', [B, S, dModel]);
});

test('a cache whose rope differs from the module is refused before anything is appended', (t) => {
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv, rope: {} }, 11);
  const plain = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv }, 11).newCache(B);
  const x = new Rng(12).normalTensor([B, 3, dModel]);
  t.throws(() => mha.forward(x, x, { cache: plain, causal: true }), { instanceOf: ArgumentError, message: /^Expected options.cache with the module's rope \{"dim":12,"theta":10000,"style":"half"\}, got null/ });
  t.is(plain.length, 0);
  t.throws(() => mha.forward(x, x, { cache: mha.newCache(B, { window: 4 }), causal: true, returnWeights: true }), { instanceOf: ArgumentError, message: /^Expected returnWeights only with a contiguous fp32 cache/ });
  t.throws(() => MultiHeadAttention.random({ dModel, numHeads: H, rope: { dim: 7 } }, 1), { instanceOf: ArgumentError, message: 'Expected rope.dim to be an even integer in [2, d=12], got 7' });
});

test('returnWeights over a contiguous rope cache: output within the bound, weights causal distributions', (t) => {
  const c = CASES.find((x) => x.name === 'contiguous fp32, rope')!;
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv, rope: c.rope }, 14);
  const x = new Rng(15).normalTensor([B, S, dModel]);
  const ref = reference(mha, x, c, 2);
  const cache = mha.newCache(B, S);
  const [n0, xa, xb] = [7, sliceTokens(x, 0, 7), sliceTokens(x, 7, S)];
  mha.forward(xa, xa, { cache, causal: true });
  const got = mha.forward(xb, xb, { cache, causal: true, returnWeights: true });
  assertWithin(t, got.output.data, rows(ref.y, dModel, n0, S), rows(ref.bound, dModel, n0, S), 'returnWeights, rope', [B, S - n0, dModel]);
  // weights [B,H,T,S]: each row a distribution over the keys it may see (causal at qOffset 7).
  // A row's weights are exp(score - lse) in fp32: exp's polynomial (relative 2.3e-7), lse's
  // rounding (m + log l: a few ulps of |lse|) and the sum's S roundings bound |Σ - 1|.
  const T = S - n0, w = got.weights!.data, u = 2 ** -24;
  for (let r = 0; r < B * H * T; r++) {
    const tq = r % T;
    let sum = 0;
    for (let s = 0; s < S; s++) sum += w[r * S + s];
    for (let s = n0 + tq + 1; s < S; s++) if (w[r * S + s] !== 0) return t.fail(`weight row ${r} sees key ${s} after its position ${n0 + tq}`);
    const bound = 2.3e-7 + 4 * u * (1 + Math.abs(got.lse.data[r])) + S * u;
    if (Math.abs(sum - 1) > bound) return t.fail(`weight row ${r} sums to ${sum}, off by more than ${bound}`);
  }
  t.pass();
});

test('a window option that disagrees with a ring cache is refused', (t) => {
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv }, 13);
  const cache = mha.newCache(B, { window: 4 });
  const x = new Rng(14).normalTensor([B, 2, dModel]);
  t.throws(() => mha.forward(x, x, { cache, causal: true, window: 5 }), { instanceOf: ArgumentError, message: "Expected options.window to be the cache's window 4 (or absent), got 5" });
  t.is(cache.length, 0);
  t.notThrows(() => mha.forward(x, x, { cache, causal: true, window: 4 }));
});
