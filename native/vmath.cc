#include "vmath.h"

#include <cstring>
#include <limits>

namespace kvs {

// Each function is compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KVS_CLONES
#endif

namespace {
// 16 floats: one zmm register on AVX-512, two ymm on AVX2, four xmm on baseline.
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int W = 16;

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float a) { return vf{} + a; }

constexpr float LOG2E = 1.44269504088896341f, LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
constexpr float EXP_MIN = -87.3f;  // exp(-87.3) ~ 1.2e-38, the smallest normal float

// exp(y) for y <= 0: y = k·ln2 + r with integer k = ceil(y·log2e - 1/2), so |r| <= ln2/2
// (ln2 split in two so k·ln2 is exact); exp(r) by its Taylor polynomial to r^6, relative error
// < 2e-7; times 2^k built in the exponent bits. y < EXP_MIN gives 0 (2^k would be subnormal).
inline vf vexp_nonpos(vf y0) {
  const vi tiny = y0 < splat(EXP_MIN);
  const vf y = tiny ? splat(EXP_MIN) : y0;
  const vi ki = __builtin_convertvector(y * LOG2E - 0.5f, vi);  // truncation = ceil: argument <= 0
  const vf k = __builtin_convertvector(ki, vf);
  const vf r = (y - k * LN2_HI) - k * LN2_LO;
  vf p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vf e = p * (vf)((ki + 127) << 23);
  return tiny ? splat(0.0f) : e;
}
}  // namespace

KVS_CLONES float row_max(const float* x, int64_t n) {
  vf m = splat(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf v = load(x + i);
    m = v > m ? v : m;
  }
  float r = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < W; ++j) r = m[j] > r ? m[j] : r;
  for (; i < n; ++i) r = x[i] > r ? x[i] : r;
  return r;
}

KVS_CLONES float exp_sub_sum(float* x, int64_t n, float m) {
  vf sum = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf e = vexp_nonpos(load(x + i) - m);
    store(x + i, e);
    sum += e;
  }
  if (i < n) {  // tail: pad with -inf, whose exp is 0
    float tail[W];
    for (int j = 0; j < W; ++j) tail[j] = i + j < n ? x[i + j] : -std::numeric_limits<float>::infinity();
    const vf e = vexp_nonpos(load(tail) - m);
    for (int j = 0; i + j < n; ++j) x[i + j] = e[j];
    sum += e;
  }
  float s = 0.0f;
  for (int j = 0; j < W; ++j) s += sum[j];
  return s;
}

KVS_CLONES void scale_row(float* x, int64_t n, float a) {
  int64_t i = 0;
  for (; i + W <= n; i += W) store(x + i, load(x + i) * a);
  for (; i < n; ++i) x[i] *= a;
}

// Each key row is read once for all query rows; d is walked in 16-wide vectors (d % 16 == 0,
// the common case) or scalars.
KVS_CLONES void dot_rows(const float* q, int64_t rows, const float* k, int64_t n, int64_t d, float scale, float* out) {
  for (int64_t s = 0; s < n; ++s) {
    const float* k_s = k + s * d;
    for (int64_t i = 0; i < rows; ++i) {
      const float* q_i = q + i * d;
      float dot = 0.0f;
      int64_t j = 0;
      if (d % W == 0) {
        vf acc = {};
        for (; j < d; j += W) acc += load(q_i + j) * load(k_s + j);
        for (int e = 0; e < W; ++e) dot += acc[e];
      }
      for (; j < d; ++j) dot += q_i[j] * k_s[j];
      out[i * n + s] = dot * scale;
    }
  }
}

KVS_CLONES void accumulate_pv(const float* p, int64_t rows, const float* v, int64_t n, int64_t d, float* acc) {
  for (int64_t i = 0; i < rows; ++i) {
    float* acc_i = acc + i * d;
    const float* p_i = p + i * n;
    int64_t j = 0;
    for (; j + W <= d; j += W) {
      vf a = load(acc_i + j);
      for (int64_t s = 0; s < n; ++s) a += p_i[s] * load(v + s * d + j);
      store(acc_i + j, a);
    }
    for (; j < d; ++j) {
      float a = acc_i[j];
      for (int64_t s = 0; s < n; ++s) a += p_i[s] * v[s * d + j];
      acc_i[j] = a;
    }
  }
}

}  // namespace kvs
