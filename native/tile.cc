#include "tile.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernel_path.h"
#include "philox.h"
#include "threads.h"
#include "vec.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace kvs {

using namespace vec;

bool tile_available() {
#if defined(__x86_64__) && defined(__GNUC__)
  // KVSTREAM_TILE=off takes the BLAS path everywhere (CI runs the parity tests both ways).
  static const bool on = __builtin_cpu_supports("avx512f") && !(getenv("KVSTREAM_TILE") && std::string(getenv("KVSTREAM_TILE")) == "off");
  return on;
#else
  return false;
#endif
}

bool tile_supported(int64_t d_k, int64_t d_v) { return tile_available() && d_k % W == 0 && d_v % W == 0; }

#if defined(__x86_64__) && defined(__GNUC__)

namespace {

constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
constexpr int64_t SK = 512;  // keys per block: the transposed scores are SK × TILE_TQ = 256 KiB
constexpr int JN = 12;       // keys per score micro-tile (12 × 2 accumulators)
constexpr int RT = 6;        // query rows per P·V micro-tile (6 × 4 accumulators)

// One vbroadcastss (folded into the FMA as a memory operand).
__attribute__((target("avx512f"), always_inline)) inline vf bcast(const float* p) { return (vf)_mm512_set1_ps(*p); }

struct TileScratch {
  std::vector<float> qt, st, m, l, acc, alpha, kpad;
  std::vector<uint8_t> keep;
};
thread_local TileScratch tls;

// st[j][0:tqp] = Σ_d k[j][d] · qt[d][0:tqp] for JN keys; tqp is a multiple of 32.
__attribute__((target("avx512f"))) void scores_tile(const float* k, int64_t d_k, const float* qt, int64_t tqp,
                                                    float* st) {
  for (int64_t t = 0; t < tqp; t += 2 * W) {
    vf a0[JN], a1[JN];
#pragma GCC unroll 12
    for (int j = 0; j < JN; ++j) a0[j] = a1[j] = vf{};
    for (int64_t d = 0; d < d_k; ++d) {
      const vf q0 = load(qt + d * tqp + t), q1 = load(qt + d * tqp + t + W);
#pragma GCC unroll 12
      for (int j = 0; j < JN; ++j) {
        const vf kb = bcast(k + j * d_k + d);
        a0[j] += kb * q0;
        a1[j] += kb * q1;
      }
    }
#pragma GCC unroll 12
    for (int j = 0; j < JN; ++j) {
      store(st + j * tqp + t, a0[j]);
      store(st + j * tqp + t + W, a1[j]);
    }
  }
}

// acc[r][c0:c0+NV·16] += Σ_j p(j, r) · v[j][c0:...] for ROWS rows from r0, where p(j, r) sits at
// p[j·sj + r·sr] (scores stored transposed: sj = row length, sr = 1; a row-major x: sj = 1,
// sr = K), v rows have stride ldv and acc rows ldacc. ROWS × NV accumulators stay in registers.
template <int NV, int ROWS>
__attribute__((target("avx512f"))) void pv_tile(const float* p, int64_t sj, int64_t sr, int64_t r0, const float* v,
                                                int64_t ldv, int64_t c0, int64_t J, float* acc, int64_t ldacc) {
  vf a[ROWS][NV];
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) a[r][c] = load(acc + (r0 + r) * ldacc + c0 + c * W);
  const float* p_r0 = p + r0 * sr;
  for (int64_t j = 0; j < J; ++j) {
    vf vv[NV];
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) vv[c] = load(v + j * ldv + c0 + c * W);
#pragma GCC unroll 6
    for (int r = 0; r < ROWS; ++r) {
      const vf pb = bcast(p_r0 + j * sj + r * sr);
#pragma GCC unroll 4
      for (int c = 0; c < NV; ++c) a[r][c] += pb * vv[c];
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < ROWS; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) store(acc + (r0 + r) * ldacc + c0 + c * W, a[r][c]);
}

