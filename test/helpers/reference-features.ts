// Float64 reference for the cache features of issues 9 and 10 (rotary embeddings, ALiBi, softcap,
// sliding window, sink tokens, head sinks, ragged rows, storage dtypes), written independently of
// native/ and src/: own loops, own fp16/bf16/int8 encoders; only the dropout rule (refKeep, on
// src/random.ts's Philox) comes from reference.ts.
// Shapes: q [B,H,T,dK], k [B,Hkv,S,dK], v [B,Hkv,S,dV] -> out [B,H,T,dV], lse [B,H,T].
// All positions are absolute: query t of row b sits at qOffsets[b] (or qOffset) + t, key s at
// keyPositions[b,s] (or sOffset + s).
import { EPS_EXP, FLT_MIN, gamma, refKeep, SECOND_ORDER, U } from './reference.ts';

export type StorageDtype = 'fp32' | 'fp16' | 'bf16' | 'int8';
/** Channels per int8 scale (llama.cpp's q8_0 block). */
export const Q8_GROUP = 32;
/**
 * Relative error of fp32 std::tanh (glibc's tanhf is within 2 ulp = 2^-22 relative; this is 4 ulp),
 * the tanh of the kernels' fast paths; the deterministic path's double tanh is far inside it.
 */
export const EPS_TANH = 2 ** -21;

/**
 * int8 decode's int16 weights (native/kvstore.cc pv1_i8q): per block of at most 64 keys and
 * group, each weight w = p·v_scale becomes wq = rn(fl(w·inv)), inv = fl(32767/w_max), and is
 * used as ws·wq, ws = fl(w_max/32767). So |ws·wq - w| <= ws·(0.5 + 2^-9) + 2.0001u·|w|
 * <= 0.507·w_max/32767, and with |v_int| <= 127, 127·v_scale = the group's max |v̂|, a block
 * moves the accumulator by at most 64·0.507/32767·max_s p_s·max|v̂|. Each block's largest p is at
 * most its share of l (after the rescales), so the output moves by at most this times max|v̂|
 * (times 1/(1-p) with dropout).
 */
export const Q16_WEIGHTS = (64 * 0.507) / 32767;

// ---------------------------------------------------------------------------------------------
// Storage rounding, on the value as given (callers pass the fp32 values a kernel encodes).
// ---------------------------------------------------------------------------------------------

