// The feature reference checked against closed forms and against reference.ts's plain reference
// (written separately), so that tests built on it stand on something checked.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { Rng } from '../../src/random.ts';
import { alibiSlopes } from '../../src/attention.ts';
import { binding, getKernelPath, info, setKernelPath, setNumThreads } from '../../src/native.ts';
import type { KernelPath } from '../../src/native.ts';
import { chunkedRescales, refAttention } from './reference.ts';
import {
  keyVisible, quantizeQ8, refAlibiSlopes, refFeatures, refFeaturesBound, refRope, refRopeBound, roundBf16, roundF16, roundHalfEven, storageErrorBound, storageRound, storageSpread,
} from './reference-features.ts';
import type { FeatureDims, FeatureOpts } from './reference-features.ts';

const normal = (n: number, seed: number) => new Rng(seed, 7).normalTensor([n]).data;

/** Largest |a - b| must be <= tol; the message names it and where. */
function close(t: ExecutionContext, a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string) {
  t.is(a.length, b.length, `${what}: lengths`);
  let worst = 0, at = -1;
  for (let i = 0; i < a.length; i++) {
    const e = a[i] === b[i] ? 0 : Math.abs(a[i] - b[i]);
    if (!(e <= worst)) [worst, at] = [Number.isNaN(e) ? Infinity : e, i];
  }
  t.true(worst <= tol, `${what}: largest difference ${worst} at ${at} (${a[at]} vs ${b[at]}), allowed ${tol}`);
}

const dims = (o: Partial<FeatureDims> = {}): FeatureDims => ({ B: 2, H: 4, Hkv: 2, T: 5, S: 9, dK: 8, dV: 6, ...o });
function inputs(d: FeatureDims, seed = 1) {
  return { q: normal(d.B * d.H * d.T * d.dK, seed), k: normal(d.B * d.Hkv * d.S * d.dK, seed + 1), v: normal(d.B * d.Hkv * d.S * d.dV, seed + 2) };
}

test('with no feature, refFeatures is reference.ts refAttention (causal and not, grouped heads)', (t) => {
  const d = dims();
  const { q, k, v } = inputs(d);
  for (const causal of [false, true]) {
    const a = refFeatures(q, k, v, d, { scale: 0.4, causal, qOffset: 4 });
    const b = refAttention(q, k, v, d, { scale: 0.4, causal, qOffset: 4 });
    close(t, a.out, b.out, 1e-14, `out causal=${causal}`);
    close(t, a.lse, b.lse, 1e-14, `lse causal=${causal}`);
  }
});

test('window 1 with causal: each query sees only its own key (output = its value, lse = its score)', (t) => {
  const d = dims({ T: 9, S: 9 });
  const { q, k, v } = inputs(d, 3);
  const r = refFeatures(q, k, v, d, { scale: 0.5, causal: true, qOffset: 0, window: 1 });
  for (let b = 0; b < d.B; b++)
    for (let h = 0; h < d.H; h++)
      for (let t2 = 0; t2 < d.T; t2++) {
        const row = (b * d.H + h) * d.T + t2, kv = (b * d.Hkv + Math.floor(h / 2)) * d.S + t2;
        let dot = 0;
        for (let i = 0; i < d.dK; i++) dot += q[row * d.dK + i] * k[kv * d.dK + i];
        t.true(Math.abs(r.lse[row] - 0.5 * dot) < 1e-14, `lse row ${row}`);
        close(t, r.out.subarray(row * d.dV, (row + 1) * d.dV), v.subarray(kv * d.dV, (kv + 1) * d.dV), 1e-15, `out row ${row}`);
      }
});

test('window W sees the last W keys: equals plain attention over those keys', (t) => {
  const d = dims({ T: 4, S: 12 });
  const { q, k, v } = inputs(d, 5);
  const W = 5, qOffset = 8; // queries 8..11 see keys (t - 5, t]
  const r = refFeatures(q, k, v, d, { scale: 0.3, causal: true, qOffset, window: W });
  for (let t2 = 0; t2 < d.T; t2++) {
    // keys [tAbs - W + 1, tAbs] as a plain non-causal pass of query t alone
    const lo = qOffset + t2 - W + 1;
    const sub = sliceKeys(k, v, d, lo, qOffset + t2 + 1), qt = sliceQuery(q, d, t2);
    const p = refAttention(qt, sub.k, sub.v, { ...d, T: 1, S: W }, { scale: 0.3, causal: false, qOffset: 0 });
    close(t, pick(r.lse, d, t2, 1), p.lse, 1e-14, `lse t=${t2}`);
    close(t, pick(r.out, d, t2, d.dV), p.out, 1e-14, `out t=${t2}`);
  }
});

