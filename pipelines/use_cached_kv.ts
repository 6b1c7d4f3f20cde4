import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'use_cached_kv',
  description: 'A cache of 10 past positions (k_cache_in / v_cache_in) plus 4 new tokens: causal self-attention of the new tokens over all 14.',
  seed: 1007,
  config: caseConfig({ batch: 2, d_model: 32, num_heads: 4, num_kv_heads: 2, t_q: 4, t_kv: 4, t_past: 10, causal: true }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c, { self: true, cacheIn: true }),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { cache: true, returnWeights: true }),
} satisfies PipelineSpec;
