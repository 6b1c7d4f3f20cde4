#include "kvstore.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kvencode.h"
#include "kernel_path.h"
#include "vec.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KVS_X86 1
#endif

namespace kvs {

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);  // inf, nan
  else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
  else if (man == 0) bits = sign;
  else {  // subnormal: normalise
    int e = -1;
    uint32_t m = man;
    do {
      ++e;
      m <<= 1;
    } while (!(m & 0x400));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {

#ifdef KVS_X86
// 8 values per F16C conversion; the tail goes through the scalar path.
__attribute__((target("avx,f16c"))) void f16_rows_f16c(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}
const bool HAS_F16C = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif

void f16_rows(const uint16_t* src, int64_t n, float* dst) {
#ifdef KVS_X86
  if (HAS_F16C) return f16_rows_f16c(src, n, dst);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

// bf16 is the top half of an fp32: a shift (the compiler vectorises it).
void bf16_rows(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = (uint32_t)src[i] << 16;
    std::memcpy(dst + i, &bits, 4);
  }
}

// Group by group, so the inner loop has one scale and vectorises.
void i8_rows(const int8_t* src, const float* scale, int64_t rows, int64_t d, float* dst) {
  const int64_t g = q8_groups(d);
  for (int64_t s = 0; s < rows; ++s)
    for (int64_t j = 0; j < g; ++j) {
      const float sc = scale[s * g + j];
      const int64_t c0 = s * d + j * Q8_GROUP, n = std::min(Q8_GROUP, d - j * Q8_GROUP);
      for (int64_t c = 0; c < n; ++c) dst[c0 + c] = (float)src[c0 + c] * sc;
    }
}

}  // namespace

namespace {

// Storage rows [n, d] of a half or int8 dtype (int8 with its scales [n, groups]) -> fp32 `out`,
// the same values as the portable converters; false where AVX2, FMA and F16C are missing.
bool widen_avx2(KvDtype dtype, const void* x, const float* scale, int64_t n, int64_t d, float* out);

// Rows [0, n) starting at storage row `row` (counted in rows of d elements), as fp32 in `out`,
// or in place for fp32 when out is null.
const float* convert_rows(const KvStore& kv, bool is_v, int64_t row, int64_t d, int64_t n, float* out) {
  const void* base = is_v ? kv.v : kv.k;
  const int64_t first = row * d;
  if (kv.dtype == KvDtype::F32) {
    const float* src = static_cast<const float*>(base) + first;
    if (out) std::copy(src, src + n * d, out);
    return out ? out : src;
  }
  const float* scale = kv.dtype == KvDtype::I8 ? (is_v ? kv.v_scale : kv.k_scale) + row * q8_groups(d) : nullptr;
  if (widen_avx2(kv.dtype, static_cast<const char*>(base) + first * (kv.dtype == KvDtype::I8 ? 1 : 2), scale, n, d, out))
    return out;
  switch (kv.dtype) {
    case KvDtype::F16: f16_rows(static_cast<const uint16_t*>(base) + first, n * d, out); break;
    case KvDtype::BF16: bf16_rows(static_cast<const uint16_t*>(base) + first, n * d, out); break;
    default: i8_rows(static_cast<const int8_t*>(base) + first, (is_v ? kv.v_scale : kv.k_scale) + row * q8_groups(d), n, d, out);
  }
  return out;
}

// Storage row of logical position s of batch row b, kv head h_kv: page, then head, then row in page.
int64_t page_row(const KvPages& p, int64_t b, int64_t h_kv, int64_t s) {
  return ((int64_t)p.block_table[b * p.max_blocks + s / p.page] * p.H_kv + h_kv) * p.page + s % p.page;
}

}  // namespace

const float* kv_rows(const KvStore& kv, bool is_v, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n,
                     std::vector<float>& scratch) {
  const KvPages& p = kv.pages;
  if (!p.block_table) {
    if (kv.dtype == KvDtype::F32) return convert_rows(kv, is_v, bh_kv * s_cap + s0, d, n, nullptr);
    resize_scratch(scratch, n * d, "kv block");
    return convert_rows(kv, is_v, bh_kv * s_cap + s0, d, n, scratch.data());
  }
  const int64_t b = bh_kv / p.H_kv, h_kv = bh_kv % p.H_kv;
  auto storage_row = [&](int64_t s) { return page_row(p, b, h_kv, s); };
  if (kv.dtype == KvDtype::F32 && s0 / p.page == (s0 + n - 1) / p.page)  // one page: in place
    return convert_rows(kv, is_v, storage_row(s0), d, n, nullptr);
  resize_scratch(scratch, n * d, "kv block");
  for (int64_t s = s0; s < s0 + n;) {  // page by page
    const int64_t run = std::min(s0 + n - s, p.page - s % p.page);
    convert_rows(kv, is_v, storage_row(s), d, run, scratch.data() + (s - s0) * d);
    s += run;
  }
  return scratch.data();
}

// ---------------------------------------------------------------------------------------------
// Direct row-path kernels: the storage is read in place and widened in registers.

namespace {

// Calls f(storage_row, i, run, next_row) for runs of rows [s0 + i, s0 + i + run) of kv head bh_kv
// that are contiguous in storage (one run for contiguous storage, one per page otherwise);
// next_row is the storage row of the following run (the next page), -1 when there is none.
template <typename F>
void for_runs(const KvStore& kv, int64_t bh_kv, int64_t s_cap, int64_t s0, int64_t n, F f) {
  const KvPages& p = kv.pages;
  if (!p.block_table) return f(bh_kv * s_cap + s0, int64_t(0), n, int64_t(-1));
  const int64_t b = bh_kv / p.H_kv, h_kv = bh_kv % p.H_kv;
  for (int64_t s = s0, row = page_row(p, b, h_kv, s0); s < s0 + n;) {
    const int64_t run = std::min(s0 + n - s, p.page - s % p.page);
    const int64_t next = s + run < s0 + n ? page_row(p, b, h_kv, s + run) : -1;
    f(row, s - s0, run, next);
    s += run;
    row = next;
  }
}

#ifdef KVS_X86
#ifndef KVS_PREFETCH_BYTES
#define KVS_PREFETCH_BYTES 4096
#endif
inline bool env_is(const char* name, const char* value) {
  const char* env = std::getenv(name);
  return env && std::strcmp(env, value) == 0;
}

#define KVS_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVS_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

// KVSTREAM_KV_SIMD=off takes the portable converters and the fp32 kernels (to test them here).
// KVSTREAM_VMATH=baseline stands for a CPU before AVX2 (vmath.cc reads it too): the row path then
// takes vmath's and BLAS's kernels and the portable converters, the softmax vmath's (softmax_avx2).
const bool HAS_AVX2 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
         !env_is("KVSTREAM_KV_SIMD", "off") && !env_is("KVSTREAM_VMATH", "baseline");
}();

// Loaders: 8 consecutive stored elements widened to fp32 (int8 unscaled), and one element.
struct LdF32 {
  typedef float T;
  KVS_AVX2_INLINE __m256 ld(const T* p) { return _mm256_loadu_ps(p); }
  static float one(const T* p) { return *p; }
};
struct LdF16 {
  typedef uint16_t T;
  KVS_AVX2_INLINE __m256 ld(const T* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  static float one(const T* p) { return f16_to_f32(*p); }
};
struct LdBF16 {  // bf16 is the top half of an fp32
  typedef uint16_t T;
  KVS_AVX2_INLINE __m256 ld(const T* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
  }
  static float one(const T* p) {
    const uint32_t bits = (uint32_t)*p << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};
struct LdI8 {
  typedef int8_t T;
  KVS_AVX2_INLINE __m256 ld(const T* p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))); }
  static float one(const T* p) { return (float)*p; }
};

