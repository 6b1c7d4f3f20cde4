#include "vmath.h"

#include <limits>

#include "vec.h"

namespace kvs {

// Each function is compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KVS_CLONES
#endif

using namespace vec;

KVS_CLONES float row_max(const float* x, int64_t n) {
  vf m = splat(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + W <= n; i += W) m = vmax(m, load(x + i));
  float r = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < W; ++j) r = r > m[j] || r != r ? r : m[j];  // NaN propagates
  for (; i < n; ++i) r = r > x[i] || r != r ? r : x[i];
  return r;
}

KVS_CLONES float exp_sub_sum(float* x, int64_t n, float m) {
  vf sum = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vf e = exp_nonpos(load(x + i) - m);
    store(x + i, e);
    sum += e;
  }
  if (i < n) {  // tail: pad with -inf, whose exp is 0
    float tail[W];
    for (int j = 0; j < W; ++j) tail[j] = i + j < n ? x[i + j] : -std::numeric_limits<float>::infinity();
    const vf e = exp_nonpos(load(tail) - m);
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

// 8-float vectors: GCC spills 16-float accumulators on AVX2 (16 ymm registers).
typedef float v8 __attribute__((vector_size(32)));
KVS_INLINE v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
KVS_INLINE void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

KVS_CLONES void small_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b,
                             float* y) {
  for (int64_t i = 0; i < M; ++i) {
    const float* x_i = x + i * K;
    float* y_i = y + i * N;
    int64_t j = 0;
    for (; j + 32 <= N; j += 32) {
      v8 a0 = b ? load8(b + j) : v8{}, a1 = b ? load8(b + j + 8) : v8{};
      v8 a2 = b ? load8(b + j + 16) : v8{}, a3 = b ? load8(b + j + 24) : v8{};
      for (int64_t k = 0; k < K; ++k) {
        const float* w_k = w + k * N + j;
        const float x_ik = x_i[k];
        a0 += x_ik * load8(w_k);
        a1 += x_ik * load8(w_k + 8);
        a2 += x_ik * load8(w_k + 16);
        a3 += x_ik * load8(w_k + 24);
      }
      store8(y_i + j, a0);
      store8(y_i + j + 8, a1);
      store8(y_i + j + 16, a2);
      store8(y_i + j + 24, a3);
    }
    for (; j + 8 <= N; j += 8) {
      v8 a = b ? load8(b + j) : v8{};
      for (int64_t k = 0; k < K; ++k) a += x_i[k] * load8(w + k * N + j);
      store8(y_i + j, a);
    }
    for (; j < N; ++j) {
      float a = b ? b[j] : 0.0f;
      for (int64_t k = 0; k < K; ++k) a += x_i[k] * w[k * N + j];
      y_i[j] = a;
    }
  }
}

}  // namespace kvs
