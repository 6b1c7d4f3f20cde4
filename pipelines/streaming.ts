import { caseConfig, drawInputs, INPUT_NAMES, runStreaming } from './common.ts';
import type { PipelineSpec } from '../src/pipeline.ts';

export default {
  name: 'streaming',
  description: 'Streamed memory: x_kv (S 20) arrives in uneven chunks [5,1,7,3,4]; 3 fixed queries attend after each chunk (partial_outputs); the kept cache is stored.',
  seed: 1008,
  config: caseConfig({ batch: 2, d_model: 32, d_kv_in: 24, num_heads: 4, num_kv_heads: 2, t_q: 3, t_kv: 20, chunk_sizes: [5, 1, 7, 3, 4] }),
  chunkable: true,
  inputNames: INPUT_NAMES,
  inputs: (seed, c) => drawInputs(seed, c),
  run: (inputs, c) => runStreaming(inputs, c),
} satisfies PipelineSpec;
