// A KV cache's storage as the kernels read it: fp32, fp16, bf16 or int8 with scales. Kernels
// never expand a whole cache: the row path reads it in place where kv_direct says so (kv_dot,
// kv_accumulate), the other paths convert one block of rows at a time into per-thread scratch
// (fp32 storage is read in place).
//
// Layout: k [B, H_kv, s_cap, d_k], v [B, H_kv, s_cap, d_v] in `dtype`;
// int8: k_scale [B, H_kv, s_cap, ceil(d_k / Q8_GROUP)], v_scale likewise with d_v: element d of
// row s is k[s, d] · k_scale[s, d / Q8_GROUP] (symmetric, one scale per row and 32 channels: the
// q8_0 scheme of llama.cpp's caches).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace kvs {

enum class KvDtype : int { F32, F16, BF16, I8 };
constexpr int64_t Q8_GROUP = 32;

inline int64_t q8_groups(int64_t d) { return (d + Q8_GROUP - 1) / Q8_GROUP; }

// Paged storage (vLLM-style): k, v (and int8 scales) are pools of pages [pages, H_kv, page, d];
// batch row b's logical position s lives in page block_table[b · max_blocks + s / page] at row
// s % page. Pages may be shared between rows (a common prefix).
struct KvPages {
  const int32_t* block_table = nullptr;  // [B, max_blocks]; null: contiguous storage
  int64_t page = 0, max_blocks = 0, H_kv = 1;
};

struct KvStore {
  KvDtype dtype;
  const void* k;
  const void* v;
  const float* k_scale;  // int8 only
  const float* v_scale;  // int8 only
  KvPages pages{};
  // Direct kernels: prefetch non-temporally (the call reads more than kv_stream_bytes()).
  bool stream = false;
};

// Bytes of one stored row of width d (int8 with its scales).
int64_t kv_row_bytes(KvDtype dtype, int64_t d);
// A call that reads more storage than this streams it (KvStore::stream): more than the
// last-level cache (sysfs's L3 size, else 8 MiB) cannot stay there until the next call.
// info().kvStreamBytes.
int64_t kv_stream_bytes();

// Rows per block that a path may request so that a block never straddles a page (fp32 pages are
// then read in place); `block` for contiguous storage.
inline int64_t kv_block_rows(const KvStore& kv, int64_t block) {
  return kv.pages.block_table ? std::min(block, kv.pages.page) : block;
}

inline KvStore kv_f32(const float* k, const float* v) { return {KvDtype::F32, k, v, nullptr, nullptr}; }

// Rows [s0, s0 + n) of kv head bh_kv (b·H_kv + h_kv) of k (is_v false, width d = d_k) or v, as
// fp32 [n, d]: a pointer into the cache for fp32, else `scratch` filled by exact conversion
// (fp16 and bf16 widen exactly; int8 is one fp32 product per element).
const float* kv_rows(const KvStore& kv, bool is_v, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n,
                     std::vector<float>& scratch);

// Row-path kernels that read storage in place, widening in registers (AVX2, FMA and F16C; runtime
// dispatch). kv_direct says whether they run on this CPU (every storage, any number of query rows
// per kv head; attn_update still sends heads under 16 wide with 4+ rows to tiny_update). When
// false (no AVX2, KVSTREAM_VMATH=baseline, or KVSTREAM_KV_SIMD=off, which also sends kv_rows to
// its portable converters) the caller runs vmath's and BLAS's fp32 kernels on kv_rows blocks. One
// query row widens in registers; several rows share each chunk of 32 keys in L1 (fp32 read in
// place, other storage widened there).
bool kv_direct();  // info().kvDirect
// out [R, n] = scale · q [R, d] · kᵀ over keys [s0, s0 + n) of kv head bh_kv (k rows of width d).
// q8_query: int8 storage, R == 1 and d % 32 == 0 only: q is quantized like the keys (q8, groups
// of 32) and the dot runs in integers; the caller sets it when the call's only query row per kv
// head is this one (decode with H = H_kv), so that no row of a call is quantized and another not.
void kv_dot(const KvStore& kv, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n, const float* q,
            int64_t R, float scale, float* out, bool q8_query = false);
// acc [R, d] += p [R, n] · v over keys [s0, s0 + n) of kv head bh_kv (v rows of width d).
// q16_weights: int8 storage, R == 1 and d % 32 == 0 only: the weights p · v_scale are quantized
// to int16 per block of 64 keys and the sums run in integers (set, as q8_query, for a call's only
// query row per kv head; the error it adds is bounded in kvstore.cc's pv1_i8q).
void kv_accumulate(const KvStore& kv, int64_t bh_kv, int64_t s_cap, int64_t d, int64_t s0, int64_t n, const float* p,
                   int64_t R, float* acc, bool q16_weights = false);

// vmath.h's row_max and exp_sub_sum (same polynomial) in 8-lane AVX2 code, which the softmax
// takes where softmax_avx2() (AVX2, FMA and F16C without AVX-512F): there GCC compiles vmath's
// 16-float compares to scalar code.
bool softmax_avx2();
float row_max_avx2(const float* x, int64_t n);
float exp_sub_sum_avx2(float* x, int64_t n, float m);

// One fp16 value (IEEE binary16 bits) as fp32, exactly.
float f16_to_f32(uint16_t h);

}  // namespace kvs
