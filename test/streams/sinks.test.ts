// Out of the operators: a Readable / async iterable / .npy bytes, through stream/promises
// pipeline and highland, paced by the reader (read-ahead credit by default, or `demand`), with
// errors and early exits reaching both ends.
import test from 'ava';
import _ from 'highland';
import { createReadStream, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { finalize, from, lastValueFrom, map, Observable, Subject, throwError } from 'rxjs';
import { ShapeError } from '../../src/errors.ts';
import { encodeNpy } from '../../src/io/npy.ts';
import { MultiHeadAttention } from '../../src/mha.ts';
import { attendChunk, projectKv, splitTokens } from '../../src/operators/index.ts';
import type { TokenChunk } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import { awaitEach, fromNpyBytes, fromTokens, toAsyncIterable, toNpyBytes, toReadable } from '../../src/streams/index.ts';
import type { Tensor } from '../../src/tensor.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-sinks-'));
const rng = new Rng(9);

test('.npy file → fromNpyBytes → toNpyBytes → file, through pipeline: the same bytes (B = 1 streamed, B = 2 at completion)', async (t) => {
  for (const shape of [[1, 41, 7], [2, 41, 7]]) {
    const x = rng.normalTensor(shape);
    const src = join(dir, `in-${shape[0]}.npy`), dst = join(dir, `out-${shape[0]}.npy`);
    writeFileSync(src, encodeNpy(x));
    await pipeline(
      toReadable(fromNpyBytes(createReadStream(src, { highWaterMark: 100 }), [9, 1, 31]).pipe(toNpyBytes(41)), { bytes: true }),
      createWriteStream(dst),
    );
    t.deepEqual(readFileSync(dst), readFileSync(src), `shape [${shape}]`);
  }
});

test('toNpyBytes: B = 1 writes the header with the first chunk and each chunk as it comes; wrong totals and shapes are ShapeErrors', async (t) => {
  const x = rng.normalTensor([1, 10, 3]);
  const parts: Uint8Array[] = [];
  for await (const b of toAsyncIterable(splitTokens(x, 4).pipe(toNpyBytes(10)))) parts.push(b);
  t.is(parts.length, 4, 'header + one piece per chunk');
  t.deepEqual(Buffer.concat(parts), Buffer.from(encodeNpy(x)));
  const collect = async (o: Observable<Uint8Array>) => {
    for await (const _b of toAsyncIterable(o));
  };
  await t.throwsAsync(collect(splitTokens(x, 4).pipe(toNpyBytes(11))), { instanceOf: ShapeError, message: 'Expected S=11 tokens in all, got 10' });
  await t.throwsAsync(collect(splitTokens(x, 4).pipe(toNpyBytes(9))), { instanceOf: ShapeError, message: 'Expected S=9 tokens in all, got 10 by chunk 2' });
  const mixed = from([x, rng.normalTensor([1, 2, 4])]).pipe(toNpyBytes(12));
  await t.throwsAsync(collect(mixed), { instanceOf: ShapeError, message: 'Expected chunk 1 shape [B,n,d]=[1,2,3] (as chunk 0), got shape [1,2,4]' });
});

test('pipeline(Readable of rows, rows → attention outputs, sink): the streamed module equals the one-pass module', async (t) => {
  const mha = MultiHeadAttention.random({ dModel: 16, numHeads: 4, numKvHeads: 2 }, 3);
  const xQ = rng.normalTensor([1, 3, 16]), xKv = rng.normalTensor([1, 19, 16]);
  const rows = Array.from({ length: 19 }, (_x, s) => xKv.data.slice(s * 16, (s + 1) * 16));
  const outputs: Tensor[] = [];
  await pipeline(
    Readable.from(rows),
    (source: AsyncIterable<Float32Array>) => toAsyncIterable(fromTokens(source, { chunking: 5 }).pipe(projectKv(mha), attendChunk(mha, xQ), map((o) => o.output))),
    new Writable({ objectMode: true, write(o: Tensor, _e, cb) { outputs.push(o); cb(); } }),
  );
  t.is(outputs.length, 4);
  const full = mha.forward(xQ, xKv).output;
  // Chunking reorders the float32 online-softmax fold only: a few ulps of the largest output.
  let worst = 0, at = -1, big = 0;
  full.data.forEach((v, i) => {
    const d = Math.abs(outputs[3].data[i] - v);
    if (d > worst) (worst = d), (at = i);
    big = Math.max(big, Math.abs(v));
  });
  t.true(worst <= 1e-5 * (1 + big), `largest difference ${worst} at flat index ${at} (bound ${1e-5 * (1 + big)})`);
});