/** y rounded to an integer, ties to even (C's nearbyint in the default rounding mode). */
export function roundHalfEven(y: number): number {
  const f = Math.floor(y), r = y - f;
  if (r > 0.5) return f + 1;
  if (r < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** x rounded to nearest even with `p` significand bits (incl. the implicit one), exponent >= eMin, overflow at 2^(eMax+1). */
function roundFloat(x: number, p: number, eMin: number, eMax: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--; // log2 rounding near powers of two
  else if (2 ** (e + 1) <= a) e++;
  const quantum = 2 ** (Math.max(e, eMin) - (p - 1)); // subnormals share eMin's quantum
  const r = roundHalfEven(a / quantum) * quantum; // a / quantum is exact (power of two)
  const max = (2 - 2 ** (1 - p)) * 2 ** eMax;
  return Math.sign(x) * (r > max ? Infinity : r);
}

/** IEEE binary16 (11 significand bits, normal exponents -14..15), round to nearest even. */
export function roundF16(x: number): number {
  return roundFloat(x, 11, -14, 15);
}

/** bfloat16: the upper half of an fp32 (8 significand bits, fp32's exponents), round to nearest even, from fp32(x). */
export function roundBf16(x: number): number {
  return roundFloat(Math.fround(x), 8, -126, 127);
}

/**
 * int8 q8 of rows [rows, d]: per row and group of Q8_GROUP channels, scale = fp32(max|x| / 127),
 * q = nearbyint(fp32(x / scale)) (ties to even; a group of zeros has scale 0 and q 0), stored
 * value fp32(q · scale). fp32 operations are emulated as double then Math.fround, which is
 * correctly rounded for one +, -, ·, / of fp32 operands (53 >= 2·24 + 2). Returns q [rows, d],
 * scales [rows, ceil(d/32)] and the decoded values.
 */
export function quantizeQ8(x: ArrayLike<number>, rows: number, d: number): { q: Int8Array; scale: Float32Array; value: Float64Array } {
  const groups = Math.ceil(d / Q8_GROUP);
  const q = new Int8Array(rows * d), scale = new Float32Array(rows * groups), value = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      const i0 = r * d + g * Q8_GROUP, i1 = r * d + Math.min(d, (g + 1) * Q8_GROUP);
      let max = 0;
      for (let i = i0; i < i1; i++) max = Math.max(max, Math.abs(Math.fround(x[i])));
      const s = Math.fround(max / 127);
      scale[r * groups + g] = s;
      for (let i = i0; i < i1; i++) {
        const qi = s === 0 ? 0 : Math.max(-127, Math.min(127, roundHalfEven(Math.fround(Math.fround(x[i]) / s))));
        q[i] = qi;
        value[i] = Math.fround(qi * s);
      }
    }
  return { q, scale, value };
}

/** x [rows, d] as stored in `dtype` and read back (fp32: fp32(x)). */
export function storageRound(x: ArrayLike<number>, rows: number, d: number, dtype: StorageDtype): Float64Array {
  if (dtype === 'int8') return quantizeQ8(x, rows, d).value;
  const f = dtype === 'fp16' ? roundF16 : dtype === 'bf16' ? roundBf16 : Math.fround;
  const out = new Float64Array(rows * d);
  for (let i = 0; i < out.length; i++) out[i] = f(x[i]);
  return out;
}

/**
 * Per-element bound on |stored - x| for x [rows, d] encoded in `dtype`:
 *   fp32 u·|x| (x given in float64); fp16 2^-11·|x| + 2^-25 (half an ulp; 2^-25 is half the
 *   subnormal quantum); bf16 2^-8·|x| + 2^-134 after the fp32 rounding (u·|x|) of its input;
 *   int8: with s the group's fp32 scale, y = fp32(x/s) = (x/s)(1+ε), |q - y| <= 1/2 (|y| < 127.5,
 *   so the clamp never acts), stored fp32(q·s): |stored - x| <= s(1/2 + u) + 2u|x|(1 + u).
 * `dx` (optional, same layout): the values encoded are only known within dx (another kernel's x̃
 * vs this x̂): the result then bounds |enc(x̃) - enc(x̂)| by the smaller of
 *   - E(x̃) + |x̃ - x̂| + E(x̂), with E(x̃) taken at |x| + dx and the int8 scale at (max + max dx)/127;
 *   - the spread of the encoder over [x̂ - dx, x̂ + dx] (storageSpread): the encoders are monotone,
 *     so enc(x̃) lies between enc(x̂ - dx) and enc(x̂ + dx), which are equal unless a rounding
 *     boundary falls within dx (int8: over the scales the group's max allows too).
 */
export function storageErrorBound(x: ArrayLike<number>, rows: number, d: number, dtype: StorageDtype, dx?: ArrayLike<number>): Float64Array {
  const out = storageErrorBoundLoose(x, rows, d, dtype, dx);
  if (!dx) return out;
  const spread = storageSpread(x, rows, d, dtype, dx);
  for (let i = 0; i < out.length; i++) out[i] = Math.min(out[i], spread[i]);
  return out;
}

/**
 * Per element: max |enc(y) - enc(x)| over fp32 values y with |y - x| <= dx, from the encoder's
 * values at x ± dx (monotone in y). int8: the scale of y's group lies between those of the group
 * maxima max(|x| - dx) and max(|x| + dx), and q = rint(fp32(y/s)) and fp32(q·s) are monotone in y
 * and s, so the four corners bound the stored value.
 */
export function storageSpread(x: ArrayLike<number>, rows: number, d: number, dtype: StorageDtype, dx: ArrayLike<number>): Float64Array {
  const out = new Float64Array(rows * d);
  if (dtype !== 'int8') {
    const f = dtype === 'fp16' ? roundF16 : dtype === 'bf16' ? roundBf16 : Math.fround;
    for (let i = 0; i < out.length; i++) {
      const e = f(x[i]), lo = f(x[i] - dx[i]), hi = f(x[i] + dx[i]);
      out[i] = Math.max(hi - e, e - lo);
    }
    return out;
  }
  const groups = Math.ceil(d / Q8_GROUP);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      const i0 = r * d + g * Q8_GROUP, i1 = r * d + Math.min(d, (g + 1) * Q8_GROUP);
      let mLo = 0, mHi = 0;
      for (let i = i0; i < i1; i++) {
        mLo = Math.max(mLo, Math.abs(x[i]) - dx[i]);
        mHi = Math.max(mHi, Math.abs(x[i]) + dx[i]);
      }
      // The kernel's max is an fp32 value in [mLo, mHi], so its scale is in [sLo, sHi]; y/s,
      // then q = rint(fp32(y/s)) and fp32(q·s) are monotone in y and in s, so the corners bound them.
      const sLo = Math.fround(Math.fround(mLo) / 127), sHi = Math.fround(Math.fround(mHi) / 127);
      const q = (y: number, sc: number) => (sc === 0 ? 0 : Math.max(-127, Math.min(127, roundHalfEven(Math.fround(Math.fround(y) / sc)))));
      let max = 0;
      for (let i = i0; i < i1; i++) max = Math.max(max, Math.abs(Math.fround(x[i])));
      const s = Math.fround(max / 127);
      for (let i = i0; i < i1; i++) {
        const e = Math.fround(q(x[i], s) * s);
        const qs = [q(x[i] - dx[i], sLo), q(x[i] - dx[i], sHi), q(x[i] + dx[i], sLo), q(x[i] + dx[i], sHi)];
        const qLo = Math.min(...qs), qHi = Math.max(...qs);
        const vals = [qLo * sLo, qLo * sHi, qHi * sLo, qHi * sHi].map(Math.fround);
        out[i] = Math.max(Math.max(...vals) - e, e - Math.min(...vals));
      }
    }
  return out;
}

