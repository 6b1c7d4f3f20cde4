// Operator path: chunked vs full, partial outputs vs prefix passes, chunked prefill vs one causal
// pass; cold, re-subscribable, errors routed to subscriber.error, state released.
import test from 'ava';
import { firstValueFrom, lastValueFrom, Observable, skip, take, toArray } from 'rxjs';
import { MultiHeadAttention } from '../../src/mha.ts';
import { appendKv, attendChunk, chunkSizes, concatTokens, prefillChunk, projectKv, sliceTokens, splitTokens } from '../../src/operators/index.ts';
import type { TokenChunk } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import { assertWithin, sumBounds } from '../helpers/assert.ts';
import { chunkedRescales, refModuleBound, refProjectHeads } from '../helpers/reference.ts';

// Chunked and one-pass results are fp32 results of different GEMM shapes and summation orders:
// never compared bit for bit. Each is checked against the float64 module within the error bound
// of test/helpers/reference.ts (projections, attention, output projection), and chunked vs one
// pass within the sum of their two bounds.

const mha = MultiHeadAttention.random({ dModel: 32, dKvIn: 24, numHeads: 4, numKvHeads: 2 }, 7);
const rng = new Rng(8);
const [B, T, S] = [2, 3, 29];
const xQ = rng.normalTensor([B, T, 32]);
const xKv = rng.normalTensor([B, S, 24]);
const full = mha.forward(xQ, xKv, { qOffset: 0 });

const streamed = (chunking: number | number[]) =>
  splitTokens(xKv, chunking).pipe(projectKv(mha), appendKv(() => mha.newCache(B)), attendChunk(mha, xQ), toArray());

const fullRef = refModuleBound(mha, xQ, xKv, { causal: false, qOffset: 0, rescales: chunkedRescales(S, 1) });

test('one pass is within the bound of the float64 module', (t) => {
  assertWithin(t, full.output.data, fullRef.output, fullRef.outputBound, 'output', full.output.shape);
  assertWithin(t, full.lse.data, fullRef.lse, fullRef.lseBound, 'lse', full.lse.shape);
});

for (const chunking of [1, 3, [10, 1, 17, 1], S]) {
  test(`streamed memory, chunks ${JSON.stringify(chunking)}: final equals one pass, each partial its prefix`, async (t) => {
    const steps = await lastValueFrom(streamed(chunking));
    const last = steps[steps.length - 1];
    t.is(last.end, S);
    const n = chunkSizes(S, chunking).length;
    const ref = refModuleBound(mha, xQ, xKv, { causal: false, qOffset: 0, rescales: chunkedRescales(S, n) });
    assertWithin(t, last.output.data, full.output.data, sumBounds(ref.outputBound, fullRef.outputBound), 'final output vs one pass', full.output.shape);
    assertWithin(t, last.lse.data, full.lse.data, sumBounds(ref.lseBound, fullRef.lseBound), 'final lse vs one pass', full.lse.shape);
    for (const step of steps) {
      const prefix = refModuleBound(mha, xQ, sliceTokens(xKv, 0, step.end), { causal: false, qOffset: 0, rescales: chunkedRescales(step.end, n) });
      assertWithin(t, step.output.data, prefix.output, prefix.outputBound, `partial output after ${step.end} keys`, step.output.shape);
      assertWithin(t, step.lse.data, prefix.lse, prefix.lseBound, `partial lse after ${step.end} keys`, step.lse.shape);
    }
    // The kept cache holds every projected key. Chunked and whole projections are GEMMs of
    // different shapes (OpenBLAS's Haswell kernel gives different bits for them): each is within
    // γ_{K+1}·(|b| + Σ|x·w|) of the float64 projection, so they differ by at most twice that.
    const { k } = last.cache.snapshot();
    const whole = mha.projectKv(xKv).k;
    const { numKvHeads, dK, dKvIn } = mha.config;
    const kRef = refProjectHeads(xKv.data, mha.weights.wK.data, mha.weights.bK?.data ?? null, B, S, dKvIn, numKvHeads, dK);
    assertWithin(t, k.data, kRef.y, kRef.bound, 'cached keys vs the float64 projection', k.shape);
    assertWithin(t, k.data, whole.data, sumBounds(kRef.bound, kRef.bound), 'cached keys vs the whole projection', k.shape);
  });
}

