// npm run bench: kvstream side by side with onnxruntime-node and PyTorch (when Debian's
// python3-torch is installed), same shapes, same thread counts, alternating repetitions,
// medians. Prints a table and writes bench/results.json.
//
// Rows per workload: `kvstream` is the public API in a steady-state loop (results written into
// reused `out` tensors, a preallocated cache); `kvstream/fresh` the same calls allocating their
// results; `kvstream/kernel` the binding alone on reused buffers (the calls the public API makes,
// without its checks and objects), so API overhead stays visible.
//
// The cache features (issues 9 and 10), each timed alternately with its baseline in one call:
//  - W3-b1 / W3-b16 rows carry `cache` (fp32, fp16, bf16, int8: the KvCache storage), with the
//    ratio to the fp32 step and GB/s against a plain read of the step's bytes (bench/floor.ts)
//    timed in the same repetitions (`floor_ms`, `of_floor`);
//  - W6: decode batch 1 at the end of a 32k stream through a ring cache of window 4096 (the W3
//    module), `ratio_to_W3_b1`; W3-b1 `feature: 'paged'` (pageSize 16) likewise;
//  - W2 `feature: 'rope'`: W2 with config.rope, `ratio_to_W2`.
// W3-gqa: grouped-query decode (32 query heads over 8 kv heads, rows carry `heads`, `kv_heads`)
// against onnxruntime's GroupQueryAttention.
//
//   npm run bench -- [--quick] [--reps N] [--threads 1,2] [--steps N] [--caches fp32,bf16,...]
//                    [--only W1-core,W1-module,W2,W2-rope,W3-b1,W3-b16,W3-b1-paged,W3-gqa,W4,W6,W5] [--no-torch] [--no-w5]
//                    [--out results.json]
//   --quick: --reps 3 --steps 64 --threads 1, no W5, rows to $TMPDIR/kvstream-bench-quick.json
//   (each overridable but W5). Without --out, other runs (--only too) replace bench/results.json.
//   KVSTREAM_BENCH_KEEP_OPENBLAS_ENV=1 keeps OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as they are.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { lastValueFrom } from 'rxjs';
import { attention, CACHE_DTYPES, NATIVE_DTYPE } from '../src/attention.ts';
import type { CacheDtype } from '../src/attention.ts';
import type { KvCache } from '../src/kvcache.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import { addon, info, setNumThreads } from '../src/native.ts';
import { attendChunk, projectKv, splitTokens } from '../src/operators/index.ts';
import { Rng } from '../src/random.ts';
import { zeros } from '../src/tensor.ts';
import type { Tensor } from '../src/tensor.ts';
import { npyHeader } from '../src/io/npy.ts';
import { plainRead } from './floor.ts';
import { cachedKernel, coreKernel, fusedKernel } from './kernels.ts';
import { coreSession, f16, f32, gqaModuleSession, gqaStep, moduleSession, rotaryCaches, version as ortVersion } from './ort.ts';
import type { Feeds, OrtTensor } from './ort.ts';

// OpenBLAS reads these at load: drop them by re-running this script without them.
const OPENBLAS_VARS = ['OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE'];
if (!process.env.KVSTREAM_BENCH_KEEP_OPENBLAS_ENV && OPENBLAS_VARS.some((v) => process.env[v] !== undefined)) {
  const env: NodeJS.ProcessEnv = { ...process.env, KVSTREAM_BENCH_KEEP_OPENBLAS_ENV: '1' };
  for (const v of OPENBLAS_VARS) delete env[v];
  console.log(`bench: unsetting ${OPENBLAS_VARS.filter((v) => process.env[v] !== undefined).map((v) => `${v}=${process.env[v]}`).join(' ')} for every OpenBLAS user in the run`);
  const r = spawnSync(process.execPath, process.execArgv.concat(process.argv.slice(1)), { stdio: 'inherit', env });
  process.exit(r.status ?? 1);
}

const { values: args } = parseArgs({
  options: {
    reps: { type: 'string' }, threads: { type: 'string' }, steps: { type: 'string' }, caches: { type: 'string' }, only: { type: 'string' },
    quick: { type: 'boolean' }, 'no-torch': { type: 'boolean' }, 'no-w5': { type: 'boolean' }, out: { type: 'string' },
  },
});
const QUICK = !!args.quick;
const REPS = Number(args.reps ?? (QUICK ? 3 : 7));
const THREADS = (args.threads ?? (QUICK ? '1' : '1,2')).split(',').map(Number);
/** Decode steps per repetition of W3 and W6. */
const STEPS = Number(args.steps ?? (QUICK ? 64 : 256));
const CACHES = (args.caches ?? CACHE_DTYPES.join(',')).split(',') as CacheDtype[];
for (const dt of CACHES) if (!CACHE_DTYPES.includes(dt)) throw new Error(`--caches: expected some of ${CACHE_DTYPES.join(',')}, got ${dt}`);
if (!(STEPS >= 1 && STEPS <= 4096)) throw new Error(`--steps: expected 1..4096, got ${args.steps}`);
/** Where rows go: the README table's bench/results.json, except for --quick (a temp file) unless --out says. */
const OUT = args.out ?? (QUICK ? join(tmpdir(), 'kvstream-bench-quick.json') : 'bench/results.json');
const only = args.only?.split(',');
const want = (w: string) => !only || only.includes(w);

