import _ from 'highland';
import { Observable } from 'rxjs';
import type { Subscription } from 'rxjs';
import { ArgumentError, FixtureError, KvstreamError } from '../errors.ts';
import { NpyFile } from '../io/npyfile.ts';
import { expectDim, expectOptions } from '../tensor.ts';
import { chunkSizes } from './chunks.ts';
import { ticket, untracked } from '../streams/credit.ts';
import { expectHighWaterMark } from '../streams/pull.ts';
import type { TokenChunk } from './chunks.ts';

export interface FromNpyOptions {
  /**
   * Most chunks out at once (default 2, an integer in [1, 64]): read and not yet released by
   * the pipeline, besides `readAhead`. A chunk is released when next(chunk) returns, unless an
   * asynchronous kvstream stage (awaitEach, attendChunk({ async: true }), toReadable,
   * toAsyncIterable) holds it until it is done with it (docs/streams.md).
   */
  highWaterMark?: number;
  /**
   * Explicit pacing instead of highWaterMark: one chunk is read per value `demand` emits (after
   * the first, read on subscribe).
   */
  demand?: Observable<unknown>;
  /** Called with the file's bytes read so far after every read (progress, tests). */
  onRead?: (bytesRead: number) => void;
  /**
   * Chunks to read ahead of what the consumer asked for (default 0, at most 16): with 1 or more
   * the next read is started before a chunk is handed over, so the read (on libuv's thread
   * pool) overlaps the consumer's synchronous work on it. Memory: up to readAhead more chunks.
   */
  readAhead?: number;
}

/**
 * Source: a float32 `.npy` of shape [B,S,d] on disk, read chunk by chunk along S. A highland
 * generator reads one chunk per pull. Chunks read and not released never exceed
 * highWaterMark + readAhead; a synchronous pipeline releases each chunk when next() returns,
 * and without `readAhead` the next read starts only then.
 * The file is closed on completion, on error and on unsubscribe.
 */
export function fromNpy(path: string, chunking: number | readonly number[], options: FromNpyOptions = {}): Observable<TokenChunk> {
  expectOptions('options', options);
  const readAhead = options.readAhead === undefined ? 0 : expectDim('readAhead', options.readAhead, 0);
  if (readAhead > 16) throw new ArgumentError(`Expected readAhead to be an integer in [0, 16], got ${readAhead}`);
  const { demand } = options;
  const highWaterMark = expectHighWaterMark(options.highWaterMark);
  return new Observable<TokenChunk>((subscriber) => {
    let file: NpyFile | undefined;
    let sizes: number[] = [];
    let index = 0, start = 0;
    let credit = 1; // with demand: chunks the consumer may receive before its next demand
    let out = 0; // without demand: chunks delivered and not released (credit.ts)
    let delivering = false; // a next() is running: only readAhead may read meanwhile
    let finished = false; // completion or error is under way
    let demandSub: Subscription | undefined;
    let torn = false; // unsubscribed: a read or open still in flight closes the file itself

    const stream = _<TokenChunk>((push, next) => {
      (async () => {
        if (torn) return;
        if (!file) {
          file = await NpyFile.open(path);
          if (torn) return file.close();
          sizes = chunkSizes(file.shape[1], chunking);
        }
        if (index === sizes.length) return push(null, _.nil);
        const end = start + sizes[index];
        const x = await file.read(start, end);
        if (torn) return file.close();
        options.onRead?.(file.bytesRead);
        push(null, { index, start, end, x });
        index++;
        start = end;
        next();
      })().catch((e: unknown) => {
        if (torn) return; // a read cut short by unsubscribe is nobody's error
        push(e instanceof KvstreamError ? e : new FixtureError(`${path}: ${(e as Error).message}`, { cause: e }));
        push(null, _.nil);
      });
    });

    const finish = (done: () => void) => {
      demandSub?.unsubscribe();
      const f = file;
      (f ? f.close() : Promise.resolve()).then(done, (e: unknown) => subscriber.error(e));
    };
    // Chunks read but not yet handed over, whether a read is in flight, and how the stream
    // ended (error or completion, delivered once the buffered chunks are).
    const buffered: TokenChunk[] = [];
    let inFlight = false;
    let ended: { err?: unknown } | undefined;
    // Reads run while fewer than readAhead + room chunks are buffered or in flight; room is the
    // demand credit, or what highWaterMark leaves (none while a next() runs, so a synchronous
    // consumer never has a read under it that readAhead did not ask for).
    const room = () => readAhead + (demand ? credit : delivering ? 0 : Math.max(0, highWaterMark - out));
    const fetch = () => {
      if (inFlight || ended || subscriber.closed || buffered.length >= room()) return;
      inFlight = true;
      stream.pull((err, chunk) => {
        inFlight = false;
        if (err) ended = { err };
        else if (chunk === _.nil) ended = {};
        else buffered.push(chunk as TokenChunk);
        pull();
      });
    };
    const freed = () => {
      out--;
      pull();
    };
    const pull = () => {
      while (!subscriber.closed && !delivering && (demand ? credit > 0 : out < highWaterMark) && buffered.length > 0) {
        const chunk = buffered.shift()!;
        if (demand) {
          credit--;
          fetch(); // with readAhead, the next read starts before the consumer works on this chunk
          untracked.deliver(() => subscriber.next(chunk)); // no stage holds it (nor an outer ticket)
          continue;
        }
        out++;
        delivering = true;
        fetch();
        const t = ticket(freed);
        try {
          t.deliver(() => subscriber.next(chunk));
        } finally {
          delivering = false;
        }
        t.release(); // the source's own hold: next() has returned
      }
      if (subscriber.closed) return;
      if (buffered.length === 0 && ended) {
        if (finished) return;
        finished = true;
        const { err } = ended;
        return finish(() => (err ? subscriber.error(err) : subscriber.complete()));
      }
      fetch();
    };
    if (demand) {
      demandSub = demand.subscribe(() => {
        credit++;
        pull();
      });
    }
    pull();

    return () => {
      torn = true;
      demandSub?.unsubscribe();
      stream.destroy();
      void file?.close();
    };
  });
}
