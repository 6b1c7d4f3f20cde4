#include "vmath.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "vec.h"

namespace kvs {

// Each kernel is compiled for AVX-512F, AVX2 (both with FMA) and baseline x86-64; each call
// branches on the level read once at load. Not target_clones: its "avx2" clone had no FMA, so
// every multiply-add ran as two instructions on AVX2 CPUs (half small_linear's rate here, Zen 1).
// Not an ifunc: a resolver runs before the addon's own relocations are done, and its getenv
// call crashed the load under LD_BIND_NOW=1.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVS_MULTI 1
namespace {
// What the CPU runs, lowered by KVSTREAM_VMATH=avx2|baseline (to test the other variants on a
// machine that would not pick them).
Isa detect_level() {
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  Isa level = fma && __builtin_cpu_supports("avx512f") ? Isa::Avx512f
              : fma && __builtin_cpu_supports("avx2")  ? Isa::Avx2
                                                       : Isa::Baseline;
  const char* env = std::getenv("KVSTREAM_VMATH");
  if (env && std::strcmp(env, "baseline") == 0) level = Isa::Baseline;
  if (env && std::strcmp(env, "avx2") == 0 && level > Isa::Avx2) level = Isa::Avx2;
  return level;
}
// Set by this file's static initialisation; a kernel called before it (from another file's
// static initialiser) sees the zero-initialised Baseline, which runs anywhere.
const Isa LEVEL = detect_level();
}  // namespace
#define KVS_KERNEL(ret, name, params, args)                                                               \
  __attribute__((target("avx512f,fma"))) static ret name##_avx512f params { return name##_body args; }  \
  __attribute__((target("avx2,fma"))) static ret name##_avx2fma params { return name##_body args; }     \
  static ret name##_baseline params { return name##_body args; }                                          \
  ret name params {                                                                                       \
    return LEVEL == Isa::Avx512f ? name##_avx512f args : LEVEL == Isa::Avx2 ? name##_avx2fma args : name##_baseline args; \
  }
#else
#define KVS_KERNEL(ret, name, params, args) \
  ret name params { return name##_body args; }
#endif

Isa vmath_level() {
#ifdef KVS_MULTI
  return LEVEL;
#else
  return Isa::Baseline;
#endif
}

const char* vmath_isa() {
  static const char* const names[] = {"baseline", "avx2", "avx512f"};
  return names[(int)vmath_level()];
}

using namespace vec;

KVS_INLINE float row_max_body(const float* x, int64_t n) {
  vf m = splat<vf>(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + W <= n; i += W) m = vmax(m, load<vf>(x + i));
  float r = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < W; ++j) r = r > m[j] || r != r ? r : m[j];  // NaN propagates
  for (; i < n; ++i) r = r > x[i] || r != r ? r : x[i];
  return r;
}

KVS_INLINE float exp_sub_sum_body(float* x, int64_t n, float m) {
  vf sum = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf e = exp_nonpos(load<vf>(x + i) - m);
    store(x + i, e);
    sum += e;
  }
  if (i < n) {  // tail: pad with -inf, whose exp is 0
    float tail[W];
    for (int j = 0; j < W; ++j) tail[j] = i + j < n ? x[i + j] : -std::numeric_limits<float>::infinity();
    const vf e = exp_nonpos(load<vf>(tail) - m);
    for (int j = 0; i + j < n; ++j) x[i + j] = e[j];
    sum += e;
  }
  float s = 0.0f;
  for (int j = 0; j < W; ++j) s += sum[j];
  return s;
}

KVS_INLINE void scale_row_body(float* x, int64_t n, float a) {
  int64_t i = 0;
  for (; i + W <= n; i += W) store(x + i, load<vf>(x + i) * a);
  for (; i < n; ++i) x[i] *= a;
}

// Each key row is read once for all query rows; d is walked in 16-wide vectors (d % 16 == 0,
// the common case) or scalars.
KVS_INLINE void dot_rows_body(const float* q, int64_t rows, const float* k, int64_t n, int64_t d, float scale, float* out) {
  for (int64_t s = 0; s < n; ++s) {
    const float* k_s = k + s * d;
    for (int64_t i = 0; i < rows; ++i) {
      const float* q_i = q + i * d;
      float dot = 0.0f;
      int64_t j = 0;
      if (d % W == 0) {
        vf acc = {};
        for (; j < d; j += W) acc += load<vf>(q_i + j) * load<vf>(k_s + j);
        for (int e = 0; e < W; ++e) dot += acc[e];
      }
      for (; j < d; ++j) dot += q_i[j] * k_s[j];
      out[i * n + s] = dot * scale;
    }
  }
}

