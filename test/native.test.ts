// The loader and the binding under hostile use: nothing a caller does crashes the process
// (issue 7's crashes, each reproduced here), the thread pool's error and nesting rules, the
// thread-count variable, and kernels running from several worker_threads at once.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { MultiHeadAttention } from '../src/mha.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../src/io/npy.ts';
import { ADDON_PATH, binding, getKernelPath, info, kernelCounts, packDims, packMhaDims, resetKernelCounts, setKernelPath, setNumThreads, threadsFromEnv } from '../src/native.ts';
import type { KvDtype } from '../src/native.ts';
import { Rng } from '../src/random.ts';
import { assertWithin } from './helpers/assert.ts';
import { refAttentionBound, refKeepMask } from './helpers/reference.ts';

const dims = { B: 1, H: 2, Hkv: 1, T: 3, S: 5, sCap: 5, dK: 4, dV: 4 };
const opts = { scale: 0.5, causal: false, qOffset: 0, sOffset: 0, dropoutP: 0, seed: 0 };
const f = (n: number) => new Float32Array(n);
const args = () => [f(24), f(20), f(20), f(6).fill(-Infinity), f(6), f(24)] as const;

test('a throwing getter or a Proxy in dims or opts gives a TypeError naming the field', (t) => {
  const throwing = { ...dims, get T(): number { throw new Error('boom'); } };
  t.throws(() => binding.attnUpdate(throwing, opts, ...args()), { instanceOf: TypeError, message: 'attnUpdate: dims.T could not be read (it threw: Error: boom)' });
  const badOpts = { ...opts, get seed(): number { throw new Error('no seed'); } };
  t.throws(() => binding.attnProbs(dims, badOpts, f(24), f(20), f(6), null, null), { instanceOf: TypeError, message: /attnProbs: opts.seed could not be read/ });
  const proxy = new Proxy(dims, { get() { throw new Error('trap'); } });
  t.throws(() => binding.attnUpdate(proxy, opts, ...args()), { instanceOf: TypeError, message: 'attnUpdate: dims must be an Int32Array or a plain object, got a Proxy' });
  t.throws(() => binding.attnUpdate(dims, new Proxy(opts, {}), ...args()), { instanceOf: TypeError, message: 'attnUpdate: opts must be a plain object, got a Proxy' });
  const mha = { B: 1, T: 1, S: 1, dModel: 1, dKvIn: 1, dOut: 1, H: 1, Hkv: 1, dK: 1, get dV(): number { throw new RangeError('x'); } };
  t.throws(() => binding.mhaForward(mha, opts, f(1), f(1), f(1), null, f(1), null, f(1), null, f(1), null, f(1), f(1)), { instanceOf: TypeError, message: /mhaForward: dims.dV could not be read/ });
});

test('dims packed in an Int32Array (packDims order) give the object form\'s result; a bad pack is a RangeError naming the field', (t) => {
  const rng = new Rng(3);
  const [q, k, v] = [rng.normalTensor([1, 2, 3, 4]).data, rng.normalTensor([1, 1, 5, 4]).data, rng.normalTensor([1, 1, 5, 4]).data];
  const run = (d: Parameters<typeof binding.attnUpdate>[0]) => {
    const [m, l, acc] = [f(6).fill(-Infinity), f(6), f(24)];
    binding.attnUpdate(d, opts, q, k, v, m, l, acc);
    return [...m, ...l, ...acc];
  };
  t.deepEqual(run(packDims(dims)), run(dims));
  t.throws(() => run(packDims(dims).subarray(1)), { instanceOf: RangeError, message: 'attnUpdate: expected dims as an Int32Array [B,H,Hkv,T,S,sCap,dK,dV] (8 values), got 7' });
  const zeroT = packDims(dims);
  zeroT[3] = 0;
  t.throws(() => run(zeroT), { instanceOf: RangeError, message: 'attnUpdate: dims[3] (T) must be an integer in [1, 2147483647], got 0' });
  const big = packDims(dims);
  big[4] = 6;  // S past sCap
  t.throws(() => run(big), { instanceOf: RangeError, message: 'attnUpdate: dims.sCap must be >= dims.S, got sCap=5, S=6' });
  t.throws(() => packDims({ ...dims, S: 2 ** 31 }), { message: 'Expected dims.S to be a 32-bit integer, got 2147483648' });
  const mha = { B: 1, T: 2, S: 3, dModel: 4, dKvIn: 4, dOut: 4, H: 2, Hkv: 1, dK: 2, dV: 2 };
  const w = (n: number) => rng.normalTensor([n]).data;
  const [xQ, xKv, wQ, wK, wV, wO] = [w(8), w(12), w(16), w(8), w(8), w(16)];
  const forward = (d: Parameters<typeof binding.mhaForward>[0]) => {
    const [y, lse] = [f(8), f(4)];
    binding.mhaForward(d, opts, xQ, xKv, wQ, null, wK, null, wV, null, wO, null, y, lse);
    return [...y, ...lse];
  };
  t.deepEqual(forward(packMhaDims(mha)), forward(mha));
  t.throws(() => forward(new Int32Array(9)), { instanceOf: RangeError, message: 'mhaForward: expected dims as an Int32Array [B,T,S,dModel,dKvIn,dOut,H,Hkv,dK,dV] (10 values), got 9' });
});

test('a getter on opts.sStart that detaches an output buffer is read before any pointer is taken: a RangeError, no write through freed memory', (t) => {
  const [q, k, v, m, l, acc] = args();
  const evil = { ...opts, get sStart(): number { structuredClone(acc.buffer, { transfer: [acc.buffer] }); return 0; } };
  t.throws(() => binding.attnUpdate(dims, evil, q, k, v, m, l, acc), { instanceOf: RangeError, message: /^attnUpdate: expected acc \[B,H,T,d_v\]=\[1,2,3,4\] \(24 floats\), got 0$/ });
  t.is(acc.length, 0, 'the getter did detach acc');
});

const teardown = (mode: string) => spawnSync(process.execPath, ['--expose-gc', fileURLToPath(new URL('./helpers/async-teardown.cjs', import.meta.url)), mode],
  { env: { ...process.env, KVSTREAM_ADDON: ADDON_PATH }, encoding: 'utf8', timeout: 60_000 });

test('attnUpdateAsync holds its buffers: transferring them away, collected and reused meanwhile, cannot crash', (t) => {
  const r = teardown('transfer');
  t.is(r.signal, null, r.stderr);
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), 'transfer: detached true, callback error none');
});