test('sink tokens with a window: visible keys are s < n or the window (and the mask rule itself)', (t) => {
  const o: FeatureOpts = { scale: 1, causal: true, window: 3, sinkTokens: 2 };
  const seen = (tAbs: number) => Array.from({ length: 12 }, (_, s) => s).filter((s) => keyVisible(o, 0, tAbs, s));
  t.deepEqual(seen(10), [0, 1, 8, 9, 10]);
  t.deepEqual(seen(3), [0, 1, 2, 3]);
  t.deepEqual(seen(0), [0]);
  // Attention over the gathered visible keys (positions kept for the mask-free pass) equals it.
  const d = dims({ B: 1, T: 3, S: 12 });
  const { q, k, v } = inputs(d, 9);
  const r = refFeatures(q, k, v, d, { ...o, scale: 0.35, qOffset: 9 });
  for (let t2 = 0; t2 < d.T; t2++) {
    const keep = seen(9 + t2);
    const g = gatherKeys(k, v, d, keep), qt = sliceQuery(q, d, t2);
    const p = refAttention(qt, g.k, g.v, { ...d, T: 1, S: keep.length }, { scale: 0.35, causal: false, qOffset: 0 });
    close(t, pick(r.lse, d, t2, 1), p.lse, 1e-14, `lse t=${t2}`);
    close(t, pick(r.out, d, t2, d.dV), p.out, 1e-14, `out t=${t2}`);
  }
});

test('kvRanges and qOffsets: each row equals plain attention over its own slice at its own offset', (t) => {
  const d = dims({ B: 3, T: 3, S: 10 });
  const { q, k, v } = inputs(d, 11);
  const kvRanges = [0, 10, 3, 10, 2, 7], qOffsets = [7, 7, 4]; // full, left-padded 3, ragged [2,7)
  const r = refFeatures(q, k, v, d, { scale: 0.35, causal: true, kvRanges, qOffsets });
  for (let b = 0; b < d.B; b++) {
    const [lo, hi] = [kvRanges[2 * b], kvRanges[2 * b + 1]];
    const one = { ...d, B: 1 };
    const qb = q.subarray(b * d.H * d.T * d.dK, (b + 1) * d.H * d.T * d.dK);
    const kb = k.subarray(b * d.Hkv * d.S * d.dK, (b + 1) * d.Hkv * d.S * d.dK), vb = v.subarray(b * d.Hkv * d.S * d.dV, (b + 1) * d.Hkv * d.S * d.dV);
    const sub = sliceKeys(kb, vb, one, lo, hi);
    // Causal at qOffsets[b] over keys starting at lo: query t sees slice key j iff lo + j <= qOffsets[b] + t.
    const p = refAttention(qb, sub.k, sub.v, { ...one, S: hi - lo }, { scale: 0.35, causal: true, qOffset: qOffsets[b] - lo });
    close(t, r.lse.subarray(b * d.H * d.T, (b + 1) * d.H * d.T), p.lse, 1e-14, `lse b=${b}`);
    close(t, r.out.subarray(b * d.H * d.T * d.dV, (b + 1) * d.H * d.T * d.dV), p.out, 1e-14, `out b=${b}`);
  }
  // A row that sees no key: output 0 and lse -inf.
  const empty = refFeatures(q, k, v, d, { scale: 0.35, causal: true, kvRanges: [0, 10, 8, 10, 0, 0], qOffsets: [7, 5, 4] });
  t.is(empty.lse[d.H * d.T], -Infinity);
  t.true(empty.out.subarray(d.H * d.T * d.dV, 2 * d.H * d.T * d.dV).every((x) => x === 0));
  t.true(empty.lse.subarray(2 * d.H * d.T).every((x) => x === -Infinity));
});

test('ALiBi over equal keys: probabilities are exp(-slope·distance) normalised', (t) => {
  const d = dims({ B: 1, H: 2, Hkv: 1, T: 1, S: 6, dK: 4, dV: 6 });
  const q = normal(d.H * d.dK, 2);
  const k = new Float64Array(d.S * d.dK);
  for (let s = 0; s < d.S; s++) k.set([0.3, -0.2, 0.5, 0.1], s * d.dK);
  const v = new Float64Array(d.S * d.dV);
  for (let s = 0; s < d.S; s++) v[s * d.dV + s] = 1; // one-hot: out = the probabilities
  const slopes = [0.5, 0.125];
  const r = refFeatures(q, k, v, d, { scale: 1, causal: true, qOffset: 5, alibi: slopes });
  for (let h = 0; h < d.H; h++) {
    const w = Array.from({ length: d.S }, (_, s) => Math.exp(-slopes[h] * (5 - s)));
    const sum = w.reduce((a, b) => a + b, 0);
    close(t, r.out.subarray(h * d.dV, (h + 1) * d.dV), w.map((x) => x / sum), 1e-15, `probs h=${h}`);
  }
  // Bloom's slopes: 8 heads 2^-1..2^-8; 12 heads adds the odd steps of 16.
  close(t, refAlibiSlopes(8), Array.from({ length: 8 }, (_, i) => 2 ** -(i + 1)), 0, 'slopes H=8');
  close(t, refAlibiSlopes(12), [...Array.from({ length: 8 }, (_, i) => 2 ** -(i + 1)), 2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5], 1e-16, 'slopes H=12');
});

