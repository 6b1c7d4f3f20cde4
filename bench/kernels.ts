// Kernel-only paths for the bench: the binding calls the public API makes, on buffers kept
// here, without the API's checks, objects or allocations (rows `kvstream/kernel`).
import type { KvCache } from '../src/kvcache.ts';
import type { MultiHeadAttention } from '../src/mha.ts';
import { addon, packDims, packMhaDims } from '../src/native.ts';
import type { KvDtype, KvStorage, NativeOpts } from '../src/native.ts';
import type { Tensor } from '../src/tensor.ts';

const NO_DROPOUT = { sOffset: 0, dropoutP: 0, seed: 0 };

/** attention(q, k, v) as attnUpdate + attnFinalize into reused m, l, acc (acc becomes the output). */
export function coreKernel(q: Tensor, k: Tensor, v: Tensor, causal: boolean) {
  const [B, Hh, T, dK] = q.shape, [, Hkv, S, dV] = v.shape;
  const rows = B * Hh * T;
  const m = new Float32Array(rows), l = new Float32Array(rows), acc = new Float32Array(rows * dV), lse = new Float32Array(rows);
  const dims = packDims({ B, H: Hh, Hkv, T, S, sCap: S, dK, dV });
  const opts: NativeOpts = { scale: 1 / Math.sqrt(dK), causal, qOffset: S - T, ...NO_DROPOUT };
  return () => {
    m.fill(-Infinity);
    l.fill(0);
    acc.fill(0);
    addon.attnUpdate(dims, opts, q.data, k.data, v.data, m, l, acc);
    addon.attnFinalize(rows, dV, m, l, acc, acc, lse);
  };
}

/** The fused module call (MultiHeadAttention.forward without a cache) into reused y, lse. */
export function fusedKernel(mha: MultiHeadAttention, x: Tensor, causal: boolean) {
  const c = mha.config, w = mha.weights;
  const [B, T] = x.shape;
  const y = new Float32Array(B * T * c.dOut), lse = new Float32Array(B * c.numHeads * T);
  const dims = packMhaDims({ B, T, S: T, dModel: c.dModel, dKvIn: c.dKvIn, dOut: c.dOut, H: c.numHeads, Hkv: c.numKvHeads, dK: c.dK, dV: c.dV });
  const opts: NativeOpts = { scale: c.scale, causal, qOffset: 0, ...NO_DROPOUT };
  const n = (t?: Tensor) => t?.data ?? null;
  return () => addon.mhaForward(dims, opts, x.data, x.data, w.wQ.data, n(w.bQ), w.wK.data, n(w.bK), w.wV.data, n(w.bV), w.wO.data, n(w.bO), y, lse);
}

/**
 * forward(x, x, { cache, causal: true }) as binding calls on buffers kept here: project q, k, v
 * into per-head buffers, store k, v in the cache storage of `dtype` (copied, or encoded by
 * kvEncode: what KvCache.append does), fold the whole cache, finalize, merge heads and project out.
 */
export function cachedKernel(mha: MultiHeadAttention, B: number, capacity: number, dtype: KvDtype = 'f32') {
  const c = mha.config, w = mha.weights;
  const { numHeads: Hh, numKvHeads: Hkv, dK, dV, dOut } = c;
  // Storage [B,H_kv,capacity,d] of dtype; int8 scales [B,H_kv,capacity,ceil(d/32)].
  const storage = (d: number): KvStorage => {
    const size = B * Hkv * capacity * d;
    return dtype === 'f32' ? new Float32Array(size) : dtype === 'i8' ? new Int8Array(size) : new Uint16Array(size);
  };
  const scales = (d: number) => (dtype === 'i8' ? new Float32Array(B * Hkv * capacity * Math.ceil(d / 32)) : null);
  const kC = storage(dK), vC = storage(dV), kS = scales(dK), vS = scales(dV);
  const bufs = new Map<number, Record<string, Float32Array>>();
  const n = (t?: Tensor) => t?.data ?? null;
  let len = 0;
  const put = (src: Float32Array, dst: KvStorage, scale: Float32Array | null, T: number, d: number) => {
    const G = Math.ceil(d / 32);
    for (let bh = 0; bh < B * Hkv; bh++) {
      const from = src.subarray(bh * T * d, (bh + 1) * T * d), row = bh * capacity + len;
      if (dtype === 'f32') (dst as Float32Array).set(from, row * d);
      else addon.kvEncode(dtype, from, dst.subarray(row * d, (row + T) * d) as Uint16Array | Int8Array, scale && scale.subarray(row * G, (row + T) * G), T, d);
    }
  };
  return {
    /** Sets the cache to the first `P` positions of `cache` (a prompt). */
    load(cache: KvCache, P: number) {
      const { k, v } = cache.snapshot(P);
      len = 0;
      put(k.data, kC, kS, P, dK);
      put(v.data, vC, vS, P, dV);
      len = P;
    },
    reset(P = 0) {
      len = P;
    },
    step(x: Tensor) {
      const T = x.shape[1];
      let b = bufs.get(T);
      if (!b) {
        const rows = B * Hh * T;
        b = { q: new Float32Array(rows * dK), k: new Float32Array(B * Hkv * T * dK), v: new Float32Array(B * Hkv * T * dV), m: new Float32Array(rows), l: new Float32Array(rows), acc: new Float32Array(rows * dV), lse: new Float32Array(rows), y: new Float32Array(B * T * dOut) };
        bufs.set(T, b);
      }
      addon.projectHeads(x.data, w.wQ.data, n(w.bQ), b.q, B, T, c.dModel, Hh, dK);
      addon.projectHeads(x.data, w.wK.data, n(w.bK), b.k, B, T, c.dKvIn, Hkv, dK);
      addon.projectHeads(x.data, w.wV.data, n(w.bV), b.v, B, T, c.dKvIn, Hkv, dV);
      put(b.k, kC, kS, T, dK);
      put(b.v, vC, vS, T, dV);
      b.m.fill(-Infinity);
      b.l.fill(0);
      b.acc.fill(0);
      addon.attnUpdate(packDims({ B, H: Hh, Hkv, T, S: len + T, sCap: capacity, dK, dV }), { scale: c.scale, causal: true, qOffset: len, ...NO_DROPOUT, ...(dtype === 'f32' ? {} : { kvDtype: dtype }) }, b.q, kC, vC, b.m, b.l, b.acc, kS, vS);
      addon.attnFinalize(B * Hh * T, dV, b.m, b.l, b.acc, b.acc, b.lse);
      addon.mergeProject(b.acc, w.wO.data, n(w.bO), b.y, B, Hh, T, dV, dOut);
      len += T;
    },
  };
}
