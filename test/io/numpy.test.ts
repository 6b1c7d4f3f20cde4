// The NPY/NPZ codec against numpy itself: every numeric dtype numpy writes, both byte orders,
// C and Fortran order, format 1.0/2.0/3.0, np.savez and np.savez_compressed; and numpy reading
// what encodeNpy/encodeNpz write. Values are compared as bytes (NaN payloads and -0 included).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeNpy, encodeNpy } from '../../src/io/npy.ts';
import type { AnyNpyArray, AnyNpyData, Dtype, Int64Dtype } from '../../src/io/npy.ts';
import { decodeNpz, encodeNpz, readNpz } from '../../src/io/npz.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-numpy-'));
const py = (code: string) => execFileSync('python3', ['-c', code], { cwd: dir, encoding: 'utf8', maxBuffer: 1 << 26 });

const CODES = ['f2', 'f4', 'f8', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'b1'];
/** Every stored dtype: both orders for multi-byte codes, '|' for single bytes. */
const DTYPES = CODES.flatMap((c) => (c.endsWith('1') ? [`|${c}`] : [`<${c}`, `>${c}`])) as (Dtype | Int64Dtype)[];
const safe = (dtype: string) => dtype.replace('<', 'le_').replace('>', 'be_').replace('|', 'na_');

// Python: deterministic arrays of each dtype with edge values; each saved C and Fortran ordered,
// plus the expected values as little-endian C-order bytes (.raw) for the comparison.
const GEN = `
import numpy as np, json
rng = np.random.default_rng(7)
def values(dt, n):
    dt = np.dtype(dt).newbyteorder('=')
    if dt.kind == 'f':
        fi = np.finfo(dt)
        edge = [0.0, -0.0, np.inf, -np.inf, np.nan, fi.max, -fi.max, fi.tiny, fi.smallest_subnormal, -fi.smallest_subnormal, 1/3, -2.5]
        v = np.concatenate([np.array(edge, dtype=dt), (rng.standard_normal(n) * 100).astype(dt)])
    elif dt.kind == 'b':
        v = rng.integers(0, 2, n + 12).astype(dt)
    else:
        ii = np.iinfo(dt)
        edge = np.array([ii.min, ii.max, 0, 1, ii.max - 1, ii.min + 1], dtype=dt)
        v = np.concatenate([edge, rng.integers(ii.min, ii.max, n + 6, dtype=dt, endpoint=True)])
    return v[:24]
meta = {}
base = {s: values(s, 24) for s in ${JSON.stringify(DTYPES)}}
for s in ${JSON.stringify(DTYPES)}:
    a = base[s].reshape(2, 3, 4).astype(s)
    name = s.replace('<', 'le_').replace('>', 'be_').replace('|', 'na_')
    np.save(name + '_c.npy', a)
    np.save(name + '_f.npy', np.asfortranarray(a))
    assert np.load(name + '_f.npy').flags.f_contiguous
    le = a.astype(a.dtype.newbyteorder('<'))
    open(name + '.raw', 'wb').write(le.tobytes(order='C'))
    meta[s] = a.dtype.str
    for v in [(1, 0), (2, 0), (3, 0)]:
        with open(name + '_v%d.npy' % v[0], 'wb') as f:
            np.lib.format.write_array(f, np.asfortranarray(a) if v[0] == 2 else a, version=v)
np.save('scalar.npy', np.float64(2.5))
np.save('f4d.npy', np.asfortranarray(np.arange(120, dtype='>i2').reshape(2, 3, 4, 5)))
np.save('f0.npy', np.asfortranarray(np.zeros((3, 0, 2), dtype='<f4')))
np.save('empty.npy', np.zeros((0, 3), dtype='>i2'))
np.save('vector.npy', np.arange(5, dtype='>u4'))
arrays = {s.replace('<', 'le_').replace('>', 'be_').replace('|', 'na_'): base[s].reshape(4, 6).astype(s) for s in ${JSON.stringify(DTYPES)}}
arrays['fortran'] = np.asfortranarray(np.arange(60, dtype='>f8').reshape(3, 4, 5))
np.savez('plain.npz', **arrays)
np.savez_compressed('compressed.npz', **arrays)
print(json.dumps(meta))
`;
const meta = JSON.parse(py(GEN)) as Record<string, string>;

