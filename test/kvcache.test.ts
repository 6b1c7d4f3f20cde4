import test from 'ava';
import { spawnSync } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { OnlineSoftmaxState } from '../src/attention.ts';
import type { CacheDtype } from '../src/attention.ts';
import { KvCache } from '../src/kvcache.ts';
import type { KvCacheConfig } from '../src/kvcache.ts';
import { Rng } from '../src/random.ts';
import { zeros } from '../src/tensor.ts';
import { assertWithin } from './helpers/assert.ts';
import { chunkedRescales } from './helpers/reference.ts';
import { f32ToBf16, f32ToF16 } from '../src/io/npy.ts';
import { quantizeQ8, refFeaturesBound, storageErrorBound, storageRound } from './helpers/reference-features.ts';

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

// ---------------------------------------------------------------------------------------------
// v2: layouts, storage types, cache operations, validation, memory.
// ---------------------------------------------------------------------------------------------

const LAYOUTS: { name: string; config: Partial<KvCacheConfig> }[] = [
  { name: 'contiguous', config: {} },
  { name: 'ring', config: { window: 5 } },
  { name: 'ring + sinks', config: { window: 4, sinkTokens: 2 } },
  { name: 'paged', config: { pageSize: 4, capacity: 4 } },
  { name: 'paged window + sinks', config: { pageSize: 2, window: 5, sinkTokens: 3 } },
];
const DTYPES: CacheDtype[] = ['fp32', 'fp16', 'bf16', 'int8'];
const [B3, H3, HKV3, DK3, DV3] = [3, 4, 2, 36, 8];
const cfg3 = { batch: B3, numKvHeads: HKV3, dK: DK3, dV: DV3 };

/** Absolute positions the cache holds, in the order of snapshot() (from parts()). */
function heldPositions(cache: KvCache): number[] {
  return cache.parts().flatMap((p) => Array.from({ length: p.k.shape[2] }, (_, i) => p.sOffset + i));
}

/** Rows b of x [B,Hkv,S,d] gathered: out row j = x row idx[j]. */
function gatherRows(x: Float32Array, idx: number[], Hkv: number, S: number, d: number): Float32Array {
  const per = Hkv * S * d, out = new Float32Array(idx.length * per);
  idx.forEach((b, j) => out.set(x.subarray(b * per, (b + 1) * per), j * per));
  return out;
}

/**
 * T=2 queries at the cache's newest positions folded over parts() equal the float64 reference
 * over the snapshot (the exact values the kernels read) at the held positions, under the
 * cache's masks.
 */
function checkFold(t: ExecutionContext, cache: KvCache, rng: Rng, label: string): void {
  const held = heldPositions(cache), S = held.length, T = 2, qOffset = cache.length - T;
  const q = rng.normalTensor([cache.batch, H3, T, cache.dK]);
  const parts = cache.parts();
  const got = new OnlineSoftmaxState(q, { dV: cache.dV, scale: 0.4, causal: true, qOffset, ...(cache.window ? { window: cache.window } : {}) }).updateCache(cache).finalize();
  const snap = cache.snapshot();
  const keyPositions = Array.from({ length: cache.batch }, () => held).flat();
  const ref = refFeaturesBound(q.data, snap.k.data, snap.v.data, { B: cache.batch, H: H3, Hkv: cache.numKvHeads, T, S, dK: cache.dK, dV: cache.dV }, {
    scale: 0.4, causal: true, qOffset, window: cache.window, sinkTokens: cache.sinkTokens, keyPositions, rescales: chunkedRescales(S, parts.length),
  });
  assertWithin(t, got.output.data, ref.out, ref.outBound, `${label} output`, [cache.batch, H3, T, cache.dV]);
  assertWithin(t, got.lse.data, ref.lse, ref.lseBound, `${label} lse`, [cache.batch, H3, T]);
}

function fill(cache: KvCache, rng: Rng, chunks: number[]): void {
  for (const n of chunks) cache.append(rng.normalTensor([cache.batch, cache.numKvHeads, n, cache.dK]), rng.normalTensor([cache.batch, cache.numKvHeads, n, cache.dV]));
}