// Software prefetch this many bytes ahead of the streamed storage rows (hardware prefetch alone
// left the direct kernels below the fp32 path's DRAM bandwidth).
// In pages the rows that follow a head's run belong to other heads: there the distance is the
// one to the same offset in the next page, so a page streams while the next one is fetched.
// nta: prefetchnta, for a call whose storage cannot stay in L3 until the next call anyway
// (KvStore::stream): it ran 12-15% faster from DRAM here, but read a 1-4 MiB cache that T0
// prefetch keeps in L3 at a third of the speed.
constexpr int64_t PREFETCH = KVS_PREFETCH_BYTES;
struct Prefetch {
  int64_t ahead = 0;  // bytes; 0: none
  bool nta = false;
};
inline Prefetch prefetch_distance(const KvStore& kv, int64_t row, int64_t next_row, int64_t row_bytes) {
  return {PREFETCH == 0 ? 0 : next_row < 0 ? PREFETCH : (next_row - row) * row_bytes, kv.stream};
}
// Prefetches [p + pf.ahead, p + pf.ahead + bytes).
KVS_AVX2_INLINE void prefetch_span(const void* p, int64_t bytes, Prefetch pf) {
  if (pf.ahead == 0) return;
  const char* c = static_cast<const char*>(p) + pf.ahead;
  if (pf.nta)
    for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_NTA);
  else
    for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(c + i, _MM_HINT_T0);
}

// Largest d of the split bf16 kernels (q split on the stack).
constexpr int64_t MAX_SPLIT_D = 1024;

// [x0..x7] -> x0 + ... + x7
KVS_AVX2_INLINE float hsum(__m256 a) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}
// Eight vectors -> one vector of their sums: lane u = sum of a[u].
KVS_AVX2_INLINE __m256 hsum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// out [n] = scale · k [n, d] · q [d] (unscaled elements for int8). Eight keys at a time, each
// summed in two accumulators, the eight reduced together. D > 0: d == D at compile time (the
// loops unroll and the eight keys' chains interleave: fp16 is bound by conversions, not bytes).
template <typename L, int D = 0>
KVS_AVX2 void dot1(const typename L::T* k, int64_t n, int64_t d_arg, const float* q, float scale, float* out, Prefetch pf) {
  const int64_t d = D > 0 ? D : d_arg, d8 = d & ~int64_t(7);
  int64_t s = 0;
  for (; s + 8 <= n; s += 8) {
    const typename L::T* k_s = k + s * d;
    prefetch_span(k_s, 8 * d * sizeof(typename L::T), pf);
    // Key by key, each row read in order: walking the eight rows column block by column block
    // (one accumulator per key) ran ~1.4x slower from DRAM here.
    __m256 a[8];
    for (int u = 0; u < 8; ++u) {
      const typename L::T* k_u = k_s + u * d;
      __m256 x = _mm256_setzero_ps(), y = x;
      int64_t j = 0;
      for (; j + 16 <= d8; j += 16) {
        x = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), L::ld(k_u + j), x);
        y = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), L::ld(k_u + j + 8), y);
      }
      if (j < d8) x = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), L::ld(k_u + j), x);
      a[u] = _mm256_add_ps(x, y);
    }
    __m256 r = hsum8(a);
    if (d8 < d) {
      alignas(32) float t[8];
      for (int u = 0; u < 8; ++u) {
        t[u] = 0.0f;
        for (int64_t j = d8; j < d; ++j) t[u] += q[j] * L::one(k_s + u * d + j);
      }
      r = _mm256_add_ps(r, _mm256_load_ps(t));
    }
    _mm256_storeu_ps(out + s, _mm256_mul_ps(r, _mm256_set1_ps(scale)));
  }
  for (; s < n; ++s) {
    const typename L::T* k_s = k + s * d;
    __m256 a = _mm256_setzero_ps();
    for (int64_t j = 0; j < d8; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), L::ld(k_s + j), a);
    float dot = hsum(a);
    for (int64_t j = d8; j < d; ++j) dot += q[j] * L::one(k_s + j);
    out[s] = dot * scale;
  }
}

// dot1 compiled for the common widths (d = 64 and 128 unrolled: ~5% on the fp32 decode step).
template <typename L>
KVS_AVX2 void dot1_d(const typename L::T* k, int64_t n, int64_t d, const float* q, float scale, float* out, Prefetch pf) {
  switch (d) {
    case 64: return dot1<L, 64>(k, n, d, q, scale, out, pf);
    case 128: return dot1<L, 128>(k, n, d, q, scale, out, pf);
    default: return dot1<L>(k, n, d, q, scale, out, pf);
  }
}

// int8 keys with d % 32 == 0: out [n] = scale · Σ_g k_scale[s, g] · (k [s, g-th 32] · q [g-th 32]).
// The n·G (key, group) units are consecutive 32-byte runs with consecutive scales: eight units
// at a time, reduced together and scaled by one vector of scales.
KVS_AVX2_INLINE __m256 dot_unit(const int8_t* k_u, const float* q_g) {
  __m256 x = _mm256_mul_ps(_mm256_loadu_ps(q_g), LdI8::ld(k_u));
  x = _mm256_fmadd_ps(_mm256_loadu_ps(q_g + 8), LdI8::ld(k_u + 8), x);
  x = _mm256_fmadd_ps(_mm256_loadu_ps(q_g + 16), LdI8::ld(k_u + 16), x);
  return _mm256_fmadd_ps(_mm256_loadu_ps(q_g + 24), LdI8::ld(k_u + 24), x);
}

// The same unit with q quantized too (q8: 32 int8 of one group): Σ k·q8 in integers, vpmaddubsw
// on |k| and q8 with k's sign, then pairs summed to 8 int32 lanes (exact: |k|, |q8| <= 128, 127).
KVS_AVX2_INLINE __m256i dot_unit_q8i(const int8_t* k_u, __m256i q8) {
  const __m256i k = _mm256_loadu_si256((const __m256i*)k_u);
  const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(k, k), _mm256_sign_epi8(q8, k));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
