// Naive float64 reference, written independently of native/: its own loops, no shared helpers.
// Shapes: q [B,H,T,dK], k [B,Hkv,S,dK], v [B,Hkv,S,dV] -> out [B,H,T,dV], lse [B,H,T], probs [B,H,T,S].
import { philox4x32 } from '../../src/random.ts';


export interface RefDims { B: number; H: number; Hkv: number; T: number; S: number; dK: number; dV: number }
export interface RefOpts {
  scale: number;
  causal: boolean;
  qOffset: number;
  /** Keep mask [B,H,T,S] (1 = kept) and drop probability; omitted = no dropout. */
  keep?: Uint8Array;
  p?: number;
}

export function refAttention(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, d: RefDims, o: RefOpts) {
  const out = new Float64Array(d.B * d.H * d.T * d.dV);
  const lse = new Float64Array(d.B * d.H * d.T);
  const probs = new Float64Array(d.B * d.H * d.T * d.S);
  const perKv = d.H / d.Hkv;
  for (let b = 0; b < d.B; b++) {
    for (let h = 0; h < d.H; h++) {
      const hk = Math.floor(h / perKv);
      for (let t = 0; t < d.T; t++) {
        const row = (b * d.H + h) * d.T + t;
        const scores = new Float64Array(d.S);
        let max = -Infinity;
        for (let s = 0; s < d.S; s++) {
          if (o.causal && s > o.qOffset + t) {
            scores[s] = -Infinity;
            continue;
          }
          let dot = 0;
          for (let i = 0; i < d.dK; i++) dot += q[row * d.dK + i] * k[((b * d.Hkv + hk) * d.S + s) * d.dK + i];
          scores[s] = dot * o.scale;
          if (scores[s] > max) max = scores[s];
        }
        if (max === -Infinity) {
          lse[row] = -Infinity;
          continue; // output and probs stay 0
        }
        let sum = 0;
        for (let s = 0; s < d.S; s++) sum += Math.exp(scores[s] - max);
        lse[row] = max + Math.log(sum);
        for (let s = 0; s < d.S; s++) {
          let p = Math.exp(scores[s] - max) / sum;
          if (o.keep) p = o.keep[row * d.S + s] ? p / (1 - (o.p ?? 0)) : 0;
          probs[row * d.S + s] = p;
          if (p === 0) continue;
          for (let j = 0; j < d.dV; j++) out[row * d.dV + j] += p * v[((b * d.Hkv + hk) * d.S + s) * d.dV + j];
        }
      }
    }
  }
  return { out, lse, probs };
}

/** y [M,N] = x [M,K] · w [K,N] + b [N] in float64. */
export function refLinear(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, M: number, K: number, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let acc = b ? b[j] : 0;
      for (let kk = 0; kk < K; kk++) acc += x[i * K + kk] * w[kk * N + j];
      y[i * N + j] = acc;
    }
  return y;
}

