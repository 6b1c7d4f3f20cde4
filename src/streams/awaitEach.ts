import { Observable } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { retain } from './credit.ts';
import type { Hold } from './credit.ts';

/**
 * Asynchronous stage: `project(value, index)` for each value, one at a time in arrival order
 * (as concatMap), emitting what each resolves to. Unlike concatMap it holds each value's
 * read-ahead credit until its result has been delivered downstream, so a source before it
 * (fromNpy, fromTokens, fromNpyBytes) reads at most its `highWaterMark` chunks ahead of the
 * values this stage has finished. Use it as the slow sink of a pipeline, e.g.
 * `awaitEach(async (o) => { await write(o); })`. A source error or a failed project is the
 * output's error at once (values still queued are dropped); completion waits for the queue.
 */
export function awaitEach<T, R>(project: (value: T, index: number) => R | PromiseLike<R>): OperatorFunction<T, Awaited<R>> {
  return (source) =>
    new Observable<Awaited<R>>((subscriber) => {
      const queue: { value: T; hold: Hold }[] = []; // arrived, not started
      let running: Hold | undefined; // the hold of the value being projected
      let index = 0;
      let sourceDone = false;

      const start = () => {
        if (running || subscriber.closed) return;
        const item = queue.shift();
        if (!item) {
          if (sourceDone) subscriber.complete();
          return;
        }
        const hold = (running = item.hold);
        let result: PromiseLike<Awaited<R>> | Awaited<R>;
        try {
          result = project(item.value, index++) as PromiseLike<Awaited<R>> | Awaited<R>;
        } catch (e) {
          return subscriber.error(e);
        }
        Promise.resolve(result).then(
          (r) => {
            if (running !== hold) return; // torn down meanwhile
            if (!subscriber.closed) hold.deliver(() => subscriber.next(r));
            running = undefined;
            hold.release();
            start();
          },
          (e: unknown) => {
            if (running === hold) subscriber.error(e);
          },
        );
      };

      const sub = source.subscribe({
        next: (value) => {
          queue.push({ value, hold: retain() });
          start();
        },
        error: (e: unknown) => subscriber.error(e),
        complete: () => {
          sourceDone = true;
          start();
        },
      });
      return () => {
        sub.unsubscribe();
        const held = [running, ...queue.map((q) => q.hold)];
        running = undefined;
        queue.length = 0;
        for (const h of held) h?.release();
      };
    });
}
