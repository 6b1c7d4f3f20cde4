// Chunked-vs-full parity of KvCache: after every append, the chunk's queries folded over
// cache.parts() (state.updateCache) must match the float64 reference over the whole stream's
// keys [0, end) under the stated mask (causal, window W, sink tokens), within the reference's
// error bound for the stored values (refFeaturesBound with the cache's dtype: the reference
// attends over the same encoded keys, so the bound is the fp32 kernel's). Every layout
// (contiguous, ring, ring + sinks, paged) x dtype x chunking, including chunks of 1.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { OnlineSoftmaxState } from '../src/attention.ts';
import type { CacheDtype } from '../src/attention.ts';
import { KvCache } from '../src/kvcache.ts';
import type { KvCacheConfig } from '../src/kvcache.ts';
import { getKernelPath, info, setKernelPath } from '../src/native.ts';
import type { KernelPath } from '../src/native.ts';
import { Rng } from '../src/random.ts';
import type { RopeOptions } from '../src/rope.ts';
import type { Tensor } from '../src/tensor.ts';
import { assertWithin } from './helpers/assert.ts';
import { chunkedRescales } from './helpers/reference.ts';
import { refFeaturesBound, refRope, refRopeBound } from './helpers/reference-features.ts';

const [B, Hkv, H, dK, dV] = [2, 2, 4, 40, 24];
const SCALE = 0.3;
const DTYPES: CacheDtype[] = ['fp32', 'fp16', 'bf16', 'int8'];
const STREAM = 37;
const CHUNKINGS: number[][] = [[37], Array(37).fill(1), [3, 5, 1, 8, 2, 7, 11], [16, 1, 1, 19]];
const LAYOUTS: { name: string; config: Partial<KvCacheConfig> }[] = [
  { name: 'contiguous', config: { capacity: 4 } },
  { name: 'ring W6', config: { window: 6 } },
  { name: 'ring W6 from 2 slots', config: { window: 6, capacity: 2 } },
  { name: 'ring W5 + 3 sinks', config: { window: 5, sinkTokens: 3 } },
  { name: 'paged 4', config: { pageSize: 4, capacity: 4 } },
  { name: 'paged 16', config: { pageSize: 16 } },
  { name: 'paged 4, window 6', config: { pageSize: 4, window: 6 } },
  { name: 'paged 2, window 5 + 3 sinks', config: { pageSize: 2, window: 5, sinkTokens: 3 } },
];

/** Positions [s0, s1) of x [B,Hkv,S,d] as [B,Hkv,s1-s0,d]. */
function slice(x: ArrayLike<number>, S: number, d: number, s0: number, s1: number): Float64Array {
  const out = new Float64Array(B * Hkv * (s1 - s0) * d);
  for (let bh = 0; bh < B * Hkv; bh++)
    for (let i = 0; i < (s1 - s0) * d; i++) out[bh * (s1 - s0) * d + i] = x[(bh * S + s0) * d + i];
  return out;
}

function tensorOf(x: ArrayLike<number>, shape: number[]): Tensor {
  return { data: Float32Array.from(x), shape };
}

interface Stream {
  k: Tensor; // [B,Hkv,STREAM,dK]
  v: Tensor;
  q: Tensor; // [B,H,STREAM,dK]: query t is the token at position t
}

function stream(seed: number): Stream {
  const rng = new Rng(seed);
  return { k: rng.normalTensor([B, Hkv, STREAM, dK]), v: rng.normalTensor([B, Hkv, STREAM, dV]), q: rng.normalTensor([B, H, STREAM, dK]) };
}

/** Queries of positions [s0, s1) [B,H,s1-s0,dK]. */
function queries(s: Stream, s0: number, s1: number): Tensor {
  const T = s1 - s0, out = new Float32Array(B * H * T * dK);
  for (let bh = 0; bh < B * H; bh++) out.set(s.q.data.subarray((bh * STREAM + s0) * dK, (bh * STREAM + s1) * dK), bh * T * dK);
  return { data: out, shape: [B, H, T, dK] };
}

/** Append the stream's next n tokens, or append `draft` other tokens and crop the last `back` of the cache. */
type Op = number | { draft: number; back: number };

/**
 * Streams s through a cache of `config` in `chunks`, checking after each append that the chunk's
 * queries over cache.parts() match the reference over keys [0, end).
 */