KVS_INLINE void accumulate_pv_body(const float* p, int64_t rows, const float* v, int64_t n, int64_t d, float* acc) {
  for (int64_t i = 0; i < rows; ++i) {
    float* acc_i = acc + i * d;
    const float* p_i = p + i * n;
    int64_t j = 0;
    for (; j + W <= d; j += W) {
      vf a = load<vf>(acc_i + j);
      for (int64_t s = 0; s < n; ++s) a += p_i[s] * load<vf>(v + s * d + j);
      store(acc_i + j, a);
    }
    for (; j < d; ++j) {
      float a = acc_i[j];
      for (int64_t s = 0; s < n; ++s) a += p_i[s] * v[s * d + j];
      acc_i[j] = a;
    }
  }
}

// The kernels below use 8-float vectors (vec::v8): GCC spills 16-float accumulators on AVX2
// (16 ymm registers).

// Two passes over the keys per group of eight rows: scores (and their max) into `scores`
// [n, 8], then exp and P·V into accT [d_v, 8]. The state's NaN and empty-row rules are
// softmax_block's: a NaN score poisons its row; a row with no visible key keeps m, l, acc.
KVS_INLINE void tiny_update_body(const float* q, int64_t R, const float* k, const float* v, int64_t n, int64_t d_k,
                                 int64_t d_v, float scale, const int64_t* vis, float* m, float* l, float* acc,
                                 float* scores) {
  constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
  const v8 neg_inf = v8{} + NEG_INF;
  for (int64_t r0 = 0; r0 < R; r0 += 8) {
    const int lanes = (int)std::min<int64_t>(8, R - r0);
    v8 qT[TINY_D], accT[TINY_D];  // qT[j] lane i: q [r0 + i, j]; padding lanes 0
    for (int64_t j = 0; j < d_k; ++j) qT[j] = v8{};
    for (int64_t j = 0; j < d_v; ++j) accT[j] = v8{};
    v8i n_vis = {};  // padding lanes see no key
    v8 m_old = neg_inf, l_old = {};
    for (int i = 0; i < lanes; ++i) {
      for (int64_t j = 0; j < d_k; ++j) qT[j][i] = q[(r0 + i) * d_k + j];
      n_vis[i] = (int32_t)vis[r0 + i];
      m_old[i] = m[r0 + i];
      l_old[i] = l[r0 + i];
    }
    // Four keys per step in both passes: their dot and exp chains interleave (one key at a time,
    // each exp's dependent FMAs stalled the FP scheduler here: ~65 cycles per key).
    // The lambdas are always_inline: a lambda does not take its enclosing function's target, so
    // one left out of line (GCC did at -O1) is compiled once for baseline x86-64 and its v8
    // argument and result cross between two calling conventions (it crashed the coverage build).
    auto score = [&](int64_t s, v8 a) __attribute__((always_inline)) {
      a = (v8i{} + (int32_t)s) < n_vis ? a * scale : neg_inf;
      store(scores + 8 * s, a);
      return a;
    };
    v8 mx = neg_inf;
    int64_t s = 0;
    for (; s + 4 <= n; s += 4) {
      const float* k_s = k + s * d_k;
      v8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t j = 0; j < d_k; ++j) {
        const v8 q_j = qT[j];
        a0 += q_j * k_s[j], a1 += q_j * k_s[d_k + j], a2 += q_j * k_s[2 * d_k + j], a3 += q_j * k_s[3 * d_k + j];
      }
      mx = vmax_t(vmax_t(mx, score(s, a0)), score(s + 1, a1));
      mx = vmax_t(vmax_t(mx, score(s + 2, a2)), score(s + 3, a3));
    }
    for (; s < n; ++s) {
      v8 a = {};
      for (int64_t j = 0; j < d_k; ++j) a += qT[j] * k[s * d_k + j];
      mx = vmax_t(mx, score(s, a));
    }
    const v8i empty = mx == neg_inf;
    const v8 m_new = mx != mx ? mx : (m_old < mx ? mx : m_old);  // std::max(m_old, mx) unless mx is NaN
    const v8 m_sub = m_new == neg_inf ? v8{} : m_new;  // exp(-inf - m_sub) = 0, never NaN
    const v8 alpha = empty ? v8{} + 1.0f : exp_nonpos_t<v8, v8i>(m_old - m_new);
    auto prob = [&](int64_t s) __attribute__((always_inline)) { return exp_nonpos_t<v8, v8i>(load<v8>(scores + 8 * s) - m_sub); };
    v8 sum = {};
    for (s = 0; s + 4 <= n; s += 4) {
      const v8 p0 = prob(s), p1 = prob(s + 1), p2 = prob(s + 2), p3 = prob(s + 3);
      sum += (p0 + p1) + (p2 + p3);
      const float* v_s = v + s * d_v;
      for (int64_t j = 0; j < d_v; ++j)
        accT[j] += p0 * v_s[j] + p1 * v_s[d_v + j] + p2 * v_s[2 * d_v + j] + p3 * v_s[3 * d_v + j];
    }
    for (; s < n; ++s) {
      const v8 p = prob(s);
      sum += p;
      for (int64_t j = 0; j < d_v; ++j) accT[j] += p * v[s * d_v + j];
    }
    const v8 l_new = l_old * alpha + sum;  // an empty row: alpha 1, sum 0, m_new = m_old
    for (int i = 0; i < lanes; ++i) {
      float* acc_r = acc + (r0 + i) * d_v;
      for (int64_t j = 0; j < d_v; ++j) acc_r[j] = acc_r[j] * alpha[i] + accT[j][i];
      m[r0 + i] = m_new[i];
      l[r0 + i] = l_new[i];
    }
  }
}

