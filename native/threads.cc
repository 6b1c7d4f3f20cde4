#include "threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "gemm.h"

namespace kvs {

namespace {

// True on a pool worker and on a caller while its job runs: a parallel_for there runs serially
// (the job lock is not recursive and every worker is already busy).
thread_local bool t_in_job = false;

// A persistent pool: workers sleep on a condition variable between jobs; a job is a task
// count and a function, tasks are claimed from a shared counter (uneven tasks balance), and the
// calling thread works too. One job at a time: a caller that finds the pool busy (another JS
// thread, e.g. a worker_threads isolate) runs its tasks itself instead of waiting.
class Pool {
 public:
  ~Pool() { stop_workers(); }

  // Never while a job runs (resize takes the job lock). On failure to start a thread the pool
  // keeps the workers that did start and rethrows.
  void resize(int workers) {
    std::lock_guard<std::mutex> job(job_mu_);
    stop_workers();
    const uint64_t gen = generation_;  // no job runs now: a new worker waits for the next one
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, gen] { work(gen); });
  }

  int size() const { return (int)threads_.size(); }

  // False when another thread's job holds the pool: the caller then runs fn itself.
  bool try_run(int64_t n, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> job(job_mu_, std::try_to_lock);
    if (!job.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      next_ = 0;
      error_ = nullptr;
      active_ = (int)threads_.size();
      ++generation_;
    }
    wake_.notify_all();
    t_in_job = true;
    claim();
    t_in_job = false;
    std::exception_ptr error;
    {
      // Every worker has left claim() before fn (on the caller's stack) can go away.
      std::unique_lock<std::mutex> lock(mu_);
      done_.wait(lock, [this] { return active_ == 0; });
      fn_ = nullptr;
      error = error_;
      error_ = nullptr;
    }
    if (error) std::rethrow_exception(error);
    return true;
  }

 private:
  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
    stop_ = false;
  }

  // Claims tasks until none are left; the first exception stops further claims.
  void claim() {
    for (int64_t i; (i = next_.fetch_add(1)) < n_;) {
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
        next_ = n_;
      }
    }
  }

  void work(uint64_t seen) {
    t_in_job = true;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      lock.unlock();
      claim();
      lock.lock();
      if (--active_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex job_mu_, mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// Never destroyed: at exit() a worker_threads isolate or libuv thread may still be inside a job,
// and joining there would race with it; the OS reaps the threads.
Pool& pool() {
  static Pool& p = *new Pool;
  return p;
}
std::mutex g_threads_mu;
std::atomic<int> g_threads{1};

}  // namespace

void set_num_threads(int n) {
  n = std::clamp(n, 1, MAX_THREADS);
  std::lock_guard<std::mutex> lock(g_threads_mu);
  blas_set_threads(1);
  if (n == g_threads) return;
  try {
    pool().resize(n - 1);
  } catch (...) {
    pool().resize(0);
    g_threads = 1;
    throw;
  }
  g_threads = n;
}

int get_num_threads() { return g_threads; }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, double flops) {
  // Below ~1 MFLOP in all, waking workers costs more than it saves.
  const bool serial = g_threads <= 1 || n <= 1 || flops < 1e6 || t_in_job;
  if (!serial && pool().try_run(n, fn)) return;
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace kvs