// ---------------------------------------------------------------------------------------------
// Error bounds. The kernels compute in fp32 from fp32 inputs; the reference below computes the
// same quantities in float64 from the same inputs, together with a bound on |fp32 - exact| that
// holds for every kernel path (any summation order, with or without FMA):
//
//   * an fp32 sum or dot product of n terms has |Δ| <= γ_n · Σ|terms|, γ_n = n·u/(1 - n·u),
//     u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, §3.1);
//   * score s = scale · q·k: |Δs| <= δ = γ_{d_k+2} · |scale| · Σ_i |q_i k_i| (d_k products, the
//     multiply by scale, scale itself rounded to fp32); with inputs that carry errors dq, dk
//     (a projection's output), + |scale| · Σ_i (dq_i (|k_i| + dk_i) + |q_i| dk_i). Both sums are
//     bounded by products of row norms (Cauchy-Schwarz), which keeps the reference O(S·d);
//   * weight w = exp(s - m): the argument rounds once more (u·|s - m|), exp is within
//     EPS_EXP = 2.3e-7 relative (native/vmath.h), and each of the R rescales by
//     alpha = exp(m_old - m_new) that a key's weight goes through adds EPS_EXP + 2u. So each
//     weight is within e_s = expm1(δ + u·|s - m|)·(1 + EPS_EXP) + EPS_EXP + R·(EPS_EXP + 2u)
//     relative, and l = Σ w within ē + γ_{n+R} with ē = Σ p_s e_s (n visible keys);
//   * output o = Σ p_s c_s v_s (c_s = keep/(1-p), or 1): perturbing weights by e_s moves the
//     convex combination by at most (Σ p_s c_s |v_s| e_s + ē · A)/(1 - ē), A = Σ p_s c_s |v_s|;
//     the fp32 accumulation of acc and the dropout rescale add γ_{n+2R+4}·A, the sum l and the
//     division add γ_{n+R+1}·|o|, and value errors dv add Σ p_s c_s dv_s;
//   * lse = m + log l: -log1p(-(ē + γ_{n+R})) from l, + 2u·|log l| (fp32 log, 1 ulp) + u·|lse|
//     (the final add). This is an ABSOLUTE bound: one dropped key of weight p moves lse by
//     -log(1 - p) ≈ p, which a relative tolerance of 1e-4·|lse| (|lse| ~ 10) lets through.
//   * probs p = exp(s - lse)·c: relative expm1(δ + lseBound + u·|s - lse|)(1 + EPS_EXP) + EPS_EXP + 2u;
//   * exp flushes results below FLT_MIN = 2^-126 to 0: + c·FLT_MIN absolute per probability, and
//     n·FLT_MIN on l (>= 1) and n·c·FLT_MIN·max|v| on an output.
// The analysis keeps first-order terms; what it drops are products of two first-order relative
// bounds, each at most ~5e-3 in these tests (d = 256 at scale 1), so below 0.5% of the bound:
// the bounds are multiplied by SECOND_ORDER = 1.01 to cover them.
// ---------------------------------------------------------------------------------------------

/** fp32 unit roundoff. */
export const U = 2 ** -24;
/** Stated relative error of the kernels' exp (native/vmath.h); std::exp in fp32 is within it too. */
export const EPS_EXP = 2.3e-7;
/** Smallest normal fp32, 2^-126: the kernels' exp gives 0 below it (argument < -87.3), so each
 * weight or probability also carries this much absolute error. */
export const FLT_MIN = 2 ** -126;
/** Cover for the neglected second-order terms (products of two relative bounds, each <= ~5e-3). */
export const SECOND_ORDER = 1.01;

/** Rescales one weight can see when S keys are folded in `calls` update calls (or merged states):
 * a key block of 512 per call, the call itself, and a margin. */
export function chunkedRescales(S: number, calls: number): number {
  return Math.ceil(S / 512) + 2 * calls + 2;
}

/** γ_n = n·u / (1 - n·u): relative bound of an fp32 sum of n terms in any order. */
export function gamma(n: number): number {
  return (n * U) / (1 - n * U);
}

/**
 * The documented dropout rule (native/philox.h), computed here from the TypeScript Philox (tested
 * against the Random123 known-answer vectors in test/dropout.test.ts), not by the addon:
 * counter (s_abs >> 2, t_abs, h, b), key (seed lo, seed hi), lane s_abs & 3; keep iff
 * (word >> 8) >= ceil(fp32(p) · 2^24).
 */
export function refKeep(seed: number, p: number, b: number, h: number, tAbs: number, sAbs: number): number {
  const word = philox4x32(sAbs >>> 2, tAbs >>> 0, h, b, seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0)[sAbs & 3];
  return word >>> 8 >= Math.ceil(Math.fround(p) * 2 ** 24) ? 1 : 0;
}