/** `data` as little-endian bytes (the machine's order, checked little-endian below). */
const bytesOf = (data: AnyNpyData) => Buffer.from(data.buffer, data.byteOffset, data.byteLength);
const NATURAL: Record<string, string> = { f2: 'Uint16Array', f4: 'Float32Array', f8: 'Float64Array', i1: 'Int8Array', i2: 'Int16Array', i4: 'Int32Array', i8: 'BigInt64Array', u1: 'Uint8Array', u2: 'Uint16Array', u4: 'Uint32Array', u8: 'BigUint64Array', b1: 'Uint8Array' };

/** The first differing element, for a readable failure. */
function firstDiff(a: Buffer, b: Buffer, size: number): string {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return `element ${Math.floor(i / size)}: ${a.subarray(i - (i % size), i - (i % size) + size).toString('hex')} vs ${b.subarray(i - (i % size), i - (i % size) + size).toString('hex')}`;
  return 'none';
}

test('this machine is little-endian (the .raw comparison files are)', (t) => {
  t.is(new Uint8Array(new Uint16Array([1]).buffer)[0], 1);
});

for (const dtype of DTYPES) {
  test(`np.save ${dtype}: C order, Fortran order and format 1.0/2.0/3.0 decode to numpy's values`, (t) => {
    const name = safe(dtype);
    const want = readFileSync(join(dir, `${name}.raw`));
    const size = Number(dtype.slice(2));
    for (const file of ['c', 'f', 'v1', 'v2', 'v3']) {
      const a = decodeNpy(readFileSync(join(dir, `${name}_${file}.npy`)), `${name}_${file}.npy`, { int64: 'bigint' });
      t.is(a.dtype as string, meta[dtype], `${file}: dtype`);
      t.is(a.dtype, dtype);
      t.deepEqual(a.shape, [2, 3, 4], `${file}: shape`);
      t.is(a.data.constructor.name, NATURAL[dtype.slice(1)], `${file}: typed array`);
      const got = bytesOf(a.data);
      t.true(got.equals(want), `${file}: values differ from numpy's, first at ${firstDiff(got, want, size)}`);
    }
  });
}

test('np.save 0-d, empty and 1-D big-endian arrays; rank-4 and empty Fortran arrays', (t) => {
  t.deepEqual(decodeNpy(readFileSync(join(dir, 'f4d.npy')), 'f4d.npy'), { dtype: '>i2', shape: [2, 3, 4, 5], data: Int16Array.from({ length: 120 }, (_, i) => i) });
  t.deepEqual(decodeNpy(readFileSync(join(dir, 'f0.npy')), 'f0.npy'), { dtype: '<f4', shape: [3, 0, 2], data: new Float32Array(0) });
  t.deepEqual(decodeNpy(readFileSync(join(dir, 'scalar.npy')), 'scalar.npy'), { dtype: '<f8', shape: [], data: Float64Array.of(2.5) });
  t.deepEqual(decodeNpy(readFileSync(join(dir, 'empty.npy')), 'empty.npy'), { dtype: '>i2', shape: [0, 3], data: new Int16Array(0) });
  t.deepEqual(decodeNpy(readFileSync(join(dir, 'vector.npy')), 'vector.npy'), { dtype: '>u4', shape: [5], data: Uint32Array.of(0, 1, 2, 3, 4) });
});

