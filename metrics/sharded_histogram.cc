#include "metrics/sharded_histogram.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <thread>
#include <utility>

#include "prometheus/client_metric.h"
#include "prometheus/metric_type.h"

namespace irqbypass {
namespace metrics {
namespace {

constexpr size_t kCellAlign = 128;  // two lines: the adjacent-line prefetcher
constexpr size_t kWordsPerAlign = kCellAlign / sizeof(std::atomic<uint64_t>);

[[noreturn]] void BadOptions(const std::string& name, const char* what) {
  std::fprintf(stderr, "ShardedHistogram %s: %s\n", name.c_str(), what);
  std::abort();
}

size_t DefaultCells() {
  const size_t cores = std::max(1u, std::thread::hardware_concurrency());
  size_t cells = 4;
  while (cells < 2 * cores && cells < 64) cells *= 2;
  return cells;
}

size_t RoundUpPowerOfTwo(size_t n) {
  size_t p = 1;
  while (p < n) p *= 2;
  return p;
}

}  // namespace

ShardedHistogram::ShardedHistogram(Options options)
    : options_(std::move(options)) {
  if (options_.name.empty()) BadOptions(options_.name, "name required");
  if (options_.series_labels.empty()) {
    BadOptions(options_.name, "at least one series required");
  }
  for (const auto& values : options_.series_labels) {
    if (values.size() != options_.label_names.size()) {
      BadOptions(options_.name, "label values do not match label names");
    }
  }
  double previous = -1;
  for (double b : options_.bounds_seconds) {
    if (!(b > previous) || !std::isfinite(b)) {
      BadOptions(options_.name, "bounds must be finite and increasing");
    }
    previous = b;
    bounds_ns_.push_back(static_cast<int64_t>(std::llround(b * 1e9)));
  }
  num_series_ = options_.series_labels.size();
  series_stride_ = bounds_ns_.size() + 2;
  const size_t words = num_series_ * series_stride_;
  cell_stride_ = (words + kWordsPerAlign - 1) / kWordsPerAlign * kWordsPerAlign;
  const size_t cells =
      RoundUpPowerOfTwo(options_.cells != 0 ? options_.cells : DefaultCells());
  cell_mask_ = cells - 1;
  const size_t total = cells * cell_stride_;
  cells_ = static_cast<std::atomic<uint64_t>*>(::operator new(
      total * sizeof(std::atomic<uint64_t>), std::align_val_t(kCellAlign)));
  for (size_t i = 0; i < total; ++i) new (&cells_[i]) std::atomic<uint64_t>(0);
}

ShardedHistogram::~ShardedHistogram() {
  ::operator delete(cells_, std::align_val_t(kCellAlign));
}

ShardedHistogram::Snapshot ShardedHistogram::Read(size_t series) const {
  Snapshot snap;
  if (series >= num_series_) return snap;
  snap.buckets.assign(bounds_ns_.size() + 1, 0);
  for (size_t c = 0; c <= cell_mask_; ++c) {
    const std::atomic<uint64_t>* s =
        cells_ + c * cell_stride_ + series * series_stride_;
    for (size_t b = 0; b < snap.buckets.size(); ++b) {
      snap.buckets[b] += s[b].load(std::memory_order_relaxed);
    }
    snap.sum_ns += s[series_stride_ - 1].load(std::memory_order_relaxed);
  }
  for (uint64_t n : snap.buckets) snap.count += n;
  return snap;
}

std::vector<prometheus::MetricFamily> ShardedHistogram::Collect() const {
  prometheus::MetricFamily family;
  family.name = options_.name;
  family.help = options_.help;
  family.type = prometheus::MetricType::Histogram;
  for (size_t i = 0; i < num_series_; ++i) {
    const Snapshot snap = Read(i);
    if (snap.count == 0 && !options_.export_empty_series) continue;
    prometheus::ClientMetric metric;
    for (size_t l = 0; l < options_.label_names.size(); ++l) {
      metric.label.push_back(
          {options_.label_names[l], options_.series_labels[i][l]});
    }
    metric.histogram.sample_count = snap.count;
    metric.histogram.sample_sum = static_cast<double>(snap.sum_ns) / 1e9;
    uint64_t cumulative = 0;
    for (size_t b = 0; b < snap.buckets.size(); ++b) {
      cumulative += snap.buckets[b];
      prometheus::ClientMetric::Bucket bucket;
      bucket.cumulative_count = cumulative;
      bucket.upper_bound = b < options_.bounds_seconds.size()
                               ? options_.bounds_seconds[b]
                               : std::numeric_limits<double>::infinity();
      metric.histogram.bucket.push_back(bucket);
    }
    family.metric.push_back(std::move(metric));
  }
  return {std::move(family)};
}

std::vector<double> DecadeBounds(double lowest, double highest) {
  std::vector<double> bounds;
  for (double decade = 1e-9; decade <= highest * 1.0001; decade *= 10) {
    for (double m : {1.0, 2.5, 5.0}) {
      // Round to 3 significant digits so "2.5e-06" prints cleanly.
      const double b = std::stod(
          std::to_string(m) + "e" +
          std::to_string(static_cast<int>(std::lround(std::log10(decade)))));
      if (b >= lowest * 0.9999 && b <= highest * 1.0001) bounds.push_back(b);
    }
  }
  return bounds;
}

}  // namespace metrics
}  // namespace irqbypass