test('a worker terminated, or the process exiting, while a worker\'s attnUpdateAsync runs exits cleanly', (t) => {
  for (const mode of ['terminate', 'exit']) {
    const r = teardown(mode);
    t.is(r.signal, null, `${mode}: ${r.stderr}`);
    t.is(r.status, 0, `${mode}: ${r.stderr}`);
  }
});

test('attnUpdateAsync refuses shared and resizable buffers, which another thread could change or shrink', (t) => {
  const [q, k, v, m, l, acc] = args();
  const shared = new Float32Array(new SharedArrayBuffer(24 * 4));
  t.throws(() => binding.attnUpdateAsync(dims, opts, shared, k, v, m, l, acc, () => {}), { instanceOf: TypeError, message: 'attnUpdateAsync: q must be backed by a plain ArrayBuffer, got a SharedArrayBuffer' });
  const Resizable = ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer;
  const resizable = new Float32Array(new Resizable(24 * 4, { maxByteLength: 1024 }));
  t.throws(() => binding.attnUpdateAsync(dims, opts, q, k, v, m, l, resizable, () => {}), { instanceOf: TypeError, message: 'attnUpdateAsync: acc must be backed by a plain ArrayBuffer, got a resizable ArrayBuffer' });
});

test('KVSTREAM_NUM_THREADS is parsed strictly and capped; a bad value is an error at first use, not a crash', (t) => {
  t.is(threadsFromEnv(''), undefined);  // empty = unset (undefined would read the real variable)
  t.is(threadsFromEnv('2'), 2);
  t.is(threadsFromEnv('256'), 256);
  for (const bad of ['0', '-1', 'abc', '1e9', '100000000', ' 2', '2x', '257', '1.5']) {
    t.throws(() => threadsFromEnv(bad), { name: 'ArgumentError', message: `Expected KVSTREAM_NUM_THREADS an integer in [1, 256], got ${JSON.stringify(bad)}` });
  }
  const run = (value: string) => spawnSync(process.execPath, ['--import', 'tsx', '-e', "import('./src/native.ts').then((n) => console.log(n.info().threads))"],
    { env: { ...process.env, KVSTREAM_NUM_THREADS: value }, encoding: 'utf8' });
  const huge = run('100000000');
  t.is(huge.signal, null, huge.stderr);
  t.not(huge.status, 0);
  t.regex(huge.stderr, /ArgumentError: Expected KVSTREAM_NUM_THREADS an integer in \[1, 256\], got "100000000"/);
  const ok = run('1');
  t.is(ok.status, 0, ok.stderr);
  t.is(ok.stdout.trim(), '1');
});

/** The level vmath should pick here by /proc/cpuinfo's flags (Linux x86-64), else undefined. */
function cpuinfoLevel(): string | undefined {
  if (process.platform !== 'linux' || process.arch !== 'x64' || !existsSync('/proc/cpuinfo')) return undefined;
  const flags = new Set(/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].trim().split(/\s+/) ?? []);
  return flags.has('fma') && flags.has('avx512f') ? 'avx512f' : flags.has('fma') && flags.has('avx2') ? 'avx2' : 'baseline';
}

/** The tile runs at vmath's level: AVX-512F or AVX2 + FMA, unless KVSTREAM_TILE=off. */
const tileExpected = (vmath: string, tileEnv: string | undefined) => vmath !== 'baseline' && tileEnv !== 'off';

/**
 * info().vmath and info().tile in a child process with KVSTREAM_VMATH set to `value` (unset:
 * undefined) and KVSTREAM_TILE as in `extraEnv` (unset otherwise).
 */
function childLevels(t: ExecutionContext, value: string | undefined, extraEnv: Record<string, string> = {}): { vmath: string; tile: boolean } {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extraEnv, KVSTREAM_VMATH: value };
  if (value === undefined) delete env.KVSTREAM_VMATH;
  if (extraEnv.KVSTREAM_TILE === undefined) delete env.KVSTREAM_TILE;
  const code = "import('./src/native.ts').then((n) => console.log(JSON.stringify({ vmath: n.info().vmath, tile: n.info().tile })))";
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', code], { env, encoding: 'utf8' });
  t.is(r.signal, null, `KVSTREAM_VMATH=${value}: killed by ${r.signal}`);
  t.is(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { vmath: string; tile: boolean };
}

test('info().vmath is what the CPU supports; KVSTREAM_VMATH lowers it at load, never raises it; the tile follows it', (t) => {
  t.true(['avx512f', 'avx2', 'baseline'].includes(info().vmath), info().vmath);
  t.is(info().tile, tileExpected(info().vmath, process.env.KVSTREAM_TILE), `this process: tile at vmath ${info().vmath}, KVSTREAM_TILE=${process.env.KVSTREAM_TILE}`);
  const cpu = childLevels(t, undefined);  // this process itself may run under the variables
  const expected = cpuinfoLevel();
  if (expected) t.is(cpu.vmath, expected, 'the level /proc/cpuinfo\'s flags give (fma with avx512f or avx2)');
  else t.log('no /proc/cpuinfo on this platform: the unset level is not cross-checked');
  t.is(cpu.tile, tileExpected(cpu.vmath, undefined), `tile at vmath ${cpu.vmath}`);
  t.deepEqual(childLevels(t, 'baseline'), { vmath: 'baseline', tile: false });
  const avx2 = cpu.vmath === 'baseline' ? 'baseline' : 'avx2';
  t.deepEqual(childLevels(t, 'avx2'), { vmath: avx2, tile: avx2 === 'avx2' });
  t.deepEqual(childLevels(t, undefined, { KVSTREAM_TILE: 'off' }), { vmath: cpu.vmath, tile: false }, 'KVSTREAM_TILE=off');
});

// Hardened toolchains (-z now) and LD_BIND_NOW bind every symbol as the addon loads, before its
// static initialisers run: code that runs during binding (an ifunc resolver) must not call
// through a relocation not yet done. A resolver calling getenv crashed the load this way.
test('the addon loads and runs with every symbol bound at load (LD_BIND_NOW=1)', (t) => {
  const script = "import('./src/native.ts').then((n) => { const f = (k) => new Float32Array(k); const m = f(8).fill(-Infinity);"
    + " n.addon.attnUpdate(n.packDims({ B: 1, H: 8, Hkv: 1, T: 1, S: 4, sCap: 4, dK: 4, dV: 4 }), { scale: 1, causal: false, qOffset: 0, sOffset: 0, dropoutP: 0, seed: 0 },"
    + " f(32).fill(1), f(16).fill(1), f(16).fill(2), m, f(8), f(32)); console.log(n.info().vmath, m[0]); })";
  const cpu = childLevels(t, undefined).vmath;
  for (const vmath of [undefined, 'baseline']) {
    const env = { ...process.env, LD_BIND_NOW: '1', KVSTREAM_VMATH: vmath };
    if (vmath === undefined) delete env.KVSTREAM_VMATH;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { env, encoding: 'utf8' });
    t.is(r.signal, null, `KVSTREAM_VMATH=${vmath}: killed by ${r.signal}`);
    t.is(r.status, 0, r.stderr);
    // m = 4: each score is 1·1 summed over d 4, on the level the variable asks for.
    t.is(r.stdout.trim(), `${vmath ?? cpu} 4`, `KVSTREAM_VMATH=${vmath}: level and fold`);
  }
});

