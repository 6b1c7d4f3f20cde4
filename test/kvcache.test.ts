import test from 'ava';
import { KvCache } from '../src/kvcache.ts';
import { Rng } from '../src/random.ts';

const cfg = { batch: 2, numKvHeads: 3, dK: 4, dV: 5 };

test('append fills half-open ranges, grows, and snapshot returns what was appended', (t) => {
  const rng = new Rng(1);
  const cache = new KvCache({ ...cfg, capacity: 1 });
  const parts = [1, 4, 2, 9].map((n) => ({ k: rng.normalTensor([2, 3, n, 4]), v: rng.normalTensor([2, 3, n, 5]) }));
  let at = 0;
  for (const p of parts) {
    const n = p.k.shape[2];
    t.deepEqual(cache.append(p.k, p.v), { start: at, end: at + n });
    at += n;
  }
  t.is(cache.length, 16);
  t.true(cache.capacity >= 16);
  const { k, v } = cache.snapshot();
  t.deepEqual(k.shape, [2, 3, 16, 4]);
  // Head (b=1, h=2), position 5 is the 0th position of part 2 (after 1 + 4).
  const bh = 1 * 3 + 2;
  t.deepEqual(k.data.subarray((bh * 16 + 5) * 4, (bh * 16 + 6) * 4), parts[2].k.data.subarray((bh * 2 + 0) * 4, (bh * 2 + 1) * 4));
  t.deepEqual(v.data.subarray((bh * 16 + 15) * 5, (bh * 16 + 16) * 5), parts[3].v.data.subarray((bh * 9 + 8) * 5, (bh * 9 + 9) * 5));
  // The in-place view reads the same storage with its capacity.
  const view = cache.keys();
  t.is(view.capacity, cache.capacity);
  t.deepEqual(view.shape, [2, 3, 16, 4]);
});

test('crop rolls back, reset empties, and appends after them overwrite', (t) => {
  const rng = new Rng(2);
  const cache = new KvCache(cfg);
  const a = { k: rng.normalTensor([2, 3, 6, 4]), v: rng.normalTensor([2, 3, 6, 5]) };
  const b = { k: rng.normalTensor([2, 3, 2, 4]), v: rng.normalTensor([2, 3, 2, 5]) };
  cache.append(a.k, a.v);
  cache.crop(4);
  t.is(cache.length, 4);
  t.deepEqual(cache.append(b.k, b.v), { start: 4, end: 6 });
  const snap = cache.snapshot();
  t.deepEqual(snap.k.data.subarray(4 * 4, 6 * 4), b.k.data.subarray(0, 2 * 4));
  t.throws(() => cache.crop(7), { name: 'ShapeError', message: 'Expected crop length <= cache length 6, got 7' });
  cache.reset();
  t.is(cache.length, 0);
  t.deepEqual(cache.snapshot().k.shape, [2, 3, 0, 4]);
});

test('append rejects a chunk of the wrong shape and leaves the cache unchanged', (t) => {
  const cache = new KvCache(cfg);
  const rng = new Rng(3);
  cache.append(rng.normalTensor([2, 3, 1, 4]), rng.normalTensor([2, 3, 1, 5]));
  t.throws(() => cache.append(rng.normalTensor([2, 3, 2, 4]), rng.normalTensor([2, 3, 1, 5])), {
    name: 'ShapeError',
    message: 'Expected v shape [B,H_kv,n,d_v]=[2,3,2,5] (60 floats), got shape [2,3,1,5] (30 floats)',
  });
  t.is(cache.length, 1);
});
