/**
 * NPY files: an encoder, a decoder that never evaluates the header, and explicit dtype conversion.
 *
 * Layout: "\x93NUMPY", major, minor, header length (uint16 LE for 1.0, uint32 LE for 2.0 and 3.0),
 * a Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } (latin-1 in 1.0 and
 * 2.0, UTF-8 in 3.0) padded with spaces and '\n' so the data starts at a multiple of 64, then the
 * data.
 *
 * Reading accepts every numeric dtype numpy writes: f2 f4 f8, i1 i2 i4 i8, u1 u2 u4 u8 and b1, in
 * either byte order ('<', '>'; '|', '=' or none mean native, as in numpy), C or Fortran order
 * (transposed to C order), format 1.0, 2.0 and 3.0. `dtype` is reported as numpy's `dtype.str`
 * ('<f8', '>i2', '|u1'); `data` always holds values in this machine's byte order, in the natural
 * typed array: f2 → Uint16Array (raw half bits), f4 → Float32Array, f8 → Float64Array, iN/uN →
 * the IntN/UintN array, b1 → Uint8Array of 0/1. i8/u8 arrays are BigInt64Array/BigUint64Array and
 * are returned only when asked for with `{ int64: 'bigint' }` (the default return type holds
 * numbers only); otherwise they are a FixtureError saying so.
 * Refused, as FixtureError naming the file: object dtypes (pickles; allow_pickle is never on),
 * structured/record, string, complex and datetime dtypes, headers over numpy's 10000-character
 * limit, headers other than a dict of exactly descr/fortran_order/shape with literal values,
 * negative or non-integer dims, b1 bytes other than 0/1, and any shape whose size differs from
 * the bytes present (checked before anything is allocated; at most MAX_NPY_BYTES per array).
 *
 * Conversion (convertNpy) to float32, float64 or int32 is explicit. Exact conversions report
 * nothing; rounding (f8 → float32, i4/u4/i8/u8 beyond 2^24 → float32, i8/u8 beyond 2^53 →
 * float64) is reported in `losses` (or thrown with onLoss: 'throw'); a value the target cannot
 * hold at all (out of int32 range, non-integer or NaN/inf to int32, finite f8 beyond float32's
 * range) is always a FixtureError, never a silent wrap or infinity. f2 and bfloat16 (stored as
 * u2 bit patterns, `interpret: 'bfloat16'`) convert exactly to float32 and float64. f32ToF16 and
 * f32ToBf16 encode with round-to-nearest-even.
 *
 * Writing (encodeNpy) gives format 1.0, C order, any of the dtypes above ('>' ones swapped);
 * <f4, <i4 and |u1 files are byte for byte what earlier versions wrote.
 */
import { Buffer } from 'node:buffer';
import { FixtureError } from '../errors.ts';

type Wide = 'f2' | 'f4' | 'f8' | 'i2' | 'i4' | 'i8' | 'u2' | 'u4' | 'u8';
/** numpy's `dtype.str` of every dtype the codec reads and writes. */
export type Dtype = `${'<' | '>'}${Wide}` | '|i1' | '|u1' | '|b1';
export type Int64Dtype = '<i8' | '>i8' | '<u8' | '>u8';
/** Typed arrays whose elements are numbers. */
export type NpyData = Float32Array | Float64Array | Int8Array | Int16Array | Int32Array | Uint8Array | Uint16Array | Uint32Array;
export type NpyBigData = BigInt64Array | BigUint64Array;
export type AnyNpyData = NpyData | NpyBigData;

/** A decoded array: `dtype` as stored, `data` in native byte order and C order. */
export interface NpyArray {
  dtype: Dtype;
  shape: number[];
  data: NpyData;
}
/** A 64-bit integer array (decoded only with `{ int64: 'bigint' }`). */
export interface NpyBigArray {
  dtype: Int64Dtype;
  shape: number[];
  data: NpyBigData;
}
export type AnyNpyArray = NpyArray | NpyBigArray;

