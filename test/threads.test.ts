import test from 'ava';
import { attention } from '../src/attention.ts';
import { info, setNumThreads } from '../src/native.ts';
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
