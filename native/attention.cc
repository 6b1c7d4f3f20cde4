#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "exact.h"
#include "gemm.h"
#include "kernel_path.h"
#include "philox.h"
#include "threads.h"
#include "tile.h"
#include "vmath.h"

namespace kvs {

namespace {

constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
// A query block's scores, TQ x SK floats = 256 KiB, stay in L2 while they are exponentiated
// and multiplied into V; larger blocks than this gained nothing at d = 64 (TQ 64..512 and
// SK 256..1024 measured with T = S = 2048), smaller ones repack K and V more often.
constexpr int64_t TQ = 128, SK = 512;

// Per-thread scratch, reused across calls: scores, keep mask, converted key and value blocks.
struct Scratch {
  std::vector<float> scores, k_rows, v_rows;
  std::vector<uint8_t> keep;
  std::vector<int64_t> vis;  // tiny_update's visible keys per row
};
thread_local Scratch tls;

// Number of keys of [s_abs0, s_abs0 + n) visible from query t_abs: keys with s_abs <= t_abs.
inline int64_t visible(bool causal, int64_t t_abs, int64_t s_abs0, int64_t n) {
  if (!causal) return n;
  return std::clamp<int64_t>(t_abs - s_abs0 + 1, 0, n);
}

// A sliding window hides key s_abs from every query at or after t_abs_first.
inline bool left_of_window(const AttnOpts& o, int64_t t_abs_first, int64_t s_abs) {
  return o.window > 0 && s_abs <= t_abs_first - o.window;
}

}  // namespace

void attn_state_init(int64_t rows, int64_t d_v, float* m, float* l, float* acc) {
  std::fill(m, m + rows, NEG_INF);
  std::fill(l, l + rows, 0.0f);
  std::fill(acc, acc + rows * d_v, 0.0f);
}

namespace {

const bool AVX2_SOFTMAX = softmax_avx2();

// Folds one block of scores [R, sk] (keys at absolute s_abs0..) into the state rows m, l [R]
// and acc [R, d_v]; row r is query t_abs = pos(r).first of head pos(r).second. On return the
// scores hold the probabilities to multiply into V: exp(score - m_new) · keep / (1 - p), 0 where
// masked.
template <typename Pos>
void softmax_block(const AttnOpts& o, int64_t b, float* scores, int64_t R, int64_t sk, int64_t s_abs0, Pos pos,
                   float* m, float* l, float* acc, int64_t d_v) {
  const bool dropout = o.dropout_p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - o.dropout_p) : 1.0f;
  for (int64_t r = 0; r < R; ++r) {
    float* sc_r = scores + r * sk;
    const auto [t_abs, h] = pos(r);
    const int64_t n = visible(o.causal, t_abs, s_abs0, sk);
    if (has_score_mods(o)) apply_score_mods(o, sc_r, n, b, t_abs, h, s_abs0, [](float x) { return std::tanh(x); });
    const float mx = AVX2_SOFTMAX ? row_max_avx2(sc_r, n) : row_max(sc_r, n);
    if (mx == NEG_INF) {  // nothing visible: this block adds nothing to the row
      std::fill(sc_r, sc_r + sk, 0.0f);
      continue;
    }
    const float m_new = mx != mx ? mx : std::max(m[r], mx);  // a NaN score poisons the row, as in torch
    const float alpha = std::exp(m[r] - m_new);  // exp(-inf) = 0 for an empty row
    const float sum = AVX2_SOFTMAX ? exp_sub_sum_avx2(sc_r, n, m_new) : exp_sub_sum(sc_r, n, m_new);
    std::fill(sc_r + n, sc_r + sk, 0.0f);
    // lse counts every visible key; dropout only thins what reaches the accumulator.
    if (dropout) {
      uint8_t* keep = tls.keep.data();
      dropout_keep_row(o.seed, (uint32_t)b, (uint32_t)h, (uint32_t)t_abs, s_abs0, n, o.dropout_p, keep);
      for (int64_t s = 0; s < n; ++s) sc_r[s] = keep[s] ? sc_r[s] * keep_scale : 0.0f;
    }
    l[r] = l[r] * alpha + sum;
    m[r] = m_new;
    if (alpha != 1.0f) scale_row(acc + r * d_v, d_v, alpha);
  }
}

// Queries at or below this take the row path by default; without the direct kernels
// (kv_direct), stacked rows at or below it use vmath's few-row products instead of BLAS.
constexpr int64_t FEW_ROWS = 16;
// Rows stacked per row-path task: bounds its scores scratch to ROWS_MAX x SK floats (256 KiB).
constexpr int64_t ROWS_MAX = 128;
// Tiny heads take tiny_update from this many rows per kv head (a vector of 8 half used): at
// d 4..12 and 8..512 keys it ran 1.15-2.5x faster than the direct row kernels with 4 rows, and
// 0.88-1.7x with 2 (one thread, Zen 1).
constexpr int64_t TINY_ROWS = 4;

}  // namespace

