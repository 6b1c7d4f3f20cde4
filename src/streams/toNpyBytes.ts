import { concat, concatMap, defer, EMPTY } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { ShapeError } from '../errors.ts';
import { encodeNpy, npyHeader } from '../io/npy.ts';
import { expectDim, expectRank } from '../tensor.ts';
import type { Tensor } from '../tensor.ts';
import { concatTokens } from '../operators/chunks.ts';
import type { TokenChunk } from '../operators/chunks.ts';

/**
 * Sink stage: token chunks (TokenChunk or x [B,n,d] tensors) in order along the token axis ->
 * the bytes of one <f4 `.npy` of shape [B,S,d], written by the npy codec: the header with the
 * first chunk, then each chunk's data as it arrives when B = 1 (memory stays one chunk); with
 * B > 1 the file is batch-major, so the data follow at completion. Fewer or more than S tokens,
 * or a chunk with another B or d, is a ShapeError. Pipe the bytes to a file with
 * `pipeline(toReadable(obs, { bytes: true }), createWriteStream(path))`.
 */
export function toNpyBytes(S: number): OperatorFunction<TokenChunk | Tensor, Uint8Array> {
  return (source) => defer(() => {
    expectDim('S', S);
    let B = 0, d = 0, seen = 0, i = 0;
    const held: Tensor[] = []; // B > 1: chunks until completion
    const body = source.pipe(concatMap((item) => {
      const x = 'x' in item ? item.x : item;
      const name = `chunk ${i++}`;
      const [b, n, dx] = expectRank(name, x, ['B', 'n', 'd']);
      const out: Uint8Array[] = [];
      if (seen === 0) {
        [B, d] = [b, dx];
        out.push(npyHeader([B, S, d], '<f4'));
      } else if (b !== B || dx !== d) {
        throw new ShapeError(`Expected ${name} shape [B,n,d]=[${B},${n},${d}] (as chunk 0), got shape [${x.shape.join(',')}]`);
      }
      if (seen + n > S) throw new ShapeError(`Expected S=${S} tokens in all, got ${seen + n} by ${name}`);
      seen += n;
      if (B === 1) out.push(dataBytes(x));
      else held.push(x);
      return out;
    }));
    return concat(body, defer(() => {
      if (seen !== S) throw new ShapeError(`Expected S=${S} tokens in all, got ${seen}`);
      return held.length ? [dataBytes(concatTokens(held))] : EMPTY;
    }));
  });
}

/** x's values as <f4 bytes (the codec handles the byte order). */
function dataBytes(x: Tensor): Uint8Array {
  const file = encodeNpy({ data: x.data, shape: x.shape, dtype: '<f4' });
  return file.subarray(file.length - x.data.byteLength);
}
