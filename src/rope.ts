// Rotary position embeddings (RoPE) on per-head tensors [B,H,T,d], by absolute position.
import { ArgumentError, ShapeError } from './errors.ts';
import { addon } from './native.ts';
import { alloc, expectNumber, expectObject, expectRank, expectShape, show } from './tensor.ts';
import type { Tensor } from './tensor.ts';

export interface RopeOptions {
  /** Rotated channels (rotary_dim), even, <= d; default d. Channels [dim, d) pass through (partial rotary). */
  dim?: number;
  /** Base of the frequencies theta^(-2i/dim); default 10000. */
  theta?: number;
  /** 'half' (default): GPT-NeoX / Llama pairs (i, i + dim/2); 'interleaved': GPT-J pairs (2i, 2i + 1). */
  style?: 'half' | 'interleaved';
}

/** Checked options for a head width d. */
export interface ResolvedRope {
  dim: number;
  theta: number;
  style: 'half' | 'interleaved';
}

export function resolveRope(rope: RopeOptions, d: number, name = 'rope'): ResolvedRope {
  expectObject(name, rope);
  const dim = rope.dim ?? d;
  if (!Number.isInteger(dim) || dim < 2 || dim > d || dim % 2 !== 0) {
    throw new ArgumentError(`Expected ${name}.dim to be an even integer in [2, d=${d}], got ${show(rope.dim)}`);
  }
  const theta = expectNumber(`${name}.theta`, rope.theta ?? 10000, 1e-30, 1e300);
  const style = rope.style ?? 'half';
  if (style !== 'half' && style !== 'interleaved') throw new ArgumentError(`Expected ${name}.style to be 'half' or 'interleaved', got ${show(style)}`);
  return { dim, theta, style };
}

/**
 * Position ids [B,T]: `start + t` for every batch row (a number), or `start[b] + t` (an array
 * of B row offsets); written into `out` when it has B·T elements.
 */
export function positionIds(B: number, T: number, start: number | ArrayLike<number>, out?: Int32Array): Int32Array {
  const ids = out?.length === B * T ? out : new Int32Array(B * T);
  if (typeof start !== 'number' && start.length !== B) throw new ShapeError(`Expected position offsets [B]=[${B}] (${B} elements), got ${start.length}`);
  for (let b = 0; b < B; b++) {
    const s0 = typeof start === 'number' ? start : start[b];
    for (let t = 0; t < T; t++) ids[b * T + t] = s0 + t;
  }
  return ids;
}

/**
 * Rotates x [B,H,T,d] at absolute positions: `positions` is the position of token 0 of every
 * row (token t at positions + t), or explicit position ids [B,T] (an Int32Array). Writes into
 * `out` [B,H,T,d] when given (it may be x itself), else into a fresh tensor; returns it.
 * Angles pos · theta^(-2i/dim) are computed in float64 and their cos/sin rounded to fp32.
 */
export function applyRope(x: Tensor, positions: number | Int32Array, rope: RopeOptions, out?: Tensor): Tensor {
  const [B, H, T, d] = expectRank('x', x, ['B', 'H', 'T', 'd']);
  expectShape('x', x, ['B', 'H', 'T', 'd'], [B, H, T, d]);
  const r = resolveRope(rope, d);
  let ids: Int32Array;
  if (typeof positions === 'number') {
    if (!Number.isInteger(positions) || positions < -(2 ** 31) || positions + T - 1 > 2 ** 31 - 1) {
      throw new ArgumentError(`Expected positions to be an integer with positions + T - 1 in 32 bits (T=${T}), got ${show(positions)}`);
    }
    ids = positionIds(B, T, positions);
  } else if (positions instanceof Int32Array) {
    if (positions.length !== B * T) throw new ShapeError(`Expected positions shape [B,T]=[${B},${T}] (${B * T} elements), got ${positions.length}`);
    ids = positions;
  } else {
    throw new ArgumentError(`Expected positions to be a start position or an Int32Array [B,T] of position ids, got ${show(positions)}`);
  }
  const y = out === undefined ? alloc('out', ['B', 'H', 'T', 'd'], [B, H, T, d]) : expectShape('out', out, ['B', 'H', 'T', 'd'], [B, H, T, d]);
  addon.rope(x.data, y.data, { B, H, T, d }, { rotaryDim: r.dim, theta: r.theta, interleaved: r.style === 'interleaved' }, ids);
  return y;
}
