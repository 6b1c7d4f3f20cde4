// The package as a user gets it: `npm pack` (prepack compiles dist/), the tarball installed into
// an empty temporary project (its `install` script builds the addon there), then a plain .mjs
// script, a strict nodenext type-check and the `kvstream` command, all from that project.
// Slow (the addon compiles, ~1-2 min on 2 cores) and it fetches the runtime dependencies from the
// npm cache or registry, so it runs under `npm run test:package` (KVSTREAM_PACKAGE_TEST=1).
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '..');
const enabled = process.env.KVSTREAM_PACKAGE_TEST === '1';

interface Run { code: number; stdout: string; stderr: string }

/** Runs `cmd args` in `cwd`; resolves with the exit code instead of throwing. */
async function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  try {
    const { stdout, stderr } = await exec(cmd, args, { cwd, env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string; message: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? err.message };
  }
}

const show = (r: Run) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** npm warnings other than the install-script review notice a native dependency always gets. */
const npmWarnings = (text: string) => text.split('\n').filter((l) => /^npm warn/i.test(l) && !/install-scripts/.test(l));

// A user's script: attention, then a streaming pipeline checked against the one-pass module.
// Chunking only reorders the online-softmax fold in float32, so the two agree to a few units in
// the last place of the largest output: bound 1e-5 · (1 + max |y|).
const RUN_MJS = `
import { attention, attendChunk, MultiHeadAttention, projectKv, Rng, splitTokens, decodeNpy, encodeNpy } from 'kvstream';
import { lastValueFrom } from 'rxjs';

const rng = new Rng(3);
const q = rng.normalTensor([1, 4, 3, 8]), k = rng.normalTensor([1, 2, 7, 8]), v = rng.normalTensor([1, 2, 7, 6]);
const a = attention(q, k, v, { causal: true, qOffset: 4 });
if (a.output.shape.join() !== '1,4,3,6') throw new Error('attention output shape ' + a.output.shape);

const mha = MultiHeadAttention.random({ dModel: 16, numHeads: 4, numKvHeads: 2 }, 5);
const xQ = rng.normalTensor([1, 3, 16]), xKv = rng.normalTensor([1, 9, 16]);
const last = await lastValueFrom(splitTokens(xKv, [4, 1, 4]).pipe(projectKv(mha), attendChunk(mha, xQ)));
const full = mha.forward(xQ, xKv).output;
let worst = 0, at = -1, big = 0;
for (let i = 0; i < full.data.length; i++) {
  const d = Math.abs(last.output.data[i] - full.data[i]);
  if (d > worst) (worst = d), (at = i);
  big = Math.max(big, Math.abs(full.data[i]));
}
const bound = 1e-5 * (1 + big);
if (!(worst <= bound)) throw new Error('pipeline vs one pass: max diff ' + worst + ' at flat ' + at + ' > ' + bound);
const back = decodeNpy(encodeNpy({ data: Float32Array.of(1, 2), shape: [2] }), 'x.npy');
console.log('ok', last.end, full.shape.join('x'), worst.toExponential(1), back.data.join());
`;

// Without an addon, reading and writing arrays works and the first kernel call is a NativeError.
const LAZY_MJS = `
import { attention, decodeNpy, encodeNpy, NativeError, Rng } from 'kvstream';
const a = decodeNpy(encodeNpy({ data: Float32Array.of(4, 5, 6), shape: [3] }), 'a.npy');
if (a.data.join() !== '4,5,6') throw new Error('npy round trip ' + a.data);
const rng = new Rng(1);
try {
  attention(rng.normalTensor([1, 1, 1, 4]), rng.normalTensor([1, 1, 2, 4]), rng.normalTensor([1, 1, 2, 4]));
  throw new Error('attention ran without an addon');
} catch (e) {
  if (!(e instanceof NativeError)) throw e;
  console.log('lazy ok:', e.message.split('\\n')[0]);
}
`;

// Types from the package under --strict: a real signature (the @ts-expect-error lines fail the
// check if the package resolved to \`any\`) and the exported case API.
const CHECK_TS = `
import { attention, buildCase, MultiHeadAttention, Rng, splitTokens, verifyCase } from 'kvstream';
import type { PipelineSpec, Tensor, TokenChunk, KvstreamError } from 'kvstream';
import type { Observable } from 'rxjs';

const rng: Rng = new Rng(1);
const q: Tensor = rng.normalTensor([1, 1, 2, 4]);
const out: Tensor = attention(q, q, q).output;
const chunks: Observable<TokenChunk> = splitTokens(rng.normalTensor([1, 4, 8]), 2);
const mha: MultiHeadAttention = MultiHeadAttention.random({ dModel: 8, numHeads: 2 }, 1);
// @ts-expect-error: a number is not a Tensor
attention(1, q, q);
// @ts-expect-error: no such option
attention(q, q, q, { nonsense: true });
export const used: [Tensor, Observable<TokenChunk>, MultiHeadAttention, typeof buildCase, typeof verifyCase, PipelineSpec | undefined, KvstreamError | undefined] =
  [out, chunks, mha, buildCase, verifyCase, undefined, undefined];
`;