/** Keep mask [B,H,T,S] for queries at qOffset + t and keys at sOffset + s. */
export function refKeepMask(d: { B: number; H: number; T: number; S: number }, p: number, seed: number, qOffset: number, sOffset = 0): Uint8Array {
  const keep = new Uint8Array(d.B * d.H * d.T * d.S);
  for (let b = 0; b < d.B; b++)
    for (let h = 0; h < d.H; h++)
      for (let t = 0; t < d.T; t++) {
        const row = ((b * d.H + h) * d.T + t) * d.S;
        for (let s = 0; s < d.S; s++) keep[row + s] = refKeep(seed, p, b, h, qOffset + t, sOffset + s);
      }
  return keep;
}

export interface RefBoundOpts extends RefOpts {
  /** Absolute position of key 0 (default 0): key s is visible from query t iff sOffset + s <= qOffset + t. */
  sOffset?: number;
  /** Rescales a weight can go through: key blocks of 512 per update call + calls + merges. */
  rescales: number;
  /** Absolute errors of the inputs, same layouts as q, k, v (omitted: exact fp32 inputs). */
  dq?: ArrayLike<number>;
  dk?: ArrayLike<number>;
  dv?: ArrayLike<number>;
  /** Also compute probs and their bound (costs B·H·T·S floats). */
  probs?: boolean;
}

export interface RefAttentionBound {
  /** [B,H,T,dV] exact output and its bound. */
  out: Float64Array;
  outBound: Float64Array;
  /** [B,H,T] exact lse (-inf for a row with no visible key) and its absolute bound. */
  lse: Float64Array;
  lseBound: Float64Array;
  /** [B,H,T,S] probabilities after dropout and their bound, when asked. */
  probs?: Float64Array;
  probsBound?: Float64Array;
}