// The last 1..RT-1 rows in one pass over v (not one pass per row).
template <int NV>
__attribute__((target("avx512f"))) void pv_tail_nv(int64_t left, const float* p, int64_t sj, int64_t sr, int64_t r,
                                                   const float* v, int64_t ldv, int64_t c, int64_t J, float* acc,
                                                   int64_t ldacc) {
  count(Counter(tile_pv_tail_1 + (left - 1)));
  switch (left) {
    case 5: return pv_tile<NV, 5>(p, sj, sr, r, v, ldv, c, J, acc, ldacc);
    case 4: return pv_tile<NV, 4>(p, sj, sr, r, v, ldv, c, J, acc, ldacc);
    case 3: return pv_tile<NV, 3>(p, sj, sr, r, v, ldv, c, J, acc, ldacc);
    case 2: return pv_tile<NV, 2>(p, sj, sr, r, v, ldv, c, J, acc, ldacc);
    default: return pv_tile<NV, 1>(p, sj, sr, r, v, ldv, c, J, acc, ldacc);
  }
}

__attribute__((target("avx512f"))) void pv_tail(int64_t left, int64_t nv, const float* p, int64_t sj, int64_t sr,
                                                int64_t r, const float* v, int64_t ldv, int64_t c, int64_t J,
                                                float* acc, int64_t ldacc) {
  switch (nv) {
    case 4: return pv_tail_nv<4>(left, p, sj, sr, r, v, ldv, c, J, acc, ldacc);
    case 3: return pv_tail_nv<3>(left, p, sj, sr, r, v, ldv, c, J, acc, ldacc);
    case 2: return pv_tail_nv<2>(left, p, sj, sr, r, v, ldv, c, J, acc, ldacc);
    default: return pv_tail_nv<1>(left, p, sj, sr, r, v, ldv, c, J, acc, ldacc);
  }
}

// acc [rows, cols] += p · v over J (p as in pv_tile), for columns [c0, c0 + cols) in slabs of
// up to 64.
__attribute__((target("avx512f"))) void pv_block(const float* p, int64_t sj, int64_t sr, int64_t rows, const float* v,
                                                 int64_t ldv, int64_t c0, int64_t cols, int64_t J, float* acc,
                                                 int64_t ldacc) {
  for (int64_t c = c0; c < c0 + cols; c += 4 * W) {
    const int64_t nv = std::min<int64_t>(4, (c0 + cols - c) / W);
    int64_t r = 0;
    if (rows >= RT) count(tile_pv_tile);
    for (; r + RT <= rows; r += RT) {
      switch (nv) {
        case 4: pv_tile<4, RT>(p, sj, sr, r, v, ldv, c, J, acc, ldacc); break;
        case 3: pv_tile<3, RT>(p, sj, sr, r, v, ldv, c, J, acc, ldacc); break;
        case 2: pv_tile<2, RT>(p, sj, sr, r, v, ldv, c, J, acc, ldacc); break;
        default: pv_tile<1, RT>(p, sj, sr, r, v, ldv, c, J, acc, ldacc); break;
      }
    }
    if (r < rows) pv_tail(rows - r, nv, p, sj, sr, r, v, ldv, c, J, acc, ldacc);
  }
}

// The online-softmax step on transposed scores st [sk, NT·16] (masked entries -inf): column
// maxima, the new running max m, rescale factors alpha = exp(m_old - m_new), probabilities in
// place, and l = l·alpha + column sums. Rows of st are walked contiguously with NT independent
// accumulators per pass, so no step waits on the previous one.
template <int NT>
__attribute__((target("avx512f"))) void softmax_columns(float* st, int64_t sk, float* m, float* l, float* alpha) {
  vf acc[NT];
#pragma GCC unroll 8
  for (int i = 0; i < NT; ++i) acc[i] = splat(NEG_INF);
  for (int64_t j = 0; j < sk; ++j)
#pragma GCC unroll 8
    for (int i = 0; i < NT; ++i) acc[i] = vmax(acc[i], load(st + j * NT * W + i * W));
  vf use[NT];
#pragma GCC unroll 8
  for (int i = 0; i < NT; ++i) {
    const vf m_old = load(m + i * W), m_new = vmax(m_old, acc[i]);
    use[i] = m_new == splat(NEG_INF) ? splat(0.0f) : m_new;  // rows that saw nothing yet
    store(alpha + i * W, exp_nonpos(m_old - use[i]));
    store(m + i * W, m_new);
    acc[i] = vf{};
  }
  for (int64_t j = 0; j < sk; ++j)
#pragma GCC unroll 8
    for (int i = 0; i < NT; ++i) {
      const vf p = exp_nonpos(load(st + j * NT * W + i * W) - use[i]);
      store(st + j * NT * W + i * W, p);
      acc[i] += p;
    }
#pragma GCC unroll 8
  for (int i = 0; i < NT; ++i) store(l + i * W, load(l + i * W) * load(alpha + i * W) + acc[i]);
}

}  // namespace

