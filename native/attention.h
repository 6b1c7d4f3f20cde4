// Attention kernels, fp32, row-major, contiguous. No V8 here: the binding checks arguments.
//
// Shapes (DESIGN.md):
//   q    [B, H, T, d_k]
//   k    [B, H_kv, s_cap, d_k]   only rows [0, S) of each head are read (a cache's storage)
//   v    [B, H_kv, s_cap, d_v]
//   m, l [B, H, T]               online-softmax state: running max and running sum of exp
//   acc  [B, H, T, d_v]          running sum of exp(score - m) * keep / (1 - p) * v
//   out  [B, H, T, d_v], lse [B, H, T]
// Query head h reads key/value head h / (H / H_kv).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kvstore.h"

namespace kvs {

struct AttnDims {
  int64_t B, H, H_kv, T, S, s_cap, d_k, d_v;
};

struct AttnOpts {
  float scale;       // scores are q·kᵀ·scale
  bool causal;       // query t (absolute q_offset + t) sees key s (absolute s_offset + s) iff s_abs <= t_abs
  int64_t q_offset;  // absolute position of query 0
  int64_t s_offset;  // absolute position of key 0 of this chunk
  float dropout_p;   // 0 disables dropout
  uint64_t seed;     // dropout key (see philox.h)
  // Score modifiers, applied to the scaled score in this order (all off when 0 / null):
  float softcap = 0.0f;          // s = softcap · tanh(s / softcap) (Gemma 2)
  const float* alibi = nullptr;  // [H] slopes: s -= alibi[h] · |t_abs - s_abs| (FlashAttention's alibi_slopes)
  int64_t window = 0;            // key visible only if t_abs - s_abs < window (sliding window; causal bounds the right)
  // Ragged batches: batch row b's keys are valid in [kv_ranges[2b], kv_ranges[2b+1]) (absolute
  // positions; left and right padding outside), and its query 0 sits at q_offsets[b].
  const int32_t* kv_ranges = nullptr;  // [B, 2], null: every key
  const int32_t* q_offsets = nullptr;  // [B], null: q_offset for every row
};

inline bool has_score_mods(const AttnOpts& o) { return o.softcap > 0.0f || o.alibi || o.window > 0 || o.kv_ranges; }
// Absolute position of query 0 of batch row b.
inline int64_t q_off(const AttnOpts& o, int64_t b) { return o.q_offsets ? o.q_offsets[b] : o.q_offset; }

// Applies the score modifiers to scores x[0, n) of query t_abs of batch row b, head h, keys at
// s_abs0..: keys left of the window or outside the row's valid range become -inf. T is float
// (fast paths) or double (deterministic path); tanh_fn is the path's tanh.
template <typename T, typename Tanh>
inline void apply_score_mods(const AttnOpts& o, T* x, int64_t n, int64_t b, int64_t t_abs, int64_t h, int64_t s_abs0,
                             Tanh tanh_fn) {
  int64_t lo = 0;
  if (o.window > 0) lo = t_abs - o.window + 1 - s_abs0;  // s_abs <= t_abs - window is outside
  if (o.kv_ranges) {
    lo = std::max<int64_t>(lo, o.kv_ranges[2 * b] - s_abs0);
    const int64_t hi = std::clamp<int64_t>(o.kv_ranges[2 * b + 1] - s_abs0, 0, n);
    for (int64_t s = hi; s < n; ++s) x[s] = -std::numeric_limits<T>::infinity();
    n = hi;
  }
  lo = std::clamp<int64_t>(lo, 0, n);
  int64_t s = 0;
  for (; s < lo; ++s) x[s] = -std::numeric_limits<T>::infinity();
  const T cap = (T)o.softcap, slope = o.alibi ? (T)o.alibi[h] : T(0);
  for (; s < n; ++s) {
    T v = x[s];
    if (cap > 0) v = cap * tanh_fn(v / cap);
    if (o.alibi) v -= slope * (T)std::abs(t_abs - (s_abs0 + s));
    x[s] = v;
  }
}

// Empty state: m = -inf, l = 0, acc = 0.
void attn_state_init(int64_t rows, int64_t d_v, float* m, float* l, float* acc);

// Folds keys [0, S) of the cache storage kv (absolute positions s_offset + s) into the state.
void attn_update(const AttnDims& dims, const AttnOpts& opts, const float* q, const KvStore& kv, float* m, float* l,
                 float* acc);
inline void attn_update(const AttnDims& dims, const AttnOpts& opts, const float* q, const float* k, const float* v,
                        float* m, float* l, float* acc) {
  attn_update(dims, opts, q, kv_f32(k, v), m, l, acc);
}

// State 1 <- state 1 ∪ state 2 (disjoint key sets): the log-sum-exp rule. rows = B*H*T.
void attn_merge(int64_t rows, int64_t d_v, float* m1, float* l1, float* acc1, const float* m2, const float* l2,
                const float* acc2);

// out = acc / l and lse = m + log(l); a row that saw no unmasked key gives 0 and -inf.
void attn_finalize(int64_t rows, int64_t d_v, const float* m, const float* l, const float* acc, float* out,
                   float* lse);

// Sink logit of row r, when the rows are [B, H, T] and sinks [H] (null: none).
struct Sinks {
  const float* logit = nullptr;
  int64_t H = 1, T = 1;
  float at(int64_t r) const { return logit[(r / T) % H]; }
};

// attn_finalize with a learnable sink logit per head (gpt-oss, onnxruntime's head sinks): one
// more term exp(sink) in each row's softmax denominator, with no value. out = acc·e^(m-m') / l',
// lse = m' + log l' with m' = max(m, sink), l' = l·e^(m-m') + e^(sink-m'); a row that saw no key
// gives out 0 and lse = sink. Applied once, at the end: states merge without it.
void attn_finalize(int64_t rows, int64_t d_v, const float* m, const float* l, const float* acc, float* out, float* lse,
                   const Sinks& sinks);

// Probabilities after dropout, probs [B, H, T, S], and the keep mask [B, H, T, S] (1 = kept;
// all ones without dropout), from the final lse of a full pass. Either output may be null.
void attn_probs(const AttnDims& dims, const AttnOpts& opts, const float* q, const KvStore& kv, const float* lse,
                float* probs, uint8_t* keep);

// y [M, N] = x [M, K] · w [K, N] + b [N] (b may be null).
void linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y);

}  // namespace kvs

