// kvstream CLI: `npm run pipeline -- <name...> | --all | --list | verify [DIR]`.
import { parseArgs } from 'node:util';
import { lastValueFrom } from 'rxjs';
import { PIPELINES } from '../pipelines/index.ts';
import { KvstreamError } from './errors.ts';
import { readManifest } from './manifest.ts';
import { info } from './native.ts';
import { buildCase, verifyCase } from './pipeline.ts';
import { writeFixture } from './operators/writeFixture.ts';

const USAGE = `Usage:
  npm run pipeline -- <name...> [--out DIR] [--seed N] [--chunk N]
  npm run pipeline -- --all [--out DIR]
  npm run pipeline -- --list
  npm run pipeline -- verify [DIR]

Writes <DIR>/<name>.npz and its entry in <DIR>/manifest.json (DIR defaults to fixtures/).
verify re-runs every case of DIR's manifest from its stored inputs and checks each sha256.`;

class UsageError extends KvstreamError {}

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

async function generate(names: string[], out: string, seed?: number, chunk?: number): Promise<number> {
  const unknown = names.filter((n) => !PIPELINES.has(n));
  if (unknown.length) throw new UsageError(`Unknown pipeline${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}. Known: ${[...PIPELINES.keys()].join(', ')}`);
  const bar = progress(names.length);
  for (const [i, name] of names.entries()) {
    bar.step(i, name);
    const entry = await lastValueFrom(buildCase(PIPELINES.get(name)!, { seed, chunk }).pipe(writeFixture(out)));
    bar.end();
    console.log(`wrote ${out.replace(/\/$/, '')}/${entry.file}  ${Object.keys(entry.arrays).length} arrays  sha256 ${entry.sha256.slice(0, 16)}`);
  }
  bar.end();
  return 0;
}

async function verify(dir: string): Promise<number> {
  const manifest = await readManifest(dir);
  if (manifest.cases.length === 0) {
    console.error(`verify: ${dir}/manifest.json lists no cases`);
    return 1;
  }
  let failed = 0;
  const bar = progress(manifest.cases.length);
  for (const [i, entry] of manifest.cases.entries()) {
    bar.step(i, entry.name);
    const report = await verifyCase(dir, entry, PIPELINES.get(entry.name));
    bar.end();
    if (report.problems.length === 0) console.log(`ok    ${entry.name}`);
    else {
      failed++;
      console.log(`FAIL  ${entry.name}\n${report.problems.map((p) => `      ${p}`).join('\n')}`);
    }
  }
  console.log(`${manifest.cases.length - failed} verified, ${failed} failed`);
  return failed ? 1 : 0;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      all: { type: 'boolean' }, list: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      out: { type: 'string' }, seed: { type: 'string' }, chunk: { type: 'string' },
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
  if (info().blas === 'portable') console.error('kvstream: using the portable GEMM (OpenBLAS not linked: apt-get install libopenblas-dev && npm run build:native)');
  if (positionals[0] === 'verify') {
    if (positionals.length > 2) throw new UsageError(`verify takes at most one directory, got ${positionals.slice(1).join(' ')}`);
    return verify(positionals[1] ?? values.out ?? 'fixtures');
  }
  const names = values.all ? [...PIPELINES.keys()] : positionals;
  if (names.length === 0) throw new UsageError('Name a pipeline, or pass --all or --list');
  return generate(names, values.out ?? 'fixtures', integer('seed', values.seed, 0), integer('chunk', values.chunk, 1));
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    const usage = e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    console.error(`${usage ? 'error' : (e as Error).name ?? 'error'}: ${(e as Error).message}${usage ? `\n\n${USAGE}` : ''}`);
    process.exit(usage ? 2 : 1);
  },
);
