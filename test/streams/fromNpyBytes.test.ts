// .npy bytes from a Readable, an async or sync iterable, or a highland stream: exact chunks
// (the codec is the oracle for other dtypes), pulls bounded by the consumer, the source closed
// on every ending, and errors that name the stream.
import test from 'ava';
import _ from 'highland';
import { createReadStream, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { concatMap, firstValueFrom, lastValueFrom, map, Subject, take, tap, timer, toArray } from 'rxjs';
import { ArgumentError, FixtureError, ShapeError } from '../../src/errors.ts';
import { convertNpy, decodeNpy, encodeNpy, f32ToF16 } from '../../src/io/npy.ts';
import type { Dtype } from '../../src/io/npy.ts';
import { concatTokens, splitTokens } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import { awaitEach, fromNpyBytes } from '../../src/streams/index.ts';
import type { Tensor } from '../../src/tensor.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-npybytes-'));
const rng = new Rng(11);
const one = rng.normalTensor([1, 37, 5]);
const three = rng.normalTensor([3, 37, 5]);
const npy = (x: Tensor) => Buffer.from(encodeNpy(x));

/** `bytes` in pieces of `size` (the last shorter), as an async generator. */
async function* pieces(bytes: Uint8Array, size: number) {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}
const all = (x: ReturnType<typeof fromNpyBytes>) => lastValueFrom(x.pipe(toArray()));

test('every kind of source gives the array back, chunk boundaries as asked', async (t) => {
  const path = join(dir, 'one.npy');
  writeFileSync(path, npy(one));
  const sources: [string, () => Parameters<typeof fromNpyBytes>[0]][] = [
    ['fs Readable, 13-byte reads', () => createReadStream(path, { highWaterMark: 13 })],
    ['async generator, 1-byte pieces', () => pieces(npy(one), 1)],
    ['array of 2 Buffers', () => [npy(one).subarray(0, 100), npy(one).subarray(100)]],
    ['highland stream of a Readable', () => _(createReadStream(path, { highWaterMark: 29 }))],
  ];
  for (const [label, source] of sources) {
    for (const chunking of [4, [1, 30, 6]]) {
      const chunks = await all(fromNpyBytes(source(), chunking));
      const bounds = chunks.map((c) => [c.start, c.end]);
      t.deepEqual(bounds, chunking === 4 ? Array.from({ length: 10 }, (_x, i) => [4 * i, Math.min(4 * i + 4, 37)]) : [[0, 1], [1, 31], [31, 37]], label);
      t.deepEqual(chunks.map((c) => c.index), bounds.map((_x, i) => i), label);
      t.deepEqual(concatTokens(chunks.map((c) => c.x)).data, one.data, label);
    }
  }
});

test('B > 1: the same chunks as splitTokens over the decoded array', async (t) => {
  const chunks = await all(fromNpyBytes(pieces(npy(three), 100), [5, 32]));
  const want = await lastValueFrom(splitTokens(three, [5, 32]).pipe(toArray()));
  t.deepEqual(chunks.map((c) => [c.start, c.end, [...c.x.shape]]), want.map((c) => [c.start, c.end, [...c.x.shape]]));
  chunks.forEach((c, i) => t.deepEqual(c.x.data, want[i].x.data, `chunk ${i}`));
});

test('>f4, f2 and f8 (with float64: round) read as the codec converts them; f8 without it and ints refused', async (t) => {
  for (const dtype of ['>f4', '<f2', '>f2', '<f8'] as Dtype[]) {
    const data = dtype.endsWith('f4') ? one.data : dtype.endsWith('f8') ? Float64Array.from(one.data, (v) => v + 1e-9) : f32ToF16(one.data);
    const bytes = encodeNpy({ data, shape: [1, 37, 5], dtype });
    const expected = convertNpy(decodeNpy(bytes, dtype), 'float32').data;
    const chunks = await all(fromNpyBytes([bytes], 8, { float64: 'round' }));
    t.deepEqual(concatTokens(chunks.map((c) => c.x)).data, expected, dtype);
  }
  const f8 = encodeNpy({ data: Float64Array.from(one.data), shape: [1, 37, 5] });
  const e8 = await t.throwsAsync(all(fromNpyBytes([f8], 8, { name: 'x.npy' })), { instanceOf: FixtureError });
  t.regex(e8!.message, /^x\.npy: expected a C-ordered <f4 array of shape \[B,S,d\], got <f8 .*float64: 'round'/);
  const i4 = encodeNpy({ data: new Int32Array(6), shape: [1, 2, 3] });
  await t.throwsAsync(all(fromNpyBytes([i4], 1)), { instanceOf: FixtureError, message: /got <i4 \(1, 2, 3\)/ });
  const rank2 = encodeNpy({ data: new Float32Array(6), shape: [2, 3] });
  await t.throwsAsync(all(fromNpyBytes([rank2], 1)), { instanceOf: FixtureError, message: /got <f4 \(2, 3\)/ });
});