KVS_AVX2_INLINE __m256 dot_unit_q8(const int8_t* k_u, __m256i q8) { return _mm256_cvtepi32_ps(dot_unit_q8i(k_u, q8)); }

// hsum8 in int32 (exact: a unit's |Σ| <= 32 · 127 · 127), converted once.
KVS_AVX2_INLINE __m256 hsum8i(const __m256i* a) {
  const __m256i t0 = _mm256_hadd_epi32(a[0], a[1]), t1 = _mm256_hadd_epi32(a[2], a[3]);
  const __m256i t2 = _mm256_hadd_epi32(a[4], a[5]), t3 = _mm256_hadd_epi32(a[6], a[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
  return _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31)));
}

// G = d / 32 in {1, 2, 4}: eight keys per step, their G·8 unit sums folded into one vector of
// eight scores in registers. Q8: q given as q8 [d] int8 with scales sq [G] (q ≈ sq · q8).
template <int G, bool Q8 = false>
KVS_AVX2 void dot1_i8g(const int8_t* k, const float* k_scale, int64_t n, const float* q, float scale, float* out,
                       Prefetch pf, const int8_t* q8 = nullptr, const float* sq = nullptr) {
  constexpr int64_t d = G * Q8_GROUP;
  __m256i q8v[G];
  __m256 sqv = _mm256_set1_ps(1.0f);  // lane i: sq of group i % G
  if constexpr (Q8) {
    for (int g = 0; g < G; ++g) q8v[g] = _mm256_loadu_si256((const __m256i*)(q8 + g * Q8_GROUP));
    alignas(32) float lanes[8];
    for (int i = 0; i < 8; ++i) lanes[i] = sq[i % G];
    sqv = _mm256_load_ps(lanes);
  }
  int64_t s = 0;
  for (; s + 8 <= n; s += 8) {
    const int8_t* k_s = k + s * d;
    prefetch_span(k_s, 8 * d, pf);
    __m256 v[G];  // v[m] lane i: unit m·8 + i (key (m·8 + i) / G, group (m·8 + i) % G), scaled
    for (int m = 0; m < G; ++m) {
      const __m256 ks = _mm256_loadu_ps(k_scale + s * G + m * 8);
      if constexpr (Q8) {
        __m256i a[8];
        for (int i = 0; i < 8; ++i) a[i] = dot_unit_q8i(k_s + (m * 8 + i) * Q8_GROUP, q8v[(m * 8 + i) % G]);
        // (Σ · k scale) · q scale, in that order: the two scales' product alone could overflow.
        v[m] = _mm256_mul_ps(_mm256_mul_ps(hsum8i(a), ks), sqv);
      } else {
        __m256 a[8];
        for (int i = 0; i < 8; ++i) a[i] = dot_unit(k_s + (m * 8 + i) * Q8_GROUP, q + ((m * 8 + i) % G) * Q8_GROUP);
        v[m] = _mm256_mul_ps(hsum8(a), ks);
      }
    }
    __m256 r;
    if constexpr (G == 1) {
      r = v[0];
    } else if constexpr (G == 2) {  // hadd: [k0 k1 k4 k5 | k2 k3 k6 k7]
      r = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_hadd_ps(v[0], v[1])), 0xd8));
    } else {  // two hadds: [k0 k2 k4 k6 | k1 k3 k5 k7]
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
      r = _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
    _mm256_storeu_ps(out + s, _mm256_mul_ps(r, _mm256_set1_ps(scale)));
  }
  for (; s < n; ++s) {
    float dot = 0.0f;
    for (int g = 0; g < G; ++g) {
      const int8_t* k_u = k + s * d + g * Q8_GROUP;
      if constexpr (Q8) dot += hsum(dot_unit_q8(k_u, q8v[g])) * k_scale[s * G + g] * sq[g];
      else dot += hsum(dot_unit(k_u, q + g * Q8_GROUP)) * k_scale[s * G + g];
    }
    out[s] = dot * scale;
  }
}

// Any d % 32 == 0: unit by unit (q8, sq: the quantized query, or null).
KVS_AVX2 void dot1_i8(const int8_t* k, const float* k_scale, int64_t n, int64_t d, const float* q, float scale,
                      float* out, const int8_t* q8 = nullptr, const float* sq = nullptr) {
  const int64_t G = d / Q8_GROUP;
  for (int64_t s = 0; s < n; ++s) {
    float dot = 0.0f;
    for (int64_t g = 0; g < G; ++g) {
      const int8_t* k_u = k + s * d + g * Q8_GROUP;
      if (q8) dot += hsum(dot_unit_q8(k_u, _mm256_loadu_si256((const __m256i*)(q8 + g * Q8_GROUP)))) * k_scale[s * G + g] * sq[g];
      else dot += hsum(dot_unit(k_u, q + g * Q8_GROUP)) * k_scale[s * G + g];
    }
    out[s] = dot * scale;
  }
}

// q [d] (d % 32 == 0) quantized as kvEncode stores int8 keys (q ≈ sq · q8 within half a step).
// False when q holds a NaN or an infinity (its group's scale is then NaN): those take the fp32
// dot, which propagates them.
bool quantize_q8(const float* q, int64_t d, int8_t* q8, float* sq) {
  encode_q8_row(q, d, q8, sq);
  return std::all_of(sq, sq + d / Q8_GROUP, [](float s) { return std::isfinite(s); });
}

