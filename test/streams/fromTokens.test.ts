// Token rows from Readables, async iterables and highland streams: regrouped chunks equal
// splitTokens', one item pulled at a time, the source closed on every ending, shape errors.
import test from 'ava';
import _ from 'highland';
import { Readable } from 'node:stream';
import { lastValueFrom, take, tap, toArray } from 'rxjs';
import { ArgumentError, ShapeError } from '../../src/errors.ts';
import { sliceTokens, splitTokens } from '../../src/operators/index.ts';
import type { TokenChunk } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import { fromTokens } from '../../src/streams/index.ts';
import type { Tensor } from '../../src/tensor.ts';

const rng = new Rng(5);
const x1 = rng.normalTensor([1, 23, 6]);
const x2 = rng.normalTensor([2, 23, 6]);
/** x's token rows as d-float Float32Arrays (B = 1). */
const rowsOf = (x: Tensor) => Array.from({ length: x.shape[1] }, (_x, s) => x.data.slice(s * 6, (s + 1) * 6));
/** x cut into blocks of the listed token counts. */
const blocks = (x: Tensor, sizes: number[]) => sizes.map((n, i) => sliceTokens(x, sizes.slice(0, i).reduce((a, b) => a + b, 0), sizes.slice(0, i).reduce((a, b) => a + b, 0) + n));
const all = (o: ReturnType<typeof fromTokens>) => lastValueFrom(o.pipe(toArray()));

/** Same boundaries, shapes and values as splitTokens(x, chunking). */
async function sameAsSplit(t: import('ava').ExecutionContext, got: TokenChunk[], x: Tensor, chunking: number | number[], label: string) {
  const want = await lastValueFrom(splitTokens(x, chunking).pipe(toArray()));
  t.deepEqual(got.map((c) => [c.index, c.start, c.end, [...c.x.shape]]), want.map((c) => [c.index, c.start, c.end, [...c.x.shape]]), label);
  got.forEach((c, i) => t.deepEqual(Array.from(c.x.data), Array.from(want[i].x.data), `${label}: chunk ${i}`));
}

test('rows of one token and blocks of several, from every kind of source, regrouped as splitTokens splits', async (t) => {
  const uneven = [3, 1, 7, 2, 10];
  const sources: [string, Tensor, () => Parameters<typeof fromTokens>[0]][] = [
    ['object-mode Readable of Float32Array rows', x1, () => Readable.from(rowsOf(x1))],
    ['async generator of [2,n,6] blocks', x2, () => (async function* () { yield* blocks(x2, uneven); })()],
    ['array of [1,n,6] blocks', x1, () => blocks(x1, uneven)],
    ['highland stream of rows', x1, () => _(rowsOf(x1))],
  ];
  for (const [label, x, source] of sources) {
    for (const chunking of [4, 23, [5, 5, 13], [1, 22]]) await sameAsSplit(t, await all(fromTokens(source(), { chunking })), x, chunking, `${label}, chunking ${chunking}`);
  }
  // Without chunking each item is a chunk.
  const asIs = await all(fromTokens(blocks(x2, uneven)));
  await sameAsSplit(t, asIs, x2, uneven, 'items as chunks');
});

test('one item pulled per chunk it completes; take(1) closes a Readable and a highland stream', async (t) => {
  let pulled = 0;
  const rows = rowsOf(x1);
  const source = Readable.from((function* () {
    for (const r of rows) {
      pulled++;
      yield r;
    }
  })(), { highWaterMark: 1 });
  let maxAhead = 0, consumed = 0;
  await lastValueFrom(fromTokens(source, { chunking: 5 }).pipe(tap((c) => {
    consumed = c.end;
    maxAhead = Math.max(maxAhead, pulled - consumed);
  })));
  // The Readable holds one row in its buffer and one more may be in its iterator's hands.
  t.true(maxAhead <= 2, `${maxAhead} rows pulled beyond the chunks consumed`);

  const r = Readable.from(rows);
  const first = await lastValueFrom(fromTokens(r, { chunking: 3 }).pipe(take(1)));
  t.is(first.end, 3);
  await new Promise((res) => setImmediate(res));
  t.true(r.destroyed, 'the Readable is destroyed after take(1)');

  let destroyed = false;
  const hs = _(rows);
  const destroy = hs.destroy.bind(hs);
  hs.destroy = () => ((destroyed = true), destroy());
  await lastValueFrom(fromTokens(hs, { chunking: 3 }).pipe(take(1)));
  await new Promise((res) => setImmediate(res));
  t.true(destroyed, 'the highland stream is destroyed after take(1)');
});

test('shape errors: another B or d, a rank-2 item, chunk sizes that do not add up; a non-source', async (t) => {
  const e = await t.throwsAsync(all(fromTokens([x1, x2])), { instanceOf: ShapeError });
  t.is(e!.message, 'Expected tokens[1] shape [B,n,d]=[1,23,6] (as tokens[0]), got shape [2,23,6]');
  await t.throwsAsync(all(fromTokens([new Float32Array(6), new Float32Array(5)])), { instanceOf: ShapeError, message: /tokens\[1\] shape \[B,n,d\]=\[1,1,6\]/ });
  await t.throwsAsync(all(fromTokens([{ data: new Float32Array(6), shape: [1, 6] }])), { instanceOf: ShapeError, message: /Expected tokens\[0\] rank 3 \[B,n,d\], got shape \[1,6\]/ });
  await t.throwsAsync(all(fromTokens([x1], { chunking: [20] })), { instanceOf: ShapeError, message: /chunk_sizes to cover the source's tokens, but \[20\] ends at 20/ });
  await t.throwsAsync(all(fromTokens([x1], { chunking: [20, 5] })), { instanceOf: ShapeError, message: /sum to the 23 tokens the source yielded, got 25/ });
  await t.throwsAsync(all(fromTokens([x1], { chunking: 0 })), { instanceOf: ShapeError, message: /chunk size/ });
  await t.throwsAsync(all(fromTokens({} as never)), { instanceOf: ArgumentError, message: /Expected source to be a Node Readable, an async or sync iterable, or a highland stream, got Object/ });
  const boom = new Error('upstream failed');
  const failing = (async function* () {
    yield x1;
    throw boom;
  })();
  const err = await t.throwsAsync(all(fromTokens(failing, { chunking: 30 })));
  t.is(err, boom, 'an error of the source reaches the subscriber as it is');
});
