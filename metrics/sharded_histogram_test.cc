#include "metrics/sharded_histogram.h"

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace irqbypass::metrics {
namespace {

ShardedHistogram::Options TwoSeries() {
  ShardedHistogram::Options o;
  o.name = "test_wait_seconds";
  o.help = "Test.";
  o.label_names = {"op"};
  o.series_labels = {{"a"}, {"b"}};
  o.bounds_seconds = {1e-6, 1e-3, 1};
  return o;
}

std::string Text(const ShardedHistogram& h) {
  return prometheus::TextSerializer().Serialize(h.Collect());
}

TEST(ShardedHistogramTest,
     Observe_PlacesValueInFirstBucketWhoseBoundIsNotBelow) {
  ShardedHistogram h(TwoSeries());
  h.Observe(0, 0);              // <= 1us
  h.Observe(0, 1000);           // == 1us: le="1e-06" (bounds are inclusive)
  h.Observe(0, 1001);           // <= 1ms
  h.Observe(0, 2'000'000'000);  // +Inf
  const auto snap = h.Read(0);
  EXPECT_EQ(snap.buckets, (std::vector<uint64_t>{2, 1, 0, 1}));
  EXPECT_EQ(snap.count, 4u);
  EXPECT_EQ(snap.sum_ns, 2'000'002'001u);
  EXPECT_EQ(h.Read(1).count, 0u);
}

TEST(ShardedHistogramTest, Observe_NegativeCountsAsZero_UnknownSeriesIgnored) {
  ShardedHistogram h(TwoSeries());
  h.Observe(1, -5);
  h.Observe(7, 100);
  EXPECT_EQ(h.Read(1).buckets[0], 1u);
  EXPECT_EQ(h.Read(1).sum_ns, 0u);
  EXPECT_EQ(h.Read(0).count, 0u);
}

TEST(ShardedHistogramTest, ManyThreads_CellsMergeToExactTotals) {
  ShardedHistogram h(TwoSeries());
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&h] {
      for (int i = 0; i < kPerThread; ++i) h.Observe(i % 2, 500);
    });
  }
  for (auto& t : threads) t.join();
  const auto a = h.Read(0);
  const auto b = h.Read(1);
  EXPECT_EQ(a.count + b.count, uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(a.buckets[0], a.count);
  EXPECT_EQ(a.sum_ns + b.sum_ns, uint64_t{kThreads} * kPerThread * 500);
  EXPECT_GE(h.num_cells(), 4u);
}

TEST(ShardedHistogramTest, Collect_CumulativeBucketsInSecondsWithLabels) {
  ShardedHistogram h(TwoSeries());
  h.Observe(1, 500);
  h.Observe(1, 5'000'000);
  const std::string text = Text(h);
  EXPECT_NE(text.find("# TYPE test_wait_seconds histogram"), std::string::npos)
      << text;
  EXPECT_NE(text.find("test_wait_seconds_bucket{op=\"b\",le=\"1e-06\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("test_wait_seconds_bucket{op=\"b\",le=\"1\"} 2"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("test_wait_seconds_bucket{op=\"b\",le=\"+Inf\"} 2"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("test_wait_seconds_count{op=\"b\"} 2"), std::string::npos)
      << text;
  EXPECT_NE(text.find("test_wait_seconds_sum{op=\"b\"} 0.0050005"),
            std::string::npos)
      << text;
  // Empty series are exported by default, as zeros.
  EXPECT_NE(text.find("test_wait_seconds_count{op=\"a\"} 0"), std::string::npos)
      << text;
}

TEST(ShardedHistogramTest, Collect_WithoutEmptySeries_OnlyObservedOnes) {
  auto options = TwoSeries();
  options.export_empty_series = false;
  ShardedHistogram h(options);
  h.Observe(1, 1);
  const std::string text = Text(h);
  EXPECT_EQ(text.find("op=\"a\""), std::string::npos) << text;
  EXPECT_NE(text.find("op=\"b\""), std::string::npos) << text;
}

TEST(ShardedHistogramTest, DecadeBounds_OneTwoAndAHalfFivePerDecade) {
  EXPECT_EQ(
      DecadeBounds(1e-6, 1e-4),
      (std::vector<double>{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4}));
  EXPECT_EQ(DecadeBounds(0.25, 10),
            (std::vector<double>{0.25, 0.5, 1, 2.5, 5, 10}));
}

}  // namespace
}  // namespace irqbypass::metrics
