#include "exact.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernel_path.h"
#include "philox.h"
#include "threads.h"

// Bit reproducibility needs every product rounded on its own: no fused multiply-add.
#if defined(__FMA__) || defined(__FP_FAST_FMA)
#error "exact.cc must be compiled without FMA (no -march=native / -mfma)"
#endif

namespace kvs {

namespace {

constexpr double INF = std::numeric_limits<double>::infinity();
constexpr float NEG_INF_F = -std::numeric_limits<float>::infinity();

// Keys of [s_abs0, s_abs0 + n) visible from query t_abs (causal: s_abs <= t_abs).
int64_t visible(bool causal, int64_t t_abs, int64_t s_abs0, int64_t n) {
  return causal ? std::clamp<int64_t>(t_abs - s_abs0 + 1, 0, n) : n;
}

double dot(const float* a, const float* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += (double)a[i] * (double)b[i];
  return s;
}

}  // namespace

double exact_exp(double x) {
  if (x != x) return x;
  if (x > 709.0) return INF;
  if (x < -745.0) return 0.0;
  // x = k·ln2 + r, |r| <= ln2/2 (ln2 split so k·LN2_HI is exact for |k| < 2^11); exp(r) by its
  // Taylor series to r^14 (truncation < 1e-18 relative), Horner from the smallest term.
  constexpr double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
  const double kd = std::nearbyint(x * 1.44269504088896338700e+00);
  const double r = (x - kd * LN2_HI) - kd * LN2_LO;
  double p = 1.0;
  for (int i = 14; i >= 1; --i) p = 1.0 + p * r / i;
  return std::ldexp(p, (int)kd);  // exact scaling by 2^k (gradual underflow below 2^-1022)
}

double exact_tanh(double x) {
  if (x != x) return x;
  const double e = exact_exp(-2.0 * std::abs(x)), t = (1.0 - e) / (1.0 + e);
  return x < 0 ? -t : t;
}

double exact_log(double x) {
  if (x != x || x < 0.0) return std::numeric_limits<double>::quiet_NaN();
  if (x == 0.0) return -INF;
  if (x == INF) return INF;
  // x = f·2^e with f in [sqrt(1/2), sqrt(2)); log f = 2·atanh(u), u = (f-1)/(f+1), |u| < 0.172:
  // the odd series to u^31 leaves < 1e-24.
  int e;
  double f = std::frexp(x, &e);  // f in [1/2, 1)
  if (f < 0.70710678118654752440) {
    f *= 2.0;
    --e;
  }
  const double u = (f - 1.0) / (f + 1.0), u2 = u * u;
  double s = 0.0;
  for (int i = 31; i >= 3; i -= 2) s = (s + 1.0 / i) * u2;
  const double log_f = 2.0 * u * (1.0 + s);
  constexpr double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
  return (e * LN2_HI + log_f) + e * LN2_LO;
}

void exact_attn_update(const AttnDims& d, const AttnOpts& o, const float* q, const KvStore& kv, float* m, float* l,
                       float* acc) {
  count(attn_deterministic);
  if (d.S == 0 || d.T == 0) return;
  const int64_t group = d.H / d.H_kv;
  const bool dropout = o.dropout_p > 0.0f;
  const double keep_scale = dropout ? 1.0 / (1.0 - (double)o.dropout_p) : 1.0;
  // One task per (b, h); each row is computed alone, so the thread count cannot change a bit.
  parallel_for(d.B * d.H, [&](int64_t bh) {
    const int64_t b = bh / d.H, h = bh % d.H;
    thread_local std::vector<double> sc, a;
    thread_local std::vector<uint8_t> keep;
    thread_local std::vector<float> k_rows, v_rows;
    // The head's keys as fp32 (exact widening for half and int8 storage).
    const float* k_bh = kv_rows(kv, false, b * d.H_kv + h / group, d.s_cap, d.d_k, 0, d.S, k_rows);
    const float* v_bh = kv_rows(kv, true, b * d.H_kv + h / group, d.s_cap, d.d_v, 0, d.S, v_rows);
    resize_scratch(sc, d.S, "deterministic scores");
    resize_scratch(a, d.d_v, "deterministic acc");
    resize_scratch(keep, d.S, "deterministic keep");
    for (int64_t t = 0; t < d.T; ++t) {
      const int64_t r = bh * d.T + t, t_abs = q_off(o, b) + t;
      const int64_t n = visible(o.causal, t_abs, o.s_offset, d.S);
      if (n == 0) continue;
      for (int64_t s = 0; s < n; ++s) sc[s] = dot(q + r * d.d_k, k_bh + s * d.d_k, d.d_k) * (double)o.scale;
      if (has_score_mods(o)) apply_score_mods(o, sc.data(), n, b, t_abs, h, o.s_offset, exact_tanh);
      double mx = -INF;
      for (int64_t s = 0; s < n; ++s)
        if (sc[s] > mx || sc[s] != sc[s]) mx = mx != mx ? mx : sc[s];  // NaN propagates
      if (mx == -INF) continue;  // every key masked (a sliding window)
      // The stored running max is a float: use the rounded value as the reference point so the
      // state stays consistent with what the next call reads.
      const float m_new = (float)(mx != mx ? mx : std::max((double)m[r], mx));
      const double alpha = m[r] == NEG_INF_F ? 0.0 : exact_exp((double)m[r] - (double)m_new);
      if (dropout)
        dropout_keep_row(o.seed, (uint32_t)b, (uint32_t)h, (uint32_t)t_abs, o.s_offset, n, o.dropout_p, keep.data());
      float* acc_r = acc + r * d.d_v;
      for (int64_t c = 0; c < d.d_v; ++c) a[c] = (double)acc_r[c] * alpha;
      double sum = 0.0;
      for (int64_t s = 0; s < n; ++s) {
        const double p = exact_exp(sc[s] - (double)m_new);
        sum += p;  // lse counts every visible key; dropout only thins the accumulator
        if (dropout && !keep[s]) continue;
        const double pk = p * keep_scale;
        const float* v_s = v_bh + s * d.d_v;
        for (int64_t c = 0; c < d.d_v; ++c) a[c] += pk * (double)v_s[c];
      }
      for (int64_t c = 0; c < d.d_v; ++c) acc_r[c] = (float)a[c];
      l[r] = (float)((double)l[r] * alpha + sum);
      m[r] = m_new;
    }
  }, 2.0 * d.B * d.H * d.T * d.S * (d.d_k + d.d_v));
}

void exact_attn_merge(int64_t rows, int64_t d_v, float* m1, float* l1, float* acc1, const float* m2, const float* l2,
                      const float* acc2) {
  for (int64_t r = 0; r < rows; ++r) {
    if (m2[r] == NEG_INF_F) continue;  // state 2 saw nothing for this row
    const float m = std::max(m1[r], m2[r]);
    const double a1 = m1[r] == NEG_INF_F ? 0.0 : exact_exp((double)m1[r] - m), a2 = exact_exp((double)m2[r] - m);
    for (int64_t c = 0; c < d_v; ++c)
      acc1[r * d_v + c] = (float)((double)acc1[r * d_v + c] * a1 + (double)acc2[r * d_v + c] * a2);
    l1[r] = (float)((double)l1[r] * a1 + (double)l2[r] * a2);
    m1[r] = m;
  }
}

void exact_attn_finalize(int64_t rows, int64_t d_v, const float* m, const float* l, const float* acc, float* out,
                         float* lse, const Sinks& sinks) {
  for (int64_t r = 0; r < rows; ++r) {
    double m_r = m[r], l_r = l[r], a = 1.0;  // a: rescale of acc to the max with the sink
    if (sinks.logit) {
      const double sink = sinks.at(r), m_s = m_r > sink ? m_r : sink;
      a = l_r == 0.0 ? 0.0 : exact_exp(m_r - m_s);
      l_r = l_r * a + exact_exp(sink - m_s);
      m_r = m_s;
    }
    const bool empty = l_r == 0.0;  // no visible key (and no sink); a NaN sum stays NaN
    for (int64_t c = 0; c < d_v; ++c) out[r * d_v + c] = empty ? 0.0f : (float)((double)acc[r * d_v + c] * a / l_r);
    lse[r] = empty ? NEG_INF_F : (float)(m_r + exact_log(l_r));
  }
}

void exact_attn_probs(const AttnDims& d, const AttnOpts& o, const float* q, const KvStore& kv, const float* lse,
                      float* probs, uint8_t* keep) {
  count(probs_deterministic);
  const int64_t group = d.H / d.H_kv;
  const bool dropout = o.dropout_p > 0.0f;
  const double keep_scale = dropout ? 1.0 / (1.0 - (double)o.dropout_p) : 1.0;
  parallel_for(d.B * d.H, [&](int64_t bh) {
    const int64_t b = bh / d.H, h = bh % d.H;
    thread_local std::vector<uint8_t> row_keep;
    thread_local std::vector<float> k_rows;
    thread_local std::vector<double> sc;
    resize_scratch(sc, d.S, "deterministic scores");
    const float* k_bh = kv_rows(kv, false, b * d.H_kv + h / group, d.s_cap, d.d_k, 0, d.S, k_rows);
    resize_scratch(row_keep, d.S, "deterministic keep");
    for (int64_t t = 0; t < d.T; ++t) {
      const int64_t r = bh * d.T + t, t_abs = q_off(o, b) + t;
      std::fill(row_keep.begin(), row_keep.end(), 1);
      if (dropout)
        dropout_keep_row(o.seed, (uint32_t)b, (uint32_t)h, (uint32_t)t_abs, o.s_offset, d.S, o.dropout_p,
                         row_keep.data());
      if (keep) std::copy(row_keep.begin(), row_keep.end(), keep + r * d.S);
      if (!probs) continue;
      const int64_t n = lse[r] == NEG_INF_F ? 0 : visible(o.causal, t_abs, o.s_offset, d.S);
      for (int64_t s = 0; s < n; ++s) sc[s] = dot(q + r * d.d_k, k_bh + s * d.d_k, d.d_k) * (double)o.scale;
      if (has_score_mods(o)) apply_score_mods(o, sc.data(), n, b, t_abs, h, o.s_offset, exact_tanh);
      for (int64_t s = 0; s < d.S; ++s)
        probs[r * d.S + s] = s < n && row_keep[s] ? (float)(exact_exp(sc[s] - (double)lse[r]) * keep_scale) : 0.0f;
    }
  }, 2.0 * d.B * d.H * d.T * d.S * d.d_k);
}

void exact_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y) {
  count(linear_deterministic);
  parallel_for(M, [&](int64_t i) {
    thread_local std::vector<double> row;
    resize_scratch(row, N, "deterministic linear row");
    for (int64_t j = 0; j < N; ++j) row[j] = b ? (double)b[j] : 0.0;
    for (int64_t c = 0; c < K; ++c) {
      const double x_ic = x[i * K + c];
      const float* w_c = w + c * N;
      for (int64_t j = 0; j < N; ++j) row[j] += x_ic * (double)w_c[j];
    }
    for (int64_t j = 0; j < N; ++j) y[i * N + j] = (float)row[j];
  }, 2.0 * M * K * N);
}

}  // namespace kvs
