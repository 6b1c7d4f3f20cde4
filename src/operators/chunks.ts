// Chunk types that flow through the operators, and how a token axis is split.
import { ShapeError } from '../errors.ts';
import type { KvCache } from '../kvcache.ts';
import { ArgumentError } from '../errors.ts';
import { expectDim, expectRank, expectShape, show } from '../tensor.ts';
import type { Tensor } from '../tensor.ts';

/** Tokens [start, end) of an input, x [B, end - start, d]. */
export interface TokenChunk {
  index: number;
  start: number;
  end: number;
  x: Tensor;
}

/** A chunk projected to keys k [B,H_kv,n,d_k] and values v [B,H_kv,n,d_v]. */
export interface KvChunk extends TokenChunk {
  k: Tensor;
  v: Tensor;
}

/** A chunk after its keys/values were appended to `cache`. */
export interface CachedChunk extends KvChunk {
  cache: KvCache;
}

/** Chunk sizes covering S tokens: a fixed size (last chunk shorter) or an explicit list summing to S. */
export function chunkSizes(S: number, chunking: number | readonly number[]): number[] {
  if (typeof chunking === 'number') {
    expectDim('chunk size', chunking);
    const sizes: number[] = [];
    for (let s = 0; s < S; s += chunking) sizes.push(Math.min(chunking, S - s));
    return sizes;
  }
  if (!Array.isArray(chunking)) throw new ArgumentError(`Expected chunking to be a chunk size or an array of chunk sizes, got ${show(chunking)}`);
  chunking.forEach((n, i) => expectDim(`chunk_sizes[${i}]`, n));
  const total = chunking.reduce((a, b) => a + b, 0);
  if (total !== S) throw new ShapeError(`Expected chunk_sizes to sum to S=${S}, got ${total} ([${chunking.join(',')}])`);
  return [...chunking];
}

/** Tokens [s0, s1) of x [B,S,d] as [B, s1 - s0, d]. */
export function sliceTokens(x: Tensor, s0: number, s1: number): Tensor {
  const [B, S, d] = expectTokens('x', x);
  expectDim('s1', s1, 0);
  if (expectDim('s0', s0, 0) > s1 || s1 > S) throw new ShapeError(`Expected 0 <= s0 <= s1 <= S=${S}, got s0=${s0}, s1=${s1}`);
  const n = s1 - s0;
  if (B === 1) return { data: x.data.subarray(s0 * d, s1 * d), shape: [1, n, d] };
  const out = new Float32Array(B * n * d);
  for (let b = 0; b < B; b++) out.set(x.data.subarray((b * S + s0) * d, (b * S + s1) * d), b * n * d);
  return { data: out, shape: [B, n, d] };
}

/** Concatenates [B, n_i, d] tensors along the token axis. */
export function concatTokens(parts: readonly Tensor[]): Tensor {
  if (!Array.isArray(parts) || parts.length === 0) throw new ArgumentError(`Expected parts to be a non-empty array of [B,n,d] tensors, got ${show(parts)}`);
  const [B, , d] = expectTokens('parts[0]', parts[0]);
  parts.forEach((p, i) => {
    const [b, , dd] = expectTokens(`parts[${i}]`, p);
    if (b !== B || dd !== d) throw new ShapeError(`Expected parts[${i}] shape [B,n,d] with B=${B}, d=${d} (as parts[0]), got [${p.shape.join(',')}]`);
  });
  const S = parts.reduce((a, p) => a + p.shape[1], 0);
  const out = new Float32Array(B * S * d);
  let s0 = 0;
  for (const p of parts) {
    const n = p.shape[1];
    for (let b = 0; b < B; b++) out.set(p.data.subarray(b * n * d, (b + 1) * n * d), (b * S + s0) * d);
    s0 += n;
  }
  return { data: out, shape: [B, S, d] };
}

/** x [B,S,d]: rank, dimensions and a Float32Array of B·S·d floats; returns [B, S, d]. */
export function expectTokens(name: string, x: Tensor): number[] {
  const shape = (x as Tensor | null)?.shape as number[];
  if (!Array.isArray(shape) || shape.length !== 3) expectRank(name, x, ['B', 'S', 'd']); // throws with the rank message
  const dims = [expectDim(`${name} dim B`, shape[0]), expectDim(`${name} dim S`, shape[1], 0), expectDim(`${name} dim d`, shape[2])];
  expectShape(name, x, ['B', 'S', 'd'], dims);
  return dims;
}
