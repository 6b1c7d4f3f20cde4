// Disk source: exact chunks, on-demand reads (bounded read-ahead: highWaterMark credit by
// default, demand when given), and the file always closed.
import test from 'ava';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { concatMap, lastValueFrom, map, Subject, take, tap, timer, toArray } from 'rxjs';
import type { Observable } from 'rxjs';
import { MultiHeadAttention } from '../../src/mha.ts';
import { encodeNpy } from '../../src/io/npy.ts';
import { attendChunk, concatTokens, fromNpy } from '../../src/operators/index.ts';
import type { KvChunk, TokenChunk } from '../../src/operators/index.ts';
import { awaitEach } from '../../src/streams/index.ts';
import { Rng } from '../../src/random.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-fromnpy-'));
const openFds = () => readdirSync('/proc/self/fd').length;

const small = new Rng(1).normalTensor([3, 37, 5]);
const smallPath = join(dir, 'small.npy');
writeFileSync(smallPath, encodeNpy(small));

// 64 MiB: [1, 16384, 1024] floats; chunks of 256 tokens are 1 MiB.
const [BIG_S, BIG_D, CHUNK] = [16384, 1024, 256];
const CHUNK_BYTES = CHUNK * BIG_D * 4;
const bigPath = join(dir, 'big.npy');
{
  const data = new Float32Array(BIG_S * BIG_D);
  for (let s = 0; s < BIG_S; s++) data[s * BIG_D] = s; // token s starts with the value s
  writeFileSync(bigPath, encodeNpy({ data, shape: [1, BIG_S, BIG_D] }));
}

test.serial('chunks read back equal the array (fixed size and an uneven list)', async (t) => {
  for (const chunking of [4, [1, 30, 6], 37]) {
    const chunks = await lastValueFrom(fromNpy(smallPath, chunking).pipe(toArray()));
    t.deepEqual(chunks.map((c) => [c.start, c.end]), chunking === 4 ? Array.from({ length: 10 }, (_, i) => [4 * i, Math.min(4 * i + 4, 37)]) : chunking === 37 ? [[0, 37]] : [[0, 1], [1, 31], [31, 37]]);
    t.deepEqual(concatTokens(chunks.map((c) => c.x)).data, small.data);
  }
});

test.serial('a synchronous slow consumer: no chunk is read before the previous one was consumed', async (t) => {
  let bytesRead = 0, maxAhead = 0, consumed = 0;
  await lastValueFrom(fromNpy(bigPath, CHUNK, { onRead: (n) => (bytesRead = n) }).pipe(
    tap((c) => {
      t.is(c.x.data[0], c.start);
      // Bytes read beyond what the consumer has received (the header is < 1 KiB).
      maxAhead = Math.max(maxAhead, bytesRead - (consumed + 1) * CHUNK_BYTES);
      const until = Date.now() + 1;
      while (Date.now() < until); // slow consumer
      consumed++;
    }),
  ));
  t.is(consumed, BIG_S / CHUNK);
  t.true(maxAhead < 1024, `read ahead by ${maxAhead} bytes`);
});

test.serial('an asynchronous slow consumer pacing with demand: at most one chunk read ahead', async (t) => {
  const demand = new Subject<void>();
  let bytesRead = 0, maxAhead = 0, done = 0;
  const sum = await lastValueFrom(fromNpy(bigPath, CHUNK, { demand, onRead: (n) => (bytesRead = n) }).pipe(
    concatMap((c) => timer(1).pipe(map(() => c.x.data[0]))),
    tap(() => {
      done++;
      maxAhead = Math.max(maxAhead, bytesRead - done * CHUNK_BYTES);
      demand.next();
    }),
    toArray(),
    map((firsts) => firsts.reduce((a, b) => a + b, 0)),
  ));
  t.is(sum, ((BIG_S / CHUNK) * (BIG_S / CHUNK - 1) / 2) * CHUNK);
  t.true(maxAhead <= CHUNK_BYTES + 1024, `read ahead by ${maxAhead} bytes (one chunk is ${CHUNK_BYTES})`);
});

