// The operators take the cache features: prefillChunk streams through any KvCache layout and
// storage type with the module's rope and the score options; attendChunk rotates each chunk's
// keys at their absolute positions and applies the score options. Every emitted result is held
// to the float64 module reference (test/helpers/module-features.ts) over its prefix, for
// several chunkings including chunks of 1.
import test from 'ava';
import { lastValueFrom, toArray } from 'rxjs';
import { MultiHeadAttention } from '../../src/mha.ts';
import type { NewCacheOptions } from '../../src/mha.ts';
import { attendChunk, prefillChunk, projectKv, splitTokens } from '../../src/operators/index.ts';
import type { AttendOptions, PrefillOptions } from '../../src/operators/index.ts';
import { Rng } from '../../src/random.ts';
import type { RopeOptions } from '../../src/rope.ts';
import { assertWithin } from '../helpers/assert.ts';
import { refModuleFeatures, tokenRows } from '../helpers/module-features.ts';

const [B, S, dModel, H, Hkv] = [2, 23, 32, 4, 2];

const PREFILL: { name: string; cache: NewCacheOptions; rope?: RopeOptions; options: PrefillOptions }[] = [
  { name: 'ring window 4 + 2 sinks, rope, softcap', cache: { window: 4, sinkTokens: 2 }, rope: {}, options: { softcap: 3 } },
  { name: 'int8 paged 4, ALiBi, head sinks', cache: { dtype: 'int8', pageSize: 4 }, options: { alibi: true, sinks: [0, 1, -1, 2] } },
  { name: 'fp16 ring window 6, rope interleaved partial', cache: { dtype: 'fp16', window: 6 }, rope: { dim: 4, style: 'interleaved' }, options: {} },
];

for (const [i, c] of PREFILL.entries())
  test(`prefillChunk over a ${c.name} cache equals the float64 module, every chunking`, async (t) => {
    const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv, ...(c.rope ? { rope: c.rope } : {}) }, 60 + i);
    const x = new Rng(70 + i).normalTensor([B, S, dModel]);
    const ref = refModuleFeatures(mha, x, x, {
      causal: true, qOffset: 0, window: c.cache.window, sinkTokens: c.cache.sinkTokens, dtype: c.cache.dtype, rope: c.rope,
      softcap: c.options.softcap, alibi: c.options.alibi === true, sinks: c.options.sinks as number[] | undefined,
    });
    for (const chunking of [1, 5, [20, 3]]) {
      const outs = await lastValueFrom(splitTokens(x, chunking).pipe(prefillChunk(mha, () => mha.newCache(B, c.cache), c.options), toArray()));
      for (const o of outs) {
        const label = `${c.name}, chunking ${JSON.stringify(chunking)}, rows [${o.start}, ${o.end})`;
        if (!assertWithin(t, o.output.data, tokenRows(ref.y, B, S, dModel, o.start, o.end), tokenRows(ref.bound, B, S, dModel, o.start, o.end), label, o.output.shape)) return;
      }
    }
  });

test('attendChunk with rope rotates each chunk at its positions; score options apply (sync and async)', async (t) => {
  const rope: RopeOptions = { theta: 1000 };
  const mha = MultiHeadAttention.random({ dModel, numHeads: H, numKvHeads: Hkv, rope }, 80);
  const rng = new Rng(81);
  const xQ = rng.normalTensor([B, 5, dModel]), xKv = rng.normalTensor([B, S, dModel]);
  const options: AttendOptions = { causal: true, qOffset: 40, sOffset: 20, window: 9, alibi: true, softcap: 4 };
  // The stream's tokens sit at 20..42; the queries at 40..44 see the last 9 of them (window).
  const ref = refModuleFeatures(mha, xQ, xKv, { causal: true, qOffset: 40 - 20, window: 9, alibi: true, softcap: 4, rope, qPositions: qIds(40), kPositions: kIds(20) });
  for (const async of [false, true])
    for (const chunking of [1, 7]) {
      const outs = await lastValueFrom(splitTokens(xKv, chunking).pipe(projectKv(mha), attendChunk(mha, xQ, { ...options, async }), toArray()));
      const last = outs.at(-1)!;
      assertWithin(t, last.output.data, ref.y, ref.bound, `async ${async}, chunking ${chunking}`, last.output.shape);
    }
});

/** Rope ids [B,5] of queries from `start`, and [B,S] of keys from `start`. */
function qIds(start: number): Int32Array {
  return Int32Array.from({ length: B * 5 }, (_, i) => start + (i % 5));
}
function kIds(start: number): Int32Array {
  return Int32Array.from({ length: B * S }, (_, i) => start + (i % S));
}
