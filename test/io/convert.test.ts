// convertNpy and the half-width float helpers, against numpy's astype (f16, f8 → f32, int64 →
// f32) and, for bfloat16 (numpy has none), against nearest-value rounding done independently.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bf16ToF32, convertNpy, decodeNpy, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/io/npy.ts';
import type { NpyArray } from '../../src/io/npy.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-convert-'));
const py = (code: string) => execFileSync('python3', ['-c', code], { cwd: dir, encoding: 'utf8' });
const bitsOf = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);
/** A file's bytes in a fresh ArrayBuffer (small reads come from a shared pool). */
const fileBuffer = (name: string) => Uint8Array.prototype.slice.call(readFileSync(join(dir, name))).buffer as ArrayBuffer;

/** Deterministic pseudo-random 32-bit words (xorshift32). */
function words(n: number, seed = 12345): Uint32Array {
  const out = new Uint32Array(n);
  let s = seed >>> 0;
  for (let k = 0; k < n; k++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    out[k] = s >>>= 0;
  }
  return out;
}

/** Where two bit arrays first differ outside NaNs (NaN must map to NaN of the same sign). */
function mismatch(got: ArrayLike<number>, want: ArrayLike<number>, isNaN: (b: number) => boolean, sign: number): string | undefined {
  let count = 0, first = -1;
  for (let k = 0; k < want.length; k++) {
    const ok = isNaN(want[k]) ? isNaN(got[k]) && (got[k] & sign) === (want[k] & sign) : got[k] === want[k];
    if (!ok) {
      count++;
      if (first < 0) first = k;
    }
  }
  return count ? `${count} of ${want.length} differ, first at ${first}: got 0x${got[first].toString(16)}, numpy 0x${want[first].toString(16)}` : undefined;
}

test('f16ToF32 matches numpy for all 65536 half bit patterns', (t) => {
  const all = Uint16Array.from({ length: 65536 }, (_, k) => k);
  writeFileSync(join(dir, 'h.bin'), all);
  py("import numpy as np; np.fromfile('h.bin', '<f2').astype('<f4').tofile('h32.bin')");
  const want = new Uint32Array(fileBuffer('h32.bin'));
  const got = bitsOf(f16ToF32(all));
  t.is(mismatch(got, want, (b) => (b & 0x7fffffff) > 0x7f800000, 0x80000000), undefined);
});

test('f32ToF16 rounds to nearest even as numpy does: every half, every midpoint ± 1 ulp, and 200000 random floats', (t) => {
  const halves = f16ToF32(Uint16Array.from({ length: 65536 }, (_, k) => k));
  const cases: number[] = [];
  const hb = bitsOf(halves);
  for (let k = 0; k < 0x7c00; k++) {
    cases.push(hb[k], hb[k | 0x8000]);
    // Midpoint between half k and k+1 (exact in f32 for normal halves and subnormals), and its neighbours.
    const mid = new Float32Array([(halves[k] + halves[k + 1]) / 2]);
    const m = bitsOf(mid)[0];
    if (mid[0] !== (halves[k] + halves[k + 1]) / 2) continue;
    cases.push(m, m - 1, m + 1, (m | 0x80000000) >>> 0);
  }
  cases.push(0x477fefff, 0x477ff000, 0x477ff001, 0x33000000, 0x33000001, 0x32ffffff, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffc12345);
  const all = Uint32Array.from([...cases, ...words(200000)]);
  writeFileSync(join(dir, 'f.bin'), all);
  py("import numpy as np, warnings; warnings.simplefilter('ignore'); np.fromfile('f.bin', '<f4').astype('<f2').tofile('f16.bin')");
  const want = new Uint16Array(fileBuffer('f16.bin'));
  const got = f32ToF16(new Float32Array(all.buffer));
  t.is(mismatch(got, want, (b) => (b & 0x7fff) > 0x7c00, 0x8000), undefined);
});

test('bfloat16: decoding is the top half of a float32; encoding picks the nearest bfloat16, ties to even', (t) => {
  t.deepEqual([...bf16ToF32(Uint16Array.of(0x3f80, 0xc000, 0x7f80, 0xff80, 0x0001, 0x8000, 0x3eab))], [1, -2, Infinity, -Infinity, 2 ** -133, -0, 0.333984375]);
  t.true(Number.isNaN(bf16ToF32(Uint16Array.of(0x7fc0))[0]));
  const x = new Float32Array(words(300000, 99).buffer);
  // Ties and near-ties: halfway patterns (low 16 bits 0x8000) and their neighbours.
  const w = bitsOf(x);
  for (let k = 0; k < 3000; k++) w[k] = ((w[k] & 0xffff0000) | [0x8000, 0x7fff, 0x8001][k % 3]) >>> 0;
  w.set([0x7f7fffff, 0x7f7f8000, 0x7f7f7fff, 0xff7fffff, 0x00008000, 0x00018000, 0x7f800001, 0xffffffff], 3000);
  const got = f32ToBf16(x);
  const dec = bf16ToF32(got);
  let bad = -1;
  for (let k = 0; k < x.length && bad < 0; k++) {
    const v = x[k];
    if (Number.isNaN(v)) {
      if (!(Number.isNaN(dec[k]) && (got[k] & 0x8000) === (w[k] >>> 31) << 15)) bad = k;
      continue;
    }
    // Candidates: truncation toward zero and the next bfloat16 away from zero.
    const lo = w[k] >>> 16, hi = lo + 1;
    const [a, b] = bf16ToF32(Uint16Array.of(lo, hi));
    const da = Math.abs(v - a), db = Number.isFinite(b) ? Math.abs(v - b) : Math.abs(v) >= 2 ** 127 * (2 - 2 ** -8) ? 0 : Infinity;
    const want = da < db ? lo : db < da ? hi : lo % 2 === 0 ? lo : hi;
    if (got[k] !== want) bad = k;
  }
  t.is(bad, -1, bad >= 0 ? `x=${x[bad]} (0x${w[bad].toString(16)}): got 0x${got[bad].toString(16)}` : '');
});

