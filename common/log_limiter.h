// LogLimiter: at most N log lines a second from one source of lines that a
// peer can provoke (refused calls, gRPC's own errors), so a flood of them
// cannot flood the log; the first line let through after some were held
// back says how many. Lock-free; thread-safe.
#ifndef IRQBYPASS_COMMON_LOG_LIMITER_H_
#define IRQBYPASS_COMMON_LOG_LIMITER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "common/mutex.h"

namespace irqbypass {

class LogLimiter {
 public:
  explicit LogLimiter(int per_second) : per_second_(per_second) {}

  // Whether to log this line; if so, `*left_out` is how many lines were
  // held back since the last one logged.
  bool Allow(uint64_t* left_out) {
    // A monotonic second, moved only forward (a thread that read the clock
    // just before a later one won never moves it back).
    const int64_t second =
        std::chrono::duration_cast<std::chrono::seconds>(
            std::chrono::steady_clock::now().time_since_epoch())
            .count();
    int64_t seen = second_.load(std::memory_order_relaxed);
    while (seen < second) {
      if (second_.compare_exchange_weak(seen, second,
                                        std::memory_order_relaxed)) {
        this_second_.store(0, std::memory_order_relaxed);
        break;
      }
    }
    if (this_second_.fetch_add(1, std::memory_order_relaxed) >= per_second_) {
      held_back_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    *left_out = held_back_.exchange(0, std::memory_order_relaxed);
    return true;
  }

 private:
  const int per_second_;
  std::atomic<int64_t> second_{0};
  std::atomic<int> this_second_{0};
  std::atomic<uint64_t> held_back_{0};
};

// One LogLimiter per key (a source line, a method), made on first use:
// a flood from one source cannot hide another's lines. Keys must come from
// a small set the program names, not from peers. Thread-safe.
class KeyedLogLimiter {
 public:
  explicit KeyedLogLimiter(int per_second) : per_second_(per_second) {}

  // LogLimiter::Allow for `key`'s budget.
  bool Allow(absl::string_view key, uint64_t* left_out) {
    LogLimiter* limiter;
    {
      MutexLock lock(&mu_);
      auto& slot = limiters_[key];
      if (slot == nullptr) slot = std::make_unique<LogLimiter>(per_second_);
      limiter = slot.get();  // stable: entries are never removed
    }
    return limiter->Allow(left_out);
  }

 private:
  const int per_second_;
  Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<LogLimiter>> limiters_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_LOG_LIMITER_H_
