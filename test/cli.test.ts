// The CLI end to end in temporary folders: generation, overrides that never replace a case,
// verify's report for good, tampered and hostile entries, exit codes; your own pipelines (run
// FILE); progress, --json, warnings and errors that say what to do.
import test from 'ava';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { lastValueFrom } from 'rxjs';
import { describeConfig, editDistance, findTsx, loadPipelines, Progress, suggest, tsxMissing, usage } from '../src/cli.ts';
import { BUILTIN_CASES } from '../src/fixtures/cases.ts';
import { buildCase } from '../src/fixtures/recipes.ts';
import { cli, tmp } from './helpers/cli.ts';
import type { CliResult } from './helpers/cli.ts';

/** `node --import=tsx ARGS` (a script standing in for the package's bin). */
function node(args: string[]): Promise<CliResult> {
  return new Promise((done) => {
    const child = spawn(process.execPath, ['--import=tsx', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => done({ code, stdout, stderr }));  // after stdout has been read
  });
}

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
  t.true(r.stderr.includes(`Unknown pipeline streamin (did you mean streaming?). Known: ${BUILTIN_CASES.map((c) => c.name).sort().join(', ')}`), r.stderr);
  const list = await cli(['--list']);
  t.is(list.code, 0);
  t.is(list.stdout.trim().split('\n').length, BUILTIN_CASES.length);
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
  t.true(v.stdout.includes(`${BUILTIN_CASES.length} passed, 0 failed`), v.stdout.slice(-300));
});

// ---------------------------------------------------------------------------------------------
// Your own pipelines: `run FILE`.

const ROOT = resolve(import.meta.dirname, '..');

test('run examples/my-case.mjs writes its cases, which verify; the summary shows config, chunks, error vs one pass', async (t) => {
  const out = tmp();
  const r = await cli(['run', 'examples/my-case.mjs', '--out', out]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^wrote .*gqa_stream\.npz {2}seed 7 {2}chunks \[8,8,16\] {2}\d+ arrays {2}sha256 [0-9a-f]{16} {2}\d+(\.\d)? m?s$/m);
  t.regex(r.stdout, /^ {6}streaming {2}B 1 {2}T 4 {2}S 48 \(16 cached \+ 32\) {2}d_model 64 {2}heads 8 \(kv 2\) {2}d_k 8 {2}causal at 44$/m);
  t.regex(r.stdout, /^ {6}chunked vs one pass: max err output \S+ {2}lse \S+ {2}\(tolerance atol 1\.0e-5 rtol 1\.0e-4\)$/m);
  t.regex(r.stdout, /^wrote .*mqa_decode\.npz {2}seed 8 {2}chunks \[1,1,1,1,1,1,1,1\]/m);
  t.notRegex(r.stdout + r.stderr, /OUTSIDE TOLERANCE/);
  t.deepEqual(manifestOf(out).cases.map((c: { name: string }) => c.name), ['gqa_stream', 'mqa_decode']);
  // The written cases stand on their own: verify recomputes them from what they store.
  const v = await cli(['verify', out]);
  t.is(v.code, 0, v.stdout);
  t.regex(v.stdout, /^PASS {2}gqa_stream\n/m);
  t.regex(v.stdout, /2 passed, 0 failed\n$/);
  // --json: the same summary as data; chunked vs one pass within the case's own tolerance.
  const j = await cli(['run', 'examples/my-case.mjs', '--out', out, '--json', '--chunk', '5']);
  t.is(j.code, 0, j.stderr);
  t.regex(j.stderr, /warning: --chunk: case mqa_decode has no chunks to re-split; ignored/);
  const report = JSON.parse(j.stdout) as { dir: string; cases: { name: string; chunks: number[]; vsOnePass: { output: number; lse: number; pass: boolean }; tolerance: { atol: number }; config: { t_past: number }; ms: number }[] };
  t.is(report.dir, out);
  t.deepEqual(report.cases.map((c) => c.name), ['gqa_stream-chunk5', 'mqa_decode']);
  t.deepEqual(report.cases[0].chunks, [5, 5, 5, 5, 5, 5, 2]);
  t.is(report.cases[0].config.t_past, 16);
  for (const c of report.cases) {
    // pass: output within atol + rtol·|one pass| everywhere, lse within atol (its own bound).
    t.true(c.vsOnePass.pass && c.vsOnePass.lse <= c.tolerance.atol && Number.isFinite(c.vsOnePass.output), `${c.name}: ${JSON.stringify(c.vsOnePass)}`);
    t.true(c.ms > 0);
  }
  // --rerun re-runs your pipelines too when --from names their file (variants by base name).
  const rerun = await cli(['verify', out, '--rerun', '--from', 'examples/my-case.mjs']);
  t.is(rerun.code, 0, rerun.stdout);
  t.regex(rerun.stdout, /^PASS {2}gqa_stream-chunk5\n(?: {6}.*\n)*? {6}output +rerun +max err/m);
  t.regex(rerun.stdout, /^PASS {2}mqa_decode\n(?: {6}.*\n)*? {6}inputs +rerun +max err +0 /m);
  t.notRegex(rerun.stdout, /no built-in pipeline/);
  t.regex(rerun.stdout, /3 passed, 0 failed\n$/);
  const builtinOnly = await cli(['verify', out, '--rerun']);
  t.regex(builtinOnly.stdout, /note: rerun: no built-in pipeline of this name \(your own: --from FILE\)/);
});

