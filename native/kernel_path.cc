#include "kernel_path.h"

namespace kvs {

namespace {
std::atomic<int> g_path{(int)KernelPath::Auto};
}

std::atomic<uint64_t> g_counters[COUNTER_COUNT];

const char* const COUNTER_NAMES[COUNTER_COUNT] = {
#define KVS_NAME(id, name) name,
    KVS_COUNTERS(KVS_NAME)
#undef KVS_NAME
};

KernelPath kernel_path() { return (KernelPath)g_path.load(std::memory_order_relaxed); }
void set_kernel_path(KernelPath p) { g_path.store((int)p, std::memory_order_relaxed); }

const char* kernel_path_name(KernelPath p) {
  switch (p) {
    case KernelPath::Tile: return "tile";
    case KernelPath::Blas: return "blas";
    case KernelPath::Rows: return "rows";
    case KernelPath::Deterministic: return "deterministic";
    default: return "auto";
  }
}

void reset_counters() {
  for (auto& c : g_counters) c.store(0, std::memory_order_relaxed);
}

}  // namespace kvs
