// The CLI end to end in temporary folders: generation, overrides that never replace a case,
// verify's report for good, tampered and hostile entries, exit codes.
import test from 'ava';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, tmp } from './helpers/cli.ts';

const manifestOf = (dir: string) => JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));

test('run, rerun with identical bytes, verify', async (t) => {
  const out = tmp();
  const first = await cli(['streaming', 'decode', '--out', out]);
  t.is(first.code, 0, first.stderr);
  t.regex(first.stdout, /wrote .*streaming\.npz {2}seed 1008 {2}chunks \[5,1,7,3,4\]/);
  const bytes = readFileSync(join(out, 'streaming.npz'));
  const manifest = readFileSync(join(out, 'manifest.json'), 'utf8');
  t.is((await cli(['streaming', 'decode', '--out', out])).code, 0);
  t.deepEqual(readFileSync(join(out, 'streaming.npz')), bytes, 'same inputs, same bytes');
  t.is(readFileSync(join(out, 'manifest.json'), 'utf8'), manifest, 'a rerun replaces its entry');
  const v = await cli(['verify', out, '--rerun']);
  t.is(v.code, 0, v.stdout);
  t.regex(v.stdout, /^PASS {2}decode\n/m);
  t.regex(v.stdout, /^ {6}partial_outputs +chunked +max err +\S+ +bound \S+ +ok$/m);
  t.regex(v.stdout, /^ {6}output +rerun +max err/m);
  t.regex(v.stdout, /2 passed, 0 failed\n$/);
});

test('--seed and --chunk write under a derived name and never replace the case', async (t) => {
  const out = tmp();
  t.is((await cli(['streaming', '--out', out])).code, 0);
  const committed = readFileSync(join(out, 'streaming.npz'));
  const r = await cli(['streaming', 'with_caching', '--out', out, '--seed', '5', '--chunk', '6']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /note: streaming with --seed 5 --chunk 6 is written as streaming-seed5-chunk6; streaming is left as it is/);
  t.regex(r.stderr, /warning: --chunk: case with_caching has no chunks to re-split; ignored/);
  t.regex(r.stdout, /wrote .*streaming-seed5-chunk6\.npz/);
  t.regex(r.stdout, /wrote .*with_caching-seed5\.npz/);
  t.deepEqual(readFileSync(join(out, 'streaming.npz')), committed);
  const cases = manifestOf(out).cases;
  t.deepEqual(cases.map((c: { name: string }) => c.name), ['streaming', 'streaming-seed5-chunk6', 'with_caching-seed5']);
  t.is(cases[1].seed, 5);
  t.deepEqual(cases[1].config.chunk_sizes, [6, 6, 6, 2]);
  t.deepEqual(cases[1].arrays.partial_outputs.shape, [4, 2, 3, 32]);
  const v = await cli(['verify', out, '--seed', '3', '--rerun']);
  t.is(v.code, 0, v.stdout);
  t.regex(v.stderr, /warning: verify ignores --seed/);
  t.regex(v.stdout, /3 passed, 0 failed/);
  // Into the committed fixtures/ (no --out): refused before anything is written.
  const refused = await cli(['chunked_prefill', '--chunk', '5']);
  t.is(refused.code, 2);
  t.regex(refused.stderr, /--seed\/--chunk make a variant of chunked_prefill; fixtures\/ keeps the committed cases only: pass --out DIR \(the variant is written there as chunked_prefill-chunk5\)/);
  const bad = await cli(['streaming', '--out', out, '--chunk', '0']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--chunk expects an integer >= 1, got "0"/);
});

