#include "service/token_index.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace irqbypass {
namespace {

BindingState WithProducer(const std::string& node) {
  BindingState st;
  st.producer = ProducerRecord{node, "0000:00:01.0", 1, 3, 7};
  return st;
}

class RecordingListener : public ChangeListener {
 public:
  void OnCommit(absl::string_view token, const BindingState& before,
                const BindingState& after) override {
    EXPECT_LT(before.revision, after.revision);
    commits.emplace_back(std::string(token), after.revision);
  }
  std::vector<std::pair<std::string, uint64_t>> commits;
};

TEST(TokenIndexTest, Get_UnknownToken_ReturnsNothing) {
  TokenIndex index(8);
  EXPECT_FALSE(index.Get("nope").has_value());
}

TEST(TokenIndexTest, Commit_ThenGet_SeesCommittedStateWithRevision) {
  TokenIndex index(8);
  {
    auto lock = index.Lock("t1");
    EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
  }
  auto st = index.Get("t1");
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(st->producer.has_value());
  EXPECT_EQ(st->producer->node, "n1");
  EXPECT_EQ(st->revision, 1u);
}

TEST(TokenIndexTest, UncommittedLock_IsInvisibleToReaders) {
  TokenIndex index(8);
  auto lock = index.Lock("t1");
  EXPECT_FALSE(index.Get("t1").has_value());
  EXPECT_EQ(index.CountAll().tokens, 0u);
}

TEST(TokenIndexTest, CommitEmptyState_RemovesTokenOnRelease) {
  TokenIndex index(8);
  {
    auto lock = index.Lock("t1");
    EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
  }
  {
    auto lock = index.Lock("t1");
    EXPECT_TRUE(lock.Commit(BindingState{}).ok());
  }
  EXPECT_FALSE(index.Get("t1").has_value());
  EXPECT_EQ(index.CountAll().tokens, 0u);
}

TEST(TokenIndexTest, Revision_KeepsRisingAcrossRemovalAndReRegistration) {
  TokenIndex index(1);
  uint64_t last = 0;
  for (int round = 0; round < 3; ++round) {
    {
      auto lock = index.Lock("t1");
      EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
    }
    const uint64_t now = index.Get("t1")->revision;
    EXPECT_GT(now, last);
    last = now;
    {
      auto lock = index.Lock("t1");
      EXPECT_TRUE(
          lock.Commit(BindingState{}).ok());  // emptied: the slot is dropped
    }
    EXPECT_FALSE(index.Get("t1").has_value());
  }
}

TEST(TokenIndexTest, SettledRevision_StopsBelowAStagedChangeUntilPublished) {
  TokenIndex index(16);
  EXPECT_EQ(index.settled_revision(), 0u);
  std::optional<TokenIndex::TokenLock> a = index.Lock("a");
  ASSERT_TRUE(a->Stage(WithProducer("n1")).ok());  // revision 1, unpublished
  {
    auto b = index.Lock("b");
    ASSERT_TRUE(b.Commit(WithProducer("n1")).ok());  // revision 2, published
  }
  EXPECT_EQ(index.revision(), 2u);
  EXPECT_EQ(index.settled_revision(), 0u);  // 1 is still pending
  // A second Stage abandons the first revision and takes a new one.
  ASSERT_TRUE(a->Stage(WithProducer("n2")).ok());  // revision 3
  EXPECT_EQ(index.settled_revision(), 2u);
  a->Publish();
  EXPECT_EQ(index.settled_revision(), 3u);
  // A staged change is published (and settled) when its lock goes.
  {
    auto c = index.Lock("c");
    ASSERT_TRUE(c.Stage(WithProducer("n1")).ok());  // revision 4
    EXPECT_EQ(index.settled_revision(), 3u);
  }
  EXPECT_EQ(index.settled_revision(), 4u);
}

// Issue #10, fault 4: a waiter must not be starved by newcomers. A holds
// the token while W queues for it; A releases and at once asks again: W
// goes first (before the fix A's fast path took the free lock back while W
// was still waking up, every time).
TEST(TokenIndexTest, Lock_WaiterServedBeforeALaterRequest) {
  TokenIndex index(16);
  std::mutex order_mu;
  std::vector<std::string> order;
  std::optional<TokenIndex::TokenLock> held = index.Lock("t");
  std::thread waiter([&] {
    auto lock = index.Lock("t");
    std::lock_guard<std::mutex> g(order_mu);
    order.push_back("waiter");
  });
  // Long enough for the waiter to be queued.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  held.reset();
  {
    auto again = index.Lock("t");
    std::lock_guard<std::mutex> g(order_mu);
    order.push_back("again");
  }
  waiter.join();
  EXPECT_EQ(order, (std::vector<std::string>{"waiter", "again"}));
}

TEST(TokenIndexTest, Lock_ManyWaitersEachServedOnce_NoneLost) {
  TokenIndex index(4);
  constexpr int kThreads = 8;
  constexpr int kRounds = 500;
  std::atomic<int> inside{0}, max_inside{0}, total{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        auto lock = index.Lock("contended");
        const int now = inside.fetch_add(1) + 1;
        int seen = max_inside.load();
        while (now > seen && !max_inside.compare_exchange_weak(seen, now)) {
        }
        if (i % 7 == 0) {
          // Sometimes hold it with something committed, sometimes empty, so
          // that releases both keep and remove the slot.
          EXPECT_TRUE(
              lock.Commit(i % 2 == 0 ? WithProducer("n1") : BindingState{})
                  .ok());
        }
        total.fetch_add(1);
        inside.fetch_sub(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(max_inside.load(), 1);  // mutual exclusion
  EXPECT_EQ(total.load(), kThreads * kRounds);
}

// A store that refuses every write while `refuse` is set.
class RefusingStore : public Store {
 public:
  bool refuse = false;
  absl::StatusOr<uint64_t> Load(
      const std::function<absl::Status(std::string, BindingState)>&) override {
    return 0;
  }
  absl::Status LoadRequests(
      int64_t, const std::function<void(RequestRecord)>&) override {
    return absl::OkStatus();
  }
  absl::Status PruneRequests(int64_t) override { return absl::OkStatus(); }
  void Write(absl::Span<const StoreChange>,
             std::function<void(absl::Status)> done) override {
    done(refuse ? absl::UnavailableError("refused") : absl::OkStatus());
  }
  std::string Describe() const override { return "refusing"; }
};

TEST(TokenIndexTest, SettledRevision_FailedSecondStage_FirstStaysPending) {
  RefusingStore store;
  TokenIndex index(16, nullptr, nullptr, &store);
  std::optional<TokenIndex::TokenLock> a = index.Lock("a");
  ASSERT_TRUE(a->Stage(WithProducer("n1")).ok());  // revision 1, to publish
  store.refuse = true;
  EXPECT_FALSE(a->Stage(WithProducer("n2")).ok());  // revision 2, abandoned
  // 1 will still be published: nothing is settled past it.
  EXPECT_EQ(index.settled_revision(), 0u);
  a.reset();  // publishes the first
  EXPECT_EQ(index.settled_revision(), 2u);
  EXPECT_EQ(index.Get("a")->producer->node, "n1");
}

// Marks each revision as its listener call runs (before it is settled).
class RevisionRecorder : public ChangeListener {
 public:
  explicit RevisionRecorder(size_t max) : seen_(max + 1) {}
  void OnCommit(absl::string_view, const BindingState&,
                const BindingState& after) override {
    seen_[after.revision].store(true);
  }
  bool Seen(uint64_t revision) const { return seen_[revision].load(); }

 private:
  std::vector<std::atomic<bool>> seen_;
};

TEST(TokenIndexTest,
     SettledRevision_ConcurrentCommits_NeverPassesAnUnpublished) {
  constexpr int kThreads = 4;
  constexpr int kCommits = 3000;
  RevisionRecorder recorder(kThreads * kCommits);
  TokenIndex index(64, &recorder);
  std::atomic<bool> stop{false};
  uint64_t violations = 0, checks = 0, checked = 0;
  std::thread checker([&] {
    while (!stop.load()) {
      const uint64_t settled = index.settled_revision();
      ++checks;
      // Every revision up to it has had its listener call.
      for (; checked < settled; ++checked) {
        if (!recorder.Seen(checked + 1)) ++violations;
      }
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCommits; ++i) {
        auto lock = index.Lock("t" + std::to_string(t));
        EXPECT_TRUE(lock.Stage(WithProducer("n1")).ok());
        std::this_thread::yield();  // widen the staged-unpublished window
        lock.Publish();
      }
    });
  }
  for (auto& th : threads) th.join();
  stop = true;
  checker.join();
  EXPECT_EQ(violations, 0u) << "over " << checks << " reads";
  EXPECT_EQ(index.settled_revision(),
            static_cast<uint64_t>(kThreads) * kCommits);
}

TEST(TokenIndexTest, Listener_SeesEveryCommitInOrder) {
  RecordingListener listener;
  TokenIndex index(8, &listener);
  for (int i = 0; i < 3; ++i) {
    auto lock = index.Lock("t1");
    EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
  }
  ASSERT_EQ(listener.commits.size(), 3u);
  EXPECT_EQ(listener.commits[0].second, 1u);
  EXPECT_EQ(listener.commits[2].second, 3u);
}

TEST(TokenIndexTest, Lock_SameToken_SerialisesHolders) {
  TokenIndex index(4);
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto lock = index.Lock("hot");
        int now = ++inside;
        int prev = max_inside.load();
        while (now > prev && !max_inside.compare_exchange_weak(prev, now)) {
        }
        BindingState st = lock.state();
        if (!st.producer) st.producer = ProducerRecord{"n", "d", 0, 3, 1};
        st.producer->vector++;
        EXPECT_TRUE(lock.Commit(st).ok());
        --inside;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(max_inside.load(), 1);
  auto st = index.Get("hot");
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->producer->vector, 8u * 200u);  // no lost update
  EXPECT_EQ(st->revision, 8u * 200u);
}

TEST(TokenIndexTest, Lock_HeldOnOneToken_DoesNotBlockOtherTokens) {
  TokenIndex index(1);  // one shard: even same-shard tokens must not wait
  auto held = index.Lock("a");
  std::atomic<bool> done{false};
  std::thread other([&] {
    auto lock = index.Lock("b");
    EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
    done = true;
  });
  other.join();  // would hang if "b" waited for "a"
  EXPECT_TRUE(done.load());
  EXPECT_TRUE(index.Get("b").has_value());
}

TEST(TokenIndexTest, ClaimObject_SecondTokenSeesHolder_SameTokenReclaims) {
  TokenIndex index(8);
  {
    auto t1 = index.Lock("t1");
    EXPECT_FALSE(t1.ClaimObject("obj").has_value());
    EXPECT_FALSE(t1.ClaimObject("obj").has_value());
  }
  {
    auto t2 = index.Lock("t2");
    auto holder = t2.ClaimObject("obj");
    ASSERT_TRUE(holder.has_value());
    EXPECT_EQ(holder->token, "t1");
    EXPECT_FALSE(holder->tentative);
    t2.ReleaseObject("obj");  // not the holder: no effect
    EXPECT_TRUE(t2.ClaimObject("obj").has_value());
  }
  index.Lock("t1").ReleaseObject("obj");
  EXPECT_FALSE(index.Lock("t2").ClaimObject("obj").has_value());
}

TEST(TokenIndexTest, ClaimObject_TentativeUntilConfirmed) {
  TokenIndex index(8);
  auto t1 = index.Lock("t1");
  EXPECT_FALSE(t1.ClaimObject("obj", /*tentative=*/true).has_value());
  {
    auto holder = index.Lock("t2").ClaimObject("obj");
    ASSERT_TRUE(holder.has_value());
    EXPECT_TRUE(holder->tentative);
  }
  t1.ConfirmObject("obj");
  auto holder = index.Lock("t2").ClaimObject("obj");
  ASSERT_TRUE(holder.has_value());
  EXPECT_FALSE(holder->tentative);
}

TEST(TokenIndexTest, List_PagesVisitEveryBindingOnce) {
  TokenIndex index(16);
  for (int i = 0; i < 250; ++i) {
    auto lock = index.Lock("tok-" + std::to_string(i));
    EXPECT_TRUE(lock.Commit(WithProducer(i % 2 == 0 ? "even" : "odd")).ok());
  }
  std::set<std::string> seen;
  std::string page_token;
  int pages = 0;
  do {
    auto page = index.List("", 7, page_token);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& item : page->items) {
      EXPECT_TRUE(seen.insert(item.first).second) << "duplicate " << item.first;
    }
    page_token = page->next_page_token;
    ++pages;
  } while (!page_token.empty() && pages < 1000);
  EXPECT_EQ(seen.size(), 250u);
}

