#include "rope.h"

#include <cmath>
#include <vector>

#include "threads.h"

namespace kvs {

void rope_apply(const RopeDims& dims, const RopeOpts& o, const int32_t* positions, const float* x, float* out) {
  const int64_t half = o.rot / 2, d = dims.d;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(o.theta, -2.0 * (double)i / (double)o.rot);
  // One task per (b, t): its cos/sin serve all H heads.
  parallel_for(dims.B * dims.T, [&](int64_t bt) {
    const int64_t b = bt / dims.T, t = bt % dims.T;
    std::vector<float> cs(2 * half);
    const double pos = positions[bt];
    for (int64_t i = 0; i < half; ++i) {
      const double a = pos * inv_freq[i];
      cs[2 * i] = (float)std::cos(a);
      cs[2 * i + 1] = (float)std::sin(a);
    }
    for (int64_t h = 0; h < dims.H; ++h) {
      const int64_t row = ((b * dims.H + h) * dims.T + t) * d;
      const float* xr = x + row;
      float* yr = out + row;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t i0 = o.interleaved ? 2 * i : i, i1 = o.interleaved ? 2 * i + 1 : i + half;
        const float c = cs[2 * i], s = cs[2 * i + 1], a = xr[i0], e = xr[i1];
        yr[i0] = a * c - e * s;
        yr[i1] = e * c + a * s;
      }
      if (yr != xr)
        for (int64_t j = o.rot; j < d; ++j) yr[j] = xr[j];
    }
  }, 6.0 * (double)dims.B * dims.T * dims.H * o.rot);
}

}  // namespace kvs
