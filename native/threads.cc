#include "threads.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "gemm.h"

namespace kvs {

namespace {
std::atomic<int> g_threads{1};
}

void set_num_threads(int n) {
  g_threads = std::max(1, n);
  blas_set_threads(1);
}

int get_num_threads() { return g_threads; }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  const int workers = (int)std::min<int64_t>(g_threads, n);
  if (workers <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // Tasks are claimed one at a time from a shared counter: uneven tasks (causal) balance.
  std::atomic<int64_t> next{0};
  auto run = [&] {
    for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) pool.emplace_back(run);
  run();
  for (auto& t : pool) t.join();
}

}  // namespace kvs
