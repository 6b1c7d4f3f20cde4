// Seeded fuzzer for the kvstream addon and public API (issue 7, item 4).
//
//   npm run fuzz -- --calls N --seed S     calls [0, N) of seed S in a child process
//   npm run fuzz -- --replay S:i           call i of seed S alone, in a fresh child
//
// Options: --from I (first call, default 0), --hang SECONDS (no progress for this long is a hang,
// default 30), --no-env (skip the KVSTREAM_NUM_THREADS-at-load cases), --crash-log FILE (append one
// line per distinct crash), --max-crashes N (stop after N, default 50).
//
// Each call is derived from (seed, index) alone (fuzz/calls.ts), so a crash reproduces with
// --replay. The child writes each call's index to a pipe before making it; when the child dies
// (a signal, or an exit before it reported the end of its range) the parent records the crash at
// the last index, replays that call alone to confirm it, and restarts the child at the next
// index. JS exceptions are expected (bad input); those of a class other than TypeError,
// RangeError or a KvstreamError subclass are reported as unclear errors. Exit status 1 on a crash.
import { spawn } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { emptyStats, merge } from './stats.ts';
import type { ErrorKind, Stats } from './stats.ts';

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface FuzzOptions {
  seed: number;
  calls: number;
  from?: number;
  /** Seconds without progress before the child counts as hung. */
  hang?: number;
  /** KVSTREAM_NUM_THREADS values to load the package with (each in its own child); [] for none. */
  envValues?: string[];
  crashLog?: string;
  maxCrashes?: number;
  /** Progress lines on stderr. */
  progress?: boolean;
  /** Crashes to replay alone (each replay is a fresh process), default 20. */
  replays?: number;
  /** Extra environment for the children (the self-test sets KVSTREAM_FUZZ_SELFTEST_*). */
  env?: Record<string, string>;
}

export interface Crash {
  seed: number;
  index: number;
  /** 'SIGSEGV', 'SIGABRT', 'exit 1', 'hang', ... */
  how: string;
  target?: string;
  args?: string;
  /** Whether the call alone, in a fresh child, crashed again (and how). */
  replay?: string;
  /** Last lines the child wrote to stderr. */
  stderr: string;
}

export interface EnvCase {
  value: string;
  outcome: string;
  crash: boolean;
  clear: boolean;
}

export interface FuzzReport {
  seed: number;
  from: number;
  calls: number;
  seconds: number;
  callsPerSecond: number;
  restarts: number;
  peakRssMB: number;
  stats: Stats;
  crashes: Crash[];
  env: EnvCase[];
}

/** KVSTREAM_NUM_THREADS values the loader must refuse clearly or accept, never crash on. */
export const ENV_VALUES = ['0', '-1', 'abc', '1e9', '100000000', ' 2', '2x', '', '1.5', '2', '257', '0x10', '+2', '99999999999999999999', 'NaN', '2 ', '\t3'];


const childEnv = (extra: Record<string, string> = {}) => ({
  ...process.env,
  // Freed large buffers go back to the OS at once, so a kernel reading one faults instead of reading stale memory.
  MALLOC_MMAP_THRESHOLD_: '65536',
  ...extra,
});

interface ChildResult {
  lastStarted: number;
  done: boolean;
  how: string;
  stderr: string;
}

/** Runs calls [from, to) in one child until it finishes or dies. */
function runChild(seed: number, from: number, to: number, hangSec: number, extraEnv: Record<string, string>, onStats: (s: Stats) => void, onIndex: (i: number) => void): Promise<ChildResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--expose-gc', WORKER, 'run', String(seed), String(from), String(to)], {
      cwd: ROOT,
      env: childEnv(extraEnv),
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    });
    let lastStarted = from - 1, done = false, stderr = '', lastProgress = Date.now(), hung = false;
    child.stderr!.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
    createInterface({ input: child.stdio[3] as NodeJS.ReadableStream }).on('line', (line) => {
      lastProgress = Date.now();
      if (line === 'D') done = true;
      else if (line.startsWith('S ')) onStats(JSON.parse(line.slice(2)) as Stats);
      else {
        lastStarted = Number(line);
        onIndex(lastStarted);
      }
    });
    const timer = setInterval(() => {
      // Starting node with tsx and the addon may take a while on a busy machine.
      if (Date.now() - lastProgress > (lastStarted < from ? 60 + hangSec : hangSec) * 1000) {
        hung = true;
        child.kill('SIGKILL');
      }
    }, 500);
    child.on('close', (code, signal) => {
      clearInterval(timer);
      const how = hung ? `hang (no progress for ${hangSec} s)` : signal ? signal : code === 3 ? 'callback never called (exit 3)' : code === 4 ? 'unhandled rejection (exit 4)' : `exit ${code}`;
      resolve({ lastStarted, done: done && code === 0, how, stderr: stderr.trim().split('\n').slice(-30).join('\n') });
    });
  });
}