// acc [d0, d0 + 8·NV) += Σ_s p[s] · v [s, d0 + ...]; int8: += Σ_s w[s, group] · v [s, ...] with
// w [n, G] = p · v_scale. The slab of acc stays in registers while the keys stream.
template <typename L, int NV>
KVS_AVX2 void pv_slab(const typename L::T* v, const float* w, int64_t G, int64_t n, int64_t d, int64_t d0,
                      const float* p, float* acc, Prefetch pf) {
  // Named accumulators, not an array: GCC 12 stored an __m256 array to the stack every key.
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const int64_t g0 = d0 / Q8_GROUP;  // d0 % 32 == 0: vector i is in group g0 + i / 4
  for (int64_t s = 0; s < n; ++s) {
    const typename L::T* v_s = v + s * d + d0;
    prefetch_span(v_s, 8 * NV * sizeof(typename L::T), pf);
    __m256 w_lo, w_hi;  // weights of vectors 0..3 and 4..7
    if constexpr (std::is_same<L, LdI8>::value) {
      w_lo = _mm256_broadcast_ss(w + s * G + g0);
      w_hi = NV > 4 ? _mm256_broadcast_ss(w + s * G + g0 + 1) : w_lo;
    } else {
      w_lo = w_hi = _mm256_broadcast_ss(p + s);
    }
#define KVS_PV(i) \
  if constexpr (i < NV) a##i = _mm256_fmadd_ps(i < 4 ? w_lo : w_hi, L::ld(v_s + 8 * i), a##i);
    KVS_PV(0) KVS_PV(1) KVS_PV(2) KVS_PV(3) KVS_PV(4) KVS_PV(5) KVS_PV(6) KVS_PV(7)
#undef KVS_PV
  }
#define KVS_PV_STORE(i) \
  if constexpr (i < NV) _mm256_storeu_ps(acc + d0 + 8 * i, _mm256_add_ps(_mm256_loadu_ps(acc + d0 + 8 * i), a##i));
  KVS_PV_STORE(0) KVS_PV_STORE(1) KVS_PV_STORE(2) KVS_PV_STORE(3) KVS_PV_STORE(4) KVS_PV_STORE(5) KVS_PV_STORE(6)
  KVS_PV_STORE(7)
#undef KVS_PV_STORE
}

// w [n, G] = p [n] · v_scale [n, G] (each key's p repeated over its G groups).
KVS_AVX2_INLINE void weights_i8(const float* p, const float* v_scale, int64_t n, int64_t G, float* w) {
  int64_t s = 0;
  if (G == 1)
    for (; s + 8 <= n; s += 8) _mm256_storeu_ps(w + s, _mm256_mul_ps(_mm256_loadu_ps(p + s), _mm256_loadu_ps(v_scale + s)));
  else if (G == 2)  // keys s..s+3 per vector: [p0 p0 p1 p1 ..]
    for (; s + 4 <= n; s += 4) {
      const __m256 ps = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(p + s)), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
      _mm256_storeu_ps(w + 2 * s, _mm256_mul_ps(ps, _mm256_loadu_ps(v_scale + 2 * s)));
    }
  else if (G % 8 == 0)
    for (; s < n; ++s)
      for (int64_t g = 0; g < G; g += 8)
        _mm256_storeu_ps(w + s * G + g, _mm256_mul_ps(_mm256_broadcast_ss(p + s), _mm256_loadu_ps(v_scale + s * G + g)));
  for (; s < n; ++s)
    for (int64_t g = 0; g < G; ++g) w[s * G + g] = p[s] * v_scale[s * G + g];
}

// acc [d] += Σ_s p[s] · v [s, :] over n keys; slabs of 64 columns, then a scalar tail.
template <typename L>
KVS_AVX2 void pv1(const typename L::T* v, const float* v_scale, int64_t n, int64_t d, const float* p, float* acc,
                  Prefetch pf) {
  const int64_t G = q8_groups(d), d8 = d & ~int64_t(7);
  const float* w = nullptr;
  if constexpr (std::is_same<L, LdI8>::value) {
    thread_local std::vector<float> w_buf;
    resize_scratch(w_buf, n * G, "kv weights");
    weights_i8(p, v_scale, n, G, w_buf.data());
    w = w_buf.data();
  }
  for (int64_t d0 = 0; d0 < d8; d0 += 64) {
    switch (std::min<int64_t>(8, (d8 - d0) / 8)) {
      case 8: pv_slab<L, 8>(v, w, G, n, d, d0, p, acc, pf); break;
      case 7: pv_slab<L, 7>(v, w, G, n, d, d0, p, acc, pf); break;
      case 6: pv_slab<L, 6>(v, w, G, n, d, d0, p, acc, pf); break;
      case 5: pv_slab<L, 5>(v, w, G, n, d, d0, p, acc, pf); break;
      case 4: pv_slab<L, 4>(v, w, G, n, d, d0, p, acc, pf); break;
      case 3: pv_slab<L, 3>(v, w, G, n, d, d0, p, acc, pf); break;
      case 2: pv_slab<L, 2>(v, w, G, n, d, d0, p, acc, pf); break;
      default: pv_slab<L, 1>(v, w, G, n, d, d0, p, acc, pf);
    }
  }
  for (int64_t j = d8; j < d; ++j) {
    float a = acc[j];
    for (int64_t s = 0; s < n; ++s) a += (w ? w[s * G + j / Q8_GROUP] : p[s]) * L::one(v + s * d + j);
    acc[j] = a;
  }
}

// int8 values, one query row (decode), d % 32 == 0: acc [d] += Σ_s w[s, g] · v [s, :] with the
// weights w = p · v_scale of each block of at most QW_BLOCK keys and each group rounded to int16
// (w ≈ ws · wq, ws = max_s |w[s, g]| / 32767) and the sums in int32 (vpmaddwd on pairs of keys):
// no value is converted to fp32, which Zen 1 does on one pipe (a probe from L2: ~4.8 G values/s
// for the fp32 form, ~10.9 for this one). Rounding: |ws · wq - w| <= 0.507 · ws with the fp32
// roundings of ws and 1 / ws; a block's largest weight is at most its share of l, so the output
// moves by at most QW_BLOCK · 0.507 / 32767 · max|v| (test/helpers/reference-features.ts's
// Q16_WEIGHTS; ~1e-3 of max|v|, a quarter of the storage's own half step), where max|v| is
// 127 · v_scale: kv_encode's scales are tight (a looser scale widens the bound by its ratio to
// the tight one). A block whose weights are not finite, or too small for a normal ws, runs in
// fp32 (pv1: NaN and inf propagate).
// Exact in int32: |Σ| <= QW_BLOCK · 32767 · 127 < 2^31.
constexpr int64_t QW_BLOCK = 64;
constexpr float QW_MAX = 32767.0f;

// Pairs of keys (s, s + 1) of one group of 32 channels: int32 lanes of (v[s, c], v[s+1, c]) as
// int16 pairs times (wq[s], wq[s+1]). unpack{lo,hi}_epi8 interleave the two rows per 128-bit
// lane: a0 gets channels 0-7, a1 16-23, a2 8-15, a3 24-31.
KVS_AVX2_INLINE void pv_pair_q16(__m256i r0, __m256i r1, __m256i w, __m256i& a0, __m256i& a1, __m256i& a2, __m256i& a3) {
  const __m256i lo = _mm256_unpacklo_epi8(r0, r1), hi = _mm256_unpackhi_epi8(r0, r1);
  a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(lo)), w));
  a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(lo, 1)), w));
  a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(hi)), w));
  a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(hi, 1)), w));
}

// acc [32] += ws · (a0..a3 in their channel order).
KVS_AVX2_INLINE void flush_q16(float* acc, float ws, __m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256 s = _mm256_set1_ps(ws);
  _mm256_storeu_ps(acc, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), s, _mm256_loadu_ps(acc)));
  _mm256_storeu_ps(acc + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a2), s, _mm256_loadu_ps(acc + 8)));
  _mm256_storeu_ps(acc + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), s, _mm256_loadu_ps(acc + 16)));
  _mm256_storeu_ps(acc + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a3), s, _mm256_loadu_ps(acc + 24)));
}

