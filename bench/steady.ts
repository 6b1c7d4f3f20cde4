// Steady-state cost of the public API against the raw kernel (issue 12), W1 core shapes
// (q, k, v [1, 8, 2048, 64], no mask) and W2 (causal chunked prefill, chunks of 256):
//   tsx bench/steady.ts [--threads 1,2] [--calls 20] [--windows 7]
// For each path: ms per call in two call patterns (`calls` back to back; windows of 3 calls after
// one warm-up call, median over `windows` windows), and minor page faults and Float32Array bytes
// allocated per call in steady state. Paths: kernel = the binding calls alone on reused buffers
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
for (const threads of args.threads!.split(',').map(Number)) {
  setNumThreads(threads);
  for (const [name, fn] of Object.entries(paths)) {
    if (only && !only.some((o) => name.startsWith(o))) continue;
    fn();
    const N = Number(args.calls);
    const f0 = process.resourceUsage().minorPageFault;
    const t0 = performance.now();
    for (let i = 0; i < N; i++) fn();
    const backToBack = (performance.now() - t0) / N;
    const faults = (process.resourceUsage().minorPageFault - f0) / N;
    const windows: number[] = [];
    for (let w = 0; w < Number(args.windows); w++) {
      await new Promise((r) => setTimeout(r, 50)); // idle gap: lets GC and other work land between windows
      fn();
      const s0 = performance.now();
      for (let i = 0; i < 3; i++) fn();
      windows.push((performance.now() - s0) / 3);
    }
    const bytes = allocatedBytes(fn);
    console.log(JSON.stringify({ threads, path: name, backToBackMs: +backToBack.toFixed(2), windowsOf3Ms: +median(windows).toFixed(2), pageFaultsPerCall: faults, allocatedBytesPerCall: bytes, load1: loadavg() }));
  }
}
process.exit(0);