for (const file of ['plain.npz', 'compressed.npz']) {
  test(`np.${file === 'plain.npz' ? 'savez' : 'savez_compressed'}: every dtype decodes to numpy's values, in numpy's order`, async (t) => {
    const z = await readNpz(join(dir, file), { int64: 'bigint' });
    t.deepEqual([...z.keys()], [...DTYPES.map(safe), 'fortran']);
    for (const dtype of DTYPES) {
      const a = z.get(safe(dtype))!;
      t.is(a.dtype, dtype);
      t.deepEqual(a.shape, [4, 6]);
      const want = readFileSync(join(dir, `${safe(dtype)}.raw`));
      t.true(bytesOf(a.data).equals(want), `${dtype}: first difference at ${firstDiff(bytesOf(a.data), want, Number(dtype.slice(2)))}`);
    }
    const f = z.get('fortran')!;
    t.is(f.dtype, '>f8');
    t.deepEqual([...(f.data as Float64Array)], Array.from({ length: 60 }, (_, i) => i), 'Fortran order transposed to C order');
  });
}

test('without { int64: "bigint" } a 64-bit integer array is a FixtureError naming the option; the others decode', (t) => {
  t.throws(() => decodeNpz(readFileSync(join(dir, 'plain.npz')), 'plain.npz'), { name: 'FixtureError', message: /^plain\.npz:le_i8\.npy: <i8 holds 64-bit integers, which decode to BigInt64Array\/BigUint64Array only with \{ int64: 'bigint' \}/ });
  const a = decodeNpy(readFileSync(join(dir, 'be_f8_c.npy')), 'be_f8_c.npy');
  t.true(a.data instanceof Float64Array);
});

// encodeNpy → numpy: dtype, shape and values as numpy reads them.
const WRITE: { dtype: Dtype | Int64Dtype; data: AnyNpyData }[] = [
  { dtype: '<f4', data: Float32Array.of(1.5, -0, Infinity, NaN, 3.4028234663852886e38, 1e-45) },
  { dtype: '<i4', data: Int32Array.of(-(2 ** 31), 2 ** 31 - 1, 0, 1, -1, 7) },
  { dtype: '|u1', data: Uint8Array.of(0, 1, 2, 127, 128, 255) },
  { dtype: '<f8', data: Float64Array.of(0.1, -0, Infinity, NaN, Number.MAX_VALUE, 5e-324) },
  { dtype: '<f2', data: Uint16Array.of(0x3c00, 0x8000, 0x7c00, 0x7e00, 0x7bff, 0x0001) },
  { dtype: '<u2', data: Uint16Array.of(0, 1, 0x3f80, 0x7f80, 0xffff, 0x8000) },
  { dtype: '|i1', data: Int8Array.of(-128, 127, 0, 1, -1, 5) },
  { dtype: '>f8', data: Float64Array.of(1, 2, 3, -4, 0.5, 1e300) },
  { dtype: '>f4', data: Float32Array.of(1, 2, 3, -4, 0.5, 1e30) },
  { dtype: '<i8', data: BigInt64Array.of(-(2n ** 63n), 2n ** 63n - 1n, 0n, 1n, -1n, 2n ** 53n + 1n) },
  { dtype: '>u8', data: BigUint64Array.of(0n, 2n ** 64n - 1n, 1n, 2n, 3n, 4n) },
  { dtype: '>i2', data: Int16Array.of(-32768, 32767, 0, 1, -1, 256) },
  { dtype: '<u4', data: Uint32Array.of(0, 2 ** 32 - 1, 1, 2, 3, 4) },
  { dtype: '|b1', data: Uint8Array.of(0, 1, 1, 0, 0, 1) },
];

test('numpy reads what encodeNpy and encodeNpz write: dtype, shape and every value', (t) => {
  const arrays: Record<string, AnyNpyArray> = {};
  WRITE.forEach((w, k) => {
    const a = { dtype: w.dtype, shape: [2, 3], data: w.data } as AnyNpyArray;
    writeFileSync(join(dir, `w${k}.npy`), encodeNpy(a));
    arrays[`w${k}`] = a;
  });
  writeFileSync(join(dir, 'ours.npz'), encodeNpz(arrays));
  const out = JSON.parse(py(`
import numpy as np, json
z = np.load('ours.npz', allow_pickle=False)
res = []
for k in range(${WRITE.length}):
    a = np.load('w%d.npy' % k, allow_pickle=False)
    b = z['w%d' % k]
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    res.append([a.dtype.str, list(a.shape), a.astype(a.dtype.newbyteorder('<')).tobytes().hex()])
print(json.dumps(res))
`)) as [string, number[], string][];
  WRITE.forEach((w, k) => {
    const [dtype, shape, hex] = out[k];
    t.is(dtype, w.dtype);
    t.deepEqual(shape, [2, 3]);
    t.is(hex, bytesOf(w.data).toString('hex'), `${w.dtype}: numpy read different values`);
  });
});

