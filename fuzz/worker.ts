// The fuzz child (started by fuzz/run.ts with node --import tsx --expose-gc). Modes:
//   run <seed> <from> <to>   calls [from, to); before each call writes "<i>\n" to fd 3 (so the
//                            parent knows which call a crash hit), stats as "S <json>\n", "D\n" at the end
//   replay <seed> <i>        prints the call's summary, runs it alone, prints the outcome (JSON lines)
//   load                     loads the package (KVSTREAM_NUM_THREADS etc. from the environment),
//                            runs one small attention, prints the outcome (JSON)
import { writeSync } from 'node:fs';
import { makeCall } from './calls.ts';
import type { Api, Call, Fn } from './calls.ts';
import { emptyStats } from './stats.ts';
import type { ErrorKind, Stats } from './stats.ts';
import { Gen, FuzzTrap } from './values.ts';

/** Calls per epoch: each epoch starts from a thread count and kernel path drawn from (seed, epoch). */
export const EPOCH = 1000;


const ENGINE = /Cannot read propert|is not a function|is not iterable|Cannot convert|Cannot destructure|is not a constructor|Cannot mix BigInt|Invalid typed array length|Array buffer allocation failed|Maximum call stack|Cannot create property|Cannot assign to read only|on a proxy that has been revoked|Cannot use 'in' operator|Reduce of empty array|not extensible|Cannot add property|Invalid array length|Cannot define property|Cannot set propert|detached ArrayBuffer|out of bounds|Invalid atomic access|offset is out of bounds|Start offset|Invalid typed array/;

function hasTrap(e: unknown, depth = 0): boolean {
  // Our own trap, or the engine refusing to use a revoked Proxy we passed: the caller's object failed.
  if (e instanceof FuzzTrap || (e instanceof TypeError && /on a proxy that has been revoked/.test(e.message))) return true;
  return depth < 5 && e instanceof Error && e.cause !== undefined && hasTrap(e.cause, depth + 1);
}

let KvstreamError: new (...a: never[]) => Error;

// poolCheck's self-test result: task throwAt threw, and the pool passes that on as an Error.
const POOL_THROW = /^poolCheck: internal error: task \d+ failed$/;
const isPoolThrow = (e: unknown) => e instanceof Error && e.constructor === Error && POOL_THROW.test(e.message);

/** 'trap' (our own error propagated), 'clear' (including poolCheck's expected Error), 'engine' or 'unclear'. */
export function classify(e: unknown): 'trap' | 'clear' | 'engine' | 'unclear' {
  if (hasTrap(e)) return 'trap';
  if (isPoolThrow(e)) return 'clear';
  if (!(e instanceof TypeError || e instanceof RangeError || e instanceof KvstreamError)) return 'unclear';
  const inner = e instanceof KvstreamError && e.cause instanceof Error ? e.cause : e;
  return ENGINE.test(e.message) || ENGINE.test(inner.message) ? 'engine' : 'clear';
}

const className = (e: unknown) => (e instanceof Error ? e.constructor.name : `non-Error ${typeof e}`);
const message = (e: unknown) => (e instanceof Error ? e.message : String(e)).slice(0, 300);
const signature = (target: string, e: unknown) => `${target} ${className(e)}: ${message(e).replace(/\d+(\.\d+)?(e[-+]?\d+)?/g, 'N').slice(0, 160)}`;

function record(stats: Stats, call: Call, e: unknown, where: string): void {
  const cls = e instanceof FuzzTrap ? 'FuzzTrap' : isPoolThrow(e) ? 'Error (poolCheck throwAt, expected)' : className(e);
  stats.threw[cls] = (stats.threw[cls] ?? 0) + 1;
  const kind = classify(e);
  if (kind !== 'unclear' && kind !== 'engine') return;
  const table = kind === 'unclear' ? stats.unclear : stats.engine;
  const sig = signature(call.target, e);
  const entry = (table[sig] ??= { n: 0, example: where, message: `${cls}: ${message(e)}` });
  entry.n++;
}

async function loadApi(): Promise<Api> {
  const native = await import('../src/native.ts');
  const kv = await import('../src/index.ts');
  KvstreamError = kv.KvstreamError;
  const binding = native.binding as unknown as Record<string, Fn>;
  const paths: string[] = [];
  if (typeof binding.setKernelPath === 'function') {
    for (const p of ['auto', 'tile', 'blas', 'rows', 'deterministic']) {
      try {
        binding.setKernelPath(p);
        paths.push(p);
      } catch {
        /* not available here (tile without AVX-512) */
      }
    }
    binding.setKernelPath('auto');
  }
  const gc = (globalThis as { gc?: () => void }).gc;
  const streams = await import('../src/streams/index.ts').catch(() => undefined);
  return { binding, kv, streams, gc, paths };
}

/** Thread count and kernel path for the epoch of call `index` (restored after calls that change them). */
function epochState(seed: number, index: number, api: Api): { threads: number; path?: string } {
  const g = new Gen(seed, 0xffffffff - Math.floor(index / EPOCH));
  const threads = g.pick([1, 2, 2, 3, 4]);
  return { threads, path: api.paths.length ? g.pick(api.paths) : undefined };
}

function applyState(api: Api, st: { threads: number; path?: string }): void {
  api.binding.setNumThreads(st.threads);
  if (st.path !== undefined) api.binding.setKernelPath(st.path);
}

