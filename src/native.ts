// The only module that loads the addon, on the first kernel call (so npy/npz/manifest work
// without a build). Everything else imports `addon` (typed, errors mapped to NativeError) or,
// for tests of the binding's own checks, `binding` (raw).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { ArgumentError, NativeError } from './errors.ts';

/**
 * Attention sizes as the binding reads them (native/attention.h): an object, or the same fields
 * in this order in an Int32Array (packDims), which the binding reads in one step instead of a
 * property lookup per field.
 */
export type NativeDims = AttnDimsObject | Int32Array;
export interface AttnDimsObject {
  B: number; H: number; Hkv: number; T: number; S: number; sCap: number; dK: number; dV: number;
}

/** Module sizes for mhaForward: an object, or an Int32Array of the fields in this order (packMhaDims). */
export type MhaNativeDims = MhaDimsObject | Int32Array;
export interface MhaDimsObject {
  B: number; T: number; S: number; dModel: number; dKvIn: number; dOut: number; H: number; Hkv: number; dK: number; dV: number;
}

const ATTN_DIMS = ['B', 'H', 'Hkv', 'T', 'S', 'sCap', 'dK', 'dV'] as const;
const MHA_DIMS = ['B', 'T', 'S', 'dModel', 'dKvIn', 'dOut', 'H', 'Hkv', 'dK', 'dV'] as const;

/** out holds `keys` of d unless a value did not fit an int32: then throws, naming it. */
function checkPacked<K extends string>(d: Record<K, number>, keys: readonly K[], out: Int32Array): Int32Array {
  for (let i = 0; i < keys.length; i++) {
    if (out[i] !== d[keys[i]]) throw new ArgumentError(`Expected dims.${keys[i]} to be a 32-bit integer, got ${d[keys[i]]}`);
  }
  return out;
}

/** dims as [B, H, Hkv, T, S, sCap, dK, dV], written into `out` when given. */
export function packDims(d: AttnDimsObject, out: Int32Array = new Int32Array(8)): Int32Array {
  // Field by field (a loop over key names would make every read a megamorphic keyed load).
  out[0] = d.B; out[1] = d.H; out[2] = d.Hkv; out[3] = d.T; out[4] = d.S; out[5] = d.sCap; out[6] = d.dK; out[7] = d.dV;
  const fits = out[0] === d.B && out[1] === d.H && out[2] === d.Hkv && out[3] === d.T && out[4] === d.S && out[5] === d.sCap && out[6] === d.dK && out[7] === d.dV;
  return fits ? out : checkPacked(d as unknown as Record<string, number>, ATTN_DIMS, out);
}

/** Module dims as [B, T, S, dModel, dKvIn, dOut, H, Hkv, dK, dV], written into `out` when given. */
export function packMhaDims(d: MhaDimsObject, out: Int32Array = new Int32Array(10)): Int32Array {
  out[0] = d.B; out[1] = d.T; out[2] = d.S; out[3] = d.dModel; out[4] = d.dKvIn; out[5] = d.dOut; out[6] = d.H; out[7] = d.Hkv; out[8] = d.dK; out[9] = d.dV;
  const fits = out[0] === d.B && out[1] === d.T && out[2] === d.S && out[3] === d.dModel && out[4] === d.dKvIn && out[5] === d.dOut &&
    out[6] === d.H && out[7] === d.Hkv && out[8] === d.dK && out[9] === d.dV;
  return fits ? out : checkPacked(d as unknown as Record<string, number>, MHA_DIMS, out);
}

/**
 * A KV cache's storage type (native/kvstore.h): k and v are Float32Array for 'f32', Uint16Array
 * bit patterns for 'f16' and 'bf16', Int8Array for 'i8' with fp32 scales [B,H_kv,S_cap,ceil(d/32)]
 * (element = value · scale of its row and group of 32 channels).
 */
export type KvDtype = 'f32' | 'f16' | 'bf16' | 'i8';

/** Cache storage arrays for a KvDtype. */
export type KvStorage = Float32Array | Uint16Array | Int8Array;

