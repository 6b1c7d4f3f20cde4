import { defer, finalize, map } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { ShapeError } from '../errors.ts';
import type { KvCache } from '../kvcache.ts';
import type { CachedChunk, KvChunk } from './chunks.ts';

/**
 * Appends each chunk's k/v to a KV cache made per subscription by `createCache`, and passes the
 * chunk on with the cache. The chunk's [start, end) must be where the cache is: nothing skipped.
 */
export function appendKv(createCache: () => KvCache): OperatorFunction<KvChunk, CachedChunk> {
  return (source) =>
    defer(() => {
      let cache: KvCache | undefined = createCache();
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
