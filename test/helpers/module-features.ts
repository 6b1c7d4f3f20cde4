// The float64 module reference with the cache features: projections (refProjectHeads), rope
// (refRope, its bound fed by the projection bound), attention (refFeaturesBound, fed by both),
// output projection (refMergeProject, fed by the attention bound). Written on the test helpers
// only, never on src/.
import { chunkedRescales, refMergeProject, refProjectHeads } from './reference.ts';
import type { RefModule } from './reference.ts';
import { refAlibiSlopes, refFeaturesBound, refRope, refRopeBound } from './reference-features.ts';
import type { RefRope, StorageDtype } from './reference-features.ts';

export interface ModuleFeatureOpts {
  causal: boolean;
  /** Position of query 0 (default S - T). */
  qOffset?: number;
  window?: number;
  sinkTokens?: number;
  softcap?: number;
  /** true: the geometric slopes; or [H]. */
  alibi?: boolean | ArrayLike<number>;
  kvRanges?: ArrayLike<number>;
  sinks?: ArrayLike<number>;
  dtype?: StorageDtype;
  rope?: RefRope;
  /** Rope ids of the queries [B,T] (default qOffset + t) and of the keys [B,S] (default s). */
  qPositions?: ArrayLike<number>;
  kPositions?: ArrayLike<number>;
  /** Update calls the kernels may have split the keys into (default S: chunks of 1). */
  calls?: number;
}

/** xQ [B,T,d_model], xKv [B,S,d_kv_in] -> output [B,T,d_out] and its bound, in float64. */
export function refModuleFeatures(mha: RefModule, xQ: { data: Float32Array; shape: readonly number[] }, xKv: { data: Float32Array; shape: readonly number[] }, o: ModuleFeatureOpts) {
  const c = mha.config, w = mha.weights;
  const [B, T] = xQ.shape, S = xKv.shape[1];
  const { numHeads: H, numKvHeads: Hkv, dK, dV } = c;
  const q = refProjectHeads(xQ.data, w.wQ.data, w.bQ?.data ?? null, B, T, c.dModel, H, dK);
  const k = refProjectHeads(xKv.data, w.wK.data, w.bK?.data ?? null, B, S, c.dKvIn, Hkv, dK);
  const v = refProjectHeads(xKv.data, w.wV.data, w.bV?.data ?? null, B, S, c.dKvIn, Hkv, dV);
  const qOffset = o.qOffset ?? S - T;
  let [qy, qb, ky, kb] = [q.y, q.bound, k.y, k.bound];
  if (o.rope) {
    const qIds = o.qPositions ?? qOffset, kIds = o.kPositions ?? 0;
    [qy, qb] = [refRope(q.y, { B, H, T, d: dK }, qIds, o.rope), refRopeBound(q.y, { B, H, T, d: dK }, qIds, o.rope, q.bound)];
    [ky, kb] = [refRope(k.y, { B, H: Hkv, T: S, d: dK }, kIds, o.rope), refRopeBound(k.y, { B, H: Hkv, T: S, d: dK }, kIds, o.rope, k.bound)];
  }
  const alibi = o.alibi === true ? refAlibiSlopes(H) : o.alibi === false ? undefined : o.alibi;
  const att = refFeaturesBound(qy, ky, v.y, { B, H, Hkv, T, S, dK, dV }, {
    scale: c.scale, causal: o.causal, qOffset, window: o.window ?? 0, sinkTokens: o.sinkTokens ?? 0, softcap: o.softcap, alibi,
    kvRanges: o.kvRanges, sinks: o.sinks, dtype: o.dtype ?? 'fp32', rescales: chunkedRescales(S, 3 * (o.calls ?? S)), dq: qb, dk: kb, dv: v.bound,
  });
  const y = refMergeProject(att.out, att.outBound, w.wO.data, w.bO?.data ?? null, B, H, T, dV, c.dOut);
  return { y: y.y, bound: y.bound, lse: att.lse, lseBound: att.lseBound };
}

/** Rows [t0, t1) of every batch row of x [B,T,w]. */
export function tokenRows(x: ArrayLike<number>, B: number, T: number, w: number, t0: number, t1: number): Float64Array {
  const out = new Float64Array(B * (t1 - t0) * w);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < (t1 - t0) * w; i++) out[b * (t1 - t0) * w + i] = x[(b * T + t0) * w + i];
  return out;
}