test('alibiSlopes(H) of src is Bloom\'s get_alibi_slopes(H) (this reference) in fp32, H = 1..33', (t) => {
  for (let H = 1; H <= 33; H++) close(t, alibiSlopes(H), Array.from(refAlibiSlopes(H), Math.fround), 0, `H = ${H}`);
});

test('softcap: a huge cap changes nothing; a small one bounds every score by the cap', (t) => {
  const d = dims();
  const { q, k, v } = inputs(d, 21);
  const plain = refFeatures(q, k, v, d, { scale: 2, causal: true });
  const huge = refFeatures(q, k, v, d, { scale: 2, causal: true, softcap: 1e9 });
  close(t, huge.out, plain.out, 1e-12, 'out');
  close(t, huge.lse, plain.lse, 1e-12, 'lse');
  // cap 0.5: softmax over scores in (-0.5, 0.5): lse within log(n) ± 0.5, weights within e^±1 of uniform.
  const capped = refFeatures(q, k, v, d, { scale: 2, causal: true, softcap: 0.5 });
  const qOffset = d.S - d.T;
  for (let row = 0; row < d.B * d.H * d.T; row++) {
    const n = qOffset + (row % d.T) + 1;
    t.true(Math.abs(capped.lse[row] - Math.log(n)) < 0.5, `row ${row}: lse ${capped.lse[row]} vs log ${n}`);
  }
  // One visible key with q·k·scale = x: lse = cap·tanh(x/cap) exactly.
  const one = refFeatures([1, 2], [3, 0.5], [7], { B: 1, H: 1, Hkv: 1, T: 1, S: 1, dK: 2, dV: 1 }, { scale: 0.5, softcap: 1.5 });
  t.true(Math.abs(one.lse[0] - 1.5 * Math.tanh(2 / 1.5)) < 1e-15);
  t.is(one.out[0], 7);
});

test('head sinks: -inf is no sink; a sink is a key of score sink_h and value 0; a row with no key gives 0 and sink_h', (t) => {
  const d = dims();
  const { q, k, v } = inputs(d, 31);
  const plain = refFeatures(q, k, v, d, { scale: 0.3, causal: true });
  const none = refFeatures(q, k, v, d, { scale: 0.3, causal: true, sinks: [-Infinity, -Infinity, -Infinity, -Infinity] });
  close(t, none.out, plain.out, 0, 'out');
  close(t, none.lse, plain.lse, 0, 'lse');
  // q = 0: every score 0. With sink 0 the denominator has n + 1 equal terms.
  const zq = new Float64Array(q.length);
  const s = refFeatures(zq, k, v, d, { scale: 0.3, causal: true, sinks: [0, 0, 0, 0] }), u = refFeatures(zq, k, v, d, { scale: 0.3, causal: true });
  for (let row = 0; row < d.B * d.H * d.T; row++) {
    const n = d.S - d.T + (row % d.T) + 1;
    t.true(Math.abs(s.lse[row] - Math.log(n + 1)) < 1e-14, `lse row ${row}`);
    close(t, s.out.subarray(row * d.dV, (row + 1) * d.dV), Array.from(u.out.subarray(row * d.dV, (row + 1) * d.dV), (x) => (x * n) / (n + 1)), 1e-14, `out row ${row}`);
  }
  // Sink per head (head 1 large: its output shrinks by e^(lse_plain - lse_sink)).
  const sinks = [-1, 3, 0.5, -20];
  const w = refFeatures(q, k, v, d, { scale: 0.3, causal: true, sinks });
  for (let row = 0; row < d.B * d.H * d.T; row++) {
    const h = Math.floor(row / d.T) % d.H;
    const want = Math.log(Math.exp(plain.lse[row]) + Math.exp(sinks[h]));
    t.true(Math.abs(w.lse[row] - want) < 1e-13, `lse row ${row}`);
    close(t, w.out.subarray(row * d.dV, (row + 1) * d.dV), Array.from(plain.out.subarray(row * d.dV, (row + 1) * d.dV), (x) => x * Math.exp(plain.lse[row] - want)), 1e-14, `out row ${row}`);
  }
  const empty = refFeatures(q, k, v, d, { scale: 0.3, causal: true, qOffset: -10, sinks });
  for (let row = 0; row < d.B * d.H * d.T; row++) t.is(empty.lse[row], sinks[Math.floor(row / d.T) % d.H]);
  t.true(empty.out.every((x) => x === 0));
});

