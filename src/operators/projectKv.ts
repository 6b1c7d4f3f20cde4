import { defer, map } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { ArgumentError } from '../errors.ts';
import { MultiHeadAttention } from '../mha.ts';
import { show } from '../tensor.ts';
import type { KvChunk, TokenChunk } from './chunks.ts';

/** Projects each chunk's x [B,n,d_kv_in] to k [B,H_kv,n,d_k] and v [B,H_kv,n,d_v]. */
export function projectKv(mha: MultiHeadAttention): OperatorFunction<TokenChunk, KvChunk> {
  return (source) =>
    defer(() => {
      if (!(mha instanceof MultiHeadAttention)) throw new ArgumentError(`Expected mha to be a MultiHeadAttention, got ${show(mha)}`);
      return source.pipe(map((chunk) => ({ ...chunk, ...mha.projectKv(chunk.x) })));
    });
}
