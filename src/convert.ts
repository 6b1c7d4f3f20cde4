// Decoded fixture arrays (NpyArray: dtype, shape, C-order data in native byte order) as the
// tensors other JS runtimes take. No runtime dependency: onnxruntime's Tensor class is passed in.
import { ArgumentError } from './errors.ts';
import { ArrayMismatchError } from './fixtures/errors.ts';
import { convertNpy } from './io/npy.ts';
import type { ConvertTarget, NpyArray, NpyData } from './io/npy.ts';

/** onnxruntime's element type names for the dtypes an NPY fixture holds. */
export type TensorType = 'float32' | 'float64' | 'float16' | 'int8' | 'int16' | 'int32' | 'uint8' | 'uint16' | 'uint32' | 'bool';

/** A framework-neutral tensor: element type, C-order values, dims (row-major, like NPY). */
export interface TensorData {
  type: TensorType;
  /** float16 is raw half bits in a Uint16Array; bool is 0/1 in a Uint8Array (onnxruntime's layout). */
  data: NpyData;
  dims: number[];
}

export interface ToTensorOptions {
  /**
   * Convert the values first: tfjs takes only float32, int32 and bool; many graphs take float32
   * only. Exact conversions always pass; rounding (f8 → float32, integers beyond 2^24 →
   * float32) throws a FixtureError unless `allowRounding`.
   */
  as?: ConvertTarget;
  allowRounding?: boolean;
  /** Names the array in error messages, e.g. "basic_self_attn_small:x_q". */
  source?: string;
}

const TYPE: Record<string, TensorType> = {
  f2: 'float16', f4: 'float32', f8: 'float64',
  i1: 'int8', i2: 'int16', i4: 'int32',
  u1: 'uint8', u2: 'uint16', u4: 'uint32',
  b1: 'bool',
};

/**
 * `array` as `{ type, data, dims }` (dims = the NPY shape). Without `as`, `data` is `array.data`
 * itself (no copy) and `type` is the stored dtype's onnxruntime name. For tfjs:
 * `tf.tensor(t.data, t.dims, t.type)` with `as: 'float32'` or `'int32'` (tfjs has no uint8).
 */
export function toTensorData(array: NpyArray, options: ToTensorOptions = {}): TensorData {
  const { as, allowRounding = false, source = 'array' } = options;
  if (as) {
    const c = convertNpy(array, as, { source, onLoss: allowRounding ? 'report' : 'throw' });
    return { type: as, data: c.data, dims: [...c.shape] };
  }
  const type = TYPE[array.dtype.slice(1)];
  // Unreachable for a decoded NpyArray (the decoder admits only these); a hand-built one may differ.
  if (!type) throw new ArgumentError(`${source}: dtype ${array.dtype} has no onnxruntime type`);
  return { type, data: array.data, dims: [...array.shape] };
}

/**
 * A constructor like onnxruntime's `Tensor`: `new Tensor(type, data, dims)`. onnxruntime-node's
 * and onnxruntime-web's `Tensor` both fit; so does any class with that constructor.
 */
export type TensorConstructor<T> = new (type: TensorType, data: NpyData, dims: readonly number[]) => T;

/**
 * `array` as a `Tensor` of the given class (pass `ort.Tensor` from onnxruntime-node or -web).
 * The tensor shares `array.data` unless `options.as` converts. E.g.
 * `toOrtTensor(ort.Tensor, arrays.get('x_q')!)` → float32 tensor of dims [B, T, d_model].
 */
export function toOrtTensor<T>(Tensor: TensorConstructor<T>, array: NpyArray, options: ToTensorOptions = {}): T {
  const t = toTensorData(array, options);
  return new Tensor(t.type, t.data, t.dims);
}

/**
 * Session feeds from fixture arrays: `inputs` maps each graph input name to an array name
 * (e.g. `{ x: 'x_q' }`). A missing array is an ArrayMismatchError naming it.
 */
export function toOrtFeeds<T>(
  Tensor: TensorConstructor<T>,
  arrays: ReadonlyMap<string, NpyArray>,
  inputs: Readonly<Record<string, string>>,
  options: Omit<ToTensorOptions, 'source'> = {},
): Record<string, T> {
  const feeds: Record<string, T> = {};
  for (const [input, name] of Object.entries(inputs)) {
    const a = arrays.get(name);
    if (!a) throw new ArrayMismatchError(`Expected array ${name} for input ${input}, have: ${[...arrays.keys()].join(', ')}`);
    feeds[input] = toOrtTensor(Tensor, a, { ...options, source: name });
  }
  return feeds;
}
