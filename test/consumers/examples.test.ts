// The "Loading fixtures elsewhere" examples: the numpy one runs (and can fail), and every
// example block in consumers/README.md (and docs/fixtures.md, once the section is there) is a
// verbatim excerpt of the file the tests run.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decodeNpz, encodeNpz, formatJson, readManifest, sha256 } from '../../src/index.ts';
import type { ManifestEntry } from '../../src/index.ts';

const run = promisify(execFile);
const DIR = 'fixtures';
const PY = 'consumers/examples/load_fixture.py';
const manifest = await readManifest(DIR);
/** The cases the numpy example recomputes: plain attention (no causal rule, cache or dropout). */
const plain = (e: ManifestEntry) => !e.config.causal && e.config.t_past === 0 && e.config.dropout_p === 0;

test('numpy example: every plain-attention fixture loads and recomputes within tolerance', async (t) => {
  const cases = manifest.cases.filter(plain);
  t.true(cases.length >= 3, `expected at least 3 plain-attention cases, got ${cases.map((c) => c.name).join(', ')}`);
  for (const e of cases) {
    const { stdout } = await run('python3', [PY, DIR, e.name]);
    t.regex(stdout, new RegExp(`^${e.name}: ${Object.keys(e.arrays).length} arrays, output \\[${e.arrays.output.shape.join(', ')}\\], .* within atol`), stdout);
  }
});

test('numpy example: fails on a copy whose output is moved by 10·atol, and on a wrong sha256', async (t) => {
  const e = manifest.cases.find(plain)!;
  const dir = await mkdtemp(join(tmpdir(), 'kvstream-consumers-'));
  try {
    const arrays = decodeNpz(await readFile(join(DIR, e.file)), e.file);
    const out = arrays.get('output')!.data as Float32Array;
    const i = Math.floor(out.length / 2);
    out[i] += 10 * e.tolerance.atol + e.tolerance.rtol * Math.abs(out[i]);
    const bytes = encodeNpz(arrays);
    await writeFile(join(dir, e.file), bytes);
    const entry = { ...e, sha256: sha256(bytes) };
    await writeFile(join(dir, 'manifest.json'), formatJson({ ...manifest, cases: [entry] }));
    const moved = await run('python3', [PY, dir, e.name]).then(() => null, (err: { code: number; stdout: string }) => err);
    t.truthy(moved, 'the example passed on a moved output');
    t.is(moved?.code, 1);
    t.regex(moved?.stdout ?? '', /OUTSIDE atol/);

    await writeFile(join(dir, 'manifest.json'), formatJson({ ...manifest, cases: [{ ...entry, sha256: e.sha256.replace(/^./, (c) => (c === '0' ? '1' : '0')) }] }));
    const bad = await run('python3', [PY, dir, e.name]).then(() => null, (err: { stderr: string }) => err);
    t.regex(bad?.stderr ?? 'passed', /AssertionError: .*sha256/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** `<!-- example: path -->` followed by a fenced block: [path, block text]. */
function exampleBlocks(markdown: string): [string, string][] {
  const re = /<!-- example: (\S+) -->\n```\w*\n([\s\S]*?)```/g;
  return [...markdown.matchAll(re)].map((m) => [m[1], m[2]]);
}

async function checkExcerpts(t: import('ava').ExecutionContext, doc: string) {
  const blocks = exampleBlocks(await readFile(doc, 'utf8'));
  t.deepEqual(blocks.map(([p]) => p).sort(), ['consumers/examples/load_fixture.py', 'consumers/examples/ort.ts', 'consumers/rust/examples/load_fixture.rs'], doc);
  for (const [path, block] of blocks) {
    const source = await readFile(path, 'utf8');
    t.true(source.includes(block), `${doc}: the example block for ${path} is not an excerpt of it (copy it again)`);
  }
}

test('consumers/README.md: each example block is an excerpt of the file the tests run', async (t) => {
  await checkExcerpts(t, 'consumers/README.md');
});

test('docs/fixtures.md: the "Loading fixtures elsewhere" examples are excerpts of tested files', async (t) => {
  const doc = await readFile('docs/fixtures.md', 'utf8');
  if (!doc.includes('## Loading fixtures elsewhere')) {
    t.log('docs/fixtures.md has no "Loading fixtures elsewhere" section yet; checked consumers/README.md only');
    t.pass();
    return;
  }
  await checkExcerpts(t, 'docs/fixtures.md');
});
