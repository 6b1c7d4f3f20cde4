// updateAsync: the same bits as update, the event loop free meanwhile, and no use while busy.
import test from 'ava';
import { lastValueFrom, toArray } from 'rxjs';
import { OnlineSoftmaxState } from '../src/attention.ts';
import { MultiHeadAttention } from '../src/mha.ts';
import { attendChunk, projectKv, splitTokens } from '../src/operators/index.ts';
import { Rng } from '../src/random.ts';

const rng = new Rng(12);
const q = rng.normalTensor([1, 8, 1024, 64]);
const k = rng.normalTensor([1, 4, 4096, 64]);
const v = rng.normalTensor([1, 4, 4096, 64]);
const opts = { dV: 64, causal: true, qOffset: 3072, dropout: { p: 0.1, seed: 3 } };

test.serial('updateAsync gives the bits of update and leaves the event loop free', async (t) => {
  const sync = new OnlineSoftmaxState(q, opts).update(k, v, 0).finalize();
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const t0 = performance.now();
  const state = await new OnlineSoftmaxState(q, opts).updateAsync(k, v, 0);
  const ms = performance.now() - t0;
  clearInterval(timer);
  const r = state.finalize();
  t.deepEqual(r.output.data, sync.output.data);
  t.deepEqual(r.lse.data, sync.lse.data);
  t.is(state.keysSeen, 4096);
  // The fold takes tens of milliseconds; timers of 1 ms kept firing meanwhile.
  t.true(ticks >= Math.min(3, Math.floor(ms / 4)), `${ticks} timer ticks during ${ms.toFixed(1)} ms`);
});

test.serial('a state is not usable while an updateAsync runs, and bad chunks reject with the usual errors', async (t) => {
  const state = new OnlineSoftmaxState(q, opts);
  const running = state.updateAsync(k, v, 0);
  const busy = { name: 'KvstreamError', message: 'Expected an idle state, got one with an updateAsync still running' };
  t.throws(() => state.update(k, v, 4096), busy);
  t.throws(() => state.finalize(), busy);
  t.throws(() => state.clone(), busy);
  await running;
  t.notThrows(() => state.clone().finalize());
  await t.throwsAsync(state.updateAsync(k, rng.normalTensor([1, 4, 4095, 64]), 4096), {
    name: 'ShapeError',
    message: 'Expected v shape [B,H_kv,S,d_v]=[1,4,4096,64] (1048576 floats), got shape [1,4,4095,64] (1048320 floats)',
  });
});

test.serial('attendChunk with async gives the same partial outputs as without', async (t) => {
  const mha = MultiHeadAttention.random({ dModel: 64, numHeads: 4, numKvHeads: 2 }, 1);
  const xQ = rng.normalTensor([2, 40, 64]), xKv = rng.normalTensor([2, 300, 64]);
  const run = (async: boolean) => lastValueFrom(splitTokens(xKv, [100, 7, 193]).pipe(projectKv(mha), attendChunk(mha, xQ, { async }), toArray()));
  const [a, b] = await Promise.all([run(false), run(true)]);
  t.deepEqual(b.map((s) => s.output.data), a.map((s) => s.output.data));
});
