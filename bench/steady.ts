// Steady-state cost of the public API against the raw kernel (issue 12), W1 core shapes
// (q, k, v [1, 8, 2048, 64], no mask) and W2 (causal chunked prefill, chunks of 256):
//   tsx bench/steady.ts [--threads 1,2] [--calls 20] [--windows 7] [--only W1,W2 fresh,...]
// For each path: ms per call in two call patterns (`calls` back to back; a window of 3 calls
// after an idle gap and one warm-up call), medians over `windows` repetitions in which the paths
// alternate, each also as a ratio to the kernel path; and minor page faults and Float32Array
// bytes allocated per call in steady state. Paths: kernel = the binding calls alone on reused buffers
// (bench/kernels.ts); out = attention(q, k, v, { out }) / forward(..., { cache, out }); fresh =
// the same calls allocating their results.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { attention } from '../src/attention.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import { setNumThreads } from '../src/native.ts';
import { Rng } from '../src/random.ts';
import { zeros } from '../src/tensor.ts';
import { cachedKernel, coreKernel } from './kernels.ts';

const { values: args } = parseArgs({ options: { threads: { type: 'string', default: '1,2' }, calls: { type: 'string', default: '20' }, windows: { type: 'string', default: '7' }, only: { type: 'string' } } });
const [H, T, D, DM, CH] = [8, 2048, 64, 512, 256];
const rng = new Rng(12);
const [q, k, v] = [0, 1, 2].map(() => rng.normalTensor([1, H, T, D]));
const out = { output: zeros([1, H, T, D]), lse: zeros([1, H, T]) };
const mha = MultiHeadAttention.random({ dModel: DM, numHeads: H }, 1);
const x = rng.normalTensor([1, T, DM]);
const chunks = Array.from({ length: T / CH }, (_, i) => ({ data: x.data.slice(i * CH * DM, (i + 1) * CH * DM), shape: [1, CH, DM] }));
const cache = mha.newCache(1, T);
const w2kernel = cachedKernel(mha, 1, T);
const w2out = { output: zeros([1, CH, DM]), lse: zeros([1, H, CH]) };

const paths: Record<string, () => unknown> = {
  'W1 kernel': coreKernel(q, k, v, false),
  'W1 out': () => attention(q, k, v, { out }),
  'W1 fresh': () => attention(q, k, v),
  'W2 kernel': () => {
    w2kernel.reset();
    for (const c of chunks) w2kernel.step(c);
  },
  'W2 out': () => {
    cache.reset();
    for (const c of chunks) mha.forward(c, c, { cache, causal: true, out: w2out });
  },
  'W2 fresh': () => {
    cache.reset();
    for (const c of chunks) mha.forward(c, c, { cache, causal: true });
  },
};

/** Float32Array bytes constructed while fn runs (global constructor wrapped; views not counted). */
function allocatedBytes(fn: () => unknown): number {
  const real = globalThis.Float32Array;
  let bytes = 0;
  globalThis.Float32Array = new Proxy(real, {
    construct(target, a, nt) {
      const arr = Reflect.construct(target, a, nt === globalThis.Float32Array ? target : nt) as Float32Array;
      bytes += arr.byteLength;
      return arr;
    },
  });
  try {
    fn();
  } finally {
    globalThis.Float32Array = real;
  }
  return bytes;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const loadavg = () => os.loadavg()[0].toFixed(1);

const only = args.only?.split(',');
const REPS = Number(args.windows);
for (const threads of args.threads!.split(',').map(Number)) {
  setNumThreads(threads);
  for (const group of ['W1', 'W2']) {
    const names = Object.keys(paths).filter((n) => n.startsWith(group) && (!only || only.some((o) => n.startsWith(o))));
    if (!names.length) continue;
    const b2b = new Map<string, number[]>(names.map((n) => [n, []]));
    const win = new Map<string, number[]>(names.map((n) => [n, []]));
    const faults = new Map<string, number>(), bytes = new Map<string, number>();
    for (const n of names) {
      paths[n]();
      const f0 = process.resourceUsage().minorPageFault;
      for (let i = 0; i < 3; i++) paths[n]();
      faults.set(n, (process.resourceUsage().minorPageFault - f0) / 3);
      bytes.set(n, allocatedBytes(paths[n]));
    }
    // Paths alternate within each repetition, so load drift hits them alike.
    for (let r = 0; r < REPS; r++) {
      for (const n of names) {
        const fn = paths[n];
        const N = Number(args.calls);
        const t0 = performance.now();
        for (let i = 0; i < N; i++) fn();
        b2b.get(n)!.push((performance.now() - t0) / N);
        await new Promise((res) => setTimeout(res, 50)); // idle gap: GC and other work may land here
        fn();
        const s0 = performance.now();
        for (let i = 0; i < 3; i++) fn();
        win.get(n)!.push((performance.now() - s0) / 3);
      }
    }
    const kernel = names.find((n) => n.endsWith('kernel'));
    for (const n of names) {
      const row: Record<string, unknown> = { threads, path: n, backToBackMs: +median(b2b.get(n)!).toFixed(2), windowsOf3Ms: +median(win.get(n)!).toFixed(2), pageFaultsPerCall: faults.get(n), allocatedBytesPerCall: bytes.get(n), load1: loadavg() };
      if (kernel && n !== kernel) {
        row.backToBackVsKernel = +(median(b2b.get(n)!) / median(b2b.get(kernel)!)).toFixed(3);
        row.windowsVsKernel = +(median(win.get(n)!) / median(win.get(kernel)!)).toFixed(3);
      }
      console.log(JSON.stringify(row));
    }
  }
}
process.exit(0);
