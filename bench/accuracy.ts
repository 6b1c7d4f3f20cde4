// The accuracy cost of each KV cache storage type on W3 (decode, batch 1, d_model 512, 8 heads
// of 64, after a 4096-token prompt): one decode step through a cache of each dtype against the
// float64 module reference over the unrounded keys (test/helpers/module-features.ts).
// Run: npx tsx bench/accuracy.ts [--steps N]
import { concatTokens, MultiHeadAttention, Rng, sliceTokens } from '../src/index.ts';
import type { CacheDtype } from '../src/index.ts';
import { refModuleFeatures } from '../test/helpers/module-features.ts';

const [H, DM, P] = [8, 512, 4096];
const at = process.argv.indexOf('--steps');
const steps = at >= 0 ? Number(process.argv[at + 1]) : 4;
const mha = MultiHeadAttention.random({ dModel: DM, numHeads: H }, 1);
const rng = new Rng(2);
const prompt = rng.normalTensor([1, P, DM]);
const tokens = rng.normalTensor([1, steps, DM]);
const all = concatTokens([prompt, tokens]);

// The reference over the first P + i + 1 tokens, unrounded (one fold: calls 1), once per step.
const refs = Array.from({ length: steps }, (_, i) => refModuleFeatures(mha, sliceTokens(tokens, i, i + 1), sliceTokens(all, 0, P + i + 1), { causal: true, calls: 1 }));
const rows: Record<string, { output: number; lse: number; outputScale: number }> = {};
for (const dtype of ['fp32', 'fp16', 'bf16', 'int8'] as CacheDtype[]) {
  const cache = mha.newCache(1, { dtype, capacity: P + steps });
  const kv = mha.projectKv(prompt);
  cache.append(kv.k, kv.v);
  let output = 0, lse = 0, outputScale = 0;
  for (let i = 0; i < steps; i++) {
    const x = sliceTokens(tokens, i, i + 1);
    const got = mha.forward(x, x, { cache, causal: true });
    const ref = refs[i];
    for (let j = 0; j < ref.y.length; j++) {
      output = Math.max(output, Math.abs(got.output.data[j] - ref.y[j]));
      outputScale = Math.max(outputScale, Math.abs(ref.y[j]));
    }
    for (let j = 0; j < ref.lse.length; j++) lse = Math.max(lse, Math.abs(got.lse.data[j] - ref.lse[j]));
  }
  rows[dtype] = { output, lse, outputScale };
  console.log(`${dtype.padEnd(5)} max |output - float64| ${output.toExponential(2)} (outputs up to ${outputScale.toFixed(3)})   max |lse - float64| ${lse.toExponential(2)}`);
}
if (process.argv.includes('--json')) console.log(JSON.stringify(rows));