void attn_update(const AttnDims& dims, const AttnOpts& opts, const float* q, const KvStore& kv, float* m, float* l,
                 float* acc) {
  const KernelPath path = kernel_path();
  if (path == KernelPath::Deterministic) return exact_attn_update(dims, opts, q, kv, m, l, acc);
  const int64_t B = dims.B, H = dims.H, T = dims.T, S = dims.S, d_k = dims.d_k, d_v = dims.d_v;
  if (S == 0 || T == 0) return;
  const int64_t group = H / dims.H_kv;
  const double flops = 2.0 * B * H * T * S * (d_k + d_v);
  const bool rows_path = path == KernelPath::Rows || (path == KernelPath::Auto && T <= FEW_ROWS);
  // The tile streams fp32 storage in place; other storage takes the block-converting paths.
  const bool tile_path = !rows_path && path != KernelPath::Blas && kv.dtype == KvDtype::F32 && !kv.pages.block_table &&
                         !has_score_mods(opts) && tile_supported(d_k, d_v);
  // Tiny heads with several rows per kv head: eight rows per vector (tiny_update) on fp32 rows
  // from kv_rows (in place, or converted and gathered across pages: 512 keys of at most 15
  // floats, 30 KiB, per block of K or V).
  const bool tiny = rows_path && d_k < TINY_D && d_v < TINY_D && group * T >= TINY_ROWS && !has_score_mods(opts) &&
                    opts.dropout_p == 0.0f;
  const bool direct = !tiny && rows_path && kv_direct();
  // Blocks of SK keys for tiny heads and for the direct kernels (storage read in place, following
  // a block table run by run). Other converted (half, int8) blocks of 256 keys stay in L2 on the
  // row path (256 was faster than 64 in a decode loop here: fewer BLAS calls per key); their
  // paged blocks never straddle a page.
  const int64_t rows_block = tiny || direct ? SK : kv_block_rows(kv, kv.dtype == KvDtype::F32 ? SK : 256),
                blas_block = kv_block_rows(kv, SK);

  if (rows_path) {
    // The T rows of each of a kv head's `group` query heads are contiguous in q, m, l and acc:
    // stacked, they read K and V once for the whole group. A task takes up to ROWS_MAX of them.
    const int64_t R_all = group * T, slices = (R_all + ROWS_MAX - 1) / ROWS_MAX;
    // Streamed (non-temporal prefetch) when the keys the call reads, a window's rather than the
    // whole cache's, outgrow L3. Only one row per kv head prefetches from storage: several rows
    // widen chunks into L1.
    KvStore kv_r = kv;
    const int64_t keys = opts.window > 0 ? std::min(S, opts.window + T + SK) : S;
    const int64_t bytes = B * dims.H_kv * keys * (kv_row_bytes(kv.dtype, d_k) + kv_row_bytes(kv.dtype, d_v));
    kv_r.stream = direct && R_all == 1 && bytes > kv_stream_bytes();
    if (kv_r.stream) count(kv_stream);
    parallel_for(B * dims.H_kv * slices, [&](int64_t task) {
      const int64_t bh_kv = task / slices, r0 = (task % slices) * ROWS_MAX, R = std::min(ROWS_MAX, R_all - r0);
      const int64_t b = bh_kv / dims.H_kv, h0 = (bh_kv % dims.H_kv) * group;
      const int64_t row0 = (b * H + h0) * T + r0;
      const float* q_r = q + row0 * d_k;
      float *m_r = m + row0, *l_r = l + row0, *acc_r = acc + row0 * d_v;
      const int64_t q0 = q_off(opts, b);
      auto pos = [&](int64_t r) { return std::pair<int64_t, int64_t>(q0 + (r0 + r) % T, h0 + (r0 + r) / T); };
      tls.scores.resize(ROWS_MAX * SK);
      tls.keep.resize(SK);
      tls.vis.resize(ROWS_MAX);
      float* scores = tls.scores.data();
      int64_t* vis = tls.vis.data();
      count(tiny ? attn_rows_tiny : direct ? attn_rows_direct : R == 1 ? attn_rows_sgemv : R <= FEW_ROWS ? attn_rows_dot : attn_rows_sgemm);
      const int64_t t_abs_last = q0 + T - 1;  // bounds every row's query position
      for (int64_t s0 = 0; s0 < S; s0 += rows_block) {
        const int64_t s_abs0 = opts.s_offset + s0;
        const int64_t sk = visible(opts.causal, t_abs_last, s_abs0, std::min(rows_block, S - s0));
        if (sk == 0) break;
        if (left_of_window(opts, q0, s_abs0 + sk - 1)) continue;
        if (tiny) {
          for (int64_t r = 0; r < R; ++r) vis[r] = visible(opts.causal, pos(r).first, s_abs0, sk);
          tiny_update(q_r, R, kv_rows(kv, false, bh_kv, dims.s_cap, d_k, s0, sk, tls.k_rows),
                      kv_rows(kv, true, bh_kv, dims.s_cap, d_v, s0, sk, tls.v_rows), sk, d_k, d_v, opts.scale, vis, m_r,
                      l_r, acc_r, scores);
          continue;
        }
        if (direct) {
          kv_dot(kv_r, bh_kv, dims.s_cap, d_k, s0, sk, q_r, R, opts.scale, scores, R_all == 1);
          softmax_block(opts, b, scores, R, sk, s_abs0, pos, m_r, l_r, acc_r, d_v);
          kv_accumulate(kv_r, bh_kv, dims.s_cap, d_v, s0, sk, scores, R, acc_r, R_all == 1);
          continue;
        }
        const float* kb = kv_rows(kv, false, bh_kv, dims.s_cap, d_k, s0, sk, tls.k_rows);
        if (R == 1) sgemv(false, (int)sk, (int)d_k, opts.scale, kb, (int)d_k, q_r, 0.0f, scores);
        else if (R <= FEW_ROWS) dot_rows(q_r, R, kb, sk, d_k, opts.scale, scores);
        else sgemm(false, true, (int)R, (int)sk, (int)d_k, opts.scale, q_r, (int)d_k, kb, (int)d_k, 0.0f, scores, (int)sk);
        softmax_block(opts, b, scores, R, sk, s_abs0, pos, m_r, l_r, acc_r, d_v);
        const float* vb = kv_rows(kv, true, bh_kv, dims.s_cap, d_v, s0, sk, tls.v_rows);
        if (R == 1) sgemv(true, (int)sk, (int)d_v, 1.0f, vb, (int)d_v, scores, 1.0f, acc_r);
        else if (R <= FEW_ROWS) accumulate_pv(scores, R, vb, sk, d_v, acc_r);
        else sgemm(false, false, (int)R, (int)d_v, (int)sk, 1.0f, scores, (int)sk, vb, (int)d_v, 1.0f, acc_r, (int)d_v);
      }
    }, flops);
    return;
  }

  if (tile_path) {
    // One task per (b, h, query block), on the tile kernel.
    count(attn_tile);
    const int64_t q_blocks = (T + TILE_TQ - 1) / TILE_TQ;
    parallel_for(B * H * q_blocks, [&](int64_t task) {
      const int64_t qb = task % q_blocks, bh = task / q_blocks, h = bh % H, b = bh / H;
      const int64_t t0 = qb * TILE_TQ, tq = std::min(TILE_TQ, T - t0);
      const int64_t bh_kv = b * dims.H_kv + h / group;
      const float* k = static_cast<const float*>(kv.k);
      const float* v = static_cast<const float*>(kv.v);
      tile_update(opts, b, h, q + (bh * T + t0) * d_k, tq, q_off(opts, b) + t0, k + bh_kv * dims.s_cap * d_k,
                  v + bh_kv * dims.s_cap * d_v, S, d_k, d_v, m + bh * T + t0, l + bh * T + t0, acc + (bh * T + t0) * d_v);
    }, flops);
    return;
  }

  // One task per (b, h, query block): each owns its rows of m, l, acc.
  count(attn_blas);
  const int64_t q_blocks = (T + TQ - 1) / TQ;
  parallel_for(B * H * q_blocks, [&](int64_t task) {
    const int64_t qb = task % q_blocks, bh = task / q_blocks, h = bh % H, b = bh / H;
    const int64_t t0 = qb * TQ, tq = std::min(TQ, T - t0);
    const int64_t bh_kv = b * dims.H_kv + h / group;
    const float* q_bht = q + (bh * T + t0) * d_k;
    float* m_bht = m + bh * T + t0;
    float* l_bht = l + bh * T + t0;
    float* acc_bht = acc + (bh * T + t0) * d_v;
    const int64_t q0 = q_off(opts, b);
    const int64_t t_abs_last = q0 + t0 + tq - 1;
    auto pos = [&](int64_t t) { return std::pair<int64_t, int64_t>(q0 + t0 + t, h); };

    tls.scores.resize(TQ * SK);
    tls.keep.resize(SK);
    float* scores = tls.scores.data();

    for (int64_t s0 = 0; s0 < S; s0 += blas_block) {
      const int64_t s_abs0 = opts.s_offset + s0;
      // Causal: keys after the block's last query are masked for every row; skip them.
      const int64_t sk = visible(opts.causal, t_abs_last, s_abs0, std::min(blas_block, S - s0));
      if (sk == 0) break;
      if (left_of_window(opts, q0 + t0, s_abs0 + sk - 1)) continue;
      // scores [tq, sk] = scale · q_bht · k_blockᵀ
      const float* kb = kv_rows(kv, false, bh_kv, dims.s_cap, d_k, s0, sk, tls.k_rows);
      sgemm(false, true, (int)tq, (int)sk, (int)d_k, opts.scale, q_bht, (int)d_k, kb, (int)d_k, 0.0f, scores, (int)sk);
      softmax_block(opts, b, scores, tq, sk, s_abs0, pos, m_bht, l_bht, acc_bht, d_v);
      // acc [tq, d_v] += P [tq, sk] · v_block [sk, d_v]
      const float* vb = kv_rows(kv, true, bh_kv, dims.s_cap, d_v, s0, sk, tls.v_rows);
      sgemm(false, false, (int)tq, (int)d_v, (int)sk, 1.0f, scores, (int)sk, vb, (int)d_v, 1.0f, acc_bht, (int)d_v);
    }
  }, flops);
}