export interface DecodeOptions {
  /** Return i8/u8 arrays as BigInt64Array/BigUint64Array (the result type then includes them). */
  int64?: 'bigint';
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
/** Largest array the decoder accepts, in bytes (a hostile header must not make us allocate more). */
export const MAX_NPY_BYTES = 2 ** 31;
/** numpy's `max_header_size` (characters of the decoded header) when allow_pickle is off. */
export const MAX_HEADER_CHARS = 10000;
/** Longest preamble + header a reader may need: 12 bytes, then up to 4 UTF-8 bytes a character. */
export const MAX_HEADER_BYTES = 12 + 4 * MAX_HEADER_CHARS;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

type Kind = 'f' | 'i' | 'u' | 'b';
interface DtypeInfo {
  kind: Kind;
  size: 1 | 2 | 4 | 8;
  /** File bytes are big-endian. */
  big: boolean;
  make: new (buffer: ArrayBuffer) => AnyNpyData;
}

const TYPED: Record<string, new (buffer: ArrayBuffer) => AnyNpyData> = {
  f2: Uint16Array, f4: Float32Array, f8: Float64Array,
  i1: Int8Array, i2: Int16Array, i4: Int32Array, i8: BigInt64Array,
  u1: Uint8Array, u2: Uint16Array, u4: Uint32Array, u8: BigUint64Array,
  b1: Uint8Array,
};

/** Kind, item size and byte order of a canonical dtype. */
export function dtypeInfo(dtype: Dtype | Int64Dtype): DtypeInfo {
  const code = dtype.slice(1);
  return { kind: code[0] as Kind, size: Number(code.slice(1)) as DtypeInfo['size'], big: dtype[0] === '>', make: TYPED[code] };
}

/**
 * numpy's dtype.str for a header 'descr' string, or a sentence saying why it is refused.
 * '|', '=' or no order character mean native (little-endian on every platform Node runs on
 * except s390x, where the data are swapped accordingly).
 */
function canonicalDtype(descr: string): Dtype | Int64Dtype | { refused: string } {
  const m = /^([<>|=]?)([a-zA-Z])(\d*)(.*)$/.exec(descr);
  const kind = m?.[2] ?? '';
  if (m && m[4] === '' && `${kind}${m[3]}` in TYPED) {
    const size = Number(m[3]);
    const order = size === 1 ? '|' : m[1] === '>' || (m[1] === '<' ? false : !LITTLE_ENDIAN) ? '>' : '<';
    return `${order}${kind}${m[3]}` as Dtype | Int64Dtype;
  }
  const why =
    kind === 'O' ? 'object arrays are pickles, and pickles are never loaded'
    : kind === 'V' ? 'void/record dtypes are not supported'
    : kind === 'U' || kind === 'S' || kind === 'a' ? 'string dtypes are not supported'
    : kind === 'c' ? 'complex dtypes are not supported'
    : kind === 'M' || kind === 'm' ? 'datetime dtypes are not supported'
    : 'not a supported numeric dtype';
  return { refused: `dtype ${descr} is refused: ${why} (accepted: f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1, byte order < > | =)` };
}

/** The little-endian dtype a typed array is written as by default (Uint16Array: '<u2'). */
export function dtypeOf(data: AnyNpyData): Dtype | Int64Dtype {
  const o = '<';
  if (data instanceof Float32Array) return `${o}f4`;
  if (data instanceof Float64Array) return `${o}f8`;
  if (data instanceof Int32Array) return `${o}i4`;
  if (data instanceof Int16Array) return `${o}i2`;
  if (data instanceof Int8Array) return '|i1';
  if (data instanceof Uint16Array) return `${o}u2`;
  if (data instanceof Uint32Array) return `${o}u4`;
  if (data instanceof BigInt64Array) return `${o}i8`;
  if (data instanceof BigUint64Array) return `${o}u8`;
  return '|u1';
}

/** Swaps each `size`-byte (2, 4 or 8) item of `bytes` in place. */
function byteswap(bytes: Uint8Array, size: number): void {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (size === 2) b.swap16();
  else if (size === 4) b.swap32();
  else b.swap64();
}

/** The preamble and header of an NPY 1.0 file of `shape` and `dtype`; the data follows it. */
export function npyHeader(shape: readonly number[], dtype: Dtype | Int64Dtype): Uint8Array {
  let header = `{'descr': '${dtype}', 'fortran_order': False, 'shape': ${pyTuple(shape)}, }`;
  const unpadded = MAGIC.length + 4 + header.length + 1;
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  if (header.length > MAX_HEADER_CHARS) throw new FixtureError(`NPY header for shape ${pyTuple(shape)} is ${header.length} characters, over numpy's ${MAX_HEADER_CHARS}`);
  const out = new Uint8Array(MAGIC.length + 4 + header.length);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  return out;
}

/**
 * An NPY 1.0 file holding `data` with `shape` (C order). `dtype` defaults to the little-endian
 * dtype of the typed array (Uint16Array → '<u2'; pass '<f2' for half bits); it must be one the
 * typed array holds (e.g. '>f8' or '<f8' for a Float64Array), and '>' dtypes are written swapped.
 */
export function encodeNpy(array: { data: AnyNpyData; shape: readonly number[]; dtype?: Dtype | Int64Dtype }): Uint8Array {
  const dtype = array.dtype ?? dtypeOf(array.data);
  const canonical = canonicalDtype(dtype);
  if (typeof canonical !== 'string' || canonical !== dtype) throw new FixtureError(`cannot write dtype ${dtype} (expected one of numpy's dtype.str forms, e.g. <f4, >f8, |u1)`);
  const info = dtypeInfo(canonical);
  if (!(array.data instanceof info.make)) throw new FixtureError(`dtype ${dtype} is written from a ${info.make.name}, got a ${array.data.constructor.name}`);
  for (const d of array.shape) if (!Number.isSafeInteger(d) || d < 0) throw new FixtureError(`Expected non-negative integer dims, got shape [${array.shape.join(',')}]`);
  const count = array.shape.reduce((a, b) => a * b, 1);
  if (count !== array.data.length) {
    throw new FixtureError(`Expected ${count} elements for shape [${array.shape.join(',')}], got ${array.data.length}`);
  }
  if (info.kind === 'b') {
    const i = (array.data as Uint8Array).findIndex((v) => v > 1);
    if (i >= 0) throw new FixtureError(`|b1 data must be 0 or 1, got ${array.data[i]} at flat index ${i}`);
  }
  const header = npyHeader(array.shape, dtype);
  const out = new Uint8Array(header.length + array.data.byteLength);
  out.set(header, 0);
  out.set(new Uint8Array(array.data.buffer, array.data.byteOffset, array.data.byteLength), header.length);
  if (info.size > 1 && info.big === LITTLE_ENDIAN) byteswap(out.subarray(header.length), info.size);
  return out;
}

export interface NpyHeader {
  dtype: Dtype | Int64Dtype;
  shape: number[];
  fortranOrder: boolean;
  /** Format version, e.g. [1, 0]. */
  version: [number, number];
  /** Byte offset of the data in the file. */
  dataOffset: number;
  /** Bytes of data the header declares. */
  dataBytes: number;
}

/**
 * Parses the magic and header from the first bytes of an NPY file (at least up to the end of
 * the header). `source` names the file in errors. Throws FixtureError for anything but a
 * well-formed header of a readable dtype and size.
 */
export function parseNpyHeader(bytes: Uint8Array, source: string): NpyHeader {
  const fail = (problem: string): never => {
    throw new FixtureError(`${source}: ${problem}`);
  };
  if (bytes.length < 10) fail(`truncated: ${bytes.length} bytes, shorter than an NPY preamble`);
  if (!MAGIC.every((b, i) => bytes[i] === b)) fail('bad magic: not an NPY file');
  const major = bytes[6], minor = bytes[7];
  if (!(major >= 1 && major <= 3 && minor === 0)) fail(`unsupported NPY version ${major}.${minor} (expected 1.0, 2.0 or 3.0)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lenBytes = major === 1 ? 2 : 4;
  if (bytes.length < 8 + lenBytes) fail('truncated header length');
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = 8 + lenBytes;
  const tooLong = () => fail(`header of ${headerLen} bytes is longer than numpy's ${MAX_HEADER_CHARS}-character limit (max_header_size)`);
  if (headerLen > (major === 3 ? 4 * MAX_HEADER_CHARS : MAX_HEADER_CHARS)) tooLong();
  if (bytes.length < start + headerLen) fail(`truncated header: declares ${headerLen} bytes, ${bytes.length - start} present`);
  let text = '';
  if (major === 3) {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(start, start + headerLen));
    } catch {
      fail('header of a version 3.0 file is not valid UTF-8');
    }
    if ([...text].length > MAX_HEADER_CHARS) tooLong();
  } else {
    for (let i = start; i < start + headerLen; i++) text += String.fromCharCode(bytes[i]);
  }
  const dict = parseDict(text, fail);

