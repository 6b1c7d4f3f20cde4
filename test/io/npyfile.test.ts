// NpyFile (the disk source's reader): float files of any byte order and width read as float32,
// ranges equal to numpy's astype(float32) of the same tokens.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NpyFile } from '../../src/io/npyfile.ts';

const dir = mkdtempSync(join(tmpdir(), 'kvstream-npyfile-'));
execFileSync('python3', ['-c', `
import numpy as np
r = np.random.default_rng(11)
a = (r.standard_normal((2, 9, 3)) * 1000).astype('<f8')
for s in ['<f4', '>f4', '<f2', '>f2', '<f8', '>f8']:
    name = s.replace('<', 'le_').replace('>', 'be_')
    np.save(name + '.npy', a.astype(s))
    a.astype(s).astype('<f4')[:, 2:7].tofile(name + '.want')
np.save('fortran.npy', np.asfortranarray(a.astype('<f4')))
np.save('ints.npy', np.zeros((2, 9, 3), dtype='<i4'))
with open('v3.npy', 'wb') as f:
    np.lib.format.write_array(f, a.astype('>f4'), version=(3, 0))
`], { cwd: dir });

const want = (name: string) => new Float32Array(Uint8Array.prototype.slice.call(readFileSync(join(dir, `${name}.want`))).buffer);

for (const name of ['le_f4', 'be_f4', 'le_f2', 'be_f2']) {
  test(`${name}: tokens [2, 7) read as numpy's float32 values`, async (t) => {
    const f = await NpyFile.open(join(dir, `${name}.npy`));
    try {
      t.deepEqual(f.shape, [2, 9, 3]);
      const x = await f.read(2, 7);
      t.deepEqual(x.shape, [2, 5, 3]);
      t.deepEqual(x.data, want(name));
      t.is(f.rounded, 0);
    } finally {
      await f.close();
    }
  });
}

test('f8 files need { float64: "round" }; then values equal numpy astype(float32) and rounding is counted', async (t) => {
  for (const name of ['le_f8', 'be_f8']) {
    await t.throwsAsync(NpyFile.open(join(dir, `${name}.npy`)), { name: 'FixtureError', message: new RegExp(`${name}\\.npy: expected a C-ordered <f4 array of shape \\[B,S,d\\], got .f8 \\(2, 9, 3\\) \\(f8 rounds to float32: pass \\{ float64: 'round' \\}\\)$`) });
    const f = await NpyFile.open(join(dir, `${name}.npy`), { float64: 'round' });
    const x = await f.read(2, 7);
    await f.close();
    t.deepEqual(x.data, want(name));
    t.is(f.rounded, 30, 'every random value rounds');
  }
});

test('format 3.0 headers are read; Fortran order and integer files are refused', async (t) => {
  const f = await NpyFile.open(join(dir, 'v3.npy'));
  t.deepEqual((await f.read(2, 7)).data, want('be_f4'));
  await f.close();
  await t.throwsAsync(NpyFile.open(join(dir, 'fortran.npy')), { name: 'FixtureError', message: /got <f4 \(2, 9, 3\) in Fortran order$/ });
  await t.throwsAsync(NpyFile.open(join(dir, 'ints.npy')), { name: 'FixtureError', message: /got <i4 \(2, 9, 3\)$/ });
});