test('rope: position 0 is the identity, norms of pairs are kept, scores depend on the position difference only', (t) => {
  const rd = { B: 2, H: 3, T: 4, d: 16 };
  const x = normal(rd.B * rd.H * rd.T * rd.d, 41), y = normal(rd.B * rd.H * rd.T * rd.d, 42);
  for (const style of ['half', 'interleaved'] as const) {
    for (const dim of [16, 8]) {
      close(t, refRope(x.subarray(0, rd.B * rd.H * rd.d), { ...rd, T: 1 }, 0, { dim, style }), x.subarray(0, rd.B * rd.H * rd.d), 0, `${style} dim ${dim}: identity at 0`);
      const r = refRope(x, rd, 5, { dim, style, theta: 500 });
      const pairs = (z: ArrayLike<number>, o: number) => Array.from({ length: dim / 2 }, (_, i) =>
        style === 'half' ? Math.hypot(z[o + i], z[o + i + dim / 2]) : Math.hypot(z[o + 2 * i], z[o + 2 * i + 1]));
      for (let row = 0; row < rd.B * rd.H * rd.T; row++) {
        close(t, pairs(r, row * rd.d), pairs(x, row * rd.d), 1e-14, `${style} dim ${dim}: pair norms row ${row}`);
        close(t, r.subarray(row * rd.d + dim, (row + 1) * rd.d), x.subarray(row * rd.d + dim, (row + 1) * rd.d), 0, `${style} dim ${dim}: pass-through`);
      }
      // <rope(x, p), rope(y, p')> depends on p - p' only.
      const one = { B: 1, H: 1, T: 1, d: 16 };
      const dot = (p1: number, p2: number) => {
        const a = refRope(x.subarray(0, 16), one, [p1], { dim, style }), b = refRope(y.subarray(0, 16), one, [p2], { dim, style });
        return a.reduce((s, ai, i) => s + ai * b[i], 0);
      };
      t.true(Math.abs(dot(7, 3) - dot(104, 100)) < 1e-12, `${style} dim ${dim}: relative`);
      t.true(Math.abs(dot(7, 3) - dot(3, 7)) > 1e-6, `${style} dim ${dim}: not symmetric (the test can fail)`);
    }
  }
  // Interleaved is half-split under the channel permutation (2i, 2i+1) <-> (i, i + d/2).
  const one = { B: 1, H: 1, T: 1, d: 8 };
  const xi = x.subarray(0, 8);
  const perm = [0, 4, 1, 5, 2, 6, 3, 7]; // interleaved channel c holds half-split channel perm[c]
  const xh = new Float64Array(8);
  perm.forEach((p, c) => (xh[p] = xi[c]));
  const ri = refRope(xi, one, [13], { style: 'interleaved' }), rh = refRope(xh, one, [13], { style: 'half' });
  close(t, perm.map((p) => rh[p]), ri, 1e-15, 'interleaved = permuted half');
  // One pair by hand: angle = pos·theta^(-2i/dim), i = 1 of dim 4.
  const r1 = refRope([1, 0, 0, 0], { B: 1, H: 1, T: 1, d: 4 }, [3], { dim: 4, theta: 100, style: 'interleaved' });
  t.deepEqual(Array.from(r1), [Math.cos(3), Math.sin(3), 0, 0]);
  const r2 = refRope([0, 0, 1, 0], { B: 1, H: 1, T: 1, d: 4 }, [3], { dim: 4, theta: 100, style: 'interleaved' });
  close(t, r2, [0, 0, Math.cos(0.3), Math.sin(0.3)], 1e-16, 'pair 1');
});

test('fp16 rounding: ties to even, subnormals, overflow', (t) => {
  t.is(roundF16(1 + 2 ** -11), 1); // tie: to even (1)
  t.is(roundF16(1 + 3 * 2 ** -11), 1 + 2 ** -9); // tie: to even (up)
  t.is(roundF16(1 + 2 ** -11 + 2 ** -20), 1 + 2 ** -10);
  t.is(roundF16(65504), 65504);
  t.is(roundF16(65519.99), 65504);
  t.is(roundF16(65520), Infinity);
  t.is(roundF16(-65520), -Infinity);
  t.is(roundF16(2 ** -24), 2 ** -24);
  t.is(roundF16(2 ** -25), 0); // tie between 0 and 2^-24: even is 0
  t.is(roundF16(1.5 * 2 ** -24), 2 ** -23);
  t.is(roundF16(2 ** -14 - 2 ** -25), 2 ** -14); // largest subnormal + half quantum: tie, even is 2^-14
  t.is(roundF16(-0.1), -0.0999755859375); // numpy: float(np.float16(-0.1))
  t.is(roundF16(3.14159), 3.140625);
  t.true(Number.isNaN(roundF16(NaN)));
});