  const descr = dict.descr;
  if (Array.isArray(descr) && descr.kind === 'list') fail(`structured/record dtypes are not supported (descr is a list of fields)`);
  if (typeof descr !== 'string') fail(`header 'descr' must be a dtype string, got ${describe(descr)}`);
  const dtype = canonicalDtype(descr as string);
  if (typeof dtype !== 'string') return fail(dtype.refused);
  const fortran = dict.fortran_order;
  if (typeof fortran !== 'boolean') fail(`header 'fortran_order' must be True or False, got ${describe(fortran)}`);
  const shape = dict.shape;
  if (!Array.isArray(shape) || shape.kind !== 'tuple') return fail(`header 'shape' must be a tuple of integers, got ${describe(shape)}`);
  for (const d of shape) {
    if (typeof d !== 'number') fail(`header 'shape' entry ${describe(d)} is not an integer`);
    if ((d as number) < 0) fail(`header 'shape' entry ${d} is negative`);
  }
  const dims = [...shape] as number[];
  const size = dtypeInfo(dtype).size;
  // Multiply with an early exit so the product never leaves exact doubles.
  let dataBytes = dims.includes(0) ? 0 : size;
  for (const d of dims) {
    dataBytes *= d;
    if (dataBytes > MAX_NPY_BYTES) fail(`declared shape ${pyTuple(dims)} of ${dtype} needs ${dims.reduce((a, b) => a * BigInt(b), BigInt(size))} bytes, more than the ${MAX_NPY_BYTES}-byte limit`);
  }
  return { dtype, shape: dims, fortranOrder: fortran as boolean, version: [major, minor], dataOffset: start + headerLen, dataBytes };
}

