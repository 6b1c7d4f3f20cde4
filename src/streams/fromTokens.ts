import type { Observable } from 'rxjs';
import { ShapeError } from '../errors.ts';
import { expectDim, expectRank, show } from '../tensor.ts';
import type { Tensor } from '../tensor.ts';
import { concatTokens, sliceTokens } from '../operators/chunks.ts';
import type { TokenChunk } from '../operators/chunks.ts';
import { puller, pullSource } from './pull.ts';
import type { PullOptions, StreamSource } from './pull.ts';

/** Tokens as they arrive: x [B,n,d] (n >= 1), or one token's d values (B = 1) as a Float32Array. */
export type TokenRows = Tensor | Float32Array;

export interface FromTokensOptions extends PullOptions {
  /**
   * Regroup the rows into chunks of this many tokens (the last one shorter) or of the listed
   * sizes (which must add up to the tokens the source yields). Default: each item is one chunk.
   */
  chunking?: number | readonly number[];
}

/**
 * Source: token rows from a Node Readable (object mode), an async or sync iterable, or a highland
 * stream, as TokenChunks [B,n,d] along the token axis. Every item must have the first item's B
 * and d. The source is pulled only as far as the next chunk needs (one item at a time), and
 * closed (a Readable or highland stream destroyed) on completion, error and unsubscribe.
 */
export function fromTokens(source: StreamSource<TokenRows>, options: FromTokensOptions = {}): Observable<TokenChunk> {
  const { chunking } = options;
  return pullSource(() => {
    if (typeof chunking === 'number') expectDim('chunk size', chunking);
    else if (Array.isArray(chunking)) chunking.forEach((n, i) => expectDim(`chunk_sizes[${i}]`, n));
    else if (chunking !== undefined) throw new ShapeError(`Expected chunking a chunk size or a list of sizes, got ${show(chunking)}`);
    const rows = puller('source', source);
    let B = 0, d = 0, items = 0; // B, d from the first item
    let index = 0, start = 0;
    const pending: Tensor[] = []; // rows received, not yet emitted
    let pendingTokens = 0;
    let ended = false;

    /** The next item as [B,n,d], checked against the first. */
    const nextRows = async (): Promise<Tensor | undefined> => {
      const r = await rows.next();
      if (r.done) return undefined;
      const item = r.value;
      const x: Tensor = item instanceof Float32Array ? { data: item, shape: [1, 1, item.length] } : item;
      const name = `tokens[${items}]`;
      const [b, , dx] = expectRank(name, x, ['B', 'n', 'd']);
      if (!(x.data instanceof Float32Array) || x.data.length !== x.shape[0] * x.shape[1] * x.shape[2]) {
        throw new ShapeError(`Expected ${name} shape [B,n,d]=[${x.shape.join(',')}] (${x.shape[0] * x.shape[1] * x.shape[2]} floats) as a Float32Array, got ${show(x.data)}`);
      }
      if (items === 0) [B, d] = [b, dx];
      else if (b !== B || dx !== d) {
        throw new ShapeError(`Expected ${name} shape [B,n,d]=[${B},${x.shape[1]},${d}] (as tokens[0]), got shape [${x.shape.join(',')}]`);
      }
      items++;
      return x;
    };
    /** Size of chunk `index`, or undefined when the listed sizes are used up. */
    const want = (): number | undefined => (typeof chunking === 'number' ? chunking : chunking?.[index]);

    return {
      async produce(): Promise<TokenChunk | undefined> {
        let x: Tensor;
        if (chunking === undefined) {
          const r = await nextRows();
          if (!r) return undefined;
          x = r;
        } else {
          const n = want();
          while (!ended && (n === undefined || pendingTokens < n)) {
            const r = await nextRows();
            if (!r) ended = true;
            else (pending.push(r), (pendingTokens += r.shape[1]));
          }
          if (pendingTokens === 0) {
            if (Array.isArray(chunking) && index < chunking.length) {
              throw new ShapeError(`Expected chunk_sizes to sum to the ${start} tokens the source yielded, got ${chunking.reduce((a: number, b: number) => a + b, 0)} ([${chunking.join(',')}])`);
            }
            return undefined;
          }
          if (n === undefined) {
            throw new ShapeError(`Expected chunk_sizes to cover the source's tokens, but [${(chunking as readonly number[]).join(',')}] ends at ${start} and more arrived`);
          }
          if (ended && pendingTokens < n && Array.isArray(chunking)) {
            throw new ShapeError(`Expected chunk_sizes to sum to the ${start + pendingTokens} tokens the source yielded, got ${chunking.reduce((a: number, b: number) => a + b, 0)} ([${chunking.join(',')}])`);
          }
          const take = Math.min(n, pendingTokens);
          const all = pending.length === 1 ? pending[0] : concatTokens(pending);
          x = take === all.shape[1] ? all : sliceTokens(all, 0, take);
          pending.length = 0;
          pendingTokens -= take;
          if (pendingTokens > 0) pending.push(sliceTokens(all, take, all.shape[1]));
        }
        const n = x.shape[1];
        const chunk = { index, start, end: start + n, x };
        index++;
        start += n;
        return chunk;
      },
      close: () => rows.close(),
    };
  }, options);
}
