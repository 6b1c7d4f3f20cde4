#include "kvencode.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "threads.h"

namespace kvs {

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN (quiet)
  u += 0x7fffu + ((u >> 16) & 1);  // round to nearest even
  return (uint16_t)(u >> 16);
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00;                 // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00;                // rounds to >= 65520: inf
  if (u >= 0x38800000u) {                                    // normal in f16 (>= 2^-14)
    const uint32_t mant = u + 0xfffu + ((u >> 13) & 1);      // round to nearest even at bit 13
    return sign | (uint16_t)((mant - 0x38000000u) >> 13);    // rebias 127 -> 15
  }
  // Subnormal or zero in f16: value = m · 2^-24 with m rounded to nearest even.
  float a;
  std::memcpy(&a, &u, 4);
  return sign | (uint16_t)std::nearbyint(a * 16777216.0f);  // exact scaling by 2^24; default rounding is RNE
}

void encode_q8_row(const float* x, int64_t d, int8_t* y, float* scale) {
  for (int64_t g = 0; g < q8_groups(d); ++g) {
    const int64_t i0 = g * Q8_GROUP, i1 = std::min(d, i0 + Q8_GROUP);
    float amax = 0.0f;
    for (int64_t i = i0; i < i1; ++i) amax = std::isnan(x[i]) || std::isnan(amax) ? NAN : std::max(amax, std::fabs(x[i]));
    const float s = std::isfinite(amax) ? amax / 127.0f : NAN;
    scale[g] = s;
    // The clamp matters only for a subnormal scale, whose rounding can push |x / s| past 127.
    for (int64_t i = i0; i < i1; ++i) y[i] = s > 0.0f ? (int8_t)std::clamp(std::nearbyint(x[i] / s), -127.0f, 127.0f) : 0;
  }
}

void kv_encode(KvDtype dtype, const float* src, int64_t rows, int64_t d, void* dst, float* scale) {
  const int64_t groups = q8_groups(d);
  parallel_for(rows, [&](int64_t r) {
    const float* x = src + r * d;
    if (dtype == KvDtype::F16 || dtype == KvDtype::BF16) {
      uint16_t* y = static_cast<uint16_t*>(dst) + r * d;
      if (dtype == KvDtype::F16)
        for (int64_t i = 0; i < d; ++i) y[i] = f32_to_f16(x[i]);
      else
        for (int64_t i = 0; i < d; ++i) y[i] = f32_to_bf16(x[i]);
    } else if (dtype == KvDtype::I8) {
      encode_q8_row(x, d, static_cast<int8_t*>(dst) + r * d, scale + r * groups);
    } else {
      std::memcpy(static_cast<float*>(dst) + r * d, x, (size_t)d * 4);
    }
  }, 4.0 * (double)rows * d);
}

}  // namespace kvs
