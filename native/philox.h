// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
// Dropout keep bits are keyed by absolute position so they never depend on chunking:
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (s_abs >> 2, t_abs, h, b)      lane = s_abs & 3
//   u       = (out[lane] >> 8) * 2^-24       keep iff u >= p
#pragma once
#include <cstdint>

namespace kvs {

struct Philox4 {
  uint32_t v[4];
};

inline Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += W0;
      k1 += W1;
    }
    const uint64_t p0 = (uint64_t)M0 * c0, p1 = (uint64_t)M1 * c2;
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return {{c0, c1, c2, c3}};
}

// Keep bits for keys [s_abs0, s_abs0 + n) of one (b, h, t_abs) row, written as 0/1 bytes.
inline void dropout_keep_row(uint64_t seed, uint32_t b, uint32_t h, uint32_t t_abs, int64_t s_abs0, int64_t n,
                             float p, uint8_t* keep) {
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const uint32_t threshold = (uint32_t)(p * 16777216.0f);  // u >= p  <=>  (x >> 8) >= ceil(p * 2^24)
  const bool exact = (float)threshold == p * 16777216.0f;
  const uint32_t cut = exact ? threshold : threshold + 1;
  int64_t i = 0;
  while (i < n) {
    const int64_t s_abs = s_abs0 + i;
    const Philox4 r = philox4x32_10((uint32_t)(s_abs >> 2), t_abs, h, b, k0, k1);
    for (int lane = (int)(s_abs & 3); lane < 4 && i < n; ++lane, ++i) keep[i] = (r.v[lane] >> 8) >= cut;
  }
}

}  // namespace kvs
