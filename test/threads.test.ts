import test from 'ava';
import { attention } from '../src/attention.ts';
import { addon, info, kernelCounts, setNumThreads } from '../src/native.ts';
import { Rng } from '../src/random.ts';

test('results are bit-identical for 1 and 2 worker threads (tasks own disjoint rows)', (t) => {
  const rng = new Rng(4);
  const q = rng.normalTensor([2, 4, 130, 32]), k = rng.normalTensor([2, 2, 700, 32]), v = rng.normalTensor([2, 2, 700, 16]);
  const opts = { causal: true, dropout: { p: 0.1, seed: 5 } };
  const before = info().threads;
  try {
    setNumThreads(1);
    const one = attention(q, k, v, opts);
    setNumThreads(2);
    t.is(info().threads, 2);
    t.is(info().blasThreads, 1, 'OpenBLAS stays single-threaded inside the workers');
    const two = attention(q, k, v, opts);
    t.deepEqual(two.output.data, one.output.data);
    t.deepEqual(two.lse.data, one.lse.data);
  } finally {
    setNumThreads(before);
  }
});

test('decode projections (one or two rows, K split into blocks) are bit-identical for 1 and 2 worker threads', (t) => {
  const rng = new Rng(6);
  const before = info().threads;
  try {
    for (const [M, K, N] of [[1, 1100, 130], [2, 1024, 512]]) {
      const x = rng.normalTensor([M, K]), w = rng.normalTensor([K, N]), b = rng.normalTensor([N]);
      const run = (threads: number) => {
        setNumThreads(threads);
        const y = new Float32Array(M * N);
        const split = kernelCounts()['linear.sgemv.split'];
        addon.linear(x.data, w.data, b.data, y, M, K, N);
        t.is(kernelCounts()['linear.sgemv.split'] - split, 1, `${M}x${K}x${N} at ${threads} threads takes the K split`);
        return y;
      };
      t.deepEqual(run(2), run(1), `${M}x${K}x${N}`);
    }
  } finally {
    setNumThreads(before);
  }
});