namespace kvs {

struct MhaDims {
  int64_t B, T, S, d_model, d_kv_in, d_out, H, H_kv, d_k, d_v;
};

// Weights per DESIGN.md; biases may be null.
//   w_q [d_model, H·d_k], w_k [d_kv_in, H_kv·d_k], w_v [d_kv_in, H_kv·d_v], w_o [H·d_v, d_out]
struct MhaWeights {
  const float *w_q, *b_q, *w_k, *b_k, *w_v, *b_v, *w_o, *b_o;
};

// x [B, T, K] · w [K, heads·d] + b -> out [B, heads, T, d]   (b may be null)
void project_heads(int64_t B, int64_t T, int64_t K, int64_t heads, int64_t d, const float* x, const float* w,
                   const float* b, float* out);

// o [B, heads, T, d] -> concat_h [B, T, heads·d] · w [heads·d, N] + b -> y [B, T, N]
void merge_project(int64_t B, int64_t heads, int64_t T, int64_t d, int64_t N, const float* o, const float* w,
                   const float* b, float* y);

// The whole module in one call, no cache:
//   x_q [B, T, d_model], x_kv [B, S, d_kv_in] -> y [B, T, d_out], lse [B, H, T].
// opts.s_offset is ignored (keys start at 0); scratch is per calling thread and reused.
void mha_forward(const MhaDims& dims, const AttnOpts& opts, const MhaWeights& w, const float* x_q, const float* x_kv,
                 float* y, float* lse);

}  // namespace kvs
