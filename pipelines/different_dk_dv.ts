import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'different_dk_dv',
  description: 'Head widths differ: d_k 8, d_v 16, 4 heads; cross-attention T 6 over S 10.',
  seed: 1003,
  config: caseConfig({ batch: 2, d_model: 32, num_heads: 4, d_k: 8, d_v: 16, t_q: 6, t_kv: 10 }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { returnWeights: true }),
} satisfies PipelineSpec;
