import { Readable } from 'node:stream';
import type { Observable, Subscription } from 'rxjs';

export interface ToReadableOptions {
  /**
   * Signalled once per read the stream asks for after the first (pass the same Subject as the
   * source's `demand` option): the source then produces only as fast as the Readable's consumer
   * reads, at most `highWaterMark` + 1 chunks ahead. The Observable must then emit one value per
   * source chunk (map, projectKv, attendChunk; not filter or last), or a read waits forever.
   * Without it, every value the Observable emits is buffered in the Readable until read.
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
 */
export function toReadable<T>(source: Observable<T>, options: ToReadableOptions = {}): Readable {
  const { demand, bytes = false } = options;
  let sub: Subscription | undefined;
  return new Readable({
    objectMode: !bytes,
    highWaterMark: options.highWaterMark ?? (bytes ? 64 * 1024 : 1),
    read() {
      if (sub) return demand?.next();
      sub = source.subscribe({
        next: (value) => {
          this.push(value);
        },
        error: (e: unknown) => this.destroy(e instanceof Error ? e : new Error(String(e))),
        complete: () => this.push(null),
      });
    },
    destroy(err, callback) {
      sub?.unsubscribe();
      callback(err);
    },
  });
}