function storageErrorBoundLoose(x: ArrayLike<number>, rows: number, d: number, dtype: StorageDtype, dx?: ArrayLike<number>): Float64Array {
  const out = new Float64Array(rows * d);
  const rel = dtype === 'fp16' ? 2 ** -11 : dtype === 'bf16' ? 2 ** -8 + U * (1 + 2 ** -8) : U;
  const abs = dtype === 'fp16' ? 2 ** -25 : dtype === 'bf16' ? 2 ** -134 : 0;
  if (dtype !== 'int8') {
    for (let i = 0; i < out.length; i++) {
      const a = Math.abs(x[i]), e = dx ? dx[i] : 0;
      out[i] = rel * a + abs + (e ? e + rel * (a + e) + abs : 0);
    }
    return out;
  }
  const groups = Math.ceil(d / Q8_GROUP);
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      const i0 = r * d + g * Q8_GROUP, i1 = r * d + Math.min(d, (g + 1) * Q8_GROUP);
      let max = 0, maxE = 0;
      for (let i = i0; i < i1; i++) {
        max = Math.max(max, Math.abs(x[i]));
        maxE = Math.max(maxE, dx ? dx[i] : 0);
      }
      const s = (max / 127) * (1 + U), sT = ((max + maxE) / 127) * (1 + U);
      for (let i = i0; i < i1; i++) {
        const a = Math.abs(x[i]), e = dx ? dx[i] : 0;
        out[i] = s * (0.5 + U) + 2 * U * a * (1 + U) + (dx ? e + sT * (0.5 + U) + 2 * U * (a + e) * (1 + U) : 0);
      }
    }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings.
