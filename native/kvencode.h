// Encoding fp32 rows into a KV cache's storage type (kvstore.h), for appends. No V8 here.
//   src [rows, d] fp32 -> dst [rows, d] (f16 / bf16 bits, or int8); int8 also writes
//   scale [rows, ceil(d / Q8_GROUP)].
// f16: IEEE binary16, round to nearest even (overflow to inf, NaN kept). bf16: the upper half of
// the fp32, round to nearest even (NaN kept quiet). int8: per row and group of 32 channels,
// scale = max|x| / 127 (0 for an all-zero group), q = nearbyint(x / scale) (half to even), so
// |x - q·scale| <= scale / 2 (q clamped to ±127: a subnormal scale rounds coarsely, and there
// the bound is not kept); a non-finite value makes its group's scale NaN.
#pragma once
#include <cstdint>

#include "kvstore.h"

namespace kvs {

void kv_encode(KvDtype dtype, const float* src, int64_t rows, int64_t d, void* dst, float* scale);

// One row x [d] as int8 q8: y [d] and scale [ceil(d/32)], as kv_encode stores it.
void encode_q8_row(const float* x, int64_t d, int8_t* y, float* scale);

uint16_t f32_to_f16(float f);
uint16_t f32_to_bf16(float f);

}  // namespace kvs
