// kvstream CLI: `kvstream <name...> | --all | --list | run FILE... | verify [DIR]` (in this repo:
// `npm run pipeline -- ...`). Exit codes (docs/cli.md): 0 done / every case passed; 1 a case
// failed, a run threw, or a folder is missing; 2 bad usage (the command line or a pipeline file).
import { stat } from 'node:fs/promises';
import { createRequire, register } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { lastValueFrom, tap } from 'rxjs';
import { KvstreamError } from './errors.ts';
import { BUILTIN_CASES } from './fixtures/cases.ts';
import { FixtureFileError } from './fixtures/errors.ts';
import { withDeterministicKernels } from './fixtures/kernels.ts';
import { MANIFEST, readManifestRaw, withManifestLock } from './fixtures/manifest.ts';
import type { CaseConfig, ManifestEntry } from './fixtures/manifest.ts';
import { baseName, buildCase, definePipeline, resolveOverrides } from './fixtures/recipes.ts';
import type { PipelineSpec } from './fixtures/recipes.ts';
import { hasInterrupted, recoverInterrupted } from './fixtures/store.ts';
import type { FixtureCase } from './fixtures/store.ts';
import { compareArray, recomputeOnePass, verifyCase } from './fixtures/verify.ts';
import type { CaseReport } from './fixtures/verify.ts';
import { writeFixture } from './fixtures/writeFixture.ts';

/** How the user ran us: `kvstream` (the package bin sets it) or `npm run pipeline --` (this repo). */
export interface CliOptions {
  prog?: string;
}

export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

export function usage(prog: string): string {
  return `Usage:
  ${prog} <name...> [--out DIR] [--seed N] [--chunk N]   write built-in cases
  ${prog} --all [--out DIR] [--seed N]                   write every built-in case
  ${prog} --list                                         the built-in cases
  ${prog} run FILE... [--out DIR] [--seed N] [--chunk N] write your own cases (.mjs/.js; .ts with tsx)
  ${prog} verify [DIR] [--rerun [--from FILE]]           recompute every case of DIR and compare

Options: --json (machine-readable output on stdout), --progress / --no-progress (force the
progress bar on or off; default: on when stderr is a terminal), -h/--help.

Writes <DIR>/<name>.npz and its entry in <DIR>/manifest.json as one unit (DIR defaults to
fixtures/). Each case prints its shape config, chunking, the largest error of the chunked result
against the one-pass result, and its time. With --seed or --chunk a case is written as
<name>-seed<N>-chunk<N>, never over <name>.${prog.startsWith('npm') ? ' In this repo, --seed, --chunk and run need\n--out: fixtures/ keeps the committed cases only.' : ''}
run FILE loads a module whose default export is a PipelineSpec (definePipeline({...})) or an
array of them. verify recomputes every case of DIR (default fixtures/) from its stored inputs,
one pass and chunked, within each case's tolerance; --rerun also re-runs the pipeline of each
name from its seed: a built-in, or one of the pipeline files given with --from.

Exit status: 0 done, every case passed; 1 a case failed or is outside its tolerance, a pipeline
threw, the folder or its manifest is missing, the native addon did not load; 2 bad usage
(unknown option or case, bad value, a pipeline file that is missing or exports no pipeline).
Docs: docs/cli.md.`;
}

class UsageError extends KvstreamError {}

const PIPELINES: ReadonlyMap<string, PipelineSpec> = new Map(BUILTIN_CASES.map((p) => [p.name, p]));

const OPTIONS = {
  all: { type: 'boolean' }, list: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
  out: { type: 'string' }, seed: { type: 'string' }, chunk: { type: 'string' },
  rerun: { type: 'boolean' }, from: { type: 'string', multiple: true }, json: { type: 'boolean' }, progress: { type: 'boolean' }, 'no-progress': { type: 'boolean' },
} as const;