TEST(TokenIndexTest, List_NodeFilter_ReturnsOnlyThatNode) {
  TokenIndex index(16);
  for (int i = 0; i < 20; ++i) {
    auto lock = index.Lock("tok-" + std::to_string(i));
    EXPECT_TRUE(lock.Commit(WithProducer(i % 2 == 0 ? "even" : "odd")).ok());
  }
  auto page = index.List("even", 100, "");
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->items.size(), 10u);
  for (const auto& item : page->items) EXPECT_EQ(item.second.node(), "even");
  EXPECT_TRUE(page->next_page_token.empty());
}

TEST(TokenIndexTest, List_MalformedPageToken_InvalidArgument) {
  TokenIndex index(16);
  for (const char* bad : {"x", "99999/a", "3/", "/a"}) {
    auto page = index.List("", 10, bad);
    EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(TokenIndexTest, ConcurrentCommitsOnManyTokens_CountsAddUp) {
  TokenIndex index(64);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto lock =
            index.Lock("t" + std::to_string(t) + "-" + std::to_string(i));
        EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(index.CountAll().producers,
            static_cast<size_t>(kThreads * kPerThread));
}

class RecordingObserver : public LockWaitObserver {
 public:
  void OnLockWait(LockOp op, size_t shard, int64_t wait_ns) override {
    std::lock_guard<std::mutex> lock(mu);
    waits.emplace_back(op, wait_ns);
  }
  std::mutex mu;
  std::vector<std::pair<LockOp, int64_t>> waits;
};

TEST(TokenIndexTest, LockWaitObserver_SeesEachLockAndTheOpLockWait) {
  RecordingObserver observer;
  TokenIndex index(4, nullptr, &observer);
  auto held = std::make_unique<TokenIndex::TokenLock>(
      index.Lock("t1", LockOp::kRegisterProducer));
  std::atomic<bool> about_to_lock{false};
  std::thread waiter([&] {
    about_to_lock = true;
    auto lock = index.Lock("t1", LockOp::kUnregisterConsumer);
  });
  while (!about_to_lock) std::this_thread::yield();
  // The waiter is blocked on the op lock (no observable condition for it);
  // hold it for a measurable time.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  held.reset();
  waiter.join();
  std::lock_guard<std::mutex> lock(observer.mu);
  int64_t longest_unregister_wait = 0;
  bool saw_register = false;
  for (const auto& [op, ns] : observer.waits) {
    if (op == LockOp::kRegisterProducer) saw_register = true;
    if (op == LockOp::kUnregisterConsumer) {
      longest_unregister_wait = std::max(longest_unregister_wait, ns);
    }
  }
  EXPECT_TRUE(saw_register);
  EXPECT_EQ(observer.waits.size(), 2u);  // one per Lock, nothing else
  EXPECT_GE(longest_unregister_wait, 5 * 1000 * 1000);  // >= 5 ms
  EXPECT_STREQ(LockOpName(LockOp::kUnregisterConsumer), "unregister_consumer");
}

// Tokens are created, emptied (their slots removed) and created again by
// several threads at once, on two shards, while readers walk the lists and
// objects are claimed and released across tokens: per token at most one
// holder, per object at most one claimant, and the final state is what the
// last operation on each token committed.
TEST(TokenIndexTest, ChurnOfSlotsAndClaims_KeepsExclusionAndState) {
  TokenIndex index(2);
  constexpr int kTokens = 16;
  constexpr int kObjects = 4;
  constexpr int kThreads = 6;
  constexpr int kOps = 3000;
  std::atomic<int> inside[kTokens] = {};
  std::atomic<int> claimants[kObjects] = {};
  std::atomic<int> present[kTokens] = {};  // what the token's holder saw
  std::atomic<bool> violation{false};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      unsigned seed = 12345u + static_cast<unsigned>(t);
      for (int i = 0; i < kOps; ++i) {
        seed = seed * 1103515245u + 12345u;
        const int k = static_cast<int>((seed >> 16) % kTokens);
        const std::string token = "tok-" + std::to_string(k);
        auto lock = index.Lock(token);
        if (inside[k].fetch_add(1) != 0) violation = true;
        const std::string object = "obj-" + std::to_string(k % kObjects);
        if (!lock.ClaimObject(object).has_value()) {
          if (claimants[k % kObjects].fetch_add(1) != 0) violation = true;
          claimants[k % kObjects].fetch_sub(1);
          lock.ReleaseObject(object);
        }
        if (lock.state().empty()) {
          EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
          present[k] = 1;
        } else {
          EXPECT_TRUE(
              lock.Commit(BindingState{}).ok());  // the slot goes on release
          present[k] = 0;
        }
        inside[k].fetch_sub(1);
      }
    });
  }
  std::thread reader([&] {
    while (!stop.load()) {
      for (int k = 0; k < kTokens; ++k) {
        auto st = index.Get("tok-" + std::to_string(k));
        if (st.has_value() && !st->producer.has_value()) violation = true;
      }
      auto page = index.List("", 100, "");
      if (!page.ok()) violation = true;
      index.CountAll();
    }
  });
  for (auto& th : threads) th.join();
  stop = true;
  reader.join();
  EXPECT_FALSE(violation.load());
  size_t expected = 0;
  for (int k = 0; k < kTokens; ++k) {
    const bool there = index.Get("tok-" + std::to_string(k)).has_value();
    EXPECT_EQ(there, present[k].load() == 1) << k;
    expected += there ? 1 : 0;
  }
  EXPECT_EQ(index.CountAll().tokens, expected);
  // Every object claim was released: another token can claim each now.
  auto lock = index.Lock("fresh");
  for (int o = 0; o < kObjects; ++o) {
    EXPECT_FALSE(lock.ClaimObject("obj-" + std::to_string(o)).has_value());
  }
}

