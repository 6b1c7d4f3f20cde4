// Attention tile: one query block against all keys of one head, with the scores kept transposed
// (keys × queries) so that scores, softmax and both products vectorise over queries and no BLAS
// packing is needed. Built for AVX-512F and for AVX2 + FMA (native/tile_kernels.inc, one body),
// used at the row kernels' level (info().vmath) when d_k, d_v are multiples of 16; everything
// else takes the BLAS path.
#pragma once
#include <cstdint>

#include "attention.h"

namespace kvs {

// The CPU has AVX-512F or AVX2 + FMA (as vmath_isa() reports) and KVSTREAM_TILE is not "off".
bool tile_available();

// tile_available() and both head widths are multiples of 16.
bool tile_supported(int64_t d_k, int64_t d_v);

// Largest query block the tile handles.
constexpr int64_t TILE_TQ = 128;

// Folds keys [0, S) of one head into the state rows of one query block:
//   q [tq, d_k] (tq <= TILE_TQ) at absolute positions t_abs0.., query head h of batch b
//   k [S, d_k], v [S, d_v] (row stride d_k / d_v), keys at absolute positions o.s_offset..
//   m, l [tq], acc [tq, d_v]
void tile_update(const AttnOpts& o, int64_t b, int64_t h, const float* q, int64_t tq, int64_t t_abs0, const float* k,
                 const float* v, int64_t S, int64_t d_k, int64_t d_v, float* m, float* l, float* acc);

// Rows per task of tile_linear.
constexpr int64_t TILE_LINEAR_MB = 96;

// Columns of tile_linear's micro-tile (16 on AVX2, 64 on AVX-512); 0 without the tile.
int64_t tile_linear_slab();

// A product's rows i = b·T + t and columns j = h·d + c stored head-split, [B, N/d, T, d]:
// element (i, j) at y[((b·(N/d) + h)·T + t)·d + c]. The default is plain row-major [M, N].
struct HeadSplit {
  int64_t T = 0, d = 0;
};

// y [M, N] = x [M, K] · w [K, N] + b [N] (b may be null) on the tile micro-kernel; needs
// tile_available() and N % 16 == 0; a head split needs M % T == 0 and d a multiple of
// tile_linear_slab() dividing N. Parallel over row blocks and column slabs.
void tile_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y,
                 HeadSplit split = {});

}  // namespace kvs
