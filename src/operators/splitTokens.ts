import { defer, from, map } from 'rxjs';
import type { Observable } from 'rxjs';
import type { Tensor } from '../tensor.ts';
import { chunkSizes, expectTokens, sliceTokens } from './chunks.ts';
import type { TokenChunk } from './chunks.ts';

/**
 * Source: x [B,S,d] split along its token axis into chunks of a fixed size (the last one
 * shorter) or of the listed sizes. Cold: each subscription slices afresh.
 */
export function splitTokens(x: Tensor, chunking: number | readonly number[]): Observable<TokenChunk> {
  return defer(() => {
    const [, S] = expectTokens('x', x);
    const sizes = chunkSizes(S, chunking);
    let start = 0;  // a running sum (chunks arrive in order): summing each prefix was quadratic in their count
    return from(sizes).pipe(map((n, index) => {
      const chunk = { index, start, end: start + n, x: sliceTokens(x, start, start + n) };
      start += n;
      return chunk;
    }));
  });
}
