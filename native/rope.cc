#include "rope.h"

#include <cmath>
#include <vector>

#include "threads.h"

namespace kvs {

namespace {

// y [rot] = x rotated by (c, s) [half]; y may be x (each iteration reads and writes only its own
// pair, so there is no dependence between iterations: ivdep lets GCC vectorize in place too).
void rotate_half_split(const float* x, float* y, const float* c, const float* s, int64_t half) {
#pragma GCC ivdep
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], e = x[i + half];
    y[i] = a * c[i] - e * s[i];
    y[i + half] = e * c[i] + a * s[i];
  }
}

void rotate_interleaved(const float* x, float* y, const float* c, const float* s, int64_t half) {
#pragma GCC ivdep
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[2 * i], e = x[2 * i + 1];
    y[2 * i] = a * c[i] - e * s[i];
    y[2 * i + 1] = e * c[i] + a * s[i];
  }
}

}  // namespace

void rope_apply(const RopeDims& dims, const RopeOpts& o, const int32_t* positions, const float* x, float* out) {
  const int64_t half = o.rot / 2, d = dims.d;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(o.theta, -2.0 * (double)i / (double)o.rot);
  // One task per (b, t): its cos/sin serve all H heads.
  parallel_for(dims.B * dims.T, [&](int64_t bt) {
    thread_local std::vector<float> cs;  // per thread: cos [half], then sin [half]
    if ((int64_t)cs.size() < 2 * half) cs.resize(2 * half);
    float *c = cs.data(), *s = c + half;
    const double pos = positions[bt];
    for (int64_t i = 0; i < half; ++i) {
      const double a = pos * inv_freq[i];
      c[i] = (float)std::cos(a);
      s[i] = (float)std::sin(a);
    }
    const int64_t b = bt / dims.T, t = bt % dims.T;
    for (int64_t h = 0; h < dims.H; ++h) {
      const int64_t row = ((b * dims.H + h) * dims.T + t) * d;
      const float* xr = x + row;
      float* yr = out + row;
      if (o.interleaved) rotate_interleaved(xr, yr, c, s, half);
      else rotate_half_split(xr, yr, c, s, half);
      if (yr != xr)
        for (int64_t j = o.rot; j < d; ++j) yr[j] = xr[j];
    }
  }, 6.0 * (double)dims.B * dims.T * dims.H * o.rot);
}

}  // namespace kvs
