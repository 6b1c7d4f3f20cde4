// A pipeline of your own: `kvstream run examples/my-case.mjs --out my_fixtures` (in this repo:
// `npm run pipeline -- run examples/my-case.mjs --out my_fixtures`) writes my_fixtures/gqa_stream.npz
// and its manifest entry; `kvstream verify my_fixtures` then recomputes it.
// The default export is one definePipeline({...}) or an array of them (docs/cli.md).
import { definePipeline } from 'kvstream';

export default [
  // Streamed memory: 4 fixed queries attend to a 16-position prompt cache, then to 32 new
  // tokens arriving in chunks of 8, 8 and 16; grouped-query heads (8 query heads share 2).
  definePipeline({
    name: 'gqa_stream',
    description: 'GQA (8/2 heads) streamed memory after a 16-position prompt cache, x_kv in chunks [8,8,16]',
    seed: 7,
    recipe: 'streaming',
    chunkable: true, // --chunk N may re-split chunk_sizes (the variant gets a name of its own)
    config: { batch: 1, d_model: 64, num_heads: 8, num_kv_heads: 2, t_q: 4, t_kv: 32, t_past: 16, causal: true, chunk_sizes: [8, 8, 16] },
  }),
  // Decode: 8 tokens one at a time after a 24-token prompt, multi-query heads, no biases.
  definePipeline({
    name: 'mqa_decode',
    description: 'Multi-query decode: a 24-position prompt cache, then 8 tokens one at a time, no bias',
    seed: 8,
    recipe: 'prefill',
    config: { batch: 1, d_model: 32, num_heads: 4, num_kv_heads: 1, t_q: 8, t_kv: 8, t_past: 24, causal: true, bias: false, chunk_sizes: [1, 1, 1, 1, 1, 1, 1, 1] },
  }),
];