test('run loads .ts pipeline files (tsx present) and refuses files that declare no pipeline, saying what to write', async (t) => {
  const dir = tmp('kvstream-run-');
  const out = join(dir, 'out');
  writeFileSync(join(dir, 'typed.ts'), `import { definePipeline } from 'kvstream';
import type { PipelineSpec } from 'kvstream';
const spec: PipelineSpec = definePipeline({ name: 'typed', description: 'from TypeScript', seed: 3, recipe: 'forward', weights: true,
  config: { batch: 1, d_model: 16, num_heads: 2, t_q: 3, t_kv: 5 } });
export default spec;
`);
  // Outside an ESM package tsx compiles .ts to CommonJS: the message says what to change.
  const cjs = await cli(['run', join(dir, 'typed.ts'), '--out', out]);
  t.is(cjs.code, 2, cjs.stderr);
  t.regex(cjs.stderr, /This \.ts file was loaded as CommonJS: name it \.mts, or add "type": "module" to the package\.json of its folder/);
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
  const ok = await cli(['run', join(dir, 'typed.ts'), '--out', out]);
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /wrote .*typed\.npz {2}seed 3 {2}\d+ arrays/);
  t.regex(ok.stdout, /^ {6}one pass \(no chunks\)$/m);
  for (const [args, message] of [
    [['run', join(dir, 'typed.ts'), join(dir, 'typed.ts'), '--out', out], /two pipelines are named typed/],
    [['run', join(dir, 'typed.ts')], /run writes into fixtures\/, which keeps the committed cases only in this repo: pass --out DIR/],
    [['run', '--out', out], /run needs a pipeline file, e\.g\. `npm run pipeline -- run examples\/my-case\.mjs --out my_fixtures`/],
  ] as [string[], RegExp][]) {
    const r = await cli(args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, message);
    t.regex(r.stderr, /`npm run pipeline -- --help` shows the commands and options/);
  }
  // Files that declare no pipeline (in this process: the same loader as the CLI's).
  const bad = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const refused: [string, RegExp][] = [
    [join(dir, 'nope.mjs'), /run: .*nope\.mjs: no such file; name a module whose default export is definePipeline/],
    [bad('none.mjs', 'export const x = 1;\n'), /none\.mjs has no default export: end it with `export default definePipeline\(/],
    [bad('recipe.mjs', "export default { name: 'r', description: '', seed: 1, recipe: 'stream', config: {} };\n"), /recipe\.mjs default export \(r\): expected recipe 'forward', 'streaming' or 'prefill', got "stream"/],
    [bad('arr.mjs', 'export default [1];\n'), /arr\.mjs default export \[0\]: expected a PipelineSpec/],
    [bad('empty.mjs', 'export default [];\n'), /empty\.mjs: the default export is an empty array/],
    [bad('throws.mjs', "import { definePipeline } from 'kvstream';\nexport default definePipeline({ name: 'x', description: '', seed: 1, recipe: 'streaming', config: { batch: 1, d_model: 8, num_heads: 2, t_q: 1, t_kv: 4 } });\n"),
      /run: .*throws\.mjs did not load: ArrayMismatchError: definePipeline x: recipe streaming needs config\.chunk_sizes/],
    [bad('chunks.mjs', "export default { name: 'c', description: '', seed: 1, recipe: 'streaming', config: { batch: 1, d_model: 8, num_heads: 2, t_q: 1, t_kv: 4, chunk_sizes: [3] } };\n"),
      /chunks\.mjs default export: Expected chunk_sizes to sum to S=4, got 3/],
  ];
  for (const [file, message] of refused) {
    const e = await t.throwsAsync(loadPipelines(file), undefined, file);
    t.is(e?.name, 'UsageError', file);
    t.regex(e?.message ?? '', message);
  }
  const [mine] = await loadPipelines(bad('plain.mjs', "export default { name: 'p', description: 'd', seed: 2, recipe: 'forward', config: { batch: 1, d_model: 8, num_heads: 2, t_q: 2, t_kv: 3 } };\n"));
  t.is(mine.config.d_k, 4, 'a plain declaration gets definePipeline\'s defaults');
  t.deepEqual(manifestOf(out).cases.map((c: { name: string }) => c.name), ['typed'], 'nothing else was written');
});

test('tsx is found from the project (else the message says how to get it)', (t) => {
  const api = findTsx([tmp(), ROOT]);
  t.truthy(api && existsSync(api), String(api));
  t.is(findTsx([tmp()]), null, 'no tsx above a bare temporary folder');
  t.regex(tsxMissing('my-case.ts'), /my-case\.ts is TypeScript, which Node v\d+.* does not run by itself\. Install tsx in your project \(npm install --save-dev tsx\)/);
});

// ---------------------------------------------------------------------------------------------
// The CLI a person enjoys: progress, --json, warnings, errors that say what to do.

/** A fake terminal: what was written, a settable clock. */
function fakeTerm(columns = 60) {
  const out = { text: '', isTTY: true, columns, write(s: string) { this.text += s; return true; } };
  let now = 0;
  return { out, clock: () => now, advance: (ms: number) => (now += ms) };
}

test('Progress: a bar redrawn in place on a terminal, throttled; plain lines or nothing otherwise', (t) => {
  const term = fakeTerm(60);
  const bar = new Progress(term.out, 'bar', 4, term.clock);
  bar.start(0, 'streaming');
  t.is(term.out.text, '\r\x1b[2K[........................] 1/4 streaming');
  term.advance(10);
  bar.chunk(1, 5);
  t.is(term.out.text.split('\r').length, 2, 'a chunk within 50 ms of the last draw is not drawn');
  term.advance(60);
  bar.chunk(2, 5);
  t.true(term.out.text.endsWith('\r\x1b[2K[##......................] 1/4 streaming  chunk 2/5'), JSON.stringify(term.out.text));
  bar.start(3, 'a_case_with_a_rather_long_name_that_does_not_fit');
  const last = term.out.text.split('\r\x1b[2K').pop()!;
  t.is(last.length, 59, 'cut to the terminal width - 1');
  t.true(last.startsWith('[##################......] 4/4 a_case'));
  bar.clear();
  t.true(term.out.text.endsWith('\r\x1b[2K'));
  const sizeless = fakeTerm(0);
  new Progress(sizeless.out, 'bar', 1, sizeless.clock).start(0, 'decode');
  t.is(sizeless.out.text, '\r\x1b[2K[........................] 1/1 decode', 'a terminal without a size counts as 80 columns');
  bar.clear();
  t.true(term.out.text.endsWith('\r\x1b[2K') && !term.out.text.endsWith('\r\x1b[2K\r\x1b[2K'), 'a second clear writes nothing');

  const plain = fakeTerm();
  const lines = new Progress(plain.out, 'lines', 1, plain.clock, 2000);
  lines.start(0, 'long');
  for (let i = 1; i <= 100; i++) {
    plain.advance(100);
    lines.chunk(i, 100);
  }
  t.is(plain.out.text, 'long: chunk 20/100\nlong: chunk 40/100\nlong: chunk 60/100\nlong: chunk 80/100\nlong: chunk 100/100\n');
  const off = fakeTerm();
  const none = new Progress(off.out, 'off', 2, off.clock);
  none.start(0, 'x');
  off.advance(5000);
  none.chunk(1, 2);
  none.clear();
  t.is(off.out.text, '');
});

test('buildCase reports each chunk (the progress of a long stream)', async (t) => {
  const seen: string[] = [];
  const spec = BUILTIN_CASES.find((c) => c.name === 'streaming')!;
  await lastValueFrom(buildCase(spec, { onChunk: (d, n) => seen.push(`${d}/${n}`) }));
  t.deepEqual(seen, ['1/5', '2/5', '3/5', '4/5', '5/5']);
  const seen2: string[] = [];
  await lastValueFrom(buildCase(BUILTIN_CASES.find((c) => c.name === 'chunked_prefill')!, { chunk: 12, onChunk: (d, n) => seen2.push(`${d}/${n}`) }));
  t.deepEqual(seen2, ['1/2', '2/2']);
});

test('progress on stderr: plain without a terminal, the bar with --progress; --json; warnings for ignored flags', async (t) => {
  const out = tmp();
  const plain = await cli(['decode', 'kv_sharing', '--out', out]);
  t.is(plain.code, 0, plain.stderr);
  t.notRegex(plain.stderr, /\r/, 'no carriage returns when stderr is not a terminal');
  const forced = await cli(['decode', 'kv_sharing', '--out', out, '--progress']);
  t.is(forced.code, 0, forced.stderr);
  t.regex(forced.stderr, /\r\x1b\[2K\[\.{24}\] 1\/2 decode/);
  t.regex(forced.stderr, /\r\x1b\[2K\[#{12}\.{12}\] 2\/2 kv_sharing/);
  t.true(forced.stderr.endsWith('\r\x1b[2K'), 'the bar is erased at the end');
  const v = await cli(['verify', out, '--progress', '--json']);
  t.is(v.code, 0, v.stdout);
  t.regex(v.stderr, /\] 2\/2 kv_sharing/);
  t.is(JSON.parse(v.stdout).passed, 2);
  t.regex((await cli(['verify', out, '--progress', '--no-progress'])).stderr, /--progress and --no-progress contradict each other/);
  const list = await cli(['--list', '--json', 'streaming', '--seed', '3']);
  t.is(list.code, 0);
  t.regex(list.stderr, /warning: --list ignores streaming --seed/);
  const cases = JSON.parse(list.stdout) as { name: string; recipe: string; config: { chunk_sizes: number[] | null } }[];
  t.is(cases.length, BUILTIN_CASES.length);
  t.deepEqual(cases.find((c) => c.name === 'streaming')!.config.chunk_sizes, [5, 1, 7, 3, 4]);
  const gen = await cli(['basic_self_attn_small', '--out', out, '--json', '--rerun']);
  t.is(gen.code, 0, gen.stderr);
  t.regex(gen.stderr, /warning: --rerun applies to verify only; ignored/);
  const g = JSON.parse(gen.stdout);
  t.is(g.cases[0].name, 'basic_self_attn_small');
  t.is(g.cases[0].vsOnePass, null, 'a one-pass case has no chunked result');
  t.is(g.cases[0].chunks, null);
  const both = await cli(['verify', out, '--out', '/elsewhere']);
  t.is(both.code, 0);
  t.regex(both.stderr, /warning: verify ignores --out \/elsewhere: it checks the folder named/);
});

test('errors say what to do: suggestions, run for files, missing folders; the usage names the command', async (t) => {
  const typo = await cli(['--ouT', 'x', 'streaming']);
  t.is(typo.code, 2);
  t.regex(typo.stderr, /^error: unknown option --ouT \(did you mean --out\?\)/);
  const names = await cli(['decod', 'streaming_prefix', 'zzz', 'my-case.mjs']);
  t.is(names.code, 2);
  t.regex(names.stderr, /Unknown pipeline decod \(did you mean decode\?\)/);
  t.regex(names.stderr, /Unknown pipeline streaming_prefix \(did you mean streaming_prefix_cache\?\)/);
  t.regex(names.stderr, /Unknown pipeline zzz\n/);
  t.regex(names.stderr, /Unknown pipeline my-case\.mjs: to run a pipeline file, use `npm run pipeline -- run my-case\.mjs`/);
  const missing = await cli(['verify', '/no/such/dir']);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /no such folder\. Write cases there with `npm run pipeline -- streaming --out \/no\/such\/dir`/);
  t.is(suggest('stremaing', ['streaming', 'decode']), 'streaming');
  t.is(suggest('kv', ['kv_sharing', 'kv_sharing_multi_query']), undefined, 'too short and ambiguous');
  t.is(suggest('large', ['large_batch_dropout', 'decode']), 'large_batch_dropout');
  t.is(editDistance('kitten', 'sitting'), 3);
  // As the package's bin: `kvstream ...` in the usage and hints.
  const dir = tmp();
  writeFileSync(join(dir, 'bin.mjs'), `import { run } from ${JSON.stringify(pathToFileURL(join(ROOT, 'src/cli.ts')).href)};\nrun({ prog: 'kvstream' });\n`);
  const help = await node([join(dir, 'bin.mjs'), '--help']);
  t.is(help.code, 0, help.stderr);
  t.regex(help.stdout, /^ {2}kvstream run FILE\.\.\. \[--out DIR\]/m);
  t.regex(help.stdout, /Exit status: 0 done, every case passed; 1 a case failed/);
  t.notRegex(help.stdout, /npm run pipeline/);
  const unknown = await node([join(dir, 'bin.mjs'), 'decod']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /\(`kvstream --list` describes them\)\n\(`kvstream --help` shows the commands and options\)/);
  const repoHelp = await cli(['--help']);
  t.regex(repoHelp.stdout, /^ {2}npm run pipeline -- verify \[DIR\] \[--rerun \[--from FILE\]\]/m);
  t.is(describeConfig(BUILTIN_CASES.find((c) => c.name === 'cross_attention')!.config), 'B 2  T 5  S 9  d_model 32  d_kv_in 48  d_out 40  heads 4  d_k 8');
  t.regex(usage('kvstream'), /^ {2}kvstream --all /m);
});
