// The TypeScript examples in examples/ run to completion and print what the README says.
import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

test('examples/model-cache.ts: every streamed cache matches its one pass (fp32 layouts at rounding level)', async (t) => {
  const { stdout } = await run(process.execPath, ['--import=tsx', 'examples/model-cache.ts'], { timeout: 120_000 });
  const diffs = Object.fromEntries([...stdout.matchAll(/^(.+?)\s+max \|streamed - one pass\| = (\S+)$/gm)].map((m) => [m[1], Number(m[2])]));
  t.deepEqual(Object.keys(diffs), ['contiguous fp32 cache', 'ring cache, window 16', 'int8 cache', 'bf16 paged cache (16)', 'rollback then re-append']);
  // fp32 caches: fp32 rounding of a 128-wide projection (test/mha-cache.test.ts derives the bound); int8 and bf16 add their storage error.
  for (const k of ['contiguous fp32 cache', 'ring cache, window 16', 'rollback then re-append']) t.true(diffs[k] < 1e-4, `${k}: ${diffs[k]}`);
  for (const k of ['int8 cache', 'bf16 paged cache (16)']) t.true(diffs[k] > 1e-4 && diffs[k] < 0.1, `${k}: ${diffs[k]}`);
  t.regex(stdout, /^beams: 3 rows of 41 positions sharing the prompt's pages$/m);
});

test('examples/quickstart.ts runs', async (t) => {
  const { stdout } = await run(process.execPath, ['--import=tsx', 'examples/quickstart.ts'], { timeout: 120_000 });
  t.true(stdout.length > 0);
});
