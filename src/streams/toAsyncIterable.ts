import type { Observable } from 'rxjs';
import { toReadable } from './toReadable.ts';
import type { ToReadableOptions } from './toReadable.ts';

/**
 * Sink: the Observable's values as an async iterable (`for await`), through toReadable in object
 * mode. A value keeps its source chunk's read-ahead credit until the loop asks for the next one,
 * so kvstream's sources run at most their highWaterMark chunks ahead of the loop body (a source
 * paced by `demand` instead: pass the same Subject here). Leaving the loop early
 * (break, return, throw) unsubscribes, which closes the source; an error of the Observable is
 * thrown by the loop.
 */
export function toAsyncIterable<T>(source: Observable<T>, options: Omit<ToReadableOptions, 'bytes'> = {}): AsyncIterableIterator<T> {
  return toReadable(source, options)[Symbol.asyncIterator]() as AsyncIterableIterator<T>;
}
