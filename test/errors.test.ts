// Bad input: through the TypeScript API (named kvstream errors) and straight into the binding
// (TypeError / RangeError). Every message is checked, and the process survives all of them.
import test from 'ava';
import { attention, OnlineSoftmaxState } from '../src/attention.ts';
import { KvstreamError, ShapeError } from '../src/errors.ts';
import { KvCache } from '../src/kvcache.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import { binding } from '../src/native.ts';
import { Rng } from '../src/random.ts';
import { zeros } from '../src/tensor.ts';

const q = zeros([1, 8, 16, 64]);
const k = zeros([1, 2, 10, 64]);
const v = zeros([1, 2, 10, 32]);

test('TS API: wrong lengths name the argument, the expected shape and the actual size', (t) => {
  const short = { data: new Float32Array(4096), shape: [1, 8, 16, 64] };
  t.throws(() => attention(short, k, v), { instanceOf: ShapeError, message: 'Expected q shape [B,H,T,d_k]=[1,8,16,64] (8192 floats), got 4096' });
  t.throws(() => attention(q, zeros([1, 2, 10, 32]), v), { name: 'ShapeError', message: 'Expected k shape [B,H_kv,S,d_k] with d_k=64 (as q), got d_k=32' });
  t.throws(() => attention(q, k, zeros([1, 2, 9, 32])), { name: 'ShapeError', message: 'Expected v shape [B,H_kv,S,d_v]=[1,2,10,32] (640 floats), got shape [1,2,9,32] (576 floats)' });
  t.throws(() => attention(q, zeros([2, 2, 10, 64]), v), { name: 'ShapeError', message: 'Expected k shape [B,H_kv,S,d_k]=[1,2,10,64] (1280 floats), got shape [2,2,10,64] (2560 floats)' });
});

test('TS API: wrong array types and ranks', (t) => {
  const f64 = { data: new Float64Array(8192), shape: [1, 8, 16, 64] } as never;
  t.throws(() => attention(f64, k, v), { name: 'ShapeError', message: 'Expected q shape [B,H,T,d_k]=[1,8,16,64] (8192 floats) as a Float32Array, got Float64Array(8192)' });
  t.throws(() => attention(zeros([8, 16, 64]), k, v), { name: 'ShapeError', message: 'Expected q rank 4 [B,H,T,d_k], got shape [8,16,64]' });
  t.throws(() => attention(undefined as never, k, v), { name: 'ShapeError', message: 'Expected q rank 4 [B,H,T,d_k], got undefined' });
});

test('TS API: H % H_kv != 0', (t) => {
  t.throws(() => attention(zeros([1, 6, 4, 8]), zeros([1, 4, 3, 8]), zeros([1, 4, 3, 8])), { name: 'ShapeError', message: 'Expected k H_kv to divide H=6, got H_kv=4' });
  t.throws(() => MultiHeadAttention.random({ dModel: 32, numHeads: 4, numKvHeads: 3 }, 1), { name: 'ShapeError', message: 'Expected numKvHeads to divide numHeads=4, got 3' });
});

test('TS API: zero, negative and fractional dims', (t) => {
  t.throws(() => attention(zeros([1, 0, 4, 8]), k, v), { name: 'ShapeError', message: 'Expected q dim H to be an integer >= 1, got 0' });
  t.throws(() => MultiHeadAttention.random({ dModel: -4, numHeads: 1 }, 1), { name: 'ShapeError', message: 'Expected dModel to be an integer >= 1, got -4' });
  t.throws(() => MultiHeadAttention.random({ dModel: 32, numHeads: 2.5 }, 1), { name: 'ShapeError', message: 'Expected numHeads to be an integer >= 1, got 2.5' });
  t.throws(() => new KvCache({ batch: 1, numKvHeads: 1, dK: 0, dV: 4 }), { name: 'ShapeError', message: 'Expected dK to be an integer >= 1, got 0' });
  t.throws(() => MultiHeadAttention.random({ dModel: 30, numHeads: 4 }, 1), { name: 'ShapeError', message: 'Expected dModel divisible by numHeads=4 (or an explicit dK), got dModel=30' });
});

