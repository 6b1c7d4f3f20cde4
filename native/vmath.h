// Row kernels of the online softmax, written as plain loops the compiler vectorises. They are
// compiled for AVX-512, AVX2+FMA and baseline x86-64 (one picked at load time), so one build
// runs anywhere and uses the widest vectors the CPU has.
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

// Tiny heads (d_k, d_v < TINY_D): the online-softmax update of R query rows by n keys, eight
// rows per vector (lane i: row r0 + i), so no row's work is narrower than a vector and the rows'
// exp chains run side by side. Row r sees keys [0, vis[r]) of the block; a row that sees none is
// left as it was. q [R, d_k], k [n, d_k], v [n, d_v] (fp32 rows), m, l [R], acc [R, d_v];
// scores: scratch of 8·n floats. No score modifiers or dropout (softmax_block handles those).
constexpr int64_t TINY_D = 16;
void tiny_update(const float* q, int64_t R, const float* k, const float* v, int64_t n, int64_t d_k, int64_t d_v,
                 float scale, const int64_t* vis, float* m, float* l, float* acc, float* scores);

// The variant of these kernels in use (the tile kernels follow it), and its name for info().vmath:
// "baseline", "avx2" (with FMA) or "avx512f" (with FMA).
enum class Isa { Baseline, Avx2, Avx512f };
Isa vmath_level();
const char* vmath_isa();

// y [M, N] = x [M, K] · w [K, N] + b [N] (b may be null) for products too small to repay a BLAS
// call (its argument checks, buffer locks and packing cost microseconds): each row of y is
// summed in registers over k in order, 32 columns at a time.
void small_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y);

}  // namespace kvs