/** A cold source of `n` one-row chunks counting the rows it produced (fromTokens: credit, or `demand`). */
function counting(n: number, demand?: Subject<void>, highWaterMark?: number) {
  const state = { produced: 0, tornDown: false };
  const x = rng.normalTensor([1, n, 2]);
  const rows = Array.from({ length: n }, (_x, s) => x.data.slice(2 * s, 2 * s + 2));
  const source = fromTokens((function* () {
    for (const r of rows) {
      state.produced++;
      yield r;
    }
  })(), { demand, highWaterMark }).pipe(finalize(() => (state.tornDown = true)));
  return { source, state };
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('default credit: a slow for-await loop, awaitEach and attendChunk async bound fromTokens at highWaterMark rows ahead', async (t) => {
  for (const highWaterMark of [undefined, 1, 3]) {
    const bound = highWaterMark ?? 2;
    const { source, state } = counting(30, undefined, highWaterMark);
    let seen = 0, maxAhead = 0;
    for await (const c of toAsyncIterable(source)) {
      t.is(c.end, ++seen);
      maxAhead = Math.max(maxAhead, state.produced - (seen - 1)); // row `seen`'s body has not finished
      await sleep(2);
    }
    t.is(seen, 30);
    t.true(maxAhead <= bound, `highWaterMark ${highWaterMark}: for-await: the source ran ${maxAhead} rows ahead of the finished loop bodies (bound ${bound})`);
    t.is(maxAhead, bound, `highWaterMark ${highWaterMark}: for-await: the source uses its credit`);

    const paced = counting(30, undefined, highWaterMark);
    let done = 0, ahead = 0;
    const mha = MultiHeadAttention.random({ dModel: 2, numHeads: 1 }, 4);
    await lastValueFrom(paced.source.pipe(
      projectKv(mha),
      attendChunk(mha, rng.normalTensor([1, 1, 2]), { async: true }),
      awaitEach(async () => {
        ahead = Math.max(ahead, paced.state.produced - done);
        await sleep(2);
        done++;
      }),
    ));
    t.is(done, 30);
    t.true(ahead <= bound, `highWaterMark ${highWaterMark}: attendChunk async → awaitEach: ${ahead} rows ahead of the sink (bound ${bound})`);
  }
});

test('default credit through a Node Writable: rows not yet written <= source highWaterMark + the Writable\'s highWaterMark', async (t) => {
  for (const writableHwm of [1, 4]) {
    const { source, state } = counting(40);
    let written = 0, maxAhead = 0;
    await pipeline(toReadable(source), new Writable({
      objectMode: true,
      highWaterMark: writableHwm,
      write(_c, _e, cb) {
        maxAhead = Math.max(maxAhead, state.produced - written);
        setTimeout(() => (written++, cb()), 2);
      },
    }));
    t.is(written, 40);
    t.true(maxAhead <= 2 + writableHwm, `Writable highWaterMark ${writableHwm}: ${maxAhead} rows produced and not written (bound ${2 + writableHwm})`);
  }
  // Byte mode, a 64 KiB Readable buffer far larger than the rows: credit is released by bytes taken.
  const { source, state } = counting(40);
  let bytesWritten = 0, maxAhead = 0;
  const HEADER = 128; // npyHeader([1,40,2]) is 128 bytes
  await pipeline(toReadable(source.pipe(toNpyBytes(40)), { bytes: true }), new Writable({
    highWaterMark: 8,
    write(c: Buffer, _e, cb) {
      setTimeout(() => {
        bytesWritten += c.length;
        maxAhead = Math.max(maxAhead, state.produced - Math.max(0, bytesWritten - HEADER) / 8);
        cb();
      }, 2);
    },
  }));
  t.is(bytesWritten, HEADER + 40 * 8);
  t.true(maxAhead <= 2 + 1, `byte mode: ${maxAhead} rows produced and not written (bound 2 + the Writable's 8 bytes = 1 row)`);
});

test('toAsyncIterable with demand: the loop paces the source; break tears it down', async (t) => {
  const demand = new Subject<void>();
  const { source, state } = counting(50, demand);
  let seen = 0, maxAhead = 0;
  for await (const c of toAsyncIterable(source, { demand })) {
    seen++;
    t.is(c.end, seen);
    await new Promise((r) => setTimeout(r, 1));
    maxAhead = Math.max(maxAhead, state.produced - seen);
    if (seen === 20) break;
  }
  t.true(maxAhead <= 2, `the source ran ${maxAhead} rows ahead of the loop`);
  await new Promise((r) => setImmediate(r));
  t.true(state.tornDown, 'breaking out of the loop unsubscribes');
  t.true(state.produced <= 22, `produced ${state.produced} rows for 20`);
});

test('highland → kvstream → highland: a highland source, and highland pulling from toReadable with its own back-pressure', async (t) => {
  const x = rng.normalTensor([1, 30, 4]);
  const rows = Array.from({ length: 30 }, (_x, s) => x.data.slice(4 * s, 4 * s + 4));
  const chunks = await _(toReadable(fromTokens(_(rows), { chunking: 7 }))).collect().toPromise(Promise) as TokenChunk[];
  t.deepEqual(chunks.map((c) => [c.start, c.end]), [[0, 7], [7, 14], [14, 21], [21, 28], [28, 30]]);
  t.deepEqual(Array.from(chunks[4].x.data), Array.from(x.data.subarray(28 * 4)));

  // highland pulls one value at a time; the source runs at most a bounded distance ahead.
  const demand = new Subject<void>();
  const { source, state } = counting(40, demand);
  const hs = _<TokenChunk>(toReadable(source, { demand }));
  const pull = () => new Promise<TokenChunk>((resolve, reject) => hs.pull((err, c) => (err ? reject(err) : resolve(c as TokenChunk))));
  let maxAhead = 0;
  for (let i = 1; i <= 10; i++) {
    const c = await pull();
    t.is(c.end, i);
    await new Promise((r) => setTimeout(r, 2));
    maxAhead = Math.max(maxAhead, state.produced - i);
  }
  t.true(maxAhead <= 3, `the source ran ${maxAhead} rows ahead of highland's pulls`);
  hs.destroy();

  // Without demand: the credit alone bounds it (highWaterMark 2, plus the value highland holds for its next pull).
  const plain = counting(40);
  const hp = _<TokenChunk>(toReadable(plain.source));
  const pullPlain = () => new Promise<TokenChunk>((resolve, reject) => hp.pull((err, c) => (err ? reject(err) : resolve(c as TokenChunk))));
  let plainAhead = 0;
  for (let i = 1; i <= 10; i++) {
    t.is((await pullPlain()).end, i);
    await new Promise((r) => setTimeout(r, 2));
    plainAhead = Math.max(plainAhead, plain.state.produced - i);
  }
  t.true(plainAhead <= 3, `without demand the source ran ${plainAhead} rows ahead of highland's pulls (bound 3)`);
  hp.destroy();
});

test('errors: an Observable error rejects the pipeline; a failing Writable tears the source down', async (t) => {
  const boom = new Error('kernel failed');
  const err = await t.throwsAsync(pipeline(toReadable(throwError(() => boom)), new Writable({ objectMode: true, write(_c, _e, cb) { cb(); } })));
  t.is(err, boom);
  const { source, state } = counting(100);
  const sinkErr = new Error('disk full');
  let writes = 0;
  const e2 = await t.throwsAsync(pipeline(toReadable(source), new Writable({ objectMode: true, highWaterMark: 1, write(_c, _e, cb) { cb(++writes === 3 ? sinkErr : null); } })));
  t.is(e2, sinkErr);
  await new Promise((r) => setImmediate(r));
  t.true(state.tornDown, 'the failed pipeline unsubscribed from the source');
});
