// Process-wide kernel choice, per-kernel call counters, and checked scratch sizes: what the
// tests use to force and observe each path. No V8 here.
#pragma once
#include <atomic>
#include <cstdio>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvs {

// auto: the fastest applicable path. tile: the tile (AVX-512F or AVX2 + FMA) wherever the head widths allow it
// (also for T <= 16) and for linear. blas: the query-block BLAS path for every T and BLAS for
// linear. rows: the row path (query rows stacked per kv head) for every T. deterministic:
// fixed-order scalar kernels with float64 accumulation and kvstream's own exp/log (exact.h), so
// results are bit-identical on every x86-64 CPU, thread count and BLAS.
enum class KernelPath : int { Auto, Tile, Blas, Rows, Deterministic };

KernelPath kernel_path();
void set_kernel_path(KernelPath p);  // Tile needs tile_available() (the binding checks)
const char* kernel_path_name(KernelPath p);

#define KVS_COUNTERS(X)                                                                        \
  X(attn_rows_tiny, "attn.rows.tiny") X(attn_rows_direct, "attn.rows.direct") X(attn_rows_sgemv, "attn.rows.sgemv") X(attn_rows_dot, "attn.rows.dot") \
  X(attn_rows_sgemm, "attn.rows.sgemm") X(attn_blas, "attn.blas") X(attn_tile, "attn.tile")    \
  X(attn_deterministic, "attn.deterministic") X(tile_softmax_32, "tile.softmax.q32")       \
  X(tile_softmax_64, "tile.softmax.q64") X(tile_softmax_96, "tile.softmax.q96")       \
  X(tile_softmax_128, "tile.softmax.q128") X(tile_pv_tile, "tile.pv_tile")                   \
  X(tile_pv_tail_1, "tile.pv_tail.1") X(tile_pv_tail_2, "tile.pv_tail.2")                       \
  X(tile_pv_tail_3, "tile.pv_tail.3") X(tile_pv_tail_4, "tile.pv_tail.4")                       \
  X(tile_pv_tail_5, "tile.pv_tail.5") X(linear_tile_packed, "linear.tile.packed")               \
  X(linear_tile_inplace, "linear.tile.inplace") X(linear_tile_heads, "linear.tile.heads")       \
  X(linear_sgemv, "linear.sgemv") X(linear_sgemv_split, "linear.sgemv.split")                   \
  X(linear_small, "linear.small") X(linear_sgemm, "linear.sgemm") X(linear_deterministic, "linear.deterministic")              \
  X(probs, "probs") X(probs_deterministic, "probs.deterministic") X(merge, "merge")             \
  X(finalize, "finalize") X(kv_stream, "kv.stream") X(kv_i8_pv_q16, "kv.i8.pv.q16")   \
  X(kv_i8_pv_q16_fp32, "kv.i8.pv.q16.fp32")

enum Counter : int {
#define KVS_ENUM(id, name) id,
  KVS_COUNTERS(KVS_ENUM)
#undef KVS_ENUM
  COUNTER_COUNT
};

extern std::atomic<uint64_t> g_counters[COUNTER_COUNT];
extern const char* const COUNTER_NAMES[COUNTER_COUNT];

// One relaxed increment per kernel call or block: cheap beside the work it counts.
inline void count(Counter c) { g_counters[c].fetch_add(1, std::memory_order_relaxed); }
void reset_counters();

// Largest scratch buffer one call may allocate; larger requests throw ScratchError before any
// allocation (the binding turns it into a RangeError naming the size).
constexpr int64_t SCRATCH_LIMIT_BYTES = int64_t(1) << 31;

struct ScratchError : std::length_error {
  using std::length_error::length_error;
};

// v.resize(n) after checking n elements against SCRATCH_LIMIT_BYTES.
template <typename T>
void resize_scratch(std::vector<T>& v, int64_t n, const char* what) {
  if (n < 0 || n > SCRATCH_LIMIT_BYTES / (int64_t)sizeof(T)) {
    char mib[32];
    snprintf(mib, sizeof mib, "%.1f", (double)n * sizeof(T) / (1 << 20));
    throw ScratchError(std::string(what) + " scratch of " + std::to_string(n) + " elements (" + mib +
                       " MiB) exceeds the " + std::to_string(SCRATCH_LIMIT_BYTES >> 20) + " MiB limit");
  }
  v.resize((size_t)n);
}

}  // namespace kvs
