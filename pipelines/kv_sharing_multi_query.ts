import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'kv_sharing_multi_query',
  description: 'Multi-query attention: 8 query heads share 1 key/value head; no mask, T 5 over S 12.',
  seed: 1005,
  config: caseConfig({ batch: 2, d_model: 64, num_heads: 8, num_kv_heads: 1, t_q: 5, t_kv: 12 }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { returnWeights: true }),
} satisfies PipelineSpec;
