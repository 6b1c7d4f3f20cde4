// Decode projections with cold weights, as in a model whose layers' weights do not fit in the
// CPU caches: linear 1 x K x N cycling through enough distinct w [K, N] to exceed L3 (default
// 24 of 1 MiB). Prints the median time per call and the rate at which w was read.
//   tsx bench/coldlinear.ts [THREADS] [K] [N] [MATRICES]
//   KVSTREAM_ADDON=<path> loads another build of the addon.
import { addon, setNumThreads } from '../src/native.ts';
import { Rng } from '../src/random.ts';

const [threads, K, N, count] = [1, 512, 512, 24].map((d, i) => Number(process.argv[2 + i] ?? d));
setNumThreads(threads);
const rng = new Rng(1);
const ws = Array.from({ length: count }, () => rng.normalTensor([K, N]).data);
const x = rng.normalTensor([1, K]).data, y = new Float32Array(N);
const REPS = 50;
const pass = () => {
  const t0 = process.hrtime.bigint();
  for (let r = 0; r < REPS; r++) for (const w of ws) addon.linear(x, w, null, y, 1, K, N);
  return Number(process.hrtime.bigint() - t0) / 1e3 / (REPS * count);
};
const us = Array.from({ length: 7 }, pass).sort((a, b) => a - b)[3];
console.log(`linear 1x${K}x${N}, ${count} distinct w, ${threads} thread(s): ${us.toFixed(1)} µs/call, w read at ${((K * N * 4) / us / 1e3).toFixed(1)} GB/s`);