test('a truncated stream, bytes past the data, bad magic, non-byte items and a failing Readable are errors naming the stream', async (t) => {
  const bytes = npy(one);
  const cut = await t.throwsAsync(all(fromNpyBytes([bytes.subarray(0, bytes.length - 3)], 10, { name: 's' })), { instanceOf: FixtureError });
  t.regex(cut!.message, /^s: shape \(1, 37, 5\) needs 740 data bytes, the stream ended after 737 \(truncated\)$/);
  const cutHeader = await t.throwsAsync(all(fromNpyBytes([bytes.subarray(0, 40)], 10, { name: 's' })), { instanceOf: FixtureError });
  t.regex(cutHeader!.message, /^s: truncated header/);
  await t.throwsAsync(all(fromNpyBytes([bytes, Uint8Array.of(0)], 10, { name: 's' })), { instanceOf: FixtureError, message: /^s: more bytes after the 740 data bytes/ });
  await t.throwsAsync(all(fromNpyBytes([Buffer.from('not an npy file at all')], 10)), { instanceOf: FixtureError, message: /bad magic/ });
  await t.throwsAsync(all(fromNpyBytes(['text' as unknown as Uint8Array], 10)), { instanceOf: ArgumentError, message: /yield bytes \(Buffer or Uint8Array\), got "text"/ });
  await t.throwsAsync(all(fromNpyBytes(42 as never, 10)), { instanceOf: ArgumentError, message: /Expected source to be a Node Readable/ });
  await t.throwsAsync(all(fromNpyBytes([bytes], [30, 30])), { instanceOf: ShapeError, message: /sum to S=37, got 60/ });
  const broken = new Readable({ read() { this.destroy(new Error('disk on fire')); } });
  const e = await t.throwsAsync(all(fromNpyBytes(broken, 10, { name: 'f' })), { instanceOf: FixtureError, message: 'f: disk on fire' });
  t.is((e!.cause as Error).message, 'disk on fire');
});

// [1, 2048, 256] floats: chunks of 64 tokens are 64 KiB; the Readable yields 16 KiB pieces.
const BIG: Tensor = (() => {
  const data = new Float32Array(2048 * 256);
  for (let s = 0; s < 2048; s++) data[s * 256] = s;
  return { data, shape: [1, 2048, 256] };
})();
const CHUNK_BYTES = 64 * 256 * 4, PIECE = 16 * 1024;

/** A Readable of `bytes` in PIECE-byte pieces that counts the bytes it has handed out. */
function counted(bytes: Uint8Array) {
  const state = { pulled: 0, destroyed: false };
  let i = 0;
  const stream = new Readable({
    highWaterMark: PIECE,
    read() {
      const piece = bytes.subarray(i, i + PIECE);
      i += piece.length;
      state.pulled = i;
      this.push(piece.length ? piece : null);
    },
    destroy(err, cb) {
      state.destroyed = true;
      cb(err);
    },
  });
  return { stream, state };
}

test('a slow synchronous consumer: bytes pulled stay within a chunk and the Readable\'s buffer of what was consumed', async (t) => {
  const { stream, state } = counted(encodeNpy(BIG));
  let consumed = 0, maxAhead = 0;
  await lastValueFrom(fromNpyBytes(stream, 64).pipe(tap((c) => {
    t.is(c.x.data[0], c.start);
    consumed++;
    maxAhead = Math.max(maxAhead, state.pulled - consumed * CHUNK_BYTES);
  })));
  t.is(consumed, 32);
  // The Readable reads up to its highWaterMark (one piece) ahead of the queue, plus the header.
  t.true(maxAhead <= 2 * PIECE + 128, `pulled ${maxAhead} bytes beyond the chunks consumed`);
});

test('default credit: a slow awaitEach sink keeps bytes pulled within highWaterMark chunks and the Readable\'s buffer of what was consumed', async (t) => {
  for (const highWaterMark of [undefined, 3]) {
    const { stream, state } = counted(encodeNpy(BIG));
    let consumed = 0, maxAhead = 0;
    await lastValueFrom(fromNpyBytes(stream, 64, { highWaterMark }).pipe(awaitEach(async (c) => {
      t.is(c.x.data[0], c.start);
      await new Promise((r) => setTimeout(r, 1));
      maxAhead = Math.max(maxAhead, state.pulled - consumed * CHUNK_BYTES); // this chunk not yet consumed
      consumed++;
    })));
    t.is(consumed, 32);
    // highWaterMark chunks, plus what the Readable reads ahead (its buffer and the piece in hand) and the header.
    const bound = (highWaterMark ?? 2) * CHUNK_BYTES + 2 * PIECE + 128;
    t.true(maxAhead <= bound, `highWaterMark ${highWaterMark}: pulled ${maxAhead} bytes beyond the chunks consumed (bound ${bound})`);
    t.true(maxAhead > ((highWaterMark ?? 2) - 1) * CHUNK_BYTES, `highWaterMark ${highWaterMark}: the source reads ahead of the sink (${maxAhead} bytes)`);
  }
});

test('an asynchronous consumer pacing with demand: bounded read-ahead; take(2) destroys the Readable', async (t) => {
  const demand = new Subject<void>();
  const { stream, state } = counted(encodeNpy(BIG));
  let done = 0, maxAhead = 0;
  await lastValueFrom(fromNpyBytes(stream, 64, { demand }).pipe(
    concatMap((c) => timer(1).pipe(map(() => c))),
    tap(() => {
      done++;
      maxAhead = Math.max(maxAhead, state.pulled - done * CHUNK_BYTES);
      demand.next();
    }),
  ));
  t.is(done, 32);
  t.true(maxAhead <= CHUNK_BYTES + 2 * PIECE + 128, `pulled ${maxAhead} bytes beyond the chunks consumed`);

  const early = counted(encodeNpy(BIG));
  const firstTwo = await lastValueFrom(fromNpyBytes(early.stream, 64).pipe(take(2), toArray()));
  t.deepEqual(firstTwo.map((c) => c.start), [0, 64]);
  await new Promise((r) => setImmediate(r));
  t.true(early.state.destroyed, 'the Readable is destroyed after take(2)');
  t.true(early.state.pulled < 4 * CHUNK_BYTES, `pulled ${early.state.pulled} bytes for 2 chunks`);
  const first = await firstValueFrom(fromNpyBytes(_(counted(encodeNpy(BIG)).stream), 64));
  t.is(first.end, 64);
});