void attn_merge(int64_t rows, int64_t d_v, float* m1, float* l1, float* acc1, const float* m2, const float* l2,
                const float* acc2) {
  count(merge);
  if (kernel_path() == KernelPath::Deterministic) return exact_attn_merge(rows, d_v, m1, l1, acc1, m2, l2, acc2);
  for (int64_t r = 0; r < rows; ++r) {
    if (m2[r] == NEG_INF) continue;  // state 2 saw nothing for this row
    const float m = std::max(m1[r], m2[r]);
    const float a1 = std::exp(m1[r] - m), a2 = std::exp(m2[r] - m);
    float* acc1_r = acc1 + r * d_v;
    const float* acc2_r = acc2 + r * d_v;
    for (int64_t d = 0; d < d_v; ++d) acc1_r[d] = acc1_r[d] * a1 + acc2_r[d] * a2;
    l1[r] = l1[r] * a1 + l2[r] * a2;
    m1[r] = m;
  }
}

void attn_finalize(int64_t rows, int64_t d_v, const float* m, const float* l, const float* acc, float* out,
                   float* lse) {
  attn_finalize(rows, d_v, m, l, acc, out, lse, Sinks{});
}

void attn_finalize(int64_t rows, int64_t d_v, const float* m, const float* l, const float* acc, float* out, float* lse,
                   const Sinks& sinks) {
  count(finalize);
  if (kernel_path() == KernelPath::Deterministic) return exact_attn_finalize(rows, d_v, m, l, acc, out, lse, sinks);
  for (int64_t r = 0; r < rows; ++r) {
    float m_r = m[r], l_r = l[r], a = 1.0f;  // a: rescale of acc to the max with the sink
    if (sinks.logit) {
      const float sink = sinks.at(r), m_s = m_r > sink ? m_r : sink;
      a = l_r == 0.0f ? 0.0f : std::exp(m_r - m_s);
      l_r = l_r * a + std::exp(sink - m_s);
      m_r = m_s;
    }
    const bool empty = l_r == 0.0f;  // no visible key (and no sink); a NaN sum stays NaN
    const float inv = empty ? 0.0f : a / l_r;
    for (int64_t d = 0; d < d_v; ++d) out[r * d_v + d] = acc[r * d_v + d] * inv;
    lse[r] = empty ? NEG_INF : m_r + std::log(l_r);
  }
}