for (const layout of LAYOUTS)
  test(`${layout.name}: reorder (row b <- old row indices[b]) and select (batch select / repeat) move whole rows, every dtype`, (t) => {
    const rng = new Rng(20);
    for (const dtype of DTYPES) {
      const cache = new KvCache({ ...cfg3, dtype, ...layout.config });
      fill(cache, rng, [3, 1, 5, 1]);
      const before = cache.snapshot(), held = heldPositions(cache), S = held.length;
      // Beam reorder with repeats: rows 0 and 1 both continue old row 2.
      const idx = [2, 2, 0];
      cache.reorder(idx);
      const after = cache.snapshot();
      t.deepEqual(heldPositions(cache), held, `${dtype}: positions unchanged`);
      t.deepEqual(after.k.data, gatherRows(before.k.data, idx, HKV3, S, DK3), `${dtype} reorder keys`);
      t.deepEqual(after.v.data, gatherRows(before.v.data, idx, HKV3, S, DV3), `${dtype} reorder values`);
      checkFold(t, cache, rng, `${layout.name} ${dtype} after reorder`);
      // Appending after the reorder writes each row on its own (paged: the shared pages are copied).
      fill(cache, rng, [2]);
      const grown = cache.snapshot(), S2 = heldPositions(cache).length;
      t.notDeepEqual(grown.k.data.subarray(0, HKV3 * S2 * DK3), grown.k.data.subarray(HKV3 * S2 * DK3, 2 * HKV3 * S2 * DK3), `${dtype}: rows 0 and 1 diverge after an append`);
      checkFold(t, cache, rng, `${layout.name} ${dtype} after reorder + append`);
      // Select: a new cache of another batch size; the source is left as it was.
      const snap = cache.snapshot(), sel = [1, 1, 0, 2, 2];
      const picked = cache.select(sel);
      t.is(picked.batch, 5);
      t.is(picked.length, cache.length);
      const ps = picked.snapshot();
      t.deepEqual(ps.k.data, gatherRows(snap.k.data, sel, HKV3, S2, DK3), `${dtype} select keys`);
      t.deepEqual(ps.v.data, gatherRows(snap.v.data, sel, HKV3, S2, DV3), `${dtype} select values`);
      checkFold(t, picked, rng, `${layout.name} ${dtype} selected`);
      fill(picked, rng, [1, 2]);
      t.deepEqual(cache.snapshot(), snap, `${dtype}: appending to the selection leaves the source unchanged`);
      checkFold(t, picked, rng, `${layout.name} ${dtype} selected + append`);
    }
  });

for (const layout of LAYOUTS)
  test(`${layout.name}: fork() is independent of its source both ways`, (t) => {
    const rng = new Rng(21);
    for (const dtype of ['fp32', 'int8'] as const) {
      const cache = new KvCache({ ...cfg3, dtype, ...layout.config });
      fill(cache, rng, [6, 1, 3]);
      const snap = cache.snapshot();
      const f = cache.fork();
      t.deepEqual(f.snapshot(), snap);
      t.deepEqual(heldPositions(f), heldPositions(cache));
      fill(f, rng, [1, 4]);
      t.deepEqual(cache.snapshot(), snap, `${dtype}: the source is unchanged by the fork's appends`);
      const fsnap = f.snapshot();
      fill(cache, rng, [2]);
      cache.crop(cache.length - 1);
      fill(cache, rng, [1]);
      t.deepEqual(f.snapshot(), fsnap, `${dtype}: the fork is unchanged by the source's appends and crops`);
      checkFold(t, cache, rng, `${layout.name} ${dtype} source`);
      checkFold(t, f, rng, `${layout.name} ${dtype} fork`);
    }
  });

