// A minimal parallel-for over independent tasks; the kernels split (b, h, query block) work
// with it and keep OpenBLAS at one thread inside, so the two never oversubscribe the cores.
#pragma once
#include <cstdint>
#include <functional>

namespace kvs {

void set_num_threads(int n);  // n >= 1
int get_num_threads();

// Runs fn(i) for i in [0, n) on up to get_num_threads() threads; returns when all are done.
// `flops` estimates the whole job: small jobs run on the calling thread.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, double flops);

}  // namespace kvs
