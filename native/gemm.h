// Single-precision GEMM/GEMV, row-major: OpenBLAS when linked, else a portable blocked kernel.
#pragma once
#include <cstdint>

namespace kvs {

// C[M,N] = alpha * op(A) * op(B) + beta * C, all row-major.
// op(A) is [M,K] (A stored [K,M] when transA), op(B) is [K,N] (B stored [N,K] when transB).
// beta == 0 overwrites C without reading it.
void sgemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

// y[M] = alpha · op(A) · x + beta · y, A row-major [rows, cols]; op(A) = A ([rows, cols], x has
// cols entries) or Aᵀ when trans (x has rows entries, y has cols). beta == 0 overwrites y.
void sgemv(bool trans, int rows, int cols, float alpha, const float* A, int lda, const float* x, float beta, float* y);

// "openblas" or "portable".
const char* blas_name();

// OpenBLAS's own thread count (no-op for the portable kernel, which is single-threaded).
void blas_set_threads(int n);
int blas_get_threads();

// Name of the OpenBLAS core in use ("Haswell", "SkylakeX", ...), or "portable".
const char* blas_core();

}  // namespace kvs
