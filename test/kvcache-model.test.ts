// Random operation sequences on KvCache against a plain model (per batch row, the encoded key
// and value of every position appended and not cropped). Several caches live at once (forks
// and selections of each other, sharing pages when paged); after every operation each live
// cache must give, at the positions it holds, exactly the model's values (so nothing is written
// through a shared page), hold what the ring rule demands, and describe parts() consistently.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import type { CacheDtype } from '../src/attention.ts';
import { bf16ToF32, f16ToF32 } from '../src/io/npy.ts';
import { KvCache } from '../src/kvcache.ts';
import type { KvCacheConfig } from '../src/kvcache.ts';
import { Rng } from '../src/random.ts';
import { storageRound } from './helpers/reference-features.ts';

interface Live {
  cache: KvCache;
  /** rows[b][s]: stored key / value of position s of batch row b. */
  k: Float64Array[][];
  v: Float64Array[][];
  /** Positions the next queries need (the ring rule): [need0, length). */
  need0: number;
}

const DTYPES: CacheDtype[] = ['fp32', 'fp16', 'bf16', 'int8'];

/** Stored bits [rows, d] (+ int8 scales [rows, ceil(d/32)]) as fp32, independently of the cache. */
function decode(data: ArrayLike<number>, scale: Float32Array | undefined, dtype: CacheDtype, d: number): Float32Array {
  if (dtype === 'fp16') return f16ToF32(data as Uint16Array);
  if (dtype === 'bf16') return bf16ToF32(data as Uint16Array);
  if (dtype === 'fp32') return Float32Array.from(data);
  const g = Math.ceil(d / 32);
  return Float32Array.from(data, (q, i) => Math.fround(q * scale![Math.floor(i / d) * g + Math.floor((i % d) / 32)]));
}

function check(t: ExecutionContext, live: Live, label: string): boolean {
  const c = live.cache, parts = c.parts();
  const held = parts.flatMap((p) => Array.from({ length: p.k.shape[2] }, (_, i) => p.sOffset + i));
  const fail = (why: string) => (t.fail(`${label}: ${why}; held ${JSON.stringify(held)}, length ${c.length}`), false);
  if (held.length !== c.held) return fail(`held ${c.held} != parts' rows ${held.length}`);
  for (let i = 1; i < held.length; i++) if (held[i] <= held[i - 1]) return fail('parts out of order');
  if (held.length && (held[0] < 0 || held[held.length - 1] >= c.length)) return fail('a part outside [0, length)');
  for (const p of parts) {
    const cap = p.k.capacity ?? p.k.shape[2];
    if ((p.k.start ?? 0) + p.k.shape[2] > cap || p.k.capacity !== p.v.capacity || p.k.start !== p.v.start) return fail('a part beyond its capacity');
    if (c.window && p.window !== (p.sOffset < c.sinkTokens ? 0 : c.window)) return fail(`part at ${p.sOffset} has window ${p.window}`);
  }
  for (let s = live.need0; s < c.length; s++) if (!held.includes(s)) return fail(`position ${s} is needed and not held`);
  for (let s = 0; s < Math.min(c.length, c.sinkTokens); s++) if (!held.includes(s)) return fail(`sink ${s} not held`);
  const snap = c.snapshot(), S = held.length, { dK, dV, numKvHeads: Hkv } = c;
  // The stored form decodes to the snapshot.
  const stored = c.storedSnapshot();
  for (const [x, d, want] of [[stored.k, dK, snap.k.data], [stored.v, dV, snap.v.data]] as const) {
    const got = decode(x.data, x.scale, c.dtype, d);
    for (let i = 0; i < got.length; i++) if (got[i] !== want[i] && !(Number.isNaN(got[i]) && Number.isNaN(want[i]))) return fail(`storedSnapshot element ${i} decodes to ${got[i]}, snapshot ${want[i]}`);
  }
  for (let b = 0; b < c.batch; b++)
    for (let h = 0; h < Hkv; h++)
      for (const [j, s] of held.entries()) {
        const want = [live.k[b][s], live.v[b][s]];
        const got = [snap.k.data.subarray(((b * Hkv + h) * S + j) * dK, ((b * Hkv + h) * S + j + 1) * dK), snap.v.data.subarray(((b * Hkv + h) * S + j) * dV, ((b * Hkv + h) * S + j + 1) * dV)];
        for (let x = 0; x < 2; x++) {
          const d = x ? dV : dK;
          for (let i = 0; i < d; i++) if (got[x][i] !== want[x][h * d + i]) return fail(`${x ? 'v' : 'k'}[b=${b}, h=${h}, s=${s}, ${i}] = ${got[x][i]}, model ${want[x][h * d + i]}`);
        }
      }
  t.pass();
  return true;
}

