// Seeded, counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11), the generator
// the dropout kernel uses too. A stream with seed `seed` and stream id `stream` yields 32-bit
// words: block n = philox(counter = (n mod 2^32, floor(n / 2^32), stream, 0),
//                         key = (seed mod 2^32, floor(seed / 2^32))), words in order 0..3.
// uniform() = (word >>> 8) · 2^-24 in [0, 1); normal() = Box-Muller on two uniforms
// (u1 = (w1 >>> 8 + 1) · 2^-24 in (0, 1], u2 = (w2 >>> 8) · 2^-24), the cosine branch only,
// computed in float64 and rounded once to float32. Same seed, same bits, on every run.
import { expectSeed, numel } from './tensor.ts';
import type { Tensor } from './tensor.ts';

const M0 = 0xd2511f53, M1 = 0xcd9e8d57, W0 = 0x9e3779b9, W1 = 0xbb67ae85;

/** High and low 32 bits of the 64-bit product a·b (a, b unsigned 32-bit). */
function mulhilo(a: number, b: number): [number, number] {
  const aH = a >>> 16, aL = a & 0xffff, bH = b >>> 16, bL = b & 0xffff;
  const ll = aL * bL, lh = aL * bH, hl = aH * bL;
  const carry = ((ll >>> 16) + (lh & 0xffff) + (hl & 0xffff)) >>> 16;
  const hi = (aH * bH + (lh >>> 16) + (hl >>> 16) + carry) >>> 0;
  return [hi, Math.imul(a, b) >>> 0];
}

/** Philox4x32-10 of counter (c0..c3) under key (k0, k1); all unsigned 32-bit. */
export function philox4x32(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number): [number, number, number, number] {
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const [hi0, lo0] = mulhilo(M0, c0);
    const [hi1, lo1] = mulhilo(M1, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return [c0, c1, c2, c3];
}

export class Rng {
  private block = 0;
  private words: number[] = [];
  private readonly k0: number;
  private readonly k1: number;

  /** seed: an integer in [0, 2^53); stream: an integer in [0, 2^32) for independent streams of one seed. */
  constructor(seed: number, private readonly stream = 0) {
    expectSeed('seed', seed);
    this.k0 = seed >>> 0;
    this.k1 = Math.floor(seed / 2 ** 32) >>> 0;
  }

  nextUint32(): number {
    if (this.words.length === 0) {
      const n = this.block++;
      this.words = philox4x32(n >>> 0, Math.floor(n / 2 ** 32) >>> 0, this.stream >>> 0, 0, this.k0, this.k1).reverse();
    }
    return this.words.pop()!;
  }

  /** Uniform in [0, 1) with 24 random bits. */
  uniform(): number {
    return (this.nextUint32() >>> 8) * 2 ** -24;
  }

  /** Standard normal (Box-Muller, cosine branch). */
  normal(): number {
    const u1 = ((this.nextUint32() >>> 8) + 1) * 2 ** -24;
    const u2 = (this.nextUint32() >>> 8) * 2 ** -24;
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  /** A tensor of standard normals, drawn in row-major order. */
  normalTensor(shape: readonly number[]): Tensor {
    const data = new Float32Array(numel(shape));
    for (let i = 0; i < data.length; i++) data[i] = this.normal();
    return { data, shape: [...shape] };
  }

  /** A tensor uniform in [lo, hi), drawn in row-major order. */
  uniformTensor(shape: readonly number[], lo: number, hi: number): Tensor {
    const data = new Float32Array(numel(shape));
    for (let i = 0; i < data.length; i++) data[i] = lo + (hi - lo) * this.uniform();
    return { data, shape: [...shape] };
  }

  /** Xavier (Glorot) uniform weight [fanIn, fanOut]: U(-a, a), a = sqrt(6 / (fanIn + fanOut)). */
  xavierUniform(fanIn: number, fanOut: number): Tensor {
    const a = Math.sqrt(6 / (fanIn + fanOut));
    return this.uniformTensor([fanIn, fanOut], -a, a);
  }
}