/** Attention options as the binding reads them. */
export interface NativeOpts {
  scale: number; causal: boolean; qOffset: number; sOffset: number; dropoutP: number; seed: number;
  /** Storage type of k and v (default 'f32'). */
  kvDtype?: KvDtype;
  /** Score modifiers (native/attention.h), applied in this order; off when absent or 0. */
  softcap?: number;
  /** [H] ALiBi slopes: score -= alibi[h] · |t_abs - s_abs|. */
  alibi?: Float32Array | null;
  /** Sliding window: key visible only if t_abs - s_abs < window. */
  window?: number;
  /** Ragged batches: [B,2] valid absolute key range [start, end) per batch row. */
  kvRanges?: Int32Array | null;
  /** Ragged batches: [B] absolute position of each batch row's query 0 (instead of qOffset). */
  qOffsets?: Int32Array | null;
  /** First slot read in each head's storage (attnUpdate; contiguous only): positions [sStart, sStart + S) of sCap. */
  sStart?: number;
  /** Paged storage (attnUpdate): k, v are pages [pages,H_kv,pageSize,d]; row b's position s is in page blockTable[b, s / pageSize]. */
  pageSize?: number;
  /** [B, sCap / pageSize] page of each block of each batch row. */
  blockTable?: Int32Array | null;
}

export interface NativeInfo {
  /** 'openblas' when linked against OpenBLAS, 'portable' for the built-in blocked GEMM. */
  blas: 'openblas' | 'portable';
  /** OpenBLAS's core (e.g. 'Haswell', 'SkylakeX'), or 'portable'. */
  blasCore: string;
  /** kvstream's worker threads (OpenBLAS stays at one thread inside them). */
  threads: number;
  blasThreads: number;
  /**
   * Whether kvstream's attention/GEMM tile runs, built for `vmath`'s level (AVX-512F or AVX2 + FMA);
   * off at 'baseline' or with KVSTREAM_TILE=off.
   */
  tile: boolean;
  /**
   * Whether the row path's direct kernels run (x86-64 with AVX2, FMA and F16C; not
   * KVSTREAM_VMATH=baseline or KVSTREAM_KV_SIMD=off): they read every storage in place, for any
   * number of query rows per kv head (heads under 16 wide with 4+ rows take tiny_update). Elsewhere
   * the row path reads fp32 in place and converts other storage block by block, then uses vmath's
   * kernels and BLAS; int8 decode then keeps q and its P·V weights in fp32.
   */
  kvDirect: boolean;
  /**
   * Storage bytes above which a direct-kernel call prefetches non-temporally (the L3 size from
   * sysfs, else 8 MiB): such a cache cannot stay in L3 until the next call anyway.
   */
  kvStreamBytes: number;
  /**
   * The build of the row kernels in use (native/vmath.cc): 'avx512f', 'avx2' (with FMA) or
   * 'baseline' (x86-64 without either, or the one build of a non-x86 or non-GCC compile), chosen
   * at load; KVSTREAM_VMATH=avx2|baseline lowers it (for testing; read once per process, so not
   * from a worker thread's env).
   */
  vmath: 'avx512f' | 'avx2' | 'baseline';
  /** The kernel path in force (see setKernelPath). */
  path: KernelPath;
}

/**
 * Which kernels run, process-wide (all threads and worker_threads share it):
 * - `auto`: the fastest applicable path (default);
 * - `tile`: the tile (AVX-512F or AVX2 + FMA) wherever d_k, d_v are multiples of 16 (also T <= 16) and for
 *   linear; only where `info().tile` is true;
 * - `blas`: the query-block BLAS path for every T, BLAS for linear;
 * - `rows`: the row path (a kv head's query rows stacked) for every T;
 * - `deterministic`: fixed-order scalar kernels, float64 accumulation, kvstream's own exp/log:
 *   the same bits on every x86-64 CPU, thread count and BLAS (fixture generation uses it).
 */
export type KernelPath = 'auto' | 'tile' | 'blas' | 'rows' | 'deterministic';

/** Largest thread count setNumThreads and KVSTREAM_NUM_THREADS accept (native/threads.h). */
export const MAX_THREADS = 256;