test.serial('the file is closed on completion, on early unsubscribe and on error', async (t) => {
  const before = openFds();
  await lastValueFrom(fromNpy(smallPath, 5));
  t.is(openFds(), before, 'after completion');
  await lastValueFrom(fromNpy(bigPath, CHUNK).pipe(take(2)));
  await new Promise((r) => setTimeout(r, 50)); // close() waits for the read in flight
  t.is(openFds(), before, 'after early unsubscribe');
  const badPath = join(dir, 'bad.npy');
  writeFileSync(badPath, encodeNpy({ data: new Float32Array(12), shape: [3, 4] }));
  await t.throwsAsync(lastValueFrom(fromNpy(badPath, 2)), { name: 'FixtureError', message: `${badPath}: expected a C-ordered <f4 array of shape [B,S,d], got <f4 (3, 4)` });
  const cut = join(dir, 'cut.npy');
  writeFileSync(cut, encodeNpy(small).subarray(0, 500));
  await t.throwsAsync(lastValueFrom(fromNpy(cut, 2)), { name: 'FixtureError', message: `${cut}: shape (3, 37, 5) needs 2220 data bytes, file has 372 (truncated)` });
  await t.throwsAsync(lastValueFrom(fromNpy(join(dir, 'none.npy'), 2)), { name: 'FixtureError', message: /none\.npy: cannot open \(ENOENT/ });
  await t.throwsAsync(lastValueFrom(fromNpy(smallPath, [10, 10])), { name: 'ShapeError', message: 'Expected chunk_sizes to sum to S=37, got 20 ([10,10])' });
  t.is(openFds(), before, 'after errors');
});

test.serial('readAhead: the next reads start before the consumer works on a chunk, bounded by readAhead', async (t) => {
  for (const readAhead of [1, 3]) {
    let bytesRead = 0, maxAhead = 0, consumed = 0, overlapped = 0;
    const chunks = await lastValueFrom(fromNpy(bigPath, CHUNK, { readAhead, onRead: (n) => (bytesRead = n) }).pipe(
      tap((c) => {
        t.is(c.x.data[0], c.start);
        const until = Date.now() + 2;
        while (Date.now() < until); // slow synchronous consumer: the read in flight runs meanwhile
        consumed++;
        maxAhead = Math.max(maxAhead, bytesRead - consumed * CHUNK_BYTES);
      }),
      // Reads complete on the event loop; let them land between chunks.
      concatMap((c) => timer(0).pipe(map(() => {
        if (bytesRead > (c.index + 1) * CHUNK_BYTES + 1024) overlapped++;
        return c;
      }))),
      toArray(),
    ));
    t.is(chunks.length, BIG_S / CHUNK);
    t.deepEqual(chunks.map((c) => c.start), Array.from({ length: BIG_S / CHUNK }, (_, i) => i * CHUNK));
    t.true(maxAhead <= readAhead * CHUNK_BYTES + 1024, `readAhead ${readAhead}: read ahead by ${maxAhead} bytes (limit ${readAhead} chunks of ${CHUNK_BYTES})`);
    t.true(overlapped > 0, `readAhead ${readAhead}: a later chunk was read while an earlier one was consumed (${overlapped} times)`);
  }
  t.throws(() => fromNpy(bigPath, CHUNK, { readAhead: 17 }), { name: 'ArgumentError', message: 'Expected readAhead to be an integer in [0, 16], got 17' });
  t.throws(() => fromNpy(bigPath, CHUNK, { readAhead: -1 }), { name: 'ShapeError', message: 'Expected readAhead to be an integer >= 0, got -1' });
});

/** The big file's chunk x [1,n,1024] as its own keys and values (one head of width 1024). */
const asKv = map((c: TokenChunk): KvChunk => {
  const kv = { data: c.x.data, shape: [1, 1, c.end - c.start, BIG_D] };
  return { ...c, k: kv, v: kv };
});
const wide = MultiHeadAttention.random({ dModel: 4, numHeads: 1, dK: BIG_D, dV: BIG_D }, 2);
const xQ = new Rng(3).normalTensor([1, 1, 4]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Resolves once `cond()` holds or `limit` ms have passed (polled every ms). */
const until = async (cond: () => boolean, limit = 5000) => {
  for (const end = Date.now() + limit; !cond() && Date.now() < end;) await sleep(1);
};

/**
 * Streams the big file through `stages` into a sink awaiting 1 ms per chunk, counting chunks
 * read (onRead) and consumed (sink done) at every step; returns the most read and not consumed.
 */
async function readAhead(t: import('ava').ExecutionContext, options: { highWaterMark?: number; readAhead?: number }, stages: (s: Observable<TokenChunk>) => Observable<TokenChunk>) {
  let reads = 0, consumed = 0, maxAhead = 0;
  const step = () => (maxAhead = Math.max(maxAhead, reads - consumed));
  await lastValueFrom(stages(fromNpy(bigPath, CHUNK, { ...options, onRead: () => (reads++, step()) })).pipe(
    awaitEach(async (c) => {
      await sleep(1);
      t.is(c.index, consumed);
      consumed++;
      step();
    }),
  ));
  t.is(consumed, BIG_S / CHUNK);
  return maxAhead;
}

test.serial('default credit: an async stage and a slow sink keep reads - consumed <= highWaterMark + readAhead at every step', async (t) => {
  for (const [highWaterMark, ahead] of [[undefined, 0], [1, 0], [3, 0], [2, 2]] as const) {
    const bound = (highWaterMark ?? 2) + ahead;
    const what = `highWaterMark ${highWaterMark ?? '2 (default)'}, readAhead ${ahead}`;
    // attendChunk({ async: true }) then the sink: both hold each chunk's credit.
    const viaAttend = await readAhead(t, { highWaterMark, readAhead: ahead }, (s) => s.pipe(asKv, attendChunk(wide, xQ, { async: true })));
    t.true(viaAttend <= bound, `${what}, attendChunk async: read ${viaAttend} chunks ahead of the sink (bound ${bound})`);
    // The sink alone, behind a map that builds new objects: the credit is the delivery's, not the value's.
    const viaMap = await readAhead(t, { highWaterMark, readAhead: ahead }, (s) => s.pipe(map((c) => ({ ...c }))));
    t.true(viaMap <= bound, `${what}, sink only: read ${viaMap} chunks ahead of the sink (bound ${bound})`);
    // The source does use its credit: reads overlap the slow sink up to the bound.
    t.is(Math.max(viaAttend, viaMap), bound, `${what}: the most chunks read ahead`);
  }
  t.throws(() => fromNpy(bigPath, CHUNK, { highWaterMark: 0 }), { name: 'ArgumentError', message: 'Expected highWaterMark to be an integer in [1, 64], got 0' });
  t.throws(() => fromNpy(bigPath, CHUNK, { highWaterMark: 1.5 }), { name: 'ArgumentError', message: 'Expected highWaterMark to be an integer in [1, 64], got 1.5' });
});

test.serial('two async stages with a map between them: the second holds the credit the first passed on', async (t) => {
  const max = await readAhead(t, {}, (s) => s.pipe(
    awaitEach(async (c) => c), // fast
    map((c) => ({ index: c.index, start: c.start, end: c.end, x: c.x })), // new objects
  ));
  t.true(max <= 2, `read ${max} chunks ahead of the sink (bound 2)`);
});

test.serial('demand overrides the default: nothing is read past what demand asked for, whatever highWaterMark', async (t) => {
  const before = openFds();
  const demand = new Subject<void>();
  let reads = 0;
  const seen: number[] = [];
  const sub = fromNpy(bigPath, CHUNK, { demand, highWaterMark: 8, onRead: () => reads++ }).pipe(
    awaitEach(async (c) => c.index),
  ).subscribe((i) => seen.push(i));
  await until(() => seen.length === 1);
  await sleep(30); // time for reads that should not happen
  t.is(reads, 1, 'one chunk on subscribe, none without demand');
  demand.next();
  demand.next();
  await until(() => seen.length === 3);
  await sleep(30);
  t.is(reads, 3);
  t.deepEqual(seen, [0, 1, 2]);
  sub.unsubscribe();
  await until(() => openFds() === before); // the file closes asynchronously
  t.is(openFds(), before);
});

test.serial('unsubscribing with chunks held by async stages closes the file and leaves no credit waiting', async (t) => {
  const before = openFds();
  let reads = 0;
  const got = await lastValueFrom(fromNpy(bigPath, CHUNK, { onRead: () => reads++ }).pipe(
    asKv,
    attendChunk(wide, xQ, { async: true }),
    awaitEach(async (c) => (await sleep(1), c.index)),
    take(3),
    toArray(),
  ));
  t.deepEqual(got, [0, 1, 2]);
  await until(() => openFds() === before); // close() waits for a read in flight
  t.true(reads <= 3 + 2, `${reads} chunks read for 3 taken`);
  t.is(openFds(), before);
});
