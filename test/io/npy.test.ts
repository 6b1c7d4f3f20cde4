// NPY/NPZ codec: round trips, files numpy wrote, and hostile or broken files.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { zipSync } from 'fflate';
import { decodeNpy, encodeNpy } from '../../src/io/npy.ts';
import { decodeNpz, encodeNpz, readNpz } from '../../src/io/npz.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-npy-'));
const py = (code: string) => execFileSync('python3', ['-c', code], { cwd: dir, encoding: 'utf8' });

/** An NPY 1.0 file with a hand-written header (padded to 64) followed by `data` bytes. */
function npyWithHeader(header: string, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const pad = (64 - ((10 + header.length + 1) % 64)) % 64;
  const h = header + ' '.repeat(pad) + '\n';
  const out = new Uint8Array(10 + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, h.length, true);
  for (let i = 0; i < h.length; i++) out[10 + i] = h.charCodeAt(i);
  out.set(data, 10 + h.length);
  return out;
}

test('round trip of every allowed dtype, including 1-D and 0-length shapes', (t) => {
  const arrays = [
    { dtype: '<f4' as const, shape: [2, 3, 4], data: Float32Array.from({ length: 24 }, (_, i) => i / 7) },
    { dtype: '<i4' as const, shape: [5], data: Int32Array.from([1, -2, 3, 2 ** 31 - 1, -(2 ** 31)]) },
    { dtype: '|u1' as const, shape: [2, 2], data: Uint8Array.from([0, 1, 255, 7]) },
    { dtype: '<f4' as const, shape: [3, 0], data: new Float32Array(0) },
  ];
  for (const a of arrays) {
    const back = decodeNpy(encodeNpy(a), 'mem');
    t.deepEqual(back, a);
  }
});

test('numpy reads what we write and we read what numpy writes (C and Fortran order, bool, 1-D)', (t) => {
  writeFileSync(join(dir, 'ours.npz'), encodeNpz({ a: { dtype: '<f4', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }, n: { dtype: '<i4', shape: [3], data: Int32Array.from([7, 8, 9]) } }));
  t.is(py("import numpy as np; z=np.load('ours.npz', allow_pickle=False); print(z['a'].tolist(), z['n'].tolist(), z['n'].shape)").trim(), '[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] [7, 8, 9] (3,)');
  py("import numpy as np; np.save('f.npy', np.asfortranarray(np.arange(24, dtype='<f4').reshape(2,3,4))); np.save('v.npy', np.arange(5, dtype='<i4')); np.savez('theirs.npz', b=np.array([[True, False]]), x=np.ones((1,), dtype='<f4'))");
  const f = decodeNpy(readFileSync(join(dir, 'f.npy')), 'f.npy');
  t.deepEqual(f.shape, [2, 3, 4]);
  t.deepEqual([...f.data], Array.from({ length: 24 }, (_, i) => i), 'Fortran order transposed to C order');
  t.deepEqual(decodeNpy(readFileSync(join(dir, 'v.npy')), 'v.npy'), { dtype: '<i4', shape: [5], data: Int32Array.from([0, 1, 2, 3, 4]) });
  const z = decodeNpz(readFileSync(join(dir, 'theirs.npz')), 'theirs.npz');
  t.deepEqual(z.get('b'), { dtype: '|b1', shape: [1, 2], data: Uint8Array.from([1, 0]) });
});

test('small files read with readFileSync (pooled Buffers at odd offsets) decode correctly', (t) => {
  const a = { dtype: '<f4' as const, shape: [3], data: Float32Array.from([1.5, -2.5, 3.25]) };
  for (let i = 0; i < 5; i++) writeFileSync(join(dir, `s${i}.npy`), encodeNpy(a));
  readFileSync(join(dir, 's0.npy')); // take up pool space so later buffers sit at non-zero offsets
  for (let i = 1; i < 5; i++) t.deepEqual(decodeNpy(readFileSync(join(dir, `s${i}.npy`)), `s${i}.npy`).data, a.data);
});

