// The memory floor of a decode step (issue 10): a plain sequential read of as many bytes as the
// step must read, measured in the same run as the step. JS cannot read at DRAM speed (a Float64Array
// sum with 8 accumulators reaches ~4-11 GB/s on the bench machine), so the read is libc's, through
// Node: Buffer.compare of two equal halves (memcmp: reads both, two streams) and indexOf of an
// absent byte (memchr: one stream); the floor is the faster of the two, each the median of 5 reads.
// At 2 threads the bytes are split between the main thread and a worker over a SharedArrayBuffer,
// each reading its half `inner` times between two barriers (ms per read = wall time / inner).
import { Worker } from 'node:worker_threads';

const FILL = 0x3f; // not 0: a zero-filled allocation can map every page to the one zero page
const ABSENT = 0x07;

/** Reads bytes [off, off + n) of buf once: memcmp of its two halves. */
function memcmpRead(buf: Buffer, off: number, n: number): number {
  const h = n >> 1;
  return Buffer.compare(buf.subarray(off, off + h), buf.subarray(off + h, off + 2 * h));
}

const WORKER = `
const { workerData } = require('node:worker_threads');
const { sab, ctl } = workerData;
const buf = Buffer.from(sab), c = new Int32Array(ctl);
let gen = 0, sink = 0;
for (;;) {
  Atomics.wait(c, 0, gen);
  gen = Atomics.load(c, 0);
  if (gen < 0) break;
  const off = c[2], n = c[3], inner = c[4], how = c[5];
  const end = off + n;
  for (let i = 0; i < inner; i++) {
    if (how === 1) sink += buf.subarray(off, end).indexOf(${ABSENT}) === -1 ? 0 : 1;
    else { const h = n >> 1; sink += Buffer.compare(buf.subarray(off, off + h), buf.subarray(off + h, off + 2 * h)); }
  }
  Atomics.store(c, 1, gen + (sink & 0));
  Atomics.notify(c, 1);
}
`;

export interface PlainRead {
  /** ms for one read of `bytes` (<= capacity) at this reader's thread count, by `how`. */
  read(bytes: number, how: 'memcmp' | 'memchr'): number;
  /** The floor: ms of the faster of memcmp and memchr for `bytes`, each the median of `reads` reads. */
  floor(bytes: number, reads?: number): number;
  close(): Promise<void>;
}

/**
 * A reader over a buffer of `capacity` bytes at 1 or 2 threads. `inner` reads per repetition at
 * 2 threads (amortizes the wake-up of the worker; default: enough for ~64 MB).
 */
export function plainRead(capacity: number, threads: number): PlainRead {
  const sab = new SharedArrayBuffer(capacity + 64);
  const buf = Buffer.from(sab);
  buf.fill(FILL);
  let worker: Worker | undefined, c: Int32Array | undefined;
  if (threads > 1) {
    if (threads !== 2) throw new Error(`bench/floor.ts: plain reads at 1 or 2 threads, got ${threads}`);
    const ctl = new SharedArrayBuffer(8 * 4);
    c = new Int32Array(ctl);
    worker = new Worker(WORKER, { eval: true, workerData: { sab, ctl } });
    worker.unref();
  }
  let gen = 0;
  const read = (bytes: number, how: 'memcmp' | 'memchr') => {
    if (bytes > capacity) throw new Error(`bench/floor.ts: ${bytes} bytes > capacity ${capacity}`);
    // memchr reads to the end of the buffer it is given: hand it exactly `bytes`.
    const view = (off: number, n: number) => buf.subarray(off, off + n);
    if (!worker) {
      const t0 = performance.now();
      if (how === 'memchr') view(0, bytes).indexOf(ABSENT);
      else memcmpRead(buf, 0, bytes);
      return performance.now() - t0;
    }
    const inner = Math.max(1, Math.ceil(64e6 / bytes));
    const half = Math.floor(bytes / 2 / 64) * 64;
    c![2] = half;
    c![3] = bytes - half;
    c![4] = inner;
    c![5] = how === 'memchr' ? 1 : 0;
    gen++;
    const t0 = performance.now();
    Atomics.store(c!, 0, gen);
    Atomics.notify(c!, 0);
    let sink = 0;
    for (let i = 0; i < inner; i++) sink += how === 'memchr' ? view(0, half).indexOf(ABSENT) : memcmpRead(buf, 0, half);
    while (Atomics.load(c!, 1) !== gen) Atomics.wait(c!, 1, gen - 1, 1000);
    return (performance.now() - t0 + (sink & 0)) / inner;
  };
  return {
    read,
    floor: (bytes, reads = 5) => {
      const med = (how: 'memcmp' | 'memchr') => Array.from({ length: reads }, () => read(bytes, how)).sort((a, b) => a - b)[reads >> 1]!;
      return Math.min(med('memcmp'), med('memchr'));
    },
    async close() {
      if (!worker) return;
      Atomics.store(c!, 0, -1);
      Atomics.notify(c!, 0);
      await worker.terminate();
    },
  };
}
