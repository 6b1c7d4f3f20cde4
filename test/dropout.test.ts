// Dropout: Philox4x32-10 keep bits keyed by (seed, b, h, t_abs, s_abs), independent of chunking.
import test from 'ava';
import { attention } from '../src/attention.ts';
import { binding } from '../src/native.ts';
import { philox4x32, Rng } from '../src/random.ts';
import { refAttention } from './helpers/reference.ts';
import { assertClose } from './helpers/assert.ts';

// Same fp32-vs-float64 bound as the reference grid (see attention.test.ts); dropout only
// rescales kept probabilities by 1/(1-p) <= 2 here.
const TOL = { atol: 1e-5, rtol: 1e-4 };

test('Philox4x32-10 matches the Random123 known-answer vectors', (t) => {
  t.deepEqual(philox4x32(0, 0, 0, 0, 0, 0), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
  const f = 0xffffffff;
  t.deepEqual(philox4x32(f, f, f, f, f, f), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
  t.deepEqual(philox4x32(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0), [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]);
});

/** The documented keep rule, computed in TypeScript: counter (s_abs>>2, t_abs, h, b), lane s_abs&3. */
function tsKeep(seed: number, b: number, h: number, tAbs: number, sAbs: number, p: number): number {
  const word = philox4x32(sAbs >>> 2, tAbs >>> 0, h, b, seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0)[sAbs & 3];
  return (word >>> 8) >= Math.ceil(Math.fround(p) * 2 ** 24) ? 1 : 0;
}

/** Native keep mask [B,H,T,S] for queries at qOffset.. and keys at sOffset.. */
function nativeMask(B: number, H: number, T: number, S: number, p: number, seed: number, qOffset: number, sOffset: number): Uint8Array {
  const keep = new Uint8Array(B * H * T * S);
  const dims = { B, H, Hkv: 1, T, S, sCap: S, dK: 1, dV: 1 };
  const opts = { scale: 1, causal: false, qOffset, sOffset, dropoutP: p, seed };
  binding.attnProbs(dims, opts, new Float32Array(B * H * T), new Float32Array(B * S), new Float32Array(B * H * T), null, keep);
  return keep;
}

test('the native mask equals the documented Philox rule computed independently in TypeScript', (t) => {
  const [B, H, T, S, p, seed, qOffset] = [2, 3, 4, 37, 0.3, 2 ** 35 + 12345, 100];
  const mask = nativeMask(B, H, T, S, p, seed, qOffset, 5);
  let mismatches = 0;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let tt = 0; tt < T; tt++)
        for (let s = 0; s < S; s++)
          if (mask[((b * H + h) * T + tt) * S + s] !== tsKeep(seed, b, h, qOffset + tt, 5 + s, p)) mismatches++;
  t.is(mismatches, 0);
});

test('the mask is bit-identical under any chunking of the keys', (t) => {
  const [B, H, T, S, p, seed] = [2, 2, 3, 103, 0.25, 99];
  const full = nativeMask(B, H, T, S, p, seed, 7, 0);
  for (const chunks of [[1, 1, 101], [3, 50, 50], [64, 39], [13, 2, 5, 83]]) {
    let s0 = 0;
    for (const n of chunks) {
      const part = nativeMask(B, H, T, n, p, seed, 7, s0);
      for (let row = 0; row < B * H * T; row++)
        t.deepEqual(part.subarray(row * n, (row + 1) * n), full.subarray(row * S + s0, row * S + s0 + n), `chunks ${chunks}, row ${row}, keys [${s0}, ${s0 + n})`);
      s0 += n;
    }
  }
});

test('the keep fraction is within 0.01 of 1 - p over >= 1e6 draws', (t) => {
  for (const p of [0.1, 0.5, 0.9]) {
    const mask = nativeMask(4, 8, 32, 1024, p, 1234, 0, 0); // 1,048,576 draws
    const kept = mask.reduce((a, x) => a + x, 0) / mask.length;
    t.true(Math.abs(kept - (1 - p)) < 0.01, `p=${p}: keep fraction ${kept}`);
  }
});

test('output with dropout equals the float64 reference given the independently computed mask', (t) => {
  const [B, H, Hkv, T, S, dK, dV, p, seed] = [2, 4, 2, 6, 70, 8, 5, 0.4, 31337];
  const rng = new Rng(3);
  const q = rng.normalTensor([B, H, T, dK]), k = rng.normalTensor([B, Hkv, S, dK]), v = rng.normalTensor([B, Hkv, S, dV]);
  const qOffset = S - T;
  const keep = new Uint8Array(B * H * T * S);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let tt = 0; tt < T; tt++)
        for (let s = 0; s < S; s++) keep[((b * H + h) * T + tt) * S + s] = tsKeep(seed, b, h, qOffset + tt, s, p);
  for (const causal of [false, true]) {
    const r = attention(q, k, v, { causal, dropout: { p, seed }, returnWeights: true });
    t.deepEqual(r.mask!.data, keep);
    const ref = refAttention(q.data, k.data, v.data, { B, H, Hkv, T, S, dK, dV }, { scale: 1 / Math.sqrt(dK), causal, qOffset, keep, p });
    assertClose(t, r.output.data, ref.out, TOL, `output (causal ${causal})`, r.output.shape);
    assertClose(t, r.weights!.data, ref.probs, TOL, `weights (causal ${causal})`, r.weights!.shape);
    assertClose(t, r.lse.data, ref.lse, TOL, `lse before dropout (causal ${causal})`, r.lse.shape);
  }
});

test('p = 0 is no dropout: same output as without, mask absent', (t) => {
  const rng = new Rng(8);
  const q = rng.normalTensor([1, 2, 3, 4]), k = rng.normalTensor([1, 2, 9, 4]), v = rng.normalTensor([1, 2, 9, 4]);
  const a = attention(q, k, v, { dropout: { p: 0, seed: 1 }, returnWeights: true });
  const b = attention(q, k, v, {});
  t.deepEqual(a.output.data, b.output.data);
  t.is(a.mask, undefined);
});
