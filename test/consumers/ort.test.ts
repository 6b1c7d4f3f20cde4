// Fixtures through onnxruntime-node: toOrtTensor/toTensorData, the bench's ONNX graphs fed from
// fixture arrays, compared with the stored output within the case's manifest tolerance.
// Cases are picked by what each graph can express, not by name, so regenerated or added
// fixtures are covered too.
import test from 'ava';
import * as ort from 'onnxruntime-node';
import { coreSession, moduleSession } from '../../bench/ort.ts';
import { runFixture } from '../../consumers/examples/ort.ts';
import {
  ArgumentError, ArrayMismatchError, FixtureError, MultiHeadAttention, encodeNpy, decodeNpy, loadFixture, readManifest,
  toOrtFeeds, toOrtTensor, toTensorData,
} from '../../src/index.ts';
import type { ManifestEntry, NpyArray, TensorType } from '../../src/index.ts';
import { assertClose } from '../helpers/assert.ts';
import { hasFeatures } from '../../src/fixtures/recipes.ts';

const DIR = 'fixtures';
const manifest = await readManifest(DIR);

/** Decoded NPY of `values` stored as `dtype` (through the real encoder and decoder). */
function npy(dtype: string, shape: number[], data: NpyArray['data']): NpyArray {
  return decodeNpy(encodeNpy({ data, shape, dtype } as NpyArray), `${dtype}.npy`);
}

test('toTensorData: every stored dtype gets its onnxruntime type and shares the data', (t) => {
  const cases: [string, NpyArray['data'], TensorType][] = [
    ['<f4', Float32Array.of(1.5, -2), 'float32'],
    ['<f8', Float64Array.of(0.1, 3), 'float64'],
    ['<f2', Uint16Array.of(0x3c00, 0xc000), 'float16'],
    ['|i1', Int8Array.of(-3, 4), 'int8'],
    ['<i2', Int16Array.of(-300, 4), 'int16'],
    ['<i4', Int32Array.of(-7, 1 << 30), 'int32'],
    ['|u1', Uint8Array.of(0, 255), 'uint8'],
    ['<u2', Uint16Array.of(1, 65535), 'uint16'],
    ['<u4', Uint32Array.of(1, 2 ** 32 - 1), 'uint32'],
    ['|b1', Uint8Array.of(1, 0), 'bool'],
  ];
  for (const [dtype, data, type] of cases) {
    const a = npy(dtype, [2, 1], data);
    const d = toTensorData(a);
    t.is(d.type, type, dtype);
    t.deepEqual(d.dims, [2, 1], dtype);
    t.is(d.data, a.data, `${dtype}: no copy`);
    const o = toOrtTensor(ort.Tensor, a);
    t.is(o.type as string, type as string, `${dtype}: ort type`);
    t.deepEqual(o.dims, [2, 1]);
    t.deepEqual(Array.from(o.data as ArrayLike<number>), Array.from(data), `${dtype}: ort data`);
  }
});

test('toTensorData: `as` converts exactly, refuses rounding unless allowed, and names the array', (t) => {
  const half = npy('<f2', [3], Uint16Array.of(0x3c00, 0xc000, 0x0001)); // 1, -2, 2^-24
  t.deepEqual(Array.from(toTensorData(half, { as: 'float32' }).data), [1, -2, 2 ** -24]);
  const mask = npy('|u1', [2, 2], Uint8Array.of(1, 0, 0, 1));
  const m = toTensorData(mask, { as: 'int32' }); // tfjs has no uint8
  t.true(m.data instanceof Int32Array);
  t.deepEqual([m.type, Array.from(m.data), m.dims], ['int32', [1, 0, 0, 1], [2, 2]]);
  const f8 = npy('<f8', [1], Float64Array.of(0.1));
  const e = t.throws(() => toTensorData(f8, { as: 'float32', source: 'case:w_q' }), { instanceOf: FixtureError });
  t.regex(e!.message, /case:w_q/);
  t.is(toTensorData(f8, { as: 'float32', allowRounding: true }).data[0], Math.fround(0.1));
  const big = npy('<i4', [1], Int32Array.of(2 ** 24 + 1));
  t.throws(() => toTensorData(big, { as: 'float32' }), { instanceOf: FixtureError });
  t.throws(() => toTensorData({ dtype: '<c8', shape: [1], data: new Float32Array(2) } as unknown as NpyArray), { instanceOf: ArgumentError, message: /<c8/ });
});