// GC groups (1 or 2) from group g0 over nb <= QW_BLOCK keys. wp [ceil(nb / 2), G]: the int16
// weights of keys (2j, 2j + 1) of group g as one int32, low half first (an odd tail pairs with a
// zero weight and a zero row, which is not read).
template <int GC>
KVS_AVX2 void pv_block_q16(const int8_t* v, int64_t nb, int64_t d, int64_t G, int64_t g0, const int32_t* wp,
                           const float* ws, float* acc, Prefetch pf) {
  __m256i a[4 * GC];
  for (int i = 0; i < 4 * GC; ++i) a[i] = _mm256_setzero_si256();
  for (int64_t s = 0; s < nb; s += 2) {
    const int8_t* v_s = v + s * d + g0 * Q8_GROUP;
    const bool pair = s + 1 < nb;
    prefetch_span(v_s, GC * Q8_GROUP, pf);
    if (pair) prefetch_span(v_s + d, GC * Q8_GROUP, pf);
    for (int g = 0; g < GC; ++g) {
      const __m256i r0 = _mm256_loadu_si256((const __m256i*)(v_s + g * Q8_GROUP));
      const __m256i r1 = pair ? _mm256_loadu_si256((const __m256i*)(v_s + d + g * Q8_GROUP)) : _mm256_setzero_si256();
      pv_pair_q16(r0, r1, _mm256_set1_epi32(wp[(s / 2) * G + g0 + g]), a[4 * g], a[4 * g + 1], a[4 * g + 2], a[4 * g + 3]);
    }
  }
  for (int g = 0; g < GC; ++g)
    flush_q16(acc + (g0 + g) * Q8_GROUP, ws[g0 + g], a[4 * g], a[4 * g + 1], a[4 * g + 2], a[4 * g + 3]);
}

// Below this largest weight (but above 0) a block runs in fp32: ws = w_max / QW_MAX stays a
// normal float.
constexpr float QW_MIN = 0x1p-100f;
// Shorter runs (small pages) take pv1: the per-block cost (weights, their largest, packing, the
// flush) outweighed the faster loop over 16 keys of d = 64 in a probe.
constexpr int64_t QW_MIN_RUN = 32;

KVS_AVX2 void pv1_i8q(const int8_t* v, const float* v_scale, int64_t n, int64_t d, const float* p, float* acc,
                      Prefetch pf) {
  const int64_t G = d / Q8_GROUP;
  // Per block: w [nb_even, G] = p · v_scale (zeros past nb), padded to whole vectors of 16; the
  // pairs wp; per group ws and 1 / ws.
  thread_local std::vector<float> w_buf, ws_buf, inv_buf;
  thread_local std::vector<int32_t> wp_buf;
  const int64_t w_len = (QW_BLOCK * G + 15) & ~int64_t(15);
  resize_scratch(w_buf, w_len, "kv weights");
  resize_scratch(wp_buf, w_len / 2, "kv weights");
  resize_scratch(ws_buf, G, "kv weights");
  resize_scratch(inv_buf, G, "kv weights");
  float *w = w_buf.data(), *ws = ws_buf.data(), *inv = inv_buf.data();
  int32_t* wp = wp_buf.data();
  const bool lanes = 8 % G == 0;  // G in {1, 2, 4, 8}: lane i of a vector of w is group i % G
  for (int64_t b0 = 0; b0 < n; b0 += QW_BLOCK) {
    const int64_t nb = std::min(QW_BLOCK, n - b0), len = (((nb + 1) & ~int64_t(1)) * G + 15) & ~int64_t(15);
    weights_i8(p + b0, v_scale + b0 * G, nb, G, w);
    std::fill(w + nb * G, w + len, 0.0f);
    // Largest |w| per group, and a sum that only NaN and inf reach.
    bool q16 = true;
    if (lanes) {
      const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
      __m256 mx = _mm256_setzero_ps(), sum = mx;
      for (int64_t i = 0; i < len; i += 8) {
        const __m256 x = _mm256_loadu_ps(w + i);  // w is heap memory: 16-byte aligned only
        mx = _mm256_max_ps(mx, _mm256_and_ps(x, abs_mask));
        sum = _mm256_add_ps(sum, x);
      }
      alignas(32) float m8[8], s8[8];
      _mm256_store_ps(m8, mx);
      _mm256_store_ps(s8, sum);
      for (int64_t g = 0; g < G; ++g) ws[g] = 0.0f;
      for (int i = 0; i < 8; ++i) {
        ws[i % G] = std::max(ws[i % G], m8[i]);
        q16 = q16 && std::isfinite(s8[i]);
      }
    } else {
      float sum = 0.0f;
      for (int64_t g = 0; g < G; ++g) ws[g] = 0.0f;
      for (int64_t i = 0; i < nb * G; ++i) {
        ws[i % G] = std::max(ws[i % G], std::fabs(w[i]));
        sum += w[i];
      }
      q16 = std::isfinite(sum);
    }
    for (int64_t g = 0; g < G && q16; ++g) {  // a group of zero weights adds exact zeros
      q16 = ws[g] == 0.0f || ws[g] >= QW_MIN;
      inv[g] = ws[g] > 0.0f ? QW_MAX / ws[g] : 0.0f;
      ws[g] /= QW_MAX;
    }
    if (!q16) {
      count(kv_i8_pv_q16_fp32);
      pv1<LdI8>(v + b0 * d, v_scale + b0 * G, nb, d, p + b0, acc, pf);
      continue;
    }
    if (lanes && G <= 4) {
      // 16 weights of keys 2j.. (group-minor) -> int16, then within each pair of keys the two
      // keys' weights of a group side by side: [a0 a1 .. b0 b1 ..] -> [a0 b0 a1 b1 ..].
      alignas(32) float inv8[8];
      for (int i = 0; i < 8; ++i) inv8[i] = inv[i % G];
      const __m256 iv = _mm256_load_ps(inv8);
      const __m256i order = G == 1   ? _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                            : G == 2 ? _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, 0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15)
                                     : _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, 0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
      for (int64_t i = 0; i < len; i += 16) {
        const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(w + i), iv));
        const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(w + i + 8), iv));
        const __m256i h16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8);  // key order
        _mm256_storeu_si256((__m256i*)(wp + i / 2), _mm256_shuffle_epi8(h16, order));
      }
    } else {
      for (int64_t j = 0; 2 * j < nb; ++j)
        for (int64_t g = 0; g < G; ++g) {
          const int32_t lo = (int32_t)std::lrint(w[2 * j * G + g] * inv[g]), hi = (int32_t)std::lrint(w[(2 * j + 1) * G + g] * inv[g]);
          wp[j * G + g] = (int32_t)((uint32_t)(uint16_t)lo | ((uint32_t)hi << 16));
        }
    }
    for (int64_t g0 = 0; g0 < G; g0 += 2) {
      if (G - g0 >= 2) pv_block_q16<2>(v + b0 * d, nb, d, G, g0, wp, ws, acc, pf);
      else pv_block_q16<1>(v + b0 * d, nb, d, G, g0, wp, ws, acc, pf);
    }
  }
}

