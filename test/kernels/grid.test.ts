// Kernel grid in the spirit of ggml's test-backend-ops: every case runs on every kernel path
// (tile where the CPU has it, blas, rows, auto, deterministic) at 1 and 2 threads, and each result
// is checked against the float64 reference within the error bound derived in
// test/helpers/reference.ts. The attention cases are a seeded greedy pairwise covering array over
// the axes below (every pair of values of any two axes occurs in some case) plus a few pinned
// large cases; linear and the whole module are checked at shapes that take each GEMM entry. The
// last test fails when a kernel counter (native/kernel_path.h) was never reached.
import test from 'ava';
import { attention, OnlineSoftmaxState } from '../../src/attention.ts';
import type { AttentionResult, KvView } from '../../src/attention.ts';
import { MultiHeadAttention } from '../../src/mha.ts';
import { addon, getKernelPath, info, kernelCounts, resetKernelCounts, setKernelPath, setNumThreads } from '../../src/native.ts';
import type { KernelPath } from '../../src/native.ts';
import { Rng } from '../../src/random.ts';
import type { Tensor } from '../../src/tensor.ts';
import { assertWithin, checkWithin, unravel } from '../helpers/assert.ts';
import { refAttentionBound, refKeepMask, refLinearBound, refModuleBound, refProjectHeads } from '../helpers/reference.ts';

const TILE = info().tile;
// 'tile' only where info().tile (AVX-512F or AVX2 + FMA, KVSTREAM_TILE not off; setKernelPath throws otherwise).
const PATHS: KernelPath[] = TILE ? ['tile', 'blas', 'rows', 'auto', 'deterministic'] : ['blas', 'rows', 'auto', 'deterministic'];
const THREADS = [1, 2];
const restore = { threads: info().threads, path: getKernelPath() };

/** Runs `fn` once per path and thread count; the label names both. */
function onEveryPath(fn: (label: string) => void): void {
  try {
    for (const path of PATHS)
      for (const threads of THREADS) {
        setKernelPath(path);
        setNumThreads(threads);
        fn(`${path}, ${threads} thread${threads > 1 ? 's' : ''}`);
      }
  } finally {
    setKernelPath(restore.path);
    setNumThreads(restore.threads);
  }
}

// ---------------------------------------------------------------------------------------------
// Attention: the covering design.

type Mask = 'none' | 'causal:end' | 'causal:mid' | 'causal:0' | 'causal:neg';
/** whole: one update; capacity: one update reading a cache's storage (NaN past S); chunks:
 * several updates with sOffset > 0; merge: two states over disjoint keys, merged. */
type Fold = 'whole' | 'capacity' | 'chunks' | 'merge';

const AXES = {
  T: [1, 3, 16, 17, 21, 32, 35, 80, 135, 300],
  // 1025..1537 reach three or four key blocks of 512 with a ragged last block (also ragged
  // against the tile's 12-key micro-tile).
  S: [1, 7, 100, 511, 512, 513, 1025, 1100, 1537],
  // [d_k, d_v]: every head dim, d_k != d_v both ways; d_v 16/32/48/64/80 take each P·V slab width.
  dims: [[8, 8], [16, 16], [24, 24], [64, 64], [80, 80], [128, 128], [256, 256], [64, 48], [128, 32], [32, 128], [16, 80], [24, 8]],
  // [H, H_kv]: GQA ratios 1, 2, 4, 8 and MQA (H_kv = 1).
  heads: [[1, 1], [3, 3], [4, 2], [8, 2], [16, 2], [2, 1], [8, 1]],
  mask: ['none', 'causal:end', 'causal:mid', 'causal:0', 'causal:neg'] as Mask[],
  p: [0, 0.1, 0.5],
  B: [1, 2],
  fold: ['whole', 'capacity', 'chunks', 'merge'] as Fold[],
  scale: [0, 0.05, 1], // 0: the default 1/sqrt(d_k); 1 with d = 256 gives scores ~ N(0, 256)
} as const;
type Axis = keyof typeof AXES;
const AXIS_NAMES = Object.keys(AXES) as Axis[];