/**
 * Decodes a whole NPY file; `source` names it in errors. Big-endian data are swapped to native
 * order and Fortran-ordered arrays transposed to C order. Without `{ int64: 'bigint' }`, i8/u8
 * arrays are refused (a FixtureError naming the option).
 */
export function decodeNpy(bytes: Uint8Array, source: string): NpyArray;
export function decodeNpy(bytes: Uint8Array, source: string, options: DecodeOptions): AnyNpyArray;
export function decodeNpy(bytes: Uint8Array, source: string, options: DecodeOptions = {}): AnyNpyArray {
  const h = parseNpyHeader(bytes, source);
  const info = dtypeInfo(h.dtype);
  if (info.size === 8 && info.kind !== 'f' && options.int64 !== 'bigint') {
    throw new FixtureError(`${source}: ${h.dtype} holds 64-bit integers, which decode to BigInt64Array/BigUint64Array only with { int64: 'bigint' } (then convertNpy(array, 'int32') checks the range)`);
  }
  const have = bytes.length - h.dataOffset;
  if (have !== h.dataBytes) {
    throw new FixtureError(`${source}: shape ${pyTuple(h.shape)} of ${h.dtype} needs ${h.dataBytes} data bytes, file has ${have}${have < h.dataBytes ? ' (truncated)' : ''}`);
  }
  // Copy into a fresh, aligned ArrayBuffer: `bytes` may be a view into a pooled Buffer, whose
  // own slice() does not copy, so Uint8Array's slice is called explicitly.
  const raw = Uint8Array.prototype.slice.call(bytes, h.dataOffset, h.dataOffset + h.dataBytes) as Uint8Array;
  if (info.size > 1 && info.big === LITTLE_ENDIAN) byteswap(raw, info.size);
  let data = new info.make(raw.buffer as ArrayBuffer);
  if (h.fortranOrder && h.shape.length > 1) data = fortranToC(data, h.shape);
  if (info.kind === 'b') {
    const i = (data as Uint8Array).findIndex((v) => v > 1);
    if (i >= 0) throw new FixtureError(`${source}: |b1 data must be 0 or 1, got ${data[i]} at ${at(h.shape, i)}`);
  }
  return { dtype: h.dtype, shape: h.shape, data } as AnyNpyArray;
}

