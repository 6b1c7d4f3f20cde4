import { defer, finalize, map } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { KvCache } from '../kvcache.ts';
import { ArgumentError } from '../errors.ts';
import { MultiHeadAttention } from '../mha.ts';
import type { ForwardOptions } from '../mha.ts';
import { expectOptions, show } from '../tensor.ts';
import type { Tensor } from '../tensor.ts';
import type { TokenChunk } from './chunks.ts';

export interface PrefillOutput {
  index: number;
  start: number;
  end: number;
  /** This chunk's output rows [B,n,d_out]. */
  output: Tensor;
  /** [B,H,n] */
  lse: Tensor;
  cache: KvCache;
}

/**
 * Chunked causal self-attention (prefill; decode is chunks of one token): each chunk x [B,n,d]
 * is projected to q, k, v; k and v are appended to the cache (one per subscription, from
 * `createCache`, possibly holding a prompt); the chunk's queries attend to the whole cache,
 * query t at absolute position (cache length before the chunk) + t. The concatenated outputs
 * equal one causal pass (under the cache's window and the score options; rope from the module).
 */
/** forward()'s options that a prefill stream takes (dropout, softcap, ALiBi, window, ragged rows, head sinks). */
export type PrefillOptions = Omit<ForwardOptions, 'cache' | 'causal' | 'qOffset' | 'out' | 'returnWeights' | 'positions'>;

export function prefillChunk(mha: MultiHeadAttention, createCache: () => KvCache, options: PrefillOptions = {}): OperatorFunction<TokenChunk, PrefillOutput> {
  return (source) =>
    defer(() => {
      if (!(mha instanceof MultiHeadAttention)) throw new ArgumentError(`Expected mha to be a MultiHeadAttention, got ${show(mha)}`);
      if (typeof createCache !== 'function') throw new ArgumentError(`Expected createCache to be a function returning a KvCache, got ${show(createCache)}`);
      expectOptions('options', options);
      let cache: KvCache | undefined = createCache();
      if (!(cache instanceof KvCache)) throw new ArgumentError(`Expected createCache() to return a KvCache, got ${show(cache)}`);
      return source.pipe(
        map((chunk) => {
          const r = mha.forward(chunk.x, chunk.x, { ...options, cache: cache!, causal: true });
          return { index: chunk.index, start: chunk.start, end: chunk.end, output: r.output, lse: r.lse, cache: cache! };
        }),
        finalize(() => (cache = undefined)),
      );
    });
}
