#include "kvstore.h"

#include <algorithm>
#include <cstring>

#include "kernel_path.h"

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
  switch (kv.dtype) {
    case KvDtype::F16: f16_rows(static_cast<const uint16_t*>(base) + first, n * d, out); break;
    case KvDtype::BF16: bf16_rows(static_cast<const uint16_t*>(base) + first, n * d, out); break;
    default: i8_rows(static_cast<const int8_t*>(base) + first, (is_v ? kv.v_scale : kv.k_scale) + row * q8_groups(d), n, d, out);
  }
  return out;
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
  // Storage row of logical position s of this (b, h_kv): page, then head, then row in page.
  const int64_t b = bh_kv / p.H_kv, h_kv = bh_kv % p.H_kv;
  auto storage_row = [&](int64_t s) {
    return ((int64_t)p.block_table[b * p.max_blocks + s / p.page] * p.H_kv + h_kv) * p.page + s % p.page;
  };
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

}  // namespace kvs