void attn_probs(const AttnDims& dims, const AttnOpts& opts, const float* q, const KvStore& kv, const float* lse,
                float* probs, uint8_t* keep) {
  if (kernel_path() == KernelPath::Deterministic) return exact_attn_probs(dims, opts, q, kv, lse, probs, keep);
  count(kvs::probs);
  const int64_t H = dims.H, T = dims.T, S = dims.S, d_k = dims.d_k;
  const int64_t group = H / dims.H_kv;
  const bool dropout = opts.dropout_p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - opts.dropout_p) : 1.0f;
  parallel_for(dims.B * H, [&](int64_t bh) {
    const int64_t h = bh % H, b = bh / H;
    thread_local std::vector<float> row_scores, k_rows;
    const float* k_bh = probs ? kv_rows(kv, false, b * dims.H_kv + h / group, dims.s_cap, d_k, 0, S, k_rows) : nullptr;
    thread_local std::vector<uint8_t> row_keep;
    resize_scratch(row_scores, probs ? T * S : 0, "attn_probs scores");
    resize_scratch(row_keep, S, "attn_probs keep");
    std::fill(row_keep.begin(), row_keep.end(), 1);
    if (probs)
      sgemm(false, true, (int)T, (int)S, (int)d_k, opts.scale, q + bh * T * d_k, (int)d_k, k_bh, (int)d_k, 0.0f,
            row_scores.data(), (int)S);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t t_abs = q_off(opts, b) + t;
      if (dropout)
        dropout_keep_row(opts.seed, (uint32_t)b, (uint32_t)h, (uint32_t)t_abs, opts.s_offset, S, opts.dropout_p,
                         row_keep.data());
      if (keep) std::copy(row_keep.begin(), row_keep.end(), keep + (bh * T + t) * S);
      if (!probs) continue;
      const float lse_t = lse[bh * T + t];
      const int64_t n = lse_t == NEG_INF ? 0 : visible(opts.causal, t_abs, opts.s_offset, S);
      float* p_bht = probs + (bh * T + t) * S;
      float* sc_t = row_scores.data() + t * S;
      if (has_score_mods(opts))
        apply_score_mods(opts, sc_t, n, b, t_abs, h, opts.s_offset, [](float x) { return std::tanh(x); });
      for (int64_t s = 0; s < S; ++s)
        p_bht[s] = s < n && row_keep[s] ? std::exp(sc_t[s] - lse_t) * keep_scale : 0.0f;
    }
  }, 2.0 * dims.B * H * T * S * d_k);
}

