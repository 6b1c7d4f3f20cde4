import _ from 'highland';
import { Observable } from 'rxjs';
import type { Subscription } from 'rxjs';
import { ArgumentError, FixtureError, KvstreamError } from '../errors.ts';
import { NpyFile } from '../io/npyfile.ts';
import { expectDim, expectOptions } from '../tensor.ts';
import { chunkSizes } from './chunks.ts';
import type { TokenChunk } from './chunks.ts';

export interface FromNpyOptions {
  /**
   * Pace for asynchronous consumers: with it, one chunk is read per value `demand` emits (after
   * the first, read on subscribe). Without it, chunk i+1 is read once next(chunk i) has returned.
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
 * generator reads one chunk per pull; without `readAhead`, at most one chunk is read ahead of
 * the consumer, and only once it has taken the previous one.
 * The file is closed on completion, on error and on unsubscribe.
 */
export function fromNpy(path: string, chunking: number | readonly number[], options: FromNpyOptions = {}): Observable<TokenChunk> {
  expectOptions('options', options);
  const readAhead = options.readAhead === undefined ? 0 : expectDim('readAhead', options.readAhead, 0);
  if (readAhead > 16) throw new ArgumentError(`Expected readAhead to be an integer in [0, 16], got ${readAhead}`);
  return new Observable<TokenChunk>((subscriber) => {
    let file: NpyFile | undefined;
    let sizes: number[] = [];
    let index = 0, start = 0;
    let credit = 1; // chunks the consumer may receive before its next demand
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
    // Reads run while fewer than readAhead + credit chunks are buffered or in flight.
    const fetch = () => {
      if (inFlight || ended || subscriber.closed || buffered.length >= readAhead + credit) return;
      inFlight = true;
      stream.pull((err, chunk) => {
        inFlight = false;
        if (err) ended = { err };
        else if (chunk === _.nil) ended = {};
        else buffered.push(chunk as TokenChunk);
        pull();
      });
    };
    const pull = () => {
      while (!subscriber.closed && credit > 0 && buffered.length > 0) {
        credit--;
        const chunk = buffered.shift()!;
        fetch(); // with readAhead, the next read starts before the consumer works on this chunk
        subscriber.next(chunk);
        if (!options.demand) credit++;
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
    if (options.demand) {
      demandSub = options.demand.subscribe(() => {
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
