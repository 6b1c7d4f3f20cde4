// kvstream CLI: `npm run pipeline -- <name...> | --all | --list | verify [DIR]`.
// Exit codes: 0 done / every case passed; 1 a case failed or a folder is missing; 2 bad usage.
import { parseArgs } from 'node:util';
import { lastValueFrom } from 'rxjs';
import { KvstreamError } from './errors.ts';
import { BUILTIN_CASES } from './fixtures/cases.ts';
import { withDeterministicKernels } from './fixtures/kernels.ts';
import { baseName, buildCase, resolveOverrides } from './fixtures/recipes.ts';
import type { PipelineSpec } from './fixtures/recipes.ts';
import { verifyDir } from './fixtures/verify.ts';
import type { CaseReport } from './fixtures/verify.ts';
import { writeFixture } from './fixtures/writeFixture.ts';

const USAGE = `Usage:
  npm run pipeline -- <name...> [--out DIR] [--seed N] [--chunk N]
  npm run pipeline -- --all [--out DIR] [--seed N]
  npm run pipeline -- --list
  npm run pipeline -- verify [DIR] [--rerun] [--json]

Writes <DIR>/<name>.npz and its entry in <DIR>/manifest.json (DIR defaults to fixtures/).
With --seed or --chunk the case is written as <name>-seed<N>-chunk<N>, never over <name>, and
only with --out (fixtures/ keeps the committed cases).
verify recomputes every case of DIR (default fixtures/) from its stored inputs, one pass and
chunked, and compares each stored output within the case's tolerance; --rerun also re-runs
the built-in pipeline of each name from its seed. Exit 0: all passed; 1: a case failed or DIR
is missing; 2: bad usage.`;

class UsageError extends KvstreamError {}

const PIPELINES: ReadonlyMap<string, PipelineSpec> = new Map(BUILTIN_CASES.map((p) => [p.name, p]));

function integer(flag: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${flag} expects an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

/** A one-line progress bar on a TTY; silent otherwise. */
function progress(total: number) {
  const tty = process.stderr.isTTY && total > 1;
  return {
    step(done: number, label: string) {
      if (!tty) return;
      const width = 24, filled = Math.round((done / total) * width);
      process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${label}`.padEnd(80));
    },
    end() {
      if (tty) process.stderr.write('\r'.padEnd(81) + '\r');
    },
  };
}

async function generate(names: string[], outFlag: string | undefined, seed?: number, chunk?: number): Promise<number> {
  const unknown = names.filter((n) => !PIPELINES.has(n));
  if (unknown.length) throw new UsageError(`Unknown pipeline${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}. Known: ${[...PIPELINES.keys()].join(', ')}`);
  const out = outFlag ?? 'fixtures';
  // fixtures/ holds the committed built-in cases only: a variant goes to a folder of its own.
  const variants = names.filter((n) => resolveOverrides(PIPELINES.get(n)!, { seed, chunk }).name !== n);
  if (variants.length && outFlag === undefined) {
    throw new UsageError(`--seed/--chunk make a variant of ${variants.join(', ')}; fixtures/ keeps the committed cases only: pass --out DIR (the variant is written there as ${resolveOverrides(PIPELINES.get(variants[0])!, { seed, chunk }).name})`);
  }
  const bar = progress(names.length);
  await withDeterministicKernels(async () => {
    for (const [i, name] of names.entries()) {
      const spec = PIPELINES.get(name)!;
      const resolved = resolveOverrides(spec, { seed, chunk });
      for (const why of resolved.ignored) console.error(`warning: ${why}; ignored`);
      if (resolved.name !== name) console.error(`note: ${name} with ${[seed !== undefined && `--seed ${seed}`, resolved.name.includes('-chunk') && `--chunk ${chunk}`].filter(Boolean).join(' ')} is written as ${resolved.name}; ${name} is left as it is`);
      bar.step(i, name);
      const entry = await lastValueFrom(buildCase(spec, { seed, chunk }).pipe(writeFixture(out)));
      bar.end();
      const chunks = entry.config.chunk_sizes ? `  chunks [${entry.config.chunk_sizes.join(',')}]` : '';
      console.log(`wrote ${out.replace(/\/$/, '')}/${entry.file}  seed ${entry.seed}${chunks}  ${Object.keys(entry.arrays).length} arrays  sha256 ${entry.sha256.slice(0, 16)}`);
    }
  });
  bar.end();
  return 0;
}

const exp = (x: number) => (Number.isFinite(x) ? x.toExponential(1) : String(x));

function printReport(r: CaseReport): void {
  console.log(`${r.status}  ${r.name}${r.error ? `  ${r.error.class}: ${r.error.message}` : ''}`);
  for (const c of r.checks) {
    console.log(`      ${c.array.padEnd(16)} ${c.mode.padEnd(8)}  max err ${exp(c.maxError).padStart(7)}  bound ${exp(c.bound)}  ${c.pass ? 'ok' : `FAIL at [${c.at.join(',')}]`}`);
  }
  for (const n of r.notes) console.log(`      note: ${n}`);
}

async function verify(dir: string, rerun: boolean, json: boolean): Promise<number> {
  const reports = await verifyDir(dir, { rerun: rerun ? (name) => PIPELINES.get(baseName(name)) : undefined });
  const failed = reports.filter((r) => r.status === 'FAIL').length;
  if (json) {
    const finite = (_: string, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v);
    console.log(JSON.stringify({ dir, passed: reports.length - failed, failed, cases: reports }, finite, 2));
  } else {
    reports.forEach(printReport);
    console.log(`${reports.length - failed} passed, ${failed} failed`);
  }
  if (reports.length === 0) {
    console.error(`verify: ${dir}/manifest.json lists no cases`);
    return 1;
  }
  return failed ? 1 : 0;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      all: { type: 'boolean' }, list: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      out: { type: 'string' }, seed: { type: 'string' }, chunk: { type: 'string' },
      rerun: { type: 'boolean' }, json: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.list) {
    for (const p of PIPELINES.values()) console.log(`${p.name.padEnd(24)} ${p.description}`);
    return 0;
  }
  const seed = integer('seed', values.seed, 0);
  const chunk = integer('chunk', values.chunk, 1);
  if (positionals[0] === 'verify') {
    if (positionals.length > 2) throw new UsageError(`verify takes at most one directory, got ${positionals.slice(1).join(' ')}`);
    if (seed !== undefined) console.error('warning: verify ignores --seed: a fixture is checked from what it stores (--rerun uses each entry\'s own seed)');
    if (chunk !== undefined) console.error('warning: verify ignores --chunk: each case is recomputed with its stored chunk sizes');
    if (values.all) console.error('warning: verify ignores --all: it checks every case of the folder');
    return verify(positionals[1] ?? values.out ?? 'fixtures', values.rerun ?? false, values.json ?? false);
  }
  if (values.rerun || values.json) console.error(`warning: ${values.rerun ? '--rerun' : '--json'} applies to verify only; ignored`);
  const names = values.all ? [...PIPELINES.keys()] : positionals;
  if (values.all && positionals.length) throw new UsageError(`--all writes every case; got names too (${positionals.join(' ')})`);
  if (names.length === 0) throw new UsageError('Name a pipeline, or pass --all or --list');
  return generate(names, values.out, seed, chunk);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    const usage = e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    console.error(`${usage ? 'error' : (e as Error).name ?? 'error'}: ${(e as Error).message}${usage ? `\n\n${USAGE}` : ''}`);
    process.exit(usage ? 2 : 1);
  },
);
