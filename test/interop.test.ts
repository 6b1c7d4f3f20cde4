// numpy reads every committed fixture (np.load, allow_pickle=False), the shapes match the
// manifest, and an independent numpy float64 recomputation agrees within each case's tolerance.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { readManifest } from '../src/fixtures/manifest.ts';

interface Report { name: string; shapes_ok: boolean; checks: Record<string, number>; problems: string[] }

// No skip: CI must have python3 with numpy, and this test says so when it does not.
const out = execFileSync('python3', ['test/interop/recompute.py', 'fixtures'], { encoding: 'utf8' });
const reports = out.trim().split('\n').map((line) => JSON.parse(line) as Report);

test('numpy loads every case of fixtures/manifest.json', async (t) => {
  const manifest = await readManifest('fixtures');
  t.true(manifest.cases.length >= 10);
  t.deepEqual(reports.map((r) => r.name), manifest.cases.map((c) => c.name));
});

for (const r of reports) {
  test(`numpy recomputes ${r.name} within its tolerance`, (t) => {
    t.deepEqual(r.problems, []);
    t.true(r.shapes_ok, 'array shapes and dtypes match the manifest');
    t.true(Object.keys(r.checks).includes('output'));
    for (const [array, excess] of Object.entries(r.checks)) {
      t.true(excess <= 0, `${array}: exceeds atol + rtol·|expected| by ${excess}`);
    }
  });
}
