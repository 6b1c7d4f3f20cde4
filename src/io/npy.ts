// NPY format 1.0 (and 2.0 on read): encoder and a decoder that never evaluates the header.
// Layout: "\x93NUMPY", major, minor, header length (uint16 LE for 1.0, uint32 LE for 2.0),
// an ASCII Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded
// with spaces and '\n' so the data starts at a multiple of 64, then the raw little-endian data.
import { FixtureError } from '../errors.ts';

export type Dtype = '<f4' | '<i4' | '|u1' | '|b1';
export type NpyData = Float32Array | Int32Array | Uint8Array;

export interface NpyArray {
  dtype: Dtype;
  shape: number[];
  data: NpyData;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const ITEM: Record<Dtype, number> = { '<f4': 4, '<i4': 4, '|u1': 1, '|b1': 1 };
/** Largest array the decoder accepts, in bytes (a hostile header must not make us allocate more). */
export const MAX_NPY_BYTES = 2 ** 31;

export function dtypeOf(data: NpyData): Dtype {
  if (data instanceof Float32Array) return '<f4';
  if (data instanceof Int32Array) return '<i4';
  return '|u1';
}

/** The preamble and header of an NPY 1.0 file of `shape` and `dtype`; the data follows it. */
export function npyHeader(shape: readonly number[], dtype: Dtype): Uint8Array {
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${dtype}', 'fortran_order': False, 'shape': ${dims}, }`;
  const unpadded = MAGIC.length + 4 + header.length + 1;
  header += ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const out = new Uint8Array(MAGIC.length + 4 + header.length);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  return out;
}

/** An NPY 1.0 file holding `data` with `shape` (C order). */
export function encodeNpy(array: { data: NpyData; shape: readonly number[]; dtype?: Dtype }): Uint8Array {
  const dtype = array.dtype ?? dtypeOf(array.data);
  const count = array.shape.reduce((a, b) => a * b, 1);
  if (count !== array.data.length) {
    throw new FixtureError(`Expected ${count} elements for shape [${array.shape.join(',')}], got ${array.data.length}`);
  }
  const header = npyHeader(array.shape, dtype);
  const out = new Uint8Array(header.length + array.data.byteLength);
  out.set(header, 0);
  // Typed arrays are little-endian on every platform Node supports (x86-64, arm64).
  out.set(new Uint8Array(array.data.buffer, array.data.byteOffset, array.data.byteLength), header.length);
  return out;
}

export interface NpyHeader {
  dtype: Dtype;
  shape: number[];
  fortranOrder: boolean;
  /** Byte offset of the data in the file. */
  dataOffset: number;
  /** Bytes of data the header declares. */
  dataBytes: number;
}

/**
 * Parses the magic and header from the first bytes of an NPY file. `source` names the file in
 * errors. Throws FixtureError for anything but a well-formed header of an allowed dtype.
 */
export function parseNpyHeader(bytes: Uint8Array, source: string): NpyHeader {
  const fail = (problem: string): never => {
    throw new FixtureError(`${source}: ${problem}`);
  };
  if (bytes.length < 10) fail(`truncated: ${bytes.length} bytes, shorter than an NPY preamble`);
  if (!MAGIC.every((b, i) => bytes[i] === b)) fail('bad magic: not an NPY file');
  const major = bytes[6];
  if (major !== 1 && major !== 2) fail(`unsupported NPY version ${major}.${bytes[7]} (expected 1.0 or 2.0)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lenBytes = major === 1 ? 2 : 4;
  if (bytes.length < 8 + lenBytes) fail('truncated header length');
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = 8 + lenBytes;
  if (headerLen > 65536) fail(`header of ${headerLen} bytes is larger than 64 KiB`);
  if (bytes.length < start + headerLen) fail(`truncated header: declares ${headerLen} bytes, ${bytes.length - start} present`);
  let text = '';
  for (let i = start; i < start + headerLen; i++) text += String.fromCharCode(bytes[i]);
  const dict = parseDict(text, fail);

  const descr = dict.descr;
  if (typeof descr !== 'string') fail(`header 'descr' must be a string, got ${JSON.stringify(descr)}`);
  if (!(descr as string in ITEM)) fail(`dtype ${descr} is not allowed (expected one of <f4, <i4, |u1, |b1)`);
  const fortran = dict.fortran_order;
  if (typeof fortran !== 'boolean') fail(`header 'fortran_order' must be True or False`);
  const shape = dict.shape;
  if (!Array.isArray(shape)) fail(`header 'shape' must be a tuple of integers`);
  const dtype = descr as Dtype;
  let count = 1;
  for (const d of shape as number[]) count *= d;
  const dataBytes = count * ITEM[dtype];
  if (dataBytes > MAX_NPY_BYTES) fail(`declared shape (${(shape as number[]).join(', ')}) needs ${dataBytes} bytes, more than the ${MAX_NPY_BYTES}-byte limit`);
  return { dtype, shape: shape as number[], fortranOrder: fortran as boolean, dataOffset: start + headerLen, dataBytes };
}

/** Decodes a whole NPY file. Fortran-ordered arrays are transposed to C order. */
export function decodeNpy(bytes: Uint8Array, source: string): NpyArray {
  const h = parseNpyHeader(bytes, source);
  const have = bytes.length - h.dataOffset;
  if (have !== h.dataBytes) {
    throw new FixtureError(`${source}: shape (${h.shape.join(', ')}) of ${h.dtype} needs ${h.dataBytes} data bytes, file has ${have}${have < h.dataBytes ? ' (truncated)' : ''}`);
  }
  // Copy into a fresh, aligned ArrayBuffer: `bytes` may be a view into a pooled Buffer, whose
  // own slice() does not copy, so Uint8Array's slice is called explicitly.
  const raw = Uint8Array.prototype.slice.call(bytes, h.dataOffset, h.dataOffset + h.dataBytes).buffer;
  let data: NpyData = h.dtype === '<f4' ? new Float32Array(raw) : h.dtype === '<i4' ? new Int32Array(raw) : new Uint8Array(raw);
  if (h.fortranOrder && h.shape.length > 1) data = fortranToC(data, h.shape);
  return { dtype: h.dtype, shape: h.shape, data };
}

/** Element (i0, i1, ...) sits at sum(i_k · prod(shape[<k])) in Fortran order. */
function fortranToC(src: NpyData, shape: number[]): NpyData {
  const dst = new (src.constructor as new (n: number) => NpyData)(src.length);
  const n = shape.length;
  const idx = new Array<number>(n).fill(0);
  const fStride = shape.map((_, k) => shape.slice(0, k).reduce((a, b) => a * b, 1));
  for (let c = 0; c < dst.length; c++) {
    let f = 0;
    for (let k = 0; k < n; k++) f += idx[k] * fStride[k];
    dst[c] = src[f];
    for (let k = n - 1; k >= 0 && ++idx[k] === shape[k]; k--) idx[k] = 0;
  }
  return dst;
}

type Literal = string | boolean | number[];

/** Parses the header's dict literal: string keys; values are strings, True/False or int tuples. */
function parseDict(text: string, fail: (problem: string) => never): Record<string, Literal> {
  let i = 0;
  const ws = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const expect = (ch: string) => {
    ws();
    if (text[i] !== ch) fail(`malformed header at byte ${i}: expected '${ch}', got ${JSON.stringify(text[i] ?? 'end')}`);
    i++;
  };
  const str = (): string => {
    ws();
    const q = text[i];
    if (q !== "'" && q !== '"') fail(`malformed header at byte ${i}: expected a string`);
    const end = text.indexOf(q, i + 1);
    if (end < 0) fail('malformed header: unterminated string');
    const s = text.slice(i + 1, end);
    i = end + 1;
    return s;
  };
  const value = (): Literal => {
    ws();
    if (text[i] === "'" || text[i] === '"') return str();
    if (text.startsWith('True', i)) return (i += 4), true;
    if (text.startsWith('False', i)) return (i += 5), false;
    if (text[i] === '(') {
      i++;
      const dims: number[] = [];
      for (;;) {
        ws();
        if (text[i] === ')') break;
        const m = /^\d+/.exec(text.slice(i, i + 20));
        if (!m) fail(`malformed header at byte ${i}: shape entries must be non-negative integers`);
        const d = Number(m![0]);
        if (!Number.isSafeInteger(d)) fail(`shape entry ${m![0]} is too large`);
        dims.push(d);
        i += m![0].length;
        ws();
        if (text[i] === ',') i++;
        else if (text[i] !== ')') fail(`malformed header at byte ${i}: expected ',' or ')' in shape`);
      }
      i++;
      return dims;
    }
    return fail(`malformed header at byte ${i}: unsupported value (only strings, True/False and integer tuples)`);
  };
  const dict: Record<string, Literal> = {};
  expect('{');
  for (;;) {
    ws();
    if (text[i] === '}') break;
    const key = str();
    expect(':');
    if (Object.hasOwn(dict, key)) fail(`duplicate header key '${key}'`);
    dict[key] = value();
    ws();
    if (text[i] === ',') i++;
    else if (text[i] !== '}') fail(`malformed header at byte ${i}: expected ',' or '}'`);
  }
  i++;
  ws();
  if (i !== text.length) fail(`malformed header: trailing characters after the dict`);
  for (const key of ['descr', 'fortran_order', 'shape']) if (!(key in dict)) fail(`header lacks '${key}'`);
  return dict;
}