/** Runs one call alone in a fresh child: its summary and outcome ('returned', 'threw ...', or how it died). */
export function replay(seed: number, index: number, hangSec = 30, extraEnv: Record<string, string> = {}): Promise<{ target?: string; args?: string; threads?: number; path?: string; outcome: string; crashed: boolean; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--expose-gc', WORKER, 'replay', String(seed), String(index)], {
      cwd: ROOT,
      env: childEnv(extraEnv),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '', err = '';
    // Startup may be slow on a busy machine; the hang clock starts when the call is announced.
    let timer = setTimeout(() => child.kill('SIGKILL'), (60 + hangSec) * 1000);
    child.stdout!.on('data', (b: Buffer) => {
      if (!out) {
        clearTimeout(timer);
        timer = setTimeout(() => child.kill('SIGKILL'), hangSec * 1000);
      }
      out += b.toString();
    });
    child.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-4000)));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const lines = out.trim().split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return {}; } });
      const head = lines[0] ?? {};
      const tail = lines[1];
      const crashed = !tail || signal !== null || code !== 0;
      const outcome = !crashed
        ? tail.outcome === 'returned' ? 'returned' : `threw (${tail.kind}) ${tail.error}`
        : signal === 'SIGKILL' ? `hang (no result in ${hangSec} s)` : signal ? signal : `exit ${code}`;
      resolve({ target: head.target as string | undefined, args: head.args as string | undefined, threads: head.threads as number | undefined, path: head.path as string | undefined, outcome, crashed, stderr: err.trim().split('\n').slice(-30).join('\n') });
    });
  });
}

/** Loads the package with KVSTREAM_NUM_THREADS=value in a fresh child. */
function loadWith(value: string): Promise<EnvCase> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', WORKER, 'load'], { cwd: ROOT, env: childEnv({ KVSTREAM_NUM_THREADS: value }), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-2000)));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      let r: { outcome?: string; threads?: number; error?: string; kvstreamError?: boolean } = {};
      try { r = JSON.parse(out.trim().split('\n').pop() ?? '{}'); } catch { /* crashed before writing */ }
      if (signal || code !== 0 || !r.outcome) {
        resolve({ value, outcome: `crash: ${signal ?? `exit ${code}`}${err ? ` (${stderrGist(err)})` : ''}`, crash: true, clear: false });
      } else if (r.outcome === 'loaded') {
        resolve({ value, outcome: `loaded, ${r.threads} threads`, crash: false, clear: true });
      } else {
        resolve({ value, outcome: `threw ${r.error}`, crash: false, clear: r.kvstreamError === true });
      }
    });
  });
}

async function envCases(values: string[]): Promise<EnvCase[]> {
  const out: EnvCase[] = new Array(values.length);
  let next = 0;
  const lane = async () => { for (let i = next++; i < values.length; i = next++) out[i] = await loadWith(values[i]); };
  await Promise.all([lane(), lane()]);
  return out;
}

/** The telling lines of a child's stderr (the error, not the stack or Node's version line). */
export function stderrGist(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter(Boolean);
  const telling = lines.filter((l) => /Error|error|Trap|unhandled|terminate|Assertion|FATAL|what\(\)|Segmentation|Aborted|fuzz worker/.test(l) && !/^at /.test(l));
  return (telling.length ? telling : lines.slice(-2)).slice(0, 3).join(' | ').slice(0, 400);
}

export const replayCommand = (seed: number, index: number) => `npm run fuzz -- --replay ${seed}:${index}`;

