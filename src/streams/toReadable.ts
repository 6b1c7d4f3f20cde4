import { Readable } from 'node:stream';
import type { Observable, Subscription } from 'rxjs';
import { retain } from './credit.ts';
import type { Hold } from './credit.ts';

export interface ToReadableOptions {
  /**
   * Not needed for kvstream's sources (fromNpy, fromTokens, fromNpyBytes): a value keeps its
   * chunk's read-ahead credit while it is in the Readable and until the consumer's next read
   * after taking it, so the source runs at most its own highWaterMark chunks ahead. For a
   * source paced by `demand`:
   * signalled once per read the stream asks for after the first (pass the same Subject as the
   * source's `demand` option), at most this `highWaterMark` + 1 chunks ahead; the Observable
   * must then emit one value per source chunk (map, projectKv, attendChunk; not filter or last),
   * or a read waits forever.
   */
  demand?: { next(value?: undefined): void };
  /** Values (object mode) or bytes (byte mode) the Readable buffers before pausing (default 1 value / 64 KiB). */
  highWaterMark?: number;
  /** Byte mode: the values are Uint8Array/Buffer/string chunks of a byte stream. Default false (object mode). */
  bytes?: boolean;
}

/**
 * Sink: a Node Readable of the Observable's values, for `stream/promises` pipeline, `.pipe()`,
 * async iteration or highland (`_(toReadable(obs))`). The Observable is subscribed on the first
 * read; completion ends the Readable, an error destroys it with that error, and destroying the
 * Readable (an early break, a failed pipeline) unsubscribes, which closes the source.
 * Credit (docs/streams.md): a value keeps its source chunk's credit while it sits in the
 * Readable's buffer and until the consumer's next read after taking it.
 */
export function toReadable<T>(source: Observable<T>, options: ToReadableOptions = {}): Readable {
  const { demand, bytes = false } = options;
  let sub: Subscription | undefined;
  const holds: { hold: Hold; size: number }[] = []; // one per value pushed and not yet taken
  let queued = 0; // their sizes: bytes (byte mode) or values
  /** Releases the holds of values no longer in the buffer (the oldest, as `buffered` remain). */
  const releaseTaken = (buffered: number) => {
    while (holds.length && queued - holds[0].size >= buffered) {
      const { hold, size } = holds.shift()!;
      queued -= size;
      hold.release();
    }
  };
  const readable = new Readable({
    objectMode: !bytes,
    highWaterMark: options.highWaterMark ?? (bytes ? 64 * 1024 : 1),
    read() {
      if (sub) return demand?.next();
      sub = source.subscribe({
        next: (value) => {
          const size = bytes ? byteLength(value) : 1;
          holds.push({ hold: retain(), size });
          queued += size;
          this.push(value);
        },
        error: (e: unknown) => this.destroy(e instanceof Error ? e : new Error(String(e))),
        complete: () => this.push(null),
      });
    },
    destroy(err, callback) {
      sub?.unsubscribe();
      releaseTaken(0);
      callback(err);
    },
  });
  // Every consumer asks through read() (pipe and flowing mode, async iteration, highland): a
  // value is released at the first read after it left the buffer (taken by a read, or handed
  // to 'data' listeners by a push into a flowing stream), so a for-await body keeps its value's
  // credit until the loop asks for the next.
  const read = readable.read;
  readable.read = function (this: Readable, n?: number) {
    releaseTaken(this.readableLength);
    return read.call(this, n);
  };
  return readable;
}

/** What push() adds to a byte-mode Readable's length. */
function byteLength(value: unknown): number {
  if (typeof value === 'string') return Buffer.byteLength(value);
  return (value as Uint8Array | null)?.byteLength ?? 0;
}
