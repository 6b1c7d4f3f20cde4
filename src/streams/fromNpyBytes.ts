import type { Observable } from 'rxjs';
import { ArgumentError, FixtureError, KvstreamError } from '../errors.ts';
import { convertNpy, decodeNpy, dtypeInfo, MAX_HEADER_BYTES, npyHeader, parseNpyHeader } from '../io/npy.ts';
import type { NpyHeader } from '../io/npy.ts';
import { show } from '../tensor.ts';
import type { Tensor } from '../tensor.ts';
import { chunkSizes, sliceTokens } from '../operators/chunks.ts';
import type { TokenChunk } from '../operators/chunks.ts';
import { puller, pullSource } from './pull.ts';
import type { Puller, PullOptions, StreamSource } from './pull.ts';

export interface FromNpyBytesOptions extends PullOptions {
  /** Names the stream in errors (default "npy stream"). */
  name?: string;
  /** Accept an f8 array, rounding each value to float32 (as NpyFile's option). */
  float64?: 'round';
}

/** Bytes pulled from a source and not consumed yet, in arrival order. */
class ByteQueue {
  private parts: Uint8Array[] = [];
  length = 0;
  ended = false;
  constructor(private readonly source: Puller<Uint8Array>, private readonly name: string) {}

  /** Pulls until `n` bytes are queued or the source ends; true when they are. */
  async fill(n: number): Promise<boolean> {
    while (this.length < n && !this.ended) {
      const r = await this.source.next();
      if (r.done) {
        this.ended = true;
        break;
      }
      if (!(r.value instanceof Uint8Array)) throw new ArgumentError(`Expected ${this.name} to yield bytes (Buffer or Uint8Array), got ${show(r.value)}`);
      if (r.value.length) (this.parts.push(r.value), (this.length += r.value.length));
    }
    return this.length >= n;
  }

  /** The first `n` queued bytes copied into out[at..]; consumed when `consume`. */
  copy(n: number, out = new Uint8Array(n), at = 0, consume = true): Uint8Array {
    let done = 0, i = 0;
    while (done < n) {
      const p = this.parts[i];
      const k = Math.min(n - done, p.length);
      out.set(p.subarray(0, k), at + done);
      done += k;
      if (consume && k < p.length) this.parts[i] = p.subarray(k);
      else i++;
    }
    if (consume) {
      this.parts.splice(0, i);
      this.length -= n;
    }
    return out;
  }
}

/**
 * Source: the bytes of a float `.npy` of shape [B,S,d] — a Node Readable (a file, a socket, an
 * HTTP body), an async or sync iterable of Uint8Array/Buffer, or a highland stream of them — as
 * TokenChunks along S. The header is parsed by the npy codec; <f4 is read as is, >f4 and f2
 * convert exactly, f8 only with { float64: 'round' }. With B = 1 the bytes are pulled only as far
 * as the next chunk needs; with B > 1 a chunk needs bytes from every batch row, so the whole
 * array is read before the first chunk. The source is closed (a Readable or highland stream
 * destroyed) on completion, error and unsubscribe; bytes past the declared data are an error.
 */
export function fromNpyBytes(source: StreamSource<Uint8Array>, chunking: number | readonly number[], options: FromNpyBytesOptions = {}): Observable<TokenChunk> {
  const name = options.name ?? 'npy stream';
  return pullSource(() => {
    const input = puller('source', source);
    const bytes = new ByteQueue(input, name);
    let h: NpyHeader | undefined;
    let sizes: number[] = [];
    let whole: Tensor | undefined; // B > 1: the array, read at once
    let index = 0, start = 0;

    /** The stream ended inside the data: bytes of it received so far are start·d·size + queued. */
    const truncated = () => {
      const got = start * h!.shape[2] * dtypeInfo(h!.dtype).size + bytes.length;
      return new FixtureError(`${name}: shape (${h!.shape.join(', ')}) needs ${h!.dataBytes} data bytes, the stream ended after ${got} (truncated)`);
    };
    /** The next B·n·d queued values as x [B,n,d] float32, through the codec (byte order, f2, f8). */
    const decode = (B: number, n: number): Tensor => {
      const d = h!.shape[2];
      const head = npyHeader([B, n, d], h!.dtype);
      const file = new Uint8Array(head.length + B * n * d * dtypeInfo(h!.dtype).size);
      file.set(head, 0);
      bytes.copy(file.length - head.length, file, head.length);
      const { data } = convertNpy(decodeNpy(file, name), 'float32', { source: name });
      return { data, shape: [B, n, d] };
    };

    return {
      async produce(): Promise<TokenChunk | undefined> {
        if (!h) {
          await bytes.fill(12);
          const pre = bytes.copy(Math.min(bytes.length, 12), undefined, 0, false);
          const view = new DataView(pre.buffer, pre.byteOffset, pre.byteLength);
          const headerEnd = pre.length < 12 ? pre.length : pre[6] === 1 ? 10 + view.getUint16(8, true) : 12 + view.getUint32(8, true);
          await bytes.fill(Math.min(headerEnd, MAX_HEADER_BYTES));
          const head = bytes.copy(Math.min(bytes.length, Math.max(headerEnd, pre.length), MAX_HEADER_BYTES), undefined, 0, false);
          const header = parseNpyHeader(head, name);
          const info = dtypeInfo(header.dtype);
          const float = info.kind === 'f' && (info.size !== 8 || options.float64 === 'round');
          if (!float || header.shape.length !== 3 || header.fortranOrder) {
            const hint = float ? '' : info.kind === 'f' ? " (f8 rounds to float32: pass { float64: 'round' })" : '';
            throw new FixtureError(`${name}: expected a C-ordered <f4 array of shape [B,S,d], got ${header.dtype} (${header.shape.join(', ')})${header.fortranOrder ? ' in Fortran order' : ''}${hint}`);
          }
          bytes.copy(header.dataOffset);
          h = header;
          sizes = chunkSizes(h.shape[1], chunking);
        }
        const [B, S, d] = h.shape;
        const itemBytes = d * dtypeInfo(h.dtype).size;
        if (index === sizes.length) {
          if (await bytes.fill(1)) throw new FixtureError(`${name}: more bytes after the ${h.dataBytes} data bytes that shape (${h.shape.join(', ')}) declares`);
          return undefined;
        }
        const n = sizes[index];
        let x: Tensor;
        if (B === 1) {
          if (!(await bytes.fill(n * itemBytes))) throw truncated();
          x = decode(1, n);
        } else {
          if (!whole) {
            if (!(await bytes.fill(h.dataBytes))) throw truncated();
            whole = decode(B, S);
          }
          x = sliceTokens(whole, start, start + n);
        }
        const chunk = { index, start, end: start + n, x };
        index++;
        start += n;
        return chunk;
      },
      close: () => input.close(),
    };
  }, options, (e) => (e instanceof KvstreamError ? e : new FixtureError(`${name}: ${(e as Error)?.message ?? show(e)}`, { cause: e })));
}