__attribute__((target("avx512f"))) void tile_update(const AttnOpts& o, int64_t b, int64_t h, const float* q,
                                                    int64_t tq, int64_t t_abs0, const float* k, const float* v,
                                                    int64_t S, int64_t d_k, int64_t d_v, float* m, float* l,
                                                    float* acc) {
  const int64_t tqp = (tq + 2 * W - 1) / (2 * W) * (2 * W);  // queries padded to the micro-tile
  TileScratch& s = tls;
  resize_scratch(s.qt, d_k * tqp, "tile_update q");
  s.st.resize((SK + JN) * tqp);  // a partial last micro-tile writes up to JN rows past sk
  s.m.resize(tqp);
  s.l.resize(tqp);
  s.alpha.resize(tqp);
  resize_scratch(s.acc, tqp * d_v, "tile_update acc");
  resize_scratch(s.kpad, JN * d_k, "tile_update k");
  s.keep.resize(SK);
  // qt [d_k, tqp] = scale · qᵀ, padded queries 0; state copied in, padded rows empty.
  std::fill(s.qt.begin(), s.qt.end(), 0.0f);
  for (int64_t t = 0; t < tq; ++t)
    for (int64_t d = 0; d < d_k; ++d) s.qt[d * tqp + t] = q[t * d_k + d] * o.scale;
  std::fill(s.m.begin(), s.m.end(), NEG_INF);
  std::fill(s.l.begin(), s.l.end(), 0.0f);
  std::copy(m, m + tq, s.m.begin());
  std::copy(l, l + tq, s.l.begin());
  std::copy(acc, acc + tq * d_v, s.acc.begin());
  float *st = s.st.data(), *mq = s.m.data(), *lq = s.l.data(), *alpha = s.alpha.data();
  const int64_t t_abs_last = t_abs0 + tq - 1;
  const bool dropout = o.dropout_p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - o.dropout_p) : 1.0f;

  for (int64_t j0 = 0; j0 < S; j0 += SK) {
    const int64_t s_abs0 = o.s_offset + j0;
    int64_t sk = std::min(SK, S - j0);
    if (o.causal) sk = std::clamp<int64_t>(t_abs_last - s_abs0 + 1, 0, sk);  // keys after the last query
    if (sk == 0) break;

    // Scores, transposed: st [sk, tqp].
    int64_t j = 0;
    for (; j + JN <= sk; j += JN) scores_tile(k + (j0 + j) * d_k, d_k, s.qt.data(), tqp, st + j * tqp);
    if (j < sk) {  // the last few keys through a zero-padded copy
      std::fill(s.kpad.begin(), s.kpad.end(), 0.0f);
      std::copy(k + (j0 + j) * d_k, k + (j0 + sk) * d_k, s.kpad.begin());
      scores_tile(s.kpad.data(), d_k, s.qt.data(), tqp, st + j * tqp);
    }

    // Causal: key j is hidden from queries t < s_abs - t_abs0.
    if (o.causal) {
      for (int64_t jj = 0; jj < sk; ++jj) {
        const int64_t hide = std::min<int64_t>(tqp, std::max<int64_t>(0, s_abs0 + jj - t_abs0));
        std::fill(st + jj * tqp, st + jj * tqp + hide, NEG_INF);
      }
    }

    switch (tqp / W) {
      case 2: count(tile_softmax_2); softmax_columns<2>(st, sk, mq, lq, alpha); break;
      case 4: count(tile_softmax_4); softmax_columns<4>(st, sk, mq, lq, alpha); break;
      case 6: count(tile_softmax_6); softmax_columns<6>(st, sk, mq, lq, alpha); break;
      default: count(tile_softmax_8); softmax_columns<8>(st, sk, mq, lq, alpha); break;
    }
    // lse counts every visible key; dropout only thins what reaches the accumulator.
    if (dropout) {
      for (int64_t t = 0; t < tq; ++t) {
        dropout_keep_row(o.seed, (uint32_t)b, (uint32_t)h, (uint32_t)(t_abs0 + t), s_abs0, sk, o.dropout_p,
                         s.keep.data());
        for (int64_t jj = 0; jj < sk; ++jj) st[jj * tqp + t] = s.keep[jj] ? st[jj * tqp + t] * keep_scale : 0.0f;
      }
    }
    for (int64_t t = 0; t < tq; ++t) {
      if (alpha[t] == 1.0f) continue;
      float* a = s.acc.data() + t * d_v;
      for (int64_t c = 0; c < d_v; c += W) store(a + c, load(a + c) * alpha[t]);
    }
    // acc [tq, d_v] += Pᵀ-stored [sk, tq] · v [sk, d_v]
    pv_block(st, tqp, 1, tq, v + j0 * d_v, d_v, 0, d_v, sk, s.acc.data(), d_v);
  }
  std::copy(mq, mq + tq, m);
  std::copy(lq, lq + tq, l);
  std::copy(s.acc.begin(), s.acc.begin() + tq * d_v, acc);
}

