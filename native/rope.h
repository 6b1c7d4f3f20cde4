// Rotary position embedding (RoPE), fp32, in place or out of place. No V8 here.
//   x, out     [B, H, T, d]
//   positions  [B, T]        absolute position of each token (per batch row)
// Channels [0, rot) rotate in rot/2 pairs with frequencies inv_freq_i = theta^(-2i/rot):
//   half-split (GPT-NeoX / Llama): pair (i, i + rot/2); interleaved (GPT-J): pair (2i, 2i + 1).
// Channels [rot, d) pass through. Angles are computed in float64, cos and sin rounded to fp32.
#pragma once
#include <cstdint>

namespace kvs {

struct RopeDims {
  int64_t B, H, T, d;
};

struct RopeOpts {
  int64_t rot;       // even, 2 <= rot <= d
  double theta;      // base, > 0
  bool interleaved;  // false: half-split
};

void rope_apply(const RopeDims& dims, const RopeOpts& o, const int32_t* positions, const float* x, float* out);

}  // namespace kvs
