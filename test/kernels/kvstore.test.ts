// Every cache storage read in place by native/kvstore.cc's direct kernels (and the fallback of
// vmath's and BLAS's kernels on converted blocks under KVSTREAM_KV_SIMD=off or KVSTREAM_VMATH=baseline): a sweep of head widths that hits every vector and group
// tail (8 ... 256; int8 groups of 32), one query row and several (grouped heads, T 3), contiguous
// and paged storage, S across the 512-key block, on every kernel path at 1 and 2 threads. Each
// result is held to the float64 reference over the same stored values (refFeaturesBound,
// storage 'same': the bound is the fp32 kernel's; int8 adds the query's own q8 rounding, which
// the one-row int8 kernel applies to q before its integer dot, and there the int16 rounding of
// the weights of its integer P·V).
import test from 'ava';
import { OnlineSoftmaxState } from '../../src/attention.ts';
import type { CacheDtype } from '../../src/attention.ts';
import { KvCache } from '../../src/kvcache.ts';
import { getKernelPath, info, kernelCounts, resetKernelCounts, setKernelPath, setNumThreads } from '../../src/native.ts';
import type { KernelPath } from '../../src/native.ts';
import { Rng } from '../../src/random.ts';
import { assertWithin } from '../helpers/assert.ts';
import { chunkedRescales } from '../helpers/reference.ts';
import { refFeaturesBound, storageErrorBound } from '../helpers/reference-features.ts';

const PATHS: KernelPath[] = info().tile ? ['tile', 'blas', 'rows', 'auto'] : ['blas', 'rows', 'auto'];
// fp32 too: its contiguous and paged storage take the direct kernels (blocks spanning pages).
const DTYPES: CacheDtype[] = ['fp32', 'fp16', 'bf16', 'int8'];
// 8 and 12 with grouped heads (6 rows per kv head): tiny_update on converted and paged blocks.
// 96: three groups of 32 (int8's weights pair up without the vector shuffles).
const WIDTHS = [8, 12, 20, 24, 32, 40, 64, 96, 128, 256];
// Odd, past one 512-key block: odd tails in the int8 P·V's pairs of keys, contiguous and paged.
const S = 531;

for (const dtype of DTYPES)
  test.serial(`${dtype} cache: every head width, one and several query rows, contiguous and paged, every path, 1 and 2 threads`, (t) => {
    const restore = { threads: info().threads, path: getKernelPath() };
    resetKernelCounts();
    try {
      for (const [i, d] of WIDTHS.entries())
        for (const [H, Hkv, T] of [[2, 2, 1], [4, 2, 3]])
          for (const pageSize of [0, 16]) {
            const B = 2, rng = new Rng(1000 + 10 * i + T);
            const k = rng.normalTensor([B, Hkv, S, d]), v = rng.normalTensor([B, Hkv, S, d]), q = rng.normalTensor([B, H, T, d]);
            const cache = new KvCache({ batch: B, numKvHeads: Hkv, dK: d, dV: d, dtype, ...(pageSize ? { pageSize } : {}) });
            cache.append(k, v);
            // int8, one query row per kv head, d % 32 == 0, on the direct row kernels (rows, or auto
            // at T 1): q is quantized as k is stored (q8), and P·V's weights are rounded to int16.
            const oneRowI8 = dtype === 'int8' && H === Hkv && T === 1 && d % 32 === 0 && info().kvDirect;
            const refs = new Map<boolean, ReturnType<typeof refFeaturesBound>>();
            const refFor = (quantized: boolean) => refs.get(quantized) ?? refs.set(quantized, refFeaturesBound(q.data, k.data, v.data, { B, H, Hkv, T, S, dK: d, dV: d }, {
              scale: 1 / Math.sqrt(d), causal: true, qOffset: S - T, dtype, rescales: chunkedRescales(S, 1),
              dq: quantized ? storageErrorBound(q.data, B * H * T, d, 'int8') : undefined, q16Weights: quantized,
            })).get(quantized)!;
            for (const path of PATHS)
              for (const threads of [1, 2]) {
                const ref = refFor(oneRowI8 && (path === 'rows' || path === 'auto'));
                setKernelPath(path);
                setNumThreads(threads);
                const got = new OnlineSoftmaxState(q, { dV: d, causal: true, qOffset: S - T }).updateCache(cache).finalize();
                const label = `${dtype} d ${d} H ${H}/${Hkv} T ${T}${pageSize ? ' paged' : ''} ${path} x${threads}`;
                if (!assertWithin(t, got.output.data, ref.out, ref.outBound, `${label} output`, [B, H, T, d])) return;
                if (!assertWithin(t, got.lse.data, ref.lse, ref.lseBound, `${label} lse`, [B, H, T])) return;
              }
          }
      t.true(kernelCounts()['attn.rows.tiny'] > 0, `${dtype}: widths 8 and 12 with 6 rows per kv head took tiny_update`);
      if (info().kvDirect)  // several rows per kv head too (grouped heads): vmath's and BLAS's row kernels are the fallback
        t.deepEqual([kernelCounts()['attn.rows.dot'], kernelCounts()['attn.rows.sgemm'], kernelCounts()['attn.rows.sgemv']], [0, 0, 0], `${dtype}: the row path took only the direct kernels`);
      if (dtype === 'int8' && info().kvDirect) {
        t.true(kernelCounts()['kv.i8.pv.q16'] > 0, 'int8: one row per kv head took the integer P·V');
        t.is(kernelCounts()['kv.i8.pv.q16.fp32'], 0, 'int8: no block of these weights fell back to fp32');
      }
    } finally {
      setKernelPath(restore.path);
      setNumThreads(restore.threads);
    }
  });

