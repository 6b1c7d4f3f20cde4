// Argument checks of the public API (src/tensor.ts is the one place they are made): every bad
// argument the fuzzer found throwing an engine TypeError now throws a KvstreamError naming the
// argument, what was expected and what came; sizes over MAX_TENSOR_BYTES are refused before
// anything is allocated.
import test from 'ava';
import { attention, OnlineSoftmaxState } from '../src/attention.ts';
import { ArgumentError, KvstreamError, ShapeError } from '../src/errors.ts';
import { KvCache } from '../src/kvcache.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import { appendKv, attendChunk, chunkSizes, concatTokens, prefillChunk, projectKv, sliceTokens, splitTokens } from '../src/operators/index.ts';
import { MAX_TENSOR_BYTES, Scratch, show, tensor, zeros } from '../src/tensor.ts';
import { lastValueFrom } from 'rxjs';

const q = zeros([1, 2, 3, 8]);
const k = zeros([1, 1, 4, 8]);
const v = zeros([1, 1, 4, 8]);
const sym = Symbol('x');

test('non-object options and configs name the argument and what came', (t) => {
  t.throws(() => attention(q, k, v, null as never), { instanceOf: ArgumentError, message: 'Expected options to be an object or undefined, got null' });
  t.throws(() => attention(q, k, v, 3 as never), { instanceOf: ArgumentError, message: 'Expected options to be an object or undefined, got 3' });
  t.throws(() => new OnlineSoftmaxState(q, null as never), { instanceOf: ArgumentError, message: 'Expected options to be an object, got null' });
  t.throws(() => new KvCache(null as never), { instanceOf: ArgumentError, message: 'Expected config to be an object, got null' });
  t.throws(() => new KvCache(undefined as never), { instanceOf: ArgumentError, message: 'Expected config to be an object, got undefined' });
  t.throws(() => MultiHeadAttention.random(null as never, 1), { instanceOf: ArgumentError, message: 'Expected config to be an object, got null' });
  const mha = MultiHeadAttention.random({ dModel: 8, numHeads: 2 }, 1);
  t.throws(() => mha.forward(zeros([1, 2, 8]), zeros([1, 2, 8]), null as never), { instanceOf: ArgumentError, message: 'Expected options to be an object or undefined, got null' });
  t.throws(() => mha.forward(zeros([1, 2, 8]), null, { cache: {} as never }), { instanceOf: ArgumentError, message: 'Expected options.cache to be a KvCache or undefined, got Object' });
  t.throws(() => attention(q, k, v, { out: 5 as never }), { instanceOf: ArgumentError, message: 'Expected out to be an object or undefined, got 5' });
  t.throws(() => attention(q, k, v, { dropout: 0.5 as never }), { instanceOf: ArgumentError, message: 'Expected dropout to be an object, got 0.5' });
});

test('Symbol and other wrong-typed option values throw a named error, not an engine TypeError', (t) => {
  t.throws(() => attention(q, k, v, { qOffset: sym as never }), { instanceOf: ArgumentError, message: 'Expected qOffset to be a 32-bit integer, got Symbol(x)' });
  t.throws(() => attention(q, k, v, { scale: sym as never }), { instanceOf: ArgumentError, message: 'Expected scale to be a number in [-3.4e+38, 3.4e+38], got Symbol(x)' });
  t.throws(() => attention(q, k, v, { causal: sym as never }), { instanceOf: ArgumentError, message: 'Expected causal to be true, false or undefined, got Symbol(x)' });
  t.throws(() => attention(q, k, v, { returnWeights: 'yes' as never }), { instanceOf: ArgumentError, message: 'Expected returnWeights to be true, false or undefined, got "yes"' });
  t.throws(() => new OnlineSoftmaxState(q, { dV: sym as never }), { instanceOf: ShapeError, message: 'Expected dV to be an integer >= 1, got Symbol(x)' });
  t.throws(() => new KvCache({ batch: 1, numKvHeads: 1, dK: 4, dV: 4, capacity: sym as never }), { instanceOf: ShapeError, message: 'Expected capacity to be an integer >= 1, got Symbol(x)' });
  t.throws(() => attention({ data: new Float32Array(48), shape: [1, 2, sym, 8] } as never, k, v), { instanceOf: ShapeError, message: 'Expected q dim T to be an integer >= 1, got Symbol(x)' });
  t.throws(() => attention(q, k, v, { dropout: { p: 0.1, seed: 10n } as never }), { instanceOf: ArgumentError, message: 'Expected dropout.seed to be an integer in [0, 2^53), got 10n' });
  t.throws(() => MultiHeadAttention.random({ dModel: 8, numHeads: 2, bias: 1 as never }, 1), { instanceOf: ArgumentError, message: 'Expected bias to be true, false or undefined, got 1' });
});

