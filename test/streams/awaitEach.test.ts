// awaitEach and the read-ahead credit it holds: order, completion and errors as concatMap; a
// delivery's ticket freed only once every stage that retained it is done, on every ending.
import test from 'ava';
import { concatMap, from, lastValueFrom, Observable, Subject, take, throwError, toArray } from 'rxjs';
import { awaitEach } from '../../src/streams/index.ts';
import { retain, ticket } from '../../src/streams/credit.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A source delivering `values` on demand, each under its own ticket; `freed` lists the values whose tickets were freed. */
function ticketed<T>(values: T[]) {
  const freed: T[] = [];
  const source = new Observable<T>((subscriber) => {
    for (const v of values) {
      const t = ticket(() => freed.push(v));
      t.deliver(() => subscriber.next(v));
      t.release();
    }
    subscriber.complete();
  });
  return { source, freed };
}

test('values in order, one at a time, with their index; completion waits for the queue', async (t) => {
  let running = 0, most = 0;
  const out = await lastValueFrom(from([5, 1, 4, 0, 2]).pipe(
    awaitEach(async (ms, i) => {
      most = Math.max(most, ++running);
      await sleep(ms);
      running--;
      return `${i}:${ms}`;
    }),
    toArray(),
  ));
  t.deepEqual(out, ['0:5', '1:1', '2:4', '3:0', '4:2']);
  t.is(most, 1);
  // A plain (non-promise) result works too.
  t.deepEqual(await lastValueFrom(from([1, 2]).pipe(awaitEach((x) => x * 10), toArray())), [10, 20]);
});

test('errors: a throw, a rejection and a source error end the output; queued values are dropped', async (t) => {
  const boom = new Error('boom');
  await t.throwsAsync(lastValueFrom(from([1, 2]).pipe(awaitEach(() => {
    throw boom;
  }))), { is: boom });
  const seen: number[] = [];
  await t.throwsAsync(lastValueFrom(from([1, 2, 3]).pipe(awaitEach(async (x) => {
    seen.push(x);
    if (x === 2) throw boom;
    return x;
  }))), { is: boom });
  t.deepEqual(seen, [1, 2], 'nothing runs after the failure');
  const src = new Subject<number>();
  const started: number[] = [];
  const p = lastValueFrom(src.pipe(awaitEach(async (x) => (started.push(x), await sleep(20)))));
  src.next(1);
  src.next(2);
  src.error(boom);
  await t.throwsAsync(p, { is: boom });
  t.deepEqual(started, [1], 'the source error arrives before value 2 starts');
});

test('a ticket is freed when its last holder is done: the source on return, awaitEach after delivering the result', async (t) => {
  // No async stage: each ticket is freed as next() returns.
  const sync = ticketed([1, 2, 3]);
  await lastValueFrom(sync.source);
  t.deepEqual(sync.freed, [1, 2, 3]);

  const { source, freed } = ticketed([1, 2, 3]);
  const log: string[] = [];
  const result = lastValueFrom(source.pipe(
    awaitEach(async (x) => {
      await sleep(5);
      log.push(`done ${x}, freed [${freed}]`);
      return x;
    }),
    // A second stage retains the ticket during the first's delivery: freed after both.
    awaitEach(async (x) => {
      await sleep(5);
      log.push(`sink ${x}, freed [${freed}]`);
    }),
    toArray(),
  ));
  t.deepEqual(freed, [], 'all three held by the first stage once the source returned');
  await result;
  t.deepEqual(freed, [1, 2, 3]);
  t.deepEqual(log.slice(0, 3), ['done 1, freed []', 'sink 1, freed []', 'done 2, freed [1]']);
});

test('unsubscribing frees the tickets of values queued and in progress', async (t) => {
  const { source, freed } = ticketed([1, 2, 3, 4]);
  const got = await lastValueFrom(source.pipe(awaitEach(async (x) => (await sleep(2), x)), take(1), toArray()));
  t.deepEqual(got, [1]);
  t.deepEqual(freed.sort(), [1, 2, 3, 4]);
  // Same after an error.
  const failing = ticketed([1, 2, 3]);
  await t.throwsAsync(lastValueFrom(failing.source.pipe(awaitEach(async () => {
    throw new Error('x');
  }))));
  t.deepEqual(failing.freed.sort(), [1, 2, 3]);
});

test('deliveries nest: retain() takes the innermost ticket, and the outer one is current again after', (t) => {
  const freed: string[] = [];
  const outer = ticket(() => freed.push('outer'));
  const holds: ReturnType<typeof retain>[] = [];
  outer.deliver(() => {
    const inner = ticket(() => freed.push('inner'));
    inner.deliver(() => holds.push(retain()));
    inner.release();
    holds.push(retain());
  });
  outer.release();
  holds.push(retain()); // outside any delivery: holds nothing
  t.deepEqual(freed, []);
  holds[0].release();
  t.deepEqual(freed, ['inner']);
  holds[0].release(); // a second release does nothing
  holds[2].release();
  t.deepEqual(freed, ['inner']);
  holds[1].release();
  t.deepEqual(freed, ['inner', 'outer']);
});

test('concatMap holds nothing: the source\'s tickets are freed as it returns (why awaitEach exists)', async (t) => {
  const { source, freed } = ticketed([1, 2, 3]);
  const p = lastValueFrom(source.pipe(concatMap(async (x) => (await sleep(2), x))));
  t.deepEqual(freed, [1, 2, 3]);
  await p;
  await t.throwsAsync(lastValueFrom(throwError(() => new Error('e')).pipe(awaitEach(async (x) => x))), { message: 'e' });
});
