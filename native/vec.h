// 16- and 8-float vectors (GCC vector extensions), loads, stores and a branch-free exp for any
// float vector type, shared by the row kernels (vmath.cc, kvstore.cc) and the tile kernels
// (tile_kernels.inc, with their own 8- or 16-lane types). Everything is always_inline, so each
// caller compiles it for its own target.
#pragma once
#include <cstdint>
#include <cstring>

namespace kvs {
namespace vec {

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int W = 16;
// 8 lanes, for AVX2 kernels: GCC lowers compares of 16-float vectors to scalar code there.
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define KVS_INLINE static inline __attribute__((always_inline))

// Unaligned load and store of any float vector type V (memcpy: one vmovups, no alignment assumed).
// No default V: a caller names its width, so a 16-lane load cannot slip into 8-lane code.
template <typename V>
KVS_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename V>
KVS_INLINE void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
// A broadcast for non-hot paths (GCC keeps an add of 0; hot loops use the ISA's broadcast).
template <typename V>
KVS_INLINE V splat(float a) { return V{} + a; }
// max that propagates a NaN in either argument (a NaN score must not pass for a masked key).
// V is any GCC float vector type, VI its int32 twin.
template <typename V>
KVS_INLINE V vmax_t(V a, V b) { return (a > b) | (a != a) ? a : b; }
KVS_INLINE vf vmax(vf a, vf b) { return vmax_t(a, b); }

constexpr float LOG2E = 1.44269504088896341f, LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
constexpr float EXP_MIN = -87.3f;  // exp(-87.3) ~ 1.2e-38, the smallest normal float

// exp(y) for y <= 0: y = k·ln2 + r with integer k = ceil(y·log2e - 1/2), so |r| <= ln2/2
// (ln2 split in two so k·ln2 is exact); exp(r) by its Taylor polynomial to r^6, relative error
// < 2.3e-7 (measured over [-87, 0]); times 2^k built in the exponent bits. y < EXP_MIN (and -inf) gives 0.
// On N vectors in place, each step taken across all N before the next: N independent chains in
// flight. Written one vector at a time, GCC emitted each exp's ~40-cycle
// chain whole and Zen 1's small FP scheduler could not overlap them (the AVX2 tile's softmax ran
// at a third of its throughput). exp_nonpos_t is the one-vector case, so every caller gets the
// same bits per lane.
template <int N, typename V, typename VI>
KVS_INLINE void exp_nonpos_n(V (&y)[N]) {
  VI tiny[N], ki[N];
  V k[N], r[N], p[N];
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) {
    tiny[i] = y[i] < (V{} + EXP_MIN);
    y[i] = tiny[i] ? V{} + EXP_MIN : y[i];
  }
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) ki[i] = __builtin_convertvector(y[i] * LOG2E - 0.5f, VI);
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) k[i] = __builtin_convertvector(ki[i], V);
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) r[i] = (y[i] - k[i] * LN2_HI) - k[i] * LN2_LO;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) p[i] = (V{} + 1.0f / 720.0f) * r[i] + 1.0f / 120.0f;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) p[i] = p[i] * r[i] + 1.0f / 24.0f;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) p[i] = p[i] * r[i] + 1.0f / 6.0f;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) p[i] = p[i] * r[i] + 0.5f;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) p[i] = p[i] * r[i] + 1.0f;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) p[i] = p[i] * r[i] + 1.0f;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) y[i] = tiny[i] ? V{} : p[i] * (V)((ki[i] + 127) << 23);
}

template <typename V, typename VI>
KVS_INLINE V exp_nonpos_t(V y0) {
  V y[1] = {y0};
  exp_nonpos_n<1, V, VI>(y);
  return y[0];
}
KVS_INLINE vf exp_nonpos(vf y0) { return exp_nonpos_t<vf, vi>(y0); }

}  // namespace vec
}  // namespace kvs
