// Steady-state calls allocate nothing large (issue 12): with `out` tensors, a reused state and a
// preallocated cache, repeated calls construct no Float32Array at all, and give the same
// results as the allocating calls. Counted by wrapping the global Float32Array constructor
// (views made by subarray() use the real constructor and are not counted: they allocate no
// storage). Page faults per call are compared with the raw kernel's in the same process.
import test from 'ava';
import { lastValueFrom, toArray } from 'rxjs';
import { attention, OnlineSoftmaxState } from '../src/attention.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import { addon } from '../src/native.ts';
import { attendChunk, projectKv, splitTokens } from '../src/operators/index.ts';
import { Rng } from '../src/random.ts';
import { zeros } from '../src/tensor.ts';
import type { Tensor } from '../src/tensor.ts';

/** Float32Arrays constructed (and their floats) while `fn` runs. */
async function allocations(fn: () => unknown): Promise<{ count: number; floats: number }> {
  const real = globalThis.Float32Array;
  let count = 0, floats = 0;
  globalThis.Float32Array = new Proxy(real, {
    construct(target, args, newTarget) {
      const a = Reflect.construct(target, args, newTarget === globalThis.Float32Array ? target : newTarget) as Float32Array;
      count++;
      floats += a.length;
      return a;
    },
  });
  try {
    await fn();
  } finally {
    globalThis.Float32Array = real;
  }
  return { count, floats };
}

const rng = new Rng(1212);
const like = (t: Tensor): Tensor => zeros(t.shape);

test.serial('attention with out: no Float32Array per call, same results as without', async (t) => {
  const [B, H, Hkv, T, S, dK, dV] = [1, 4, 2, 33, 70, 16, 24];
  const q = rng.normalTensor([B, H, T, dK]), k = rng.normalTensor([B, Hkv, S, dK]), v = rng.normalTensor([B, Hkv, S, dV]);
  for (const opts of [{}, { causal: true }, { causal: true, qOffset: 10, dropout: { p: 0.3, seed: 4 } }]) {
    const want = attention(q, k, v, opts);
    const out = { output: like(want.output), lse: like(want.lse) };
    out.output.data.fill(7); // stale contents must not leak into the result
    attention(q, k, v, { ...opts, out }); // warm-up: sizes the module's m/l scratch
    let r: ReturnType<typeof attention> | undefined;
    const a = await allocations(() => {
      for (let i = 0; i < 5; i++) r = attention(q, k, v, { ...opts, out });
    });
    t.deepEqual(a, { count: 0, floats: 0 }, `allocations in 5 calls with out, ${JSON.stringify(opts)}`);
    t.is(r!.output, out.output, 'the out tensors are returned');
    t.is(r!.lse, out.lse);
    t.deepEqual(out.output.data, want.output.data);
    t.deepEqual(out.lse.data, want.lse.data);
  }
});

test.serial('a reused state (reset, finalize into out) allocates nothing and equals a fresh one', async (t) => {
  const [B, H, T, S, d] = [2, 2, 5, 40, 8];
  const qs = [0, 1, 2].map(() => rng.normalTensor([B, H, T, d]));
  const k = rng.normalTensor([B, H, S, d]), v = rng.normalTensor([B, H, S, d]);
  const state = new OnlineSoftmaxState(qs[0], { dV: d, causal: true, qOffset: 0 });
  const out = { output: zeros([B, H, T, d]), lse: zeros([B, H, T]) };
  for (const [i, q] of qs.entries()) {
    const want = new OnlineSoftmaxState(q, { dV: d, causal: true, qOffset: 3 * i }).update(k, v, 0).finalize();
    const a = await allocations(() => state.reset(q, { qOffset: 3 * i }).update(k, v, 0).finalize({ out }));
    t.deepEqual(a, { count: 0, floats: 0 }, `reset + update + finalize({ out }), query block ${i}`);
    t.is(state.qOffset, 3 * i);
    t.deepEqual(out.output.data, want.output.data, `output, query block ${i}`);
    t.deepEqual(out.lse.data, want.lse.data, `lse, query block ${i}`);
  }
  // finalize does not spend the state: a partial result, then more keys, equals one pass.
  state.reset(qs[0], { qOffset: 0 });
  const half = (x: Tensor, s0: number, s1: number): Tensor => {
    const o = zeros([B, H, s1 - s0, d]);
    for (let bh = 0; bh < B * H; bh++) o.data.set(x.data.subarray((bh * S + s0) * d, (bh * S + s1) * d), bh * (s1 - s0) * d);
    return o;
  };
  state.update(half(k, 0, 20), half(v, 0, 20), 0).finalize({ out });
  state.update(half(k, 20, S), half(v, 20, S), 20);
  const whole = new OnlineSoftmaxState(qs[0], { dV: d, causal: true, qOffset: 0 }).update(k, v, 0).finalize();
  const r = state.finalize();
  for (let i = 0; i < r.output.data.length; i++) t.true(Math.abs(r.output.data[i] - whole.output.data[i]) <= 1e-5, `output ${i}: ${r.output.data[i]} vs ${whole.output.data[i]}`);
});

