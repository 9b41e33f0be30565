#include "service/store_batcher.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "common/testing/eventually.h"
#include "gtest/gtest.h"
#include "service/errors.h"

namespace irqbypass {
namespace {

using testing::Eventually;

// The write function's side: records each write's tokens, and can hold a
// write until released or fail writes.
class Backend {
 public:
  absl::Status Write(absl::Span<const StoreChange> changes) {
    MutexLock lock(&mu_);
    std::vector<std::string> tokens;
    for (const StoreChange& c : changes) tokens.emplace_back(c.token);
    writes_.push_back(tokens);
    ++in_write_;
    while (hold_) cv_.Wait(&mu_);
    --in_write_;
    return fail_ ? MakeError(absl::StatusCode::kUnavailable,
                             ErrorReason::kStoreUnavailable, "disk gone", {})
                 : absl::OkStatus();
  }
  void Hold(bool hold) {
    MutexLock lock(&mu_);
    hold_ = hold;
    cv_.SignalAll();
  }
  void Fail() {
    MutexLock lock(&mu_);
    fail_ = true;
  }
  int in_write() {
    MutexLock lock(&mu_);
    return in_write_;
  }
  std::vector<std::vector<std::string>> writes() {
    MutexLock lock(&mu_);
    return writes_;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  bool hold_ = false;
  bool fail_ = false;
  int in_write_ = 0;
  std::vector<std::vector<std::string>> writes_;
};

// Each call's outcome, once answered.
struct Outcomes {
  Mutex mu;
  std::vector<absl::Status> got;
  std::vector<int> answers;
  explicit Outcomes(int n) : got(n), answers(n, 0) {}
  std::function<void(absl::Status)> For(int i) {
    return [this, i](absl::Status s) {
      MutexLock lock(&mu);
      got[i] = std::move(s);
      ++answers[i];
    };
  }
  int Answered() {
    MutexLock lock(&mu);
    int n = 0;
    for (int a : answers) n += a;
    return n;
  }
};

void WriteOne(StoreBatcher& batcher, const std::string& token,
              std::function<void(absl::Status)> done) {
  BindingState st;
  st.revision = 1;
  const StoreChange change{token, st};
  batcher.Write(absl::MakeConstSpan(&change, 1), std::move(done));
}

TEST(StoreBatcherTest, CallsQueuedDuringAWrite_GoTogetherInTheNext) {
  Backend backend;
  StoreBatcher batcher(1, 100, [&](absl::Span<const StoreChange> c) {
    return backend.Write(c);
  });
  Outcomes outcomes(11);
  backend.Hold(true);
  WriteOne(batcher, "first", outcomes.For(0));
  ASSERT_TRUE(Eventually([&] { return backend.in_write() == 1; }));
  for (int i = 1; i <= 10; ++i) {
    WriteOne(batcher, "t" + std::to_string(i), outcomes.For(i));
  }
  EXPECT_EQ(outcomes.Answered(), 0);  // nobody answered before durable
  backend.Hold(false);
  ASSERT_TRUE(Eventually([&] { return outcomes.Answered() == 11; }));
  const auto writes = backend.writes();
  ASSERT_EQ(writes.size(), 2u);
  EXPECT_EQ(writes[0], std::vector<std::string>{"first"});
  EXPECT_EQ(writes[1].size(), 10u);
  for (int i = 0; i <= 10; ++i) {
    EXPECT_TRUE(outcomes.got[i].ok()) << i;
    EXPECT_EQ(outcomes.answers[i], 1) << i;
  }
}

TEST(StoreBatcherTest, MaxChanges_CallsNeverSplit) {
  Backend backend;
  StoreBatcher batcher(
      1, 3, [&](absl::Span<const StoreChange> c) { return backend.Write(c); });
  backend.Hold(true);
  Outcomes outcomes(3);
  WriteOne(batcher, "block", outcomes.For(0));
  ASSERT_TRUE(Eventually([&] { return backend.in_write() == 1; }));
  // Two calls of two changes each: 4 > 3, so they go in two writes.
  for (int call = 1; call <= 2; ++call) {
    BindingState st;
    const std::string a = "c" + std::to_string(call) + "a";
    const std::string b = "c" + std::to_string(call) + "b";
    const StoreChange changes[] = {{a, st}, {b, st}};
    batcher.Write(changes, outcomes.For(call));
  }
  backend.Hold(false);
  ASSERT_TRUE(Eventually([&] { return outcomes.Answered() == 3; }));
  const auto writes = backend.writes();
  ASSERT_EQ(writes.size(), 3u);
  EXPECT_EQ(writes[1], (std::vector<std::string>{"c1a", "c1b"}));
  EXPECT_EQ(writes[2], (std::vector<std::string>{"c2a", "c2b"}));
}

TEST(StoreBatcherTest, FailedSharedWrite_EachCallGetsItsOwnToken) {
  Backend backend;
  StoreBatcher batcher(1, 100, [&](absl::Span<const StoreChange> c) {
    return backend.Write(c);
  });
  backend.Hold(true);
  Outcomes outcomes(3);
  WriteOne(batcher, "first", outcomes.For(0));
  ASSERT_TRUE(Eventually([&] { return backend.in_write() == 1; }));
  WriteOne(batcher, "x", outcomes.For(1));
  WriteOne(batcher, "y", outcomes.For(2));
  backend.Fail();
  backend.Hold(false);
  ASSERT_TRUE(Eventually([&] { return outcomes.Answered() == 3; }));
  ASSERT_EQ(backend.writes().size(), 2u);
  EXPECT_EQ(outcomes.got[1].code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetErrorReason(outcomes.got[1]), ErrorReason::kStoreUnavailable);
  EXPECT_EQ(GetErrorContext(outcomes.got[1]).token, "x");
  EXPECT_EQ(GetErrorContext(outcomes.got[2]).token, "y");
  EXPECT_EQ(outcomes.got[2].message(), "disk gone");
}

TEST(StoreBatcherTest, Stop_WritesWhatIsQueuedThenRefuses) {
  Backend backend;
  auto batcher = std::make_unique<StoreBatcher>(
      2, 100,
      [&](absl::Span<const StoreChange> c) { return backend.Write(c); });
  backend.Hold(true);
  Outcomes outcomes(6);
  for (int i = 0; i < 5; ++i) {
    WriteOne(*batcher, "q" + std::to_string(i), outcomes.For(i));
  }
  std::thread stopper([&] { batcher->Stop(); });
  ASSERT_TRUE(Eventually([&] { return backend.in_write() >= 1; }));
  backend.Hold(false);
  stopper.join();
  EXPECT_EQ(outcomes.Answered(), 5);  // all written before Stop returned
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(outcomes.got[i].ok()) << i;
  WriteOne(*batcher, "late", outcomes.For(5));
  EXPECT_EQ(outcomes.answers[5], 1);  // at once
  EXPECT_EQ(outcomes.got[5].code(), absl::StatusCode::kUnavailable);
  size_t written = 0;
  for (const auto& w : backend.writes()) written += w.size();
  EXPECT_EQ(written, 5u);
}

TEST(StoreBatcherTest, SlowDone_NextWriteGoesAheadMeanwhile) {
  Backend backend;
  StoreBatcher batcher(1, 100, [&](absl::Span<const StoreChange> c) {
    return backend.Write(c);
  });
  Mutex mu;
  bool release = false;
  std::atomic<bool> in_done{false};
  Outcomes outcomes(2);
  WriteOne(batcher, "slow", [&](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    in_done = true;
    MutexLock lock(&mu);
    mu.Await([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return release; });
  });
  ASSERT_TRUE(Eventually([&] { return in_done.load(); }));
  // The only writer is free while the first done still runs: the next
  // write does not wait for it.
  WriteOne(batcher, "next", outcomes.For(0));
  EXPECT_TRUE(Eventually([&] { return backend.writes().size() == 2; }))
      << "the next write waited for the previous write's done";
  EXPECT_EQ(outcomes.Answered(), 0);  // answers keep the order of the writes
  {
    MutexLock lock(&mu);
    release = true;
  }
  EXPECT_TRUE(Eventually([&] { return outcomes.Answered() == 1; }));
}

TEST(StoreBatcherTest, ConcurrentStops_AllReturnOnceEverythingIsAnswered) {
  Backend backend;
  StoreBatcher batcher(2, 100, [&](absl::Span<const StoreChange> c) {
    return backend.Write(c);
  });
  backend.Hold(true);
  Outcomes outcomes(8);
  for (int i = 0; i < 8; ++i) {
    WriteOne(batcher, "c" + std::to_string(i), outcomes.For(i));
  }
  ASSERT_TRUE(Eventually([&] { return backend.in_write() >= 1; }));
  std::atomic<int> returned{0};
  std::vector<std::thread> stoppers;
  for (int i = 0; i < 3; ++i) {
    stoppers.emplace_back([&] {
      batcher.Stop();
      EXPECT_EQ(outcomes.Answered(), 8) << "Stop returned before the answers";
      ++returned;
    });
  }
  backend.Hold(false);
  for (std::thread& t : stoppers) t.join();
  EXPECT_EQ(returned.load(), 3);
}

TEST(StoreBatcherTest, StopFromADone_DoesNotWaitForItself) {
  Backend backend;
  auto batcher = std::make_unique<StoreBatcher>(
      1, 100,
      [&](absl::Span<const StoreChange> c) { return backend.Write(c); });
  std::atomic<bool> stopped{false};
  WriteOne(*batcher, "x", [&](absl::Status) {
    batcher->Stop();  // would self-join
    stopped = true;
  });
  ASSERT_TRUE(Eventually([&] { return stopped.load(); }));
  Outcomes outcomes(1);
  WriteOne(*batcher, "late", outcomes.For(0));
  EXPECT_EQ(outcomes.got[0].code(), absl::StatusCode::kUnavailable);
  batcher.reset();  // joins from this thread
}

}  // namespace
}  // namespace irqbypass
