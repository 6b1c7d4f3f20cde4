import { defer, finalize, map } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { ArgumentError, ShapeError } from '../errors.ts';
import { show } from '../tensor.ts';
import { KvCache } from '../kvcache.ts';
import type { CachedChunk, KvChunk } from './chunks.ts';

/**
 * Appends each chunk's k/v to a KV cache made per subscription by `createCache`, and passes the
 * chunk on with the cache. The chunk's [start, end) must be where the cache is: nothing skipped.
 */
export function appendKv(createCache: () => KvCache): OperatorFunction<KvChunk, CachedChunk> {
  return (source) =>
    defer(() => {
      if (typeof createCache !== 'function') throw new ArgumentError(`Expected createCache to be a function returning a KvCache, got ${show(createCache)}`);
      let cache: KvCache | undefined = createCache();
      if (!(cache instanceof KvCache)) throw new ArgumentError(`Expected createCache() to return a KvCache, got ${show(cache)}`);
      const base = cache.length; // positions already cached (a prompt, k_cache_in)
      return source.pipe(
        map((chunk) => {
          const range = cache!.append(chunk.k, chunk.v);
          if (range.start !== base + chunk.start) {
            cache!.crop(range.start);
            throw new ShapeError(`appendKv: chunk ${chunk.index} covers tokens [${chunk.start}, ${chunk.end}), the cache expected token ${range.start - base}`);
          }
          return { ...chunk, cache: cache! };
        }),
        finalize(() => (cache = undefined)),
      );
    });
}