// Self-test of the crash and hang handling (test/fuzz.test.ts): die or block at this call index.
const SELFTEST_CRASH = Number(process.env.KVSTREAM_FUZZ_SELFTEST_CRASH ?? -1);
const SELFTEST_HANG = Number(process.env.KVSTREAM_FUZZ_SELFTEST_HANG ?? -1);

/** applyState when the call changed the thread count or path (a pool rebuild costs milliseconds). */
function restoreState(api: Api, st: { threads: number; path?: string }): void {
  const i = api.binding.info() as { threads: number; path?: string };
  if (i.threads !== st.threads || (st.path !== undefined && i.path !== st.path)) applyState(api, st);
}

async function runRange(seed: number, from: number, to: number): Promise<void> {
  const api = await loadApi();
  // Most calls throw; short stacks keep that cheap (replay keeps full stacks).
  Error.stackTraceLimit = 3;
  let stats = emptyStats();
  let lastFlush = Date.now();
  const flush = () => {
    stats.rssMB = Math.round(process.memoryUsage().rss / 2 ** 20);
    writeSync(3, `S ${JSON.stringify(stats)}\n`);
    stats = emptyStats();
    lastFlush = Date.now();
  };
  // A promise that rejects with nobody awaiting it ends a default Node process: a crash too.
  process.on('unhandledRejection', (e) => {
    process.stderr.write(`fuzz worker: unhandled rejection during call ${current}: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(4);
  });
  // The loop empties only if a call awaits a callback the addon never calls.
  process.on('beforeExit', () => {
    process.stderr.write(`fuzz worker: the event loop emptied during call ${current}: a callback was never called\n`);
    process.exit(3);
  });
  let state = epochState(seed, from, api);
  applyState(api, state);
  let current = from;
  for (let i = from; i < to; i++) {
    current = i;
    if (i % EPOCH === 0) applyState(api, (state = epochState(seed, i, api)));
    writeSync(3, `${i}\n`);
    if (i === SELFTEST_CRASH) process.kill(process.pid, 'SIGSEGV');
    if (i === SELFTEST_HANG) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
    const t0 = performance.now();
    let call: Call;
    try {
      call = makeCall(seed, i, api);
    } catch (e) {
      const sig = signature('makeCall', e);
      (stats.fuzzer[sig] ??= { n: 0, example: `${seed}:${i}`, message: `${className(e)}: ${message(e)}` }).n++;
      stats.calls++;
      continue;
    }
    try {
      const r = call.run();
      if (r instanceof Promise) await r;
      stats.returned++;
    } catch (e) {
      record(stats, call, e, `${seed}:${i}`);
    }
    stats.targets[call.target] = (stats.targets[call.target] ?? 0) + 1;
    stats.ms[call.target] = (stats.ms[call.target] ?? 0) + performance.now() - t0;
    stats.calls++;
    if (call.state) restoreState(api, state);
    if ((i & 1023) === 1023 && Date.now() - lastFlush > 500) flush();
  }
  flush();
  writeSync(3, 'D\n');
  process.exit(0);
}

async function replay(seed: number, index: number): Promise<void> {
  const api = await loadApi();
  applyState(api, epochState(seed, index, api));
  const state = epochState(seed, index, api);
  let call: Call;
  try {
    call = makeCall(seed, index, api);
  } catch (e) {
    writeSync(1, `${JSON.stringify({ target: 'makeCall', args: 'fuzzer error' })}\n${JSON.stringify({ outcome: 'threw', kind: 'fuzzer', error: `${className(e)}: ${message(e)}` })}\n`);
    process.stderr.write(`${(e as Error).stack}\n`);
    return;
  }
  // Written before the call runs, so the parent has it even if the call kills the process.
  writeSync(1, `${JSON.stringify({ target: call.target, args: call.d, threads: state.threads, path: state.path })}\n`);
  if (index === SELFTEST_CRASH) process.kill(process.pid, 'SIGSEGV');
  process.on('beforeExit', () => {
    process.stderr.write(`fuzz worker: the event loop emptied during call ${index}: a callback was never called\n`);
    process.exit(3);
  });
  try {
    const r = call.run();
    if (r instanceof Promise) await r;
    writeSync(1, `${JSON.stringify({ outcome: 'returned' })}\n`);
  } catch (e) {
    writeSync(1, `${JSON.stringify({ outcome: 'threw', kind: classify(e), error: `${className(e)}: ${message(e)}` })}\n`);
  }
  process.exit(0);
}

async function load(): Promise<void> {
  try {
    const api = await loadApi();
    const q = api.kv.zeros([1, 2, 3, 4]), k = api.kv.zeros([1, 2, 5, 4]);
    api.kv.attention(q, k, k);
    writeSync(1, `${JSON.stringify({ outcome: 'loaded', threads: api.kv.info().threads })}\n`);
  } catch (e) {
    const kv = await import('../src/errors.ts').catch(() => null);
    const named = kv !== null && e instanceof kv.KvstreamError;
    writeSync(1, `${JSON.stringify({ outcome: 'threw', kvstreamError: named, error: `${className(e)}: ${message(e)}` })}\n`);
  }
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'run') await runRange(Number(rest[0]), Number(rest[1]), Number(rest[2]));
else if (mode === 'replay') await replay(Number(rest[0]), Number(rest[1]));
else if (mode === 'load') await load();
else throw new Error(`fuzz/worker.ts: unknown mode ${mode}`);