function runSequence(t: ExecutionContext, seed: number): boolean {
  const g = new Rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(g.uniform() * xs.length)];
  const int = (lo: number, hi: number) => lo + Math.floor(g.uniform() * (hi - lo + 1));
  const batch = int(1, 3), Hkv = int(1, 2), dK = pick([4, 33, 40]), dV = pick([3, 8]), dtype = pick(DTYPES);
  const kind = pick(['contiguous', 'ring', 'ring', 'paged', 'paged', 'paged window', 'paged window']);
  const config: KvCacheConfig = { batch, numKvHeads: Hkv, dK, dV, dtype, capacity: int(1, 9) };
  if (kind === 'ring' || kind === 'paged window') Object.assign(config, { window: int(1, 6), sinkTokens: pick([0, 0, 1, 3]) });
  if (kind.startsWith('paged')) config.pageSize = pick([1, 2, 4, 5]);
  const W = config.window ?? 0;
  const label = `seed ${seed} ${JSON.stringify(config)}`;
  const lives: Live[] = [{ cache: new KvCache(config), k: Array.from({ length: batch }, () => []), v: Array.from({ length: batch }, () => []), need0: 0 }];
  const log: string[] = [];
  for (let step = 0; step < 24; step++) {
    const live = pick(lives), c = live.cache, B = c.batch;
    const op = pick(['append', 'append', 'append1', 'crop', 'reorder', 'select', 'fork', 'reset']);
    if (op === 'append' || op === 'append1') {
      const n = op === 'append1' ? 1 : int(1, 7);
      const k = g.normalTensor([B, Hkv, n, dK]), v = g.normalTensor([B, Hkv, n, dV]);
      c.append(k, v);
      const kr = storageRound(k.data, B * Hkv * n, dK, dtype), vr = storageRound(v.data, B * Hkv * n, dV, dtype);
      for (let b = 0; b < B; b++)
        for (let i = 0; i < n; i++) {
          const kk = new Float64Array(Hkv * dK), vv = new Float64Array(Hkv * dV);
          for (let h = 0; h < Hkv; h++) {
            kk.set(kr.subarray(((b * Hkv + h) * n + i) * dK, ((b * Hkv + h) * n + i + 1) * dK), h * dK);
            vv.set(vr.subarray(((b * Hkv + h) * n + i) * dV, ((b * Hkv + h) * n + i + 1) * dV), h * dV);
          }
          live.k[b].push(kk);
          live.v[b].push(vv);
        }
      live.need0 = W ? Math.max(0, c.length - (W + n - 1)) : 0;
      log.push(`append(${n})`);
    } else if (op === 'crop') {
      const n = int(Math.max(0, c.length - 6), c.length);
      try {
        c.crop(n);
        for (let b = 0; b < B; b++) [live.k[b].length, live.v[b].length] = [n, n];
        live.need0 = W ? Math.max(0, n - (W - 1)) : 0;
        log.push(`crop(${n})`);
      } catch (e) {
        // Refused only for a ring that no longer holds the window before n.
        const ringHeld = c.parts().filter((p) => p.window).flatMap((p) => [p.sOffset]);
        const first = ringHeld.length ? Math.min(...ringHeld) : c.length;
        if (!(W && first > c.sinkTokens && n < first + W - 1 && (e as Error).name === 'ShapeError')) {
          t.fail(`${label}: crop(${n}) threw ${(e as Error).message} after ${log.join('.')}`);
          return false;
        }
        log.push(`crop(${n}) refused`);
      }
    } else if (op === 'reorder') {
      const idx = Array.from({ length: B }, () => int(0, B - 1));
      c.reorder(idx);
      [live.k, live.v] = [idx.map((j) => [...live.k[j]]), idx.map((j) => [...live.v[j]])];
      log.push(`reorder(${idx})`);
    } else if (op === 'select' || op === 'fork') {
      const idx = op === 'fork' ? Array.from({ length: B }, (_, b) => b) : Array.from({ length: int(1, 4) }, () => int(0, B - 1));
      const other = op === 'fork' ? c.fork() : c.select(idx);
      const nl: Live = { cache: other, k: idx.map((j) => [...live.k[j]]), v: idx.map((j) => [...live.v[j]]), need0: live.need0 };
      if (lives.length < 4) lives.push(nl);
      else lives[int(0, 3)] = nl;
      log.push(`${op}(${idx})`);
    } else {
      c.reset();
      for (let b = 0; b < B; b++) [live.k[b], live.v[b]] = [[], []];
      live.need0 = 0;
      log.push('reset()');
    }
    for (const [i, l] of lives.entries()) if (!check(t, l, `${label} cache ${i} after ${log.join('.')}`)) return false;
  }
  return true;
}

test('random operation sequences (append, crop, reorder, select, fork, reset) keep every live cache equal to the model', (t) => {
  for (let seed = 1; seed <= 300; seed++) if (!runSequence(t, seed)) return;
});
