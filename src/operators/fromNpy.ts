import _ from 'highland';
import { Observable } from 'rxjs';
import type { Subscription } from 'rxjs';
import { FixtureError, KvstreamError } from '../errors.ts';
import { NpyFile } from '../io/npyfile.ts';
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
}

/**
 * Source: a float32 `.npy` of shape [B,S,d] on disk, read chunk by chunk along S. A highland
 * generator reads one chunk per pull, so at most one chunk is read ahead of the consumer.
 * The file is closed on completion, on error and on unsubscribe.
 */
export function fromNpy(path: string, chunking: number | readonly number[], options: FromNpyOptions = {}): Observable<TokenChunk> {
  return new Observable<TokenChunk>((subscriber) => {
    let file: NpyFile | undefined;
    let sizes: number[] = [];
    let index = 0, start = 0;
    let credit = 1; // chunks the consumer may receive before its next demand
    let waiting = false; // a pull is owed once credit arrives
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
    const pull = () => {
      if (subscriber.closed) return;
      if (credit === 0) {
        waiting = true;
        return;
      }
      credit--;
      stream.pull((err, chunk) => {
        if (err) return finish(() => subscriber.error(err));
        if (chunk === _.nil) return finish(() => subscriber.complete());
        subscriber.next(chunk as TokenChunk);
        if (!options.demand) credit++;
        pull();
      });
    };
    if (options.demand) {
      demandSub = options.demand.subscribe(() => {
        credit++;
        if (waiting) {
          waiting = false;
          pull();
        }
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