/** refAttention in float64 with the error bound of any fp32 kernel path (see the header above). */
export function refAttentionBound(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, d: RefDims, o: RefBoundOpts): RefAttentionBound {
  const { B, H, Hkv, T, S, dK, dV } = d;
  const rows = B * H * T;
  const out = new Float64Array(rows * dV), outBound = new Float64Array(rows * dV);
  const lse = new Float64Array(rows), lseBound = new Float64Array(rows);
  const probs = o.probs ? new Float64Array(rows * S) : undefined;
  const probsBound = o.probs ? new Float64Array(rows * S) : undefined;
  const perKv = H / Hkv, sOffset = o.sOffset ?? 0, R = o.rescales, scaleAbs = Math.abs(o.scale);
  const keepScale = o.keep ? 1 / (1 - (o.p ?? 0)) : 1;
  // |q̂|, |k̂|, |v̂| bounds of the fp32 inputs the kernel reads (exact values + their errors).
  const absPlus = (x: ArrayLike<number>, dx?: ArrayLike<number>) => {
    const a = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) a[i] = Math.abs(x[i]) + (dx ? dx[i] : 0);
    return a;
  };
  // Inner loops read Float64Array copies only (one element kind, so they stay monomorphic).
  const q64 = Float64Array.from(q), k64 = Float64Array.from(k), v64 = Float64Array.from(v);
  const va = absPlus(v, o.dv), dv = o.dv ? Float64Array.from(o.dv) : null;
  // Σ_i |q̂_i k̂_i| <= ||q̂||·||k̂|| and Σ_i dq_i |k̂_i| <= ||dq||·||k̂|| (Cauchy-Schwarz): row norms
  // of the bounds |q| + dq etc. replace the per-pair sums of absolute products.
  const norms = (x: ArrayLike<number>, dx: ArrayLike<number> | undefined, len: number, abs: boolean) => {
    const r = new Float64Array(x.length / len);
    for (let i = 0; i < r.length; i++) {
      let ss = 0;
      for (let j = 0; j < len; j++) {
        const a = (abs ? Math.abs(x[i * len + j]) : 0) + (dx ? dx[i * len + j] : 0);
        ss += a * a;
      }
      r[i] = Math.sqrt(ss);
    }
    return r;
  };
  const qHat = norms(q, o.dq, dK, true), kHat = norms(k, o.dk, dK, true);
  const qAbs = norms(q, undefined, dK, true), dqN = o.dq ? norms(q, o.dq, dK, false) : null, dkN = o.dk ? norms(k, o.dk, dK, false) : null;
  const gScore = gamma(dK + 2);
  const score = new Float64Array(S), delta = new Float64Array(S), p = new Float64Array(S), e = new Float64Array(S);
  const F = new Float64Array(dV), A = new Float64Array(dV), G = new Float64Array(dV), acc = new Float64Array(dV);
  const keep = o.keep;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const kvBase = (b * Hkv + Math.floor(h / perKv)) * S;
      for (let t = 0; t < T; t++) {
        const row = (b * H + h) * T + t;
        const n = o.causal ? Math.max(0, Math.min(S, o.qOffset + t - sOffset + 1)) : S;
        if (n === 0) {
          lse[row] = -Infinity; // output, probs and every bound stay 0: the kernel must give exactly 0 and -inf
          continue;
        }
        const qo = row * dK;
        let m = -Infinity;
        for (let s = 0; s < n; s++) {
          const ko = (kvBase + s) * dK;
          let dot = 0;
          for (let i = 0; i < dK; i++) dot += q64[qo + i] * k64[ko + i];
          const din = (dqN ? dqN[row] * kHat[kvBase + s] : 0) + (dkN ? qAbs[row] * dkN[kvBase + s] : 0);
          score[s] = dot * o.scale;
          delta[s] = scaleAbs * (gScore * qHat[row] * kHat[kvBase + s] + din);
          if (score[s] > m) m = score[s];
        }
        let l = 0;
        for (let s = 0; s < n; s++) l += (p[s] = Math.exp(score[s] - m));
        let ebar = 0;
        for (let s = 0; s < n; s++) {
          p[s] /= l;
          e[s] = Math.expm1(delta[s] + U * Math.abs(score[s] - m)) * (1 + EPS_EXP) + EPS_EXP + R * (EPS_EXP + 2 * U);
          ebar += p[s] * e[s];
        }
        lse[row] = m + Math.log(l);
        const El = ebar + gamma(n + R) + n * FLT_MIN;
        lseBound[row] = SECOND_ORDER * (-Math.log1p(-El) + 2 * U * (Math.log(l) + El) + U * Math.abs(lse[row]));
        F.fill(0);
        A.fill(0);
        G.fill(0);
        acc.fill(0);
        for (let s = 0; s < n; s++) {
          const pc = keep ? (keep[row * S + s] ? p[s] * keepScale : 0) : p[s];
          if (pc === 0) continue;
          const vo = (kvBase + s) * dV, pce = pc * e[s];
          for (let j = 0; j < dV; j++) {
            acc[j] += pc * v64[vo + j];
            const a = va[vo + j];
            A[j] += pc * a;
            F[j] += pce * a;
          }
          if (dv) for (let j = 0; j < dV; j++) G[j] += pc * dv[vo + j];
        }
        const gAcc = gamma(n + 2 * R + 4), gL = gamma(n + R + 1), oo = row * dV;
        let vMax = 0;
        for (let i = kvBase * dV; i < (kvBase + n) * dV; i++) vMax = Math.max(vMax, va[i]);
        const flushed = n * keepScale * FLT_MIN * vMax;
        for (let j = 0; j < dV; j++) {
          out[oo + j] = acc[j];
          outBound[oo + j] = SECOND_ORDER * ((F[j] + ebar * A[j]) / (1 - ebar) + gAcc * A[j] + gL * Math.abs(acc[j]) + G[j] + flushed);
        }
        if (probs && probsBound) {
          for (let s = 0; s < n; s++) {
            const c = keep ? (keep[row * S + s] ? keepScale : 0) : 1;
            const pr = Math.exp(score[s] - lse[row]) * c;
            probs[row * S + s] = pr;
            const rel = Math.expm1(delta[s] + lseBound[row] + U * Math.abs(score[s] - lse[row])) * (1 + EPS_EXP) + EPS_EXP + 2 * U;
            probsBound[row * S + s] = SECOND_ORDER * (pr * rel + c * FLT_MIN);
          }
        }
      }
    }
  return { out, outBound, lse, lseBound, probs, probsBound };
}

