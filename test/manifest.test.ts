// manifest.json: sorted, idempotent, safe under concurrent writers and killed runs, paths confined.
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeCase, writeCase } from '../src/fixture.ts';
import { fixturePath, loadFixture, readManifest, upsertEntry } from '../src/manifest.ts';
import { entry } from './helpers/entries.ts';

const tmp = () => mkdtempSync(join(tmpdir(), 'kvstream-manifest-'));

function worker(dir: string, prefix: string, count: number, pad = 0) {
  return spawn(process.execPath, ['--import=tsx', 'test/helpers/upsert-worker.ts', dir, prefix, String(count), String(pad)], { stdio: ['ignore', 'ignore', 'pipe'] });
}
const exited = (child: ReturnType<typeof spawn>) => new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));

test('entries stay sorted by name and a rerun replaces its entry', async (t) => {
  const dir = tmp();
  for (const name of ['zeta', 'alpha', 'mid', 'alpha']) await upsertEntry(dir, entry(name, `v-${name}`));
  await upsertEntry(dir, entry('mid', 'replaced'));
  const m = await readManifest(dir);
  t.deepEqual(m.cases.map((c) => c.name), ['alpha', 'mid', 'zeta']);
  t.is(m.cases[1].description, 'replaced');
  t.is(m.format, 'kvstream-fixtures');
});

test('two processes writing at once lose no entry', async (t) => {
  const dir = tmp();
  const a = worker(dir, 'a', 25), b = worker(dir, 'b', 25);
  t.deepEqual(await Promise.all([exited(a), exited(b)]), [0, 0]);
  const names = (await readManifest(dir)).cases.map((c) => c.name);
  t.is(names.length, 50);
  t.deepEqual(names, [...names].sort());
});

test('a writer killed midway leaves a whole manifest, and the next writer gets the lock', async (t) => {
  const dir = tmp();
  await upsertEntry(dir, entry('keep'));
  for (const delay of [150, 400, 700]) {
    const child = worker(dir, 'big', 0, 200_000); // ~200 KB per entry: writes take a while
    await new Promise((r) => setTimeout(r, delay));
    child.kill('SIGKILL');
    await exited(child);
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    t.true(m.cases.some((c: { name: string }) => c.name === 'keep'), `after a kill at ${delay} ms`);
  }
  await upsertEntry(dir, entry('after')); // waits out a stale lock if the kill left one
  t.true((await readManifest(dir)).cases.some((c) => c.name === 'after'));
});

test('names and files cannot point outside the fixture folder', async (t) => {
  const dir = tmp();
  t.throws(() => fixturePath(dir, { name: '../evil', file: '../evil.npz' }), { name: 'FixtureError', message: /expected a case name of \[a-z0-9_-\]/ });
  t.throws(() => fixturePath(dir, { name: 'ok', file: '../ok.npz' }), { name: 'FixtureError', message: /case ok names file "\.\.\/ok\.npz", expected "ok\.npz" inside the fixture folder/ });
  t.throws(() => fixturePath(dir, { name: 'ok', file: '/etc/passwd' }), { name: 'FixtureError', message: /names file "\/etc\/passwd"/ });
  await t.throwsAsync(upsertEntry(dir, { ...entry('x'), name: 'A/B' }), { name: 'FixtureError' });
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ format: 'kvstream-fixtures', version: 1, cases: [{ ...entry('x'), file: '../../x.npz' }] }));
  await t.throwsAsync(readManifest(dir), { name: 'FixtureError', message: /case x names file "\.\.\/\.\.\/x\.npz"/ });
  writeFileSync(join(dir, 'manifest.json'), '{"format": "other"}');
  await t.throwsAsync(readManifest(dir), { name: 'FixtureError', message: /expected \{"format": "kvstream-fixtures", "version": 1/ });
  writeFileSync(join(dir, 'manifest.json'), '{not json');
  await t.throwsAsync(readManifest(dir), { name: 'FixtureError', message: /manifest\.json: not valid JSON/ });
});

test('loadFixture checks the sha256 and each array against the manifest', async (t) => {
  const dir = tmp();
  const c = {
    name: 'tiny', description: 'd', seed: 1, config: entry('tiny').config, tolerance: entry('tiny').tolerance,
    arrays: new Map([['output', { dtype: '<f4' as const, shape: [1, 2], data: Float32Array.from([1, 2]) }]]),
  };
  const written = await writeCase(dir, c);
  const { arrays, entry: got } = await loadFixture(dir, 'tiny');
  t.deepEqual(got, written);
  t.deepEqual([...arrays.get('output')!.data], [1, 2]);
  // The manifest claims another shape: the loader says so.
  const m = await readManifest(dir);
  m.cases[0].arrays.output.shape = [2, 1];
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
  await t.throwsAsync(loadFixture(dir, 'tiny'), { name: 'FixtureError', message: /array output is <f4 \[1,2\], the manifest says <f4 \[2,1\]/ });
  // The file changed under the manifest.
  const { bytes } = encodeCase({ ...c, arrays: new Map([['output', { dtype: '<f4' as const, shape: [1, 2], data: Float32Array.from([1, 3]) }]]) });
  writeFileSync(join(dir, 'tiny.npz'), bytes);
  await t.throwsAsync(loadFixture(dir, 'tiny'), { name: 'FixtureError', message: /tiny\.npz: sha256 [0-9a-f]{64} does not match the manifest's/ });
  await t.throwsAsync(loadFixture(dir, 'nope'), { name: 'FixtureError', message: /no case named nope \(have: tiny\)/ });
});