export interface Binding {
  /** State (m, l [B,H,T]; acc [B,H,T,dV]) absorbs keys [0,S) of k [B,Hkv,sCap,dK], v [B,Hkv,sCap,dV]; q [B,H,T,dK]. */
  attnUpdate(dims: NativeDims, opts: NativeOpts, q: Float32Array, k: KvStorage, v: KvStorage,
    m: Float32Array, l: Float32Array, acc: Float32Array, kScale?: Float32Array | null, vScale?: Float32Array | null): void;
  /** attnUpdate on a libuv worker thread; the arrays are pinned until `done` runs. */
  attnUpdateAsync(dims: NativeDims, opts: NativeOpts, q: Float32Array, k: KvStorage, v: KvStorage,
    m: Float32Array, l: Float32Array, acc: Float32Array, done: (err?: Error) => void): void;
  attnUpdateAsync(dims: NativeDims, opts: NativeOpts, q: Float32Array, k: KvStorage, v: KvStorage,
    m: Float32Array, l: Float32Array, acc: Float32Array, kScale: Float32Array | null, vScale: Float32Array | null,
    done: (err?: Error) => void): void;
  /** State 1 (m1, l1 [rows]; acc1 [rows,dV]) absorbs state 2 over a disjoint key set. */
  attnMerge(rows: number, dV: number, m1: Float32Array, l1: Float32Array, acc1: Float32Array,
    m2: Float32Array, l2: Float32Array, acc2: Float32Array): void;
  /** out [rows,dV] = acc / l, lse [rows] = m + log l (0 and -inf for rows that saw no key); with sinks [H] (rows [B,H,T]), a sink logit per head joins each denominator. */
  attnFinalize(rows: number, dV: number, m: Float32Array, l: Float32Array, acc: Float32Array,
    out: Float32Array, lse: Float32Array, sinks?: Float32Array | null, T?: number): void;
  /** probs [B,H,T,S] after dropout and keep [B,H,T,S] from the final lse [B,H,T]; either may be null. */
  attnProbs(dims: NativeDims, opts: NativeOpts, q: Float32Array, k: KvStorage, lse: Float32Array,
    probs: Float32Array | null, keep: Uint8Array | null, kScale?: Float32Array | null): void;
  /** The whole module without a cache: xQ [B,T,dModel], xKv [B,S,dKvIn] -> y [B,T,dOut], lse [B,H,T]. */
  mhaForward(dims: MhaNativeDims, opts: NativeOpts, xQ: Float32Array, xKv: Float32Array,
    wQ: Float32Array, bQ: Float32Array | null, wK: Float32Array, bK: Float32Array | null,
    wV: Float32Array, bV: Float32Array | null, wO: Float32Array, bO: Float32Array | null,
    y: Float32Array, lse: Float32Array): void;
  /** x [B,T,K] · w [K,heads·d] + b -> out [B,heads,T,d]. */
  projectHeads(x: Float32Array, w: Float32Array, b: Float32Array | null, out: Float32Array, B: number, T: number, K: number, heads: number, d: number): void;
  /** concat_h o [B,heads,T,d] · w [heads·d,N] + b -> y [B,T,N]. */
  mergeProject(o: Float32Array, w: Float32Array, b: Float32Array | null, y: Float32Array, B: number, heads: number, T: number, d: number, N: number): void;
  /** y [M,N] = x [M,K] · w [K,N] + b [N]. */
  linear(x: Float32Array, w: Float32Array, b: Float32Array | null, y: Float32Array, M: number, K: number, N: number): void;
  /** Rotary embedding of x [B,H,T,d] into out (may be x) at positions [B,T]; channels >= rotaryDim pass through. */
  rope(x: Float32Array, out: Float32Array, dims: { B: number; H: number; T: number; d: number },
    opts: { rotaryDim: number; theta: number; interleaved: boolean }, positions: Int32Array): void;
  /** src [rows,d] fp32 -> dst [rows,d] of a storage type; 'i8' also writes scale [rows,ceil(d/32)]. */
  kvEncode(dtype: Exclude<KvDtype, 'f32'>, src: Float32Array, dst: Uint16Array | Int8Array, scale: Float32Array | null, rows: number, d: number): void;
  setNumThreads(n: number): void;
  setKernelPath(path: KernelPath): void;
  getKernelPath(): KernelPath;
  /** Calls per kernel path since load or the last reset (names in native/kernel_path.h). */
  kernelCounts(): Record<string, number>;
  resetKernelCounts(): void;
  /** Thread-pool self-test: `tasks` tasks of 8 nested steps; task `throwAt` throws. Returns the steps run. */
  poolCheck(tasks: number, throwAt: number): number;
  info(): NativeInfo;
}