/** y [M,N] = x [M,K] · w [K,N] + b [N] in float64, and |fp32 y - y| <= γ_{K+1} (|b| + Σ_k |x w|) (+ Σ_k dx |w| for inputs with errors dx). */
export function refLinearBound(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, M: number, K: number, N: number, dx?: ArrayLike<number>): { y: Float64Array; bound: Float64Array } {
  const y = new Float64Array(M * N), abs = new Float64Array(M * N), din = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    const yo = i * N;
    if (b) for (let j = 0; j < N; j++) {
      y[yo + j] = b[j];
      abs[yo + j] = Math.abs(b[j]);
    }
    for (let kk = 0; kk < K; kk++) {
      const xv = x[i * K + kk], xa = Math.abs(xv) + (dx ? dx[i * K + kk] : 0), dxv = dx ? dx[i * K + kk] : 0, wo = kk * N;
      if (xa === 0) continue;
      for (let j = 0; j < N; j++) {
        const wv = w[wo + j];
        y[yo + j] += xv * wv;
        abs[yo + j] += xa * Math.abs(wv);
      }
      if (dxv) for (let j = 0; j < N; j++) din[yo + j] += dxv * Math.abs(w[wo + j]);
    }
  }
  const g = gamma(K + 1), bound = new Float64Array(M * N);
  for (let i = 0; i < M * N; i++) bound[i] = g * abs[i] + din[i];
  return { y, bound };
}

/** x [B,T,K] · w [K, heads·d] + b -> [B,heads,T,d] in float64, with the bound of each element. */
export function refProjectHeads(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, B: number, T: number, K: number, heads: number, d: number): { y: Float64Array; bound: Float64Array } {
  const flat = refLinearBound(x, w, b, B * T, K, heads * d);
  const y = new Float64Array(B * heads * T * d), bound = new Float64Array(y.length);
  for (let bb = 0; bb < B; bb++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < heads; h++)
        for (let i = 0; i < d; i++) {
          const src = (bb * T + t) * heads * d + h * d + i, dst = ((bb * heads + h) * T + t) * d + i;
          y[dst] = flat.y[src];
          bound[dst] = flat.bound[src];
        }
  return { y, bound };
}

export interface RefMhaWeights {
  wQ: ArrayLike<number>; wK: ArrayLike<number>; wV: ArrayLike<number>; wO: ArrayLike<number>;
  bQ: ArrayLike<number> | null; bK: ArrayLike<number> | null; bV: ArrayLike<number> | null; bO: ArrayLike<number> | null;
}
export interface RefMhaConfig { dModel: number; dKvIn: number; dOut: number; H: number; Hkv: number; dK: number; dV: number; scale: number }

/**
 * The whole module in float64 with bounds: xQ [B,T,dModel], xKv [B,S,dKvIn] (every key the
 * queries see, from position sOffset) -> output [B,T,dOut], lse [B,H,T]. Projection errors
 * propagate into the attention bound (dq, dk, dv) and the output projection.
 */