test.serial('int8 one-row decode: a NaN or an infinity in q reaches the output (the quantized dot would hide it), other rows unchanged', (t) => {
  const [B, H, S, d] = [1, 2, 40, 64], rng = new Rng(77);
  const k = rng.normalTensor([B, H, S, d]), v = rng.normalTensor([B, H, S, d]);
  const cache = new KvCache({ batch: B, numKvHeads: H, dK: d, dV: d, dtype: 'int8' });
  cache.append(k, v);
  for (const bad of [NaN, Infinity]) {
    const q = rng.normalTensor([B, H, 1, d]);
    const clean = new OnlineSoftmaxState(q, { dV: d }).updateCache(cache).finalize();
    q.data[5] = bad;  // head 0
    const got = new OnlineSoftmaxState(q, { dV: d }).updateCache(cache).finalize();
    t.true(got.output.data.subarray(0, d).some((x) => Number.isNaN(x)), `head 0 output with q[5] = ${bad}`);
    t.deepEqual(got.output.data.subarray(d), clean.output.data.subarray(d), 'head 1 is untouched');
  }
});

test.serial('int8 one-row decode: the last key of an odd block counts (it pairs with a zero key in the integer P·V)', (t) => {
  // The last key aligns with q (score ~16 above the rest), so the output is nearly its value row.
  const restore = getKernelPath();
  try {
    setKernelPath('rows');
    for (const [S, d, pageSize] of [[65, 64, 0], [63, 96, 0], [101, 64, 64], [33, 32, 0]]) {
      const [B, H] = [1, 2], rng = new Rng(S + d);  // runs of at least 32 keys (QW_MIN_RUN): pages of 64
      const k = rng.normalTensor([B, H, S, d]), v = rng.normalTensor([B, H, S, d]), q = rng.normalTensor([B, H, 1, d]);
      for (let h = 0; h < H; h++)
        for (let c = 0; c < d; c++) k.data[(h * S + S - 1) * d + c] = (2 * q.data[h * d + c]! * 8) / Math.sqrt(d);
      const cache = new KvCache({ batch: B, numKvHeads: H, dK: d, dV: d, dtype: 'int8', ...(pageSize ? { pageSize } : {}) });
      cache.append(k, v);
      // The q8 and int16 roundings only where the direct kernels apply them.
      const quantized = info().kvDirect, dq = quantized ? storageErrorBound(q.data, B * H, d, 'int8') : undefined;
      const ref = refFeaturesBound(q.data, k.data, v.data, { B, H, Hkv: H, T: 1, S, dK: d, dV: d }, { scale: 1 / Math.sqrt(d), causal: false, dtype: 'int8', rescales: chunkedRescales(S, 1), dq, q16Weights: quantized });
      const got = new OnlineSoftmaxState(q, { dV: d }).updateCache(cache).finalize();
      if (!assertWithin(t, got.output.data, ref.out, ref.outBound, `S ${S} d ${d}${pageSize ? ' paged' : ''} output`, [B, H, 1, d])) return;
    }
  } finally {
    setKernelPath(restore);
  }
});

test.serial('int8 one-row decode: a block whose weights int16 cannot hold runs in fp32 (an inf in v reaches its group, weights under 2^-100 stay within the bound)', (t) => {
  const [B, H, S, d] = [1, 1, 200, 64], rng = new Rng(93);
  const k = rng.normalTensor([B, H, S, d]), v = rng.normalTensor([B, H, S, d]), q = rng.normalTensor([B, H, 1, d]);
  // Key 0 scores 75 (q·k / 8) above the rest (scores 0): the blocks of keys 64.. have weights
  // e^-75 · v_scale < 2^-100.
  q.data.fill(0);
  q.data[0] = 10;
  for (let s = 0; s < S; s++) k.data[s * d] = s === 0 ? 60 : 0;
  const cache = new KvCache({ batch: B, numKvHeads: H, dK: d, dV: d, dtype: 'int8' });
  cache.append(k, v);
  const restore = getKernelPath();
  try {
    setKernelPath('rows');
    resetKernelCounts();
    const got = new OnlineSoftmaxState(q, { dV: d }).updateCache(cache).finalize();
    const ref = refFeaturesBound(q.data, k.data, v.data, { B, H, Hkv: H, T: 1, S, dK: d, dV: d }, { scale: 1 / 8, causal: false, dtype: 'int8', rescales: chunkedRescales(S, 1), q16Weights: info().kvDirect });
    assertWithin(t, got.output.data, ref.out, ref.outBound, 'tiny weights: output', [B, H, 1, d]);
    if (info().kvDirect) t.true(kernelCounts()['kv.i8.pv.q16.fp32'] >= 2, `tiny weights ran in fp32: ${kernelCounts()['kv.i8.pv.q16.fp32']} blocks`);

    // An inf in v (stored as a NaN scale of its group): that group's columns are NaN, the other's finite.
    const v2 = rng.normalTensor([B, H, S, d]);
    v2.data[100 * d + 5] = Infinity;
    const cache2 = new KvCache({ batch: B, numKvHeads: H, dK: d, dV: d, dtype: 'int8' });
    cache2.append(rng.normalTensor([B, H, S, d]), v2);
    const out = new OnlineSoftmaxState(rng.normalTensor([B, H, 1, d]), { dV: d }).updateCache(cache2).finalize().output.data;
    t.true(out.subarray(0, 32).every(Number.isNaN), `group 0: ${[...out.subarray(0, 4)]}`);
    t.true(out.subarray(32).every(Number.isFinite), `group 1: ${[...out.subarray(32, 36)]}`);
  } finally {
    setKernelPath(restore);
  }
});

