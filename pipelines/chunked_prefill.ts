import { caseConfig, drawInputs, INPUT_NAMES, runPrefill } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'chunked_prefill',
  description: 'Causal self-attention over 24 tokens in chunks of 8 through a growing KV cache (grouped heads 4/2); equals one causal pass.',
  seed: 1010,
  config: caseConfig({ batch: 2, d_model: 32, num_heads: 4, num_kv_heads: 2, t_q: 24, t_kv: 24, causal: true, chunk_sizes: [8, 8, 8] }),
  chunkable: true,
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c, { self: true }),
  run: (inputs, c, seed) => runPrefill(inputs, c, seed),
} satisfies PipelineSpec;
