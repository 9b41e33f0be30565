// ShardedHistogram: a Prometheus histogram family for hot paths (index lock
// waits, RPC latency, agent round trips), exported through prometheus-cpp as
// a prometheus::Collectable.
//
// prometheus-cpp's stock Histogram takes a mutex per Observe, and its Counter
// is one shared atomic: every observing thread writes the same cache lines.
// Here each thread writes its own cell (a thread-local slot picks one of N
// cache-line-aligned cells, N >= 2 x cores), with relaxed atomic adds and no
// lock; Collect() sums the cells at scrape time. Observe allocates nothing.
//
// The family's series are fixed at construction: series i has the label
// values `series_labels[i]`. Callers map their own small enums to a series
// index (e.g. LockOp -> series), so the hot path never builds label strings.
// Values are durations in nanoseconds; bucket bounds are given in seconds
// (Prometheus base units) and exported as `le` in seconds.
//
// A scrape is not a snapshot across cells: it may miss an observation in
// flight, which the next scrape includes. Within one scrape the _count equals
// the +Inf bucket. Thread-safe.
#ifndef IRQBYPASS_METRICS_SHARDED_HISTOGRAM_H_
#define IRQBYPASS_METRICS_SHARDED_HISTOGRAM_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/thread_slot.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace irqbypass {
namespace metrics {

class ShardedHistogram final : public prometheus::Collectable {
 public:
  struct Options {
    std::string name;  // e.g. "irqbypass_index_lock_wait_seconds"
    std::string help;
    std::vector<std::string> label_names;
    // One entry per series, each with label_names.size() values.
    std::vector<std::vector<std::string>> series_labels;
    // Strictly increasing upper bounds, in seconds (+Inf is implicit).
    std::vector<double> bounds_seconds;
    // Export series never observed (zeros) too; otherwise they are left out
    // until their first observation (for large label products).
    bool export_empty_series = true;
    // Cells to spread writers over; 0: a power of two >= 2 x cores, 4..64.
    size_t cells = 0;
  };

  // Aborts on inconsistent options (a programming error: they are constants).
  explicit ShardedHistogram(Options options);
  ~ShardedHistogram() override;
  ShardedHistogram(const ShardedHistogram&) = delete;
  ShardedHistogram& operator=(const ShardedHistogram&) = delete;

  // Records one duration for `series` (< num_series(); others are ignored).
  // Negative durations count as 0. Lock-free, allocation-free.
  void Observe(size_t series, int64_t nanoseconds) {
    if (series >= num_series_) return;
    if (nanoseconds < 0) nanoseconds = 0;
    const size_t bucket = static_cast<size_t>(
        std::lower_bound(bounds_ns_.begin(), bounds_ns_.end(), nanoseconds) -
        bounds_ns_.begin());
    std::atomic<uint64_t>* s =
        cells_ + (irqbypass::ThreadSlot() & cell_mask_) * cell_stride_ +
        series * series_stride_;
    s[bucket].fetch_add(1, std::memory_order_relaxed);
    s[series_stride_ - 1].fetch_add(static_cast<uint64_t>(nanoseconds),
                                    std::memory_order_relaxed);
  }

  // The merged state of one series (bucket counts not cumulative; the last
  // is the +Inf bucket). For tests and Collect().
  struct Snapshot {
    std::vector<uint64_t> buckets;
    uint64_t count = 0;
    uint64_t sum_ns = 0;
  };
  Snapshot Read(size_t series) const;

  size_t num_series() const { return num_series_; }
  size_t num_cells() const { return cell_mask_ + 1; }

  // prometheus::Collectable: one histogram family.
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Options options_;
  std::vector<int64_t> bounds_ns_;
  size_t num_series_ = 0;
  size_t series_stride_ = 0;  // buckets + 1 (+Inf) + 1 (sum)
  size_t cell_stride_ = 0;    // words per cell, padded to 128 bytes
  size_t cell_mask_ = 0;
  std::atomic<uint64_t>* cells_ = nullptr;  // 128-byte aligned
};

// Exponential-ish bounds (1, 2.5, 5 per decade) from `lowest` to `highest`
// seconds, both included when on the grid.
std::vector<double> DecadeBounds(double lowest, double highest);

}  // namespace metrics
}  // namespace irqbypass

#endif  // IRQBYPASS_METRICS_SHARDED_HISTOGRAM_H_