/** Runs the fuzzer; see the file comment. */
export async function fuzz(o: FuzzOptions): Promise<FuzzReport> {
  const from = o.from ?? 0, to = from + o.calls, hang = o.hang ?? 30, maxCrashes = o.maxCrashes ?? 50;
  const stats = emptyStats();
  const crashes: Crash[] = [];
  const seen = new Set<string>();
  const t0 = performance.now();
  let start = from, restarts = 0, lastPrint = Date.now(), reached = from - 1, startFailures = 0;
  // The load-time cases run beside the calls (two cores: the machine this targets).
  const envDone = envCases(o.envValues ?? []).then((env) => {
    for (const e of env) {
      if (!e.crash || !o.crashLog) continue;
      appendFileSync(o.crashLog, `- KVSTREAM_NUM_THREADS=${JSON.stringify(e.value)} at load: ${e.outcome} — repro: KVSTREAM_NUM_THREADS=${JSON.stringify(e.value)} node --import tsx -e "await import('./src/index.ts')"\n`);
    }
    return env;
  });
  const tLoop = performance.now();
  while (start < to) {
    const r = await runChild(o.seed, start, to, hang, o.env ?? {}, (s) => merge(stats, s), (i) => {
      if (o.progress && Date.now() - lastPrint > 5000) {
        lastPrint = Date.now();
        const s = (performance.now() - tLoop) / 1000;
        process.stderr.write(`  ... call ${i} (${Math.round((i - from) / s)} calls/s, ${crashes.length} crashes)\n`);
      }
    });
    reached = Math.max(reached, r.lastStarted);
    if (r.done) break;
    const index = r.lastStarted;
    const crash: Crash = { seed: o.seed, index, how: r.how, stderr: r.stderr };
    if (index < start) {
      // The child died before its first call: the addon may be being rebuilt; retry a few times.
      if (++startFailures <= 3) {
        if (o.progress) process.stderr.write(`  child failed to start (${r.how}: ${stderrGist(r.stderr)}); retrying in 20 s\n`);
        await new Promise((res) => setTimeout(res, 20_000));
        continue;
      }
      crash.target = '(child start)';
      crashes.push(crash);
      break;
    }
    startFailures = 0;
    if (crashes.length < (o.replays ?? 20)) {
      const rp = await replay(o.seed, index, hang, o.env);
      crash.target = rp.target;
      crash.args = rp.args && `${rp.args} [threads ${rp.threads}${rp.path ? `, path ${rp.path}` : ''}]`;
      crash.replay = rp.crashed ? `crashes alone: ${rp.outcome}` : `does not crash alone (${rp.outcome})`;
    }
    crashes.push(crash);
    const key = `${crash.target} ${crash.how}`;
    if (o.crashLog && !seen.has(key)) {
      appendFileSync(o.crashLog, `- \`${replayCommand(o.seed, index)}\` — ${crash.target}: ${crash.how}; ${crash.replay ?? ''}; args: ${(crash.args ?? '?').slice(0, 600)}${crash.stderr ? `; stderr: ${stderrGist(crash.stderr)}` : ''}\n`);
    }
    seen.add(key);
    if (o.progress) process.stderr.write(`  crash at call #${index}: ${crash.target} → ${crash.how}\n`);
    if (crashes.length >= maxCrashes) break;
    restarts++;
    start = index + 1;
  }
  const seconds = (performance.now() - tLoop) / 1000;
  const env = await envDone;
  // Every index up to the last one started was made (a crash loses the error tallies of its child's last half second).
  const made = reached - from + 1;
  return { seed: o.seed, from, calls: made, seconds: (performance.now() - t0) / 1000, callsPerSecond: Math.round(made / seconds), restarts, peakRssMB: stats.rssMB, stats, crashes, env };
}