const TSCONFIG = {
  compilerOptions: { strict: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', noEmit: true, types: ['node'] },
  files: ['check.ts'],
};

// Skipped (and counted as skipped) in `npm test`; `npm run test:package` runs it.
(enabled ? test : test.skip)('npm pack → install into an empty project → import, type-check and the kvstream command (KVSTREAM_PACKAGE_TEST=1)', async (t) => {
  const work = await mkdtemp(join(tmpdir(), 'kvstream-pkg-'));
  try {
    const pack = await run('npm', ['pack', '--pack-destination', work, '--json'], ROOT);
    t.is(pack.code, 0, show(pack));
    t.deepEqual(npmWarnings(pack.stderr + pack.stdout), [], show(pack));
    const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    const files = info.files.map((f) => f.path);
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli.js', 'bin/kvstream.mjs', 'binding.gyp', 'native/binding.cc', 'native/blas.cjs']) {
      t.true(files.includes(f), `the tarball lacks ${f}`);
    }
    const strays = files.filter((f) => /^(src|test|fixtures|bench|build|node_modules)\//.test(f) || f.endsWith('.ts') && !f.endsWith('.d.ts'));
    t.deepEqual(strays, [], 'the tarball ships only dist/, bin/, native/, binding.gyp, docs/, examples/*.mjs, README and package.json');

    const proj = join(work, 'consumer');
    await mkdir(proj);
    await writeFile(join(proj, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }, null, 2));
    const install = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, info.filename)], proj);
    t.is(install.code, 0, show(install));
    t.deepEqual(npmWarnings(install.stderr + install.stdout), [], show(install));
    t.true(existsSync(join(proj, 'node_modules/kvstream/build/Release/kvstream.node')), 'the install script built the addon');
    t.false(existsSync(join(proj, 'node_modules/tsx')) || existsSync(join(proj, 'node_modules/typescript')), 'tsx and typescript are dev-only');

    await writeFile(join(proj, 'run.mjs'), RUN_MJS);
    const r = await run(process.execPath, ['run.mjs'], proj);
    t.is(r.code, 0, show(r));
    t.regex(r.stdout, /^ok 9 1x3x16 /, show(r));

    await writeFile(join(proj, 'lazy.mjs'), LAZY_MJS);
    const lazy = await run(process.execPath, ['lazy.mjs'], proj, { KVSTREAM_ADDON: join(work, 'no-such-addon.node') });
    t.is(lazy.code, 0, show(lazy));
    t.regex(lazy.stdout, /^lazy ok: /, show(lazy));

    // The user's own TypeScript and @types/node (linked from this repo: only what a user brings).
    await mkdir(join(proj, 'node_modules/@types'), { recursive: true });
    await symlink(join(ROOT, 'node_modules/@types/node'), join(proj, 'node_modules/@types/node'), 'dir');
    await writeFile(join(proj, 'check.ts'), CHECK_TS);
    await writeFile(join(proj, 'tsconfig.json'), JSON.stringify(TSCONFIG, null, 2));
    const tsc = await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], proj);
    t.is(tsc.code, 0, show(tsc));

    const list = await run('npx', ['--no-install', 'kvstream', '--list'], proj);
    t.is(list.code, 0, show(list));
    t.regex(list.stdout, /^streaming\s/m, show(list));
    const gen = await run('npx', ['--no-install', 'kvstream', 'streaming', '--out', 'd'], proj);
    t.is(gen.code, 0, show(gen));
    const manifest = JSON.parse(await readFile(join(proj, 'd/manifest.json'), 'utf8')) as { cases: { name: string }[] };
    t.deepEqual(manifest.cases.map((c) => c.name), ['streaming'], show(gen));
    t.true(existsSync(join(proj, 'd/streaming.npz')), show(gen));
    const verify = await run('npx', ['--no-install', 'kvstream', 'verify', 'd'], proj);
    t.is(verify.code, 0, show(verify));
    t.regex(verify.stdout, /PASS\s+streaming/, show(verify));
    t.deepEqual(npmWarnings(list.stderr + gen.stderr + verify.stderr), [], 'npx printed npm warnings');
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});