interface Case {
  B: number; H: number; Hkv: number; T: number; S: number; dK: number; dV: number;
  mask: Mask; qOffset: number; p: number; seed: number; scale: number; fold: Fold;
  /** Key counts of the update calls (chunks: several; merge: two states). */
  parts: number[];
}

/** Reference work of a case, B·H·T·S·(d_k + 3·d_v): what the greedy keeps under a cap. */
function cost(B: number, H: number, T: number, S: number, dK: number, dV: number): number {
  return B * H * T * S * (dK + 3 * dV + 8);
}
const CASE_CAP = 2e7;

function qOffsetOf(mask: Mask, T: number, S: number): number {
  switch (mask) {
    case 'causal:mid': return Math.floor(S / 2) + 1; // positive, the diagonal inside the keys
    case 'causal:0': return 0;
    case 'causal:neg': return -Math.ceil(T / 2); // the first rows see no key
    default: return S - T; // 'causal:end' and the default of attention()
  }
}

/** Seeded split of S keys into `n` parts, each >= 1 (fewer when S < n). */
function split(rng: Rng, S: number, n: number): number[] {
  if (S < n) return [S];
  const cuts = new Set<number>();
  while (cuts.size < n - 1) cuts.add(1 + Math.floor(rng.uniform() * (S - 1)));
  const sorted = [0, ...[...cuts].sort((a, b) => a - b), S];
  return sorted.slice(1).map((c, i) => c - sorted[i]);
}

function makeCase(v: Record<Axis, number>, rng: Rng): Case {
  const T = AXES.T[v.T], S = AXES.S[v.S], [dK, dV] = AXES.dims[v.dims], [H, Hkv] = AXES.heads[v.heads];
  const mask = AXES.mask[v.mask], fold = AXES.fold[v.fold];
  const parts = fold === 'chunks' ? split(rng, S, 2 + Math.floor(rng.uniform() * 3)) : fold === 'merge' ? split(rng, S, 2) : [S];
  return {
    B: AXES.B[v.B], H, Hkv, T, S, dK, dV, mask, qOffset: qOffsetOf(mask, T, S), p: AXES.p[v.p],
    seed: Math.floor(rng.uniform() * 2 ** 32) + 2 ** 32 * Math.floor(rng.uniform() * 1024), scale: AXES.scale[v.scale], fold, parts,
  };
}

/**
 * Greedy pairwise covering array (AETG-style): start each case from the first uncovered pair of
 * axis values, then give every other axis, in a seeded order, the value that covers the most
 * uncovered pairs while the case's cost stays under CASE_CAP (unset axes count at their
 * cheapest). Deterministic for a given seed.
 */
