import { map } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import type { MultiHeadAttention } from '../mha.ts';
import type { KvChunk, TokenChunk } from './chunks.ts';

/** Projects each chunk's x [B,n,d_kv_in] to k [B,H_kv,n,d_k] and v [B,H_kv,n,d_v]. */
export function projectKv(mha: MultiHeadAttention): OperatorFunction<TokenChunk, KvChunk> {
  return map((chunk) => ({ ...chunk, ...mha.projectKv(chunk.x) }));
}
