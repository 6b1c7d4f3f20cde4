// Naive float64 reference, written independently of native/: its own loops, no shared helpers.
// Shapes: q [B,H,T,dK], k [B,Hkv,S,dK], v [B,Hkv,S,dV] -> out [B,H,T,dV], lse [B,H,T], probs [B,H,T,S].

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
