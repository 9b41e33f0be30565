// Cost of one histogram observation on a hot path: prometheus-cpp's stock
// Histogram (a mutex per Observe) against metrics::ShardedHistogram
// (per-thread cells, relaxed atomic adds, merged at scrape), each with one
// thread and with several threads all observing the same series. Same
// bucket layout for both (the index lock-wait bounds, 100 ns .. 10 s).
//
//   bazel run --config=opt //bench:histogram_observe
//
// Time is wall time per observation per thread (UseRealTime): with N
// threads, the series takes N observations in that time.
#include <cstdint>
#include <memory>
#include <vector>

#include "benchmark/benchmark.h"
#include "metrics/sharded_histogram.h"
#include "prometheus/histogram.h"

namespace irqbypass {
namespace {

std::vector<double> Bounds() { return metrics::DecadeBounds(1e-7, 10); }

// Durations spread over the low buckets, as lock waits are.
const std::vector<int64_t>& Samples() {
  static const std::vector<int64_t> samples = [] {
    std::vector<int64_t> v;
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 1024; ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      v.push_back(static_cast<int64_t>(x % 20000));  // 0 .. 20 us
    }
    return v;
  }();
  return samples;
}

prometheus::Histogram& Stock() {
  static prometheus::Histogram* histogram = new prometheus::Histogram(Bounds());
  return *histogram;
}

metrics::ShardedHistogram& Sharded() {
  static metrics::ShardedHistogram* histogram = [] {
    metrics::ShardedHistogram::Options o;
    o.name = "bench_wait_seconds";
    o.help = "Benchmark.";
    o.label_names = {"op"};
    o.series_labels = {{"a"}};
    o.bounds_seconds = Bounds();
    return new metrics::ShardedHistogram(std::move(o));
  }();
  return *histogram;
}

void BM_StockHistogram(benchmark::State& state) {
  prometheus::Histogram& h = Stock();
  const auto& samples = Samples();
  size_t i = 0;
  for (auto _ : state) {
    h.Observe(static_cast<double>(samples[i++ & 1023]) * 1e-9);
  }
  state.SetLabel("per observation");
}

void BM_ShardedHistogram(benchmark::State& state) {
  metrics::ShardedHistogram& h = Sharded();
  const auto& samples = Samples();
  size_t i = 0;
  for (auto _ : state) {
    h.Observe(0, samples[i++ & 1023]);
  }
  state.SetLabel("per observation");
}

BENCHMARK(BM_StockHistogram)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();
BENCHMARK(BM_ShardedHistogram)
    ->Threads(1)
    ->Threads(2)
    ->Threads(4)
    ->UseRealTime();

}  // namespace
}  // namespace irqbypass

BENCHMARK_MAIN();