// bf16 without a widening shuffle: a 32-byte load holds 16 values as 8 lanes of (even, odd)
// pairs; lane & 0xffff0000 is the odd value as fp32 and lane << 16 the even one. The dot runs on
// q split the same way; the accumulate keeps even and odd columns apart and interleaves them
// at the end. d % 16 == 0.
KVS_AVX2_INLINE __m256 bf16_odd(__m256i x) { return _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u))); }
KVS_AVX2_INLINE __m256 bf16_even(__m256i x) { return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)); }
KVS_AVX2_INLINE __m256i ld256(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }

// qs [d]: per block of 16, the 8 even then the 8 odd elements of q.
KVS_AVX2_INLINE void split_even_odd(const float* q, int64_t d, float* qs) {
  for (int64_t j = 0; j < d; j += 16)
    for (int i = 0; i < 8; ++i) {
      qs[j + i] = q[j + 2 * i];
      qs[j + 8 + i] = q[j + 2 * i + 1];
    }
}

KVS_AVX2 void dot1_bf16(const uint16_t* k, int64_t n, int64_t d, const float* q, float scale, float* out, Prefetch pf) {
  alignas(32) float qs[MAX_SPLIT_D];
  split_even_odd(q, d, qs);
  int64_t s = 0;
  for (; s + 8 <= n; s += 8) {
    const uint16_t* k_s = k + s * d;
    prefetch_span(k_s, 8 * d * 2, pf);
    __m256 a[8];
    for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; j += 16) {
      const __m256 qe = _mm256_load_ps(qs + j), qo = _mm256_load_ps(qs + j + 8);
      for (int u = 0; u < 8; ++u) {
        const __m256i x = ld256(k_s + u * d + j);
        a[u] = _mm256_fmadd_ps(qo, bf16_odd(x), _mm256_fmadd_ps(qe, bf16_even(x), a[u]));
      }
    }
    _mm256_storeu_ps(out + s, _mm256_mul_ps(hsum8(a), _mm256_set1_ps(scale)));
  }
  for (; s < n; ++s) {
    const uint16_t* k_s = k + s * d;
    __m256 a = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; j += 16) {
      const __m256i x = ld256(k_s + j);
      a = _mm256_fmadd_ps(_mm256_load_ps(qs + j + 8), bf16_odd(x), _mm256_fmadd_ps(_mm256_load_ps(qs + j), bf16_even(x), a));
    }
    out[s] = hsum(a) * scale;
  }
}

// a [16] += [e0 o0 e1 o1 .. e7 o7]
KVS_AVX2_INLINE void add_even_odd(float* a, __m256 e, __m256 o) {
  const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
  _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_permute2f128_ps(lo, hi, 0x20)));
  _mm256_storeu_ps(a + 8, _mm256_add_ps(_mm256_loadu_ps(a + 8), _mm256_permute2f128_ps(lo, hi, 0x31)));
}

// acc [d0, d0 + 16·NB) += Σ_s p[s] · v [s, d0 + ...].
template <int NB>
KVS_AVX2 void pv_slab_bf16(const uint16_t* v, int64_t n, int64_t d, int64_t d0, const float* p, float* acc, Prefetch pf) {
  __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;  // named: see pv_slab
  for (int64_t s = 0; s < n; ++s) {
    const uint16_t* v_s = v + s * d + d0;
    prefetch_span(v_s, 32 * NB, pf);
    const __m256 w = _mm256_broadcast_ss(p + s);
#define KVS_PV(i)                                            \
  if constexpr (i < NB) {                                    \
    const __m256i x = ld256(v_s + 16 * i);                   \
    e##i = _mm256_fmadd_ps(w, bf16_even(x), e##i);           \
    o##i = _mm256_fmadd_ps(w, bf16_odd(x), o##i);            \
  }
    KVS_PV(0) KVS_PV(1) KVS_PV(2) KVS_PV(3)
#undef KVS_PV
  }
  add_even_odd(acc + d0, e0, o0);
  if constexpr (NB > 1) add_even_odd(acc + d0 + 16, e1, o1);
  if constexpr (NB > 2) add_even_odd(acc + d0 + 32, e2, o2);
  if constexpr (NB > 3) add_even_odd(acc + d0 + 48, e3, o3);
}

KVS_AVX2 void pv1_bf16(const uint16_t* v, int64_t n, int64_t d, const float* p, float* acc, Prefetch pf) {
  for (int64_t d0 = 0; d0 < d; d0 += 64) {
    switch (std::min<int64_t>(4, (d - d0) / 16)) {
      case 4: pv_slab_bf16<4>(v, n, d, d0, p, acc, pf); break;
      case 3: pv_slab_bf16<3>(v, n, d, d0, p, acc, pf); break;
      case 2: pv_slab_bf16<2>(v, n, d, d0, p, acc, pf); break;
      default: pv_slab_bf16<1>(v, n, d, d0, p, acc, pf);
    }
  }
}

// Storage rows [n, d] -> fp32 (int8 scaled as kv_rows does: one fp32 product per element).
template <typename L>
KVS_AVX2 void widen(const typename L::T* x, const float* scale, int64_t n, int64_t d, float* out) {
  const int64_t G = q8_groups(d), d8 = d & ~int64_t(7);
  for (int64_t s = 0; s < n; ++s) {
    const typename L::T* x_s = x + s * d;
    float* o_s = out + s * d;
    int64_t j = 0;
    for (; j < d8; j += 8) {
      __m256 y = L::ld(x_s + j);
      if (scale) y = _mm256_mul_ps(y, _mm256_set1_ps(scale[s * G + j / Q8_GROUP]));
      _mm256_storeu_ps(o_s + j, y);
    }
    for (; j < d; ++j) o_s[j] = L::one(x_s + j) * (scale ? scale[s * G + j / Q8_GROUP] : 1.0f);
  }
}

// The online softmax's row max and exp-sum (vmath.h) in 8-lane vectors, same polynomial: on
// AVX2 without AVX-512, GCC compiles vmath's 16-float compares to scalar code.
using vec::v8;
using vec::v8i;

KVS_AVX2 float row_max8(const float* x, int64_t n) {
  constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
  v8 m = v8{} + NEG_INF;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    m = vec::vmax_t(m, vec::load<v8>(x + i));
  }
  float r = NEG_INF;
  for (int j = 0; j < 8; ++j) r = r > m[j] || r != r ? r : m[j];  // NaN propagates
  for (; i < n; ++i) r = r > x[i] || r != r ? r : x[i];
  return r;
}