function design(seed: number): Case[] {
  const rng = new Rng(seed, 1);
  const key = (a: number, i: number, b: number, j: number) => `${a}:${i}:${b}:${j}`;
  const uncovered = new Set<string>();
  AXIS_NAMES.forEach((a, ai) => AXIS_NAMES.forEach((b, bi) => {
    if (bi <= ai) return;
    for (let i = 0; i < AXES[a].length; i++) for (let j = 0; j < AXES[b].length; j++) uncovered.add(key(ai, i, bi, j));
  }));
  const cheapest: Record<Axis, number> = { T: 0, S: 0, dims: 0, heads: 0, mask: 0, p: 0, B: 0, fold: 0, scale: 0 };
  const costOf = (v: Partial<Record<Axis, number>>) => {
    const w = { ...cheapest, ...v };
    const [dK, dV] = AXES.dims[w.dims], [H] = AXES.heads[w.heads];
    return cost(AXES.B[w.B], H, AXES.T[w.T], AXES.S[w.S], dK, dV);
  };
  const cases: Case[] = [];
  while (uncovered.size > 0) {
    const [ai, i, bi, j] = uncovered.values().next().value!.split(':').map(Number);
    const v: Partial<Record<Axis, number>> = { [AXIS_NAMES[ai]]: i, [AXIS_NAMES[bi]]: j };
    if (costOf(v) > CASE_CAP) throw new Error(`pair ${AXIS_NAMES[ai]}=${i}, ${AXIS_NAMES[bi]}=${j} exceeds the cost cap`);
    const rest = AXIS_NAMES.filter((a) => v[a] === undefined);
    for (let n = rest.length - 1; n > 0; n--) {
      const m = Math.floor(rng.uniform() * (n + 1));
      [rest[n], rest[m]] = [rest[m], rest[n]];
    }
    for (const a of rest) {
      const ax = AXIS_NAMES.indexOf(a);
      let best = -1, bestGain = -1, bestTie = 0;
      for (let x = 0; x < AXES[a].length; x++) {
        if (costOf({ ...v, [a]: x }) > CASE_CAP) continue;
        let gain = 0;
        for (const [b, y] of Object.entries(v) as [Axis, number][]) {
          const bx = AXIS_NAMES.indexOf(b);
          if (uncovered.has(ax < bx ? key(ax, x, bx, y) : key(bx, y, ax, x))) gain++;
        }
        const tie = rng.uniform();
        if (gain > bestGain || (gain === bestGain && tie > bestTie)) [best, bestGain, bestTie] = [x, gain, tie];
      }
      v[a] = best;
    }
    const full = v as Record<Axis, number>;
    AXIS_NAMES.forEach((a, ax) => AXIS_NAMES.forEach((b, bx) => {
      if (bx > ax) uncovered.delete(key(ax, full[a], bx, full[b]));
    }));
    cases.push(makeCase(full, rng));
  }
  return cases;
}

// A few large cases pinned on purpose: the tile/BLAS path with several query blocks against
// three or four key blocks, streamed with sOffset > 0, every query-tail shape, dropout.
function pinned(c: Omit<Case, 'qOffset'>): Case {
  return { ...c, qOffset: qOffsetOf(c.mask, c.T, c.S) };
}
const PINNED: Case[] = [
  pinned({ B: 1, H: 2, Hkv: 1, T: 135, S: 1300, dK: 128, dV: 128, mask: 'causal:mid', p: 0.1, seed: 11, scale: 0, fold: 'chunks', parts: [300, 700, 300] }),
  pinned({ B: 1, H: 2, Hkv: 1, T: 300, S: 1537, dK: 64, dV: 48, mask: 'causal:end', p: 0.5, seed: 2 ** 40 + 5, scale: 0, fold: 'merge', parts: [1030, 507] }),
  pinned({ B: 1, H: 2, Hkv: 2, T: 80, S: 1100, dK: 256, dV: 256, mask: 'none', p: 0, seed: 3, scale: 1, fold: 'whole', parts: [1100] }),
  pinned({ B: 1, H: 8, Hkv: 8, T: 16, S: 1537, dK: 80, dV: 80, mask: 'causal:neg', p: 0.1, seed: 4, scale: 0, fold: 'chunks', parts: [1, 1000, 536] }),
  pinned({ B: 2, H: 8, Hkv: 1, T: 35, S: 1025, dK: 32, dV: 128, mask: 'causal:0', p: 0, seed: 5, scale: 0, fold: 'capacity', parts: [1025] }),
  pinned({ B: 1, H: 2, Hkv: 1, T: 21, S: 777, dK: 16, dV: 16, mask: 'causal:mid', p: 0.5, seed: 6, scale: 0.05, fold: 'chunks', parts: [17, 600, 160] }),
];