test('paged fork shares every page and copies a page on its first write; a shared prefix page is never written through', (t) => {
  const rng = new Rng(22);
  const cache = new KvCache({ ...cfg3, pageSize: 4, capacity: 16 });
  fill(cache, rng, [10]); // blocks 0, 1 full; block 2 holds 2 of 4 rows
  const table = (c: KvCache) => Array.from(c.parts()[0].k.pages!.blockTable);
  const before = table(cache), snap = cache.snapshot();
  const f = cache.fork();
  t.is(f.parts()[0].k.data, cache.parts()[0].k.data, 'one page pool');
  t.deepEqual(table(f), before, 'every page shared');
  fill(f, rng, [3]); // writes into block 2 (shared: copied) and block 3 (new)
  const ft = table(f);
  t.deepEqual(table(cache), before, 'the source table is unchanged');
  t.deepEqual(ft.slice(0, 2), before.slice(0, 2), 'full prefix pages still shared');
  for (let b = 0; b < B3; b++) t.not(ft[b * 4 + 2], before[b * 4 + 2], `row ${b}: block 2 copied on write`);
  t.deepEqual(cache.snapshot(), snap, 'nothing written through a shared page');
  // The source rolls back into a shared full page and writes: it copies that page, the fork keeps its own.
  const fsnap = f.snapshot();
  cache.crop(5);
  fill(cache, rng, [2]);
  const ct = table(cache);
  for (let b = 0; b < B3; b++) {
    t.is(ct[b * 4], before[b * 4], `row ${b}: block 0 still shared`);
    t.not(ct[b * 4 + 1], before[b * 4 + 1], `row ${b}: block 1 copied on write`);
  }
  t.deepEqual(f.snapshot(), fsnap);
  // Pages return to the pool: a reset fork and a cropped source leave room to grow without a new pool.
  const pool = cache.parts()[0].k.data;
  f.reset();
  t.deepEqual(f.parts(), []);
  fill(cache, rng, [2]);
  t.is(cache.parts()[0].k.data, pool, 'freed pages reused (the pool did not grow)');
  checkFold(t, cache, rng, 'paged source after copy on write');
});

test('ring rule: decode keeps exactly window + sinks slots; a chunk of n grows the ring to window + n - 1, relinearised', (t) => {
  const rng = new Rng(23);
  const cache = new KvCache({ ...cfg3, window: 6, sinkTokens: 2 });
  for (let i = 0; i < 20; i++) fill(cache, rng, [1]);
  t.is(cache.capacity, 2 + 6);
  t.is(cache.held, 8);
  t.deepEqual(heldPositions(cache), [0, 1, 14, 15, 16, 17, 18, 19]);
  const parts = cache.parts();
  t.deepEqual(parts.map((p) => p.window), [0, 6, 6].slice(0, parts.length));
  const snap = cache.snapshot();
  fill(cache, rng, [5]);
  t.is(cache.capacity, 2 + 6 + 4);
  t.deepEqual(heldPositions(cache), [0, 1, ...Array.from({ length: 10 }, (_, i) => 15 + i)]);
  // Relinearised: the ring is one part again, the sinks and positions 15..19 unchanged.
  t.is(cache.parts().length, 2);
  const k = cache.snapshot().k, S = 12;
  for (const [j, p] of [0, 1, 15, 16, 17, 18, 19].entries()) {
    const jOld = [0, 1, 14, 15, 16, 17, 18, 19].indexOf(p);
    for (let bh = 0; bh < B3 * HKV3; bh++)
      t.deepEqual(k.data.subarray((bh * S + j) * DK3, (bh * S + j + 1) * DK3), snap.k.data.subarray((bh * 8 + jOld) * DK3, (bh * 8 + jOld + 1) * DK3), `position ${p}, head ${bh}`);
  }
  checkFold(t, cache, rng, 'after growth');
  // Decode again: no further growth.
  fill(cache, rng, [1, 1, 1]);
  t.is(cache.capacity, 12);
  checkFold(t, cache, rng, 'decode after growth');
});