// ---------------------------------------------------------------------------------------------

export interface RefRope {
  /** Rotated channels (even, <= d; default d); channels >= dim pass through. */
  dim?: number;
  /** Base; default 10000. */
  theta?: number;
  /** 'half': pairs (i, i + dim/2) (GPT-NeoX / Llama); 'interleaved': pairs (2i, 2i+1) (GPT-J). Default 'half'. */
  style?: 'half' | 'interleaved';
}

/**
 * x [B,H,T,d] rotated in float64: pair i (i < dim/2) turns by angle pos·θ^(-2i/dim), pos =
 * positions[b·T + t] ([B,T]) or positions + t (one start for every row):
 * (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
 */
export function refRope(x: ArrayLike<number>, dims: { B: number; H: number; T: number; d: number }, positions: number | ArrayLike<number>, o: RefRope = {}): Float64Array {
  const { B, H, T, d } = dims;
  const dim = o.dim ?? d, theta = o.theta ?? 10000, half = dim / 2;
  if (dim % 2 !== 0 || dim > d || dim < 0) throw new Error(`refRope: expected an even rotary dim <= d ${d}, got ${dim}`);
  const out = Float64Array.from(x);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++) {
      const pos = typeof positions === 'number' ? positions + t : positions[b * T + t];
      for (let h = 0; h < H; h++) {
        const o0 = ((b * H + h) * T + t) * d;
        for (let i = 0; i < half; i++) {
          const angle = pos * theta ** (-(2 * i) / dim);
          const c = Math.cos(angle), s = Math.sin(angle);
          const [i1, i2] = o.style === 'interleaved' ? [2 * i, 2 * i + 1] : [i, i + half];
          const x1 = x[o0 + i1], x2 = x[o0 + i2];
          out[o0 + i1] = x1 * c - x2 * s;
          out[o0 + i2] = x2 * c + x1 * s;
        }
      }
    }
  return out;
}

/**
 * Per-element bound on |fp32 rope - refRope| for exact fp32 inputs x (plus dx when x itself
 * carries errors): the kernel's angle is pos·θ^(-2i/dim) in float64 (relative 4·2^-53 through
 * pow and the product, so sin/cos move by <= 4·2^-53·|angle|), cos and sin rounded to fp32 (u
 * each), then x1·c - x2·s in fp32 (two products and a difference: γ_3, any FMA use inside it).
 * So |Δ| <= (γ_3 + u)(|x1 c| + |x2 s|) + 4·2^-53·|angle|(|x1| + |x2|) + |c|dx1 + |s|dx2.
 */
export function refRopeBound(x: ArrayLike<number>, dims: { B: number; H: number; T: number; d: number }, positions: number | ArrayLike<number>, o: RefRope = {}, dx?: ArrayLike<number>): Float64Array {
  const { B, H, T, d } = dims;
  const dim = o.dim ?? d, theta = o.theta ?? 10000, half = dim / 2;
  const out = new Float64Array(B * H * T * d);
  const g = gamma(3) + U;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++) {
      const pos = typeof positions === 'number' ? positions + t : positions[b * T + t];
      for (let h = 0; h < H; h++) {
        const o0 = ((b * H + h) * T + t) * d;
        if (dx) for (let i = dim; i < d; i++) out[o0 + i] = dx[o0 + i];
        for (let i = 0; i < half; i++) {
          const angle = pos * theta ** (-(2 * i) / dim);
          const c = Math.abs(Math.cos(angle)), s = Math.abs(Math.sin(angle));
          const [i1, i2] = o.style === 'interleaved' ? [2 * i, 2 * i + 1] : [i, i + half];
          const a1 = Math.abs(x[o0 + i1]), a2 = Math.abs(x[o0 + i2]);
          const e1 = dx ? dx[o0 + i1] : 0, e2 = dx ? dx[o0 + i2] : 0;
          const ang = 4 * 2 ** -53 * Math.abs(angle) * (a1 + a2 + e1 + e2);
          out[o0 + i1] = SECOND_ORDER * (g * ((a1 + e1) * c + (a2 + e2) * s) + ang + c * e1 + s * e2);
          out[o0 + i2] = SECOND_ORDER * (g * ((a2 + e2) * c + (a1 + e1) * s) + ang + c * e2 + s * e1);
        }
      }
    }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Attention with the score features.