// Tiny heads (d_k, d_v < 16, at least 4 rows per kv head, no dropout: tiny_update, eight rows
// per vector): W4's shape, a partial vector of rows (12 and 17 rows: 8 + 4, 8 + 8 + 1), key
// counts off the 4-key step, several key blocks, causal rows that see nothing, d 1.
const TINY: Case[] = [
  pinned({ B: 2, H: 4, Hkv: 4, T: 8, S: 8, dK: 8, dV: 8, mask: 'none', p: 0, seed: 21, scale: 0, fold: 'whole', parts: [8] }),
  pinned({ B: 1, H: 8, Hkv: 2, T: 3, S: 103, dK: 5, dV: 12, mask: 'causal:mid', p: 0, seed: 22, scale: 0, fold: 'chunks', parts: [30, 2, 71] }),
  pinned({ B: 2, H: 3, Hkv: 3, T: 17, S: 1030, dK: 15, dV: 1, mask: 'causal:end', p: 0, seed: 23, scale: 1, fold: 'merge', parts: [513, 517] }),
  pinned({ B: 1, H: 4, Hkv: 1, T: 2, S: 9, dK: 4, dV: 4, mask: 'causal:neg', p: 0, seed: 26, scale: 0, fold: 'chunks', parts: [1, 8] }),
  pinned({ B: 1, H: 4, Hkv: 1, T: 1, S: 7, dK: 1, dV: 3, mask: 'causal:0', p: 0, seed: 24, scale: 0, fold: 'capacity', parts: [7] }),
  pinned({ B: 1, H: 2, Hkv: 2, T: 9, S: 6, dK: 12, dV: 15, mask: 'causal:end', p: 0, seed: 25, scale: 0.05, fold: 'whole', parts: [6] }),
];

const CASES = [...PINNED, ...TINY, ...design(20261126)];

function describe(c: Case): string {
  const mask = c.mask === 'none' ? 'full' : `${c.mask}@${c.qOffset}`;
  return `B${c.B} H${c.H}/${c.Hkv} T${c.T} S${c.S} d${c.dK}/${c.dV} ${mask}${c.p ? ` drop${c.p}` : ''}${c.scale ? ` scale${c.scale}` : ''} ${c.fold}${c.parts.length > 1 ? `[${c.parts}]` : ''}`;
}

/** Keys [s0, s1) of x [B,Hkv,S,d] as [B,Hkv,s1-s0,d]. */
function sliceKv(x: Tensor, s0: number, s1: number): Tensor {
  const [b, h, s, d] = x.shape;
  const out = new Float32Array(b * h * (s1 - s0) * d);
  for (let bh = 0; bh < b * h; bh++) out.set(x.data.subarray((bh * s + s0) * d, (bh * s + s1) * d), bh * (s1 - s0) * d);
  return { data: out, shape: [b, h, s1 - s0, d] };
}

/** x [B,Hkv,S,d] stored in a cache's layout with `pad` extra positions per head, filled with NaN. */
function withCapacity(x: Tensor, pad: number): KvView {
  const [b, h, s, d] = x.shape;
  const data = new Float32Array(b * h * (s + pad) * d).fill(NaN);
  for (let bh = 0; bh < b * h; bh++) data.set(x.data.subarray(bh * s * d, (bh + 1) * s * d), bh * (s + pad) * d);
  return { data, shape: x.shape, capacity: s + pad };
}

/** The case through the public API, folded as the case says. */
function run(c: Case, q: Tensor, k: Tensor, v: Tensor, returnWeights: boolean): AttentionResult {
  const dropout = c.p ? { p: c.p, seed: c.seed } : undefined;
  const scale = c.scale || undefined;
  const opts = { scale, causal: c.mask !== 'none', qOffset: c.qOffset, dropout };
  if (c.fold === 'whole') return attention(q, k, v, { ...opts, returnWeights });
  if (c.fold === 'capacity') return attention(q, withCapacity(k, 3), withCapacity(v, 3), opts);
  const state = () => new OnlineSoftmaxState(q, { dV: c.dV, ...opts });
  if (c.fold === 'chunks') {
    const st = state();
    let s0 = 0;
    for (const n of c.parts) {
      st.update(sliceKv(k, s0, s0 + n), sliceKv(v, s0, s0 + n), s0);
      s0 += n;
    }
    return st.finalize();
  }
  // merge: the state of the later keys absorbs the state of the earlier ones (with one key,
  // an empty state absorbs the state of that key).
  const [n0] = c.parts;
  const early = state().update(sliceKv(k, 0, n0), sliceKv(v, 0, n0), 0);
  const late = n0 < c.S ? state().update(sliceKv(k, n0, c.S), sliceKv(v, n0, c.S), n0) : state();
  return late.merge(early).finalize();
}

