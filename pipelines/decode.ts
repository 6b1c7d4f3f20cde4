import { caseConfig, drawInputs, INPUT_NAMES, runPrefill } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'decode',
  description: 'Decode: a 12-position prompt cache (k_cache_in / v_cache_in), then 6 tokens one at a time, each attending causally to the cache; multi-query heads 4/1.',
  seed: 1011,
  config: caseConfig({ batch: 2, d_model: 32, num_heads: 4, num_kv_heads: 1, t_q: 6, t_kv: 6, t_past: 12, causal: true, chunk_sizes: [1, 1, 1, 1, 1, 1] }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c, { self: true, cacheIn: true }),
  run: (inputs, c, seed) => runPrefill(inputs, c, seed),
} satisfies PipelineSpec;
