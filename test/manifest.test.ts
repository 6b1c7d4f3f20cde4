// manifest.json: sorted, idempotent, safe under concurrent writers and killed runs, paths
// confined; a case's .npz and entry committed as one unit; what killed writers leave is cleaned.
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeCase, loadFixture, upsertEntry, writeCase } from '../src/fixtures/store.ts';
import { fixturePath, readManifest } from '../src/fixtures/manifest.ts';
import { FixtureError } from '../src/errors.ts';
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
  t.throws(() => fixturePath(dir, { name: '../evil', file: '../evil.npz' }), { instanceOf: FixtureError, name: 'ManifestEntryError', message: /expected a case name of \[a-z0-9_-\]/ });
  t.throws(() => fixturePath(dir, { name: 'ok', file: '../ok.npz' }), { name: 'ManifestEntryError', message: /case ok names file "\.\.\/ok\.npz", expected "ok\.npz" inside the fixture folder/ });
  t.throws(() => fixturePath(dir, { name: 'ok', file: '/etc/passwd' }), { name: 'ManifestEntryError', message: /names file "\/etc\/passwd"/ });
  await t.throwsAsync(upsertEntry(dir, { ...entry('x'), name: 'A/B' }), { name: 'ManifestEntryError' });
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ format: 'kvstream-fixtures', version: 1, cases: [{ ...entry('x'), file: '../../x.npz' }] }));
  await t.throwsAsync(readManifest(dir), { name: 'ManifestEntryError', message: /case x names file "\.\.\/\.\.\/x\.npz"/ });
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
  await t.throwsAsync(loadFixture(dir, 'tiny'), { instanceOf: FixtureError, name: 'ArrayMismatchError', message: /array output is <f4 \[1,2\], the manifest says <f4 \[2,1\]/ });
  // The file changed under the manifest.
  const { bytes } = encodeCase({ ...c, arrays: new Map([['output', { dtype: '<f4' as const, shape: [1, 2], data: Float32Array.from([1, 3]) }]]) });
  writeFileSync(join(dir, 'tiny.npz'), bytes);
  await t.throwsAsync(loadFixture(dir, 'tiny'), { name: 'ChecksumError', message: /tiny\.npz: sha256 [0-9a-f]{64} does not match the manifest's/ });
  await t.throwsAsync(loadFixture(dir, 'nope'), { name: 'FixtureFileError', message: /no case named nope \(have: tiny\)/ });
});

const tiny = (name: string, value: number) => ({
  name, description: 'd', seed: 1, config: entry(name).config, tolerance: entry(name).tolerance,
  arrays: new Map([['output', { dtype: '<f4' as const, shape: [1, 2], data: Float32Array.from([value, 2]) }]]),
});
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

test('writeCase leaves no temporaries and the entry matches the file', async (t) => {
  const dir = tmp();
  await writeCase(dir, tiny('a', 1));
  await writeCase(dir, tiny('a', 3));
  t.deepEqual(readdirSync(dir).sort(), ['a.npz', 'manifest.json']);
  const m = await readManifest(dir);
  t.is(m.cases[0].sha256, sha(join(dir, 'a.npz')));
});

test('a commit killed between its two renames is finished by the next writer', async (t) => {
  const dir = tmp();
  await writeCase(dir, tiny('a', 1));
  // The state a kill leaves after the manifest rename (the commit) and before the .npz rename:
  // the manifest lists the new sha256, the new bytes wait in a staged temporary.
  const { bytes, entry: next } = encodeCase(tiny('a', 5));
  writeFileSync(join(dir, 'a.npz.tmp-999999-1'), bytes);
  const m = await readManifest(dir);
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ ...m, cases: [next] }));
  t.not(sha(join(dir, 'a.npz')), next.sha256);
  await writeCase(dir, tiny('b', 1)); // any writer recovers first, under the lock
  t.is(sha(join(dir, 'a.npz')), next.sha256);
  t.false(existsSync(join(dir, 'a.npz.tmp-999999-1')));
  t.deepEqual((await loadFixture(dir, 'a')).arrays.get('output')!.data, Float32Array.from([5, 2]));
});

test('stale temporaries of killed runs are removed, uncommitted ones never applied', async (t) => {
  const dir = tmp();
  await writeCase(dir, tiny('a', 1));
  const before = sha(join(dir, 'a.npz'));
  // write-file-atomic's names from earlier versions, and a staged file whose entry never committed.
  for (const f of ['manifest.json.12345', 'a.npz.2719', 'manifest.json.tmp-4242-7']) writeFileSync(join(dir, f), '{"half": ');
  writeFileSync(join(dir, 'a.npz.tmp-4242-8'), encodeCase(tiny('a', 9)).bytes);
  writeFileSync(join(dir, 'notes.txt'), 'not ours');
  await upsertEntry(dir, entry('z'));
  t.deepEqual(readdirSync(dir).sort(), ['a.npz', 'manifest.json', 'notes.txt']);
  t.is(sha(join(dir, 'a.npz')), before);
});
