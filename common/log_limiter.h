// LogLimiter: at most N log lines a second from one source of lines that a
// peer can provoke (refused calls, gRPC's own errors), so a flood of them
// cannot flood the log; the first line let through after some were held
// back says how many. Lock-free; thread-safe.
#ifndef IRQBYPASS_COMMON_LOG_LIMITER_H_
#define IRQBYPASS_COMMON_LOG_LIMITER_H_

#include <atomic>
#include <chrono>
#include <cstdint>

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

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_LOG_LIMITER_H_