// Waiters on a held token keep its slot alive even when the holder empties
// it: each waiter then gets the op lock on a live slot.
TEST(TokenIndexTest, WaitersOnATokenBeingEmptied_AllGetTheLock) {
  TokenIndex index(1);
  {
    auto lock = index.Lock("t");
    EXPECT_TRUE(lock.Commit(WithProducer("n1")).ok());
  }
  auto held = std::make_unique<TokenIndex::TokenLock>(index.Lock("t"));
  std::atomic<int> done{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < 4; ++i) {
    waiters.emplace_back([&] {
      auto lock = index.Lock("t");
      BindingState st = lock.state();
      if (!st.producer) st.producer = ProducerRecord{"n1", "d", 0, 3, 1};
      st.producer->vector++;
      EXPECT_TRUE(lock.Commit(st).ok());
      done.fetch_add(1);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(done.load(), 0);
  EXPECT_TRUE(held->Commit(BindingState{}).ok());
  held.reset();
  for (auto& th : waiters) th.join();
  EXPECT_EQ(done.load(), 4);
  auto st = index.Get("t");
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->producer->vector, 4u);
}

TEST(TokenIndexTest, TryLock_HeldByAnother_NulloptFreeTaken) {
  TokenIndex index(16);
  {
    std::optional<TokenIndex::TokenLock> lock = index.TryLock("t");
    ASSERT_TRUE(lock.has_value());
    EXPECT_FALSE(index.TryLock("t").has_value());
    EXPECT_TRUE(index.TryLock("u").has_value());
  }
  EXPECT_TRUE(index.TryLock("t").has_value());
}

}  // namespace
}  // namespace irqbypass