// ---------------------------------------------------------------------------------------------

export interface FeatureDims { B: number; H: number; Hkv: number; T: number; S: number; dK: number; dV: number }

export interface FeatureOpts {
  scale: number;
  causal?: boolean;
  /** Absolute position of query 0 of every row; default sOffset + S - T. */
  qOffset?: number;
  /** [B]: row b's query 0 position (instead of qOffset). */
  qOffsets?: ArrayLike<number>;
  /** Absolute position of key 0 (default 0); key s is at sOffset + s. */
  sOffset?: number;
  /** [B,S]: absolute position of each key (instead of sOffset + s), e.g. a ring buffer's slots. */
  keyPositions?: ArrayLike<number>;
  /** cap·tanh(s/cap) on the scaled score, first (0 or absent: off). */
  softcap?: number;
  /** [H] slopes: s -= slope_h·|t_abs - s_abs|, after softcap. */
  alibi?: ArrayLike<number>;
  /** W (0 or absent: off): key visible iff t_abs - W < s_abs. */
  window?: number;
  /** With window: keys s_abs < n stay visible (StreamingLLM). */
  sinkTokens?: number;
  /** [B,2]: row b sees keys start_b <= s_abs < end_b. */
  kvRanges?: ArrayLike<number>;
  /** [H] sink logits: one more exp(sink_h) in the denominator, with no value. */
  sinks?: ArrayLike<number>;
  /** Storage of k and v: they are rounded to it first (default fp32: as given). */
  dtype?: StorageDtype;
  /** Dropout on the probabilities with kvstream's Philox rule (refKeep). */
  dropout?: { p: number; seed: number };
  /**
   * Rotary embeddings of q and k (k before the storage rounding: keys are rotated, then stored).
   * Position ids: qPositions [B,T] (default each query's absolute position), kPositions [B,S]
   * (default each key's absolute position); the masks always use the absolute positions.
   */
  rope?: RefRope & { qPositions?: ArrayLike<number>; kPositions?: ArrayLike<number> };
}

export interface FeatureBoundOpts extends FeatureOpts {
  /** Rescales a weight can go through (see reference.ts chunkedRescales). */
  rescales: number;
  /** Absolute errors of q, k, v as the kernel gets them (before storage), same layouts. */
  dq?: ArrayLike<number>;
  dk?: ArrayLike<number>;
  dv?: ArrayLike<number>;
  /**
   * How k, v relate to the stored form (non-fp32 dtype):
   * - 'same' (default): the kernel stored exactly enc(k), enc(v) of the values given (inputs
   *   exact or dk/dv only widening it as storageErrorBound's dx);
   * - 'unrounded': the reference uses k, v unrounded and the bound adds the storage error (what
   *   a storage dtype costs against an fp32 cache).
   */
  storage?: 'same' | 'unrounded';
  /** The kernel rounds the weights of P·V to int16 per block (int8 decode, one row per kv head): + Q16_WEIGHTS·max|v̂|. */
  q16Weights?: boolean;
}

export interface FeatureResult {
  /** [B,H,T,dV] */
  out: Float64Array;
  /** [B,H,T]: -inf for a row with no visible key and no sink; sink_h for a sink-only row. */
  lse: Float64Array;
  outBound: Float64Array;
  lseBound: Float64Array;
  /** Visible keys per row [B,H,T]. */
  visible: Int32Array;
}

