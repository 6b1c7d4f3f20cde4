// npm run bench: kvstream side by side with onnxruntime-node and PyTorch (when Debian's
// python3-torch is installed), same shapes, same thread counts, alternating repetitions,
// medians. Prints a table and writes bench/results.json.
//
// Rows per workload: `kvstream` is the public API in a steady-state loop (results written into
// reused `out` tensors, a preallocated cache); `kvstream/fresh` the same calls allocating their
// results; `kvstream/kernel` the binding alone on reused buffers (the calls the public API makes,
// without its checks and objects), so API overhead stays visible.
//
//   npm run bench -- [--reps N] [--threads 1,2] [--only W1-core,W3-b1,...] [--no-torch] [--no-w5]
//   KVSTREAM_BENCH_KEEP_OPENBLAS_ENV=1 keeps OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as they are.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { lastValueFrom } from 'rxjs';
import { attention } from '../src/attention.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import { addon, info, setNumThreads } from '../src/native.ts';
import { attendChunk, projectKv, splitTokens } from '../src/operators/index.ts';
import { Rng } from '../src/random.ts';
import { zeros } from '../src/tensor.ts';
import type { Tensor } from '../src/tensor.ts';
import { npyHeader } from '../src/io/npy.ts';
import { cachedKernel, coreKernel, fusedKernel } from './kernels.ts';
import { coreSession, f32, moduleSession, version as ortVersion } from './ort.ts';
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
  options: { reps: { type: 'string', default: '7' }, threads: { type: 'string', default: '1,2' }, only: { type: 'string' }, 'no-torch': { type: 'boolean' }, 'no-w5': { type: 'boolean' } },
});
const REPS = Number(args.reps);
const THREADS = args.threads!.split(',').map(Number);
const only = args.only?.split(',');
const want = (w: string) => !only || only.includes(w);

const [H, D, DM] = [8, 64, 512];
type System = 'kvstream' | 'onnxruntime' | 'torch';
type Variant = 'kernel' | 'fresh';
type SystemKey = System | `kvstream/${Variant}`;
interface Row { workload: string; mask: 'none' | 'causal'; threads: number; system: System; variant?: string; median_ms: number; gflops: number | null; [k: string]: unknown }
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

// ---- measurement ----
const rows: Row[] = [];
async function measure(workload: string, mask: 'none' | 'causal', threads: number, systems: Partial<Record<SystemKey, Rep>>, gflop: number | null, reps = REPS, warmUp = true) {
  const names = Object.keys(systems) as SystemKey[];
  const samples = new Map<SystemKey, number[]>(names.map((n) => [n, []]));
  if (warmUp) for (const n of names) await systems[n]!();
  for (let r = 0; r < reps; r++) for (const n of names) samples.get(n)!.push(await systems[n]!());
  for (const n of names) {
    const ms = median(samples.get(n)!);
    const [system, variant] = n.split('/') as [System, Variant | undefined];
    const row: Row = { workload, mask, threads, system, median_ms: ms, gflops: gflop === null ? null : gflop / ms / 1e6 * 1e3 / 1e3 };
    if (variant) row.variant = variant;
    rows.push(row);
  }
  printRows(rows.filter((x) => x.workload === workload && x.mask === mask && x.threads === threads));
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
  const ours = rs.find((r) => r.system === 'kvstream' && !r.variant);
  const kernel = rs.find((r) => r.system === 'kvstream' && r.variant === 'kernel');
  for (const r of rs) {
    let ratios = r === ours ? rs.filter((p) => p.system !== 'kvstream').map((p) => `${(r.median_ms / p.median_ms).toFixed(2)}x ${p.system}`).join(', ') : '';
    if (kernel && r.system === 'kvstream' && r !== kernel) ratios += `${ratios ? ', ' : ''}${(r.median_ms / kernel.median_ms).toFixed(3)}x kernel`;
    const lim = r.gflops !== null && r.workload.startsWith('W1') ? ` (${((100 * r.gflops) / limit.get(r.threads)!).toFixed(0)}% of sgemm)` : '';
    const unit = r.workload.startsWith('W3') ? 'ms/step' : r.workload === 'W4' ? 'ms/call' : 'ms';
    console.log(`${r.workload.padEnd(10)} ${r.mask.padEnd(6)} ${String(r.threads).padEnd(2)} ${(r.system + (r.variant ? `/${r.variant}` : '')).padEnd(16)} ${r.median_ms.toFixed(r.median_ms < 1 ? 4 : 1).padStart(9)} ${unit.padEnd(7)} ${r.gflops !== null ? `${r.gflops.toFixed(0).padStart(4)} GFLOP/s${lim}` : ''}${ratios ? `   kvstream/other: ${ratios}` : ''}`);
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

  if (want('W2')) {
    const CH = 256;
    const chunks = Array.from({ length: T / CH }, (_, i) => ({ data: x.data.slice(i * CH * DM, (i + 1) * CH * DM), shape: [1, CH, DM] }));
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

  for (const B of [1, 16]) {
    const workload = `W3-b${B}`;
    if (!want(workload)) continue;
    const [P, STEPS] = [4096, 256];
    const cache = mha.newCache(B, P + STEPS);
    const prompt = mha.projectKv(rng.normalTensor([B, P, DM]));
    cache.append(prompt.k, prompt.v);
    const xs = Array.from({ length: STEPS }, () => rng.normalTensor([B, 1, DM]));
    // ORT's past is [2,B,H,P,d]: the same prompt keys and values.
    const pastData = new Float32Array(2 * B * H * P * D);
    pastData.set(prompt.k.data, 0);
    pastData.set(prompt.v.data, B * H * P * D);
    const s = await moduleSession(mha, true, true, threads);
    const out = { output: zeros([B, 1, DM]), lse: zeros([B, H, 1]) };
    const kernel = cachedKernel(mha, B, P + STEPS);
    kernel.load(cache, P);
    await measure(workload, 'causal', threads, {
      kvstream: () => time(() => {
        cache.crop(P);
        for (const xi of xs) mha.forward(xi, xi, { cache, causal: true, out });
      }) / STEPS,
      'kvstream/fresh': () => time(() => {
        cache.crop(P);
        for (const xi of xs) mha.forward(xi, xi, { cache, causal: true });
      }) / STEPS,
      'kvstream/kernel': () => time(() => {
        kernel.reset(P);
        for (const xi of xs) kernel.step(xi);
      }) / STEPS,
      onnxruntime: async () => (await timeAsync(async () => {
        let past: OrtTensor = f32(pastData, [2, B, H, P, D]);
        for (const xi of xs) past = (await s.run({ x: f32(xi.data, [B, 1, DM]), past })).present;
      })) / STEPS,
      ...(torch ? { torch: () => torch.ask({ workload, mask: 'none' }) } : {}),
    }, null, B === 16 ? 1 : Math.min(REPS, 5), B === 1); // b16: one 256-step run each (ORT copies a 268 MB past per step)
  }

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

const save = () => writeFileSync('bench/results.json', `${JSON.stringify({ machine, limits: Object.fromEntries(limit), rows }, null, 2)}\n`);
save();

// ---- W5: 1 GiB from disk, each run in its own process ----
if (want('W5') && !args['no-w5']) {
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
console.log('\nwrote bench/results.json');
process.exit(0);