function checkStream(t: ExecutionContext, s: Stream, config: KvCacheConfig, chunks: Op[], label: string, rope?: RopeOptions): void {
  const cache = new KvCache(config);
  const junk = new Rng(999);
  const W = config.window ?? 0, N0 = config.sinkTokens ?? 0, dtype = config.dtype ?? 'fp32';
  // With rope: the reference rotates the whole stream's keys (positions 0..STREAM-1) and each
  // chunk's queries in float64; their fp32 errors join the bound as input errors.
  const kDims = { B, H: Hkv, T: STREAM, d: dK };
  const kRef = rope ? refRope(s.k.data, kDims, 0, rope) : s.k.data;
  const dkRef = rope ? refRopeBound(s.k.data, kDims, 0, rope) : undefined;
  let start = 0, ok = true;
  for (const op of chunks) {
    if (typeof op !== 'number') {
      // Speculative decoding: a draft whose first draft - back tokens are the stream's next ones
      // (accepted) and the rest other tokens, then rolled back by `back`. What follows is checked
      // against the stream that never saw the rejected tokens.
      const keep = op.draft - op.back;
      const draft = (x: Tensor, d: number, junkX: Tensor): Tensor => {
        const out = Float32Array.from(junkX.data);
        for (let bh = 0; bh < B * Hkv; bh++) out.set(x.data.subarray((bh * STREAM + start) * d, (bh * STREAM + start + Math.max(0, keep)) * d), bh * op.draft * d);
        return { data: out, shape: [B, Hkv, op.draft, d] };
      };
      const kd = draft(s.k, dK, junk.normalTensor([B, Hkv, op.draft, dK])), vd = draft(s.v, dV, junk.normalTensor([B, Hkv, op.draft, dV]));
      if (op.draft > 0) t.deepEqual(cache.append(kd, vd), { start, end: start + op.draft });
      cache.crop(start + keep);
      start += keep;
      continue;
    }
    const n = op, end = start + n;
    const kc = tensorOf(slice(s.k.data, STREAM, dK, start, end), [B, Hkv, n, dK]), vc = tensorOf(slice(s.v.data, STREAM, dV, start, end), [B, Hkv, n, dV]);
    t.deepEqual(cache.append(kc, vc), { start, end });
    const q = queries(s, start, end);
    const state = new OnlineSoftmaxState(q, { dV, scale: SCALE, causal: true, qOffset: start, ...(W ? { window: W } : {}), ...(rope ? { rope } : {}) });
    const parts = cache.parts();
    state.updateCache(cache);
    const got = state.finalize();
    const qDims = { B, H, T: n, d: dK };
    const ref = refFeaturesBound(
      rope ? refRope(q.data, qDims, start, rope) : q.data,
      slice(kRef, STREAM, dK, 0, end),
      slice(s.v.data, STREAM, dV, 0, end),
      { B, H, Hkv, T: n, S: end, dK, dV },
      {
        scale: SCALE, causal: true, qOffset: start, window: W, sinkTokens: N0, dtype, rescales: chunkedRescales(end, parts.length),
        ...(rope ? { dq: refRopeBound(q.data, qDims, start, rope), dk: slice(dkRef!, STREAM, dK, 0, end) } : {}),
      },
    );
    const where = `${label}, chunk [${start}, ${end})`;
    ok = assertWithin(t, got.output.data, ref.out, ref.outBound, `${where} output`, [B, H, n, dV]) && ok;
    ok = assertWithin(t, got.lse.data, ref.lse, ref.lseBound, `${where} lse`, [B, H, n]) && ok;
    if (!ok) return; // the first failure says enough
    start = end;
  }
}

for (const layout of LAYOUTS)
  for (const dtype of DTYPES) {
    test(`${layout.name}, ${dtype}: chunk queries over parts() equal the full masked reference, every chunking`, (t) => {
      const s = stream(100 + DTYPES.indexOf(dtype));
      for (const chunks of CHUNKINGS) {
        const config = { batch: B, numKvHeads: Hkv, dK, dV, dtype, ...layout.config };
        checkStream(t, s, config, chunks, `${layout.name} ${dtype} chunks ${JSON.stringify(chunks.length > 8 ? `${chunks.length} chunks` : chunks)}`);
      }
    });
  }

for (const layout of LAYOUTS)
  test(`${layout.name} with rope: keys rotated on append at their absolute positions (sinks keep theirs)`, (t) => {
    const s = stream(200);
    const ropes: RopeOptions[] = [{}, { dim: 16, theta: 500, style: 'interleaved' }];
    for (const [i, rope] of ropes.entries())
      for (const chunks of [CHUNKINGS[1], CHUNKINGS[2]]) {
        const dtype = i === 0 ? 'fp32' : 'bf16';
        const config = { batch: B, numKvHeads: Hkv, dK, dV, dtype, rope, ...layout.config } as KvCacheConfig;
        checkStream(t, s, config, chunks, `${layout.name} ${dtype} rope ${JSON.stringify(rope)} chunks ${chunks.length}`, rope);
      }
  });

