#include "common/epoch.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace irqbypass::epoch {
namespace {

std::atomic<int> g_freed{0};

struct Tracked {
  int value = 42;
  ~Tracked() { g_freed.fetch_add(1); }
};

// Collects until `n` objects were freed (or gives up after many rounds).
void CollectUntilFreed(int n) {
  for (int i = 0; i < 100 && g_freed.load() < n; ++i) Collect();
}

TEST(EpochTest, NotFreedWhileAGuardEnteredEarlierIsActive) {
  g_freed = 0;
  std::atomic<bool> entered{false}, release{false};
  std::thread reader([&] {
    Guard guard;
    entered = true;
    while (!release.load()) std::this_thread::yield();
  });
  while (!entered.load()) std::this_thread::yield();

  RetireObject(new Tracked);
  for (int i = 0; i < 20; ++i) Collect();
  EXPECT_EQ(g_freed.load(), 0) << "freed under an active guard";

  release = true;
  reader.join();
  CollectUntilFreed(1);
  EXPECT_EQ(g_freed.load(), 1);
}

TEST(EpochTest, RetiringAloneKeepsPendingBounded) {
  // No explicit Collect: retirement itself frees older batches once no
  // guard holds the epoch back.
  g_freed = 0;
  constexpr int kRetired = 10000;
  for (int i = 0; i < kRetired; ++i) RetireObject(new Tracked);
  EXPECT_GE(g_freed.load(), kRetired - 200);
  CollectUntilFreed(kRetired);
  EXPECT_EQ(g_freed.load(), kRetired);
}

TEST(EpochTest, NestedGuardsEndAtTheOutermost) {
  g_freed = 0;
  std::atomic<bool> inner_done{false}, release{false}, retired{false};
  std::thread reader([&] {
    Guard outer;
    { Guard inner; }
    inner_done = true;
    while (!release.load()) std::this_thread::yield();
  });
  while (!inner_done.load()) std::this_thread::yield();
  RetireObject(new Tracked);
  for (int i = 0; i < 20; ++i) Collect();
  EXPECT_EQ(g_freed.load(), 0) << "inner guard's end ended the outer one";
  release = true;
  reader.join();
  CollectUntilFreed(1);
  EXPECT_EQ(g_freed.load(), 1);
}

TEST(EpochTest, WhatAnExitedThreadRetiredIsFreedByALaterOne) {
  g_freed = 0;
  {
    // Hold the epoch so the retiring thread cannot free before it exits.
    Guard guard;
    std::thread retirer([] {
      for (int i = 0; i < 10; ++i) RetireObject(new Tracked);
    });
    retirer.join();
    EXPECT_EQ(g_freed.load(), 0);
  }
  EXPECT_GE(PendingApprox(), 10u);
  // A new thread takes over the exited thread's record and what it holds.
  std::thread later([] { CollectUntilFreed(10); });
  later.join();
  EXPECT_EQ(g_freed.load(), 10);
}

// Issue #10, fault 5: a thread that retires a few nodes and goes idle (a
// gRPC pool thread, for hours) must not keep them: another thread's
// collection frees them while it is still alive.
TEST(EpochTest, WhatAnIdleThreadRetiredIsFreedByAnother) {
  g_freed = 0;
  std::atomic<bool> retired{false}, release{false};
  std::thread idle([&] {
    for (int i = 0; i < 10; ++i) RetireObject(new Tracked);  // fewer than 64
    retired = true;
    while (!release.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  while (!retired.load()) std::this_thread::yield();
  CollectUntilFreed(10);  // on this thread
  EXPECT_EQ(g_freed.load(), 10) << "the idle thread still holds them";
  release = true;
  idle.join();
}

// A Treiber stack popped and pushed by several threads, nodes retired on
// pop: under ASan/TSan a node freed while another thread reads it fails.
TEST(EpochTest, ConcurrentPopsNeverTouchFreedNodes) {
  struct Node {
    std::atomic<Node*> next{nullptr};
    int value = 0;
  };
  std::atomic<Node*> head{nullptr};
  constexpr int kThreads = 4;
  constexpr int kOps = 20000;
  std::atomic<long> sum{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kOps; ++i) {
        auto* n = new Node;
        n->value = 1;
        Node* h = head.load();
        do {
          n->next.store(h);
        } while (!head.compare_exchange_weak(h, n));
        Guard guard;
        Node* top = head.load();
        while (top != nullptr &&
               !head.compare_exchange_weak(top, top->next.load())) {
        }
        if (top != nullptr) {
          sum.fetch_add(top->value);
          RetireObject(top);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  long left = 0;
  for (Node* n = head.load(); n != nullptr;) {
    Node* next = n->next.load();
    left += n->value;
    delete n;
    n = next;
  }
  EXPECT_EQ(sum.load() + left, static_cast<long>(kThreads) * kOps);
}

// Short-lived threads take over records of exited ones while long-lived
// threads keep entering guards, reading shared objects and retiring them:
// under ASan/TSan a premature free or a race on a reused record fails.
TEST(EpochTest, RecordsReusedWhileOthersReadAndRetire) {
  struct Box {
    std::atomic<int> value{7};
  };
  std::atomic<Box*> shared{new Box};
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0};
  std::vector<std::thread> steady;
  for (int t = 0; t < 2; ++t) {
    steady.emplace_back([&] {
      while (!stop.load()) {
        Guard guard;
        Box* b = shared.load();
        if (b->value.load() == 7) reads.fetch_add(1);
      }
    });
  }
  for (int round = 0; round < 50; ++round) {
    std::vector<std::thread> churn;
    for (int t = 0; t < 3; ++t) {
      churn.emplace_back([&] {
        for (int i = 0; i < 50; ++i) {
          auto* fresh = new Box;
          Box* old = shared.exchange(fresh);
          RetireObject(old);
        }
      });
    }
    for (auto& th : churn) th.join();
  }
  stop = true;
  for (auto& th : steady) th.join();
  EXPECT_GT(reads.load(), 0);
  delete shared.load();
  // Everything retired is eventually freed by whoever collects.
  for (int i = 0; i < 100 && PendingApprox() > 0; ++i) {
    std::thread([] { Collect(); }).join();
    Collect();
  }
  EXPECT_EQ(PendingApprox(), 0u);
}

// A thread_local destroyed after the epoch's own per-thread state (it was
// constructed first) may still use guards and retire: the record is then
// released after each use, and what it retired is freed by others.
struct LateUser {
  bool used = false;
  ~LateUser() {
    if (!used) return;
    Guard guard;
    RetireObject(new Tracked);
  }
};
thread_local LateUser tls_late_user;

TEST(EpochTest, ThreadLocalDestructorsMayStillRetire) {
  g_freed = 0;
  std::thread t([] {
    tls_late_user.used = true;  // constructed before the epoch's state
    Guard guard;
    RetireObject(new Tracked);
  });
  t.join();
  CollectUntilFreed(2);
  EXPECT_EQ(g_freed.load(), 2);
}

}  // namespace
}  // namespace irqbypass::epoch
