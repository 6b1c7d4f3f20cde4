import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'kv_sharing',
  description: 'Grouped-query attention: 8 query heads share 2 key/value heads (4 each); causal, T 5 newest of S 12.',
  seed: 1004,
  config: caseConfig({ batch: 2, d_model: 64, num_heads: 8, num_kv_heads: 2, t_q: 5, t_kv: 12, causal: true }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { returnWeights: true }),
} satisfies PipelineSpec;