/** Whether query t_abs of row b sees key s_abs under `o`'s masks. */
export function keyVisible(o: FeatureOpts, b: number, tAbs: number, sAbs: number): boolean {
  if (o.kvRanges && (sAbs < o.kvRanges[2 * b] || sAbs >= o.kvRanges[2 * b + 1])) return false;
  if (o.causal && sAbs > tAbs) return false;
  if (o.window && o.window > 0 && !(tAbs - o.window < sAbs)) return (o.sinkTokens ?? 0) > sAbs;
  return true;
}

/** The reference: out [B,H,T,dV], lse [B,H,T] in float64. */
export function refFeatures(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, d: FeatureDims, o: FeatureOpts): { out: Float64Array; lse: Float64Array } {
  const r = refFeaturesBound(q, k, v, d, { ...o, rescales: 0 });
  return { out: r.out, lse: r.lse };
}

/**
 * refFeatures with the bound of any fp32 kernel path, in the spirit of reference.ts's
 * refAttentionBound (whose header derives the plain terms). What the features add:
 *   * storage: the kernel's k, v are the stored values; with 'same' the reference uses the same
 *     stored values (dk, dv widen through storageErrorBound's dx), with 'unrounded' the
 *     reference keeps k, v and the storage error joins dk, dv (per element, storageErrorBound);
 *   * softcap: cap·tanh(s/cap) has slope <= 1, so the score's error δ passes through, plus the
 *     fp32 ops: s/cap (u), tanh (EPS_TANH), cap· (u): + |s'|(EPS_TANH + 2u) + u|s|·(slope <= 1);
 *   * ALiBi: slope·dist rounds once (dist is an exact integer < 2^24), the subtraction once:
 *     + u·|slope·dist| + u·|s''|;
 *   * masks (window, sink tokens, kvRanges, causal, qOffsets) are exact integer comparisons;
 *   * head sinks: the sink is one more weight exp(sink - m) with no value (v = 0), computed at
 *     finalize (its relative error EPS_EXP + u|sink - m| + 2u, the rescale of l by e^(m - m')
 *     adds EPS_EXP + 2u to every key's weight): the plain analysis holds with it as a key.
 */