test('encodeNpy writes <f4, <i4 and |u1 exactly as before: re-encoding every committed fixture gives its bytes', (t) => {
  const fixtures = join(import.meta.dirname, '..', '..', 'fixtures');
  const files = readdirSync(fixtures).filter((f) => f.endsWith('.npz'));
  t.true(files.length > 0, `no .npz in ${fixtures}`);
  for (const f of files) {
    const bytes = readFileSync(join(fixtures, f));
    const again = encodeNpz(decodeNpz(bytes, f));
    t.true(Buffer.from(again).equals(bytes), `${f}: re-encoded bytes differ`);
  }
  // And the header bytes of the three dtypes, literally.
  const head = (dtype: Dtype, data: AnyNpyData) => Buffer.from(encodeNpy({ dtype, shape: [2], data }).subarray(0, 128)).toString('latin1');
  for (const [dtype, data] of [['<f4', new Float32Array(2)], ['<i4', new Int32Array(2)], ['|u1', new Uint8Array(2)]] as const) {
    const dict = `{'descr': '${dtype}', 'fortran_order': False, 'shape': (2,), }`;
    t.is(head(dtype, data), `\x93NUMPY\x01\x00v\x00${dict}${' '.repeat(128 - 10 - dict.length - 1)}\n`);
  }
});

test('round trip of every dtype through encodeNpy and decodeNpy keeps dtype, shape and bytes', (t) => {
  for (const w of WRITE) {
    const a = { dtype: w.dtype, shape: [3, 2], data: w.data } as AnyNpyArray;
    const back = decodeNpy(encodeNpy(a), 'mem', { int64: 'bigint' });
    t.is(back.dtype, w.dtype);
    t.deepEqual(back.shape, [3, 2]);
    t.true(bytesOf(back.data).equals(bytesOf(w.data)), w.dtype);
  }
});

test('encodeNpy refuses a dtype its typed array does not hold, non-canonical dtypes and b1 bytes other than 0/1', (t) => {
  t.throws(() => encodeNpy({ dtype: '<f4', shape: [1], data: Int32Array.of(1) }), { name: 'FixtureError', message: 'dtype <f4 is written from a Float32Array, got a Int32Array' });
  t.throws(() => encodeNpy({ dtype: '<u1' as Dtype, shape: [1], data: Uint8Array.of(1) }), { name: 'FixtureError', message: /cannot write dtype <u1/ });
  t.throws(() => encodeNpy({ dtype: '|b1', shape: [2], data: Uint8Array.of(1, 2) }), { name: 'FixtureError', message: '|b1 data must be 0 or 1, got 2 at flat index 1' });
});

test('an npz that Python streamed to a pipe (data descriptors, zip64 local headers) decodes', (t) => {
  const bytes = execFileSync('python3', ['-c', `
import numpy as np, sys, zipfile
with zipfile.ZipFile(sys.stdout.buffer, 'w', compression=zipfile.ZIP_DEFLATED) as z:
    for name, a in [('a', np.arange(6, dtype='>f8').reshape(2, 3)), ('m', np.array([True, False, True]))]:
        with z.open(name + '.npy', 'w', force_zip64=True) as f:
            np.lib.format.write_array(f, a)
`]);
  t.is(bytes.readUInt16LE(6) & 8, 8, 'the first entry uses a data descriptor');
  const z = decodeNpz(bytes, 'piped.npz');
  t.deepEqual(z.get('a'), { dtype: '>f8', shape: [2, 3], data: Float64Array.of(0, 1, 2, 3, 4, 5) });
  t.deepEqual(z.get('m'), { dtype: '|b1', shape: [3], data: Uint8Array.of(1, 0, 1) });
});