for (const [i, c] of CASES.entries()) {
  test.serial(`attention grid #${i}: ${describe(c)}`, (t) => {
    const rng = new Rng(c.seed % 2 ** 32, 2);
    const q = rng.normalTensor([c.B, c.H, c.T, c.dK]);
    const k = rng.normalTensor([c.B, c.Hkv, c.S, c.dK]);
    const v = rng.normalTensor([c.B, c.Hkv, c.S, c.dV]);
    const keep = c.p ? refKeepMask({ B: c.B, H: c.H, T: c.T, S: c.S }, c.p, c.seed, c.qOffset) : undefined;
    const weights = c.fold === 'whole' && c.B * c.H * c.T * c.S <= 3e5;
    // Rescales: one per key block of 512 in each update call, one per call and per merge.
    const rescales = c.parts.reduce((a, n) => a + Math.ceil(n / 512) + 1, 0) + c.parts.length;
    const ref = refAttentionBound(q.data, k.data, v.data, c, {
      scale: c.scale || 1 / Math.sqrt(c.dK), causal: c.mask !== 'none', qOffset: c.qOffset, keep, p: c.p, rescales, probs: weights,
    });
    onEveryPath((label) => {
      const r = run(c, q, k, v, weights);
      assertWithin(t, r.output.data, ref.out, ref.outBound, `${label}: output`, r.output.shape);
      assertWithin(t, r.lse.data, ref.lse, ref.lseBound, `${label}: lse`, r.lse.shape);
      if (r.weights) assertWithin(t, r.weights.data, ref.probs!, ref.probsBound!, `${label}: weights`, r.weights.shape);
      // The keep mask is the documented Philox rule, an integer function: exact on every path.
      if (r.mask) {
        const wrong = r.mask.data.findIndex((x, i) => x !== keep![i]);
        t.is(wrong, -1, `${label}: keep mask differs from the Philox rule first at [b,h,t,s] ${wrong < 0 ? '' : JSON.stringify(unravel(wrong, r.mask.shape))}`);
      }
    });
  });
}

test.serial('the attention design covers every axis value, the pinned shapes and each tile query tail', (t) => {
  for (const a of AXIS_NAMES) {
    const value = (c: Case) => (a === 'dims' ? [c.dK, c.dV] : a === 'heads' ? [c.H, c.Hkv] : c[a]);
    const seen = new Set(CASES.map((c) => JSON.stringify(value(c))));
    const missing = (AXES[a] as readonly unknown[]).filter((x) => !seen.has(JSON.stringify(x)));
    t.deepEqual(missing, [], `axis ${a}: values never used`);
  }
  const tileable = (c: Case) => c.dK % 16 === 0 && c.dV % 16 === 0;
  // Each query count with tile-able widths: every tq mod 6 (P·V tail) and padded width.
  for (const T of AXES.T) t.true(CASES.some((c) => c.T === T && tileable(c)), `T ${T} with d_k, d_v multiples of 16`);
  // What the tile kernel (native/tile_kernels.inc) sees on these cases, also where this CPU has no tile:
  // query blocks of up to 128 padded to 32, 64, 96 or 128 (the softmax counters), P·V tails of
  // tq mod 6 rows.
  const widths = new Set<number>(), tails = new Set<number>();
  for (const c of CASES.filter(tileable))
    for (let t0 = 0; t0 < c.T; t0 += 128) {
      const tq = Math.min(128, c.T - t0);
      widths.add(Math.ceil(tq / 32) * 32);
      if (tq % 6) tails.add(tq % 6);
    }
  t.deepEqual([...widths].sort((a, b) => a - b), [32, 64, 96, 128], 'padded query block widths');
  t.deepEqual([...tails].sort(), [1, 2, 3, 4, 5], 'pv_tail row counts');
  t.true(CASES.some((c) => tileable(c) && c.T > 16 && c.fold === 'chunks' && c.parts.length > 1), 'T > 16 streamed with sOffset > 0 into the tile/BLAS path');
  t.true(CASES.some((c) => tileable(c) && c.T > 16 && c.S > 1024 && c.S % 512 !== 0), 'T > 16 over three key blocks, ragged');
  t.true(CASES.some((c) => c.p > 0 && c.mask === 'causal:neg'), 'dropout with rows that see nothing');
  const work = CASES.reduce((a, c) => a + cost(c.B, c.H, c.T, c.S, c.dK, c.dV), 0);
  t.log(`${CASES.length} attention cases (${PINNED.length} pinned), reference work ${(work / 1e9).toFixed(2)}e9, paths ${PATHS.join(', ')} at ${THREADS.join(' and ')} threads`);
});

