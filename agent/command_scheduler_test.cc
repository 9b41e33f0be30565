#include "agent/command_scheduler.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "common/testing/eventually.h"
#include "gtest/gtest.h"

namespace irqbypass {
namespace agent {
namespace {

using testing::Eventually;

// A gate tasks wait at until the test opens it.
class Gate {
 public:
  void Wait() {
    MutexLock lock(&mu_);
    ++waiting_;
    while (!open_) cv_.Wait(&mu_);
    --waiting_;
  }
  void Open() {
    MutexLock lock(&mu_);
    open_ = true;
    cv_.SignalAll();
  }
  int waiting() {
    MutexLock lock(&mu_);
    return waiting_;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  bool open_ = false;
  int waiting_ = 0;
};

class Log {
 public:
  void Add(const std::string& what) {
    MutexLock lock(&mu_);
    entries_.push_back(what);
  }
  std::vector<std::string> entries() {
    MutexLock lock(&mu_);
    return entries_;
  }

 private:
  Mutex mu_;
  std::vector<std::string> entries_;
};

// A task stuck on one key does not hold back tasks with other keys.
TEST(CommandSchedulerTest, SlowTask_OthersWithOtherKeysRunMeanwhile) {
  CommandScheduler scheduler(4);
  Gate gate;
  Log log;
  scheduler.Submit({"token:slow", "vm:slow"}, [&] {
    gate.Wait();
    log.Add("slow");
  });
  for (int i = 0; i < 20; ++i) {
    scheduler.Submit({"token:" + std::to_string(i), "vm:fast"},
                     [&, i] { log.Add("fast" + std::to_string(i)); });
  }
  ASSERT_TRUE(Eventually([&] { return log.entries().size() == 20; }));
  EXPECT_EQ(gate.waiting(), 1);
  gate.Open();
  ASSERT_TRUE(Eventually([&] { return log.entries().size() == 21; }));
  EXPECT_EQ(log.entries().back(), "slow");
  // The fast ones shared a key (their VM): they ran in submission order.
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(log.entries()[i], "fast" + std::to_string(i));
  }
}

// Workers are woken one at a time (each that takes a task wakes the next
// while more are ready), yet tasks that block, submitted in one burst,
// still each get a worker: all `workers` of them are waiting at once, and
// the rest queue until one finishes.
TEST(CommandSchedulerTest, BlockingBurst_EveryWorkerTakesOne) {
  constexpr int kWorkers = 8;
  CommandScheduler scheduler(kWorkers);
  Gate gate;
  std::atomic<int> done{0};
  // Held back by one task that names all their keys, they become ready
  // together when it ends.
  Gate first;
  std::vector<std::string> all;
  for (int i = 0; i < kWorkers + 3; ++i) all.push_back(absl::StrCat("t/", i));
  scheduler.Submit(all, [&] { first.Wait(); });
  for (int i = 0; i < kWorkers + 3; ++i) {
    scheduler.Submit({all[i]}, [&] {
      gate.Wait();
      done.fetch_add(1);
    });
  }
  ASSERT_TRUE(Eventually([&] { return first.waiting() == 1; }));
  first.Open();
  ASSERT_TRUE(Eventually([&] { return gate.waiting() == kWorkers; }));
  EXPECT_EQ(done.load(), 0);
  EXPECT_EQ(scheduler.pending(), static_cast<size_t>(kWorkers + 3));
  gate.Open();
  ASSERT_TRUE(Eventually([&] { return done.load() == kWorkers + 3; }));
  ASSERT_TRUE(Eventually([&] { return scheduler.pending() == 0; }));
}

// Tasks that can finish only when `workers` of them run at once finish,
// whichever way they became ready: submitted in a burst, or freed together
// by one task that ends.
TEST(CommandSchedulerTest, EveryRouteToReady_WakesEnoughWorkers) {
  for (int round = 0; round < 16; ++round) {
    const int workers = 1 + round % 8;
    const bool freed_together = round % 2 == 1;
    CommandScheduler scheduler(workers);
    std::atomic<bool> release{false};
    std::vector<std::string> keys;
    for (int i = 0; i < workers; ++i) keys.push_back(absl::StrCat("b", i));
    if (freed_together) {
      scheduler.Submit(keys, [&] {
        while (!release.load()) std::this_thread::yield();
      });
    }
    std::atomic<int> arrived{0};
    std::atomic<int> timed_out{0};
    for (int i = 0; i < workers; ++i) {
      scheduler.Submit({keys[i]}, [&] {
        arrived.fetch_add(1);
        const auto give_up =
            std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (arrived.load() < workers) {
          if (std::chrono::steady_clock::now() > give_up) {
            timed_out.fetch_add(1);
            return;
          }
          std::this_thread::yield();
        }
      });
    }
    release = true;
    ASSERT_TRUE(Eventually([&] { return arrived.load() == workers; }))
        << "round " << round << ": " << arrived.load() << " of " << workers;
    ASSERT_TRUE(Eventually([&] { return scheduler.pending() == 0; }));
    EXPECT_EQ(timed_out.load(), 0) << "round " << round;
  }
}

// Tasks sharing any key run one at a time, in submission order, even when
// each shares a different key with the one before.
TEST(CommandSchedulerTest, SharedKeys_RunInOrderOneAtATime) {
  CommandScheduler scheduler(4);
  Gate gate;
  Log log;
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  auto task = [&](const std::string& name, bool wait) {
    return [&, name, wait] {
      const int now = inside.fetch_add(1) + 1;
      max_inside.store(std::max(max_inside.load(), now));
      if (wait) gate.Wait();
      log.Add(name);
      inside.fetch_sub(1);
    };
  };
  scheduler.Submit({"a"}, task("1", true));
  scheduler.Submit({"a", "b"}, task("2", false));  // behind 1 (a)
  scheduler.Submit({"b", "c"}, task("3", false));  // behind 2 (b)
  scheduler.Submit({"c"}, task("4", false));       // behind 3 (c)
  scheduler.Submit({"d"}, task("free", false));    // shares nothing
  ASSERT_TRUE(Eventually([&] { return log.entries().size() == 1; }));
  EXPECT_EQ(log.entries()[0], "free");
  gate.Open();
  ASSERT_TRUE(Eventually([&] { return log.entries().size() == 5; }));
  EXPECT_EQ(log.entries(),
            (std::vector<std::string>{"free", "1", "2", "3", "4"}));
  // A task counts as pending until it has returned (after its last log
  // line), so wait for the last one's bookkeeping.
  EXPECT_TRUE(Eventually([&] { return scheduler.pending() == 0; }))
      << scheduler.pending();
}

// Drain drops what has not started, waits for what runs, and the scheduler
// takes tasks again afterwards.
TEST(CommandSchedulerTest, Drain_DropsQueuedWaitsForRunning) {
  CommandScheduler scheduler(2);
  Gate gate;
  Log log;
  scheduler.Submit({"k"}, [&] {
    gate.Wait();
    log.Add("running");
  });
  for (int i = 0; i < 5; ++i) {
    scheduler.Submit({"k"}, [&] { log.Add("queued"); });
  }
  ASSERT_TRUE(Eventually([&] { return gate.waiting() == 1; }));
  std::atomic<bool> drained{false};
  std::thread drainer([&] {
    scheduler.Drain();
    drained = true;
  });
  // Drain cannot return while a task runs.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(drained.load());
  gate.Open();
  drainer.join();
  EXPECT_EQ(log.entries(), std::vector<std::string>{"running"});
  EXPECT_EQ(scheduler.pending(), 0u);
  scheduler.Submit({"k"}, [&] { log.Add("after"); });
  ASSERT_TRUE(Eventually([&] { return log.entries().size() == 2; }));
  EXPECT_EQ(log.entries()[1], "after");
}

// Many tasks over few keys from several threads: every task runs once and
// no two tasks sharing a key ever overlap.
TEST(CommandSchedulerTest, Stress_EachRunsOnceKeysExclusive) {
  CommandScheduler scheduler(4);
  constexpr int kKeys = 5;
  constexpr int kPerThread = 2000;
  std::atomic<int> busy[kKeys] = {};
  std::atomic<int> overlaps{0};
  std::atomic<int> ran{0};
  std::vector<std::thread> submitters;
  for (int t = 0; t < 3; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int a = (i + t) % kKeys;
        const int b = (i * 7 + t) % kKeys;
        scheduler.Submit({std::to_string(a), std::to_string(b)}, [&, a, b] {
          if (busy[a].fetch_add(1) != 0) overlaps.fetch_add(1);
          if (b != a && busy[b].fetch_add(1) != 0) overlaps.fetch_add(1);
          ran.fetch_add(1);
          busy[a].fetch_sub(1);
          if (b != a) busy[b].fetch_sub(1);
        });
      }
    });
  }
  for (auto& s : submitters) s.join();
  ASSERT_TRUE(Eventually([&] { return scheduler.pending() == 0; }));
  EXPECT_EQ(ran.load(), 3 * kPerThread);
  EXPECT_EQ(overlaps.load(), 0);
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
