import type { ManifestEntry } from '../../src/fixtures/manifest.ts';

/** A minimal valid manifest entry for case `name`. */
export function entry(name: string, description = ''): ManifestEntry {
  return {
    name, file: `${name}.npz`, description, seed: 1,
    config: { batch: 1, d_model: 4, d_kv_in: 4, d_out: 4, num_heads: 1, num_kv_heads: 1, d_k: 4, d_v: 4, t_q: 1, t_kv: 1, t_past: 0, causal: false, q_offset: 0, scale: 0.5, dropout_p: 0, bias: false, chunk_sizes: null },
    arrays: {}, tolerance: { atol: 1e-5, rtol: 1e-4, reason: 'test' }, sha256: '0'.repeat(64), generator: 'test',
  };
}
