#include "tile.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernel_path.h"
#include "philox.h"
#include "threads.h"
#include "vec.h"
#include "vmath.h"
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace kvs {

namespace {
// The row kernels' level (vmath.cc: the CPU's, lowered by KVSTREAM_VMATH); Baseline, which has no
// tile, under KVSTREAM_TILE=off (CI runs the parity tests both ways).
Isa tile_isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const Isa isa = [] {
    const char* env = getenv("KVSTREAM_TILE");
    return env && std::string(env) == "off" ? Isa::Baseline : vmath_level();
  }();
  return isa;
#else
  return Isa::Baseline;
#endif
}
}  // namespace

bool tile_available() { return tile_isa() != Isa::Baseline; }

bool tile_supported(int64_t d_k, int64_t d_v) { return tile_available() && d_k % 16 == 0 && d_v % 16 == 0; }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

// The two instantiations, internal to this file (so GCC may inline across them as before).
namespace {

// AVX-512F: 16 lanes, 32 registers (scores 12 keys × 32 queries, P·V 6 rows × 64 columns).
namespace avx512 {
typedef float V __attribute__((vector_size(64)));
typedef int32_t VI __attribute__((vector_size(64)));
constexpr int W = 16, JN = 12, NVMAX = 4, SMAX_NT = 8;
constexpr int64_t PACK_ABOVE = 512;  // rows of w up to 2 KiB apart stream well in place
#define KVS_TGT __attribute__((target("avx512f,fma")))
// One vbroadcastss (folded into the FMA as a memory operand).
KVS_TGT __attribute__((always_inline)) inline V bcast(const float* p) { return (V)_mm512_set1_ps(*p); }
#include "tile_kernels.inc"
#undef KVS_TGT
}  // namespace avx512

// AVX2 + FMA: 8 lanes, 16 registers (scores 6 keys × 16 queries, P·V 6 rows × 16 columns,
// softmax in groups of 32 queries).
namespace avx2 {
typedef float V __attribute__((vector_size(32)));
typedef int32_t VI __attribute__((vector_size(32)));
constexpr int W = 8, JN = 6, NVMAX = 2, SMAX_NT = 4;
// w is packed unless it is one slab: a slab row is one 64-byte line, and lines N floats apart
// alias in L1 (Zen 1, N 512: 29 GFLOP/s in place, 35 packed).
constexpr int64_t PACK_ABOVE = NVMAX * W;
#define KVS_TGT __attribute__((target("avx2,fma")))
KVS_TGT __attribute__((always_inline)) inline V bcast(const float* p) { return (V)_mm256_set1_ps(*p); }
#include "tile_kernels.inc"
#undef KVS_TGT
}  // namespace avx2

// tile_available() is false at Isa::Baseline, so the dispatchers never see it; reaching it is a bug.
[[noreturn]] void no_tile(const char* what) {
  throw std::logic_error(std::string(what) + ": called with the tile off (info().tile is false)");
}

}  // namespace

void tile_update(const AttnOpts& o, int64_t b, int64_t h, const float* q, int64_t tq, int64_t t_abs0, const float* k,
                 const float* v, int64_t S, int64_t d_k, int64_t d_v, float* m, float* l, float* acc) {
  switch (tile_isa()) {
    case Isa::Avx512f: return avx512::tile_update(o, b, h, q, tq, t_abs0, k, v, S, d_k, d_v, m, l, acc);
    case Isa::Avx2: return avx2::tile_update(o, b, h, q, tq, t_abs0, k, v, S, d_k, d_v, m, l, acc);
    default: no_tile("tile_update");
  }
}

int64_t tile_linear_slab() {
  switch (tile_isa()) {
    case Isa::Avx512f: return avx512::SLAB;
    case Isa::Avx2: return avx2::SLAB;
    default: return 0;
  }
}

void tile_linear(int64_t M, int64_t K, int64_t N, const float* x, const float* w, const float* b, float* y,
                 HeadSplit split) {
  const int64_t slab = tile_linear_slab();
  if (slab == 0) no_tile("tile_linear");
  const bool given = split.T != 0 || split.d != 0;
  if (given && (split.T <= 0 || split.d <= 0 || M % split.T || N % split.d || (split.d < N && split.d % slab)))
    throw std::logic_error("tile_linear: head split [T, d] = [" + std::to_string(split.T) + ", " + std::to_string(split.d) +
                           "] does not tile [M, N] = [" + std::to_string(M) + ", " + std::to_string(N) + "]");
  switch (tile_isa()) {
    case Isa::Avx512f: return avx512::tile_linear(M, K, N, x, w, b, y, split);
    case Isa::Avx2: return avx2::tile_linear(M, K, N, x, w, b, y, split);
    default: no_tile("tile_linear");
  }
}

#else

// tile_available() is false here, so the dispatchers never call these; reaching one is a bug.
int64_t tile_linear_slab() { return 0; }

void tile_linear(int64_t, int64_t, int64_t, const float*, const float*, const float*, float*, HeadSplit) {
  throw std::logic_error("tile_linear: this build has no tile kernel");
}

void tile_update(const AttnOpts&, int64_t, int64_t, const float*, int64_t, int64_t, const float*, const float*, int64_t,
                 int64_t, int64_t, float*, float*, float*) {
  throw std::logic_error("tile_update: this build has no tile kernel");
}

#endif

}  // namespace kvs