KVS_AVX2 float exp_sub_sum8(float* x, int64_t n, float m) {
  v8 sum = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8 e = vec::exp_nonpos_t<v8, v8i>(vec::load<v8>(x + i) - m);
    vec::store(x + i, e);
    sum += e;
  }
  if (i < n) {  // tail: pad with -inf, whose exp is 0
    v8 t;
    for (int j = 0; j < 8; ++j) t[j] = i + j < n ? x[i + j] : -std::numeric_limits<float>::infinity();
    const v8 e = vec::exp_nonpos_t<v8, v8i>(t - m);
    for (int j = 0; i + j < n; ++j) x[i + j] = e[j];
    sum += e;
  }
  float s = 0.0f;
  for (int j = 0; j < 8; ++j) s += sum[j];
  return s;
}

#endif

bool widen_avx2(KvDtype dtype, const void* x, const float* scale, int64_t n, int64_t d, float* out) {
#ifdef KVS_X86
  if (!HAS_AVX2) return false;
  switch (dtype) {
    case KvDtype::F16: widen<LdF16>(static_cast<const uint16_t*>(x), nullptr, n, d, out); return true;
    case KvDtype::BF16: widen<LdBF16>(static_cast<const uint16_t*>(x), nullptr, n, d, out); return true;
    case KvDtype::I8: widen<LdI8>(static_cast<const int8_t*>(x), scale, n, d, out); return true;
    default: return false;
  }
#else
  (void)dtype, (void)x, (void)scale, (void)n, (void)d, (void)out;
  return false;
#endif
}

#ifdef KVS_X86
// Keys per widened chunk when several query rows share it: 32 keys of d = 64 are 8 KiB of L1.
constexpr int64_t CHUNK = 32;

thread_local std::vector<float> chunk_buf;

// nc storage rows [nc, d] as fp32 for the several-row kernels: fp32 in place, else widened into
// chunk_buf (sized by the caller for those).
template <typename L>
KVS_AVX2 const float* chunk_rows(const typename L::T* x, const float* scale, int64_t nc, int64_t d) {
  if constexpr (std::is_same<L, LdF32>::value) {
    (void)scale, (void)nc, (void)d;
    return x;
  } else {
    widen<L>(x, scale, nc, d, chunk_buf.data());
    return chunk_buf.data();
  }
}

// R rows q [R, d] against `run` contiguous storage rows x [run, d] (int8 scales xs), chunk by
// chunk: out [r · n + s] = scale · q_r · x_s (out: the run's first column, rows n apart).
template <typename L>
KVS_AVX2 void dot_rows_chunks(const typename L::T* x, const float* xs, int64_t run, int64_t d, const float* q, int64_t R,
                              float scale, float* out, int64_t n) {
  for (int64_t c = 0; c < run; c += CHUNK) {
    const int64_t nc = std::min(CHUNK, run - c);
    const float* buf = chunk_rows<L>(x + c * d, xs ? xs + c * q8_groups(d) : nullptr, nc, d);
    for (int64_t r = 0; r < R; ++r) dot1_d<LdF32>(buf, nc, d, q + r * d, scale, out + r * n + c, Prefetch{});
  }
}

// acc [R, d] += p [R, ·] · x [run, d] likewise (p: the run's first column, rows n apart).
template <typename L>
KVS_AVX2 void pv_rows_chunks(const typename L::T* x, const float* xs, int64_t run, int64_t d, const float* p, int64_t R,
                             int64_t n, float* acc) {
  for (int64_t c = 0; c < run; c += CHUNK) {
    const int64_t nc = std::min(CHUNK, run - c);
    const float* buf = chunk_rows<L>(x + c * d, xs ? xs + c * q8_groups(d) : nullptr, nc, d);
    for (int64_t r = 0; r < R; ++r) pv1<LdF32>(buf, nullptr, nc, d, p + r * n + c, acc + r * d, Prefetch{});
  }
}

template <typename L>
KVS_AVX2 void dot_rows_direct(const KvStore& kv, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n,
                              const float* q, int64_t R, float scale, float* out, bool q8_query) {
  const auto* k = static_cast<const typename L::T*>(kv.k);
  const bool i8 = kv.dtype == KvDtype::I8;
  if (R == 1 && i8 && d % Q8_GROUP == 0) {
    // With q8_query: quantized like the keys, the dot runs in integers (quantize_q8).
    thread_local std::vector<int8_t> q8;
    thread_local std::vector<float> sq;
    if (q8_query) {
      q8.resize(d);
      sq.resize(d / Q8_GROUP);
    }
    const bool quantized = q8_query && quantize_q8(q, d, q8.data(), sq.data());
    const int8_t* qq = quantized ? q8.data() : nullptr;
    return for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t next) {
      const int8_t* k_r = reinterpret_cast<const int8_t*>(k) + row * d;
      const float* ks_r = kv.k_scale + row * (d / Q8_GROUP);
      const Prefetch pf = prefetch_distance(kv, row, next, d);
      switch (quantized ? d / Q8_GROUP : 0) {
        case 1: return dot1_i8g<1, true>(k_r, ks_r, run, q, scale, out + i, pf, qq, sq.data());
        case 2: return dot1_i8g<2, true>(k_r, ks_r, run, q, scale, out + i, pf, qq, sq.data());
        case 4: return dot1_i8g<4, true>(k_r, ks_r, run, q, scale, out + i, pf, qq, sq.data());
        default: return dot1_i8(k_r, ks_r, run, d, q, scale, out + i, qq, sq.data());
      }
    });
  }
  if constexpr (std::is_same<L, LdBF16>::value)
    if (R == 1 && d % 16 == 0 && d <= MAX_SPLIT_D)
      return for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t next) {
        dot1_bf16(k + row * d, run, d, q, scale, out + i, prefetch_distance(kv, row, next, d * 2));
      });
  if (R == 1 && !i8)
    return for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t next) {
      dot1_d<L>(k + row * d, run, d, q, scale, out + i, prefetch_distance(kv, row, next, d * sizeof(typename L::T)));
    });
  // Several rows (or int8 with a partial group): widen a chunk into L1 once (fp32: read it in
  // place), dot every row on it.
  if constexpr (!std::is_same<L, LdF32>::value) resize_scratch(chunk_buf, CHUNK * d, "kv chunk");
  // (Software prefetch of each chunk ahead measured no faster here: the hardware prefetchers
  // follow this one stream.)
  for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t) {
    dot_rows_chunks<L>(k + row * d, i8 ? kv.k_scale + row * q8_groups(d) : nullptr, run, d, q, R, scale, out + i, n);
  });
}