/**
 * Element (i0, i1, ...) sits at sum(i_k · prod(shape[<k])) in Fortran order. Walks the C order,
 * the last axis innermost, keeping the Fortran offset `f` of the row start up to date.
 */
function fortranToC<T extends AnyNpyData>(src: T, shape: number[]): T {
  const dst = new (src.constructor as new (n: number) => T)(src.length);
  const last = shape.length - 1;
  const fStride = shape.map((_, k) => shape.slice(0, k).reduce((a, b) => a * b, 1));
  const idx = new Array<number>(last).fill(0);
  const rowLen = shape[last], rowStride = fStride[last];
  for (let c = 0, f = 0; c < dst.length; ) {
    for (let j = 0, ff = f; j < rowLen; j++, ff += rowStride) dst[c++] = src[ff];
    for (let k = last - 1; k >= 0; k--) {
      f += fStride[k];
      if (++idx[k] < shape[k]) break;
      f -= idx[k] * fStride[k];
      idx[k] = 0;
    }
  }
  return dst;
}

/** "[i0, i1, ...]": the C-order index of flat element `flat` of `shape`. */
function at(shape: readonly number[], flat: number): string {
  const idx: number[] = [];
  for (let k = shape.length - 1; k >= 0; k--) {
    idx.unshift(flat % shape[k]);
    flat = Math.floor(flat / shape[k]);
  }
  return `[${idx.join(', ')}]`;
}

// ---------------------------------------------------------------------------------------------
// Header dict literal

type Seq = (number | string | Seq)[] & { kind: 'tuple' | 'list' };
type Literal = string | boolean | Seq;

/** A shape as Python writes the tuple: (), (3,), (2, 3). */
export function pyTuple(items: readonly (number | string)[]): string {
  return items.length === 1 ? `(${items[0]},)` : `(${items.join(', ')})`;
}

/** A parsed header value as Python would print it, for messages. */
function describe(v: Literal | number | undefined): string {
  if (Array.isArray(v)) return v.kind === 'tuple' ? pyTuple(v.map(describe)) : `[${v.map(describe).join(', ')}]`;
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  return typeof v === 'string' ? `'${v}'` : String(v);
}

const KEYS = ['descr', 'fortran_order', 'shape'];

/**
 * Parses the header's dict literal without evaluating anything: string keys; values are
 * strings, True/False, or tuples/lists of integers and strings (integers are digits, optionally
 * negative, so that a negative dim gets its own message).
 */