test('toOrtFeeds: graph inputs from named arrays; a missing array is named', async (t) => {
  const { arrays } = await loadFixture(DIR, manifest.cases[0].name);
  const feeds = toOrtFeeds(ort.Tensor, arrays, { x: 'x_q', w: 'w_q' });
  t.deepEqual(feeds.x.dims, arrays.get('x_q')!.shape);
  t.is(feeds.w.data, arrays.get('w_q')!.data);
  t.throws(() => toOrtFeeds(ort.Tensor, arrays, { x: 'nope' }), { instanceOf: ArrayMismatchError, message: /Expected array nope for input x/ });
});

const f64 = (a: NpyArray) => Float64Array.from(a.data as ArrayLike<number>);
const sameData = (a: NpyArray, b: NpyArray) => a.data.length === b.data.length && a.data.every((x, i) => x === b.data[i]);

/** The module graph (Attention op: packed QKV, one head layout) fits self-attention without a prior cache. */
function moduleFits(e: ManifestEntry, arrays: Map<string, NpyArray>): boolean {
  const c = e.config;
  return !hasFeatures(c) && c.num_kv_heads === c.num_heads && c.d_k === c.d_v && c.bias && c.dropout_p === 0 && c.t_past === 0
    && c.d_model === c.d_kv_in && c.t_q === c.t_kv && (!c.causal || c.q_offset === 0) && sameData(arrays.get('x_q')!, arrays.get('x_kv')!);
}

function mhaOf(e: ManifestEntry, arrays: Map<string, NpyArray>): MultiHeadAttention {
  const c = e.config;
  const w = (k: string) => ({ data: arrays.get(k)!.data as Float32Array, shape: arrays.get(k)!.shape });
  return new MultiHeadAttention(
    { dModel: c.d_model, dKvIn: c.d_kv_in, dOut: c.d_out, numHeads: c.num_heads, numKvHeads: c.num_kv_heads, dK: c.d_k, dV: c.d_v, bias: c.bias, scale: c.scale },
    { wQ: w('w_q'), wK: w('w_k'), wV: w('w_v'), wO: w('w_o'), ...(c.bias ? { bQ: w('b_q'), bK: w('b_k'), bV: w('b_v'), bO: w('b_o') } : {}) },
  );
}

test('the bench module graph (Attention + MatMul + Add) on fixtures reproduces the stored output', async (t) => {
  let ran = 0;
  for (const e of manifest.cases) {
    const { arrays } = await loadFixture(DIR, e.name);
    if (!moduleFits(e, arrays)) continue;
    const session = await moduleSession(mhaOf(e, arrays), e.config.causal, false, 1);
    const r = await runFixture(session, DIR, e.name); // the docs' onnxruntime example
    t.deepEqual(r.dims, arrays.get('output')!.shape, e.name);
    assertClose(t, r.y, r.output, r.tolerance, `${e.name}: onnxruntime module vs stored output`, arrays.get('output')!.shape);
    t.log(`${e.name}: max |ort - stored| ${r.maxDiff.toExponential(2)} (atol ${r.tolerance.atol})`);
    ran++;
  }
  t.true(ran >= 2, `expected at least 2 fixtures the module graph can run (self-attention, H_kv = H, d_k = d_v), got ${ran}`);
});

/** y [rows, m] = x [rows, n] · w [n, m] + b, in f64. */
function linear(x: Float64Array, w: Float64Array, b: Float64Array | null, rows: number, n: number, m: number): Float64Array {
  const y = new Float64Array(rows * m);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < m; j++) {
      let acc = b ? b[j] : 0;
      for (let i = 0; i < n; i++) acc += x[r * n + i] * w[i * m + j];
      y[r * m + j] = acc;
    }
  }
  return y;
}