const good = encodeNpy({ dtype: '<f4', shape: [4, 4], data: new Float32Array(16) });
const BAD: [string, Uint8Array, RegExp][] = [
  ['truncated data', good.subarray(0, good.length - 5), /^bad\.npy: shape \(4, 4\) of <f4 needs 64 data bytes, file has 59 \(truncated\)$/],
  ['truncated header', good.subarray(0, 30), /^bad\.npy: truncated header: declares 118 bytes, 20 present$/],
  ['tiny', good.subarray(0, 4), /^bad\.npy: truncated: 4 bytes, shorter than an NPY preamble$/],
  ['bad magic', Uint8Array.from([0x50, 0x4b, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]), /^bad\.npy: bad magic: not an NPY file$/],
  ['object dtype', npyWithHeader("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", new Uint8Array(16)), /^bad\.npy: dtype \|O is refused: object arrays are pickles, and pickles are never loaded \(accepted: f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1, byte order < > \| =\)$/],
  ['shape/size mismatch', npyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }", new Uint8Array(40)), /^bad\.npy: shape \(3, 3\) of <f4 needs 36 data bytes, file has 40$/],
  ['huge declared shape', npyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000), }"), /^bad\.npy: declared shape \(100000, 100000, 100000\) of <f4 needs 4000000000000000 bytes, more than the 2147483648-byte limit$/],
  ['code in the header', npyWithHeader("{'descr': __import__('os').system('true'), 'fortran_order': False, 'shape': (1,), }"), /^bad\.npy: malformed header at byte 10: unsupported value "__import__\('os'\)\.system\(" \(only strings, True\/False and integer tuples; the header is never evaluated\)$/],
  ['negative dim', npyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"), /^bad\.npy: header 'shape' entry -1 is negative$/],
  ['missing key', npyWithHeader("{'descr': '<f4', 'shape': (1,), }", new Uint8Array(4)), /^bad\.npy: header lacks 'fortran_order'$/],
];

for (const [what, bytes, message] of BAD) {
  test(`a bad .npy gives a FixtureError naming the file and the problem: ${what}`, (t) => {
    t.throws(() => decodeNpy(bytes, 'bad.npy'), { name: 'FixtureError', message });
  });
}

test('a broken zip, a non-npy entry and an entry that inflates too far are FixtureErrors', async (t) => {
  const zip = encodeNpz({ a: { dtype: '<f4', shape: [2], data: new Float32Array(2) } });
  t.throws(() => decodeNpz(zip.subarray(0, zip.length - 30), 'cut.npz'), { name: 'FixtureError', message: /^cut\.npz: not a readable zip archive/ });
  t.throws(() => decodeNpz(Uint8Array.from([1, 2, 3]), 'junk.npz'), { name: 'FixtureError', message: /^junk\.npz: not a readable zip archive/ });
  t.throws(() => decodeNpz(zipSync({ 'readme.txt': new Uint8Array(3) }), 'x.npz'), { name: 'FixtureError', message: 'x.npz: entry readme.txt is not a .npy file' });
  const bad = zipSync({ 'a.npy': BAD[0][1] });
  t.throws(() => decodeNpz(bad, 'y.npz'), { name: 'FixtureError', message: 'y.npz: entry a.npy: the zip declares 187 bytes, its NPY header (<f4, shape (4, 4)) makes 192' });
  // A local header that claims a 4 GiB entry: rejected before inflating.
  const bomb = zipSync({ 'b.npy': new Uint8Array(8) }, { level: 0 });
  const view = new DataView(bomb.buffer);
  for (let i = 0; i + 4 <= bomb.length; i++) if (view.getUint32(i, true) === 0x02014b50) view.setUint32(i + 24, 0xfffffff0, true);
  t.throws(() => decodeNpz(bomb, 'bomb.npz'), { name: 'FixtureError', message: /bomb\.npz/ });
  await t.throwsAsync(readNpz(join(dir, 'missing.npz')), { name: 'FixtureError', message: /missing\.npz: cannot read \(ENOENT/ });
});
