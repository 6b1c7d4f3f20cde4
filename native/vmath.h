// Row kernels of the online softmax, written as plain loops the compiler vectorises. They are
// compiled for AVX-512, AVX2+FMA and baseline x86-64 (GCC target_clones picks one at load
// time), so one build runs anywhere and uses the widest vectors the CPU has.
#pragma once
#include <cstdint>

namespace kvs {

// max over x[0, n); -inf for n == 0.
float row_max(const float* x, int64_t n);

// x[i] = exp(x[i] - m) for i < n; returns the sum. Uses a degree-6 polynomial exp on the
// reduced argument (relative error < 2.3e-7); arguments below -87.3 give 0.
float exp_sub_sum(float* x, int64_t n, float m);

// x[i] *= a for i < n.
void scale_row(float* x, int64_t n, float a);

// Few-row products for decode-sized queries, where BLAS call overhead dominates:
// out [rows, n] = scale · q [rows, d] · k [n, d]ᵀ  (k rows have stride d)
void dot_rows(const float* q, int64_t rows, const float* k, int64_t n, int64_t d, float scale, float* out);
// acc [rows, d] += p [rows, n] · v [n, d]
void accumulate_pv(const float* p, int64_t rows, const float* v, int64_t n, int64_t d, float* acc);

// y [M, N] = x [M, K] · w [K, N] + b [N] (b may be null) for products too small to repay a BLAS
// call (its argument checks, buffer locks and packing cost microseconds): each row of y is
// summed in registers over k in order, 32 columns at a time.
void small_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y);

}  // namespace kvs
