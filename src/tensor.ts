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
  if (!Array.isArray(shape)) throw new ShapeError(`Expected ${name} shape to be an array of dimensions, got ${show(shape)}`);
  shape.forEach((d, i) => expectDim(`${name}.shape[${i}]`, d, 0));
  const t = { data, shape: [...shape] };
  expectShape(name, t, shape.map((_, i) => `d${i}`), shape);
  return t;
}

export function zeros(shape: readonly number[]): Tensor {
  if (!Array.isArray(shape)) throw new ShapeError(`Expected zeros shape to be an array of dimensions, got ${show(shape)}`);
  shape.forEach((d, i) => expectDim(`zeros shape[${i}]`, d, 0));
  return alloc('zeros', shape.map((_, i) => `d${i}`), shape);
}

/**
 * Largest tensor kvstream allocates: 2^31 bytes (2^29 floats), as the addon's scratch limit
 * (SCRATCH_LIMIT_BYTES in native/kernel_path.h). Bigger requests throw an ArgumentError naming
 * the size instead of allocating (and zero-filling) gigabytes.
 */
export const MAX_TENSOR_BYTES = 2 ** 31;

/** Throws unless a tensor of `dims` (named `names`) fits MAX_TENSOR_BYTES; returns its float count. */
export function expectAllocatable(name: string, names: readonly string[], dims: readonly number[]): number {
  const n = numel(dims);
  if (n * 4 > MAX_TENSOR_BYTES) {
    throw new ArgumentError(`Expected ${name} [${names.join(',')}]=[${dims.join(',')}] to fit the ${MAX_TENSOR_BYTES / 2 ** 30} GiB tensor limit (${MAX_TENSOR_BYTES / 4} floats), got ${n} floats (${n * 4} bytes)`);
  }
  return n;
}

/** A zeroed tensor of `dims`, after the size check. */
export function alloc(name: string, names: readonly string[], dims: readonly number[]): Tensor {
  return { data: new Float32Array(expectAllocatable(name, names, dims)), shape: [...dims] };
}

/**
 * Buffers reused across calls (module scratch): `get(key, n)` gives a Float32Array of exactly
 * n floats, the same view while n stays the same; storage only grows. Contents are whatever
 * the last user left. Not for anything handed to a caller.
 */
export class Scratch {
  private readonly slots = new Map<string, { buf: Float32Array; view: Float32Array }>();

  get(key: string, names: readonly string[], dims: readonly number[]): Float32Array {
    const n = expectAllocatable(key, names, dims);
    let slot = this.slots.get(key);
    if (!slot || slot.buf.length < n) {
      const buf = new Float32Array(n);
      slot = { buf, view: buf };
      this.slots.set(key, slot);
    }
    if (slot.view.length !== n) slot.view = slot.buf.subarray(0, n);
    return slot.view;
  }
}

/** An options argument: undefined (-> {}) or an object; anything else throws naming it. */
export function expectOptions<T extends object>(name: string, value: T | undefined): T {
  if (value === undefined) return {} as T;
  if (typeof value !== 'object' || value === null) throw new ArgumentError(`Expected ${name} to be an object or undefined, got ${show(value)}`);
  return value;
}

/** A required object argument (a config). */
export function expectObject<T extends object>(name: string, value: T): T {
  if (typeof value !== 'object' || value === null) throw new ArgumentError(`Expected ${name} to be an object, got ${show(value)}`);
  return value;
}

/** An optional boolean flag. */
export function expectFlag(name: string, value: unknown): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') throw new ArgumentError(`Expected ${name} to be true, false or undefined, got ${show(value)}`);
  return value as boolean | undefined;
}

/**
 * An `out` tensor must not share memory with an input the same call reads (the kernels would
 * read what they already overwrote).
 */
