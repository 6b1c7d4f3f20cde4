import { caseConfig, drawInputs, INPUT_NAMES, runForward } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'basic_self_attn_small',
  description: 'Self-attention, 4 heads, bias, no mask; attention weights stored.',
  seed: 1001,
  config: caseConfig({ batch: 2, d_model: 32, num_heads: 4, t_q: 6, t_kv: 6 }),
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c, { self: true }),
  run: (inputs, c, seed) => runForward(inputs, c, seed, { returnWeights: true }),
} satisfies PipelineSpec;