namespace irqbypass {
namespace {

TEST(TokenIndexTest, LockThen_Free_RunsAtOnceOnThisThread) {
  TokenIndex index(16);
  bool ran = false;
  index.LockThen("t", LockOp::kOther, [&](TokenIndex::TokenLock lock) {
    ran = true;
    EXPECT_EQ(lock.token(), "t");
    EXPECT_FALSE(index.TryLock("t").has_value());  // held while it runs
  });
  EXPECT_TRUE(ran);
  EXPECT_TRUE(index.TryLock("t").has_value());  // released when it returned
}

// Continuations and threads queued on one token get it in the order they
// asked, one at a time; a continuation runs on the thread whose release
// handed it over.
TEST(TokenIndexTest, LockThen_Busy_RunsOnReleaseInOrderWithThreadWaiters) {
  TokenIndex index(16);
  std::mutex mu;
  std::vector<std::string> order;
  std::vector<std::thread::id> ran_on;
  auto note = [&](const std::string& who) {
    std::lock_guard<std::mutex> g(mu);
    order.push_back(who);
    ran_on.push_back(std::this_thread::get_id());
  };
  std::optional<TokenIndex::TokenLock> held = index.Lock("t");
  index.LockThen("t", LockOp::kOther,
                 [&](TokenIndex::TokenLock) { note("first"); });
  std::thread waiter([&] {
    auto lock = index.Lock("t");
    note("thread");
  });
  // Long enough for the thread to be queued.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  index.LockThen("t", LockOp::kOther,
                 [&](TokenIndex::TokenLock) { note("last"); });
  EXPECT_TRUE(order.empty());  // nothing runs while it is held
  const std::thread::id releaser = std::this_thread::get_id();
  held.reset();
  waiter.join();
  ASSERT_EQ(order, (std::vector<std::string>{"first", "thread", "last"}));
  EXPECT_EQ(ran_on[0], releaser);
  EXPECT_EQ(ran_on[2], ran_on[1]);  // handed over by the thread's release
  EXPECT_TRUE(index.TryLock("t").has_value());
}

// A long queue of continuations is drained one after another by the one
// release, never nested inside each other (no stack growth per waiter).
TEST(TokenIndexTest, LockThen_LongQueue_RunsEachOnceWithoutNesting) {
  TokenIndex index(16);
  constexpr int kWaiters = 100000;
  int ran = 0;
  int depth = 0;
  int max_depth = 0;
  std::optional<TokenIndex::TokenLock> held = index.Lock("t");
  for (int i = 0; i < kWaiters; ++i) {
    index.LockThen("t", LockOp::kOther, [&, i](TokenIndex::TokenLock lock) {
      ++depth;
      max_depth = std::max(max_depth, depth);
      EXPECT_EQ(ran, i);  // in the order queued
      ++ran;
      if (i % 1000 == 0) {
        EXPECT_TRUE(
            lock.Commit(i % 2000 == 0 ? WithProducer("n1") : BindingState{})
                .ok());
      }
      --depth;
    });
  }
  held.reset();
  EXPECT_EQ(ran, kWaiters);
  EXPECT_EQ(max_depth, 1);
  EXPECT_TRUE(index.TryLock("t").has_value());
}

// Threads and continuations racing for one token: mutual exclusion holds
// and every one of them gets the lock exactly once.
TEST(TokenIndexTest, LockThen_MixedWithThreads_ExclusiveAndNoneLost) {
  TokenIndex index(4);
  constexpr int kThreads = 4;
  constexpr int kRounds = 2000;
  std::atomic<int> inside{0}, max_inside{0}, total{0};
  auto enter = [&] {
    const int now = inside.fetch_add(1) + 1;
    int seen = max_inside.load();
    while (now > seen && !max_inside.compare_exchange_weak(seen, now)) {
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        if ((i + t) % 2 == 0) {
          auto lock = index.Lock("hot");
          enter();
          total.fetch_add(1);
          inside.fetch_sub(1);
        } else {
          index.LockThen("hot", LockOp::kOther, [&](TokenIndex::TokenLock) {
            enter();
            total.fetch_add(1);
            inside.fetch_sub(1);
          });
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  // Every continuation queued ran before the last release returned.
  EXPECT_EQ(total.load(), kThreads * kRounds);
  EXPECT_EQ(max_inside.load(), 1);
}

// A store that answers when the test says so.
class DeferredStore : public Store {
 public:
  absl::StatusOr<uint64_t> Load(
      const std::function<absl::Status(std::string, BindingState)>&) override {
    return 0;
  }
  absl::Status LoadRequests(
      int64_t, const std::function<void(RequestRecord)>&) override {
    return absl::OkStatus();
  }
  absl::Status PruneRequests(int64_t) override { return absl::OkStatus(); }
  void Write(absl::Span<const StoreChange> changes,
             std::function<void(absl::Status)> done) override {
    ASSERT_EQ(changes.size(), 1u);
    written.push_back(changes[0].state);
    answers.push_back(std::move(done));
  }
  std::string Describe() const override { return "deferred"; }
  std::vector<BindingState> written;
  std::vector<std::function<void(absl::Status)>> answers;
};

TEST(TokenIndexTest, StageAsync_StoreAnswersLater_StagedOnlyOnceDurable) {
  DeferredStore store;
  TokenIndex index(16, nullptr, nullptr, &store);
  auto lock = std::make_unique<TokenIndex::TokenLock>(index.Lock("t"));
  std::optional<absl::Status> staged;
  lock->StageAsync(WithProducer("n1"), nullptr,
                   [&](absl::Status s) { staged = s; });
  ASSERT_EQ(store.written.size(), 1u);
  EXPECT_EQ(store.written[0].revision, 1u);
  EXPECT_FALSE(staged.has_value());  // not durable yet
  EXPECT_EQ(index.settled_revision(), 0u);
  store.answers[0](absl::OkStatus());
  ASSERT_TRUE(staged.has_value());
  EXPECT_TRUE(staged->ok());
  EXPECT_FALSE(index.Get("t").has_value());  // durable, not yet published
  lock->Publish();
  EXPECT_EQ(index.Get("t")->producer->node, "n1");
  EXPECT_EQ(index.settled_revision(), 1u);

  // Refused: nothing staged, the revision abandoned.
  staged.reset();
  lock->StageAsync(BindingState{}, nullptr,
                   [&](absl::Status s) { staged = s; });
  store.answers[1](absl::UnavailableError("refused"));
  ASSERT_TRUE(staged.has_value());
  EXPECT_EQ(staged->code(), absl::StatusCode::kUnavailable);
  lock.reset();  // nothing to publish
  EXPECT_EQ(index.Get("t")->producer->node, "n1");
  EXPECT_EQ(index.settled_revision(), 2u);
}

}  // namespace
}  // namespace irqbypass