/**
 * Keys or values [B, S, H·d] for the core graph: the cache given as input ([B,H_kv,S_past,d])
 * followed by the projected x_kv ([B,S_new,H_kv·d]), each key/value head repeated for the
 * H/H_kv query heads that read it.
 */
function headsForCore(e: ManifestEntry, past: NpyArray | undefined, fresh: Float64Array, d: number): Float32Array {
  const c = e.config;
  const B = c.batch, H = c.num_heads, Hkv = c.num_kv_heads, P = c.t_past, N = c.t_kv, S = P + N;
  const out = new Float32Array(B * S * H * d);
  for (let b = 0; b < B; b++) {
    for (let s = 0; s < S; s++) {
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / (H / Hkv));
        for (let i = 0; i < d; i++) {
          out[((b * S + s) * H + h) * d + i] = s < P ? past!.data[((b * Hkv + g) * P + s) * d + i] : fresh[((b * N + s - P) * Hkv + g) * d + i];
        }
      }
    }
  }
  return out;
}

test('the bench core graph (MultiHeadAttention op) between f64 projections reproduces the stored output', async (t) => {
  let ran = 0;
  for (const e of manifest.cases) {
    const c = e.config;
    // The op's default scale is 1/sqrt(d_k), one width for q, k, v; causal only where the
    // top-left and bottom-right alignments agree (T = S).
    if (hasFeatures(c) || c.d_k !== c.d_v || c.dropout_p !== 0 || Math.abs(c.scale - 1 / Math.sqrt(c.d_k)) > 1e-12 || (c.causal && c.t_q !== c.t_past + c.t_kv)) continue;
    const { entry, arrays } = await loadFixture(DIR, e.name);
    const B = c.batch, T = c.t_q, H = c.num_heads, Hkv = c.num_kv_heads, S = c.t_past + c.t_kv;
    const bias = (k: string) => (c.bias ? f64(arrays.get(k)!) : null);
    const q = linear(f64(arrays.get('x_q')!), f64(arrays.get('w_q')!), bias('b_q'), B * T, c.d_model, H * c.d_k);
    const xKv = f64(arrays.get('x_kv')!);
    const k = linear(xKv, f64(arrays.get('w_k')!), bias('b_k'), B * c.t_kv, c.d_kv_in, Hkv * c.d_k);
    const v = linear(xKv, f64(arrays.get('w_v')!), bias('b_v'), B * c.t_kv, c.d_kv_in, Hkv * c.d_v);
    const session = await coreSession(H, H * c.d_k, c.causal, 1);
    const tensor = (data: Float32Array, dims: number[]) => toOrtTensor(ort.Tensor, { dtype: '<f4', shape: dims, data });
    const { o } = await session.run({
      q: tensor(Float32Array.from(q), [B, T, H * c.d_k]),
      k: tensor(headsForCore(e, arrays.get('k_cache_in'), k, c.d_k), [B, S, H * c.d_k]),
      v: tensor(headsForCore(e, arrays.get('v_cache_in'), v, c.d_v), [B, S, H * c.d_v]),
    });
    const y = linear(Float64Array.from(o.data as Float32Array), f64(arrays.get('w_o')!), bias('b_o'), B * T, H * c.d_v, c.d_out);
    assertClose(t, y, arrays.get('output')!.data, entry.tolerance, `${e.name}: onnxruntime MultiHeadAttention vs stored output`, arrays.get('output')!.shape);
    t.log(`${e.name}: B=${B} T=${T} S=${S} H=${H} H_kv=${Hkv}${c.causal ? ' causal' : ''}${c.t_past ? ` S_past=${c.t_past}` : ''}`);
    ran++;
  }
  t.true(ran >= 4, `expected at least 4 fixtures the core graph can run, got ${ran}`);
});
