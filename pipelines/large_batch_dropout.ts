import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'large_batch_dropout',
  description: 'Batch 16 with dropout p = 0.1 on the probabilities (Philox keyed by the seed); the keep mask is stored.',
  seed: 1009,
  config: caseConfig({ batch: 16, d_model: 32, num_heads: 4, t_q: 8, t_kv: 8, dropout_p: 0.1 }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c, { self: true }),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { returnWeights: true }),
} satisfies PipelineSpec;