test('verify reports each bad entry by name and class, checks the rest, exits 1', async (t) => {
  const out = tmp();
  t.is((await cli(['with_caching', 'basic_self_attn_small', 'cross_attention', '--out', out])).code, 0);
  const m = manifestOf(out);
  const [basic, cross, good] = m.cases;
  const copy = (from: string, to: string) => copyFileSync(join(out, `${from}.npz`), join(out, `${to}.npz`));
  copy('basic_self_attn_small', 'bad_sha');
  copy('basic_self_attn_small', 'bad_shape');
  copy('basic_self_attn_small', 'missing_array');
  copy('cross_attention', 'wrong_value');
  copy('basic_self_attn_small', 'bad_config');
  // wrong_value: intact file and sha256, but its entry states another scale: only recomputation sees it.
  const hostile = [
    { ...basic, name: 'Bad Name!', file: 'Bad Name!.npz' },
    { ...basic, name: 'escape', file: '../escape.npz' },
    { ...basic, name: 'missing_file', file: 'missing_file.npz' },
    { ...basic, name: 'bad_sha', file: 'bad_sha.npz', sha256: '0'.repeat(64) },
    { ...basic, name: 'bad_shape', file: 'bad_shape.npz', arrays: { ...basic.arrays, output: { shape: [2, 6, 31], dtype: '<f4' } } },
    { ...basic, name: 'missing_array', file: 'missing_array.npz', arrays: { ...basic.arrays, lse_extra: { shape: [1], dtype: '<f4' } } },
    { ...cross, name: 'wrong_value', file: 'wrong_value.npz', config: { ...cross.config, scale: cross.config.scale * 1.5 } },
    { ...basic, name: 'bad_config', file: 'bad_config.npz', config: { ...basic.config, num_heads: '4' } },
    null,
  ];
  writeFileSync(join(out, 'manifest.json'), JSON.stringify({ ...m, cases: [...hostile, basic, cross, good] }));
  const v = await cli(['verify', out]);
  t.is(v.code, 1);
  const line = (name: string) => v.stdout.split('\n').find((l) => l.startsWith(`FAIL  ${name}`) || l.startsWith(`PASS  ${name}`)) ?? '';
  t.regex(line('Bad Name!'), /ManifestEntryError: .*expected a case name/);
  t.regex(line('escape'), /ManifestEntryError: .*names file "\.\.\/escape\.npz"/);
  t.regex(line('missing_file'), /FixtureFileError: .*missing_file\.npz: no such file/);
  t.regex(line('bad_sha'), /ChecksumError: .*sha256 [0-9a-f]{64} does not match/);
  t.regex(line('bad_shape'), /ArrayMismatchError: .*array output is <f4 \[2,6,32\], the manifest says <f4 \[2,6,31\]/);
  t.regex(line('missing_array'), /ArrayMismatchError: .*array lse_extra listed in the manifest is missing/);
  t.regex(line('wrong_value'), /ToleranceError: output \(one-pass\): error \S+ at \[\d+,\d+,\d+\] is \S+× its bound/);
  t.regex(line('bad_config'), /ManifestEntryError: case bad_config: expected config\.num_heads to be an integer >= 1, got "4"/);
  t.regex(line('null'), /ManifestEntryError: expected a case object, got null/);
  for (const name of ['basic_self_attn_small', 'cross_attention', 'with_caching']) t.regex(line(name), /^PASS/, name);
  t.regex(v.stdout, /3 passed, 9 failed\n$/);
  const json = await cli(['verify', out, '--json']);
  t.is(json.code, 1);
  const report = JSON.parse(json.stdout);
  t.is(report.failed, 9);
  t.deepEqual(report.cases.map((c: { error?: { class: string } }) => c.error?.class ?? 'PASS'), [
    'ManifestEntryError', 'ManifestEntryError', 'FixtureFileError', 'ChecksumError', 'ArrayMismatchError', 'ArrayMismatchError', 'ToleranceError', 'ManifestEntryError', 'ManifestEntryError', 'PASS', 'PASS', 'PASS',
  ]);
  const failing = report.cases[6].checks.find((c: { array: string; mode: string }) => c.array === 'output' && c.mode === 'one-pass');
  t.false(failing.pass);
  t.true(failing.maxError > failing.bound);
});

test('unknown names, --list, missing folders, exit codes', async (t) => {
  const r = await cli(['streamin']);
  t.is(r.code, 2);
  t.regex(r.stderr, /Unknown pipeline streamin \(did you mean streaming\?\)\. Known: basic_self_attn_small, chunked_prefill, cross_attention, decode, different_dk_dv, kv_sharing, kv_sharing_multi_query, large_batch_dropout, streaming, streaming_prefix_cache, use_cached_kv, with_caching/);
  const list = await cli(['--list']);
  t.is(list.code, 0);
  t.is(list.stdout.trim().split('\n').length, 12);
  t.is((await cli([])).code, 2);
  t.is((await cli(['--bogus'])).code, 2);
  const missing = await cli(['verify', '/no/such/dir']);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /FixtureFileError: \/no\/such\/dir: no such folder/);
  const bare = tmp();
  const noManifest = await cli(['verify', bare]);
  t.is(noManifest.code, 1);
  t.regex(noManifest.stderr, /manifest\.json: no such file/);
  mkdirSync(join(bare, 'x'));
  writeFileSync(join(bare, 'x', 'manifest.json'), '{"format": "kvstream-fixtures", "version": 1, "cases": []}');
  const empty = await cli(['verify', join(bare, 'x')]);
  t.is(empty.code, 1);
  t.regex(empty.stderr, /lists no cases/);
});

// Bits may differ on another CPU or BLAS build with the fast kernels that verify uses: the
// committed fixtures are checked within tolerance, recomputed and re-run from their seeds.
test('verify passes on the committed fixtures', async (t) => {
  const v = await cli(['verify', 'fixtures', '--rerun']);
  t.is(v.code, 0, v.stdout);
  t.regex(v.stdout, /12 passed, 0 failed/);
});