const METHODS = [
  'attnUpdate', 'attnUpdateAsync', 'attnMerge', 'attnFinalize', 'attnProbs', 'mhaForward', 'projectHeads',
  'mergeProject', 'linear', 'rope', 'kvEncode', 'setNumThreads', 'setKernelPath', 'getKernelPath', 'kernelCounts', 'resetKernelCounts',
  'poolCheck', 'info',
] as const satisfies readonly (keyof Binding)[];

// KVSTREAM_ADDON points at another build of the addon (the sanitizer build of `npm run test:asan`).
export const ADDON_PATH = process.env.KVSTREAM_ADDON || fileURLToPath(new URL('../build/Release/kvstream.node', import.meta.url));

/** Loads the addon at `path` (default: the build output); failure names the rebuild command. */
export function loadAddon(path = ADDON_PATH): Binding {
  try {
    return createRequire(import.meta.url)(path) as Binding;
  } catch (cause) {
    throw new NativeError(
      `The kvstream native addon could not be loaded from ${path}: ${(cause as Error).message}\n` +
        'Rebuild it: in the kvstream repo `npm run build:native`; in a project that installed kvstream ' +
        '`npm rebuild kvstream` (needs g++, make and python3; `apt-get install libopenblas-dev` first to link OpenBLAS).',
      { cause },
    );
  }
}

/**
 * KVSTREAM_NUM_THREADS, when set: an integer in [1, MAX_THREADS] written in plain decimal.
 * Returns undefined when unset or empty.
 */
export function threadsFromEnv(value = process.env.KVSTREAM_NUM_THREADS): number | undefined {
  if (value === undefined || value === '') return undefined;
  const n = /^[0-9]{1,4}$/.test(value) ? Number(value) : NaN;
  if (!(n >= 1 && n <= MAX_THREADS)) {
    throw new ArgumentError(`Expected KVSTREAM_NUM_THREADS an integer in [1, ${MAX_THREADS}], got ${JSON.stringify(value.slice(0, 40))}`);
  }
  return n;
}

let loaded: Binding | undefined;

/** The addon, loaded on first use with KVSTREAM_NUM_THREADS applied. */
function load(): Binding {
  if (loaded) return loaded;
  const threads = threadsFromEnv();
  const b = loadAddon();
  // The pool is per process: only the main thread applies the variable, so a worker_threads
  // isolate loading kvstream does not undo a setNumThreads made since.
  if (threads !== undefined && isMainThread) b.setNumThreads(threads);
  return (loaded = b);
}

/** The raw addon: its own argument checks throw TypeError / RangeError. */
export const binding: Binding = Object.fromEntries(
  METHODS.map((name) => [name, (...args: unknown[]) => (load()[name] as (...a: unknown[]) => unknown)(...args)]),
) as unknown as Binding;

/** The addon with every error re-thrown as NativeError (the TypeScript checks run first). */
export const addon: Binding = Object.fromEntries(
  METHODS.map((name) => {
    // Looked up once: a lookup by name on every call was a megamorphic load in small calls.
    let fn: ((...a: unknown[]) => unknown) | undefined;
    return [
      name,
      (...args: unknown[]) => {
        fn ??= load()[name] as (...a: unknown[]) => unknown;
        try {
          return fn(...args);
        } catch (cause) {
          throw new NativeError(`${(cause as Error).message}`, { cause });
        }
      },
    ];
  }),
) as unknown as Binding;

/** Which BLAS the addon linked, its core, and thread counts. */
export function info(): NativeInfo {
  return binding.info();
}

/** Sets kvstream's worker thread count (1..MAX_THREADS); OpenBLAS is kept at one thread inside. */
export function setNumThreads(n: number): void {
  addon.setNumThreads(n);
}

/** Forces a kernel path process-wide; see KernelPath. */
export function setKernelPath(path: KernelPath): void {
  addon.setKernelPath(path);
}

export function getKernelPath(): KernelPath {
  return addon.getKernelPath();
}

/** Calls per kernel path since load or resetKernelCounts(); every name is present from load. */
export function kernelCounts(): Record<string, number> {
  return addon.kernelCounts();
}

export function resetKernelCounts(): void {
  addon.resetKernelCounts();
}