// One row of small_linear, columns [j, N): 32 at a time, then 8, then one.
KVS_INLINE void small_linear_cols(int64_t K, int64_t N, const float* x_i, const float* w, const float* b, float* y_i,
                                  int64_t j) {
  for (; j + 32 <= N; j += 32) {
    v8 a0 = b ? load<v8>(b + j) : v8{}, a1 = b ? load<v8>(b + j + 8) : v8{};
    v8 a2 = b ? load<v8>(b + j + 16) : v8{}, a3 = b ? load<v8>(b + j + 24) : v8{};
    for (int64_t k = 0; k < K; ++k) {
      const float* w_k = w + k * N + j;
      const float x_ik = x_i[k];
      a0 += x_ik * load<v8>(w_k);
      a1 += x_ik * load<v8>(w_k + 8);
      a2 += x_ik * load<v8>(w_k + 16);
      a3 += x_ik * load<v8>(w_k + 24);
    }
    store(y_i + j, a0), store(y_i + j + 8, a1), store(y_i + j + 16, a2), store(y_i + j + 24, a3);
  }
  for (; j + 8 <= N; j += 8) {
    v8 a = b ? load<v8>(b + j) : v8{};
    for (int64_t k = 0; k < K; ++k) a += x_i[k] * load<v8>(w + k * N + j);
    store(y_i + j, a);
  }
  for (; j < N; ++j) {
    float a = b ? b[j] : 0.0f;
    for (int64_t k = 0; k < K; ++k) a += x_i[k] * w[k * N + j];
    y_i[j] = a;
  }
}

// Rows in pairs, 32 columns at a time: eight independent accumulators (of 16 ymm registers)
// cover the multiply-add latency; one row alone has four, which ran the FMA unit at ~60%.
KVS_INLINE void small_linear_body(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b,
                                  float* y) {
  int64_t i = 0;
  for (; i + 2 <= M; i += 2) {
    const float *x0 = x + i * K, *x1 = x0 + K;
    float *y0 = y + i * N, *y1 = y0 + N;
    int64_t j = 0;
    for (; j + 32 <= N; j += 32) {
      v8 a0 = b ? load<v8>(b + j) : v8{}, a1 = b ? load<v8>(b + j + 8) : v8{};
      v8 a2 = b ? load<v8>(b + j + 16) : v8{}, a3 = b ? load<v8>(b + j + 24) : v8{};
      v8 c0 = a0, c1 = a1, c2 = a2, c3 = a3;
      for (int64_t k = 0; k < K; ++k) {
        const float* w_k = w + k * N + j;
        const v8 w0 = load<v8>(w_k), w1 = load<v8>(w_k + 8), w2 = load<v8>(w_k + 16), w3 = load<v8>(w_k + 24);
        const float u = x0[k], z = x1[k];
        a0 += u * w0, a1 += u * w1, a2 += u * w2, a3 += u * w3;
        c0 += z * w0, c1 += z * w1, c2 += z * w2, c3 += z * w3;
      }
      store(y0 + j, a0), store(y0 + j + 8, a1), store(y0 + j + 16, a2), store(y0 + j + 24, a3);
      store(y1 + j, c0), store(y1 + j + 8, c1), store(y1 + j + 16, c2), store(y1 + j + 24, c3);
    }
    small_linear_cols(K, N, x0, w, b, y0, j);
    small_linear_cols(K, N, x1, w, b, y1, j);
  }
  for (; i < M; ++i) small_linear_cols(K, N, x + i * K, w, b, y + i * N, 0);
}

KVS_KERNEL(float, row_max, (const float* x, int64_t n), (x, n))
KVS_KERNEL(float, exp_sub_sum, (float* x, int64_t n, float m), (x, n, m))
KVS_KERNEL(void, scale_row, (float* x, int64_t n, float a), (x, n, a))
KVS_KERNEL(void, dot_rows, (const float* q, int64_t rows, const float* k, int64_t n, int64_t d, float scale, float* out),
           (q, rows, k, n, d, scale, out))
KVS_KERNEL(void, accumulate_pv, (const float* p, int64_t rows, const float* v, int64_t n, int64_t d, float* acc),
           (p, rows, v, n, d, acc))
KVS_KERNEL(void, tiny_update,
           (const float* q, int64_t R, const float* k, const float* v, int64_t n, int64_t d_k, int64_t d_v, float scale,
            const int64_t* vis, float* m, float* l, float* acc, float* scores),
           (q, R, k, v, n, d_k, d_v, scale, vis, m, l, acc, scores))
KVS_KERNEL(void, small_linear, (int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y),
           (M, K, N, x, w, b, y))

}  // namespace kvs
