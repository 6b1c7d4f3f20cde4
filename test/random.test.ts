import test from 'ava';
import { Rng } from '../src/random.ts';

test('same seed, same bits; another seed or stream, other bits', (t) => {
  const a = new Rng(123).normalTensor([1000]);
  t.deepEqual(a.data, new Rng(123).normalTensor([1000]).data);
  t.notDeepEqual(a.data, new Rng(124).normalTensor([1000]).data);
  t.notDeepEqual(a.data, new Rng(123, 1).normalTensor([1000]).data);
  // Seeds above 2^32 use the key's high word.
  t.notDeepEqual(new Rng(2 ** 32 + 5).uniformTensor([64], 0, 1).data, new Rng(5).uniformTensor([64], 0, 1).data);
});

test('the first words are Philox4x32-10 of counter (0,0,0,0) under key (seed, 0)', (t) => {
  const rng = new Rng(0);
  t.deepEqual([rng.nextUint32(), rng.nextUint32(), rng.nextUint32(), rng.nextUint32()], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
});

test('normals have mean ~0 and variance ~1; uniforms stay in [0, 1)', (t) => {
  const x = new Rng(9).normalTensor([200000]).data;
  const mean = x.reduce((a, b) => a + b, 0) / x.length;
  const variance = x.reduce((a, b) => a + (b - mean) ** 2, 0) / x.length;
  // Standard errors: 1/sqrt(2e5) = 0.0022 for the mean, sqrt(2/2e5) = 0.0032 for the variance; 5 sigma.
  t.true(Math.abs(mean) < 0.011, `mean ${mean}`);
  t.true(Math.abs(variance - 1) < 0.016, `variance ${variance}`);
  const u = new Rng(10).uniformTensor([100000], 0, 1).data;
  t.true(u.every((y) => y >= 0 && y < 1));
});