void tile_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y) {
  // w is packed once per call into column slabs of 64: slab c holds w[:, 64c : 64c + ws] as
  // [K, ws] contiguous, so the micro-tile streams it without the large row stride of w.
  constexpr int64_t SLAB = 4 * W, MB = 96, KC = 256;
  const int64_t slabs = (N + SLAB - 1) / SLAB;
  // Rows of w up to 2 KiB apart are streamed in place; wider ones alias in L2 and are packed.
  const bool pack = N > 512;
  count(pack ? linear_tile_packed : linear_tile_inplace);
  // The caller's packed copy of w. Tasks use the pointer: inside a task the thread_local name
  // would be the worker's own (empty) vector.
  thread_local std::vector<float> wp_tls;
  float* wp = nullptr;
  if (pack) {
    resize_scratch(wp_tls, K * N, "tile_linear packed w");
    wp = wp_tls.data();
    parallel_for(slabs, [&](int64_t c) {
      const int64_t c0 = c * SLAB, ws = std::min(SLAB, N - c0);
      float* dst = wp + c0 * K;
      for (int64_t k = 0; k < K; ++k) std::copy_n(w + k * N + c0, ws, dst + k * ws);
    }, 8.0 * K * N);
  }
  const int64_t row_blocks = (M + MB - 1) / MB;
  const int64_t groups = row_blocks >= get_num_threads() ? 1 : std::min(slabs, (int64_t)get_num_threads());
  const int64_t per_group = (slabs + groups - 1) / groups;
  parallel_for(row_blocks * groups, [&](int64_t task) {
    const int64_t i0 = (task / groups) * MB, mb = std::min(MB, M - i0);
    const int64_t c_first = (task % groups) * per_group, c_last = std::min(slabs, c_first + per_group);
    if (c_first >= c_last) return;
    const float* x_i = x + i0 * K;  // broadcast in place: element (k, row r) at x_i[k + r·K]
    float* y_i = y + i0 * N;
    const int64_t col0 = c_first * SLAB, col1 = std::min(N, c_last * SLAB);
    for (int64_t i = 0; i < mb; ++i) {
      if (b) std::copy(b + col0, b + col1, y_i + i * N + col0);
      else std::fill(y_i + i * N + col0, y_i + i * N + col1, 0.0f);
    }
    for (int64_t c = c_first; c < c_last; ++c) {
      const int64_t c0 = c * SLAB, ws = std::min(SLAB, N - c0);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        if (pack) pv_block(x_i + k0, 1, K, mb, wp + c0 * K + k0 * ws, ws, 0, ws, kc, y_i + c0, N);
        else pv_block(x_i + k0, 1, K, mb, w + k0 * N, N, c0, ws, kc, y_i, N);
      }
    }
  }, 2.0 * M * K * N);
}

#else

// tile_available() is false here, so the dispatchers never call these; reaching one is a bug.
void tile_linear(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*) {
  throw std::logic_error("tile_linear: this build has no AVX-512 tile kernel");
}

void tile_update(const AttnOpts&, int64_t, int64_t, const float*, int64_t, int64_t, const float*, const float*, int64_t,
                 int64_t, int64_t, float*, float*, float*) {
  throw std::logic_error("tile_update: this build has no AVX-512 tile kernel");
}

#endif

}  // namespace kvs