test('ring crop: back as far as the next queries still see their window, else a clear error', (t) => {
  const rng = new Rng(24);
  const cache = new KvCache({ ...cfg3, window: 4, sinkTokens: 1 });
  fill(cache, rng, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
  t.deepEqual(heldPositions(cache), [0, 6, 7, 8, 9]);
  t.throws(() => cache.crop(8), {
    name: 'ShapeError',
    message: 'Expected crop length n >= 9 for this window cache (it holds positions [6, 10) after 1 sinks, and the next queries see the 3 positions before n), got 8; give it capacity > window to crop further back',
  });
  t.is(cache.length, 10, 'a refused crop changes nothing');
  cache.crop(9);
  t.deepEqual(heldPositions(cache), [0, 6, 7, 8]);
  // A chunk of 3 gives room to roll it back.
  fill(cache, rng, [1, 3]);
  t.is(cache.capacity, 1 + 6);
  cache.crop(10);
  t.deepEqual(heldPositions(cache), [0, 7, 8, 9]);
  // Before the ring wraps every position is held: any crop, down to the sinks and below.
  const young = new KvCache({ ...cfg3, window: 8, sinkTokens: 2 });
  fill(young, rng, [6]);
  young.crop(1);
  t.deepEqual(heldPositions(young), [0]);
  fill(young, rng, [9]);
  t.deepEqual(heldPositions(young), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  checkFold(t, young, rng, 'young ring after crop to a sink');
});

test('storage: each dtype stores the native encoding (within its stated error of the input), views carry dtype and scale', (t) => {
  const rng = new Rng(25);
  for (const layout of LAYOUTS)
    for (const dtype of DTYPES) {
      const cache = new KvCache({ ...cfg3, dtype, ...layout.config, ...(layout.config.window ? { capacity: 64 } : {}) });
      const k = rng.normalTensor([B3, HKV3, 7, DK3]), v = rng.normalTensor([B3, HKV3, 7, DV3]);
      k.data[5] = 0; // zeros and a large value in a group
      k.data[40] = 300;
      cache.append(k, v);
      const snap = cache.snapshot();
      const rows = B3 * HKV3 * 7;
      t.deepEqual(Array.from(snap.k.data), Array.from(storageRound(k.data, rows, DK3, dtype)), `${layout.name} ${dtype} keys = the encoding of the reference`);
      t.deepEqual(Array.from(snap.v.data), Array.from(storageRound(v.data, rows, DV3, dtype)), `${layout.name} ${dtype} values`);
      assertWithin(t, snap.k.data, k.data, storageErrorBound(k.data, rows, DK3, dtype), `${layout.name} ${dtype} storage error`, [B3, HKV3, 7, DK3]);
      // The stored form, in position order: the TypeScript encoders' bits (test/helpers, io/npy).
      const stored = cache.storedSnapshot();
      t.is(stored.k.dtype, dtype);
      t.deepEqual(stored.k.shape, [B3, HKV3, 7, DK3]);
      const want = dtype === 'fp32' ? { q: k.data, scale: undefined } : dtype === 'fp16' ? { q: f32ToF16(k.data), scale: undefined } : dtype === 'bf16' ? { q: f32ToBf16(k.data), scale: undefined } : quantizeQ8(k.data, rows, DK3);
      t.deepEqual(stored.k.data, want.q, `${layout.name} ${dtype} stored keys`);
      t.deepEqual(stored.k.scale, want.scale, `${layout.name} ${dtype} stored key scales`);
      const part = cache.parts()[0];
      const ctor = { fp32: Float32Array, fp16: Uint16Array, bf16: Uint16Array, int8: Int8Array }[dtype];
      t.true(part.k.data instanceof ctor, `${dtype} storage type`);
      t.is(part.k.dtype ?? 'fp32', dtype);
      t.is(part.k.scale === undefined, dtype !== 'int8', `${dtype}: scale only for int8`);
      if (part.k.scale) t.is(part.k.scale.length, (part.k.data.length / DK3) * Math.ceil(DK3 / 32));
    }
});

test('capacity grows geometrically: contiguous doubles, paged doubles its blocks, a ring stops at its window', (t) => {
  const rng = new Rng(26);
  const seen = (c: KvCache, steps: number) => {
    const caps = new Set<number>();
    for (let i = 0; i < steps; i++) {
      fill(c, rng, [1]);
      caps.add(c.capacity);
    }
    return [...caps];
  };
  t.deepEqual(seen(new KvCache({ ...cfg3, capacity: 1 }), 40), [1, 2, 4, 8, 16, 32, 64]);
  t.deepEqual(seen(new KvCache({ ...cfg3, pageSize: 4, capacity: 4 }), 40), [4, 8, 16, 32, 64]);
  t.deepEqual(seen(new KvCache({ ...cfg3, window: 20, sinkTokens: 3, capacity: 2 }), 40), [5, 7, 11, 19, 23]);
  const big = new KvCache({ ...cfg3, capacity: 1 });
  fill(big, rng, [37]); // a chunk past the doubling: exactly what it needs
  t.is(big.capacity, 37);
});

test.serial('a steady decode loop (append, parts, fold into out) allocates no typed array per step, every layout and dtype, with rope', async (t) => {
  const rng = new Rng(27);
  const ctors = [Float32Array, Uint16Array, Int8Array, Int32Array] as const;
  for (const layout of LAYOUTS)
    for (const dtype of DTYPES) {
      const rope = dtype === 'bf16' ? { rope: { dim: 16 } } : {};
      const cache = new KvCache({ ...cfg3, dtype, ...layout.config, capacity: 64, ...rope });
      const q = rng.normalTensor([B3, H3, 1, DK3]);
      // (The state's own rope is left out: its query position ids are the state's business.)
      const state = new OnlineSoftmaxState(q, { dV: DV3, causal: true, qOffset: 0, ...(layout.config.window ? { window: layout.config.window } : {}) });
      const out = { output: zeros([B3, H3, 1, DV3]), lse: zeros([B3, H3, 1]) };
      fill(cache, rng, [5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]); // warm-up: the ring reaches its window
      const ks = Array.from({ length: 20 }, () => rng.normalTensor([B3, HKV3, 1, DK3])), vs = ks.map(() => rng.normalTensor([B3, HKV3, 1, DV3]));
      const counts = new Map<string, number>();
      const real = ctors.map((c) => globalThis[c.name as 'Float32Array']);
      ctors.forEach((c) => {
        (globalThis as Record<string, unknown>)[c.name] = new Proxy(c, {
          construct(target, args, newTarget) {
            counts.set(c.name, (counts.get(c.name) ?? 0) + 1);
            return Reflect.construct(target, args, newTarget === (globalThis as Record<string, unknown>)[c.name] ? target : newTarget) as object;
          },
        });
      });
      try {
        for (let i = 0; i < 20; i++) {
          cache.append(ks[i], vs[i]);
          state.reset(q, { qOffset: cache.length - 1 }).updateCache(cache).finalize({ out });
        }
      } finally {
        ctors.forEach((c, i) => ((globalThis as Record<string, unknown>)[c.name] = real[i]));
      }
      t.deepEqual(Object.fromEntries(counts), {}, `${layout.name} ${dtype}: typed arrays constructed in 20 decode steps`);
    }
});

test('config validation: every bad value is named with what was expected and what came', (t) => {
  const bad: [Partial<KvCacheConfig> | unknown, string, string][] = [
    [null, 'ArgumentError', 'Expected config to be an object, got null'],
    [{ ...cfg, batch: 0 }, 'ShapeError', 'Expected batch to be an integer >= 1, got 0'],
    [{ ...cfg, capacity: 2.5 }, 'ShapeError', 'Expected capacity to be an integer >= 1, got 2.5'],
    [{ ...cfg, dtype: 'fp8' }, 'ArgumentError', "Expected dtype to be one of 'fp32', 'fp16', 'bf16', 'int8', got \"fp8\""],
    [{ ...cfg, window: 0 }, 'ShapeError', 'Expected window to be an integer >= 1, got 0'],
    [{ ...cfg, window: 4, sinkTokens: -1 }, 'ShapeError', 'Expected sinkTokens to be an integer >= 0, got -1'],
    [{ ...cfg, sinkTokens: 4 }, 'ArgumentError', 'Expected sinkTokens only with a window (sinks plus the last window positions), got sinkTokens=4 and window undefined'],
    [{ ...cfg, pageSize: 0 }, 'ShapeError', 'Expected pageSize to be an integer >= 1, got 0'],
    [{ ...cfg, rope: { dim: 3 } }, 'ArgumentError', 'Expected rope.dim to be an even integer in [2, d=4], got 3'],
    [{ ...cfg, rope: 3 }, 'ArgumentError', 'Expected rope to be an object, got 3'],
    [{ ...cfg, rope: { theta: -1 } }, 'ArgumentError', 'Expected rope.theta to be a number in [1e-30, 1e+300], got -1'],
    [{ ...cfg, window: 2.5 }, 'ShapeError', 'Expected window to be an integer >= 1, got 2.5'],
    [{ ...cfg, dtype: 'f16' }, 'ArgumentError', "Expected dtype to be one of 'fp32', 'fp16', 'bf16', 'int8', got \"f16\""],
    [{ ...cfg, rope: { style: 'neox' } }, 'ArgumentError', "Expected rope.style to be 'half' or 'interleaved', got \"neox\""],
    [{ ...cfg, capacity: 2 ** 28 }, 'ArgumentError', 'Expected k cache storage [B,H_kv,capacity,d_k]=[2,3,268435456,4] to fit the 2 GiB tensor limit (536870912 floats), got 6442450944 floats (25769803776 bytes)'],
    [{ ...cfg, pageSize: 2 ** 20, capacity: 2 ** 28 }, 'ArgumentError', 'Expected k page pool [pages,H_kv,pageSize,d_k]=[512,3,1048576,4] to fit the 2 GiB tensor limit (536870912 floats), got 6442450944 floats (25769803776 bytes)'],
  ];
  for (const [config, name, message] of bad) t.throws(() => new KvCache(config as KvCacheConfig), { name, message }, message);
});

test('argument validation: append, crop, snapshot, reorder, select, keys', (t) => {
  const rng = new Rng(28);
  const cache = new KvCache(cfg);
  const k1 = rng.normalTensor([2, 3, 1, 4]), v1 = rng.normalTensor([2, 3, 1, 5]);
  cache.append(k1, v1);
  const throws = (fn: () => unknown, name: string, message: string) => t.throws(fn, { name, message }, message);
  throws(() => cache.append(k1, v1, { positions: new Int32Array(2) }), 'ArgumentError', 'Expected options.positions only for a cache with rope, got positions and no rope config');
  const roped = new KvCache({ ...cfg, rope: {} });
  throws(() => roped.append(k1, v1, { positions: new Int32Array(3) }), 'ShapeError', 'Expected options.positions shape [B,n]=[2,1] (2 elements) as an Int32Array, got Int32Array(3)');
  throws(() => roped.append(k1, v1, { positions: [0, 0] as unknown as Int32Array }), 'ShapeError', 'Expected options.positions shape [B,n]=[2,1] (2 elements) as an Int32Array, got Array(2)');
  throws(() => cache.append(k1, v1, 3 as never), 'ArgumentError', 'Expected options to be an object or undefined, got 3');
  throws(() => cache.append(rng.normalTensor([2, 3, 1, 5]), v1), 'ShapeError', 'Expected k shape [B,H_kv,n,d_k]=[2,3,1,4] (24 floats), got shape [2,3,1,5] (30 floats)');
  t.is(roped.length, 0, 'rejected appends change nothing');
  throws(() => cache.crop(-1), 'ShapeError', 'Expected n to be an integer >= 0, got -1');
  throws(() => cache.snapshot(2), 'ShapeError', 'Expected S <= positions held 1, got 2');
  throws(() => cache.storedSnapshot(-1), 'ShapeError', 'Expected S to be an integer >= 0, got -1');
  throws(() => cache.crop(1.5), 'ShapeError', 'Expected n to be an integer >= 0, got 1.5');
  throws(() => cache.reorder([0]), 'ShapeError', 'Expected indices shape [B]=[2] (one source row per batch row), got 1 elements');
  throws(() => cache.reorder([0, 2]), 'ArgumentError', 'Expected indices[1] to be a batch row in [0, 2), got 2');
  throws(() => cache.reorder([0, 0.5]), 'ArgumentError', 'Expected indices[1] to be a batch row in [0, 2), got 0.5');
  throws(() => cache.reorder('01' as never), 'ArgumentError', 'Expected indices to be an array of batch rows, got "01"');
  throws(() => cache.select([]), 'ShapeError', 'Expected indices to name at least one batch row, got 0 elements');
  throws(() => cache.select([-1]), 'ArgumentError', 'Expected indices[0] to be a batch row in [0, 2), got -1');
  const ring = new KvCache({ ...cfg, window: 4 });
  throws(() => ring.keys(), 'ArgumentError', 'Expected a contiguous cache for keys(), got a ring cache (fold parts(), or state.updateCache(cache))');
  throws(() => new KvCache({ ...cfg, pageSize: 2 }).values(), 'ArgumentError', 'Expected a contiguous cache for values(), got a paged cache (fold parts(), or state.updateCache(cache))');
  t.deepEqual(new KvCache(cfg).parts(), [], 'an empty cache has no parts');
});

test('a paged fork that is garbage-collected returns its pages to the shared pool', (t) => {
  // In a child with --expose-gc: 200 forks each take a page of their own and are dropped; with
  // the pages returned the pool stays small, without it it would hold 200+ pages.
  const script = `
    import('./src/kvcache.ts').then(async ({ KvCache }) => {
      const c = new KvCache({ batch: 1, numKvHeads: 1, dK: 4, dV: 4, pageSize: 4, capacity: 16 });
      const x = (n) => ({ data: new Float32Array(4 * n).fill(1), shape: [1, 1, n, 4] });
      c.append(x(16), x(16));
      for (let i = 0; i < 200; i++) {
        c.fork().append(x(1), x(1));
        if (i % 10 === 9) { globalThis.gc(); await new Promise((r) => setTimeout(r, 0)); }
      }
      console.log(c.parts()[0].k.data.length / 16);
    });`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 0, r.stderr);
  const pages = Number(r.stdout.trim());
  t.true(pages >= 5 && pages <= 64, `pool pages after 200 dropped forks: ${pages} (stdout ${JSON.stringify(r.stdout)}, stderr ${r.stderr.slice(0, 300)})`);
});

test('paged window: an append refused when its pages cannot be had (pool or table growth throws) leaves every page as it was', (t) => {
  const rng = new Rng(31);
  const cache = new KvCache({ ...cfg3, window: 6, sinkTokens: 2, pageSize: 4 });
  fill(cache, rng, [9, 5]);
  const before = cache.storedSnapshot(), length = cache.length, held = heldPositions(cache);
  // Pool growth (and table growth, which allocates too) past the size limit throw RangeError; stand
  // that in for the pool's reserve, which a chunk of 12 (three new pages) must call.
  const pool = (cache as unknown as { blocks: { pool: { reserve(n: number): void } } }).blocks.pool;
  const reserve = pool.reserve;
  pool.reserve = () => { throw new RangeError('Expected the page pool within the size limit, got more'); };
  const chunk = { k: rng.normalTensor([B3, HKV3, 12, DK3]), v: rng.normalTensor([B3, HKV3, 12, DV3]) };
  t.throws(() => cache.append(chunk.k, chunk.v), { instanceOf: RangeError });
  pool.reserve = reserve;
  t.is(cache.length, length);
  t.deepEqual(heldPositions(cache), held, 'no page left of the window was released');
  t.deepEqual(cache.storedSnapshot(), before);
  // And the same append then succeeds, as on a cache that was never refused.
  cache.append(chunk.k, chunk.v);
  checkFold(t, cache, rng, 'paged window after a refused append');
});

test('paged window: chunks of a page reuse the pages their append releases (pool and tables stay the size the window needs)', (t) => {
  const rng = new Rng(33);
  const cache = new KvCache({ batch: 1, numKvHeads: 1, dK: 4, dV: 4, window: 4, pageSize: 4 });
  const chunk = () => [rng.normalTensor([1, 1, 4, 4]), rng.normalTensor([1, 1, 4, 4])] as const;
  cache.append(...chunk());
  cache.append(...chunk());
  const pool = cache.parts()[0].k.data, capacity = cache.capacity;
  for (let i = 0; i < 20; i++) cache.append(...chunk());
  t.is(cache.parts()[0].k.data, pool, 'the pool did not grow');
  t.is(cache.capacity, capacity, 'nor did the tables');
  t.is(pool.length, 2 * 4 * 4, 'two pages: the window needs the last W + n - 1 = 7 positions');
});

test('paged window: pages wholly left of the window return to the pool; decode runs in a fixed set of pages', (t) => {
  const rng = new Rng(29);
  const cache = new KvCache({ ...cfg3, window: 6, sinkTokens: 3, pageSize: 4 });
  fill(cache, rng, [9, 1, 1, 1, 1, 1]); // sinks [0,3) in their own page; the window's in pages of 4 from 3
  const pool = cache.parts()[0].k.data, capacity = cache.capacity;
  for (let i = 0; i < 60; i++) fill(cache, rng, [1]);
  const parts = cache.parts();
  t.is(parts[0].k.data, pool, 'the pool did not grow in 60 decode steps');
  t.is(cache.capacity, capacity, 'nor did the tables');
  t.deepEqual(parts.map((p) => [p.sOffset, p.window]), [[0, 0], [parts[1].sOffset, 6]]);
  const held = heldPositions(cache);
  t.deepEqual(held.slice(0, 3), [0, 1, 2]);
  // The window's positions start on a page boundary after the sinks, at most a page before the last 6.
  const first = held[3];
  t.is((first - 3) % 4, 0);
  t.true(first <= cache.length - 6 && first > cache.length - 6 - 4, `first window position ${first} for length ${cache.length}`);
  checkFold(t, cache, rng, 'paged window after decode');
  // Crop is refused past what the window still holds, with the paged advice.
  t.throws(() => cache.crop(first + 4), {
    name: 'ShapeError',
    message: `Expected crop length n >= ${first + 5} for this window cache (it holds positions [${first}, ${cache.length}) after 3 sinks, and the next queries see the 5 positions before n), got ${first + 4}; append drafts as one chunk to crop further back`,
  });
});