// Products of at most this many multiply-adds skip BLAS and the thread pool (small_linear): an
// OpenBLAS call costs ~4 µs whatever its size (16x32x32: 4.9 µs through BLAS, 1.9 µs here, one
// thread, Zen 1). Kept small enough that a decode projection still splits across threads.
constexpr double SMALL_LINEAR = 1 << 16;
// A row or two streams w from memory: its cost for parallel_for's threshold is w's size, each
// float counted as the ~8 flops of sgemm time that reading it takes (~4 G floats/s from DRAM
// against ~27 GFLOP/s here), so a decode projection of 512x512 splits across threads.
constexpr double SGEMV_FLOPS_PER_W = 8.0;

namespace {
// One or two rows of x (decode) read each float of w once for ~2 flops. Split by columns, each
// thread read half of every row of w, and with w cold (a model's layers do not fit in L3) 2
// threads were no faster than one. Split by rows of w into blocks of GEMV_KB, each task streams
// contiguous memory into a partial y of its own (bench/coldlinear.ts: docs/performance.md).
// 512 rows make 4 blocks (as many tasks as the column split gave 512 columns), and a block read
// for the first row of x is still in L2 for the second. Blocks do not depend on the thread count
// and the partials are added in block order, so neither does the result.
constexpr int64_t GEMV_KB = 128;

void linear_rows_split(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y) {
  count(linear_sgemv_split);
  const int64_t blocks = (K + GEMV_KB - 1) / GEMV_KB;
  // partial [blocks, M, N]; tasks use the pointer (inside a task the name is the worker's own).
  thread_local std::vector<float> partial_tls;
  resize_scratch(partial_tls, blocks * M * N, "linear partial sums");
  float* partial = partial_tls.data();
  parallel_for(blocks, [&](int64_t c) {
    const int64_t k0 = c * GEMV_KB, kc = std::min(GEMV_KB, K - k0);
    for (int64_t i = 0; i < M; ++i)
      sgemv(true, (int)kc, (int)N, 1.0f, w + k0 * N, (int)N, x + i * K + k0, 0.0f, partial + (c * M + i) * N);
  }, SGEMV_FLOPS_PER_W * K * N);
  for (int64_t i = 0; i < M; ++i) {
    float* y_i = y + i * N;
    if (b) std::copy(b, b + N, y_i);
    else std::fill(y_i, y_i + N, 0.0f);
    for (int64_t c = 0; c < blocks; ++c) {
      const float* p = partial + (c * M + i) * N;
      for (int64_t n = 0; n < N; ++n) y_i[n] += p[n];
    }
  }
}

// Large products on the tile micro-kernel (it packs w once, which small products don't repay).
bool linear_on_tile(KernelPath path, int64_t M, int64_t K, int64_t N) {
  const bool tile = path == KernelPath::Tile ||
                    (path != KernelPath::Blas && path != KernelPath::Deterministic && M > 2 && (double)M * K * N >= 4e6);
  return tile && tile_available() && N % 16 == 0;
}
}  // namespace

void linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y) {
  const KernelPath path = kernel_path();
  if (path == KernelPath::Deterministic) return exact_linear(M, K, N, x, w, b, y);
  if (linear_on_tile(path, M, K, N)) return tile_linear(M, K, N, x, w, b, y);
  if (path == KernelPath::Auto && (double)M * K * N <= SMALL_LINEAR) {
    count(linear_small);
    return small_linear(M, K, N, x, w, b, y);
  }
  if (M <= 2 && K >= 2 * GEMV_KB) return linear_rows_split(M, K, N, x, w, b, y);
  count(M <= 2 ? linear_sgemv : linear_sgemm);
  // Tasks are (row block, column block) tiles of y; BLAS stays single-threaded inside each.
  // Few rows with a short K split the columns instead, so every thread streams its share of w.
  constexpr int64_t MB = 64;
  const int64_t row_blocks = (M + MB - 1) / MB;
  const int64_t col_blocks = row_blocks >= get_num_threads() ? 1 : std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), N / 128));
  const int64_t NB = (N + col_blocks * 16 - 1) / (col_blocks * 16) * 16;
  parallel_for(row_blocks * col_blocks, [&](int64_t task) {
    const int64_t i0 = (task / col_blocks) * MB, mb = std::min(MB, M - i0);
    if ((task % col_blocks) * NB >= N) return;
    const int64_t j0 = (task % col_blocks) * NB, nb = std::min(NB, N - j0);
    float* y_ij = y + i0 * N + j0;
    for (int64_t i = 0; i < mb; ++i) {
      if (b) std::copy(b + j0, b + j0 + nb, y_ij + i * N);
      else std::fill(y_ij + i * N, y_ij + i * N + nb, 0.0f);
    }
    // A row or two: sgemv (y_i = wᵀ x_i) skips the packing a 1-row sgemm pays for.
    if (mb <= 2) {
      for (int64_t i = 0; i < mb; ++i) sgemv(true, (int)K, (int)nb, 1.0f, w + j0, (int)N, x + (i0 + i) * K, 1.0f, y_ij + i * N);
    } else {
      sgemm(false, false, (int)mb, (int)nb, (int)K, 1.0f, x + i0 * K, (int)K, w + j0, (int)N, 1.0f, y_ij, (int)N);
    }
  }, M <= 2 ? SGEMV_FLOPS_PER_W * K * N : 2.0 * M * K * N);
}

}  // namespace kvs