template <typename L>
KVS_AVX2 void accumulate_direct(const KvStore& kv, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n,
                                const float* p, int64_t R, float* acc, bool q16_weights) {
  const auto* v = static_cast<const typename L::T*>(kv.v);
  const bool i8 = kv.dtype == KvDtype::I8;
  if constexpr (std::is_same<L, LdBF16>::value)
    if (R == 1 && d % 16 == 0)
      return for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t next) {
        pv1_bf16(v + row * d, run, d, p + i, acc, prefetch_distance(kv, row, next, d * 2));
      });
  if (R == 1 && i8 && q16_weights && d % Q8_GROUP == 0) {
    count(kv_i8_pv_q16);
    return for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t next) {
      const Prefetch pf = prefetch_distance(kv, row, next, d);
      if (run < QW_MIN_RUN) return pv1<L>(v + row * d, kv.v_scale + row * (d / Q8_GROUP), run, d, p + i, acc, pf);
      pv1_i8q(reinterpret_cast<const int8_t*>(v) + row * d, kv.v_scale + row * (d / Q8_GROUP), run, d, p + i, acc, pf);
    });
  }
  if (R == 1)
    return for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t next) {
      pv1<L>(v + row * d, i8 ? kv.v_scale + row * q8_groups(d) : nullptr, run, d, p + i, acc,
             prefetch_distance(kv, row, next, d * sizeof(typename L::T)));
    });
  if constexpr (!std::is_same<L, LdF32>::value) resize_scratch(chunk_buf, CHUNK * d, "kv chunk");
  for_runs(kv, bh_kv, s_cap, s0, n, [&](int64_t row, int64_t i, int64_t run, int64_t) {
    pv_rows_chunks<L>(v + row * d, i8 ? kv.v_scale + row * q8_groups(d) : nullptr, run, d, p + i, R, n, acc);
  });
}
#endif

}  // namespace

bool softmax_avx2() {
#ifdef KVS_X86
  // A function static, not HAS_AVX2: attention.cc reads this during its own static init.
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
           !__builtin_cpu_supports("avx512f") && !env_is("KVSTREAM_VMATH", "baseline");
  }();
  return yes;
#else
  return false;
#endif
}

float row_max_avx2(const float* x, int64_t n) {
#ifdef KVS_X86
  return row_max8(x, n);
#else
  (void)x, (void)n;
  throw std::logic_error("row_max_avx2: not an x86-64 build");
#endif
}

float exp_sub_sum_avx2(float* x, int64_t n, float m) {
#ifdef KVS_X86
  return exp_sub_sum8(x, n, m);
#else
  (void)x, (void)n, (void)m;
  throw std::logic_error("exp_sub_sum_avx2: not an x86-64 build");
#endif
}

int64_t kv_row_bytes(KvDtype dtype, int64_t d) {
  switch (dtype) {
    case KvDtype::F32: return 4 * d;
    case KvDtype::F16:
    case KvDtype::BF16: return 2 * d;
    case KvDtype::I8: return d + 4 * q8_groups(d);
  }
  return 4 * d;
}

int64_t kv_stream_bytes() {
  // The level-3 entry of cpu0's caches in sysfs ("8192K"; per core complex on AMD), else 8 MiB.
  static const int64_t llc = [] {
    auto read = [](int index, const char* file, long long& x, char& unit) {
      const std::string path = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/" + file;
      FILE* f = std::fopen(path.c_str(), "r");
      if (!f) return false;
      const bool ok = std::fscanf(f, "%lld%c", &x, &unit) >= 1;
      std::fclose(f);
      return ok;
    };
    for (int index = 0; index < 8; ++index) {
      long long level = 0, size = 0;
      char unit = 'K', none = 0;
      if (!read(index, "level", level, none) || level != 3 || !read(index, "size", size, unit) || size <= 0) continue;
      return int64_t(size) * (unit == 'M' ? 1 << 20 : 1 << 10);
    }
    return int64_t(8) << 20;
  }();
  return llc;
}

bool kv_direct() {
  // Every storage and any number of rows per kv head, where the CPU has them: they follow a
  // block table run by run (a softmax block may span pages), read one fp32 row's cache at
  // 1.04-1.1x a plain read (OpenBLAS's sgemv ~1.5x), widen half and int8 in registers, and run
  // several rows on chunks of 32 keys in L1 (fp32 read in place). vmath's few-row kernels took
  // 2.8-6.5x as long for 2-16 fp32 rows per kv head at W3's cache (their 16-float reductions are
  // scalar chains on AVX2), sgemm 1.5x for 32 rows; at 64 and 128 rows the two were level.
#ifdef KVS_X86
  return HAS_AVX2;
#else
  return false;
#endif
}

void kv_dot(const KvStore& kv, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n, const float* q,
            int64_t R, float scale, float* out, bool q8_query) {
#ifdef KVS_X86
  switch (kv.dtype) {
    case KvDtype::F32: return dot_rows_direct<LdF32>(kv, bh_kv, s_cap, d, s0, n, q, R, scale, out, false);
    case KvDtype::F16: return dot_rows_direct<LdF16>(kv, bh_kv, s_cap, d, s0, n, q, R, scale, out, false);
    case KvDtype::BF16: return dot_rows_direct<LdBF16>(kv, bh_kv, s_cap, d, s0, n, q, R, scale, out, false);
    case KvDtype::I8: return dot_rows_direct<LdI8>(kv, bh_kv, s_cap, d, s0, n, q, R, scale, out, q8_query);
    default: break;
  }
#endif
  (void)kv, (void)bh_kv, (void)s_cap, (void)d, (void)s0, (void)n, (void)q, (void)R, (void)scale, (void)out, (void)q8_query;
  throw std::logic_error("kv_dot: no direct kernel for this storage (check kv_direct first)");
}

void kv_accumulate(const KvStore& kv, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n, const float* p,
                   int64_t R, float* acc, bool q16_weights) {
#ifdef KVS_X86
  switch (kv.dtype) {
    case KvDtype::F32: return accumulate_direct<LdF32>(kv, bh_kv, s_cap, d, s0, n, p, R, acc, false);
    case KvDtype::F16: return accumulate_direct<LdF16>(kv, bh_kv, s_cap, d, s0, n, p, R, acc, false);
    case KvDtype::BF16: return accumulate_direct<LdBF16>(kv, bh_kv, s_cap, d, s0, n, p, R, acc, false);
    case KvDtype::I8: return accumulate_direct<LdI8>(kv, bh_kv, s_cap, d, s0, n, p, R, acc, q16_weights);
    default: break;
  }
#endif
  (void)kv, (void)bh_kv, (void)s_cap, (void)d, (void)s0, (void)n, (void)p, (void)R, (void)acc, (void)q16_weights;
  throw std::logic_error("kv_accumulate: no direct kernel for this storage (check kv_direct first)");
}

}  // namespace kvs