test('bf16 rounding: the upper half of the fp32, ties to even (against the bit formula)', (t) => {
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  const bits = (x: number) => {
    f[0] = x;
    const b = u[0];
    u[0] = (((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) << 16) >>> 0;
    return f[0];
  };
  const xs = [...normal(2000, 51), 1 + 2 ** -8, 1 + 3 * 2 ** -8, 2 ** -130, 3.3e38, -1e-40, 0, -0];
  for (const x of xs) t.is(roundBf16(x), bits(x), `x = ${x}`);
  t.is(roundBf16(1 + 2 ** -8), 1);
  t.is(roundBf16(1 + 3 * 2 ** -8), 1 + 2 ** -6);
});

test('int8 q8: scale per 32 channels, the largest maps to ±127, ties to even, groups of zeros stay 0', (t) => {
  const x = new Float32Array(70);
  x.set(normal(64, 61));
  x[5] = -4; // group 0's max
  for (let i = 64; i < 70; i++) x[i] = 0;
  const r = quantizeQ8(x, 1, 70);
  t.is(r.scale.length, 3);
  t.is(r.scale[0], Math.fround(4 / 127));
  t.is(r.q[5], -127);
  t.is(r.scale[2], 0);
  t.true(Array.from(r.q.subarray(64)).every((v) => v === 0));
  // Exact ties: max 127·s with s = 1 makes x = 2.5 a tie, rounded to 2 (even); 3.5 to 4.
  const tie = quantizeQ8([127, 2.5, 3.5, -2.5, -0.5], 1, 5);
  t.deepEqual(Array.from(tie.q), [127, 2, 4, -2, 0]); // Int8Array has no -0
  t.true(roundHalfEven(-0.5) === 0);
  t.is(roundHalfEven(2.5), 2);
  t.is(roundHalfEven(-1.5), -2);
});

test('storage rounding stays within storageErrorBound, and the bound is tight within 2x somewhere', (t) => {
  const rows = 8, d = 40;
  const x = Float32Array.from(normal(rows * d, 71), (z, i) => z * (i % 7 === 0 ? 30 : 1));
  for (const dtype of ['fp16', 'bf16', 'int8'] as const) {
    const y = storageRound(x, rows, d, dtype), bound = storageErrorBound(x, rows, d, dtype);
    let worst = 0, at = 0;
    for (let i = 0; i < x.length; i++) {
      const r = Math.abs(y[i] - x[i]) / bound[i];
      if (r > worst) [worst, at] = [r, i];
    }
    t.true(worst <= 1, `${dtype}: error ${Math.abs(y[at] - x[at])} at ${at} is ${worst}x its bound`);
    t.true(worst > 0.5, `${dtype}: the bound is not loose (largest ratio ${worst})`);
    // Inputs known within dx: enc(x + e) vs enc(x) within the widened bound.
    const e = Float64Array.from(x, (z) => Math.abs(z) * 1e-6 + 1e-7);
    const moved = Float32Array.from(x, (z, i) => z + (i % 2 ? e[i] : -e[i]));
    const ym = storageRound(moved, rows, d, dtype), wide = storageErrorBound(x, rows, d, dtype, e);
    for (let i = 0; i < x.length; i++) if (!(Math.abs(ym[i] - y[i]) <= wide[i])) t.fail(`${dtype}: moved input at ${i}: ${Math.abs(ym[i] - y[i])} > ${wide[i]}`);
  }
});

test('storageSpread: enc of any fp32 value within dx stays within it (random trials), and it is far below the loose bound', (t) => {
  const rows = 40, d = 40;
  const x = Float64Array.from(normal(rows * d, 73), (z, i) => Math.fround(z * (i % 9 === 0 ? 20 : 1)));
  const dx = x.map((z) => Math.abs(z) * 3e-7 + 1e-8);
  const rng = new Rng(11, 3);
  for (const dtype of ['fp16', 'bf16', 'int8'] as const) {
    const spread = storageSpread(x, rows, d, dtype, dx), base = storageRound(x, rows, d, dtype);
    let worst = 0;
    for (let trial = 0; trial < 100; trial++) {
      const y = Float32Array.from(x, (z, i) => z + (rng.uniform() * 2 - 1) * dx[i]);
      const ey = storageRound(y, rows, d, dtype);
      for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(ey[i] - base[i]) / (spread[i] || Number.MIN_VALUE) * (ey[i] === base[i] ? 0 : 1));
    }
    t.true(worst <= 1, `${dtype}: a perturbed encoding is ${worst}x the spread`);
    const loose = storageErrorBound(x, rows, d, dtype).map((e) => 2 * e);
    const mean = (a: Float64Array) => a.reduce((p, c) => p + c, 0) / a.length;
    t.true(mean(spread) < mean(loose) / 10, `${dtype}: spread ${mean(spread)} vs two roundings ${mean(loose)}`);
  }
});

test('dtype in refFeatures rounds k and v first (equal to passing rounded k, v as fp32)', (t) => {
  const d = dims({ dK: 40, dV: 36 });
  const { q, k, v } = inputs(d, 81);
  const rowsK = d.B * d.Hkv * d.S;
  for (const dtype of ['fp16', 'bf16', 'int8'] as const) {
    const a = refFeatures(q, k, v, d, { scale: 0.2, causal: true, dtype });
    const b = refFeatures(q, storageRound(k, rowsK, d.dK, dtype), storageRound(v, rowsK, d.dV, dtype), d, { scale: 0.2, causal: true });
    close(t, a.out, b.out, 0, `${dtype} out`);
    const c = refFeatures(q, k, v, d, { scale: 0.2, causal: true });
    let diff = 0;
    for (let i = 0; i < a.out.length; i++) diff = Math.max(diff, Math.abs(a.out[i] - c.out[i]));
    t.true(diff > 0, `${dtype}: rounding changes the output`);
  }
});