namespace kvs {

namespace {
// A loop, not std::copy_n: for the short rows of small heads a memmove call cost more than the copy.
inline void copy_row(const float* src, int64_t d, float* dst) {
  for (int64_t i = 0; i < d; ++i) dst[i] = src[i];
}
// src [B, T, heads·d] -> dst [B, heads, T, d]
void split_heads(const float* src, int64_t B, int64_t T, int64_t heads, int64_t d, float* dst) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        copy_row(src + ((b * T + t) * heads + h) * d, d, dst + ((b * heads + h) * T + t) * d);
}
// src [B, heads, T, d] -> dst [B, T, heads·d]
void merge_heads(const float* src, int64_t B, int64_t heads, int64_t T, int64_t d, float* dst) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t t = 0; t < T; ++t)
        copy_row(src + ((b * heads + h) * T + t) * d, d, dst + ((b * T + t) * heads + h) * d);
}
thread_local std::vector<float> proj_scratch, mha_scratch;
}  // namespace

void project_heads(int64_t B, int64_t T, int64_t K, int64_t heads, int64_t d, const float* x, const float* w,
                   const float* b, float* out) {
  // [B,T,d] is already [B,1,T,d], and [B,1,heads·d] is [B,heads,1,d].
  if (heads == 1 || T == 1) return linear(B * T, K, heads * d, x, w, b, out);
  // The tile writes each column slab straight into its head, when a slab never straddles two
  // heads and row blocks rarely straddle two batches (a straddling block runs in two parts).
  const int64_t slab = tile_linear_slab();
  if (linear_on_tile(kernel_path(), B * T, K, heads * d) && d % slab == 0 && (B == 1 || T >= TILE_LINEAR_MB))
    return tile_linear(B * T, K, heads * d, x, w, b, out, {T, d});
  resize_scratch(proj_scratch, B * T * heads * d, "project_heads");
  linear(B * T, K, heads * d, x, w, b, proj_scratch.data());
  split_heads(proj_scratch.data(), B, T, heads, d, out);
}

void merge_project(int64_t B, int64_t heads, int64_t T, int64_t d, int64_t N, const float* o, const float* w,
                   const float* b, float* y) {
  if (heads == 1) return linear(B * T, d, N, o, w, b, y);
  resize_scratch(proj_scratch, B * T * heads * d, "merge_project");
  merge_heads(o, B, heads, T, d, proj_scratch.data());
  linear(B * T, heads * d, N, proj_scratch.data(), w, b, y);
}

void mha_forward(const MhaDims& d, const AttnOpts& opts, const MhaWeights& w, const float* x_q, const float* x_kv,
                 float* y, float* lse) {
  const int64_t nq = d.B * d.H * d.T * d.d_k, nk = d.B * d.H_kv * d.S * d.d_k, nv = d.B * d.H_kv * d.S * d.d_v;
  const int64_t rows = d.B * d.H * d.T, no = rows * d.d_v;
  // Layout of the scratch: q | k | v | m | l | acc | o_heads
  resize_scratch(mha_scratch, nq + nk + nv + 2 * rows + 2 * no, "mha_forward");
  float *q = mha_scratch.data(), *k = q + nq, *v = k + nk, *m = v + nv, *l = m + rows, *acc = l + rows, *o = acc + no;

  project_heads(d.B, d.T, d.d_model, d.H, d.d_k, x_q, w.w_q, w.b_q, q);
  project_heads(d.B, d.S, d.d_kv_in, d.H_kv, d.d_k, x_kv, w.w_k, w.b_k, k);
  project_heads(d.B, d.S, d.d_kv_in, d.H_kv, d.d_v, x_kv, w.w_v, w.b_v, v);
  AttnOpts o2 = opts;
  o2.s_offset = 0;
  const AttnDims ad{d.B, d.H, d.H_kv, d.T, d.S, d.S, d.d_k, d.d_v};
  attn_state_init(rows, d.d_v, m, l, acc);
  attn_update(ad, o2, q, k, v, m, l, acc);
  attn_finalize(rows, d.d_v, m, l, acc, o, lse);
  merge_project(d.B, d.H, d.T, d.d_v, d.d_out, o, w.w_o, w.b_o, y);
}

}  // namespace kvs
