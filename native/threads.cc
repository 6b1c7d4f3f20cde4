#include "threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "gemm.h"

namespace kvs {

namespace {

// A persistent pool: workers sleep on a condition variable between jobs; a job is a task
// count and a function, tasks are claimed from a shared counter (uneven tasks balance), and the
// calling thread works too. One job at a time (calls from several JS threads are serialised).
class Pool {
 public:
  ~Pool() { resize(0); }

  void resize(int workers) {
    std::lock_guard<std::mutex> job(job_mu_);  // never while a job (from another JS thread) runs
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
    stop_ = false;
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }

  int size() const { return (int)threads_.size(); }

  void run(int64_t n, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> job(job_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      next_ = 0;
      active_ = (int)threads_.size();
      ++generation_;
    }
    wake_.notify_all();
    claim();
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return active_ == 0; });
    fn_ = nullptr;
  }

 private:
  void claim() {
    for (int64_t i; (i = next_.fetch_add(1)) < n_;) (*fn_)(i);
  }

  void work() {
    uint64_t seen = 0;
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
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p;
  return p;
}
std::atomic<int> g_threads{1};

}  // namespace

void set_num_threads(int n) {
  n = std::max(1, n);
  blas_set_threads(1);
  if (n != g_threads) pool().resize(n - 1);
  g_threads = n;
}

int get_num_threads() { return g_threads; }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn, double flops) {
  // Below ~1 MFLOP in all, waking workers costs more than it saves.
  if (g_threads <= 1 || n <= 1 || flops < 1e6) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool().run(n, fn);
}

}  // namespace kvs