/** The report as text. */
export function formatReport(r: FuzzReport): string {
  const out: string[] = [];
  out.push(`kvstream fuzz: seed ${r.seed}, calls ${r.from}..${r.from + r.calls - 1}`);
  out.push(`calls made: ${r.calls} in ${r.seconds.toFixed(1)} s (${r.callsPerSecond} calls/s in the fuzz loop), child restarts: ${r.restarts}, peak child RSS ${r.peakRssMB} MB`);
  const threw = Object.entries(r.stats.threw).sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ');
  out.push(`returned: ${r.stats.returned}; threw: ${threw || 'none'}`);
  out.push(`targets (calls, mean µs): ${Object.entries(r.stats.targets).sort().map(([k, n]) => `${k} ${n} ${Math.round((1000 * (r.stats.ms[k] ?? 0)) / n)}`).join(', ')}`);
  if (r.env.length) {
    out.push(`KVSTREAM_NUM_THREADS at load (${r.env.filter((e) => e.crash).length} crashes, ${r.env.filter((e) => !e.crash && !e.clear).length} unclear):`);
    for (const e of r.env) out.push(`  ${JSON.stringify(e.value).padEnd(24)} ${e.crash ? 'CRASH ' : e.clear ? '' : 'UNCLEAR '}${e.outcome.slice(0, 200)}`);
  }
  out.push(`crashes: ${r.crashes.length}`);
  for (const c of r.crashes) {
    out.push(`  crash at call #${c.index} (seed ${c.seed}, call ${c.index}): ${c.target ?? '?'}(${(c.args ?? '?').slice(0, 400)}) → ${c.how}`);
    if (c.replay) out.push(`    replay: ${c.replay}; ${replayCommand(c.seed, c.index)}`);
    if (c.stderr) out.push(`    stderr: ${stderrGist(c.stderr)}`);
  }
  const table = (name: string, t: Record<string, ErrorKind>) => {
    const rows = Object.entries(t).sort((a, b) => b[1].n - a[1].n);
    out.push(`${name}: ${rows.reduce((a, [, e]) => a + e.n, 0)} (${rows.length} kinds)`);
    for (const [sig, e] of rows.slice(0, 40)) out.push(`  ${String(e.n).padStart(7)}  ${sig.split(' ')[0]} ${e.message.slice(0, 200)}  (e.g. --replay ${e.example})`);
  };
  table('unclear errors (class not TypeError/RangeError/KvstreamError)', r.stats.unclear);
  if (Object.keys(r.stats.fuzzer).length) table('fuzzer errors (a call could not be generated: a bug in fuzz/)', r.stats.fuzzer);
  table('engine errors (TypeError/RangeError from the JS engine, naming no argument)', r.stats.engine);
  return out.join('\n');
}

function parseArgs(argv: string[]): Record<string, string> {
  const a: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`fuzz: unexpected argument ${argv[i]}`);
    if (m[2] !== undefined) a[m[1]] = m[2];
    else if (m[1].startsWith('no-')) a[m[1]] = 'true';
    else a[m[1]] = argv[++i] ?? '';
  }
  return a;
}

function intArg(a: Record<string, string>, name: string, dflt: number): number {
  if (a[name] === undefined) return dflt;
  const n = Number(a[name]);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`fuzz: --${name} must be a non-negative integer, got ${a[name]}`);
  return n;
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  if (a.replay !== undefined) {
    const m = /^(\d+):(\d+)$/.exec(a.replay);
    if (!m) throw new Error(`fuzz: --replay takes SEED:INDEX, got ${a.replay}`);
    const r = await replay(Number(m[1]), Number(m[2]), intArg(a, 'hang', 30));
    console.log(`call ${m[2]} of seed ${m[1]} [threads ${r.threads}${r.path ? `, path ${r.path}` : ''}]: ${r.target}(${r.args})`);
    console.log(`→ ${r.crashed ? 'CRASH ' : ''}${r.outcome}`);
    if (r.stderr) console.log(r.stderr);
    process.exit(r.crashed ? 1 : 0);
  }
  const seed = a.seed !== undefined ? intArg(a, 'seed', 0) : Math.floor(Math.random() * 2 ** 31);
  const report = await fuzz({
    seed,
    calls: intArg(a, 'calls', 100_000),
    from: intArg(a, 'from', 0),
    hang: intArg(a, 'hang', 30),
    envValues: a['no-env'] ? [] : ENV_VALUES,
    crashLog: a['crash-log'],
    maxCrashes: intArg(a, 'max-crashes', 50),
    progress: true,
  });
  console.log(formatReport(report));
  process.exit(report.crashes.length || report.env.some((e) => e.crash) ? 1 : 0);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
