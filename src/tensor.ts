// Tensors are a flat, row-major Float32Array plus a shape. All shape checks go through
// `expectShape` so every message has the same template:
//   Expected q shape [B,H,T,D]=[1,8,16,64] (8192 floats), got 4096
import { ArgumentError, ShapeError } from './errors.ts';

export interface Tensor {
  readonly data: Float32Array;
  readonly shape: readonly number[];
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** A tensor over `data` (not copied); throws when the length does not match the shape. */
export function tensor(data: Float32Array, shape: readonly number[], name = 'tensor'): Tensor {
  shape.forEach((d, i) => expectDim(`${name}.shape[${i}]`, d, 0));
  const t = { data, shape: [...shape] };
  expectShape(name, t, shape.map((_, i) => `d${i}`), shape);
  return t;
}

export function zeros(shape: readonly number[]): Tensor {
  return { data: new Float32Array(numel(shape)), shape: [...shape] };
}

/** `value` must be an integer >= min (dimensions, lengths, offsets). */
export function expectDim(name: string, value: unknown, min = 1): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > 2 ** 31 - 1) {
    throw new ShapeError(`Expected ${name} to be an integer >= ${min}, got ${show(value)}`);
  }
  return value;
}

/** `value` must be an integer in [0, 2^53) (seeds). */
export function expectSeed(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new ArgumentError(`Expected ${name} to be an integer in [0, 2^53), got ${show(value)}`);
  }
  return value;
}

/** `value` must be a finite number in [lo, hi] (or [lo, hi) when hiOpen). */
export function expectNumber(name: string, value: unknown, lo: number, hi: number, hiOpen = false): number {
  const ok = typeof value === 'number' && Number.isFinite(value) && value >= lo && (hiOpen ? value < hi : value <= hi);
  if (!ok) throw new ArgumentError(`Expected ${name} to be a number in [${lo}, ${hi}${hiOpen ? ')' : ']'}, got ${show(value)}`);
  return value as number;
}

/**
 * Checks that `t` is a Float32Array-backed tensor of exactly `dims` (names in `names`, e.g.
 * ['B','H','T','D']) and that its data holds numel(dims) floats, or, for a rank-4 cache view
 * with `capacity`, the floats of [dims[0], dims[1], capacity, dims[3]].
 */
export function expectShape(name: string, t: unknown, names: readonly string[], dims: readonly number[], capacity?: number): Tensor {
  // Fast path first (this runs on every call of every kernel): the message is built only on failure.
  const data = (t as Tensor | null)?.data;
  const shape = (t as Tensor | null)?.shape;
  const stored = capacity === undefined ? dims : [dims[0], dims[1], capacity, ...dims.slice(3)];
  if (data instanceof Float32Array && Array.isArray(shape) && shape.length === dims.length && shape.every((d, i) => d === dims[i]) && data.length === numel(stored)) {
    return t as Tensor;
  }
  const want = `${name} shape [${names.join(',')}]=[${dims.join(',')}] (${numel(dims)} floats)`;
  if (typeof t !== 'object' || t === null || !('data' in t) || !('shape' in t)) throw new ShapeError(`Expected ${want}, got ${show(t)}`);
  if (!(data instanceof Float32Array)) throw new ShapeError(`Expected ${want} as a Float32Array, got ${show(data)}`);
  if (!Array.isArray(shape)) throw new ShapeError(`Expected ${want}, got shape ${show(shape)}`);
  const same = shape.length === dims.length && shape.every((d, i) => d === dims[i]);
  if (!same) throw new ShapeError(`Expected ${want}, got shape [${shape.join(',')}] (${data.length} floats)`);
  // A cache view stores `capacity` >= S positions per head in its third axis.
  const storage = capacity === undefined ? want : `${name} storage [${names.map((n, i) => (i === 2 ? `${n}_cap` : n)).join(',')}]=[${stored.join(',')}] (${numel(stored)} floats)`;
  throw new ShapeError(`Expected ${storage}, got ${data.length}`);
}

/** Checks rank and dimension values of a tensor whose dims are not known yet; returns its shape. */
export function expectRank(name: string, t: unknown, names: readonly string[]): number[] {
  const shape = (t as { shape?: unknown } | null)?.shape;
  if (!Array.isArray(shape) || shape.length !== names.length) {
    throw new ShapeError(`Expected ${name} rank ${names.length} [${names.join(',')}], got ${Array.isArray(shape) ? `shape [${shape.join(',')}]` : show(t)}`);
  }
  shape.forEach((d, i) => expectDim(`${name} dim ${names[i]}`, d));
  return shape as number[];
}

function show(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${(value as unknown as ArrayLike<unknown>).length})`;
  if (Array.isArray(value)) return `Array(${value.length})`;
  if (typeof value === 'object') return value.constructor?.name ?? 'object';
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}
