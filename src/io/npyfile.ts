// Random-access reader of a float32 NPY file [B, S, d] on disk: reads token ranges [s0, s1)
// of every batch row without loading the rest of the file.
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { FixtureError } from '../errors.ts';
import type { Tensor } from '../tensor.ts';
import { parseNpyHeader } from './npy.ts';

export class NpyFile {
  /** Bytes read from the file so far (header included). */
  bytesRead = 0;
  private closed = false;

  private constructor(readonly path: string, private readonly fh: FileHandle, readonly shape: [number, number, number], private readonly dataOffset: number) {}

  /** Opens `path` and checks that it holds a C-ordered <f4 array of rank 3 [B,S,d] with all its bytes. */
  static async open(path: string): Promise<NpyFile> {
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
      const headerEnd = major === 1 ? 10 + pre.readUInt16LE(8) : major === 2 ? 12 + pre.readUInt32LE(8) : 12;
      const head = Buffer.alloc(Math.min(Math.max(headerEnd, n0), 10 + 65536 + 2));
      const { bytesRead } = await fh.read(head, 0, head.length, 0);
      const h = parseNpyHeader(head.subarray(0, bytesRead), path);
      if (h.dtype !== '<f4' || h.shape.length !== 3 || h.fortranOrder) {
        throw new FixtureError(`${path}: expected a C-ordered <f4 array of shape [B,S,d], got ${h.dtype} (${h.shape.join(', ')})${h.fortranOrder ? ' in Fortran order' : ''}`);
      }
      const { size } = await fh.stat();
      if (size !== h.dataOffset + h.dataBytes) {
        throw new FixtureError(`${path}: shape (${h.shape.join(', ')}) needs ${h.dataBytes} data bytes, file has ${size - h.dataOffset}${size < h.dataOffset + h.dataBytes ? ' (truncated)' : ''}`);
      }
      const file = new NpyFile(path, fh, h.shape as [number, number, number], h.dataOffset);
      file.bytesRead = bytesRead;
      return file;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Tokens [s0, s1) of every batch row: x [B, s1 - s0, d]. */
  async read(s0: number, s1: number): Promise<Tensor> {
    const [B, S, d] = this.shape;
    if (!(Number.isInteger(s0) && Number.isInteger(s1) && 0 <= s0 && s0 <= s1 && s1 <= S)) {
      throw new FixtureError(`${this.path}: token range [${s0}, ${s1}) is outside [0, ${S})`);
    }
    const n = s1 - s0;
    const out = new Float32Array(B * n * d);
    const bytes = new Uint8Array(out.buffer);
    for (let b = 0; b < B; b++) {
      const want = n * d * 4;
      const { bytesRead } = await this.fh.read(bytes, b * want, want, this.dataOffset + (b * S + s0) * d * 4);
      this.bytesRead += bytesRead;
      if (bytesRead !== want) throw new FixtureError(`${this.path}: short read at batch ${b}, tokens [${s0}, ${s1}): ${bytesRead} of ${want} bytes`);
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