const [H, D, DM] = [8, 64, 512];
type System = 'kvstream' | 'onnxruntime' | 'torch';
type Variant = 'kernel' | 'fresh' | 'gqa';
type SystemKey = System | `kvstream/${Variant}` | `onnxruntime/${Variant}`;
interface Row {
  workload: string; mask: 'none' | 'causal'; threads: number; system: System; variant?: string; median_ms: number; gflops: number | null;
  /** KV cache storage (W3, W6 and the paged row). */
  cache?: CacheDtype;
  /** The cache feature the row times against its baseline: 'rope' (W2), 'paged' (W3-b1), 'window' (W6). */
  feature?: 'rope' | 'paged' | 'window';
  [k: string]: unknown;
}
type Rep = () => Promise<number> | number; // one repetition -> ms per unit (call, step or pass)

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const time = (f: () => unknown) => {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
};
const timeAsync = async (f: () => Promise<unknown>) => {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
};

// ---- torch peer: one long-running process per thread count ----
const torchOk = !args['no-torch'] && spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
const torchVersion = torchOk ? spawnSync('/usr/bin/python3', ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' }).stdout.trim() : null;
const torchProcs = new Map<number, { ask(req: object): Promise<number> }>();
/** The torch process for `threads`, started and past its `import torch` before anything is timed. */
async function torchPeer(threads: number) {
  if (!torchProcs.has(threads)) {
    // Idle peer threads must not spin into the next system's repetition: OpenMP passive, and
    // OpenBLAS's workers (which by default busy-wait ~2^28 cycles after each call) time out at once.
    const env = { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads), OMP_WAIT_POLICY: 'PASSIVE', OPENBLAS_THREAD_TIMEOUT: '4' };
    const child = spawn('/usr/bin/python3', ['bench/torch_peer.py'], { env, stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    child.unref();
    await lines.next(); // {"ready": true}
    torchProcs.set(threads, {
      async ask(req) {
        child.stdin!.write(`${JSON.stringify({ ...req, threads })}\n`);
        const { value } = await lines.next();
        const r = JSON.parse(value as string);
        if (r.error) throw new Error(`torch: ${r.error}`);
        return r.ms;
      },
    });
  }
  return torchProcs.get(threads)!;
}

/**
 * A torch repetition for `req` if torch runs it (one run, which also warms it up); otherwise logs
 * why (e.g. torch 1.13 has no fp16 matmul on CPU) and returns null.
 */
async function torchSystem(torch: { ask(req: object): Promise<number> }, req: object, what: string): Promise<Rep | null> {
  try {
    await torch.ask(req);
    return () => torch.ask(req);
  } catch (e) {
    console.log(`torch: no ${what} row (${(e as Error).message})`);
    return null;
  }
}
/** A repetition run once: later calls return the first one's time. */
function once(rep: Rep): Rep {
  let first: Promise<number> | undefined;
  return () => (first ??= Promise.resolve(rep()));
}
const fmtMs = (ms: number) => `${ms.toFixed(ms < 1 ? 4 : ms < 10 ? 3 : 1)} ms`;

// ---- measurement ----
const rows: Row[] = [];
/** What printRows adds after a row (targets, floors), not saved. */
const notes = new WeakMap<Row, string>();
type Key = SystemKey | `${SystemKey}@${CacheDtype}` | `~${string}`;
interface MeasureOptions {
  /** Fields every row of the call gets (e.g. cache, feature). */
  base?: Partial<Row>;
  /** Adds fields (and notes) to the rows from every key's median (references included) before they print. */
  annotate?: (ms: Map<string, number>, rows: Map<string, Row>) => void;
}
/**
 * Times `systems` alternately `reps` times (after one warm-up each unless warmUp is false) and
 * pushes a row per system with its median. Keys are `system[/variant][@cache]`; keys starting
 * with `~` are references (a baseline, the memory floor): timed alike, no row.
 */
async function measure(workload: string, mask: 'none' | 'causal', threads: number, systems: Partial<Record<Key, Rep>>, gflop: number | null, reps = REPS, warmUp = true, o: MeasureOptions = {}) {
  const names = Object.keys(systems) as Key[];
  const samples = new Map<Key, number[]>(names.map((n) => [n, []]));
  if (warmUp) for (const n of names) await systems[n]!();
  for (let r = 0; r < reps; r++) for (const n of names) samples.get(n)!.push(await systems[n]!());
  const medians = new Map<string, number>(names.map((n) => [n, median(samples.get(n)!)]));
  const made = new Map<string, Row>();
  for (const n of names) {
    if (n.startsWith('~')) continue;
    const ms = medians.get(n)!;
    const [sys, cache] = n.split('@') as [SystemKey, CacheDtype | undefined];
    const [system, variant] = sys.split('/') as [System, Variant | undefined];
    const row: Row = { workload, mask, threads, system, median_ms: ms, gflops: gflop === null ? null : gflop / ms / 1e6 * 1e3 / 1e3, ...o.base };
    if (variant) row.variant = variant;
    if (cache) row.cache = cache;
    row.load1 = +loadavg()[0].toFixed(2);
    made.set(n, row);
    rows.push(row);
  }
  o.annotate?.(medians, made);
  printRows([...made.values()]);
}

const limit = new Map<number, number>(); // threads -> sgemm GFLOP/s through the addon
function sgemmLimit(threads: number): number {
  const n = 2048;
  const x = new Float32Array(n * n).fill(0.5), w = new Float32Array(n * n).fill(0.25), y = new Float32Array(n * n);
  addon.linear(x, w, null, y, n, n, n);
  const ms = median(Array.from({ length: 5 }, () => time(() => addon.linear(x, w, null, y, n, n, n))));
  return (2 * n ** 3) / ms / 1e6;
}

function printRows(rs: Row[]) {
  for (const r of rs) {
    // Ratios among the rows of one cache dtype and feature.
    const group = rs.filter((p) => p.cache === r.cache && p.feature === r.feature);
    const ours = group.find((p) => p.system === 'kvstream' && !p.variant);
    const kernel = group.find((p) => p.system === 'kvstream' && p.variant === 'kernel');
    let ratios = r === ours ? group.filter((p) => p.system !== 'kvstream').map((p) => `${(r.median_ms / p.median_ms).toFixed(2)}x ${p.system}${p.variant ? `/${p.variant}` : ''}`).join(', ') : '';
    if (kernel && r.system === 'kvstream' && r !== kernel) ratios += `${ratios ? ', ' : ''}${(r.median_ms / kernel.median_ms).toFixed(3)}x kernel`;
    const lim = r.gflops !== null && r.workload.startsWith('W1') ? ` (${((100 * r.gflops) / limit.get(r.threads)!).toFixed(0)}% of sgemm)` : '';
    const unit = r.workload.startsWith('W3') || r.workload === 'W6' ? 'ms/step' : r.workload === 'W4' ? 'ms/call' : 'ms';
    const label = r.system + (r.variant ? `/${r.variant}` : '') + (r.cache && r.cache !== 'fp32' ? ` ${r.cache}` : '') + (r.feature ? ` ${r.feature}` : '');
    const note = notes.get(r);
    console.log(`${r.workload.padEnd(10)} ${r.mask.padEnd(6)} ${String(r.threads).padEnd(2)} ${label.padEnd(22)} ${r.median_ms.toFixed(r.median_ms < 1 ? 4 : 1).padStart(9)} ${unit.padEnd(7)} ${r.gflops !== null ? `${r.gflops.toFixed(0).padStart(4)} GFLOP/s${lim}` : ''}${ratios ? `   kvstream/other: ${ratios}` : ''}${note ? `   ${note}` : ''}`);
  }
}

// ---- workloads ----
const rng = new Rng(2026);
const toBTC = (t: Tensor) => { // [B,H,T,d] -> [B,T,H·d]
  const [B, Hh, T, d] = t.shape;
  const out = new Float32Array(t.data.length);
  for (let b = 0; b < B; b++) for (let h = 0; h < Hh; h++) for (let s = 0; s < T; s++) out.set(t.data.subarray(((b * Hh + h) * T + s) * d, ((b * Hh + h) * T + s + 1) * d), ((b * T + s) * Hh + h) * d);
  return out;
};

const machine = {
  cpu: cpus()[0]?.model, cores: cpus().length, memGiB: Math.round(totalmem() / 2 ** 30), node: process.version,
  blas: info().blas, blasCore: info().blasCore, onnxruntime: ortVersion, torch: torchVersion,
  openblasEnvUnset: !process.env.OPENBLAS_CORETYPE && !process.env.OPENBLAS_L2_SIZE,
};
console.log(`machine: ${JSON.stringify(machine)}`);
if (!torchOk) console.log(`torch: not available (${args['no-torch'] ? '--no-torch' : '`/usr/bin/python3 -c "import torch"` failed: apt-get install python3-torch'}); going on without it`);

for (const threads of THREADS) {
  setNumThreads(threads);
  limit.set(threads, sgemmLimit(threads));
  console.log(`\n== ${threads} thread(s): addon sgemm 2048^3 = ${limit.get(threads)!.toFixed(0)} GFLOP/s (OpenBLAS core ${info().blasCore})`);
  const torch = torchOk ? await torchPeer(threads) : null;
  const peer = (workload: string, mask: string) => (torch ? { torch: () => torch.ask({ workload, mask }) } : {});

  const T = 2048;
  const coreFlop = 4 * H * T * T * D;
  const moduleFlop = coreFlop + 2 * T * DM * 3 * H * D + 2 * T * H * D * DM;
  const mha = MultiHeadAttention.random({ dModel: DM, numHeads: H }, 1);

  if (want('W1-core')) {
    const [q, k, v] = [0, 1, 2].map(() => rng.normalTensor([1, H, T, D]));
    const ortFeeds: Feeds = { q: f32(toBTC(q), [1, T, H * D]), k: f32(toBTC(k), [1, T, H * D]), v: f32(toBTC(v), [1, T, H * D]) };
    for (const mask of ['none', 'causal'] as const) {
      const s = await coreSession(H, H * D, mask === 'causal', threads);
      const causal = mask === 'causal';
      const out = { output: zeros([1, H, T, D]), lse: zeros([1, H, T]) };
      const kernel = coreKernel(q, k, v, causal);
      await measure('W1-core', mask, threads, {
        kvstream: () => time(() => attention(q, k, v, { causal, out })),
        'kvstream/fresh': () => time(() => attention(q, k, v, { causal })),
        'kvstream/kernel': () => time(kernel),
        onnxruntime: () => timeAsync(() => s.run(ortFeeds)),
        ...peer('W1-core', mask),
      }, coreFlop);
    }
  }

  const x = rng.normalTensor([1, T, DM]);
  if (want('W1-module')) {
    for (const mask of ['none', 'causal'] as const) {
      const s = await moduleSession(mha, mask === 'causal', false, threads);
      const causal = mask === 'causal';
      const out = { output: zeros([1, T, DM]), lse: zeros([1, H, T]) };
      const kernel = fusedKernel(mha, x, causal);
      await measure('W1-module', mask, threads, {
        kvstream: () => time(() => mha.forward(x, x, { causal, out })),
        'kvstream/fresh': () => time(() => mha.forward(x, x, { causal })),
        'kvstream/kernel': () => time(kernel),
        onnxruntime: () => timeAsync(() => s.run({ x: f32(x.data, [1, T, DM]) })),
        ...peer('W1-module', mask),
      }, moduleFlop);
    }
  }

  const CH = 256;
  const chunks = Array.from({ length: T / CH }, (_, i) => ({ data: x.data.slice(i * CH * DM, (i + 1) * CH * DM), shape: [1, CH, DM] }));
  if (want('W2')) {
    const cache = mha.newCache(1, T);
    const s = await moduleSession(mha, true, true, threads);
    const out = { output: zeros([1, CH, DM]), lse: zeros([1, H, CH]) };
    const kernel = cachedKernel(mha, 1, T);
    await measure('W2', 'causal', threads, {
      kvstream: () => time(() => {
        cache.reset();
        for (const c of chunks) mha.forward(c, c, { cache, causal: true, out });
      }),
      'kvstream/fresh': () => time(() => {
        cache.reset();
        for (const c of chunks) mha.forward(c, c, { cache, causal: true });
      }),
      'kvstream/kernel': () => time(() => {
        kernel.reset();
        for (const c of chunks) kernel.step(c);
      }),
      onnxruntime: () => timeAsync(async () => {
        let past: OrtTensor = f32(new Float32Array(0), [2, 1, H, 0, D]);
        for (const c of chunks) past = (await s.run({ x: f32(c.data, c.shape), past })).present;
      }),
      ...peer('W2', 'causal'),
    }, moduleFlop);
  }

  if (want('W2-rope')) {
    // W2 with config.rope (half-split, theta 10000, the whole head) against W2 without, alternately.
    const mhaRope = new MultiHeadAttention({ dModel: DM, numHeads: H, rope: {} }, mha.weights);
    const [cacheRope, cachePlain] = [mhaRope.newCache(1, T), mha.newCache(1, T)];
    const out = { output: zeros([1, CH, DM]), lse: zeros([1, H, CH]) };
    const prefill = (m: MultiHeadAttention, cache: KvCache) => time(() => {
      cache.reset();
      for (const c of chunks) m.forward(c, c, { cache, causal: true, out });
    });
    const torchRope = torch ? await torchSystem(torch, { workload: 'W2', mask: 'causal', rope: true }, 'rope') : null;
    // onnxruntime: the module around GroupQueryAttention with do_rotary (cos/sin caches), against the same graph without.
    const [gqaRope, gqaPlain] = [await gqaModuleSession(mha, threads, { rotary: true }), await gqaModuleSession(mha, threads)];
    const rot = rotaryCaches(T, D);
    const ortPrefill = (s: typeof gqaRope, extra = {}) => timeAsync(async () => {
      let [pk, pv]: OrtTensor[] = [f32(new Float32Array(0), [1, H, 0, D]), f32(new Float32Array(0), [1, H, 0, D])];
      for (const [i, c] of chunks.entries()) ({ k: pk, v: pv } = await gqaStep(s, c.data, [1, CH, DM], pk, pv, i * CH, extra));
    });
    await measure('W2', 'causal', threads, {
      kvstream: () => prefill(mhaRope, cacheRope),
      '~W2': () => prefill(mha, cachePlain),
      onnxruntime: () => ortPrefill(gqaRope, { cos_cache: rot.cos, sin_cache: rot.sin }),
      '~onnxruntime/W2': () => ortPrefill(gqaPlain),
      ...(torchRope ? { torch: torchRope, '~torch/W2': () => torch!.ask({ workload: 'W2', mask: 'causal' }) } : {}),
    }, moduleFlop, REPS, true, {
      base: { feature: 'rope' },
      annotate: (ms, made) => {
        for (const [key, row] of made) {
          const base = ms.get(key === 'kvstream' ? '~W2' : `~${key}/W2`)!;
          Object.assign(row, { baseline_ms: base, ratio_to_W2: row.median_ms / base });
          notes.set(row, `${(row.median_ms / base).toFixed(3)}x W2 without rope (${fmtMs(base)})${key === 'kvstream' ? ', target <= 1.05x' : ''}`);
        }
      },
    });
  }

  // ---- W3: decode over a 4096-token prompt, STEPS steps of one token per repetition ----
  const P = 4096;
  /** Bytes one position of one kv head takes in k plus v (int8: values and fp32 scales per 32 channels). */
  const kvRowBytes = (dt: CacheDtype) => 2 * (dt === 'fp32' ? 4 * D : dt === 'int8' ? D + 4 * Math.ceil(D / 32) : 2 * D);
  const weightBytes = 4 * (4 * DM * H * D + 3 * H * D + DM);
  /** Bytes a W3 step reads: the cache at the mean length P + (STEPS + 1) / 2, and the fp32 weights. */
  const stepBytes = (B: number, dt: CacheDtype) => Math.round(B * H * (P + (STEPS + 1) / 2) * kvRowBytes(dt) + weightBytes);
  const w3Cases = new Map<number, ReturnType<typeof w3Case>>();
  /** The W3 case for batch B: the prompt's k, v, an fp32 contiguous cache holding it, the decode inputs. */
  function w3Case(B: number) {
    const prompt = mha.projectKv(rng.normalTensor([B, P, DM]));
    const cache = mha.newCache(B, P + STEPS);
    cache.append(prompt.k, prompt.v);
    const xs = Array.from({ length: STEPS }, () => rng.normalTensor([B, 1, DM]));
    const out = { output: zeros([B, 1, DM]), lse: zeros([B, H, 1]) };
    /** One repetition over c (holding the prompt): crop to P, STEPS steps; ms per step. */
    const decode = (c: KvCache, fresh = false) => time(() => {
      c.crop(P);
      for (const xi of xs) mha.forward(xi, xi, fresh ? { cache: c, causal: true } : { cache: c, causal: true, out });
    }) / STEPS;
    return { prompt, cache, xs, out, decode };
  }
  const w3 = (B: number) => w3Cases.get(B) ?? w3Cases.set(B, w3Case(B)).get(B)!;
  // The plain read of the floor, over a buffer as large as the largest step wanted.
  const reader = plainRead(stepBytes(want('W3-b16') ? 16 : 1, 'fp32'), threads);

  for (const B of [1, 16]) {
    const workload = `W3-b${B}`;
    if (!want(workload)) continue;
    const { prompt, cache, xs, out, decode } = w3(B);
    // ORT's past is [2,B,H,P,d]: the same prompt keys and values.
    const pastData = new Float32Array(2 * B * H * P * D);
    pastData.set(prompt.k.data, 0);
    pastData.set(prompt.v.data, B * H * P * D);
    const s = await moduleSession(mha, true, true, threads);
    const kernelRun = (kernel: ReturnType<typeof cachedKernel>) => time(() => {
      kernel.reset(P);
      for (const xi of xs) kernel.step(xi);
    }) / STEPS;
    const kernel = cachedKernel(mha, B, P + STEPS);
    kernel.load(cache, P);
    const systems: Partial<Record<Key, Rep>> = {
      kvstream: () => decode(cache),
      'kvstream/fresh': () => decode(cache, true),
      'kvstream/kernel': () => kernelRun(kernel),
      onnxruntime: async () => (await timeAsync(async () => {
        let past: OrtTensor = f32(pastData, [2, B, H, P, D]);
        for (const xi of xs) past = (await s.run({ x: f32(xi.data, [B, 1, DM]), past })).present;
      })) / STEPS,
      ...(torch ? { torch: () => torch.ask({ workload, mask: 'none', steps: STEPS }) } : {}),
    };
    if (B === 1) {
      // onnxruntime's GroupQueryAttention module (its CPU kernel has fp16, not bf16 or int8): fp32 and
      // fp16 past tensors; each step copies the past into a new present, as the Attention op does.
      // Not at B 16: one 256-step run of the Attention op there already takes over a minute.
      for (const dt of ['fp32', 'fp16'] as const) {
        if (dt === 'fp16' && !CACHES.includes('fp16')) continue;
        const g = await gqaModuleSession(mha, threads, { cache: dt });
        const enc = dt === 'fp16' ? f16 : f32;
        const [k0, v0] = [enc(prompt.k.data, [B, H, P, D]), enc(prompt.v.data, [B, H, P, D])];
        systems[dt === 'fp32' ? 'onnxruntime/gqa' : 'onnxruntime/gqa@fp16'] = async () => (await timeAsync(async () => {
          let [pk, pv]: OrtTensor[] = [k0, v0];
          for (const [i, xi] of xs.entries()) ({ k: pk, v: pv } = await gqaStep(g, xi.data, [B, 1, DM], pk, pv, P + i));
        })) / STEPS;
      }
    }
    // The other storage types: the public API and the kernel over the same prompt, encoded.
    for (const dt of CACHES) {
      if (dt === 'fp32') continue;
      const c = mha.newCache(B, { capacity: P + STEPS, dtype: dt });
      c.append(prompt.k, prompt.v);
      const k = cachedKernel(mha, B, P + STEPS, NATIVE_DTYPE[dt]);
      k.load(cache, P);
      systems[`kvstream@${dt}`] = () => decode(c);
      systems[`kvstream/kernel@${dt}`] = () => kernelRun(k);
      const t = torch && dt !== 'int8' ? await torchSystem(torch, { workload, mask: 'none', steps: STEPS, cache: dt }, `${dt} cache`) : null;
      if (t) systems[`torch@${dt}`] = t;
    }
    for (const dt of new Set<CacheDtype>(['fp32', ...CACHES])) systems[`~floor@${dt}`] = () => reader.floor(stepBytes(B, dt));
    // b16: no warm-up, 3 repetitions of kvstream and the floors, but one run of the peers (ORT
    // copies a 268 MB past per step: one run takes over a minute).
    if (B === 16) for (const key of Object.keys(systems) as Key[]) if (/^(onnxruntime|torch)/.test(key)) systems[key] = once(systems[key]!);
    await measure(workload, 'causal', threads, systems, null, B === 16 ? Math.min(REPS, 3) : Math.min(REPS, 5), B === 1, {
      base: { cache: 'fp32' },
      annotate: (ms, made) => {
        for (const [key, row] of made) {
          const [sys, dt = 'fp32'] = key.split('@') as [string, CacheDtype?];
          const f32ms = ms.get(sys);
          if (dt !== 'fp32' && f32ms !== undefined) row.ratio_to_fp32 = row.median_ms / f32ms;
          const parts = row.ratio_to_fp32 === undefined ? [] : [`${(row.ratio_to_fp32 as number).toFixed(3)}x fp32${sys === 'kvstream' ? ` (target <= ${dt === 'int8' ? '0.35' : '0.55'}x)` : ''}`];
          if (row.system === 'kvstream' && row.variant !== 'fresh') {
            const bytes = stepBytes(B, dt), floor = ms.get(`~floor@${dt}`)!;
            Object.assign(row, { bytes_per_step: bytes, cache_bytes_per_step: bytes - weightBytes, gbps: bytes / row.median_ms / 1e6, floor_ms: floor, floor_gbps: bytes / floor / 1e6, of_floor: row.median_ms / floor });
            parts.push(`${(bytes / 1e6).toFixed(1)} MB/step at ${(bytes / row.median_ms / 1e6).toFixed(1)} GB/s = ${(row.median_ms / floor).toFixed(2)}x the plain read (${fmtMs(floor)}, ${(bytes / floor / 1e6).toFixed(1)} GB/s)${dt === 'fp32' && !row.variant ? ', target <= 1.10x' : ''}`);
          }
          if (parts.length) notes.set(row, parts.join('; '));
        }
      },
    });
    if (B === 16) w3Cases.delete(16);
  }

  if (want('W3-b1-paged')) {
    // W3-b1 over a paged cache (pages of 16 positions) against the contiguous cache, alternately.
    const { prompt, cache, decode } = w3(1);
    const paged = mha.newCache(1, { capacity: P + STEPS, pageSize: 16 });
    paged.append(prompt.k, prompt.v);
    await measure('W3-b1', 'causal', threads, { kvstream: () => decode(paged), '~W3-b1': () => decode(cache) }, null, Math.min(REPS, 5), true, {
      base: { cache: 'fp32', feature: 'paged', pageSize: 16 },
      annotate: (ms, made) => {
        for (const row of made.values()) {
          const base = ms.get('~W3-b1')!;
          Object.assign(row, { baseline_ms: base, ratio_to_W3_b1: row.median_ms / base });
          notes.set(row, `${(row.median_ms / base).toFixed(3)}x contiguous W3-b1 (${fmtMs(base)}), target <= 1.10x`);
        }
      },
    });
  }

  if (want('W6')) {
    // Decode at the end of a 32k stream through a ring cache of window 4096: the stream is appended
    // in chunks of 256 (the ring then holds the last 4096 + 255 positions), each repetition crops
    // back to 32768 and decodes STEPS tokens; W3-b1 (contiguous, 4096-token prompt) alternates with it.
    const [W, STREAM, CH6] = [4096, 32768, Math.max(256, STEPS)];
    const { cache, xs, out, decode } = w3(1);
    const ring = mha.newCache(1, { window: W });
    for (let s0 = 0; s0 < STREAM; s0 += CH6) {
      const kv = mha.projectKv(rng.normalTensor([1, CH6, DM]));
      ring.append(kv.k, kv.v);
    }
    const decodeRing = () => time(() => {
      ring.crop(STREAM);
      for (const xi of xs) mha.forward(xi, xi, { cache: ring, causal: true, out });
    }) / STEPS;
    const torchW6 = torch ? await torchSystem(torch, { workload: 'W6', mask: 'causal', steps: STEPS }, 'W6') : null;
    // onnxruntime: the module around GroupQueryAttention with local_window_size W and
    // sliding_window_cache=1 (a past buffer of the last W positions), against the same graph
    // without a window decoding after the W3 prompt (past growing from 4096).
    const [gqaW6, gqaW3] = [await gqaModuleSession(mha, threads, { window: W, slidingWindowCache: true }), await gqaModuleSession(mha, threads)];
    const held = ring.snapshot(); // [1,H,held,D], oldest first: ORT's buffer starts with the last W
    const lastW = (t: Tensor) => {
      const n = t.shape[2], out = new Float32Array(H * W * D);
      for (let h = 0; h < H; h++) out.set(t.data.subarray((h * n + n - W) * D, (h * n + n) * D), h * W * D);
      return f32(out, [1, H, W, D]);
    };
    const [w6k, w6v] = [lastW(held.k), lastW(held.v)];
    const w3Prompt = w3(1).prompt;
    const [w3k, w3v] = [f32(w3Prompt.k.data, [1, H, P, D]), f32(w3Prompt.v.data, [1, H, P, D])];
    /** A repetition from past tensors k0, v0 holding `past` positions (each repetition starts there again). */
    const ortDecode = (s: typeof gqaW6, k0: OrtTensor, v0: OrtTensor, past: number) => async () => (await timeAsync(async () => {
      let [pk, pv] = [k0, v0];
      for (const [i, xi] of xs.entries()) ({ k: pk, v: pv } = await gqaStep(s, xi.data, [1, 1, DM], pk, pv, past + i));
    })) / STEPS;
    await measure('W6', 'causal', threads, {
      kvstream: decodeRing,
      '~W3-b1': () => decode(cache),
      onnxruntime: ortDecode(gqaW6, w6k, w6v, STREAM),
      '~onnxruntime/W3-b1': ortDecode(gqaW3, w3k, w3v, P),
      ...(torchW6 ? { torch: torchW6, '~torch/W3-b1': () => torch!.ask({ workload: 'W3-b1', mask: 'none', steps: STEPS }) } : {}),
    }, null, Math.min(REPS, 5), true, {
      base: { cache: 'fp32', feature: 'window', window: W, stream: STREAM },
      annotate: (ms, made) => {
        for (const [key, row] of made) {
          const base = ms.get(key === 'kvstream' ? '~W3-b1' : `~${key}/W3-b1`)!;
          Object.assign(row, { baseline_ms: base, ratio_to_W3_b1: row.median_ms / base });
          notes.set(row, `${(row.median_ms / base).toFixed(3)}x ${key === 'kvstream' ? '' : `${key} `}W3-b1 (${fmtMs(base)})${key === 'kvstream' ? ', target <= 1.20x' : ''}`);
        }
      },
    });
  }
  if (want('W3-gqa')) {
    // Grouped-query decode, as Llama-, Mistral- and Qwen-style models run it: 32 query heads of 64
    // over 8 kv heads (d_model 512), batch 1, after a 4096-token prompt (the cache is W3's size:
    // 8 kv heads), STEPS steps of one token. Peer: onnxruntime's GroupQueryAttention module.
    const [HQ, HKV] = [32, 8];
    const gqa = MultiHeadAttention.random({ dModel: DM, numHeads: HQ, numKvHeads: HKV, dK: D }, 5);
    const prompt = gqa.projectKv(rng.normalTensor([1, P, DM]));
    const cache = gqa.newCache(1, P + STEPS);
    cache.append(prompt.k, prompt.v);
    const xs = Array.from({ length: STEPS }, () => rng.normalTensor([1, 1, DM]));
    const out = { output: zeros([1, 1, DM]), lse: zeros([1, HQ, 1]) };
    const decode = () => time(() => {
      cache.crop(P);
      for (const xi of xs) gqa.forward(xi, xi, { cache, causal: true, out });
    }) / STEPS;
    const g = await gqaModuleSession(gqa, threads);
    const [k0, v0] = [f32(prompt.k.data, [1, HKV, P, D]), f32(prompt.v.data, [1, HKV, P, D])];
    await measure('W3-gqa', 'causal', threads, {
      kvstream: decode,
      // The GroupQueryAttention module is this row's only onnxruntime peer (the table's ORT column).
      onnxruntime: async () => (await timeAsync(async () => {
        let [pk, pv]: OrtTensor[] = [k0, v0];
        for (const [i, xi] of xs.entries()) ({ k: pk, v: pv } = await gqaStep(g, xi.data, [1, 1, DM], pk, pv, P + i));
      })) / STEPS,
    }, null, Math.min(REPS, 5), true, { base: { cache: 'fp32', heads: HQ, kv_heads: HKV } });
  }
  await reader.close();
  w3Cases.clear();

  if (want('W4')) {
    const small = MultiHeadAttention.random({ dModel: 32, numHeads: 4 }, 3);
    const xs = rng.normalTensor([2, 8, 32]);
    const s = await moduleSession(small, false, false, threads);
    const N = 2000;
    const feeds = { x: f32(xs.data, [2, 8, 32]) };
    const out = { output: zeros([2, 8, 32]), lse: zeros([2, 4, 8]) };
    const kernel = fusedKernel(small, xs, false);
    await measure('W4', 'none', threads, {
      kvstream: () => time(() => {
        for (let i = 0; i < N; i++) small.forward(xs, xs, { out });
      }) / N,
      'kvstream/fresh': () => time(() => {
        for (let i = 0; i < N; i++) small.forward(xs, xs);
      }) / N,
      'kvstream/kernel': () => time(() => {
        for (let i = 0; i < N; i++) kernel();
      }) / N,
      onnxruntime: async () => (await timeAsync(async () => {
        for (let i = 0; i < N; i++) await s.run(feeds);
      })) / N,
      ...peer('W4', 'none'),
    }, null);
    // The same call through the RxJS operator path (streamed memory, one chunk).
    const viaRx = async () => (await timeAsync(async () => {
      for (let i = 0; i < N / 4; i++) await lastValueFrom(splitTokens(xs, 8).pipe(projectKv(small), attendChunk(small, xs)));
    })) / (N / 4);
    const samples: number[] = [];
    for (let r = 0; r < REPS; r++) samples.push(await viaRx());
    const row: Row = { workload: 'W4', mask: 'none', threads, system: 'kvstream', variant: 'rxjs', median_ms: median(samples), gflops: null };
    rows.push(row);
    printRows([row]);
  }
}

const save = () => writeFileSync(OUT, `${JSON.stringify({ machine, limits: Object.fromEntries(limit), rows }, null, 2)}\n`);
save();

// ---- W5: 1 GiB from disk, each run in its own process ----
if (want('W5') && !args['no-w5'] && !QUICK) {
  const path = join(tmpdir(), 'kvstream-bench-w5.npy');
  const S = 2 ** 30 / (DM * 4);
  if (!existsSync(path) || statSync(path).size < 2 ** 30) {
    console.log(`\nW5: writing ${path} (1 GiB, [1, ${S}, ${DM}])`);
    const fd = openSync(path, 'w');
    writeSync(fd, npyHeader([1, S, DM], '<f4'));
    const block = new Rng(9).normalTensor([1, 4096, DM]).data;
    for (let s = 0; s < S; s += 4096) writeSync(fd, new Uint8Array(block.buffer));
    closeSync(fd);
  }
  const run = (threads: number, mode: string, readAhead = '2') => {
    const r = spawnSync(process.execPath, ['--import=tsx', 'bench/w5.ts', path, String(threads), mode, readAhead], { encoding: 'utf8' });
    if (r.status !== 0 || !r.stdout.trim()) throw new Error(`bench/w5.ts ${threads} ${mode} ${readAhead} failed (exit ${r.status}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    return JSON.parse(r.stdout);
  };
  run(1, 'raw'); // warm the page cache
  // The stream's flops: k and v projections of every token, the 64 queries' attention over
  // them, and one output projection per chunk of 1024 (attendChunk emits a partial output).
  const [Q, CHUNK] = [64, 1024];
  const w5Flop = 2 * S * DM * 2 * H * D + 4 * H * Q * S * D + (S / CHUNK) * 2 * Q * H * D * DM + 2 * Q * DM * H * D;
  for (const threads of THREADS) {
    const raw = run(threads, 'raw');
    const compute = run(threads, 'compute');
    const stream = run(threads, 'stream');
    const noAhead = run(threads, 'stream', '0');
    const mib = stream.bytes / 2 ** 20;
    const limitMs = w5Flop / (limit.get(threads) ?? sgemmLimit(threads)) / 1e6;
    const row: Row = {
      workload: 'W5', mask: 'none', threads, system: 'kvstream', median_ms: stream.ms, gflops: w5Flop / stream.ms / 1e6,
      throughput_mib_s: mib / (stream.ms / 1e3), raw_read_mib_s: mib / (raw.ms / 1e3), peak_rss_mib: stream.maxRssMiB,
      compute_ms: compute.ms, compute_limit_ms: limitMs, no_read_ahead_ms: noAhead.ms, no_read_ahead_peak_rss_mib: noAhead.maxRssMiB,
    };
    rows.push(row);
    console.log(`W5         none   ${threads}  kvstream          ${(stream.ms / 1e3).toFixed(2)} s  ${(row.throughput_mib_s as number).toFixed(0)} MiB/s = ${((100 * stream.ms ** -1) / raw.ms ** -1).toFixed(1)}% of the disk source's raw ${(row.raw_read_mib_s as number).toFixed(0)} MiB/s; peak RSS ${stream.maxRssMiB.toFixed(0)} MiB`);
    console.log(`           compute alone (one chunk in memory) ${(compute.ms / 1e3).toFixed(2)} s; ${(w5Flop / 1e9).toFixed(0)} GFLOP at the addon's sgemm rate ${(limitMs / 1e3).toFixed(2)} s: the stream runs at ${(100 * limitMs / stream.ms).toFixed(0)}% of that limit, ${(100 * compute.ms / stream.ms).toFixed(0)}% of compute alone; without read-ahead ${(noAhead.ms / 1e3).toFixed(2)} s (peak RSS ${noAhead.maxRssMiB.toFixed(0)} MiB)`);
  }
}

save();
console.log(`\nwrote ${OUT}`);
process.exit(0);