export function refMhaBound(c: RefMhaConfig, w: RefMhaWeights, xQ: ArrayLike<number>, xKv: ArrayLike<number>, B: number, T: number, S: number,
  o: { causal: boolean; qOffset: number; sOffset?: number; keep?: Uint8Array; p?: number; rescales: number }) {
  const q = refProjectHeads(xQ, w.wQ, w.bQ, B, T, c.dModel, c.H, c.dK);
  const k = refProjectHeads(xKv, w.wK, w.bK, B, S, c.dKvIn, c.Hkv, c.dK);
  const v = refProjectHeads(xKv, w.wV, w.bV, B, S, c.dKvIn, c.Hkv, c.dV);
  const att = refAttentionBound(q.y, k.y, v.y, { B, H: c.H, Hkv: c.Hkv, T, S, dK: c.dK, dV: c.dV },
    { scale: c.scale, causal: o.causal, qOffset: o.qOffset, sOffset: o.sOffset, keep: o.keep, p: o.p, rescales: o.rescales, dq: q.bound, dk: k.bound, dv: v.bound });
  const y = refMergeProject(att.out, att.outBound, w.wO, w.bO, B, c.H, T, c.dV, c.dOut);
  return { output: y.y, outputBound: y.bound, lse: att.lse, lseBound: att.lseBound, k, v };
}

/**
 * The output projection in float64 with its bound: per-head o [B,H,T,dV] (bound oBound) merged to
 * [B,T,H·dV], then · w_o [H·dV,dOut] + b_o; the bound carries oBound through |w_o| (SECOND_ORDER).
 */
export function refMergeProject(o: ArrayLike<number>, oBound: ArrayLike<number>, wO: ArrayLike<number>, bO: ArrayLike<number> | null,
  B: number, H: number, T: number, dV: number, dOut: number): { y: Float64Array; bound: Float64Array } {
  const merged = new Float64Array(B * T * H * dV), mergedBound = new Float64Array(merged.length);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let t = 0; t < T; t++)
        for (let i = 0; i < dV; i++) {
          const src = ((b * H + h) * T + t) * dV + i, dst = (b * T + t) * H * dV + h * dV + i;
          merged[dst] = o[src];
          mergedBound[dst] = oBound[src];
        }
  const y = refLinearBound(merged, wO, bO, B * T, H * dV, dOut, mergedBound);
  for (let i = 0; i < y.bound.length; i++) y.bound[i] *= SECOND_ORDER;
  return y;
}

/** A module as test/ sees it: resolved config and weight tensors (structural, so no src import). */
export interface RefModule {
  config: { dModel: number; dKvIn: number; dOut: number; numHeads: number; numKvHeads: number; dK: number; dV: number; scale: number };
  weights: Record<'wQ' | 'wK' | 'wV' | 'wO', { data: Float32Array }> & Partial<Record<'bQ' | 'bK' | 'bV' | 'bO', { data: Float32Array }>>;
}

/** refMhaBound for a MultiHeadAttention: xQ [B,T,dModel] over xKv [B,S,dKvIn]. */
export function refModuleBound(mha: RefModule, xQ: { data: Float32Array; shape: readonly number[] }, xKv: { data: Float32Array; shape: readonly number[] },
  o: { causal: boolean; qOffset: number; sOffset?: number; dropout?: { p: number; seed: number }; rescales: number }) {
  const c = mha.config, w = mha.weights;
  const [B, T] = xQ.shape, S = xKv.shape[1];
  const keep = o.dropout ? refKeepMask({ B, H: c.numHeads, T, S }, o.dropout.p, o.dropout.seed, o.qOffset, o.sOffset ?? 0) : undefined;
  return refMhaBound({ dModel: c.dModel, dKvIn: c.dKvIn, dOut: c.dOut, H: c.numHeads, Hkv: c.numKvHeads, dK: c.dK, dV: c.dV, scale: c.scale },
    { wQ: w.wQ.data, wK: w.wK.data, wV: w.wV.data, wO: w.wO.data, bQ: w.bQ?.data ?? null, bK: w.bK?.data ?? null, bV: w.bV?.data ?? null, bO: w.bO?.data ?? null },
    xQ.data, xKv.data, B, T, S, { causal: o.causal, qOffset: o.qOffset, sOffset: o.sOffset, keep, p: o.dropout?.p, rescales: o.rescales });
}
