import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'cross_attention',
  description: 'Cross-attention: d_kv_in (48) != d_model (32), d_out 40, T 5 queries over S 9 keys.',
  seed: 1002,
  config: caseConfig({ batch: 2, d_model: 32, d_kv_in: 48, d_out: 40, num_heads: 4, t_q: 5, t_kv: 9 }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { returnWeights: true }),
} satisfies PipelineSpec;