test.serial('the pool rethrows a task\'s exception on the caller after every task finished, and nests without deadlock', (t) => {
  const before = info().threads;
  try {
    for (const threads of [1, 2]) {
      setNumThreads(threads);
      t.is(binding.poolCheck(64, -1), 64 * 8, 'every nested step ran');
      t.throws(() => binding.poolCheck(64, 17), { instanceOf: Error, message: 'poolCheck: internal error: task 17 failed' });
      t.is(binding.poolCheck(5, -1), 40, 'the pool is whole after a failed job');
    }
  } finally {
    setNumThreads(before);
  }
});

/** y [M,N] = x [M,K] · w [K,N] + b in float64, and the largest |y - y32| with its place. */
function linearError(x: Float32Array, w: Float32Array, b: Float32Array, y: Float32Array, M: number, K: number, N: number) {
  let worst = { diff: 0, at: '', bound: 0 };
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = b[j]!, abs = Math.abs(b[j]!);
      for (let c = 0; c < K; c++) {
        s += x[i * K + c]! * w[c * N + j]!;
        abs += Math.abs(x[i * K + c]! * w[c * N + j]!);
      }
      const diff = Math.abs(s - y[i * N + j]!);
      // fp32 dot product of length K in any order: |error| <= K·u·Σ|x·w| (u = 2^-24), plus the final rounding.
      const bound = (K + 2) * 2 ** -24 * abs;
      if (diff - bound > worst.diff - worst.bound) worst = { diff, at: `[${i},${j}]`, bound };
    }
  }
  return worst;
}

test.serial('wide linear (N >= 1024) and a d_model 1024 module at 2 threads: right numbers, no crash', (t) => {
  const before = info().threads;
  const rng = new Rng(9);
  try {
    setNumThreads(2);
    for (const [M, K, N] of [[64, 96, 1024], [7, 128, 1040], [2, 64, 2048]] as const) {
      const x = rng.normalTensor([M, K]).data, w = rng.normalTensor([K, N]).data, b = rng.normalTensor([N]).data, y = f(M * N);
      binding.linear(x, w, b, y, M, K, N);
      const e = linearError(x, w, b, y, M, K, N);
      t.true(e.diff <= e.bound, `linear ${M}x${K}x${N}: largest error ${e.diff} at ${e.at} over the bound ${e.bound}`);
    }
    const mha = MultiHeadAttention.random({ dModel: 1024, numHeads: 8 }, 1);
    const x = rng.normalTensor([1, 40, 1024]);
    const r = mha.forward(x, x);
    t.deepEqual(r.output.shape, [1, 40, 1024]);
    t.true(r.output.data.every(Number.isFinite));
  } finally {
    setNumThreads(before);
  }
});