export function refFeaturesBound(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, d: FeatureDims, o: FeatureBoundOpts): FeatureResult {
  const { B, H, Hkv, T, S, dK, dV } = d;
  if (H % Hkv !== 0) throw new Error(`refFeatures: H ${H} is not a multiple of Hkv ${Hkv}`);
  if (o.rope) {
    // Rotate first (float64, with refRopeBound's fp32 error added to dq, dk), then attend without rope.
    const sOff = o.sOffset ?? 0;
    const qPos = o.rope.qPositions ?? Array.from({ length: B * T }, (_, i) => (o.qOffsets ? o.qOffsets[Math.floor(i / T)] : o.qOffset ?? sOff + S - T) + (i % T));
    const kPos = o.rope.kPositions ?? Array.from({ length: B * S }, (_, i) => (o.keyPositions ? o.keyPositions[i] : sOff + (i % S)));
    const qd = { B, H, T, d: dK }, kd = { B, H: Hkv, T: S, d: dK };
    return refFeaturesBound(refRope(q, qd, qPos, o.rope), refRope(k, kd, kPos, o.rope), v, d, {
      ...o, rope: undefined, dq: refRopeBound(q, qd, qPos, o.rope, o.dq), dk: refRopeBound(k, kd, kPos, o.rope, o.dk),
    });
  }
  const dtype = o.dtype ?? 'fp32', storage = o.storage ?? 'same';
  const rowsK = B * Hkv * S;
  // k̂, v̂: what the reference attends over; dk, dv: their bound against the kernel's.
  let kk: Float64Array, vv: Float64Array, dk: Float64Array | null = o.dk ? Float64Array.from(o.dk) : null, dv: Float64Array | null = o.dv ? Float64Array.from(o.dv) : null;
  if (dtype === 'fp32') {
    kk = Float64Array.from(k);
    vv = Float64Array.from(v);
  } else if (storage === 'same') {
    kk = storageRound(k, rowsK, dK, dtype);
    vv = storageRound(v, rowsK, dV, dtype);
    if (dk) dk = storageErrorBound(k, rowsK, dK, dtype, dk);
    if (dv) dv = storageErrorBound(v, rowsK, dV, dtype, dv);
  } else {
    kk = Float64Array.from(k);
    vv = Float64Array.from(v);
    const ek = storageErrorBound(k, rowsK, dK, dtype, dk ?? undefined), ev = storageErrorBound(v, rowsK, dV, dtype, dv ?? undefined);
    dk = ek;
    dv = ev;
  }
  const q64 = Float64Array.from(q), dq = o.dq ? Float64Array.from(o.dq) : null;
  const rows = B * H * T, perKv = H / Hkv, R = o.rescales, scaleAbs = Math.abs(o.scale);
  const out = new Float64Array(rows * dV), outBound = new Float64Array(rows * dV);
  const lse = new Float64Array(rows), lseBound = new Float64Array(rows), visible = new Int32Array(rows);
  const sOffset = o.sOffset ?? 0, cap = o.softcap ?? 0;
  const keepScale = o.dropout && o.dropout.p > 0 ? 1 / (1 - o.dropout.p) : 1;
  const gScore = gamma(dK + 2);
  const idx = new Int32Array(S), score = new Float64Array(S), delta = new Float64Array(S), w = new Float64Array(S), e = new Float64Array(S);
  const acc = new Float64Array(dV), A = new Float64Array(dV), F = new Float64Array(dV), G = new Float64Array(dV);
  for (let b = 0; b < B; b++) {
    const q0 = o.qOffsets ? o.qOffsets[b] : o.qOffset ?? sOffset + S - T;
    for (let h = 0; h < H; h++) {
      const kvBase = (b * Hkv + Math.floor(h / perKv)) * S;
      const slope = o.alibi ? o.alibi[h] : 0, sink = o.sinks ? o.sinks[h] : -Infinity;
      for (let t = 0; t < T; t++) {
        const row = (b * H + h) * T + t, tAbs = q0 + t, qo = row * dK;
        let n = 0, m = -Infinity;
        // Σ_i |q̂_i k̂_i| and the input-error sums, per key, straight (no Cauchy-Schwarz here).
        for (let s = 0; s < S; s++) {
          const sAbs = o.keyPositions ? o.keyPositions[b * S + s] : sOffset + s;
          if (!keyVisible(o, b, tAbs, sAbs)) continue;
          const ko = (kvBase + s) * dK;
          let dot = 0, absDot = 0, din = 0;
          for (let i = 0; i < dK; i++) {
            const qi = q64[qo + i], ki = kk[ko + i];
            dot += qi * ki;
            const qa = Math.abs(qi) + (dq ? dq[qo + i] : 0), ka = Math.abs(ki) + (dk ? dk[ko + i] : 0);
            absDot += qa * ka;
            din += (dq ? dq[qo + i] * ka : 0) + (dk ? Math.abs(qi) * dk[ko + i] : 0);
          }
          let sc = dot * o.scale, del = scaleAbs * (gScore * absDot + din);
          if (cap > 0) {
            const capped = cap * Math.tanh(sc / cap);
            del += Math.abs(capped) * (EPS_TANH + 2 * U) + U * Math.abs(sc);
            sc = capped;
          }
          if (o.alibi) {
            const bias = slope * Math.abs(tAbs - sAbs);
            sc -= bias;
            del += U * Math.abs(bias) + U * Math.abs(sc);
          }
          idx[n] = s;
          score[n] = sc;
          delta[n] = del;
          n++;
          if (sc > m) m = sc;
        }
        visible[row] = n;
        const hasSink = sink > -Infinity;
        if (n === 0) {
          // No key: output 0; lse -inf, or the sink itself (m' = sink, l' = 1).
          lse[row] = hasSink ? sink : -Infinity;
          if (hasSink) lseBound[row] = SECOND_ORDER * (EPS_EXP + 2 * U + U * Math.abs(sink));
          continue;
        }
        if (hasSink && sink > m) m = sink;
        let l = 0;
        for (let j = 0; j < n; j++) l += (w[j] = Math.exp(score[j] - m));
        const wSink = hasSink ? Math.exp(sink - m) : 0;
        l += wSink;
        const sinkRel = EPS_EXP + 2 * U;
        let ebar = 0;
        for (let j = 0; j < n; j++) {
          w[j] /= l;
          e[j] = Math.expm1(delta[j] + U * Math.abs(score[j] - m)) * (1 + EPS_EXP) + EPS_EXP + R * (EPS_EXP + 2 * U) + (hasSink ? sinkRel : 0);
          ebar += w[j] * e[j];
        }
        if (hasSink) ebar += (wSink / l) * (EPS_EXP + U * Math.abs(sink - m) + 2 * U);
        lse[row] = m + Math.log(l);
        const nTerms = n + (hasSink ? 1 : 0);
        const El = ebar + gamma(nTerms + R) + nTerms * FLT_MIN;
        lseBound[row] = SECOND_ORDER * (-Math.log1p(-El) + 2 * U * (Math.abs(Math.log(l)) + El) + U * Math.abs(lse[row]));
        acc.fill(0);
        A.fill(0);
        F.fill(0);
        G.fill(0);
        let vMax = 0;
        for (let j = 0; j < n; j++) {
          const s = idx[j];
          let pc = w[j];
          if (o.dropout && o.dropout.p > 0) {
            const sAbs = o.keyPositions ? o.keyPositions[b * S + s] : sOffset + s;
            pc = refKeep(o.dropout.seed, o.dropout.p, b, h, tAbs, sAbs) ? pc * keepScale : 0;
          }
          const vo = (kvBase + s) * dV;
          for (let c = 0; c < dV; c++) vMax = Math.max(vMax, Math.abs(vv[vo + c]) + (dv ? dv[vo + c] : 0));
          if (pc === 0) continue;
          const pce = pc * e[j];
          for (let c = 0; c < dV; c++) {
            acc[c] += pc * vv[vo + c];
            const a = Math.abs(vv[vo + c]) + (dv ? dv[vo + c] : 0);
            A[c] += pc * a;
            F[c] += pce * a;
            if (dv) G[c] += pc * dv[vo + c];
          }
        }
        const gAcc = gamma(nTerms + 2 * R + 4), gL = gamma(nTerms + R + 1), oo = row * dV;
        const flushed = nTerms * keepScale * FLT_MIN * vMax + (o.q16Weights ? keepScale * Q16_WEIGHTS * vMax : 0);
        for (let c = 0; c < dV; c++) {
          out[oo + c] = acc[c];
          outBound[oo + c] = SECOND_ORDER * ((F[c] + ebar * A[c]) / (1 - ebar) + gAcc * A[c] + gL * Math.abs(acc[c]) + G[c] + flushed);
        }
      }
    }
  }
  return { out, lse, outBound, lseBound, visible };
}

/** Bloom's get_alibi_slopes(H) in float64: 2^(-8i/n) for the nearest power of two n <= H, then the odd steps of 2n. */
export function refAlibiSlopes(H: number): Float64Array {
  const slopesPow2 = (n: number) => {
    const start = 2 ** -(2 ** -(Math.log2(n) - 3));
    return Array.from({ length: n }, (_, i) => start * start ** i);
  };
  const n = 2 ** Math.floor(Math.log2(H));
  const base = slopesPow2(n);
  if (n === H) return Float64Array.from(base);
  const extra = slopesPow2(2 * n).filter((_, i) => i % 2 === 0).slice(0, H - n);
  return Float64Array.from([...base, ...extra]);
}