function integer(flag: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${flag} expects an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

/** Edit distance (insert, delete, substitute, swap of neighbours). */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The known word `word` most likely meant: the closest within a third of its length (at least 2), else the only one it starts. */
export function suggest(word: string, knownNames: Iterable<string>): string | undefined {
  const w = word.toLowerCase();
  const known = [...knownNames];
  let best: string | undefined, bestD = Infinity;
  for (const k of known) {
    const d = editDistance(w, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  if (best !== undefined && bestD <= Math.max(2, Math.floor(w.length / 3))) return best;
  const prefixed = known.filter((k) => w.length >= 3 && k.startsWith(w));
  return prefixed.length === 1 ? prefixed[0] : undefined;
}

// ---------------------------------------------------------------------------------------------
// Progress: a bar redrawn in place on a terminal, plain lines otherwise.

export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/**
 * Progress over `total` items (cases), each optionally of many chunks. 'bar' redraws one line
 * with \r (at most every 50 ms, and whenever an item starts); 'lines' prints a plain line for a
 * long item's chunks at most every `every` ms (the per-item summaries are the other lines);
 * 'off' prints nothing. `clear()` before writing anything else to the same terminal.
 */
export class Progress {
  private item = 0;
  private label = '';
  private shown = false;
  private last = -Infinity;
  constructor(
    private readonly out: ProgressStream,
    readonly mode: 'bar' | 'lines' | 'off',
    private readonly total: number,
    private readonly now: () => number = () => performance.now(),
    private readonly every = 2000,
  ) {}

  /** Item `index` (0-based) named `label` starts. */
  start(index: number, label: string): void {
    this.item = index;
    this.label = label;
    if (this.mode === 'bar') this.draw(undefined);
    if (this.mode === 'lines') this.last = this.now();
  }

  /** `done` of `total` chunks of the current item. */
  chunk(done: number, total: number): void {
    if (this.mode === 'off' || this.now() - this.last < (this.mode === 'bar' ? 50 : this.every)) return;
    if (this.mode === 'bar') this.draw([done, total]);
    else {
      this.out.write(`${this.label}: chunk ${done}/${total}\n`);
      this.last = this.now();
    }
  }

  private draw(chunks: [number, number] | undefined): void {
    const width = 24;
    const frac = Math.min(1, (this.item + (chunks ? chunks[0] / chunks[1] : 0)) / this.total);
    const filled = Math.round(frac * width);
    let line = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${this.item + 1}/${this.total} ${this.label}`;
    if (chunks) line += `  chunk ${chunks[0]}/${chunks[1]}`;
    const cols = (this.out.columns || 80) - 1; // a pty without a size reports 0
    if (line.length > cols) line = line.slice(0, cols);
    this.out.write(`\r\x1b[2K${line}`);
    this.shown = true;
    this.last = this.now();
  }

  /** Erases the bar (it comes back with the next update). */
  clear(): void {
    if (this.shown) this.out.write('\r\x1b[2K');
    this.shown = false;
  }
}

function progressFor(total: number, flags: { progress?: boolean; 'no-progress'?: boolean }, json: boolean): Progress {
  const err = process.stderr as ProgressStream;
  const mode = flags['no-progress'] ? 'off' : flags.progress ? 'bar' : err.isTTY ? 'bar' : json ? 'off' : 'lines';
  return new Progress(err, mode, total);
}

// ---------------------------------------------------------------------------------------------
// Writing cases: built-ins by name, or your own from a file.

const exp = (x: number) => (x === 0 ? '0' : Number.isFinite(x) ? x.toExponential(1) : String(x));

/** One line of a case's shape config: only what differs from the defaults besides the sizes. */
export function describeConfig(c: CaseConfig): string {
  const parts = [`B ${c.batch}`, `T ${c.t_q}`, `S ${c.t_past + c.t_kv}${c.t_past ? ` (${c.t_past} cached + ${c.t_kv})` : ''}`, `d_model ${c.d_model}`];
  if (c.d_kv_in !== c.d_model) parts.push(`d_kv_in ${c.d_kv_in}`);
  if (c.d_out !== c.d_model) parts.push(`d_out ${c.d_out}`);
  parts.push(`heads ${c.num_heads}${c.num_kv_heads !== c.num_heads ? ` (kv ${c.num_kv_heads})` : ''}`, `d_k ${c.d_k}`);
  if (c.d_v !== c.d_k) parts.push(`d_v ${c.d_v}`);
  if (c.causal) parts.push(`causal at ${c.q_offset}`);
  if (c.dropout_p > 0) parts.push(`dropout ${c.dropout_p}`);
  if (!c.bias) parts.push('no bias');
  return parts.join('  ');
}

/** What was written for one case: the manifest entry plus the chunked-vs-one-pass check and timing. */
export interface CaseSummary {
  name: string;
  file: string;
  dir: string;
  recipe: PipelineSpec['recipe'];
  seed: number;
  config: CaseConfig;
  /** The x_kv chunk sizes, or null for a one-pass case. */
  chunks: number[] | null;
  /** Largest |chunked - one pass| of output and lse (the one pass over the stored inputs), or null for a one-pass case. */
  vsOnePass: { output: number; lse: number; pass: boolean } | null;
  /** Why a chunked case was not compared with one pass (too large), if it was not. */
  vsOnePassSkipped?: string;
  tolerance: { atol: number; rtol: number };
  sha256: string;
  arrays: number;
  /** Building and writing, in ms (the one-pass check not included). */
  ms: number;
}

/** Largest one-pass check the summary runs (MiB of probabilities). */
const ONE_PASS_MIB = 256;

/**
 * The chunked case's output and lse against one pass over the same stored inputs (dropout: the
 * stored keep mask), on the kernels in use: chunking changes only the online-softmax fold
 * order, so they agree within the case's tolerance.
 */
function againstOnePass(c: FixtureCase): Pick<CaseSummary, 'vsOnePass' | 'vsOnePassSkipped'> {
  if (!c.config.chunk_sizes) return { vsOnePass: null };
  // The one pass holds the probabilities [B,H,T,S] in fp32.
  const { batch, num_heads, t_q, t_past, t_kv } = c.config;
  const mib = (batch * num_heads * t_q * (t_past + t_kv) * 4) / 2 ** 20;
  if (mib > ONE_PASS_MIB) return { vsOnePass: null, vsOnePassSkipped: `its [B,H,T,S] probabilities would take ${mib.toFixed(0)} MiB (limit ${ONE_PASS_MIB})` };
  const one = recomputeOnePass(c.arrays, c.config, false);
  const { atol, rtol } = c.tolerance;
  const out = compareArray('output', 'one-pass', c.arrays.get('output')!, one.get('output')!.data as ArrayLike<number>, atol, rtol);
  const lse = compareArray('lse', 'one-pass', c.arrays.get('lse')!, one.get('lse')!.data as ArrayLike<number>, atol, 0);
  return { vsOnePass: { output: out.maxError, lse: lse.maxError, pass: out.pass && lse.pass } };
}

function printSummary(s: CaseSummary): void {
  const chunks = s.chunks ? `  chunks [${s.chunks.join(',')}]` : '';
  const ms = s.ms < 1000 ? `${s.ms.toFixed(0)} ms` : `${(s.ms / 1000).toFixed(1)} s`;
  console.log(`wrote ${join(s.dir, s.file)}  seed ${s.seed}${chunks}  ${s.arrays} arrays  sha256 ${s.sha256.slice(0, 16)}  ${ms}`);
  console.log(`      ${s.recipe}  ${describeConfig(s.config)}`);
  const v = s.vsOnePass;
  console.log(v
    ? `      chunked vs one pass: max err output ${exp(v.output)}  lse ${exp(v.lse)}  (tolerance atol ${exp(s.tolerance.atol)} rtol ${exp(s.tolerance.rtol)})${v.pass ? '' : '  OUTSIDE TOLERANCE'}`
    : s.vsOnePassSkipped ? `      chunked vs one pass: not checked, ${s.vsOnePassSkipped}` : '      one pass (no chunks)');
}

/** Builds and writes each spec into `out`; prints (or, with --json, returns) a summary per case. */
async function writeCases(specs: PipelineSpec[], out: string, o: { seed?: number; chunk?: number; json: boolean; progress: Progress }): Promise<CaseSummary[]> {
  const summaries: CaseSummary[] = [];
  const bar = o.progress;
  const say = (fn: () => void) => {
    bar.clear();
    fn();
  };
  await withDeterministicKernels(async () => {
    for (const [i, spec] of specs.entries()) {
      const resolved = resolveOverrides(spec, { seed: o.seed, chunk: o.chunk });
      for (const why of resolved.ignored) say(() => console.error(`warning: ${why}; ignored`));
      if (resolved.name !== spec.name) {
        const flags = [o.seed !== undefined && `--seed ${o.seed}`, resolved.name.includes('-chunk') && `--chunk ${o.chunk}`].filter(Boolean).join(' ');
        say(() => console.error(`note: ${spec.name} with ${flags} is written as ${resolved.name}; ${spec.name} is left as it is`));
      }
      bar.start(i, resolved.name);
      const t0 = performance.now();
      let built: FixtureCase | undefined;
      const entry = await lastValueFrom(
        buildCase(spec, { seed: o.seed, chunk: o.chunk, onChunk: (d, n) => bar.chunk(d, n) }).pipe(tap((c) => (built = c)), writeFixture(out)),
      );
      const ms = performance.now() - t0;
      const s: CaseSummary = {
        name: entry.name, file: entry.file, dir: out, recipe: spec.recipe, seed: entry.seed, config: entry.config, chunks: entry.config.chunk_sizes,
        ...againstOnePass(built!), tolerance: { atol: entry.tolerance.atol, rtol: entry.tolerance.rtol }, sha256: entry.sha256,
        arrays: Object.keys(entry.arrays).length, ms,
      };
      summaries.push(s);
      if (!o.json) say(() => printSummary(s));
    }
  });
  bar.clear();
  return summaries;
}

function outsideTolerance(summaries: CaseSummary[]): number {
  const bad = summaries.filter((s) => s.vsOnePass && !s.vsOnePass.pass);
  for (const s of bad) console.error(`error: ${s.name}: the chunked result is outside its tolerance of the one-pass result (output ${exp(s.vsOnePass!.output)}, lse ${exp(s.vsOnePass!.lse)}); the case was written; please report it with this line`);
  return bad.length ? EXIT.failed : EXIT.ok;
}

const jsonOut = (value: unknown) => console.log(JSON.stringify(value, (_, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 2));

// ---------------------------------------------------------------------------------------------
// run FILE: a user's pipeline module.

/**
 * Where tsx's ESM API is, searching from each folder up (the user's project first), or null.
 * The CLI uses it to load a .ts pipeline file when Node cannot strip types itself.
 */
export function findTsx(from: readonly string[]): string | null {
  for (const dir of from) {
    try {
      const pkg = createRequire(join(dir, 'noop.js')).resolve('tsx/package.json');
      return join(dirname(pkg), 'dist/esm/api/index.mjs');
    } catch {
      // not installed there
    }
  }
  return null;
}

export function tsxMissing(file: string): string {
  return `${file} is TypeScript, which Node ${process.version} does not run by itself. Install tsx in your project ` +
    '(npm install --save-dev tsx) and run this again (kvstream finds it there), or write the pipeline as .mjs.';
}

let kvstreamMapped = false;

/**
 * The bare specifier "kvstream" in a pipeline file means this CLI's own kvstream (one module
 * instance: the same classes, addon and kernel settings), also in this repo and from a global
 * install.
 */
function mapKvstream(): void {
  if (kvstreamMapped) return;
  kvstreamMapped = true;
  const index = new URL(import.meta.url.endsWith('.ts') ? './index.ts' : './index.js', import.meta.url).href;
  const hook = `export async function resolve(specifier, context, next) {
    return next(specifier === 'kvstream' ? ${JSON.stringify(index)} : specifier, context);
  }`;
  register(`data:text/javascript,${encodeURIComponent(hook)}`);
}

const TS = /\.[cm]?ts$/;

/** Imports a pipeline file: .mjs/.js directly; .ts through Node (tsx loaded, or type stripping) or else the project's tsx. */
async function importFile(file: string): Promise<Record<string, unknown>> {
  const path = resolve(file);
  const info = await stat(path).catch(() => null);
  if (!info?.isFile()) throw new UsageError(`run: ${file}: no such file${info ? ' (it is a folder)' : ''}; name a module whose default export is definePipeline({...}), e.g. examples/my-case.mjs`);
  mapKvstream();
  const url = pathToFileURL(path).href;
  // A file that does not load (syntax, a missing import, a definePipeline that throws) is bad input: exit 2.
  const failed = (e: unknown) => {
    const message = `run: ${file} did not load: ${(e as Error)?.name ?? 'Error'}: ${(e as Error)?.message ?? String(e)}`;
    // tsx compiles a .ts file outside an ESM package to CommonJS, whose require() skips the "kvstream" mapping.
    const cjs = TS.test(path) && /Cannot find module 'kvstream'[\s\S]*Require stack/.test(message)
      ? '\nThis .ts file was loaded as CommonJS: name it .mts, or add "type": "module" to the package.json of its folder.'
      : '';
    return new UsageError(message + cjs, { cause: e });
  };
  try {
    return await import(url);
  } catch (e) {
    if ((e as { code?: string }).code !== 'ERR_UNKNOWN_FILE_EXTENSION' || !TS.test(path)) throw failed(e);
  }
  const api = findTsx([dirname(path), process.cwd()]);
  if (!api) throw new UsageError(tsxMissing(file));
  const { tsImport } = (await import(pathToFileURL(api).href)) as { tsImport: (specifier: string, parent: string) => Promise<Record<string, unknown>> };
  return tsImport(url, import.meta.url).catch((e: unknown) => Promise.reject(failed(e)));
}

/** The pipelines a module declares: its default export, a PipelineSpec or an array of them (each checked by definePipeline). */
export function pipelinesOf(file: string, mod: Record<string, unknown>): PipelineSpec[] {
  if (!('default' in mod)) {
    throw new UsageError(`run: ${file} has no default export: end it with \`export default definePipeline({ name, description, seed, recipe, config })\` (or an array of them)`);
  }
  const value = mod.default;
  const list = Array.isArray(value) ? value : [value];
  if (list.length === 0) throw new UsageError(`run: ${file}: the default export is an empty array; export one or more definePipeline({...})`);
  return list.map((spec, i) => {
    const where = Array.isArray(value) ? `${file} default export [${i}]` : `${file} default export`;
    if (!spec || typeof spec !== 'object' || typeof (spec as PipelineSpec).name !== 'string' || typeof (spec as PipelineSpec).config !== 'object') {
      throw new UsageError(`run: ${where}: expected a PipelineSpec ({ name, description, seed, recipe, config }, from definePipeline), got ${spec === null ? 'null' : typeof spec}`);
    }
    const s = spec as PipelineSpec;
    if (!['forward', 'streaming', 'prefill'].includes(s.recipe)) throw new UsageError(`run: ${where} (${s.name}): expected recipe 'forward', 'streaming' or 'prefill', got ${JSON.stringify(s.recipe)}`);
    if (!Number.isSafeInteger(s.seed) || s.seed < 0) throw new UsageError(`run: ${where} (${s.name}): expected seed to be an integer >= 0, got ${JSON.stringify(s.seed)}`);
    try {
      return definePipeline({ ...s, description: typeof s.description === 'string' ? s.description : '' });
    } catch (e) {
      throw new UsageError(`run: ${where}: ${(e as Error).message}`, { cause: e });
    }
  });
}

/** The pipelines of a pipeline file (UsageError saying what to fix when there are none). */
export async function loadPipelines(file: string): Promise<PipelineSpec[]> {
  return pipelinesOf(file, await importFile(file));
}

// ---------------------------------------------------------------------------------------------
// verify

function printReport(r: CaseReport): void {
  console.log(`${r.status}  ${r.name}${r.error ? `  ${r.error.class}: ${r.error.message}` : ''}`);
  for (const c of r.checks) {
    console.log(`      ${c.array.padEnd(16)} ${c.mode.padEnd(8)}  max err ${exp(c.maxError).padStart(7)}  bound ${exp(c.bound)}  ${c.pass ? 'ok' : `FAIL at [${c.at.join(',')}]`}`);
  }
  for (const n of r.notes) console.log(`      note: ${n}`);
}

/** verifyDir, reporting each case as it finishes (same checks and errors; see fixtures/verify.ts). */
async function verifyEach(dir: string, rerun: ((name: string) => PipelineSpec | undefined) | undefined, prog: string, onStart: (i: number, total: number, name: string) => void, onReport: (r: CaseReport) => void): Promise<CaseReport[]> {
  const info = await stat(dir).catch(() => null);
  if (!info) throw new FixtureFileError(`${dir}: no such folder. Write cases there with \`${prog} streaming --out ${dir}\` (or run FILE --out ${dir}), or name the folder that holds ${MANIFEST}`);
  if (!info.isDirectory()) throw new FixtureFileError(`${dir}: not a folder; name the folder that holds ${MANIFEST}`);
  if (await hasInterrupted(dir)) await withManifestLock(dir, () => recoverInterrupted(dir)).catch(() => {});
  const m = await readManifestRaw(dir);
  if (!m) throw new FixtureFileError(`${join(dir, MANIFEST)}: no such file (is ${dir} a fixture folder? \`${prog} <name> --out ${dir}\` makes one)`);
  const reports: CaseReport[] = [];
  for (const [i, raw] of m.cases.entries()) {
    const entry = raw as ManifestEntry;
    let report: CaseReport;
    if (!entry || typeof entry !== 'object') {
      onStart(i, m.cases.length, JSON.stringify(raw));
      report = { name: JSON.stringify(raw), status: 'FAIL', error: { class: 'ManifestEntryError', message: `expected a case object, got ${JSON.stringify(raw)}` }, checks: [], notes: [] };
    } else {
      onStart(i, m.cases.length, String(entry.name));
      const spec = rerun && typeof entry.name === 'string' ? rerun(entry.name) : undefined;
      report = await verifyCase(dir, entry, { rerun: spec });
      if (rerun && !spec && report.status === 'PASS') report.notes.push('rerun: no built-in pipeline of this name (your own: --from FILE)');
    }
    reports.push(report);
    onReport(report);
  }
  return reports;
}

async function verify(dir: string, o: { rerun: ((name: string) => PipelineSpec | undefined) | undefined; json: boolean; prog: string; flags: { progress?: boolean; 'no-progress'?: boolean } }): Promise<number> {
  let bar: Progress | undefined;
  const reports = await verifyEach(dir, o.rerun, o.prog, (i, total, name) => {
    bar ??= progressFor(total, o.flags, o.json);
    bar.start(i, name);
  }, (r) => {
    bar?.clear();
    if (!o.json) printReport(r);
  });
  bar?.clear();
  const failed = reports.filter((r) => r.status === 'FAIL').length;
  if (o.json) jsonOut({ dir, passed: reports.length - failed, failed, cases: reports });
  else console.log(`${reports.length - failed} passed, ${failed} failed`);
  if (reports.length === 0) {
    console.error(`verify: ${join(dir, MANIFEST)} lists no cases; write some with \`${o.prog} <name> --out ${dir}\``);
    return EXIT.failed;
  }
  return failed ? EXIT.failed : EXIT.ok;
}

// ---------------------------------------------------------------------------------------------

function unknownNames(names: string[], prog: string): UsageError {
  const lines = names.map((n) => {
    if (/[/\\]|\.[cm]?[jt]s$/.test(n)) return `Unknown pipeline ${n}: to run a pipeline file, use \`${prog} run ${n}\``;
    const s = suggest(n, PIPELINES.keys());
    return `Unknown pipeline ${n}${s ? ` (did you mean ${s}?)` : ''}`;
  });
  return new UsageError(`${lines.join('\n')}. Known: ${[...PIPELINES.keys()].join(', ')} (\`${prog} --list\` describes them)`);
}

export async function main(argv: string[], opts: CliOptions = {}): Promise<number> {
  const prog = opts.prog ?? 'npm run pipeline --';
  const inRepo = prog.startsWith('npm');
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: OPTIONS });
  const json = values.json ?? false;
  if (values.help) {
    console.log(usage(prog));
    return EXIT.ok;
  }
  if (values.progress && values['no-progress']) throw new UsageError('--progress and --no-progress contradict each other; pass one');
  const seed = integer('seed', values.seed, 0);
  const chunk = integer('chunk', values.chunk, 1);
  const command = positionals[0];
  if (values.list) {
    const ignored = [...positionals, ...(['all', 'out', 'seed', 'chunk', 'rerun', 'from'] as const).filter((f) => values[f] !== undefined).map((f) => `--${f}`)];
    if (ignored.length) console.error(`warning: --list ignores ${ignored.join(' ')}`);
    if (json) jsonOut([...PIPELINES.values()].map((p) => ({ name: p.name, description: p.description, recipe: p.recipe, seed: p.seed, config: p.config })));
    else for (const p of PIPELINES.values()) console.log(`${p.name.padEnd(24)} ${p.description}`);
    return EXIT.ok;
  }
  if (command === 'verify') {
    if (positionals.length > 2) throw new UsageError(`verify takes at most one folder, got ${positionals.slice(1).join(' ')}`);
    if (seed !== undefined) console.error('warning: verify ignores --seed: a fixture is checked from what it stores (--rerun uses each entry\'s own seed)');
    if (chunk !== undefined) console.error('warning: verify ignores --chunk: each case is recomputed with its stored chunk sizes');
    if (values.all) console.error('warning: verify ignores --all: it checks every case of the folder');
    if (positionals[1] !== undefined && values.out !== undefined) console.error(`warning: verify ignores --out ${values.out}: it checks the folder named, ${positionals[1]}`);
    let rerun: ((name: string) => PipelineSpec | undefined) | undefined;
    if (values.rerun) {
      // Your pipelines (--from) first, by exact name then by base name, then the built-ins.
      const own = new Map<string, PipelineSpec>();
      for (const file of values.from ?? []) for (const p of await loadPipelines(file)) own.set(p.name, p);
      rerun = (name) => own.get(name) ?? own.get(baseName(name)) ?? PIPELINES.get(baseName(name));
    } else if (values.from) console.error('warning: --from names pipelines for --rerun; without --rerun it is ignored');
    return verify(positionals[1] ?? values.out ?? 'fixtures', { rerun, json, prog, flags: values });
  }
  if (values.rerun) console.error('warning: --rerun applies to verify only; ignored');
  if (values.from) console.error('warning: --from applies to verify --rerun only; ignored');
  let specs: PipelineSpec[];
  if (command === 'run') {
    const files = positionals.slice(1);
    if (files.length === 0) throw new UsageError(`run needs a pipeline file, e.g. \`${prog} run examples/my-case.mjs --out my_fixtures\``);
    if (values.all) console.error('warning: run ignores --all: it writes the pipelines of the files named');
    if (inRepo && values.out === undefined) throw new UsageError('run writes into fixtures/, which keeps the committed cases only in this repo: pass --out DIR');
    specs = [];
    for (const file of files) specs.push(...(await loadPipelines(file)));
    const seen = new Set<string>();
    for (const s of specs) {
      if (seen.has(s.name)) throw new UsageError(`run: two pipelines are named ${s.name}; each case needs a name of its own`);
      seen.add(s.name);
    }
  } else {
    if (values.all && positionals.length) throw new UsageError(`--all writes every case; got names too (${positionals.join(' ')})`);
    const names = values.all ? [...PIPELINES.keys()] : positionals;
    if (names.length === 0) throw new UsageError(`Name a pipeline, or pass --all, --list, run FILE or verify DIR (\`${prog} --help\`)`);
    const unknown = names.filter((n) => !PIPELINES.has(n));
    if (unknown.length) throw unknownNames(unknown, prog);
    specs = names.map((n) => PIPELINES.get(n)!);
    // fixtures/ holds the committed built-in cases only: a variant goes to a folder of its own.
    const variants = specs.filter((p) => resolveOverrides(p, { seed, chunk }).name !== p.name);
    if (inRepo && variants.length && values.out === undefined) {
      throw new UsageError(`--seed/--chunk make a variant of ${variants.map((p) => p.name).join(', ')}; fixtures/ keeps the committed cases only: pass --out DIR (the variant is written there as ${resolveOverrides(variants[0], { seed, chunk }).name})`);
    }
  }
  const out = values.out ?? 'fixtures';
  const summaries = await writeCases(specs, out, { seed, chunk, json, progress: progressFor(specs.length, values, json) });
  if (json) jsonOut({ dir: out, cases: summaries });
  return outsideTolerance(summaries);
}

/** Runs the CLI on process.argv and exits with its status. */
export function run(opts: CliOptions = {}): void {
  const prog = opts.prog ?? 'npm run pipeline --';
  main(process.argv.slice(2), opts).then(
    (code) => process.exit(code),
    (e: unknown) => {
      const err = e as Error & { code?: string };
      const parse = err.code?.startsWith('ERR_PARSE_ARGS');
      let message = err.message;
      if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
        const flag = /'(-[^']*)'/.exec(message)?.[1] ?? '';
        const s = suggest(flag.replace(/^-+/, '').replace(/=.*/, ''), Object.keys(OPTIONS));
        message = `unknown option ${flag}${s ? ` (did you mean --${s}?)` : ''}`;
      }
      const isUsage = e instanceof UsageError || parse;
      console.error(`${isUsage ? 'error' : err.name ?? 'error'}: ${message}${isUsage ? `\n(\`${prog} --help\` shows the commands and options)` : ''}`);
      process.exit(isUsage ? EXIT.usage : EXIT.failed);
    },
  );
}

// Run when executed as a script (`tsx src/cli.ts`, `node dist/cli.js`); bin/kvstream.mjs calls run() itself.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) run();
