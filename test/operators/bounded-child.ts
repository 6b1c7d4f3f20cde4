// Child process for bounded.test.ts: bounded-child.ts NPY CHUNK SINK_MS SINK streams NPY
// ([1,S,d] float32) through fromNpy → projectKv → attendChunk({ async: true }) into a slow sink
// (SINK = "awaitEach": awaitEach awaiting a SINK_MS timer per chunk; "iterable": a for-await
// loop over toAsyncIterable doing the same; "blocking" and "concatMap": controls, below) with
// nothing wired for pacing, and prints one JSON
// line: peak RSS, the worst lateness of a 10 ms interval timer, the most chunks read and not
// yet consumed by the sink at any step, and the first and last chunk's output and lse.
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { concatMap, lastValueFrom } from 'rxjs';
import { MultiHeadAttention } from '../../src/mha.ts';
import { attendChunk, fromNpy, projectKv } from '../../src/operators/index.ts';
import type { KvChunk, PartialOutput } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import { awaitEach, toAsyncIterable } from '../../src/streams/index.ts';

const [path, chunkArg, sinkArg, sink] = process.argv.slice(2);
const [CHUNK, SINK_MS] = [Number(chunkArg), Number(sinkArg)];
const D = 64;
const mha = MultiHeadAttention.random({ dModel: D, numHeads: 2, numKvHeads: 1, dK: 8 }, 7);
const xQ = new Rng(8).normalTensor([1, 2, D]);

let reads = 0, consumed = 0, maxAhead = 0;
const step = () => (maxAhead = Math.max(maxAhead, reads - consumed));
const out: { first?: KvChunk & PartialOutput; last?: KvChunk & PartialOutput } = {};

// Event-loop lateness and RSS, sampled every 10 ms during the run. A tick's lateness counts
// against the event loop only up to the main thread's CPU time (/proc/thread-self/schedstat,
// ns on the CPU) since the last moment before the tick was due at which the loop was free (a
// 2 ms probe records it): time spent runnable but waiting for a CPU that other processes held
// is the machine's load, not a blocked loop. Raw lateness is reported too.
const PERIOD = 10;
const cpuNs = (): number | undefined => {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
  } catch {
    return undefined;
  }
};
const t0 = performance.now();
let free: { at: number; cpu: number | undefined }[] = [{ at: t0, cpu: cpuNs() }]; // the loop's latest free moments
const probe = setInterval(() => {
  free.push({ at: performance.now(), cpu: cpuNs() });
  if (free.length > 16) free = free.slice(-8);
}, 2);
let expected = t0 + PERIOD, worstLate = 0, worstRawLate = 0, sampledRss = 0;
const timer = setInterval(() => {
  const now = performance.now(), cpu = cpuNs();
  const late = Math.max(0, now - expected);
  const before = free.filter((f) => f.at <= expected).at(-1) ?? free[0];
  const own = cpu === undefined || before.cpu === undefined ? late : Math.min(late, (cpu - before.cpu) / 1e6);
  worstRawLate = Math.max(worstRawLate, late);
  worstLate = Math.max(worstLate, own);
  if (process.env.DEBUG_LATE && late > 10) console.error(`late ${late.toFixed(1)} (own ${own.toFixed(1)}) at ${(now - t0).toFixed(0)} ms, reads ${reads} consumed ${consumed}`);
  expected = now + PERIOD;
  free.push({ at: now, cpu });
  sampledRss = Math.max(sampledRss, process.memoryUsage.rss());
}, PERIOD);

const stream = fromNpy(path, CHUNK, { onRead: () => (reads++, step()) }).pipe(
  projectKv(mha),
  attendChunk(mha, xQ, { async: true }),
);
const consume = (o: KvChunk & PartialOutput) => {
  if (o.index !== consumed) throw new Error(`chunk ${o.index} arrived as the ${consumed}th`);
  out.first ??= o;
  out.last = o;
  consumed++;
  step();
};
if (sink === 'awaitEach' || sink === 'blocking') {
  await lastValueFrom(stream.pipe(awaitEach(async (o) => {
    await sleep(SINK_MS);
    // Control: 40 ms of CPU work on the main thread once, which the lateness measure must see.
    if (sink === 'blocking' && o.index === 10) {
      const until = (cpuNs() ?? 0) + 40e6, wall = performance.now() + 40;
      while ((cpuNs() ?? 0) < until || performance.now() < wall);
    }
    consume(o);
  })), { defaultValue: undefined });
} else if (sink === 'concatMap') {
  // Control: a user's own concatMap holds no credit, so nothing bounds the source.
  await lastValueFrom(stream.pipe(concatMap(async (o) => {
    await sleep(SINK_MS);
    consume(o);
  })), { defaultValue: undefined });
} else {
  for await (const o of toAsyncIterable(stream)) {
    await sleep(SINK_MS);
    consume(o);
  }
}
clearInterval(timer);
clearInterval(probe);
const { first, last } = out;
const list = (t: { data: Float32Array } | undefined) => Array.from(t?.data ?? []);
console.log(JSON.stringify({
  seconds: (performance.now() - t0) / 1000,
  maxRssMiB: process.resourceUsage().maxRSS / 1024,
  sampledRssMiB: sampledRss / 2 ** 20,
  worstLateMs: worstLate,
  worstRawLateMs: worstRawLate,
  loadAverage: loadavg()[0],
  reads, consumed, maxAhead,
  firstOutput: list(first?.output), lastOutput: list(last?.output),
  firstLse: list(first?.lse), lastLse: list(last?.lse),
  maxAbsV: list(first?.v).reduce((a, x) => Math.max(a, Math.abs(x)), 0),
  // max over output columns j of sum_i |wO[i,j]| (wO [H*d_v, d_out])
  wOColSum: Math.max(...Array.from({ length: mha.config.dOut }, (_x, j) => {
    let sum = 0;
    for (let i = 0; i < mha.weights.wO.shape[0]; i++) sum += Math.abs(mha.weights.wO.data[i * mha.config.dOut + j]);
    return sum;
  })),
}));
