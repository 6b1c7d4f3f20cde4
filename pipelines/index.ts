// The registry of named pipelines, sorted by name.
import type { PipelineSpec } from '../src/pipeline.ts';
import basic_self_attn_small from './basic_self_attn_small.ts';
import chunked_prefill from './chunked_prefill.ts';
import cross_attention from './cross_attention.ts';
import decode from './decode.ts';
import different_dk_dv from './different_dk_dv.ts';
import kv_sharing from './kv_sharing.ts';
import kv_sharing_multi_query from './kv_sharing_multi_query.ts';
import large_batch_dropout from './large_batch_dropout.ts';
import streaming from './streaming.ts';
import use_cached_kv from './use_cached_kv.ts';
import with_caching from './with_caching.ts';

export const PIPELINES: ReadonlyMap<string, PipelineSpec> = new Map(
  [basic_self_attn_small, chunked_prefill, cross_attention, decode, different_dk_dv, kv_sharing, kv_sharing_multi_query, large_batch_dropout, streaming, use_cached_kv, with_caching].map((p) => [p.name, p]),
);