test.serial('chunked prefill through forward(cache, out) allocates nothing after the first pass', async (t) => {
  const mha = MultiHeadAttention.random({ dModel: 32, numHeads: 4, numKvHeads: 2 }, 7);
  const [B, T, CH] = [2, 48, 16];
  const x = rng.normalTensor([B, T, 32]);
  const chunks = [0, 1, 2].map((i) => {
    const c = zeros([B, CH, 32]);
    for (let b = 0; b < B; b++) c.data.set(x.data.subarray((b * T + i * CH) * 32, (b * T + (i + 1) * CH) * 32), b * CH * 32);
    return c;
  });
  const plainCache = mha.newCache(B, T);
  const want = chunks.map((c) => mha.forward(c, c, { cache: plainCache, causal: true }));
  const cache = mha.newCache(B, T);
  const out = { output: zeros([B, CH, 32]), lse: zeros([B, 4, CH]) };
  const pass = () => {
    cache.reset();
    return chunks.map((c) => {
      mha.forward(c, c, { cache, causal: true, out });
      return { output: out.output.data.slice(), lse: out.lse.data.slice() };
    });
  };
  pass(); // warm-up: sizes the module's scratch
  const a = await allocations(() => {
    cache.reset();
    for (const c of chunks) mha.forward(c, c, { cache, causal: true, out });
  });
  t.deepEqual(a, { count: 0, floats: 0 }, 'allocations in one 3-chunk pass with out');
  const got = pass();
  for (let i = 0; i < chunks.length; i++) {
    t.deepEqual(got[i].output, want[i].output.data, `chunk ${i} output`);
    t.deepEqual(got[i].lse, want[i].lse.data, `chunk ${i} lse`);
  }
  // The fused (no cache) path too.
  const fusedWant = mha.forward(x, x, { causal: true });
  const fusedOut = { output: zeros([B, T, 32]), lse: zeros([B, 4, T]) };
  const f = await allocations(() => mha.forward(x, x, { causal: true, out: fusedOut }));
  t.deepEqual(f, { count: 0, floats: 0 }, 'allocations in a fused forward with out');
  t.deepEqual(fusedOut.output.data, fusedWant.output.data);
});

test.serial('attendChunk allocates per chunk only what it emits (no copy of the state)', async (t) => {
  const mha = MultiHeadAttention.random({ dModel: 32, numHeads: 4, numKvHeads: 2, dV: 12 }, 8);
  const [B, T, S, n] = [1, 3, 40, 8];
  const { numHeads: H, numKvHeads: Hkv, dK, dV, dOut } = mha.config;
  const xQ = rng.normalTensor([B, T, 32]), xKv = rng.normalTensor([B, S, 32]);
  let steps: { output: Tensor; lse: Tensor }[] = [];
  const a = await allocations(async () => {
    steps = await lastValueFrom(splitTokens(xKv, n).pipe(projectKv(mha), attendChunk(mha, xQ), toArray()));
  });
  const chunks = S / n;
  const setup = B * H * T * dK /* q */ + 2 * B * H * T /* m, l */ + 2 * B * H * T * dV; /* acc, o */
  const perChunk = B * Hkv * n * (dK + dV) /* projectKv's k, v */ + B * T * dOut /* output */ + B * H * T; /* lse */
  t.is(a.floats, setup + chunks * perChunk, `floats allocated over ${chunks} chunks`);
  t.is(a.count, 5 + chunks * 4);
  // Emitted tensors are the subscriber's: distinct per chunk, not overwritten later.
  t.not(steps[0].output.data.buffer, steps[1].output.data.buffer);
  const last = attention(mha.projectQ(xQ), ...Object.values(mha.projectKv(xKv)) as [Tensor, Tensor], { qOffset: 0 });
  const proj = mha.projectOut(last.output);
  for (let i = 0; i < proj.data.length; i++) t.true(Math.abs(steps[chunks - 1].output.data[i] - proj.data[i]) <= 1e-5, `last output ${i}`);
  const first = attention(mha.projectQ(xQ), ...Object.values(mha.projectKv({ data: xKv.data.subarray(0, n * 32), shape: [1, n, 32] })) as [Tensor, Tensor], { qOffset: 0 });
  const proj0 = mha.projectOut(first.output);
  for (let i = 0; i < proj0.data.length; i++) t.true(Math.abs(steps[0].output.data[i] - proj0.data[i]) <= 1e-5, `first output ${i} kept after later chunks`);
});

test.serial('page faults per call: attention with out adds none over the raw kernel', (t) => {
  // Output 1 MiB (accumulator folded into it) over few keys: a short call, so faults from the
  // rest of the process (GC, c8 under the slow coverage build) stay under the margin below.
  const [B, H, T, S, d] = [1, 8, 512, 32, 64];
  const q = rng.normalTensor([B, H, T, d]), k = rng.normalTensor([B, H, S, d]), v = rng.normalTensor([B, H, S, d]);
  const out = { output: zeros([B, H, T, d]), lse: zeros([B, H, T]) };
  const m = new Float32Array(B * H * T), l = new Float32Array(B * H * T), acc = new Float32Array(B * H * T * d);
  const dims = { B, H, Hkv: H, T, S, sCap: S, dK: d, dV: d };
  const opts = { scale: 1 / 8, causal: false, qOffset: 0, sOffset: 0, dropoutP: 0, seed: 0 };
  const raw = () => {
    m.fill(-Infinity);
    l.fill(0);
    acc.fill(0);
    addon.attnUpdate(dims, opts, q.data, k.data, v.data, m, l, acc);
    addon.attnFinalize(B * H * T, d, m, l, acc, acc, out.lse.data);
  };
  const faults = (fn: () => unknown, n = 10) => {
    for (let i = 0; i < 3; i++) fn();
    const f0 = process.resourceUsage().minorPageFault;
    for (let i = 0; i < n; i++) fn();
    return (process.resourceUsage().minorPageFault - f0) / n;
  };
  const rawF = faults(raw);
  const outF = faults(() => attention(q, k, v, { out }));
  // Fresh 1 MiB results fault up to 256+ pages per call; reused ones fault none. The margin
  // (16 pages) covers faults neither path causes (GC, the test runner's other work).
  t.log(`minor page faults per call: raw kernel ${rawF}, attention with out ${outF}`);
  t.true(outF <= rawF + 16, `attention with out: ${outF} faults per call, raw kernel ${rawF}`);
});
