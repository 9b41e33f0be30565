// Latency samples -> summary (count, avg, p50, p99, p99.9, max), for the
// benchmarks. Not thread-safe: each thread fills its own LatencySamples and
// they are merged afterwards.
#ifndef IRQBYPASS_BENCH_LATENCY_STATS_H_
#define IRQBYPASS_BENCH_LATENCY_STATS_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"

namespace irqbypass::bench {

struct LatencySummary {
  uint64_t count = 0;
  double avg_ns = 0;
  int64_t p50_ns = 0;
  int64_t p99_ns = 0;
  int64_t p999_ns = 0;
  int64_t max_ns = 0;
  uint64_t over_1ms = 0;  // samples of 1 ms or more
};

class LatencySamples {
 public:
  void Reserve(size_t n) { ns_.reserve(n); }
  void Add(int64_t ns) { ns_.push_back(ns); }
  void Merge(const LatencySamples& other) {
    ns_.insert(ns_.end(), other.ns_.begin(), other.ns_.end());
  }
  size_t size() const { return ns_.size(); }

  // Sorts in place.
  LatencySummary Summarise() {
    LatencySummary s;
    if (ns_.empty()) return s;
    std::sort(ns_.begin(), ns_.end());
    s.count = ns_.size();
    long double sum = 0;
    for (int64_t v : ns_) sum += v;
    s.avg_ns = static_cast<double>(sum / ns_.size());
    auto at = [&](double q) {
      size_t i = static_cast<size_t>(q * (ns_.size() - 1) + 0.5);
      return ns_[std::min(i, ns_.size() - 1)];
    };
    s.p50_ns = at(0.50);
    s.p99_ns = at(0.99);
    s.p999_ns = at(0.999);
    s.max_ns = ns_.back();
    s.over_1ms = static_cast<uint64_t>(
        ns_.end() - std::lower_bound(ns_.begin(), ns_.end(), 1000000));
    return s;
  }

 private:
  std::vector<int64_t> ns_;
};

// "314 ns", "47.6 us", "117.9 ms", "11.43 s"
inline std::string HumanNs(double ns) {
  if (ns < 1e3) return absl::StrFormat("%.0f ns", ns);
  if (ns < 1e6) return absl::StrFormat("%.1f us", ns / 1e3);
  if (ns < 1e9) return absl::StrFormat("%.1f ms", ns / 1e6);
  return absl::StrFormat("%.2f s", ns / 1e9);
}

inline std::string SummaryJson(const LatencySummary& s) {
  return absl::StrFormat(
      "{\"count\": %u, \"avg_ns\": %.1f, \"p50_ns\": %d, \"p99_ns\": %d, "
      "\"p999_ns\": %d, \"max_ns\": %d, \"over_1ms\": %u}",
      s.count, s.avg_ns, s.p50_ns, s.p99_ns, s.p999_ns, s.max_ns, s.over_1ms);
}

}  // namespace irqbypass::bench

#endif  // IRQBYPASS_BENCH_LATENCY_STATS_H_