// The lse check is absolute: a result that is missing one key must fail it. A relative 1e-4
// (|lse| ~ 7 here, so ~7e-4) lets a key of weight up to ~7e-4 go missing unnoticed.
test.serial('the lse bound rejects a result with one key missing, which a relative 1e-4 accepts', (t) => {
  const [B, H, Hkv, T, S, dK, dV] = [1, 2, 1, 4, 1000, 32, 16];
  const rng = new Rng(17);
  const q = rng.normalTensor([B, H, T, dK]), k = rng.normalTensor([B, Hkv, S, dK]), v = rng.normalTensor([B, Hkv, S, dV]);
  const ref = refAttentionBound(q.data, k.data, v.data, { B, H, Hkv, T, S, dK, dV }, { scale: 1 / Math.sqrt(dK), causal: false, qOffset: 0, rescales: 3, probs: true });
  // The key whose largest weight over the rows is closest to 5e-4: small, but > 5x the lse bound.
  let drop = 0;
  const weightOf = (s: number) => Math.max(...Array.from({ length: B * H * T }, (_, r) => ref.probs![r * S + s]));
  for (let s = 1; s < S; s++) if (Math.abs(Math.log(weightOf(s) / 5e-4)) < Math.abs(Math.log(weightOf(drop) / 5e-4))) drop = s;
  const maxBound = Math.max(...ref.lseBound);
  t.true(weightOf(drop) > 5 * maxBound, `dropped key's weight ${weightOf(drop)} vs lse bound ${maxBound}`);
  const keepIdx = (x: Tensor, d: number): Tensor => {
    const out = new Float32Array(B * Hkv * (S - 1) * d);
    for (let bh = 0; bh < B * Hkv; bh++) {
      out.set(x.data.subarray(bh * S * d, (bh * S + drop) * d), bh * (S - 1) * d);
      out.set(x.data.subarray((bh * S + drop + 1) * d, (bh + 1) * S * d), (bh * (S - 1) + drop) * d);
    }
    return { data: out, shape: [B, Hkv, S - 1, d] };
  };
  const missing = attention(q, keepIdx(k, dK), keepIdx(v, dV), { qOffset: 0 });
  const full = attention(q, k, v, { qOffset: 0 });
  assertWithin(t, full.lse.data, ref.lse, ref.lseBound, 'all keys: lse');
  const report = checkWithin(missing.lse.data, ref.lse, ref.lseBound, 'one key missing: lse', missing.lse.shape);
  t.false(report.ok, 'the absolute lse bound must reject a result with a key missing');
  t.log(report.message);
  const relative = Array.from(missing.lse.data).every((x, i) => Math.abs(x - ref.lse[i]) <= 1e-5 + 1e-4 * Math.abs(ref.lse[i]));
  t.true(relative, 'the old relative tolerance (1e-5 + 1e-4·|lse|) accepts the same result');
});

