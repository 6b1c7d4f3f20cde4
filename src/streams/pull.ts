// What the stream sources read from, and the one pull loop they share.
// A source is pulled one item at a time: a Node Readable or any async iterable (for await), a
// sync iterable, or a highland stream (its own pull(), so highland's back-pressure holds).
import _ from 'highland';
import { Observable } from 'rxjs';
import type { Subscriber, Subscription } from 'rxjs';
import { ArgumentError } from '../errors.ts';
import { show } from '../tensor.ts';
import { ticket, untracked } from './credit.ts';

/** highland's end-of-stream marker `_.nil`, as @types/highland brands it. */
export interface HighlandNil {
  Highland_NIL: unknown;
}

/** The part of a highland stream the sources use (`_(...)` streams fit; no highland types needed). */
export interface HighlandLike<T> {
  pull(f: (err: Error, x: T | HighlandNil) => void): void;
  destroy(): void;
}

/** Anything the stream sources read: a Node Readable, an async or sync iterable, a highland stream. */
export type StreamSource<T> = AsyncIterable<T> | Iterable<T> | HighlandLike<T>;

/** Pacing: how far a source may run ahead of the stages after it. */
export interface PullOptions {
  /**
   * Most chunks the source has out at once (default 2, an integer in [1, 64]): produced and not
   * yet released by the pipeline. A chunk is released when the subscriber's next() returns,
   * unless an asynchronous kvstream stage (awaitEach, attendChunk({ async: true }), toReadable,
   * toAsyncIterable) holds it; it then is released once that stage is done with it. See
   * docs/streams.md.
   */
  highWaterMark?: number;
  /**
   * Explicit pacing instead (highWaterMark is then unused): the first chunk is produced on
   * subscribe and one more per value `demand` emits.
   */
  demand?: Observable<unknown>;
}

/** The highWaterMark option, checked: default 2, an integer in [1, 64]. */
export function expectHighWaterMark(highWaterMark: number | undefined): number {
  if (highWaterMark === undefined) return 2;
  if (!Number.isInteger(highWaterMark) || highWaterMark < 1 || highWaterMark > 64) {
    throw new ArgumentError(`Expected highWaterMark to be an integer in [1, 64], got ${show(highWaterMark)}`);
  }
  return highWaterMark;
}

/** One item at a time from a source; `close` ends it early (destroys a Readable or highland stream). */
export interface Puller<T> {
  next(): Promise<IteratorResult<T, undefined>>;
  close(): Promise<void>;
}

/** A puller over `source`; `name` is the argument's name in the error for anything else. */
export function puller<T>(name: string, source: StreamSource<T>): Puller<T> {
  if (_.isStream(source)) {
    const hs = source as HighlandLike<T>;
    return {
      next: () => new Promise((resolve, reject) => {
        hs.pull((err, x) => {
          if (err) reject(err);
          else resolve(x === (_.nil as unknown) ? { done: true, value: undefined } : { done: false, value: x as T });
        });
      }),
      close: async () => hs.destroy(),
    };
  }
  const s = source as Partial<AsyncIterable<T> & Iterable<T>> | null;
  const asyncIt = s?.[Symbol.asyncIterator], syncIt = s?.[Symbol.iterator];
  const it: AsyncIterator<T> | Iterator<T> | undefined =
    typeof asyncIt === 'function' ? asyncIt.call(s) : typeof syncIt === 'function' ? syncIt.call(s) : undefined;
  if (!it) throw new ArgumentError(`Expected ${name} to be a Node Readable, an async or sync iterable, or a highland stream, got ${show(source)}`);
  return {
    next: async () => (await it.next()) as IteratorResult<T, undefined>,
    close: async () => void (await it.return?.()),
  };
}

/**
 * A cold source: each subscription calls `open` for a fresh producer, then `produce()` once per
 * chunk (resolving undefined at the end), while fewer than `highWaterMark` chunks are out
 * (produced or being produced, and not released; see credit.ts), or with `demand` once on
 * subscribe and once per `demand` value. `close` runs once on completion, error or unsubscribe
 * (a produce() still in flight is then ignored). Errors go to subscriber.error after close,
 * through `wrap`.
 */
export function pullSource<C, P extends { produce(): Promise<C | undefined>; close(): Promise<void> }>(
  open: () => P,
  options: PullOptions,
  wrap: (e: unknown) => unknown = (e) => e,
): Observable<C> {
  const { demand } = options;
  const highWaterMark = expectHighWaterMark(options.highWaterMark);
  return new Observable<C>((subscriber: Subscriber<C>) => {
    let producer: P | undefined;
    let credit = 1; // with demand: chunks the consumer may receive before its next demand
    let out = 0; // without demand: chunks produced or being produced, not released
    let busy = false; // a produce() is in flight
    let closed = false;
    let demandSub: Subscription | undefined;

    const close = (): Promise<void> => {
      if (closed) return Promise.resolve();
      closed = true;
      demandSub?.unsubscribe();
      return producer ? producer.close() : Promise.resolve();
    };
    const fail = (e: unknown) => {
      if (closed) return; // a produce cut short by unsubscribe is nobody's error
      const err = wrap(e);
      close().then(() => subscriber.error(err), () => subscriber.error(err));
    };
    const freed = () => {
      out--;
      pull();
    };
    const pull = () => {
      if (closed || busy || (demand ? credit === 0 : out >= highWaterMark)) return;
      if (demand) credit--;
      else out++;
      busy = true;
      (async () => {
        producer ??= open();
        return producer.produce();
      })().then((chunk) => {
        busy = false;
        if (closed) return;
        if (chunk === undefined) {
          close().then(() => subscriber.complete(), (e: unknown) => subscriber.error(wrap(e)));
          return;
        }
        if (demand) untracked.deliver(() => subscriber.next(chunk)); // no stage holds it (nor an outer ticket)
        else {
          const t = ticket(freed);
          t.deliver(() => subscriber.next(chunk));
          t.release(); // the source's own hold: next() has returned
        }
        pull();
      }, (e: unknown) => {
        busy = false;
        fail(e);
      });
    };
    if (demand) {
      demandSub = demand.subscribe(() => {
        credit++;
        pull();
      });
    }
    pull();
    return () => {
      void close().catch(() => {});
    };
  });
}