export function expectDisjoint(outName: string, out: Float32Array, names: readonly string[], inputs: readonly (ArrayBufferView | null | undefined)[]): void {
  const lo = out.byteOffset, hi = lo + out.byteLength;
  for (let i = 0; i < inputs.length; i++) {
    const x = inputs[i], name = names[i];
    if (x && x.buffer === out.buffer && x.byteOffset < hi && lo < x.byteOffset + x.byteLength) {
      throw new ArgumentError(`Expected ${outName} not to overlap ${name}, got bytes [${lo}, ${hi}) of the same ArrayBuffer as ${name} [${x.byteOffset}, ${x.byteOffset + x.byteLength})`);
    }
  }
}

/** An integer in [min, 2^31 - 1]. */
function isDim(value: unknown, min: number): value is number {
  return Number.isInteger(value) && (value as number) >= min && (value as number) <= 2 ** 31 - 1;
}

/** `value` must be an integer >= min (dimensions, lengths, offsets). */
export function expectDim(name: string, value: unknown, min = 1): number {
  if (!isDim(value, min)) {
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
  if (data instanceof Float32Array && Array.isArray(shape) && shape.length === dims.length && (capacity === undefined || dims.length > 2)) {
    let same = true, floats = 1;  // a plain loop: no closure or array per call
    for (let i = 0; i < dims.length; i++) {
      same &&= shape[i] === dims[i];
      floats *= i === 2 && capacity !== undefined ? capacity : dims[i];
    }
    if (same && data.length === floats) return t as Tensor;
  }
  const stored = capacity === undefined ? dims : [dims[0], dims[1], capacity, ...dims.slice(3)];
  const want = `${name} shape [${names.join(',')}]=[${dims.join(',')}] (${numel(dims)} floats)`;
  if (typeof t !== 'object' || t === null || !('data' in t) || !('shape' in t)) throw new ShapeError(`Expected ${want}, got ${show(t)}`);
  if (!(data instanceof Float32Array)) throw new ShapeError(`Expected ${want} as a Float32Array, got ${show(data)}`);
  if (!Array.isArray(shape)) throw new ShapeError(`Expected ${want}, got shape ${show(shape)}`);
  let same = shape.length === dims.length;  // indexed, as the fast path: a hole is not a dim
  for (let i = 0; same && i < dims.length; i++) same = shape[i] === dims[i];
  if (!same) throw new ShapeError(`Expected ${want}, got shape [${shape.map(show).join(',')}] (${data.length} floats)`);
  // A cache view stores `capacity` >= S positions per head in its third axis.
  const storage = capacity === undefined ? want : `${name} storage [${names.map((n, i) => (i === 2 ? `${n}_cap` : n)).join(',')}]=[${stored.join(',')}] (${numel(stored)} floats)`;
  throw new ShapeError(`Expected ${storage}, got ${data.length}`);
}

/** Checks rank and dimension values of a tensor whose dims are not known yet; returns its shape. */
export function expectRank(name: string, t: unknown, names: readonly string[]): number[] {
  const shape = (t as { shape?: unknown } | null)?.shape;
  if (!Array.isArray(shape) || shape.length !== names.length) {
    throw new ShapeError(`Expected ${name} rank ${names.length} [${names.join(',')}], got ${Array.isArray(shape) ? `shape [${shape.map(show).join(',')}]` : show(t)}`);
  }
  // The per-dim name is built only for a bad dim (this runs on every call).
  for (let i = 0; i < shape.length; i++) if (!isDim(shape[i], 1)) expectDim(`${name} dim ${names[i]}`, shape[i]);
  return shape as number[];
}

/** A short description of any value for messages; never throws (Symbols, Proxies, odd getters). */
export function show(value: unknown): string {
  try {
    if (value === null || value === undefined) return String(value);
    if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${(value as unknown as ArrayLike<unknown>).length})`;
    if (Array.isArray(value)) return `Array(${value.length})`;
    if (typeof value === 'object') return value.constructor?.name ?? 'object';
    if (typeof value === 'function') return 'function';
    if (typeof value === 'bigint') return `${value}n`;
    return typeof value === 'string' ? JSON.stringify(value.slice(0, 40)) : String(value);
  } catch {
    return typeof value;
  }
}