test.serial('int8: the query is quantized only when it is the call\'s one row per kv head, not for a one-row slice of a longer call', (t) => {
  // T = 129 rows of one head on the row path: slices of 128 and 1 rows; the last must not be quantized.
  const [B, H, T, S, d] = [1, 1, 129, 200, 64], rng = new Rng(91);
  const k = rng.normalTensor([B, H, S, d]), v = rng.normalTensor([B, H, S, d]), q = rng.normalTensor([B, H, T, d]);
  const cache = new KvCache({ batch: B, numKvHeads: H, dK: d, dV: d, dtype: 'int8' });
  cache.append(k, v);
  const ref = refFeaturesBound(q.data, k.data, v.data, { B, H, Hkv: H, T, S, dK: d, dV: d }, { scale: 1 / Math.sqrt(d), causal: true, qOffset: S - T, dtype: 'int8', rescales: chunkedRescales(S, 1) });
  const restore = getKernelPath();
  try {
    setKernelPath('rows');
    const got = new OnlineSoftmaxState(q, { dV: d, causal: true, qOffset: S - T }).updateCache(cache).finalize();
    assertWithin(t, got.output.data, ref.out, ref.outBound, 'rows path, T 129: output within the fp32-query bound', [B, H, T, d]);
  } finally {
    setKernelPath(restore);
  }
});

test.serial('a call that reads more storage than L3 holds streams it (non-temporal prefetch): same results, and only then; a window counts its own keys', (t) => {
  const { kvDirect, kvStreamBytes } = info();
  if (!kvDirect) return t.pass('no direct kernels on this CPU (or KVSTREAM_KV_SIMD=off, KVSTREAM_VMATH=baseline): nothing streams');
  if (kvStreamBytes > 64 * 2 ** 20) return t.pass(`L3 of ${kvStreamBytes} bytes: a cache beyond it is too large for this test`);
  const [B, H, d] = [1, 2, 64];
  const rowBytes = H * 2 * d * 4;  // fp32 k and v of one position, every head
  const fits = Math.floor(kvStreamBytes / rowBytes);
  // [S, window, streams]: a window of 64 keys over a cache larger than L3 reads 64 (+ a block).
  for (const [S, window, streams] of [[fits, 0, false], [fits + 40, 0, true], [fits + 40, 64, false]] as const) {
    const rng = new Rng(S);
    const k = rng.normalTensor([B, H, S, d]), v = rng.normalTensor([B, H, S, d]), q = rng.normalTensor([B, H, 1, d]);
    const cache = new KvCache({ batch: B, numKvHeads: H, dK: d, dV: d });
    cache.append(k, v);
    const ref = refFeaturesBound(q.data, k.data, v.data, { B, H, Hkv: H, T: 1, S, dK: d, dV: d }, { scale: 1 / Math.sqrt(d), causal: true, qOffset: S - 1, window: window || undefined, dtype: 'fp32', rescales: chunkedRescales(S, 1) });
    resetKernelCounts();
    const got = new OnlineSoftmaxState(q, { dV: d, causal: true, qOffset: S - 1, window: window || undefined }).updateCache(cache).finalize();
    const counts = kernelCounts();
    t.is(counts['kv.stream'], streams ? 1 : 0, `S ${S}${window ? ` window ${window}` : ''} (${S * rowBytes} bytes against ${kvStreamBytes}): streamed`);
    t.true(counts['attn.rows.direct'] > 0 && counts['attn.rows.sgemv'] === 0, `S ${S}: one fp32 row per kv head takes the direct kernels`);
    assertWithin(t, got.output.data, ref.out, ref.outBound, `S ${S} output`, [B, H, 1, d]);
    assertWithin(t, got.lse.data, ref.lse, ref.lseBound, `S ${S} lse`, [B, H, 1]);
  }
});