// ---------------------------------------------------------------------------------------------
// linear: every GEMM entry (native/attention.cc `linear`, native/tile.cc `tile_linear`):
//   under auto, M·K·N <= 65536: small_linear (no BLAS call: 1x64x80, 7x13x5, and 5x16x72 for
//   its row pairs over 32-column blocks, then 8 columns, then an odd last row);
//   M <= 2 and K >= 256: sgemv on blocks of 128 rows of w, the partial sums added after (ragged
//   last blocks: 1x600x130, 2x520x72, and 2x1100x130 and 2x300x520 over the pool's 1 MFLOP cut);
//   M <= 2 with K < 256 (1x100x1300 split by columns), or a last row block of 1..2 rows: sgemv;
//   M > 2: sgemm; M > 2, M·K·N >= 4e6, N % 16 == 0: tile_linear, w packed when N > 512
//   (AVX-512) or N > 16 (AVX2), read in place otherwise (40x24x16 under `tile`), K > 256 in
//   several passes; few row blocks at 2 threads:
//   columns split too, into a task count the threads divide (200x40x96 on AVX2: 3 row blocks,
//   4 column groups of 1 or 2 of its 6 slabs).
//   Under `tile` every N % 16 == 0 shape takes the tile.
const LINEAR: [number, number, number][] = [
  [1, 64, 80], [2, 300, 520], [1, 600, 130], [2, 520, 72], [2, 1100, 130], [1, 100, 1300], [7, 13, 5], [5, 16, 72], [66, 40, 48], [130, 96, 1024], [100, 300, 512], [97, 200, 528], [3, 1400, 1024], [64, 64, 1040], [200, 100, 250], [40, 24, 16], [200, 40, 96],
];

for (const [M, K, N] of LINEAR) {
  test.serial(`linear grid: ${M}x${K}x${N}, with and without bias`, (t) => {
    const rng = new Rng(M * 7919 + K * 31 + N);
    const x = rng.normalTensor([M, K]), w = rng.normalTensor([K, N]), b = rng.normalTensor([N]);
    for (const bias of [b.data, null]) {
      const ref = refLinearBound(x.data, w.data, bias, M, K, N);
      onEveryPath((label) => {
        const y = new Float32Array(M * N).fill(NaN);
        addon.linear(x.data, w.data, bias, y, M, K, N);
        assertWithin(t, y, ref.y, ref.bound, `${label}: linear ${M}x${K}x${N} bias=${!!bias}`, [M, N]);
      });
    }
  });
}

// projectHeads: x [B,T,K] · w [K,heads·d] + b -> [B,heads,T,d]. On the tile each column slab is
// written straight into its head when d is a multiple of the slab (16 on AVX2, 64 on AVX-512)
// and B is 1 or T >= 96 (its row block), else the product goes through a copy: d 16 (AVX-512
// copies), row blocks across a batch (B3 T100, B2 T97: rows 96..191), B1 T40 (one short block),
// K > 256 in two passes (under auto the tile), w packed (N > 512 on AVX-512; every head-split w
// on AVX2, where only N <= 16 is read in place); B2 T5 copies, T 1 and one head are already in
// head order. Whenever a call takes the tile (its counters move), linear.tile.heads must move
// exactly when the shape allows the split.
const PROJECT_HEADS: [number, number, number, number, number][] = [
  [1, 200, 40, 6, 16], [3, 100, 24, 2, 64], [1, 40, 24, 2, 64], [2, 130, 300, 8, 64], [2, 97, 64, 3, 192], [2, 5, 16, 4, 32], [4, 1, 32, 3, 16], [2, 96, 16, 1, 48],
];
const SLAB = info().vmath === 'avx512f' ? 64 : 16;

for (const [B, T, K, heads, d] of PROJECT_HEADS) {
  test.serial(`projectHeads grid: B${B} T${T} K${K} heads${heads} d${d}, with and without bias`, (t) => {
    const rng = new Rng(B * 7919 + T * 31 + K * 7 + heads * d);
    const x = rng.normalTensor([B, T, K]), w = rng.normalTensor([K, heads * d]), b = rng.normalTensor([heads * d]);
    const split = heads > 1 && T > 1 && d % SLAB === 0 && (B === 1 || T >= 96);
    const tileCalls = (c: Record<string, number>) => c['linear.tile.packed'] + c['linear.tile.inplace'];
    for (const bias of [b.data, null]) {
      const ref = refProjectHeads(x.data, w.data, bias, B, T, K, heads, d);
      onEveryPath((label) => {
        const out = new Float32Array(B * heads * T * d).fill(NaN);
        const before = kernelCounts();
        addon.projectHeads(x.data, w.data, bias, out, B, T, K, heads, d);
        assertWithin(t, out, ref.y, ref.bound, `${label}: projectHeads bias=${!!bias}`, [B, heads, T, d]);
        const after = kernelCounts(), onTile = tileCalls(after) > tileCalls(before);
        t.is(after['linear.tile.heads'] - before['linear.tile.heads'], onTile && split ? 1 : 0, `${label}: head-split tile calls`);
      });
    }
  });
}