test('merge of a non-state, tensor() without a shape, bad chunkings and non-Float32Array data', async (t) => {
  const s = new OnlineSoftmaxState(q, { dV: 8 });
  t.throws(() => s.merge(null as never), { instanceOf: ArgumentError, message: 'Expected other to be an OnlineSoftmaxState, got null' });
  t.throws(() => s.merge({ m: 1 } as never), { instanceOf: ArgumentError, message: 'Expected other to be an OnlineSoftmaxState, got Object' });
  t.throws(() => s.merge(s), { instanceOf: ArgumentError, message: 'Expected other to be a state over disjoint keys, got this same state (merge a clone() instead)' });
  t.throws(() => tensor(new Float32Array(4), undefined as never), { instanceOf: ShapeError, message: 'Expected tensor shape to be an array of dimensions, got undefined' });
  t.throws(() => zeros(7 as never), { instanceOf: ShapeError, message: 'Expected zeros shape to be an array of dimensions, got 7' });
  t.throws(() => chunkSizes(4, '2' as never), { instanceOf: ArgumentError, message: 'Expected chunking to be a chunk size or an array of chunk sizes, got "2"' });
  t.throws(() => chunkSizes(4, { length: 1 } as never), { instanceOf: ArgumentError, message: 'Expected chunking to be a chunk size or an array of chunk sizes, got Object' });
  const x = zeros([1, 4, 2]);
  await t.throwsAsync(lastValueFrom(splitTokens(x, null as never)), { instanceOf: ArgumentError, message: 'Expected chunking to be a chunk size or an array of chunk sizes, got null' });
  await t.throwsAsync(lastValueFrom(splitTokens({ data: [0, 0, 0, 0, 0, 0, 0, 0], shape: [1, 4, 2] } as never, 2)), {
    instanceOf: ShapeError, message: 'Expected x shape [B,S,d]=[1,4,2] (8 floats) as a Float32Array, got Array(8)',
  });
  t.throws(() => sliceTokens(x, 3, 5), { instanceOf: ShapeError, message: 'Expected 0 <= s0 <= s1 <= S=4, got s0=3, s1=5' });
  t.throws(() => concatTokens([]), { instanceOf: ArgumentError, message: 'Expected parts to be a non-empty array of [B,n,d] tensors, got Array(0)' });
  t.throws(() => concatTokens([x, zeros([1, 2, 3])]), { instanceOf: ShapeError, message: 'Expected parts[1] shape [B,n,d] with B=1, d=2 (as parts[0]), got [1,2,3]' });
  t.deepEqual(concatTokens([sliceTokens(x, 0, 0), x]).shape, [1, 4, 2], 'empty slices still concatenate');
});

test('sizes over MAX_TENSOR_BYTES are refused before allocating, naming the size', (t) => {
  t.is(MAX_TENSOR_BYTES, 2 ** 31);
  const big = 2 ** 31 - 1;
  t.throws(() => MultiHeadAttention.random({ dModel: 2, numHeads: 1, dK: big }, 1), {
    instanceOf: ArgumentError,
    message: `Expected wQ [rows,cols]=[2,${big}] to fit the 2 GiB tensor limit (536870912 floats), got ${2 * big} floats (${8 * big} bytes)`,
  });
  t.throws(() => new KvCache({ batch: 1, numKvHeads: 1, dK: 1, dV: 1, capacity: big }), {
    instanceOf: ArgumentError,
    message: `Expected k cache storage [B,H_kv,capacity,d_k]=[1,1,${big},1] to fit the 2 GiB tensor limit (536870912 floats), got ${big} floats (${4 * big} bytes)`,
  });
  t.throws(() => zeros([2 ** 20, 2 ** 10]), { instanceOf: ArgumentError, message: /zeros \[d0,d1\]=\[1048576,1024\] to fit the 2 GiB tensor limit/ });
});

test('every error above is a KvstreamError; show() never throws', (t) => {
  const e = t.throws(() => attention(q, k, v, null as never));
  t.true(e instanceof KvstreamError);
  const revoked = Proxy.revocable({}, {});
  revoked.revoke();
  t.is(show(revoked.proxy), 'object');
  t.is(show(sym), 'Symbol(x)');
  t.is(show(() => 0), 'function');
});

test('Scratch gives exact-length views and only grows', (t) => {
  const s = new Scratch();
  const a = s.get('a', ['n'], [10]);
  t.is(a.length, 10);
  t.is(s.get('a', ['n'], [10]), a, 'same view for the same length');
  const b = s.get('a', ['n'], [4]);
  t.is(b.length, 4);
  t.is(b.buffer, a.buffer, 'a shorter request reuses the storage');
  t.not(s.get('a', ['n'], [11]).buffer, a.buffer, 'a longer one grows it');
  t.throws(() => s.get('a', ['n'], [2 ** 29 + 1]), { instanceOf: ArgumentError });
});

test('operators name a bad module, cache factory or offset', async (t) => {
  const mha = MultiHeadAttention.random({ dModel: 8, numHeads: 2 }, 1);
  const x = zeros([1, 4, 8]);
  await t.throwsAsync(lastValueFrom(splitTokens(x, 2).pipe(projectKv({} as never))), { instanceOf: ArgumentError, message: 'Expected mha to be a MultiHeadAttention, got Object' });
  await t.throwsAsync(lastValueFrom(splitTokens(x, 2).pipe(projectKv(mha), attendChunk(mha, zeros([1, 1, 8]), { sOffset: sym as never }))), {
    instanceOf: ShapeError, message: 'Expected sOffset to be an integer >= 0, got Symbol(x)',
  });
  await t.throwsAsync(lastValueFrom(splitTokens(x, 2).pipe(projectKv(mha), appendKv(5 as never))), { instanceOf: ArgumentError, message: 'Expected createCache to be a function returning a KvCache, got 5' });
  await t.throwsAsync(lastValueFrom(splitTokens(x, 2).pipe(projectKv(mha), appendKv(() => ({}) as never))), { instanceOf: ArgumentError, message: 'Expected createCache() to return a KvCache, got Object' });
  await t.throwsAsync(lastValueFrom(splitTokens(x, 2).pipe(prefillChunk(mha, () => mha.newCache(1), null as never))), { instanceOf: ArgumentError, message: 'Expected options to be an object or undefined, got null' });
});
