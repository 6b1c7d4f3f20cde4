// Operator path: chunked vs full, partial outputs vs prefix passes, chunked prefill vs one causal
// pass; cold, re-subscribable, errors routed to subscriber.error, state released.
import test from 'ava';
import { firstValueFrom, lastValueFrom, Observable, skip, take, toArray } from 'rxjs';
import { MultiHeadAttention } from '../../src/mha.ts';
import { appendKv, attendChunk, concatTokens, prefillChunk, projectKv, sliceTokens, splitTokens } from '../../src/operators/index.ts';
import type { TokenChunk } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import { assertClose } from '../helpers/assert.ts';

// Chunked and one-pass results are both fp32 and differ in summation order only (see
// test/streaming.test.ts); the output projection adds an fp32 dot product of length H·d_v = 32.
const TOL = { atol: 1e-5, rtol: 1e-4 };

const mha = MultiHeadAttention.random({ dModel: 32, dKvIn: 24, numHeads: 4, numKvHeads: 2 }, 7);
const rng = new Rng(8);
const [B, T, S] = [2, 3, 29];
const xQ = rng.normalTensor([B, T, 32]);
const xKv = rng.normalTensor([B, S, 24]);
const full = mha.forward(xQ, xKv, { qOffset: 0 });

const streamed = (chunking: number | number[]) =>
  splitTokens(xKv, chunking).pipe(projectKv(mha), appendKv(() => mha.newCache(B)), attendChunk(mha, xQ), toArray());

for (const chunking of [1, 3, [10, 1, 17, 1], S]) {
  test(`streamed memory, chunks ${JSON.stringify(chunking)}: final equals one pass, each partial its prefix`, async (t) => {
    const steps = await lastValueFrom(streamed(chunking));
    const last = steps[steps.length - 1];
    t.is(last.end, S);
    assertClose(t, last.output.data, full.output.data, TOL, 'final output', full.output.shape);
    assertClose(t, last.lse.data, full.lse.data, TOL, 'final lse', full.lse.shape);
    for (const step of steps) {
      const prefix = mha.forward(xQ, sliceTokens(xKv, 0, step.end), { qOffset: 0 });
      assertClose(t, step.output.data, prefix.output.data, TOL, `partial output after ${step.end} keys`, prefix.output.shape);
    }
    const { k } = last.cache.snapshot();
    t.deepEqual(k.data, mha.projectKv(xKv).k.data, 'the kept cache holds every projected key');
  });
}

test('chunked causal prefill equals one causal pass (chunks 1, 5, uneven, whole)', async (t) => {
  const mhaSelf = MultiHeadAttention.random({ dModel: 32, numHeads: 4, numKvHeads: 1 }, 9);
  const x = new Rng(10).normalTensor([B, 23, 32]);
  const one = mhaSelf.forward(x, x, { causal: true });
  for (const chunking of [1, 5, [7, 1, 15], 23]) {
    const steps = await lastValueFrom(splitTokens(x, chunking).pipe(prefillChunk(mhaSelf, () => mhaSelf.newCache(B)), toArray()));
    assertClose(t, concatTokens(steps.map((s) => s.output)).data, one.output.data, TOL, `prefill output, chunks ${JSON.stringify(chunking)}`, one.output.shape);
    t.is(steps[steps.length - 1].cache.length, 23);
  }
});

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