test.serial('kernels run from several worker_threads and the main thread at once; a worker loading the addon keeps the thread count', async (t) => {
  const before = info().threads;
  try {
    setNumThreads(2);
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      {
        const binding = require(workerData.addon);  // the raw addon: tsx's hooks don't reach eval workers
        const { dims, opts, n } = workerData;
        const q = new Float32Array(dims.B * dims.H * dims.T * dims.dK).map((_, i) => Math.sin(i));
        const k = new Float32Array(dims.B * dims.Hkv * dims.sCap * dims.dK).map((_, i) => Math.cos(i));
        let sum = 0;
        for (let i = 0; i < n; i++) {
          const m = new Float32Array(dims.B * dims.H * dims.T).fill(-Infinity), l = new Float32Array(m.length), acc = new Float32Array(m.length * dims.dV);
          binding.attnUpdate(dims, opts, q, k, k, m, l, acc);
          sum += acc[acc.length - 1] / l[l.length - 1];
        }
        parentPort.postMessage({ sum, threads: binding.info().threads });
      }`;
    const work = { dims: { B: 1, H: 4, Hkv: 2, T: 40, S: 600, sCap: 600, dK: 32, dV: 32 }, opts, n: 20, addon: ADDON_PATH };
    const run = () => new Promise<{ sum: number; threads: number }>((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: work });
      w.once('message', resolve);
      w.once('error', reject);
    });
    const pending = Promise.all([run(), run(), run()]);
    const q = new Float32Array(4 * 40 * 32).fill(0.1), kv = new Float32Array(2 * 600 * 32).fill(0.2);
    // Every key weighs the same, so the output is 0.2 up to acc's and l's float32 sums of 600
    // terms, each within 600·2⁻²⁴ relative (the tile sums them in key order: ~6e-6 relative).
    const bound = 0.2 * 2 * 600 * 2 ** -24;
    for (let i = 0; i < 20; i++) {  // the main thread computes meanwhile
      const m = f(160).fill(-Infinity), l = f(160), acc = f(160 * 32);
      binding.attnUpdate(work.dims, opts, q, kv, kv, m, l, acc);
      const diff = Math.abs(acc[0]! / l[0]! - 0.2);
      t.true(diff <= bound, `main thread, call ${i}: output ${acc[0]! / l[0]!} is ${diff} from 0.2 (bound ${bound})`);
    }
    const results = await pending;
    for (const r of results) {
      t.is(r.threads, 2, 'loading the addon in a worker did not reset the pool');
      t.true(Math.abs(r.sum - results[0]!.sum) <= 1e-5 * Math.abs(results[0]!.sum), `${r.sum} vs ${results[0]!.sum}`);
    }
    setNumThreads(1);
    await run().then((r) => t.is(r.threads, 1, 'a count set by the user survives a worker loading the addon'));
  } finally {
    setNumThreads(before);
  }
});

// ---------------------------------------------------------------------------------------------
// Cache storage dtypes: the kernels read fp16, bf16 and int8 (q8: one scale per row and 32
// channels) storage directly. Against the float64 reference over the dequantized cache, any
// path must stay within the fp32 bound: the storage error itself is the caller's choice.

/** x [rows, d] -> int8 values and scales [rows, ceil(d/32)]: symmetric, round half away from zero. */
function quantizeQ8(x: Float32Array, d: number): { q: Int8Array; scale: Float32Array; deq: Float32Array } {
  const rows = x.length / d, groups = Math.ceil(d / 32);
  const q = new Int8Array(x.length), scale = new Float32Array(rows * groups), deq = new Float32Array(x.length);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      let max = 0;
      for (let c = g * 32; c < Math.min(d, g * 32 + 32); c++) max = Math.max(max, Math.abs(x[r * d + c]!));
      const s = Math.fround(max / 127);
      scale[r * groups + g] = s;
      for (let c = g * 32; c < Math.min(d, g * 32 + 32); c++) {
        q[r * d + c] = s === 0 ? 0 : Math.sign(x[r * d + c]!) * Math.round(Math.abs(x[r * d + c]!) / s);
        deq[r * d + c] = Math.fround(q[r * d + c]! * s);  // what the kernel computes: one fp32 product
      }
    }
  return { q, scale, deq };
}

test.serial('the kernels read fp16, bf16 and int8 cache storage on every path, within the fp32 bound of the dequantized cache', (t) => {
  const rng = new Rng(21);
  const cases = [
    { B: 1, H: 4, Hkv: 2, T: 1, S: 300, dK: 40, dV: 24, causal: false, p: 0 },  // decode, rows path
    { B: 2, H: 2, Hkv: 1, T: 5, S: 130, dK: 64, dV: 64, causal: true, p: 0.2 },  // stacked rows, dropout
    { B: 1, H: 2, Hkv: 2, T: 40, S: 600, dK: 32, dV: 48, causal: true, p: 0 },  // query blocks, two key blocks
  ];
  const before = getKernelPath();
  try {
    for (const c of cases) {
      const dims = { ...c, sCap: c.S };
      const q = rng.normalTensor([c.B, c.H, c.T, c.dK]).data;
      const k = rng.normalTensor([c.B, c.Hkv, c.S, c.dK]).data, v = rng.normalTensor([c.B, c.Hkv, c.S, c.dV]).data;
      const kq = quantizeQ8(k, c.dK), vq = quantizeQ8(v, c.dV);
      const stores = {
        f16: { k: f32ToF16(k), v: f32ToF16(v), kd: f16ToF32(f32ToF16(k)), vd: f16ToF32(f32ToF16(v)), extra: [] as Float32Array[] },
        bf16: { k: f32ToBf16(k), v: f32ToBf16(v), kd: bf16ToF32(f32ToBf16(k)), vd: bf16ToF32(f32ToBf16(v)), extra: [] as Float32Array[] },
        i8: { k: kq.q, v: vq.q, kd: kq.deq, vd: vq.deq, extra: [kq.scale, vq.scale] },
      };
      const opts = { scale: 1 / Math.sqrt(c.dK), causal: c.causal, qOffset: c.S - c.T, sOffset: 0, dropoutP: c.p, seed: 4 };
      const keep = c.p > 0 ? refKeepMask(c, c.p, 4, opts.qOffset) : undefined;
      for (const [dtype, s] of Object.entries(stores)) {
        const ref = refAttentionBound(q, s.kd, s.vd, c, { scale: opts.scale, causal: c.causal, qOffset: opts.qOffset, keep, p: c.p, rescales: Math.ceil(c.S / 64) + 4 });
        for (const path of ['auto', 'blas', 'rows', 'deterministic'] as const) {
          setKernelPath(path);
          const rows = c.B * c.H * c.T;
          const m = f(rows).fill(-Infinity), l = f(rows), acc = f(rows * c.dV), out = f(rows * c.dV), lse = f(rows);
          binding.attnUpdate(dims, { ...opts, kvDtype: dtype as KvDtype }, q, s.k, s.v, m, l, acc, ...(s.extra.length ? s.extra : [null, null]) as [Float32Array, Float32Array]);
          binding.attnFinalize(rows, c.dV, m, l, acc, out, lse);
          const label = `${dtype} ${path} T${c.T} S${c.S}`;
          assertWithin(t, out, ref.out, ref.outBound, `${label} output`, [c.B, c.H, c.T, c.dV]);
          assertWithin(t, lse, ref.lse, ref.lseBound, `${label} lse`, [c.B, c.H, c.T]);
        }
      }
    }
  } finally {
    setKernelPath(before);
  }
});

test('storage arrays are checked against opts.kvDtype, and int8 needs its scales', (t) => {
  const [q, , , m, l, acc] = args();
  const h = (n: number) => new Uint16Array(n), i8 = (n: number) => new Int8Array(n);
  t.throws(() => binding.attnUpdate(dims, { ...opts, kvDtype: 'f16' } as never, q, f(20), h(20), m, l, acc), { instanceOf: TypeError, message: "attnUpdate: k must be a Uint16Array for kvDtype 'f16', got Float32Array" });
  t.throws(() => binding.attnUpdate(dims, { ...opts, kvDtype: 'i8' } as never, q, i8(20), i8(20), m, l, acc), { instanceOf: TypeError, message: "attnUpdate: int8 storage (opts.kvDtype 'i8') needs kScale and vScale arguments" });
  t.throws(() => binding.attnUpdate(dims, { ...opts, kvDtype: 'i8' } as never, q, i8(20), i8(20), m, l, acc, f(5), f(4)), { instanceOf: RangeError, message: 'attnUpdate: expected vScale [B,H_kv,S_cap,ceil(d_v/32)]=[1,1,5,1] (5 floats), got 4' });
  t.throws(() => binding.attnUpdate(dims, { ...opts, kvDtype: 'bf16' } as never, q, h(20), h(20), m, l, acc, f(5), f(5)), { instanceOf: TypeError, message: "attnUpdate: kScale and vScale must be null unless opts.kvDtype is 'i8', got Float32Array and Float32Array" });
  t.throws(() => binding.attnUpdate(dims, { ...opts, kvDtype: 'fp8' } as never, q, h(20), h(20), m, l, acc), { instanceOf: RangeError, message: "attnUpdate: opts.kvDtype must be one of 'f32', 'f16', 'bf16', 'i8', got 'fp8'" });
  t.throws(() => binding.attnUpdate(dims, opts, q, f(20), f(20), m, l, acc, null as never), { instanceOf: TypeError, message: 'attnUpdate: expected 8 or 10 arguments, got 9' });
});

test('a scratch buffer over the limit is a RangeError naming its size, before anything is allocated', (t) => {
  const d = { B: 1, T: 1, S: 65536, dModel: 1, dKvIn: 1, dOut: 1, H: 16, Hkv: 16, dK: 1024, dV: 1 };
  t.throws(() => binding.mhaForward(d, opts, f(1), f(65536), f(16 * 1024), null, f(16 * 1024), null, f(16), null, f(16), null, f(1), f(16)),
    { instanceOf: RangeError, message: 'mhaForward: mha_forward scratch of 1074806848 elements (4100.1 MiB) exceeds the 2048 MiB limit' });
});

test.serial('a NaN in q or k gives NaN output and lse for the rows that see it, on every path', (t) => {
  const d = { B: 1, H: 2, Hkv: 1, T: 3, S: 40, sCap: 40, dK: 8, dV: 4 };
  const rng = new Rng(5);
  const q = rng.normalTensor([1, 2, 3, 8]).data, k = rng.normalTensor([1, 1, 40, 8]).data, v = rng.normalTensor([1, 1, 40, 4]).data;
  q[1 * 8 + 2] = NaN;  // head 0, query 1
  k[30 * 8 + 5] = NaN;  // key 30: causal queries at 37..39 all see it
  const before = getKernelPath();
  try {
    for (const path of ['auto', 'blas', 'rows', 'deterministic'] as const) {
      setKernelPath(path);
      for (const causal of [false, true]) {
        const m = f(6).fill(-Infinity), l = f(6), acc = f(24), out = f(24), lse = f(6);
        binding.attnUpdate(d, { ...opts, causal, qOffset: 37 }, q, k, v, m, l, acc);
        binding.attnFinalize(6, 4, m, l, acc, out, lse);
        t.true(lse.every(Number.isNaN), `${path} causal=${causal}: lse ${[...lse]}`);
        t.true(out.every(Number.isNaN), `${path} causal=${causal}: output ${[...out]}`);
      }
    }
  } finally {
    setKernelPath(before);
  }
});

test.serial('tiny heads: a NaN key poisons only the rows that see it, within one vector of rows', (t) => {
  // H 4 over one kv head, T 4: 16 rows per kv head, two vectors of eight in tiny_update. Causal at
  // qOffset 596 over 600 keys (two blocks of 512), so key 598, in the second block, is seen by
  // queries 2 and 3 of each head only.
  const d = { B: 1, H: 4, Hkv: 1, T: 4, S: 600, sCap: 600, dK: 8, dV: 4 };
  const rng = new Rng(6);
  const q = rng.normalTensor([1, 4, 4, 8]).data, k = rng.normalTensor([1, 1, 600, 8]).data, v = rng.normalTensor([1, 1, 600, 4]).data;
  const bad = k.slice();
  bad[598 * 8 + 3] = NaN;
  const before = getKernelPath();
  try {
    for (const path of ['auto', 'rows'] as const) {
      setKernelPath(path);
      resetKernelCounts();
      const run = (keys: Float32Array) => {
        const m = f(16).fill(-Infinity), l = f(16), acc = f(64), out = f(64), lse = f(16);
        binding.attnUpdate(d, { ...opts, causal: true, qOffset: 596 }, q, keys, v, m, l, acc);
        binding.attnFinalize(16, 4, m, l, acc, out, lse);
        return { out, lse };
      };
      const clean = run(k), poisoned = run(bad);
      t.is(kernelCounts()['attn.rows.tiny'], 2, `${path}: tiny_update ran`);
      for (let r = 0; r < 16; r++) {
        const sees = r % 4 >= 2;
        const row = poisoned.out.subarray(r * 4, r * 4 + 4);
        if (sees) t.true(Number.isNaN(poisoned.lse[r]) && row.every(Number.isNaN), `${path} row ${r}: NaN expected, got lse ${poisoned.lse[r]}`);
        else t.deepEqual([poisoned.lse[r], ...row], [clean.lse[r], ...clean.out.subarray(r * 4, r * 4 + 4)], `${path} row ${r}: unchanged by a key it does not see`);
      }
    }
  } finally {
    setKernelPath(before);
  }
});

test.serial('the deterministic path gives the same bits at 1 and 2 threads (attention, probabilities, linear, the module)', (t) => {
  const before = { threads: info().threads, path: getKernelPath() };
  const rng = new Rng(8);
  const d = { B: 2, H: 4, Hkv: 2, T: 37, S: 700, sCap: 700, dK: 24, dV: 40 };
  const q = rng.normalTensor([2, 4, 37, 24]).data, k = rng.normalTensor([2, 2, 700, 24]).data, v = rng.normalTensor([2, 2, 700, 40]).data;
  const x = rng.normalTensor([70, 96]).data, w = rng.normalTensor([96, 1040]).data;
  const o = { ...opts, causal: true, qOffset: 663, dropoutP: 0.1, seed: 3 };
  const run = () => {
    const rows = 2 * 4 * 37;
    const m = f(rows).fill(-Infinity), l = f(rows), acc = f(rows * 40), out = f(rows * 40), lse = f(rows), probs = f(rows * 700), y = f(70 * 1040);
    binding.attnUpdate(d, o, q, k, v, m, l, acc);
    binding.attnFinalize(rows, 40, m, l, acc, out, lse);
    binding.attnProbs(d, o, q, k, lse, probs, null);
    binding.linear(x, w, null, y, 70, 96, 1040);
    return [out, lse, probs, y].map((a) => Buffer.from(a.buffer));
  };
  try {
    setKernelPath('deterministic');
    setNumThreads(1);
    const one = run();
    setNumThreads(2);
    const two = run();
    one.forEach((a, i) => t.true(a.equals(two[i]!), `array ${i} differs between 1 and 2 threads`));
  } finally {
    setKernelPath(before.path);
    setNumThreads(before.threads);
  }
});

// ---------------------------------------------------------------------------------------------
// Score modifiers: softcap, ALiBi, sliding window, on every path.

/** Float64 attention with the modifiers of native/attention.h, and a per-row score error bound. */
function refModified(q: Float32Array, k: Float32Array, v: Float32Array, d: { B: number; H: number; Hkv: number; T: number; S: number; dK: number; dV: number },
  o: { scale: number; causal: boolean; qOffset: number; softcap?: number; alibi?: Float32Array; window?: number }) {
  const out = new Float64Array(d.B * d.H * d.T * d.dV), lse = new Float64Array(d.B * d.H * d.T), delta = new Float64Array(d.B * d.H * d.T);
  const u = 2 ** -24, gamma = (d.dK + 2) * u / (1 - (d.dK + 2) * u);
  for (let b = 0; b < d.B; b++) for (let h = 0; h < d.H; h++) for (let t = 0; t < d.T; t++) {
    const r = (b * d.H + h) * d.T + t, tAbs = o.qOffset + t, hk = Math.floor(h / (d.H / d.Hkv));
    const sc: number[] = [];
    let qn = 0, dmax = 0;
    for (let c = 0; c < d.dK; c++) qn += q[r * d.dK + c]! ** 2;
    for (let s = 0; s < d.S; s++) {
      const kRow = ((b * d.Hkv + hk) * d.S + s) * d.dK;
      let dot = 0, kn = 0;
      for (let c = 0; c < d.dK; c++) { dot += q[r * d.dK + c]! * k[kRow + c]!; kn += k[kRow + c]! ** 2; }
      const visible = (!o.causal || s <= tAbs) && (!o.window || tAbs - s < o.window);
      let x = dot * o.scale;
      if (o.softcap) x = o.softcap * Math.tanh(x / o.softcap);
      if (o.alibi) x -= o.alibi[h]! * Math.abs(tAbs - s);
      sc.push(visible ? x : -Infinity);
      // fp32 dot product (Cauchy-Schwarz), tanh and the ALiBi product: a few roundings of |x|.
      if (visible) dmax = Math.max(dmax, gamma * Math.abs(o.scale) * Math.sqrt(qn * kn) + 4 * u * (Math.abs(x) + 1));
    }
    const mx = Math.max(...sc);
    let sum = 0;
    const p = sc.map((x) => Math.exp(x - mx));
    p.forEach((x) => (sum += x));
    lse[r] = mx + Math.log(sum);
    delta[r] = dmax;
    for (let c = 0; c < d.dV; c++) {
      let acc = 0;
      for (let s = 0; s < d.S; s++) acc += p[s]! * v[((b * d.Hkv + hk) * d.S + s) * d.dV + c]!;
      out[r * d.dV + c] = acc / sum;
    }
  }
  return { out, lse, delta };
}

test.serial('softcap, ALiBi and a sliding window on every path match the float64 reference (chunked folds too)', (t) => {
  const rng = new Rng(31);
  const before = getKernelPath();
  const d = { B: 1, H: 4, Hkv: 2, T: 20, S: 700, dK: 16, dV: 16 };
  const q = rng.normalTensor([1, 4, 20, 16]).data, k = rng.normalTensor([1, 2, 700, 16]).data, v = rng.normalTensor([1, 2, 700, 16]).data;
  const alibi = Float32Array.from([0.5, 0.25, 0.125, 0.0625]);
  const vMax = v.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
  const mods = [{ softcap: 2 }, { alibi }, { window: 37 }, { softcap: 5, alibi, window: 600 }, { window: 3 }];
  try {
    for (const mod of mods)
      for (const T of [1, 20]) {
        const dd = { ...d, T }, qq = q.subarray(0, 4 * T * 16).slice();
        // q was drawn for T = 20; for T = 1 take each head's first row.
        if (T === 1) for (let h = 0; h < 4; h++) qq.set(q.subarray(h * 20 * 16, h * 20 * 16 + 16), h * 16);
        const o = { scale: 0.25, causal: true, qOffset: 700 - T, ...mod };
        const ref = refModified(qq, k, v, dd, o);
        for (const path of ['auto', 'blas', 'rows', 'deterministic'] as const) {
          setKernelPath(path);
          const rows = 4 * T;
          // One fold, and three chunks at sOffset 0, 300, 650 (the window skips whole blocks).
          for (const parts of [[700], [300, 350, 50]]) {
            const m = f(rows).fill(-Infinity), l = f(rows), acc = f(rows * 16), out = f(rows * 16), lse = f(rows);
            let s0 = 0;
            for (const n of parts) {
              const kc = new Float32Array(2 * n * 16), vc = new Float32Array(2 * n * 16);
              for (let h = 0; h < 2; h++) {
                kc.set(k.subarray((h * 700 + s0) * 16, (h * 700 + s0 + n) * 16), h * n * 16);
                vc.set(v.subarray((h * 700 + s0) * 16, (h * 700 + s0 + n) * 16), h * n * 16);
              }
              binding.attnUpdate({ ...dd, S: n, sCap: n }, { ...opts, ...o, sOffset: s0 }, qq, kc, vc, m, l, acc);
              s0 += n;
            }
            binding.attnFinalize(rows, 16, m, l, acc, out, lse);
            // Weights move by at most (e^{2δ} - 1) of their size with δ the score error, so the
            // output moves by that times max|v| (plus exp's 2.3e-7 and the final division).
            const label = `${JSON.stringify({ ...mod, alibi: mod.alibi ? 'slopes' : undefined })} T${T} ${path} parts ${parts}`;
            const outBound = Float64Array.from(out, (_, i) => (Math.expm1(2 * ref.delta[Math.floor(i / 16)]!) + 1e-6) * vMax);
            const lseBound = Float64Array.from(lse, (_, r) => 2 * ref.delta[r]! + 1e-6 * (1 + Math.abs(ref.lse[r]!)));
            assertWithin(t, out, ref.out, outBound, `${label} output`, [1, 4, T, 16]);
            assertWithin(t, lse, ref.lse, lseBound, `${label} lse`, [1, 4, T]);
          }
        }
      }
  } finally {
    setKernelPath(before);
  }
});

test('score modifier options are checked', (t) => {
  const [q, k, v, m, l, acc] = args();
  t.throws(() => binding.attnUpdate(dims, { ...opts, softcap: -1 } as never, q, k, v, m, l, acc), { instanceOf: RangeError, message: /^attnUpdate: opts.softcap must be a finite number in \[0, / });
  t.throws(() => binding.attnUpdate(dims, { ...opts, window: 1.5 } as never, q, k, v, m, l, acc), { instanceOf: RangeError, message: /^attnUpdate: opts.window must be an integer in \[0, 2147483647\], got 1.5/ });
  t.throws(() => binding.attnUpdate(dims, { ...opts, alibi: f(3) } as never, q, k, v, m, l, acc), { instanceOf: RangeError, message: 'attnUpdate: expected opts.alibi [H]=[2] (2 elements), got 3' });
  t.throws(() => binding.attnUpdate(dims, { ...opts, alibi: [1, 2] } as never, q, k, v, m, l, acc), { instanceOf: TypeError, message: 'attnUpdate: opts.alibi must be a Float32Array or null, got Array' });
});

test.serial('ragged batches: per-row valid key ranges (left and right padding) and query offsets equal each row alone, on every path', (t) => {
  const rng = new Rng(41);
  const before = getKernelPath();
  const d = { B: 3, H: 2, Hkv: 1, T: 18, S: 600, sCap: 600, dK: 16, dV: 8 };
  const q = rng.normalTensor([3, 2, 18, 16]).data, k = rng.normalTensor([3, 1, 600, 16]).data, v = rng.normalTensor([3, 1, 600, 8]).data;
  const kvRanges = Int32Array.from([0, 600, 40, 600, 0, 333]);  // full, left padding 40, right padding from 333
  const qOffsets = Int32Array.from([582, 582, 315]);              // each row's newest queries
  // No dropout: its keep bits are keyed by the batch index, which differs for a row run alone.
  const o = { ...opts, scale: 0.25, causal: true };
  const rows = 3 * 2 * 18;
  try {
    for (const path of ['auto', 'blas', 'rows', 'deterministic'] as const) {
      setKernelPath(path);
      for (const T of [1, 18]) {
        const qq = new Float32Array(3 * 2 * T * 16);
        for (let bh = 0; bh < 6; bh++) qq.set(q.subarray(bh * 18 * 16, (bh * 18 + T) * 16), bh * T * 16);
        const offs = Int32Array.from(qOffsets, (x) => x + 18 - T);
        const run = (dd: typeof d, oo: object, qx: Float32Array, kx: Float32Array, vx: Float32Array, n: number) => {
          const m = f(n).fill(-Infinity), l = f(n), acc = f(n * 8), out = f(n * 8), lse = f(n);
          binding.attnUpdate(dd, oo as typeof opts, qx, kx, vx, m, l, acc);
          binding.attnFinalize(n, 8, m, l, acc, out, lse);
          return { out, lse };
        };
        const ragged = run({ ...d, T }, { ...o, kvRanges, qOffsets: offs }, qq, k, v, 3 * 2 * T);
        for (let b = 0; b < 3; b++) {
          // Row b alone: its valid keys only (sOffset = the range start), its own query offset.
          const [s0, s1] = [kvRanges[2 * b]!, kvRanges[2 * b + 1]!];
          const alone = run({ ...d, B: 1, T, S: s1 - s0, sCap: s1 - s0 }, { ...o, qOffset: offs[b]!, sOffset: s0 },
            qq.subarray(b * 2 * T * 16, (b + 1) * 2 * T * 16), k.subarray((b * 600 + s0) * 16, (b * 600 + s1) * 16),
            v.subarray((b * 600 + s0) * 8, (b * 600 + s1) * 8), 2 * T);
          // The same keys, scores and dropout bits in the same fold order up to the block split:
          // fp32 rounding of a few rescales apart (outputs of |v| <= 5, lse ~ log S).
          const got = ragged.out.subarray(b * 2 * T * 8, (b + 1) * 2 * T * 8), lse = ragged.lse.subarray(b * 2 * T, (b + 1) * 2 * T);
          assertWithin(t, got, alone.out, new Float64Array(got.length).fill(2e-5), `${path} T${T} row ${b} output`, [1, 2, T, 8]);
          assertWithin(t, lse, alone.lse, new Float64Array(lse.length).fill(1e-5), `${path} T${T} row ${b} lse`, [1, 2, T]);
        }
      }
    }
  } finally {
    setKernelPath(before);
  }
  t.throws(() => binding.attnUpdate(d, { ...o, kvRanges: Int32Array.from([0, 600, 50, 40, 0, 1]) } as never, q, k, v, f(rows), f(rows), f(rows * 8)),
    { instanceOf: RangeError, message: 'attnUpdate: opts.kvRanges row 1 must be 0 <= start <= end, got [50, 40)' });
  t.throws(() => binding.attnUpdate(d, { ...o, qOffsets: new Float32Array(3) } as never, q, k, v, f(rows), f(rows), f(rows * 8)),
    { instanceOf: TypeError, message: 'attnUpdate: opts.qOffsets must be an Int32Array or null, got Float32Array' });
});

test.serial('sink logits (one per head) join each row\'s softmax denominator at finalize, on every path', (t) => {
  const rng = new Rng(51);
  const before = getKernelPath();
  const d = { B: 2, H: 3, Hkv: 1, T: 5, S: 90, sCap: 90, dK: 16, dV: 8 };
  const q = rng.normalTensor([2, 3, 5, 16]).data, k = rng.normalTensor([2, 1, 90, 16]).data, v = rng.normalTensor([2, 1, 90, 8]).data;
  const sinks = Float32Array.from([-1, 0.5, 30]);  // small, comparable and dominant
  const o = { ...opts, scale: 0.25, causal: true, qOffset: 85 };
  const rows = 30, u = 2 ** -24;
  const ref = refAttentionBound(q, k, v, d, { scale: 0.25, causal: true, qOffset: 85, rescales: 4 });
  try {
    for (const path of ['auto', 'blas', 'rows', 'deterministic'] as const) {
      setKernelPath(path);
      const m = f(rows).fill(-Infinity), l = f(rows), acc = f(rows * 8), out = f(rows * 8), lse = f(rows);
      binding.attnUpdate(d, o, q, k, v, m, l, acc);
      binding.attnFinalize(rows, 8, m, l, acc, out, lse, sinks, 5);
      // Softmax over [scores, sink] without the sink's value: out · w with w = 1 / (1 + e^(sink - lse)),
      // lse ⊕ sink. w moves by at most w(1 - w)·Δlse, so the bound grows by |out|·Δlse (and a few roundings).
      const want = new Float64Array(rows * 8), wantLse = new Float64Array(rows), bound = new Float64Array(rows * 8), lseBound = new Float64Array(rows);
      for (let r = 0; r < rows; r++) {
        const sink = sinks[Math.floor(r / 5) % 3]!, lr = ref.lse[r]!;
        const w = 1 / (1 + Math.exp(sink - lr));
        wantLse[r] = Math.max(lr, sink) + Math.log1p(Math.exp(-Math.abs(lr - sink)));
        lseBound[r] = ref.lseBound[r]! + 8 * u * (1 + Math.abs(wantLse[r]!));
        for (let c = 0; c < 8; c++) {
          want[r * 8 + c] = ref.out[r * 8 + c]! * w;
          bound[r * 8 + c] = ref.outBound[r * 8 + c]! + Math.abs(ref.out[r * 8 + c]!) * (ref.lseBound[r]! + 8 * u);
        }
      }
      assertWithin(t, out, want, bound, `${path} output`, [2, 3, 5, 8]);
      assertWithin(t, lse, wantLse, lseBound, `${path} lse`, [2, 3, 5]);
    }
  } finally {
    setKernelPath(before);
  }
  // A row that saw no key: output 0, lse = its sink.
  const out = f(8), lse = f(1);
  binding.attnFinalize(1, 8, f(1).fill(-Infinity), f(1), f(8), out, lse, Float32Array.from([2.5]), 1);
  t.deepEqual([...out, lse[0]], [0, 0, 0, 0, 0, 0, 0, 0, 2.5]);
  t.throws(() => binding.attnFinalize(rows, 8, f(rows), f(rows), f(rows * 8), f(rows * 8), f(rows), f(4), 5),
    { instanceOf: RangeError, message: 'attnFinalize: rows must be B·H·T for sinks [H]=[4] and T=5, got rows=30' });
});

test.serial('paged storage (a block table per row, shared prefix pages) equals the contiguous cache, every dtype and path, sync and async', async (t) => {
  const rng = new Rng(61);
  const before = getKernelPath();
  const page = 16, B = 2, Hkv = 2, H = 4, S = 70, dK = 32, dV = 16, maxBlocks = 6, sCap = page * maxBlocks;
  const k = rng.normalTensor([B, Hkv, S, dK]).data, v = rng.normalTensor([B, Hkv, S, dV]).data;
  // Rows share their first two pages (the prefix) when their keys there are equal: make them so.
  for (let h = 0; h < Hkv; h++) {
    k.copyWithin(((1 * Hkv + h) * S) * dK, ((0 * Hkv + h) * S) * dK, ((0 * Hkv + h) * S + 2 * page) * dK);
    v.copyWithin(((1 * Hkv + h) * S) * dV, ((0 * Hkv + h) * S) * dV, ((0 * Hkv + h) * S + 2 * page) * dV);
  }
  // Page pool in a scrambled order: row 0 uses pages 7,2,5,0,3; row 1 shares 7,2 then 1,6,4.
  const table = Int32Array.from([7, 2, 5, 0, 3, -1, 7, 2, 1, 6, 4, -1]);
  const pages = 8;
  const pool = (x: Float32Array, d: number) => {
    const out = new Float32Array(pages * Hkv * page * d).fill(NaN);  // unused pages: NaN would show
    for (let b = 0; b < B; b++) for (let j = 0; j * page < S; j++) for (let h = 0; h < Hkv; h++) {
      const n = Math.min(page, S - j * page), p = table[b * maxBlocks + j]!;
      out.set(x.subarray(((b * Hkv + h) * S + j * page) * d, ((b * Hkv + h) * S + j * page + n) * d), ((p * Hkv + h) * page) * d);
    }
    return out;
  };
  const kp = pool(k, dK), vp = pool(v, dV);
  const kq = quantizeQ8(kp.map((x) => (Number.isNaN(x) ? 0 : x)), dK), vq = quantizeQ8(vp.map((x) => (Number.isNaN(x) ? 0 : x)), dV);
  const kcq = quantizeQ8(k, dK), vcq = quantizeQ8(v, dV);
  const stores = {
    f32: { paged: [kp, vp, null, null], contiguous: [k, v, null, null] },
    bf16: { paged: [f32ToBf16(kp), f32ToBf16(vp), null, null], contiguous: [f32ToBf16(k), f32ToBf16(v), null, null] },
    i8: { paged: [kq.q, vq.q, kq.scale, vq.scale], contiguous: [kcq.q, vcq.q, kcq.scale, vcq.scale] },
  };
  try {
    for (const T of [1, 20]) {
      const q = rng.normalTensor([B, H, T, dK]).data, rows = B * H * T;
      const dims = { B, H, Hkv, T, S, sCap: S, dK, dV }, o = { ...opts, scale: 0.2, causal: true, qOffset: S - T };
      for (const [dtype, st] of Object.entries(stores))
        for (const path of ['auto', 'blas', 'rows', 'deterministic'] as const) {
          setKernelPath(path);
          const fold = async (paged: boolean, async: boolean) => {
            const [kk, vv, ks, vs] = paged ? st.paged : st.contiguous;
            const m = f(rows).fill(-Infinity), l = f(rows), acc = f(rows * dV), out = f(rows * dV), lse = f(rows);
            const oo = { ...o, kvDtype: dtype as KvDtype, ...(paged ? { pageSize: page, blockTable: table } : {}) };
            const dd = paged ? { ...dims, sCap } : dims;
            const a = [dd, oo, q, kk, vv, m, l, acc, ks, vs] as Parameters<typeof binding.attnUpdate>;
            if (async) await new Promise<void>((res, rej) => binding.attnUpdateAsync(...(a as [never, never, never, never, never, never, never, never, never, never]), (e?: Error) => (e ? rej(e) : res())));
            else binding.attnUpdate(...a);
            binding.attnFinalize(rows, dV, m, l, acc, out, lse);
            return { out, lse };
          };
          const want = await fold(false, false);
          for (const async of [false, true]) {
            const got = await fold(true, async);
            // The same converted values folded in blocks of at most one page: fp32 rounding of the
            // extra rescales apart (|v| <= 5, lse ~ log S).
            const label = `${dtype} ${path} T${T}${async ? ' async' : ''}`;
            assertWithin(t, got.out, want.out, new Float64Array(rows * dV).fill(2e-5), `${label} output`, [B, H, T, dV]);
            assertWithin(t, got.lse, want.lse, new Float64Array(rows).fill(1e-5), `${label} lse`, [B, H, T]);
          }
        }
    }
  } finally {
    setKernelPath(before);
  }
  const dims = { B, H, Hkv, T: 1, S, sCap, dK, dV }, rows = B * H;
  const bad = Int32Array.from(table);
  bad[8] = 8;
  t.throws(() => binding.attnUpdate(dims, { ...opts, pageSize: page, blockTable: bad } as never, f(rows * dK), kp, vp, f(rows), f(rows), f(rows * dV)),
    { instanceOf: RangeError, message: 'attnUpdate: opts.blockTable[1,2] must name a page in [0, 8), got 8' });
  t.throws(() => binding.attnUpdate(dims, { ...opts, pageSize: page, blockTable: table } as never, f(rows * dK), kp.subarray(1), vp, f(rows), f(rows), f(rows * dV)),
    { instanceOf: RangeError, message: 'attnUpdate: expected k whole pages [pages,H_kv,pageSize,d_k]=[*,2,16,32] (a positive multiple of 1024 elements), got 8191' });
});
