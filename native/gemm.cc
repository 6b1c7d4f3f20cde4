#include "gemm.h"

#include <algorithm>
#include <vector>

#ifdef KVSTREAM_OPENBLAS
#include <cblas.h>
extern "C" {
char* openblas_get_corename(void);
}
#endif

namespace kvs {

#ifdef KVSTREAM_OPENBLAS

void sgemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
              M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void sgemv(bool trans, int rows, int cols, float alpha, const float* A, int lda, const float* x, float beta, float* y) {
  if (rows == 0 || cols == 0) return;
  cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, rows, cols, alpha, A, lda, x, 1, beta, y, 1);
}
const char* blas_name() { return "openblas"; }
void blas_set_threads(int n) { openblas_set_num_threads(n); }
int blas_get_threads() { return openblas_get_num_threads(); }
const char* blas_core() { return openblas_get_corename(); }

#else

// Portable kernel: C rows are scaled by beta first, then op(A)·op(B) is added one
// (KC x NC) panel of op(B) at a time, packed row-major so the inner j loop is unit-stride
// and vectorises. Blocks are sized for L2 (KC*NC*4 = 256 KiB).
namespace {
constexpr int KC = 256, NC = 256, MC = 64;
}

void sgemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  for (int i = 0; i < M; ++i) {
    float* c_i = C + (int64_t)i * ldc;
    if (beta == 0.0f) std::fill(c_i, c_i + N, 0.0f);
    else if (beta != 1.0f) for (int j = 0; j < N; ++j) c_i[j] *= beta;
  }
  if (K == 0 || alpha == 0.0f) return;
  thread_local std::vector<float> packed((size_t)KC * NC);  // reused: sgemm runs per key block
  for (int j0 = 0; j0 < N; j0 += NC) {
    const int nc = std::min(NC, N - j0);
    for (int k0 = 0; k0 < K; k0 += KC) {
      const int kc = std::min(KC, K - k0);
      // packed[k, j] = op(B)[k0 + k, j0 + j]
      for (int k = 0; k < kc; ++k) {
        float* p_k = packed.data() + (size_t)k * nc;
        if (transB) {
          for (int j = 0; j < nc; ++j) p_k[j] = B[(int64_t)(j0 + j) * ldb + k0 + k];
        } else {
          const float* b_k = B + (int64_t)(k0 + k) * ldb + j0;
          std::copy(b_k, b_k + nc, p_k);
        }
      }
      for (int i0 = 0; i0 < M; i0 += MC) {
        const int mc = std::min(MC, M - i0);
        for (int i = i0; i < i0 + mc; ++i) {
          float* __restrict c_ij = C + (int64_t)i * ldc + j0;
          for (int k = 0; k < kc; ++k) {
            const float a = alpha * (transA ? A[(int64_t)(k0 + k) * lda + i] : A[(int64_t)i * lda + k0 + k]);
            const float* __restrict p_k = packed.data() + (size_t)k * nc;
            for (int j = 0; j < nc; ++j) c_ij[j] += a * p_k[j];
          }
        }
      }
    }
  }
}
void sgemv(bool trans, int rows, int cols, float alpha, const float* A, int lda, const float* x, float beta, float* y) {
  const int ny = trans ? cols : rows;
  for (int i = 0; i < ny; ++i) y[i] = beta == 0.0f ? 0.0f : beta * y[i];
  if (trans) {  // y += alpha · Σ_r x[r] · A[r, :], unit stride
    for (int r = 0; r < rows; ++r) {
      const float a = alpha * x[r];
      const float* __restrict a_r = A + (int64_t)r * lda;
      for (int c = 0; c < cols; ++c) y[c] += a * a_r[c];
    }
  } else {
    for (int r = 0; r < rows; ++r) {
      const float* a_r = A + (int64_t)r * lda;
      float dot = 0.0f;
      for (int c = 0; c < cols; ++c) dot += a_r[c] * x[c];
      y[r] += alpha * dot;
    }
  }
}
const char* blas_name() { return "portable"; }
void blas_set_threads(int) {}
int blas_get_threads() { return 1; }
const char* blas_core() { return "portable"; }

#endif

}  // namespace kvs