function parseDict(text: string, fail: (problem: string) => never): Record<string, Literal> {
  let i = 0;
  const ws = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const near = () => JSON.stringify(text.slice(i, i + 24));
  const expect = (ch: string) => {
    ws();
    if (text[i] !== ch) fail(`malformed header at byte ${i}: expected '${ch}', got ${JSON.stringify(text[i] ?? 'end')}`);
    i++;
  };
  const str = (): string => {
    ws();
    const q = text[i];
    if (q !== "'" && q !== '"') fail(`malformed header at byte ${i}: expected a string, got ${near()}`);
    const end = text.indexOf(q, i + 1);
    if (end < 0) fail('malformed header: unterminated string');
    const s = text.slice(i + 1, end);
    if (s.includes('\\')) fail(`malformed header at byte ${i}: escapes in strings are not supported`);
    i = end + 1;
    return s;
  };
  const seq = (close: string, kind: Seq['kind']): Seq => {
    i++;
    const items = [] as unknown as Seq;
    items.kind = kind;
    for (;;) {
      ws();
      if (text[i] === close) break;
      if (text[i] === "'" || text[i] === '"') items.push(str());
      else if (text[i] === '(' || text[i] === '[') {
        // Nested: a structured descr [('a', '<f4'), ...] or a subarray; refused by the caller.
        items.push(seq(text[i] === '(' ? ')' : ']', text[i] === '(' ? 'tuple' : 'list'));
      } else {
        const m = /^-?[0-9A-Za-z_.+]+/.exec(text.slice(i, i + 40));
        if (!m) fail(`malformed header at byte ${i}: unsupported value ${near()} (only strings, True/False and integer tuples; the header is never evaluated)`);
        const tok = m![0];
        if ('(.:['.includes(text[i + tok.length])) fail(`malformed header at byte ${i}: unsupported value ${near()} (only strings, True/False and integer tuples; the header is never evaluated)`);
        if (!/^-?\d+$/.test(tok)) fail(`header 'shape' entry ${tok} is not an integer`);
        const d = Number(tok);
        if (!Number.isSafeInteger(d)) fail(`header 'shape' entry ${tok} is too large`);
        items.push(d);
        i += tok.length;
      }
      ws();
      if (text[i] === ',') i++;
      else if (text[i] !== close) fail(`malformed header at byte ${i}: expected ',' or '${close}', got ${near()}`);
    }
    i++;
    return items;
  };
  const value = (): Literal => {
    ws();
    if (text[i] === "'" || text[i] === '"') return str();
    if (/^True\b/.test(text.slice(i, i + 5))) return (i += 4), true;
    if (/^False\b/.test(text.slice(i, i + 6))) return (i += 5), false;
    if (text[i] === '(') return seq(')', 'tuple');
    if (text[i] === '[') return seq(']', 'list');
    return fail(`malformed header at byte ${i}: unsupported value ${near()} (only strings, True/False and integer tuples; the header is never evaluated)`);
  };
  const dict: Record<string, Literal> = Object.create(null);
  expect('{');
  for (;;) {
    ws();
    if (text[i] === '}') break;
    const key = str();
    expect(':');
    if (key in dict) fail(`duplicate header key '${key}'`);
    if (!KEYS.includes(key)) fail(`unexpected header key '${key}' (numpy allows exactly 'descr', 'fortran_order', 'shape')`);
    dict[key] = value();
    ws();
    if (text[i] === ',') i++;
    else if (text[i] !== '}') fail(`malformed header at byte ${i}: expected ',' or '}', got ${near()}`);
  }
  i++;
  ws();
  if (i !== text.length) fail(`malformed header: trailing characters after the dict`);
  for (const key of KEYS) if (!(key in dict)) fail(`header lacks '${key}'`);
  return dict;
}

// ---------------------------------------------------------------------------------------------
// Half-width floats

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE binary16 bits → float32 (exact; NaN payloads kept). */
export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const o32 = new Uint32Array(out.buffer);
  for (let k = 0; k < bits.length; k++) {
    const h = bits[k];
    const sign = (h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e === 0x1f) o32[k] = sign | 0x7f800000 | (m << 13);
    else if (e === 0) out[k] = (sign ? -m : m) * 2 ** -24; // zero and subnormals, exact
    else o32[k] = sign | ((e + 112) << 23) | (m << 13);
  }
  return out;
}

/** bfloat16 bits (the top half of a float32, as ml_dtypes stores them) → float32, exact. */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const o32 = new Uint32Array(out.buffer);
  for (let k = 0; k < bits.length; k++) o32[k] = bits[k] << 16;
  return out;
}

