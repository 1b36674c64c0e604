// The kernels' thread pool: ParallelFor over independent units of work, with workers that sleep as soon as
// a call has no work left for them.
//
// Why not OpenMP: MindSpore has already loaded libgomp (with its default wait policy) when it opens this
// library, and libgomp's workers spin after every parallel region. On a machine where MindSpore's own
// threads want the cores, the spinning worker takes them away: measured on MindSpore 2.10 with 2 cores, a
// small incre_flash_attention call took 8 ms with OpenMP and 0.6 ms with OMP_WAIT_POLICY=passive, which a
// library cannot set for a runtime that is already initialised. These workers block on a condition variable
// instead, and the calling thread never waits for a worker that has not started: it takes units itself from
// the first moment and waits only for units a worker has actually claimed. A process forked from one that
// used the pool (whose children have no workers) therefore still runs every call, on one thread.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace msa {

// MS_ATTENTION_NUM_THREADS when set, else the CPUs this process may run on. Not OMP_NUM_THREADS: MindSpore
// sets it to 1 in its own environment when the user has not set it, which would make every kernel serial.
inline int ConfiguredThreads() {
  if (const char *env = std::getenv("MS_ATTENTION_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

class ThreadPool {
 public:
  // The process-wide pool, created on first use and never destroyed (its workers sleep at exit).
  static ThreadPool &Instance() {
    static ThreadPool *pool = new ThreadPool(ConfiguredThreads());
    return *pool;
  }

  // Threads a ParallelFor may use, the caller included: the number of scratch slots to provide.
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i, slot) for every i in [0, n), on the calling thread and the workers; slot < threads() is
  // distinct among the threads of this call (an index for per-thread scratch). fn must not throw. A call
  // made while another one is using the pool runs on the calling thread alone.
  //
  // A call whose units took less than kSerialNs in all the last time this call site ran (each lambda is its
  // own type) starts on the calling thread alone, and wakes the workers only if it runs past kSerialNs: waking
  // a worker costs a futex wake and a context switch, and on a busy machine a worker that claims a unit late
  // makes the caller wait for it (measured: a small PyNative decode took 40 us longer with 2 threads than with
  // 1 while the other core was busy).
  template <class Fn>
  void ParallelFor(int64_t n, Fn &&fn) {
    if (n <= 0) return;
    static std::atomic<int64_t> unit_ns{-1};  // one unit's single-thread time at this call site, -1 unknown
    const Clock::time_point start = Clock::now();
    int64_t first = 0;  // the first unit not yet run
    const int64_t known = unit_ns.load(std::memory_order_relaxed);
    if (n == 1 || workers_.empty() || (known >= 0 && known * n < kSerialNs)) {
      while (first < n) {
        fn(first, 0);
        ++first;
        if (first < n && !workers_.empty() && ElapsedNs(start) > kSerialNs) break;
      }
      if (first == n) {
        unit_ns.store(ElapsedNs(start) / n, std::memory_order_relaxed);
        return;
      }
    }
    const int threads_used = RunOnPool(first, n, fn);
    unit_ns.store(ElapsedNs(start) * threads_used / n, std::memory_order_relaxed);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int64_t kSerialNs = 40000;

  static int64_t ElapsedNs(Clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  }

  struct Job {
    int64_t n;
    void (*call)(void *fn, int64_t i, int slot);
    void *fn;
    std::atomic<int64_t> next;
    std::atomic<int> joined{0};  // workers that took part
    void Work(int slot) {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) call(fn, i, slot);
    }
  };

  // Runs units [first, n) on the calling thread and the workers; returns the threads that took part.
  template <class Fn>
  int RunOnPool(int64_t first, int64_t n, Fn &fn) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (workers_.empty() || job_ != nullptr) {
      lock.unlock();
      for (int64_t i = first; i < n; ++i) fn(i, 0);
      return 1;
    }
    Job job{n, [](void *f, int64_t i, int slot) { (*static_cast<Fn *>(f))(i, slot); }, &fn, {first}};
    job_ = &job;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    job.Work(0);
    lock.lock();
    job_ = nullptr;  // a worker that wakes from now on finds nothing to do
    done_.wait(lock, [this] { return inside_ == 0; });
    return 1 + job.joined.load(std::memory_order_relaxed);
  }

  explicit ThreadPool(int threads) {
    for (int slot = 1; slot < threads; ++slot) {
      try {
        workers_.emplace_back([this, slot] { WorkerLoop(slot); });
      } catch (...) {  // no more threads: run with those that exist
        break;
      }
    }
    for (std::thread &t : workers_) t.detach();
  }

  void WorkerLoop(int slot) {
    // A worker would otherwise carry the name of the thread that created it (MindSpore's "backend_queue" or
    // "ActorThread_0"), which hides it among MindSpore's own threads in top -H and /proc/<pid>/task/*/comm.
    pthread_setname_np(pthread_self(), "msa_worker");
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      Job *job = job_;
      if (job == nullptr) continue;  // that call has already finished
      ++inside_;
      lock.unlock();
      job->joined.fetch_add(1, std::memory_order_relaxed);
      job->Work(slot);
      lock.lock();
      if (--inside_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  Job *job_ = nullptr;     // the call in progress
  uint64_t generation_ = 0;  // counts calls, so a worker runs each at most once
  int inside_ = 0;         // workers inside job_
};

}  // namespace msa
