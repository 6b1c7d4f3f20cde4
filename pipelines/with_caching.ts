import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'with_caching',
  description: 'Causal self-attention into an empty KV cache; the cache after the pass is stored as k_cache / v_cache.',
  seed: 1006,
  config: caseConfig({ batch: 2, d_model: 32, num_heads: 4, t_q: 8, t_kv: 8, causal: true }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c, { self: true }),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { cache: true, returnWeights: true }),
} satisfies PipelineSpec;
