// The deterministic kernels (KernelPath::Deterministic): plain scalar loops in a fixed order,
// float64 accumulation, kvstream's own exp and log, no FMA and no BLAS. Every x86-64 CPU, thread
// count and BLAS build gives the same bits, which is what fixture generation needs. Same shapes
// and contracts as the functions of attention.h that dispatch here.
#pragma once
#include <cstdint>

#include "attention.h"

namespace kvs {

// exp and log in float64 from +, -, *, / only (no libm: glibc picks FMA variants per CPU).
// Relative error ~1e-16; exact_exp(-inf) = 0, exact_log(0) = -inf.
double exact_exp(double x);
double exact_log(double x);
double exact_tanh(double x);

void exact_attn_update(const AttnDims& dims, const AttnOpts& opts, const float* q, const KvStore& kv, float* m,
                       float* l, float* acc);
void exact_attn_merge(int64_t rows, int64_t d_v, float* m1, float* l1, float* acc1, const float* m2, const float* l2,
                      const float* acc2);
void exact_attn_finalize(int64_t rows, int64_t d_v, const float* m, const float* l, const float* acc, float* out,
                         float* lse, const Sinks& sinks);
void exact_attn_probs(const AttnDims& dims, const AttnOpts& opts, const float* q, const KvStore& kv, const float* lse,
                      float* probs, uint8_t* keep);
void exact_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y);

}  // namespace kvs
