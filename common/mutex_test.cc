#include "common/mutex.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/testing/eventually.h"
#include "gtest/gtest.h"

namespace irqbypass {
namespace {

// State guarded by a Mutex, as the product's classes keep it.
struct Guarded {
  Mutex mu;
  int value ABSL_GUARDED_BY(mu) = 0;
  void Set(int v) {
    MutexLock lock(&mu);
    value = v;
  }
};

// A thread that sets g.value to `v` after `delay`.
std::thread SetLater(Guarded& g, int v, absl::Duration delay) {
  return std::thread([&g, v, delay] {
    absl::SleepFor(delay);
    g.Set(v);
  });
}

TEST(MutexTest, AwaitReturnsAtOnceWhenTheConditionHolds) {
  Guarded g;
  g.Set(1);
  MutexLock lock(&g.mu);
  g.mu.Await([&]()
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value == 1; });
  EXPECT_EQ(g.value, 1);
}

TEST(MutexTest, AwaitWakesWhenAnotherThreadChangesTheStateAndUnlocks) {
  Guarded g;
  std::thread setter = SetLater(g, 7, absl::Milliseconds(20));
  {
    MutexLock lock(&g.mu);
    g.mu.Await(
        [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value == 7; });
    EXPECT_EQ(g.value, 7);
  }
  setter.join();
}

TEST(MutexTest, AwaitWithTimeoutGivesUpAndSaysSo) {
  Guarded g;
  MutexLock lock(&g.mu);
  const absl::Time start = absl::Now();
  EXPECT_FALSE(g.mu.AwaitWithTimeout(
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value == 1; },
      absl::Milliseconds(30)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(30));
}

TEST(MutexTest, AwaitWithTimeout_NegativeIsAnImmediateCheck) {
  Guarded g;
  MutexLock lock(&g.mu);
  EXPECT_FALSE(g.mu.AwaitWithTimeout(
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value == 1; },
      -absl::Seconds(1)));
  g.value = 1;
  EXPECT_TRUE(g.mu.AwaitWithTimeout(
      [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value == 1; },
      absl::ZeroDuration()));
}

// A timeout longer than the clock can count (300 years) waits, rather than
// overflowing into a deadline in the past.
TEST(MutexTest, AwaitWithTimeout_CenturiesDoNotOverflow) {
  Guarded g;
  std::thread setter = SetLater(g, 1, absl::Milliseconds(20));
  {
    MutexLock lock(&g.mu);
    EXPECT_TRUE(g.mu.AwaitWithTimeout(
        [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value == 1; },
        absl::Hours(24 * 365 * 300)));
    EXPECT_EQ(g.value, 1);
  }
  setter.join();
}

// An awaiter may destroy the object holding the mutex as soon as its
// condition holds (as absl::Mutex allows): Unlock must be done with the
// mutex by then. ThreadSanitizer and ASan run this test.
TEST(MutexTest, AwaiterDestroysTheMutexOnceItsConditionHolds) {
  for (int i = 0; i < 2000; ++i) {
    auto* g = new Guarded;
    std::thread setter([g] { g->Set(1); });
    {
      g->mu.Lock();
      g->mu.AwaitWithTimeout(
          [g]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return g->value == 1; },
          absl::Seconds(10));
      g->mu.Unlock();
    }
    // The setter may still be inside Unlock, after the mutex was released:
    // deleted under it, as a user of the mutex may do.
    delete g;
    setter.join();
  }
}

TEST(MutexTest, AwaitWithTimeoutReturnsTrueWhenTheConditionComesTrue) {
  Guarded g;
  std::thread setter = SetLater(g, 1, absl::Milliseconds(10));
  {
    MutexLock lock(&g.mu);
    EXPECT_TRUE(g.mu.AwaitWithTimeout(
        [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value == 1; },
        absl::Seconds(30)));
  }
  setter.join();
}

// A thread that changes the state and then waits itself (Await, or a
// CondVar) releases the mutex without Unlock: the other awaiters must still
// be woken to re-check. Without that, `first` below sleeps until someone
// calls Unlock, which here nobody does until it is done.
bool WaitFor(const std::atomic<bool>& flag) {
  return testing::Eventually([&] { return flag.load(); }, absl::Seconds(10));
}

TEST(MutexTest, AwaitersSeeAChangeMadeBeforeAnotherAwait) {
  Mutex mu;
  int a = 0, b = 0, c = 0;
  std::atomic<bool> first_done{false};
  std::thread first([&] {
    MutexLock lock(&mu);
    a = 1;
    mu.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return b == 1; });
    first_done = true;
  });
  std::thread second([&] {
    MutexLock lock(&mu);
    mu.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return a == 1; });
    b = 1;  // then waits again, without an Unlock in between
    mu.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return c == 1; });
  });
  EXPECT_TRUE(WaitFor(first_done));
  {
    MutexLock lock(&mu);
    c = 1;
  }
  first.join();
  second.join();
}

TEST(MutexTest, AwaitersSeeAChangeMadeBeforeACondVarWait) {
  Mutex mu;
  CondVar cv;
  int c = 0;
  bool stop = false;
  std::atomic<bool> released{false};
  std::atomic<int> checks{0};
  std::thread waiter([&] {
    MutexLock lock(&mu);
    mu.Await([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      checks.fetch_add(1);
      return c == 1;
    });
    released = true;
  });
  // The waiter checked once (false) with the mutex held, and holds it until
  // it is inside its wait: the changer's Lock below returns only then.
  while (checks.load() == 0) absl::SleepFor(absl::Milliseconds(1));
  std::thread changer([&] {
    MutexLock lock(&mu);
    c = 1;
    // Waits on a CondVar, never calling Unlock, until told to stop.
    while (!stop) cv.Wait(&mu);
  });
  EXPECT_TRUE(WaitFor(released));
  {
    MutexLock lock(&mu);
    stop = true;
  }
  cv.SignalAll();
  changer.join();
  waiter.join();
}

// Many awaiters with different conditions, one counter: each is released
// once its threshold is reached, and none before.
TEST(MutexTest, ManyAwaitersWithDifferentConditions) {
  Guarded g;
  std::atomic<int> released{0};
  std::vector<std::thread> threads;
  for (int i = 1; i <= 8; ++i) {
    threads.emplace_back([&, i] {
      MutexLock lock(&g.mu);
      g.mu.Await(
          [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g.mu) { return g.value >= i; });
      EXPECT_GE(g.value, i);
      released.fetch_add(1);
    });
  }
  for (int v = 1; v <= 8; ++v) {
    absl::SleepFor(absl::Milliseconds(2));
    g.Set(v);
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(released.load(), 8);
}

TEST(MutexTest, TryLockFailsWhileHeldAndTakesAFreeMutex) {
  Mutex mu;
  {
    MutexLock lock(&mu);
    std::thread other([&] {
      if (mu.TryLock()) {
        mu.Unlock();
        ADD_FAILURE() << "TryLock took a held mutex";
      }
    });
    other.join();
  }
  std::thread again([&] {
    if (mu.TryLock()) {
      mu.Unlock();
    } else {
      ADD_FAILURE() << "TryLock failed on a free mutex";
    }
  });
  again.join();
}

}  // namespace
}  // namespace irqbypass