// --- helpers: slices and gathers of keys, one query row ---

function sliceKeys(k: ArrayLike<number>, v: ArrayLike<number>, d: FeatureDims, lo: number, hi: number) {
  return gatherKeys(k, v, d, Array.from({ length: hi - lo }, (_, j) => lo + j));
}
function gatherKeys(k: ArrayLike<number>, v: ArrayLike<number>, d: FeatureDims, keys: number[]) {
  const n = keys.length, ko = new Float64Array(d.B * d.Hkv * n * d.dK), vo = new Float64Array(d.B * d.Hkv * n * d.dV);
  for (let bh = 0; bh < d.B * d.Hkv; bh++)
    keys.forEach((s, j) => {
      for (let i = 0; i < d.dK; i++) ko[(bh * n + j) * d.dK + i] = k[(bh * d.S + s) * d.dK + i];
      for (let i = 0; i < d.dV; i++) vo[(bh * n + j) * d.dV + i] = v[(bh * d.S + s) * d.dV + i];
    });
  return { k: ko, v: vo };
}
/** Query t of every (b, h) as [B,H,1,dK]. */
function sliceQuery(q: ArrayLike<number>, d: FeatureDims, t: number) {
  const out = new Float64Array(d.B * d.H * d.dK);
  for (let bh = 0; bh < d.B * d.H; bh++) for (let i = 0; i < d.dK; i++) out[bh * d.dK + i] = q[(bh * d.T + t) * d.dK + i];
  return out;
}
/** Row t of every (b, h) of x [B,H,T,w] as [B,H,1,w]. */
function pick(x: Float64Array, d: FeatureDims, t: number, w: number) {
  const out = new Float64Array(d.B * d.H * w);
  for (let bh = 0; bh < d.B * d.H; bh++) out.set(x.subarray((bh * d.T + t) * w, (bh * d.T + t + 1) * w), bh * w);
  return out;
}

// --- the bounds against the native kernels (every path, 1 and 2 threads) ---

const PATHS: KernelPath[] = info().tile ? ['tile', 'blas', 'rows', 'auto', 'deterministic'] : ['blas', 'rows', 'auto', 'deterministic'];
const DT: Record<'fp16' | 'bf16' | 'int8', 'f16' | 'bf16' | 'i8'> = { fp16: 'f16', bf16: 'bf16', int8: 'i8' };

/** Keys [0,S) of k, v folded in parts [s0, s1, window override?] (each its own storage, encoded), then finalized with sinks. */
function nativeRun(q: Float32Array, k: Float32Array, v: Float32Array, d: FeatureDims, o: FeatureOpts, parts: [number, number, number?][]) {
  const rows = d.B * d.H * d.T;
  const m = new Float32Array(rows).fill(-Infinity), l = new Float32Array(rows), acc = new Float32Array(rows * d.dV);
  const dtype = o.dtype ?? 'fp32';
  const enc = (x: Float32Array, n: number, w: number) => {
    if (dtype === 'fp32') return { data: x, scale: null };
    const data = dtype === 'int8' ? new Int8Array(n * w) : new Uint16Array(n * w);
    const scale = dtype === 'int8' ? new Float32Array(n * Math.ceil(w / 32)) : null;
    binding.kvEncode(DT[dtype], x, data, scale, n, w);
    return { data, scale };
  };
  for (const [s0, s1, window] of parts) {
    const n = s1 - s0, part = sliceKeys(k, v, d, s0, s1);
    const ke = enc(Float32Array.from(part.k), d.B * d.Hkv * n, d.dK), ve = enc(Float32Array.from(part.v), d.B * d.Hkv * n, d.dV);
    binding.attnUpdate({ B: d.B, H: d.H, Hkv: d.Hkv, T: d.T, S: n, sCap: n, dK: d.dK, dV: d.dV },
      { scale: o.scale, causal: o.causal ?? false, qOffset: o.qOffset ?? 0, sOffset: s0, dropoutP: 0, seed: 0, kvDtype: dtype === 'fp32' ? 'f32' : DT[dtype],
        softcap: o.softcap ?? 0, alibi: o.alibi ? Float32Array.from(o.alibi) : null, window: window ?? o.window ?? 0,
        kvRanges: o.kvRanges ? Int32Array.from(o.kvRanges) : null, qOffsets: o.qOffsets ? Int32Array.from(o.qOffsets) : null },
      q, ke.data, ve.data, m, l, acc, ke.scale, ve.scale);
  }
  const out = new Float32Array(rows * d.dV), lse = new Float32Array(rows);
  binding.attnFinalize(rows, d.dV, m, l, acc, out, lse, o.sinks ? Float32Array.from(o.sinks) : null, d.T);
  return { out, lse };
}