test('rope with explicit position ids [B,n]: stored keys equal the float64 rotation at those ids', (t) => {
  const s = stream(300);
  const rope: RopeOptions = { dim: 24 };
  // Row 1 is left-padded by 3: its ids start at 0 three tokens late (pad ids clamp to 0).
  const ids = new Int32Array(B * STREAM);
  for (let p = 0; p < STREAM; p++) [ids[p], ids[STREAM + p]] = [p, Math.max(0, p - 3)];
  for (const layout of LAYOUTS) {
    const cache = new KvCache({ batch: B, numKvHeads: Hkv, dK, dV, rope, ...layout.config });
    let start = 0;
    for (const n of CHUNKINGS[2]) {
      const end = start + n;
      const pos = new Int32Array(B * n);
      for (let b = 0; b < B; b++) pos.set(ids.subarray(b * STREAM + start, b * STREAM + end), b * n);
      cache.append(tensorOf(slice(s.k.data, STREAM, dK, start, end), [B, Hkv, n, dK]), tensorOf(slice(s.v.data, STREAM, dV, start, end), [B, Hkv, n, dV]), { positions: pos });
      start = end;
    }
    // The held positions, in order: every position for contiguous/paged, sinks + ring otherwise.
    const held = cache.parts().flatMap((p) => Array.from({ length: p.k.shape[2] }, (_, i) => p.sOffset + i));
    const snap = cache.snapshot();
    const S = held.length, heldIds = new Int32Array(B * S);
    const kHeld = new Float64Array(B * Hkv * S * dK);
    for (let b = 0; b < B; b++)
      for (const [j, p] of held.entries()) {
        heldIds[b * S + j] = ids[b * STREAM + p];
        for (let h = 0; h < Hkv; h++) kHeld.set(s.k.data.subarray(((b * Hkv + h) * STREAM + p) * dK, ((b * Hkv + h) * STREAM + p + 1) * dK), ((b * Hkv + h) * S + j) * dK);
      }
    const dims = { B, H: Hkv, T: S, d: dK };
    assertWithin(t, snap.k.data, refRope(kHeld, dims, heldIds, rope), refRopeBound(kHeld, dims, heldIds, rope), `${layout.name} stored keys`, [B, Hkv, S, dK]);
    t.deepEqual(snap.v.data, Float32Array.from(slice(s.v.data, STREAM, dV, 0, STREAM)).filter((_, i) => held.includes(Math.floor(i / dV) % STREAM)) , `${layout.name} values are not rotated`);
  }
});

for (const layout of LAYOUTS)
  test(`${layout.name}: crop (rollback of drafts) then re-append equals never having appended, every dtype`, (t) => {
    const s = stream(400);
    // Drafts of 4 rolled back wholly or in part, single-token drafts, and a rollback into stream tokens.
    const scripts: Op[][] = [
      [5, { draft: 4, back: 4 }, 1, { draft: 4, back: 3 }, 1, 1, { draft: 4, back: 4 }, 6, { draft: 1, back: 1 }, 1, 3, 1, 2, 1],
      [12, { draft: 3, back: 3 }, { draft: 5, back: 5 }, 1, 1, 1, 2, { draft: 2, back: 2 }, 4],
      [9, { draft: 0, back: 2 }, 3, 4, { draft: 4, back: 4 }, 1, { draft: 0, back: 1 }, 2],
    ];
    for (const dtype of DTYPES)
      for (const [i, script] of scripts.entries()) {
        // A window cache is given slack (capacity > window) so single-token drafts can be cropped too.
        const slack = layout.config.window ? { capacity: layout.config.window + 3 } : {};
        checkStream(t, s, { batch: B, numKvHeads: Hkv, dK, dV, dtype, ...layout.config, ...slack }, script, `${layout.name} ${dtype} script ${i}`);
      }
  });

test.serial('every kernel path folds every layout within the bound (fp32 and int8)', (t) => {
  const before = getKernelPath();
  const paths: KernelPath[] = ['blas', 'rows', 'deterministic', ...(info().tile ? (['tile'] as const) : [])];
  const s = stream(500);
  try {
    for (const path of paths) {
      setKernelPath(path);
      for (const layout of LAYOUTS)
        for (const dtype of ['fp32', 'int8'] as const)
          checkStream(t, s, { batch: B, numKvHeads: Hkv, dK, dV, dtype, ...layout.config }, CHUNKINGS[2], `${path} path, ${layout.name} ${dtype}`);
    }
  } finally {
    setKernelPath(before);
  }
});