test('TS API: options out of range and missing arguments', (t) => {
  t.throws(() => attention(q, k, v, { dropout: { p: 1, seed: 1 } }), { name: 'ArgumentError', message: 'Expected dropout.p to be a number in [0, 1), got 1' });
  t.throws(() => attention(q, k, v, { dropout: { p: 0.1, seed: -1 } }), { name: 'ArgumentError', message: 'Expected dropout.seed to be an integer in [0, 2^53), got -1' });
  t.throws(() => attention(q, k, v, { qOffset: 1.5 }), { name: 'ArgumentError', message: 'Expected qOffset to be a 32-bit integer, got 1.5' });
  t.throws(() => attention(q, k, v, { scale: Number.NaN }), { name: 'ArgumentError', message: 'Expected scale to be a number in [-3.4e+38, 3.4e+38], got NaN' });
  t.throws(() => new OnlineSoftmaxState(q, { dV: 32, causal: true }), { name: 'ArgumentError', message: 'Expected qOffset (absolute position of query 0) or qOffsets [B] for a streaming state with causal or dropout, got neither' });
  t.throws(() => (attention as (...a: unknown[]) => unknown)(q, k), { name: 'ShapeError', message: 'Expected v rank 4 [B,H_kv,S,d_v], got undefined' });
  const mha = MultiHeadAttention.random({ dModel: 16, numHeads: 2 }, 1);
  t.throws(() => mha.forward(zeros([1, 3, 16]), null), { name: 'ShapeError', message: 'Expected x_kv shape [B,S,d_kv_in] (or a cache), got null' });
  t.throws(() => mha.forward(zeros([1, 3, 15]), zeros([1, 3, 16])), { name: 'ShapeError', message: 'Expected x_q shape [B,T,d_model]=[1,3,16] (48 floats), got shape [1,3,15] (45 floats)' });
});

test('every kvstream error shares the base class and carries its name', (t) => {
  const e = t.throws(() => attention(zeros([1]), k, v));
  t.true(e instanceof KvstreamError);
  t.is(e?.name, 'ShapeError');
});

// Straight into the binding: its own checks, never an abort.
const dims = { B: 1, H: 2, Hkv: 1, T: 3, S: 4, sCap: 4, dK: 2, dV: 2 };
const opts = { scale: 1, causal: false, qOffset: 0, sOffset: 0, dropoutP: 0, seed: 0 };
const f = (n: number) => new Float32Array(n);
const good = () => [dims, opts, f(12), f(8), f(8), f(6), f(6), f(12)] as unknown[];
const update = (args: unknown[]) => () => (binding.attnUpdate as (...a: unknown[]) => void)(...args);

test('binding: argument count and types', (t) => {
  t.notThrows(update(good()));
  t.throws(update(good().slice(0, 7)), { instanceOf: TypeError, message: 'attnUpdate: expected 8 or 10 arguments, got 7' });
  const a = good(); a[2] = new Float64Array(12);
  t.throws(update(a), { instanceOf: TypeError, message: 'attnUpdate: q must be a Float32Array, got Float64Array' });
  const b = good(); b[3] = [0, 0, 0];
  t.throws(update(b), { instanceOf: TypeError, message: 'attnUpdate: k must be a Float32Array, got Array' });
  const c = good(); c[0] = 'dims';
  t.throws(update(c), { instanceOf: TypeError, message: 'attnUpdate: dims must be an Int32Array or a plain object, got string' });
  const d = good(); d[1] = { ...opts, causal: 1 };
  t.throws(update(d), { instanceOf: TypeError, message: 'attnUpdate: opts.causal must be a boolean, got number 1' });
  t.throws(() => (binding.linear as (...a: unknown[]) => void)(), { instanceOf: TypeError, message: 'linear: expected 7 arguments, got 0' });
});

test('binding: lengths, dims, divisibility and size products', (t) => {
  const a = good(); a[4] = f(7);
  t.throws(update(a), { instanceOf: RangeError, message: 'attnUpdate: expected v [B,H_kv,S_cap,d_v]=[1,1,4,2] (8 floats), got 7' });
  for (const [key, value, message] of [
    ['Hkv', 3, 'attnUpdate: dims.Hkv must divide dims.H, got H=2, Hkv=3'],
    ['T', 0, 'attnUpdate: dims.T must be an integer in [1, 2147483647], got 0'],
    ['dK', -2, 'attnUpdate: dims.dK must be an integer in [1, 2147483647], got -2'],
    ['B', 1.5, 'attnUpdate: dims.B must be an integer in [1, 2147483647], got 1.5'],
    ['sCap', 3, 'attnUpdate: dims.sCap must be >= dims.S, got sCap=3, S=4'],
    ['B', 2 ** 31, 'attnUpdate: dims.B must be an integer in [1, 2147483647], got 2147483648'],
  ] as const) {
    const args = good(); args[0] = { ...dims, [key]: value };
    t.throws(update(args), { instanceOf: RangeError, message });
  }
  const huge = good(); huge[0] = { ...dims, B: 65536, H: 65536, Hkv: 1, T: 65536 };
  t.throws(update(huge), { instanceOf: RangeError, message: 'attnUpdate: q [65536,65536,65536,2] has 562949953421312 elements, more than a typed array can hold (2^32)' });
  const p = good(); p[1] = { ...opts, dropoutP: 1 };
  t.throws(update(p), { instanceOf: RangeError, message: 'attnUpdate: opts.dropoutP must be a finite number in [0, 1), got 1' });
  t.throws(() => binding.projectHeads(f(6), f(12), null, f(11), 1, 2, 3, 2, 2), { instanceOf: RangeError, message: 'projectHeads: expected out [B,heads,T,d]=[1,2,2,2] (8 floats), got 11' });
  t.throws(() => binding.mergeProject(f(8), f(8), f(3), f(4), 1, 2, 2, 2, 2), { instanceOf: RangeError, message: 'mergeProject: expected b [N]=[2] (2 floats), got 3' });
  t.throws(() => binding.mhaForward({ ...dims } as never, opts, f(1), f(1), f(1), null, f(1), null, f(1), null, f(1), null, f(1), f(1)), { instanceOf: TypeError, message: 'mhaForward: dims.dModel must be a number, got undefined' });
  t.throws(() => binding.setNumThreads(0), { instanceOf: RangeError, message: 'setNumThreads: n must be an integer in [1, 256], got 0' });
});