/** got within bound of want everywhere (equal infinities pass); the message names the worst element. */
function within(t: ExecutionContext, got: ArrayLike<number>, want: ArrayLike<number>, bound: ArrayLike<number>, what: string) {
  let worst = 0, at = -1;
  for (let i = 0; i < want.length; i++) {
    if (got[i] === want[i]) continue;
    const r = Math.abs(got[i] - want[i]) / bound[i];
    if (!(r <= worst)) [worst, at] = [Number.isNaN(r) ? Infinity : r, i];
  }
  t.true(worst <= 1, `${what}: |${got[at]} - ${want[at]}| at ${at} is ${worst.toFixed(2)}x its bound ${bound[at]}`);
  if (process.env.SHOW_RATIO) t.log(`${what}: ${worst.toFixed(3)}`);
  return worst;
}

const f32 = (x: ArrayLike<number>) => Float32Array.from(x);

test.serial('the native kernels lie within refFeaturesBound for every feature, dtype and path', (t) => {
  const restore = { path: getKernelPath(), threads: info().threads };
  const d = dims({ B: 3, H: 4, Hkv: 2, T: 7, S: 40, dK: 40, dV: 36 });
  const base = inputs(d, 91);
  const q = f32(base.q), k = f32(base.k), v = f32(base.v);
  type Case = { name: string; o: FeatureOpts; parts?: [number, number, number?][] };
  const cases: Case[] = [
    { name: 'softcap', o: { scale: 0.6, causal: true, softcap: 2 } },
    { name: 'alibi', o: { scale: 0.3, causal: true, alibi: refAlibiSlopes(4) } },
    { name: 'window', o: { scale: 0.3, causal: true, window: 6 } },
    { name: 'window + sink tokens (two folds)', o: { scale: 0.3, causal: true, window: 6, sinkTokens: 4 }, parts: [[0, 4, 0], [4, 40]] },
    { name: 'ragged rows', o: { scale: 0.3, causal: true, kvRanges: [0, 40, 9, 40, 3, 20], qOffsets: [33, 33, 13] } },
    { name: 'head sinks', o: { scale: 0.3, causal: true, sinks: [-2, 0, 4, 1], qOffset: 31 } },
    { name: 'everything, chunked', o: { scale: 0.4, causal: true, softcap: 5, alibi: [0.5, 0.25, 0.1, 0.01], window: 11, kvRanges: [0, 40, 2, 40, 0, 35], qOffsets: [33, 30, 20], sinks: [0, 1, -1, 2] }, parts: [[0, 13], [13, 14], [14, 40]] },
  ];
  for (const dtype of ['fp32', 'fp16', 'bf16', 'int8'] as const) cases.push({ name: `${dtype} storage`, o: { scale: 0.3, causal: true, dtype, qOffset: 33 } });
  try {
    for (const path of PATHS)
      for (const threads of [1, 2]) {
        setKernelPath(path);
        setNumThreads(threads);
        for (const c of cases) {
          const o = { ...c.o, qOffset: c.o.qOffset ?? 33 };
          const parts = c.parts ?? [[0, d.S]];
          const ref = refFeaturesBound(q, k, v, d, { ...o, rescales: chunkedRescales(d.S, parts.length) });
          const got = nativeRun(q, k, v, d, o, parts);
          const label = `${c.name} (${path}, ${threads} threads)`;
          within(t, got.out, ref.out, ref.outBound, `${label} out`);
          within(t, got.lse, ref.lse, ref.lseBound, `${label} lse`);
        }
      }
  } finally {
    setKernelPath(restore.path);
    setNumThreads(restore.threads);
  }
});