test('chunked causal prefill equals one causal pass (chunks 1, 5, uneven, whole)', async (t) => {
  const mhaSelf = MultiHeadAttention.random({ dModel: 32, numHeads: 4, numKvHeads: 1 }, 9);
  const x = new Rng(10).normalTensor([B, 23, 32]);
  const one = mhaSelf.forward(x, x, { causal: true });
  const oneRef = refModuleBound(mhaSelf, x, x, { causal: true, qOffset: 0, rescales: chunkedRescales(23, 1) });
  assertWithin(t, one.output.data, oneRef.output, oneRef.outputBound, 'one causal pass', one.output.shape);
  for (const chunking of [1, 5, [7, 1, 15], 23]) {
    const steps = await lastValueFrom(splitTokens(x, chunking).pipe(prefillChunk(mhaSelf, () => mhaSelf.newCache(B)), toArray()));
    const ref = refModuleBound(mhaSelf, x, x, { causal: true, qOffset: 0, rescales: chunkedRescales(23, chunkSizes(23, chunking).length) });
    const output = concatTokens(steps.map((s) => s.output));
    assertWithin(t, output.data, ref.output, ref.outputBound, `prefill output, chunks ${JSON.stringify(chunking)}`, output.shape);
    assertWithin(t, output.data, one.output.data, sumBounds(ref.outputBound, oneRef.outputBound), `prefill output vs one pass, chunks ${JSON.stringify(chunking)}`, output.shape);
    t.is(steps[steps.length - 1].cache.length, 23);
  }
});

// Two subscriptions make the same calls with the same shapes in one process: the same bits
// (a determinism check, not a comparison across GEMM shapes or kernels).
test('operators are cold and keep state per subscription: two runs give the same bits', async (t) => {
  const source = streamed([4, 25]);
  const [a, b] = await Promise.all([lastValueFrom(source), lastValueFrom(source)]);
  t.deepEqual(a.map((s) => s.output.data), b.map((s) => s.output.data));
  t.not(a[0].cache, b[0].cache, 'each subscription has its own cache');
  t.is(a[1].cache.length, S);
});

test('a kernel error reaches subscriber.error, and an early unsubscribe stops the stream', async (t) => {
  // A chunk of the wrong width: the projection throws a ShapeError inside the operator.
  const bad = new Observable<TokenChunk>((s) => {
    s.next({ index: 0, start: 0, end: 2, x: rng.normalTensor([B, 2, 24]) });
    s.next({ index: 1, start: 2, end: 4, x: rng.normalTensor([B, 2, 25]) });
    s.complete();
  });
  const err = await t.throwsAsync(lastValueFrom(bad.pipe(projectKv(mha), appendKv(() => mha.newCache(B)), attendChunk(mha, xQ))));
  t.is(err?.name, 'ShapeError');
  t.is(err?.message, 'Expected x_kv shape [B,S,d_kv_in]=[2,2,24] (96 floats), got shape [2,2,25] (100 floats)');
  // Chunks that skip tokens: appendKv refuses (and rolls the cache back) instead of misplacing keys.
  const gap = splitTokens(xKv, 5).pipe(skip(1), projectKv(mha), appendKv(() => mha.newCache(B)));
  await t.throwsAsync(firstValueFrom(gap), { name: 'ShapeError', message: 'appendKv: chunk 1 covers tokens [5, 10), the cache expected token 0' });
  let pulled = 0;
  const counted = new Observable<TokenChunk>((s) => {
    for (let i = 0; i < 100 && !s.closed; i++) {
      pulled++;
      s.next({ index: i, start: i, end: i + 1, x: sliceTokens(xKv, i % S, (i % S) + 1) });
    }
    s.complete();
  });
  await lastValueFrom(counted.pipe(projectKv(mha), take(3)));
  t.is(pulled, 3, 'unsubscribe reached the source after 3 chunks');
});
