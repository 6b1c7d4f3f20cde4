import { defer, finalize, map } from 'rxjs';
import type { OperatorFunction } from 'rxjs';
import { OnlineSoftmaxState } from '../attention.ts';
import type { Dropout, ScoreOptions } from '../attention.ts';
import { MultiHeadAttention } from '../mha.ts';
import { ArgumentError } from '../errors.ts';
import { applyRope } from '../rope.ts';
import { alloc, expectDim, expectFlag, expectOptions, show } from '../tensor.ts';
import type { Tensor } from '../tensor.ts';
import type { KvChunk } from './chunks.ts';
import { awaitEach } from '../streams/awaitEach.ts';

/**
 * Score options as OnlineSoftmaxState's (softcap, ALiBi, window, ragged rows, head sinks); rope
 * comes from the module's config: the queries are rotated at qOffset + t (or ropePositions) and
 * each chunk's keys at their absolute positions sOffset + chunk.start + s before the fold.
 */
export interface AttendOptions extends Omit<ScoreOptions, 'rope'> {
  causal?: boolean;
  /** Absolute position of query 0 (default 0); needed for causal and dropout. */
  qOffset?: number;
  dropout?: Dropout;
  /** Absolute position of token 0 of the stream (keys already seen elsewhere, e.g. a prompt). */
  sOffset?: number;
  /**
   * Fold each chunk on a worker thread (updateAsync), keeping the event loop free. Chunks are
   * folded one at a time (awaitEach), each holding its source's read-ahead credit until its
   * output has been delivered: fromNpy and the stream sources read at most their highWaterMark
   * (default 2) chunks ahead of the kernel, with nothing wired (docs/streams.md).
   */
  async?: boolean;
}

export interface PartialOutput {
  /** Attention of the fixed queries over every key so far, projected: [B,T,d_out]. */
  output: Tensor;
  /** [B,H,T] */
  lse: Tensor;
}

/**
 * Streamed memory: fixed queries xQ [B,T,d_model] attend over key/value chunks as they arrive.
 * Each chunk is folded into an online-softmax state (one per subscription) and the exact
 * attention over all keys so far is emitted with the chunk. Memory is one state, however long
 * the stream. Each emitted output and lse is a fresh tensor the subscriber may keep; the per-head
 * output before the projection lives in one buffer per subscription, reused for every chunk.
 */
export function attendChunk<C extends KvChunk>(mha: MultiHeadAttention, xQ: Tensor, options: AttendOptions = {}): OperatorFunction<C, C & PartialOutput> {
  return (source) =>
    defer(() => {
      if (!(mha instanceof MultiHeadAttention)) throw new ArgumentError(`Expected mha to be a MultiHeadAttention, got ${show(mha)}`);
      expectOptions('options', options);
      const async = expectFlag('async', options.async);
      const { causal: _c, qOffset: _q, dropout: _d, sOffset: _s, async: _a, ...score } = options;
      const rope = mha.config.rope;
      let state: OnlineSoftmaxState | undefined = new OnlineSoftmaxState(mha.projectQ(xQ), {
        ...score,
        ...(rope ? { rope } : {}),
        dV: mha.config.dV,
        scale: mha.config.scale,
        causal: options.causal,
        qOffset: options.qOffset ?? 0,
        dropout: options.dropout,
      });
      const sOffset = expectDim('sOffset', options.sOffset ?? 0, 0);
      const { B, H, T, dV } = state;
      // With rope: a chunk's keys rotated at their positions into one buffer (chunks fold one at a time).
      let rotated: Float32Array | undefined;
      const keys = (chunk: C): Tensor => {
        if (!rope) return chunk.k;
        const n = chunk.k.data.length;
        if (!rotated || rotated.length < n) rotated = new Float32Array(n);
        return applyRope(chunk.k, sOffset + chunk.start, rope, { data: rotated.subarray(0, n), shape: chunk.k.shape });
      };
      const o = alloc('o', ['B', 'H', 'T', 'd_v'], [B, H, T, dV]); // reused: projectOut reads it at once
      const emit = (chunk: C) => {
        // finalize leaves the state as it was: no copy of it per chunk.
        const { lse } = state!.finalize({ out: { output: o } });
        return { ...chunk, output: mha.projectOut(o), lse };
      };
      return source.pipe(
        async
          ? awaitEach(async (chunk: C) => {
              await state!.updateAsync(keys(chunk), chunk.v, sOffset + chunk.start);
              return emit(chunk);
            })
          : map((chunk: C) => {
              state!.update(keys(chunk), chunk.v, sOffset + chunk.start);
              return emit(chunk);
            }),
        finalize(() => (state = undefined)),
      );
    });
}