// The whole module in one native call (mhaForward): the first row is the issue's crash
// (d_model 1024, N >= 1024 at 2 threads on the tile GEMM); the others add GQA, d_k != d_v,
// dropout and a causal offset. The bound carries the projections' errors through attention.
const MODULES = [
  { config: { dModel: 1024, numHeads: 8 }, B: 2, T: 5, S: 5, causal: false, qOffset: 0, p: 0 },
  { config: { dModel: 96, dKvIn: 64, dOut: 80, numHeads: 6, numKvHeads: 2, dK: 32, dV: 16 }, B: 2, T: 21, S: 600, causal: true, qOffset: 300, p: 0.2 },
  { config: { dModel: 64, numHeads: 4, numKvHeads: 1, dK: 16, dV: 48, bias: false }, B: 1, T: 3, S: 40, causal: true, qOffset: -1, p: 0 },
];

for (const [i, m] of MODULES.entries()) {
  test.serial(`module grid #${i}: ${JSON.stringify(m.config)} B${m.B} T${m.T} S${m.S}${m.causal ? ` causal@${m.qOffset}` : ''}${m.p ? ` drop${m.p}` : ''}`, (t) => {
    const mha = MultiHeadAttention.random(m.config, 40 + i);
    const rng = new Rng(50 + i);
    const xQ = rng.normalTensor([m.B, m.T, mha.config.dModel]), xKv = rng.normalTensor([m.B, m.S, mha.config.dKvIn]);
    const seed = 77 + i;
    const ref = refModuleBound(mha, xQ, xKv, { causal: m.causal, qOffset: m.qOffset, dropout: m.p ? { p: m.p, seed } : undefined, rescales: Math.ceil(m.S / 512) + 2 });
    onEveryPath((label) => {
      const r = mha.forward(xQ, xKv, { causal: m.causal, qOffset: m.qOffset, dropout: m.p ? { p: m.p, seed } : undefined });
      assertWithin(t, r.output.data, ref.output, ref.outputBound, `${label}: output`, r.output.shape);
      assertWithin(t, r.lse.data, ref.lse, ref.lseBound, `${label}: lse`, r.lse.shape);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Reach: every kernel function the grid is meant to exercise was called at least once.
const TILE_ONLY = (name: string) => name === 'attn.tile' || name.startsWith('tile.') || name.startsWith('linear.tile.');

test.serial('every kernel counter was reached by the grid (tile-only counters need info().tile)', (t) => {
  const counts = kernelCounts();
  const names = Object.keys(counts);
  t.true(names.length > 0, 'kernelCounts() lists the counters');
  const skipped = TILE ? [] : names.filter(TILE_ONLY);
  if (skipped.length) t.log(`info().tile is false (no AVX2 + FMA, KVSTREAM_VMATH=baseline or KVSTREAM_TILE=off): not required here: ${skipped.join(', ')}`);
  // The row path reads every storage with the direct kernels where they run, and with sgemv, vmath's
  // few-row kernels and sgemm elsewhere (the KVSTREAM_VMATH=baseline run of this grid in .ci/run).
  skipped.push(...(info().kvDirect ? ['attn.rows.sgemv', 'attn.rows.dot', 'attn.rows.sgemm'] : ['attn.rows.direct']));
  // A cache larger than L3, and int8 storage's integer P·V: test/kernels/kvstore.test.ts checks them.
  skipped.push('kv.stream', 'kv.i8.pv.q16', 'kv.i8.pv.q16.fp32');
  const never = names.filter((n) => counts[n] === 0 && !skipped.includes(n));
  t.deepEqual(never, [], `kernel counters never reached: ${never.join(', ')}`);
  t.log(Object.entries(counts).map(([n, x]) => `${n}=${x}`).join(' '));
});

// Counters count from load, per process (each test file runs in its own).
test.before(() => resetKernelCounts());