/** An NpyArray from numpy: `expr` evaluated, saved, decoded. */
function fromNumpy(expr: string): NpyArray {
  py(`import numpy as np; np.save('a.npy', ${expr})`);
  return decodeNpy(readFileSync(join(dir, 'a.npy')), 'a.npy');
}

test('f8 → float32 equals numpy astype(float32) and reports how many values rounded and the largest change', (t) => {
  py("import numpy as np; r = np.random.default_rng(3); a = np.concatenate([r.standard_normal(997) * 10.0 ** r.integers(-46, 37, 997), [0.5, -0.0, np.inf, np.nan, 1e-50, 3.4028235e38]]); np.save('a.npy', a.astype('>f8')); a.astype('<f4').tofile('a32.bin')");
  const changed = Number(py("import numpy as np; a = np.load('a.npy'); print(int(np.sum((a.astype('<f4').astype('<f8') != a) & ~np.isnan(a))))"));
  const a = decodeNpy(readFileSync(join(dir, 'a.npy')), 'a.npy');
  const c = convertNpy(a, 'float32', { source: 'a.npy' });
  const want = new Uint32Array(fileBuffer('a32.bin'));
  t.is(mismatch(bitsOf(c.data), want, (b) => (b & 0x7fffffff) > 0x7f800000, 0x80000000), undefined);
  t.true(c.lossy);
  t.is(c.losses.length, 1);
  t.regex(c.losses[0], new RegExp(`^a\\.npy: >f8 → float32: ${changed} of 1003 values rounded \\(\\d+ to zero\\); largest change \\S+ \\(relative \\S+\\) at \\[\\d+\\]: \\S+ → \\S+$`));
  t.throws(() => convertNpy(a, 'float32', { source: 'a.npy', onLoss: 'throw' }), { name: 'FixtureError', message: /^a\.npy: >f8 → float32: \d+ of 1003 values rounded/ });
  // Exactly representable values convert silently; float64 of f8 is the data itself.
  const exact = { dtype: '<f8' as const, shape: [3], data: Float64Array.of(0.5, -2, 1e30 === Math.fround(1e30) ? 1e30 : 1024) };
  t.deepEqual(convertNpy(exact, 'float32').losses, []);
  t.true(convertNpy(a, 'float64').data === a.data, 'float64 data returned as is');
});

test('finite f8 beyond float32 range is an error, not an infinity', (t) => {
  const a = { dtype: '<f8' as const, shape: [2, 2], data: Float64Array.of(1, 2, -1e300, Infinity) };
  t.throws(() => convertNpy(a, 'float32', { source: 'x.npz:w' }), { name: 'FixtureError', message: 'x.npz:w: <f8 → float32: value -1e+300 at [1, 0] is beyond float32\'s range (1 of 4 values would become infinite)' });
});

test('int64 → float32 is correctly rounded (numpy astype), int64 → int32 out of range is an error, never a wrap', (t) => {
  py("import numpy as np; r = np.random.default_rng(5); a = np.concatenate([r.integers(-2**63, 2**63 - 1, 5000, dtype='<i8', endpoint=True), [2**53 + 1, 2**24 + 1, -2**63, 2**63 - 1, 0, 16777217 * 2**30]]).astype('<i8'); np.save('a.npy', a); a.astype('<f4').tofile('a32.bin'); a.astype('<f8').tofile('a64.bin')");
  const a = decodeNpy(readFileSync(join(dir, 'a.npy')), 'a.npy', { int64: 'bigint' });
  t.is(a.dtype, '<i8');
  const f32 = convertNpy(a, 'float32');
  t.is(mismatch(bitsOf(f32.data), new Uint32Array(fileBuffer('a32.bin')), () => false, 0), undefined);
  t.true(f32.lossy);
  const f64 = convertNpy(a, 'float64');
  t.deepEqual([...f64.data], [...new Float64Array(fileBuffer('a64.bin'))]);
  t.regex(f64.losses[0], /^array: <i8 → float64: \d+ of 5006 values rounded/);
  t.throws(() => convertNpy(a, 'int32', { source: 'z.npz:n' }), { name: 'FixtureError', message: /^z\.npz:n: <i8 → int32: value -?\d+ at \[0\] is outside int32 \[-2147483648, 2147483647\] \(\d+ of 5006 values cannot convert\)$/ });
  const small = { dtype: '>i8' as const, shape: [3], data: BigInt64Array.of(5n, -1n, 2147483647n) };
  const c = convertNpy(small, 'int32');
  t.deepEqual([...c.data], [5, -1, 2147483647]);
  t.false(c.lossy);
  t.throws(() => convertNpy({ dtype: '<u8', shape: [1], data: BigUint64Array.of(2n ** 31n) }, 'int32'), { message: /value 2147483648 at \[0\] is outside int32/ });
});

