// Random-access reader of a float NPY file [B, S, d] on disk: reads token ranges [s0, s1)
// of every batch row as float32 without loading the rest of the file. <f4 is read as is;
// >f4 and f2 (either order) convert exactly; f8 rounds, so it needs { float64: 'round' }.
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { FixtureError } from '../errors.ts';
import { MAX_TENSOR_BYTES } from '../tensor.ts';
import type { Tensor } from '../tensor.ts';
import { dtypeInfo, f16ToF32, MAX_HEADER_BYTES, parseNpyHeader } from './npy.ts';
import type { Dtype, Int64Dtype } from './npy.ts';

export interface NpyFileOptions {
  /** Accept an f8 file, rounding each value to float32 (counted in `rounded`). */
  float64?: 'round';
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export class NpyFile {
  /** Bytes read from the file so far (header included). */
  bytesRead = 0;
  /** Values read so far that rounding to float32 changed (f8 files only). */
  rounded = 0;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly shape: [number, number, number],
    readonly dtype: Dtype | Int64Dtype,
    private readonly dataOffset: number,
  ) {}

  /** Opens `path` and checks that it holds a C-ordered float array of rank 3 [B,S,d] with all its bytes. */
  static async open(path: string, options: NpyFileOptions = {}): Promise<NpyFile> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw new FixtureError(`${path}: cannot open (${(e as Error).message})`, { cause: e });
    }
    try {
      const pre = Buffer.alloc(12);
      const { bytesRead: n0 } = await fh.read(pre, 0, 12, 0);
      const major = pre[6];
      // Read exactly the header (capped: parseNpyHeader reports a header over the limit).
      const headerEnd = n0 < 12 ? n0 : major === 1 ? 10 + pre.readUInt16LE(8) : 12 + pre.readUInt32LE(8);
      const head = Buffer.alloc(Math.min(Math.max(headerEnd, n0), MAX_HEADER_BYTES));
      const { bytesRead } = await fh.read(head, 0, head.length, 0);
      const h = parseNpyHeader(head.subarray(0, bytesRead), path);
      const info = dtypeInfo(h.dtype);
      const float = info.kind === 'f' && (info.size !== 8 || options.float64 === 'round');
      if (!float || h.shape.length !== 3 || h.fortranOrder) {
        // (>f4 and f2 are read too, converted exactly; the message names the usual case.)
        const hint = float ? '' : info.kind === 'f' ? " (f8 rounds to float32: pass { float64: 'round' })" : '';
        throw new FixtureError(`${path}: expected a C-ordered <f4 array of shape [B,S,d], got ${h.dtype} (${h.shape.join(', ')})${h.fortranOrder ? ' in Fortran order' : ''}${hint}`);
      }
      const { size } = await fh.stat();
      if (size !== h.dataOffset + h.dataBytes) {
        throw new FixtureError(`${path}: shape (${h.shape.join(', ')}) needs ${h.dataBytes} data bytes, file has ${size - h.dataOffset}${size < h.dataOffset + h.dataBytes ? ' (truncated)' : ''}`);
      }
      const file = new NpyFile(path, fh, h.shape as [number, number, number], h.dtype, h.dataOffset);
      file.bytesRead = bytesRead;
      return file;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Tokens [s0, s1) of every batch row: x [B, s1 - s0, d], float32. */
  async read(s0: number, s1: number): Promise<Tensor> {
    const [B, S, d] = this.shape;
    if (!(Number.isInteger(s0) && Number.isInteger(s1) && 0 <= s0 && s0 <= s1 && s1 <= S)) {
      throw new FixtureError(`${this.path}: token range [${s0}, ${s1}) is outside [0, ${S})`);
    }
    const { size, big } = dtypeInfo(this.dtype);
    const n = s1 - s0;
    // <f4 on a little-endian machine reads straight into `out`; others through a raw buffer.
    const direct = size === 4 && big !== LITTLE_ENDIAN;
    // A direct read fills every byte or throws, so its buffer is not zeroed first (the zeroing
    // and its page faults would run on the caller's thread; the read's run on libuv's pool).
    // Node 20's allocUnsafeSlow stops at 4 GiB; past MAX_TENSOR_BYTES the kernels refuse the
    // tensor anyway, so such a read keeps the zeroed allocation.
    const unzeroed = direct && B * n * d * 4 <= MAX_TENSOR_BYTES;
    const out = unzeroed ? new Float32Array(Buffer.allocUnsafeSlow(B * n * d * 4).buffer) : new Float32Array(B * n * d);
    const bytes = direct ? new Uint8Array(out.buffer) : new Uint8Array(B * n * d * size);
    for (let b = 0; b < B; b++) {
      const want = n * d * size;
      const { bytesRead } = await this.fh.read(bytes, b * want, want, this.dataOffset + (b * S + s0) * d * size);
      this.bytesRead += bytesRead;
      if (bytesRead !== want) throw new FixtureError(`${this.path}: short read at batch ${b}, tokens [${s0}, ${s1}): ${bytesRead} of ${want} bytes`);
    }
    if (!direct) {
      const view = new DataView(bytes.buffer);
      const le = !big;
      if (size === 2) {
        const bits = new Uint16Array(out.length);
        for (let k = 0; k < out.length; k++) bits[k] = view.getUint16(2 * k, le);
        out.set(f16ToF32(bits));
      } else if (size === 4) {
        for (let k = 0; k < out.length; k++) out[k] = view.getFloat32(4 * k, le);
      } else {
        for (let k = 0; k < out.length; k++) {
          const v = view.getFloat64(8 * k, le);
          out[k] = v;
          if (out[k] !== v && !Number.isNaN(v)) {
            if (!Number.isFinite(out[k])) throw new FixtureError(`${this.path}: value ${v} at [${Math.floor(k / (n * d))}, ${s0 + (Math.floor(k / d) % n)}, ${k % d}] is beyond float32's range`);
            this.rounded++;
          }
        }
      }
    }
    return { data: out, shape: [B, n, d] };
  }

  /** Closes the file (waits for a read in flight); safe to call more than once. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}
