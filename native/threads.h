// A minimal parallel-for over independent tasks; the kernels split (b, h, query block) work
// with it and keep OpenBLAS at one thread inside, so the two never oversubscribe the cores.
#pragma once
#include <cstdint>
#include <functional>

namespace kvs {

// Largest worker count setNumThreads accepts (the binding and the loader check it first).
constexpr int MAX_THREADS = 256;

// n in [1, MAX_THREADS]; throws std::system_error when the threads cannot be started (the pool
// is then left at one thread). Safe to call from several threads: calls are serialised and
// wait for a running job.
void set_num_threads(int n);
int get_num_threads();

// Runs fn(i) for i in [0, n) on up to get_num_threads() threads; returns when all are done.
// `flops` estimates the whole job: small jobs run on the calling thread. An exception thrown by
// a task is caught on its thread; once every claimed task has finished, the first one is
// rethrown on the caller (the remaining tasks are skipped), as ATen's parallel_for does. A
// parallel_for inside a task, or while another thread's job runs, runs serially on its caller.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, double flops);

}  // namespace kvs