test('int32 targets: u4 beyond 2^31 - 1, NaN, infinities and fractions are errors; bools and small ints convert', (t) => {
  t.throws(() => convertNpy({ dtype: '<u4', shape: [2], data: Uint32Array.of(1, 2 ** 31) }, 'int32'), { message: 'array: <u4 → int32: value 2147483648 at [1] is outside int32 [-2147483648, 2147483647] (1 of 2 values cannot convert)' });
  t.throws(() => convertNpy({ dtype: '<f4', shape: [3], data: Float32Array.of(1, 2.5, 3.5) }, 'int32'), { message: 'array: <f4 → int32: value 2.5 at [1] is not an integer (2 of 3 values cannot convert)' });
  t.throws(() => convertNpy({ dtype: '<f8', shape: [1], data: Float64Array.of(NaN) }, 'int32'), { message: 'array: <f8 → int32: value NaN at [0] has no int32 value (1 of 1 values cannot convert)' });
  t.deepEqual([...convertNpy({ dtype: '|b1', shape: [3], data: Uint8Array.of(1, 0, 1) }, 'int32').data], [1, 0, 1]);
  t.deepEqual([...convertNpy({ dtype: '>i2', shape: [2], data: Int16Array.of(-32768, 7) }, 'float32').data], [-32768, 7]);
  t.deepEqual([...convertNpy({ dtype: '<f8', shape: [2], data: Float64Array.of(-3, 2 ** 31 - 1) }, 'int32').data], [-3, 2 ** 31 - 1]);
});

test('int32/uint32 → float32 beyond 2^24 report rounding; below it they are exact', (t) => {
  const c = convertNpy({ dtype: '<i4', shape: [3], data: Int32Array.of(16777216, 16777217, -5) }, 'float32', { source: 'n' });
  t.deepEqual([...c.data], [16777216, 16777216, -5]);
  t.deepEqual(c.losses, ['n: <i4 → float32: 1 of 3 values rounded; largest change 1.00 (relative 5.96e-8) at [1]: 16777217 → 16777216']);
  t.false(convertNpy({ dtype: '<u4', shape: [1], data: Uint32Array.of(16777216) }, 'float32').lossy);
});

test('f2 and bfloat16 arrays convert exactly to float32 and float64; bfloat16 needs a u2 array', (t) => {
  const h = fromNumpy("np.array([[1.5, -0.0], [65504, 6e-8]], dtype='>f2')");
  t.is(h.dtype, '>f2');
  const c = convertNpy(h, 'float32');
  t.deepEqual([...c.data], [1.5, -0, 65504, 2 ** -24]);
  t.false(c.lossy);
  t.deepEqual([...convertNpy(h, 'float64').data], [1.5, -0, 65504, 2 ** -24]);
  // bfloat16 as ml_dtypes stores it: u2 bit patterns, the manifest dtype "bfloat16".
  const b = fromNumpy("(np.array([1.0, -2.5, 3.140625, 1e38], dtype='<f4').view('<u4') >> 16).astype('<u2')");
  const bc = convertNpy(b, 'float32', { interpret: 'bfloat16', source: 'k' });
  t.deepEqual([...bc.data], [1, -2.5, 3.140625, 2 ** 126 * 1.171875]);
  t.is(bc.from, 'bfloat16 (<u2)');
  t.throws(() => convertNpy(h, 'float32', { interpret: 'bfloat16', source: 'k' }), { name: 'FixtureError', message: 'k: bfloat16 (>f2) → float32: bfloat16 is stored as u2 bit patterns, this array is >f2' });
  // f2 → int32 goes through the float rules.
  t.throws(() => convertNpy(h, 'int32'), { message: /value 1\.5 at \[0, 0\] is not an integer/ });
});

test('float32 data converts to float32 without a copy; the result has the shape and no losses', (t) => {
  const a = { dtype: '<f4' as const, shape: [2], data: Float32Array.of(1, 2) };
  const c = convertNpy(a, 'float32');
  t.is(c.data, a.data);
  t.deepEqual(c, { data: a.data, shape: [2], from: '<f4', to: 'float32', lossy: false, losses: [] });
});