/** One float32 → binary16 bits, round to nearest even; overflow → ±inf; NaN → quiet NaN. */
function halfBits(x: number): number {
  f32[0] = x;
  const w = u32[0];
  const sign = (w >>> 16) & 0x8000, abs = w & 0x7fffffff;
  if (abs >= 0x7f800000) return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 | ((abs >>> 13) & 0x3ff) : 0);
  if (abs >= 0x477ff000) return sign | 0x7c00; // >= 65520 (halfway past 65504) rounds to inf
  if (abs < 0x38800000) {
    // Below 2^-14: a subnormal half, round(|x| / 2^-24) to nearest even (exact in doubles).
    const s = Math.abs(f32[0]) * 2 ** 24;
    let q = Math.floor(s);
    const r = s - q;
    if (r > 0.5 || (r === 0.5 && q & 1)) q++;
    return sign | q;
  }
  let h = (((abs >>> 23) - 112) << 10) | ((abs >>> 13) & 0x3ff);
  const rest = abs & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // a carry into the exponent is right
  return sign | h;
}

/** float32 → IEEE binary16 bits, round to nearest even (as numpy's astype(float16)). */
export function f32ToF16(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  for (let k = 0; k < x.length; k++) out[k] = halfBits(x[k]);
  return out;
}

/** float32 → bfloat16 bits, round to nearest even (as ml_dtypes); NaN → quiet NaN, sign kept. */
export function f32ToBf16(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  const w = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let k = 0; k < x.length; k++) {
    const b = w[k];
    if ((b & 0x7fffffff) > 0x7f800000) out[k] = (b >>> 16) | 0x40;
    else out[k] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Conversion

export type ConvertTarget = 'float32' | 'float64' | 'int32';
type TargetData = { float32: Float32Array; float64: Float64Array; int32: Int32Array };

export interface ConvertOptions {
  /** Names the array in messages, e.g. "fixtures/a.npz:x_q". */
  source?: string;
  /** Read a u2 array as bfloat16 bit patterns (the manifest dtype "bfloat16"). */
  interpret?: 'bfloat16';
  /** 'report' (default): rounding goes to `losses`; 'throw': rounding is a FixtureError too. */
  onLoss?: 'report' | 'throw';
}

export interface Conversion<T> {
  /** May be `array.data` itself when no conversion is needed. */
  data: T;
  shape: number[];
  /** The stored dtype, or "bfloat16 (<u2)". */
  from: string;
  to: ConvertTarget;
  /** Some value changed (rounded); `losses` says how. */
  lossy: boolean;
  /** Printable sentences, one per kind of loss; empty when every value converted exactly. */
  losses: string[];
}

const TARGET = { float32: Float32Array, float64: Float64Array, int32: Int32Array };

/** Correctly rounded float32 of an integer (one rounding, also beyond 2^53). */
function bigToF32(v: bigint): number {
  const neg = v < 0n, a = neg ? -v : v;
  if (a <= 2n ** 53n) return Math.fround(Number(v));
  const shift = BigInt(a.toString(2).length - 24);
  let q = a >> shift;
  const r = a - (q << shift), half = 1n << (shift - 1n);
  if (r > half || (r === half && q & 1n)) q++;
  const x = Number(q) * 2 ** Number(shift);
  return neg ? -x : x;
}

/**
 * `array` as float32, float64 or int32 values (C order, same shape). Exact conversions report
 * nothing; rounding is listed in `losses` (or thrown with onLoss: 'throw'); values the target
 * cannot hold (out of int32 range; NaN, inf or fractions to int32; finite values beyond
 * float32's range) are always a FixtureError. `interpret: 'bfloat16'` reads a u2 array as
 * bfloat16 bits; f2 arrays are read as half floats.
 */
export function convertNpy<T extends ConvertTarget>(array: AnyNpyArray, to: T, options: ConvertOptions = {}): Conversion<TargetData[T]> {
  const { source = 'array', interpret, onLoss = 'report' } = options;
  const info = dtypeInfo(array.dtype);
  const from = interpret ? `${interpret} (${array.dtype})` : array.dtype;
  const what = `${source}: ${from} → ${to}`;
  const n = array.data.length;
  if (array.shape.reduce((a, b) => a * b, 1) !== n) throw new FixtureError(`${what}: shape ${pyTuple(array.shape)} does not match ${n} elements`);
  const done = (data: TargetData[T], losses: string[]): Conversion<TargetData[T]> => {
    if (losses.length && onLoss === 'throw') throw new FixtureError(`${what}: ${losses.join('; ')}`);
    return { data, shape: [...array.shape], from, to, lossy: losses.length > 0, losses: losses.map((l) => `${what}: ${l}`) };
  };

  // Source values as numbers (exact) or bigints.
  let src: ArrayLike<number> | NpyBigData = array.data;
  if (interpret === 'bfloat16') {
    if (info.kind !== 'u' || info.size !== 2) throw new FixtureError(`${what}: bfloat16 is stored as u2 bit patterns, this array is ${array.dtype}`);
    src = bf16ToF32(array.data as Uint16Array);
  } else if (interpret !== undefined) {
    throw new FixtureError(`${what}: unknown interpretation ${JSON.stringify(interpret)} (expected 'bfloat16')`);
  } else if (info.kind === 'f' && info.size === 2) {
    src = f16ToF32(array.data as Uint16Array);
  }
  const Out = TARGET[to];
  if (!(to in TARGET)) throw new FixtureError(`${source}: unknown conversion target ${JSON.stringify(to)} (expected float32, float64 or int32)`);
  if (src instanceof Out) return done(src as TargetData[T], []);
  const out = new Out(n) as TargetData[T];

  if (to === 'int32') {
    let bad = -1, count = 0, why = '';
    for (let k = 0; k < n; k++) {
      const v = src[k];
      const ok = typeof v === 'bigint' ? v >= -(2n ** 31n) && v < 2n ** 31n : Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31;
      if (ok) out[k] = Number(v);
      else {
        if (bad < 0) {
          bad = k;
          why = typeof v === 'number' && !Number.isInteger(v) ? (Number.isFinite(v) ? 'is not an integer' : 'has no int32 value') : 'is outside int32 [-2147483648, 2147483647]';
        }
        count++;
      }
    }
    if (bad >= 0) throw new FixtureError(`${what}: value ${src[bad]} at ${at(array.shape, bad)} ${why} (${count} of ${n} values cannot convert)`);
    return done(out, []);
  }

  // Float targets: count rounded values and the largest change.
  const round = to === 'float32' ? (v: number | bigint) => (typeof v === 'bigint' ? bigToF32(v) : Math.fround(v)) : (v: number | bigint) => Number(v);
  let rounded = 0, toZero = 0, worst = -1, worstAbs = 0, overflow = -1, overflows = 0;
  for (let k = 0; k < n; k++) {
    const v = src[k];
    const r = round(v);
    out[k] = r;
    if (typeof v === 'bigint' ? BigInt(r) === v : r === v || Number.isNaN(r)) continue;
    if (!Number.isFinite(r)) {
      if (overflow < 0) overflow = k;
      overflows++;
      continue;
    }
    rounded++;
    if (r === 0) toZero++;
    const d = typeof v === 'bigint' ? Math.abs(Number(v - BigInt(r))) : Math.abs(v - r);
    if (d > worstAbs) (worstAbs = d), (worst = k);
  }
  if (overflow >= 0) throw new FixtureError(`${what}: value ${src[overflow]} at ${at(array.shape, overflow)} is beyond float32's range (${overflows} of ${n} values would become infinite)`);
  const losses: string[] = [];
  if (rounded) {
    const v = src[worst];
    const rel = worstAbs / Math.abs(Number(v));
    losses.push(`${rounded} of ${n} values rounded${toZero ? ` (${toZero} to zero)` : ''}; largest change ${worstAbs.toPrecision(3)} (relative ${rel.toPrecision(3)}) at ${at(array.shape, worst)}: ${v} → ${out[worst]}`);
  }
  return done(out, losses);
}