test('the process is still alive and computing after all of the above', (t) => {
  const r = attention(zeros([1, 1, 1, 2]), { data: new Float32Array([1, 0]), shape: [1, 1, 1, 2] }, { data: new Float32Array([3, 4]), shape: [1, 1, 1, 2] });
  t.deepEqual([...r.output.data], [3, 4]);
});

test('a missing addon gives a NativeError that names the rebuild command', async (t) => {
  const { loadAddon } = await import('../src/native.ts');
  t.throws(() => loadAddon('/nonexistent/kvstream.node'), { name: 'NativeError', message: /could not be loaded from \/nonexistent\/kvstream\.node: .*\nRebuild it: in the kvstream repo `npm run build:native`; in a project that installed kvstream `npm rebuild kvstream`/s });
});

test('rejected calls leave state and cache as they were (review findings)', (t) => {
  const rng = new Rng(5);
  // reset() with a bad qOffset keeps the old queries.
  const q = rng.normalTensor([1, 2, 3, 8]), q2 = rng.normalTensor([1, 2, 3, 8]);
  const st = new OnlineSoftmaxState(q, { dV: 8, causal: true, qOffset: 4 });
  t.throws(() => st.reset(q2, { qOffset: 0.5 }), { message: 'Expected qOffset to be a 32-bit integer, got 0.5' });
  t.is(st.q, q);
  // forward() with returnWeights over a folded cache is refused before the append.
  const mha = MultiHeadAttention.random({ dModel: 16, numHeads: 2 }, 1);
  const x = rng.normalTensor([1, 3, 16]);
  for (const options of [{ dtype: 'fp16' as const }, { window: 4 }, { pageSize: 2 }]) {
    const cache = mha.newCache(1, options);
    t.throws(() => mha.forward(x, x, { cache, causal: true, returnWeights: true }), { message: /^Expected returnWeights only with a contiguous fp32 cache/ });
    t.is(cache.length, 0, JSON.stringify(options));
  }
  // A state's window must agree with a window cache's.
  const cache = new KvCache({ batch: 1, numKvHeads: 2, dK: 8, dV: 8, window: 4 });
  cache.append(rng.normalTensor([1, 2, 6, 8]), rng.normalTensor([1, 2, 6, 8]));
  t.throws(() => new OnlineSoftmaxState(q, { dV: 8, causal: true, qOffset: 3, window: 2 }).updateCache(cache), { message: "Expected the state's window 2 to be the cache's window 4 (or absent)" });
  // After updateCache the default sOffset is the cache's length, not the count of held keys.
  const s2 = new OnlineSoftmaxState(q, { dV: 8, causal: true, qOffset: 6 }).updateCache(cache);
  const k1 = rng.normalTensor([1, 2, 1, 8]), v1 = rng.normalTensor([1, 2, 1, 8]);
  const a = s2.clone().update(k1, v1).finalize(), b = s2.clone().update(k1, v1, 6).finalize();
  t.deepEqual(a.output.data, b.output.data);
});

test('kvEncode and rope refuse overlapping arrays; int8 never wraps on a subnormal scale', (t) => {
  const buf = new ArrayBuffer(64 * 4);
  const src = new Float32Array(buf, 0, 32);
  t.throws(() => binding.kvEncode('f16', src, new Uint16Array(buf, 16, 32), null, 1, 32), { instanceOf: RangeError, message: 'kvEncode: dst must not overlap src' });
  t.throws(() => binding.kvEncode('i8', src, new Int8Array(32), new Float32Array(buf, 4, 1), 1, 32), { instanceOf: RangeError, message: 'kvEncode: scale must not overlap src or dst' });
  const pos = new Int32Array(buf, 0, 2), out = new Float32Array(buf, 0, 2 * 2);
  t.throws(() => binding.rope(new Float32Array(4), out, { B: 1, H: 1, T: 2, d: 2 }, { rotaryDim: 2, theta: 10000, interleaved: false }, pos), { instanceOf: RangeError, message: 'rope: positions must not overlap out' });
  // The smallest subnormal group max: its scale rounds to 2^-149 and x / scale would pass 127.
  const x = Float32Array.from({ length: 32 }, (_, i) => (i === 0 ? 2.66e-43 : i === 1 ? -2.66e-43 : 0));
  const q8 = new Int8Array(32), scale = new Float32Array(1);
  binding.kvEncode('i8', x, q8, scale, 1, 32);
  t.true(q8[0] > 0 && q8[1] < 0, `signs kept: ${q8[0]}, ${q8[1]}`);
});