test.serial('rope in refFeaturesBound: the native rope, then the kernels (fp32 and int8 storage, per-row positions), within the bound', (t) => {
  const d = dims({ B: 2, H: 4, Hkv: 2, T: 6, S: 30, dK: 40, dV: 36 });
  const base = inputs(d, 97);
  const q = f32(base.q), k = f32(base.k), v = f32(base.v);
  const qOffsets = [24, 10];
  const kPositions = Int32Array.from({ length: d.B * d.S }, (_, i) => (i % d.S) + 1000 * Math.floor(i / d.S));
  const qPositions = Int32Array.from({ length: d.B * d.T }, (_, i) => qOffsets[Math.floor(i / d.T)] + (i % d.T) + 1000 * Math.floor(i / d.T));
  for (const style of ['half', 'interleaved'] as const)
    for (const dtype of ['fp32', 'int8'] as const) {
      const rope = { dim: 24, theta: 500, style };
      const qr = new Float32Array(q.length), kr = new Float32Array(k.length);
      binding.rope(q, qr, { B: d.B, H: d.H, T: d.T, d: d.dK }, { rotaryDim: 24, theta: 500, interleaved: style === 'interleaved' }, qPositions);
      binding.rope(k, kr, { B: d.B, H: d.Hkv, T: d.S, d: d.dK }, { rotaryDim: 24, theta: 500, interleaved: style === 'interleaved' }, kPositions);
      const o: FeatureOpts = { scale: 0.3, causal: true, qOffsets, window: 9, dtype };
      const got = nativeRun(qr, kr, v, d, o, [[0, 11], [11, 30]]);
      const ref = refFeaturesBound(q, k, v, d, { ...o, rope: { ...rope, qPositions, kPositions }, rescales: chunkedRescales(d.S, 2) });
      within(t, got.out, ref.out, ref.outBound, `rope ${style} ${dtype} out`);
      within(t, got.lse, ref.lse, ref.lseBound, `rope ${style} ${dtype} lse`);
      // Rope matters here: the same inputs unrotated are far outside the bound.
      const plain = refFeaturesBound(q, k, v, d, { ...o, rescales: chunkedRescales(d.S, 2) });
      let far = 0;
      for (let i = 0; i < got.out.length; i++) far = Math.max(far, Math.abs(got.out[i] - plain.out[i]) / plain.outBound[i]);
      t.true(far > 1, `rope ${style} ${dtype}: unrotated reference within bound too (${far})`);
    }
});

test.serial('the bound with storage "unrounded" covers the fp16/bf16/int8 kernels against the fp32 reference, and is needed', (t) => {
  const d = dims({ B: 2, H: 4, Hkv: 2, T: 5, S: 64, dK: 64, dV: 64 });
  const base = inputs(d, 95);
  const q = f32(base.q), k = f32(base.k), v = f32(base.v);
  for (const dtype of ['fp16', 'bf16', 'int8'] as const) {
    const o: FeatureOpts = { scale: 0.125, causal: true, dtype, qOffset: 59 };
    const loose = refFeaturesBound(q, k, v, d, { ...o, rescales: chunkedRescales(d.S, 1), storage: 'unrounded' });
    const tight = refFeaturesBound(q, k, v, d, { ...o, dtype: 'fp32', rescales: chunkedRescales(d.S, 1) });
    const got = nativeRun(q, k, v, d, o, [[0, d.S]]);
    within(t, got.out, loose.out, loose.outBound, `${dtype} out vs unrounded`);
    within(t, got.lse, loose.lse, loose.lseBound, `${dtype} lse vs unrounded`);
    // The fp32 bound alone does not hold: storage rounding is visible.
    let over = 0;
    for (let i = 0; i < got.out.length; i++) over = Math.max(over, Math.abs(got.out[i] - tight.out[i]) / tight.outBound[i]);
    t.true(over > 1, `${dtype}: the fp32-only bound would have held (${over})`);
  }
});

test('native rope is within refRopeBound (half, interleaved, partial; large positions); kvEncode equals the encoders here', (t) => {
  const rd = { B: 2, H: 3, T: 5, d: 24 };
  const x = f32(normal(rd.B * rd.H * rd.T * rd.d, 101));
  const positions = Int32Array.from({ length: rd.B * rd.T }, (_, i) => (i % 2 ? 31000 + i : i));
  for (const style of ['half', 'interleaved'] as const)
    for (const dim of [24, 16, 2]) {
      const out = new Float32Array(x.length);
      binding.rope(x, out, rd, { rotaryDim: dim, theta: 10000, interleaved: style === 'interleaved' }, positions);
      const want = refRope(x, rd, positions, { dim, style }), bound = refRopeBound(x, rd, positions, { dim, style });
      within(t, out, want, bound, `rope ${style} dim ${dim}`);
    }
  const rows = 6, w = 72;
  const src = f32(normal(rows * w, 103).map((z, i) => (i % 11 === 0 ? z * 1000 : z)));
  for (const dtype of ['fp16', 'bf16'] as const) {
    const dst = new Uint16Array(rows * w);
    binding.kvEncode(DT[dtype], src, dst, null, rows, w);
    const mine = storageRound(src, rows, w, dtype);
    const back = dtype === 'bf16' ? Array.from(dst, (h) => new Float32Array(new Uint32Array([h << 16]).buffer)[0]) : Array.from(dst, halfBits);
    close(t, back, mine, 0, `kvEncode ${dtype}`);
  }
  const q8 = new Int8Array(rows * w), sc = new Float32Array(rows * 3);
  binding.kvEncode('i8', src, q8, sc, rows, w);
  const mine = quantizeQ8(src, rows, w);
  t.deepEqual(Array.from(sc), Array.from(mine.scale), 'int8 scales');
  t.deepEqual(Array.from(q8), Array.from(mine.q), 'int8 values');
});

/** IEEE binary16 bits as a number. */
function halfBits(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (e === 0 ? f * 2 ** -24 : (1 + f / 1024) * 2 ** (e - 15));
}
