#include "service/watch_hub.h"

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "service/token_index.h"

namespace irqbypass {
namespace {

using Clock = std::chrono::steady_clock;
using Result = WatchHub::Subscriber::Result;

// Generous: only reached when something is broken (a lost wakeup).
constexpr auto kPatience = std::chrono::seconds(10);

BindingState ProducerOn(const std::string& node, uint32_t vector,
                        uint64_t revision) {
  BindingState st;
  st.producer = ProducerRecord{node, "0000:00:01.0", vector, 3, 7};
  st.revision = revision;
  return st;
}

// Commits `after` for `token` straight to the hub, as the index would.
void Commit(WatchHub& hub, const std::string& token, const BindingState& after,
            const BindingState& before = BindingState()) {
  hub.OnCommit(token, before, after);
}

// Next with a deadline that has already passed: what is queued now, or
// kTimeout at once.
Result Poll(WatchHub::Subscriber& sub, v1::BindingEvent* event) {
  return sub.Next(event, Clock::now());
}

TEST(WatchHubTest, ConcurrentCommitsFromManyThreads_EachTokenInCommitOrder) {
  constexpr int kThreads = 8;
  constexpr int kCommitsPerThread = 500;
  constexpr int kTokens = 32;
  constexpr int kTotal = kThreads * kCommitsPerThread;
  WatchHub hub(/*max_queue=*/1 << 20);
  TokenIndex index(64, &hub);
  auto sub = hub.Subscribe("");

  // The reader runs alongside the committers, so it also sleeps and is woken.
  std::map<std::string, std::vector<v1::Binding>> received;
  std::thread reader([&] {
    v1::BindingEvent event;
    for (int i = 0; i < kTotal; ++i) {
      const Result r = sub->Next(&event, Clock::now() + kPatience);
      ASSERT_EQ(r, Result::kEvent) << "after " << i << " events";
      received[event.binding().token()].push_back(event.binding());
    }
  });
  std::vector<std::thread> committers;
  for (int t = 0; t < kThreads; ++t) {
    committers.emplace_back([&index, t] {
      for (int i = 0; i < kCommitsPerThread; ++i) {
        // Threads share tokens: the op lock orders their commits.
        auto lock = index.Lock("tok-" + std::to_string((i * 7 + t) % kTokens));
        const uint32_t next =
            lock.state().producer ? lock.state().producer->vector + 1 : 1;
        EXPECT_TRUE(lock.Commit(ProducerOn("n1", next, 0)).ok());
      }
    });
  }
  for (auto& c : committers) c.join();
  reader.join();

  // Each token's commits carried vector 1, 2, 3, ...: all of them arrived, in
  // that order, with rising revisions.
  int total = 0;
  for (const auto& [token, bindings] : received) {
    for (size_t i = 0; i < bindings.size(); ++i) {
      ASSERT_EQ(bindings[i].producer().vector(), i + 1) << token;
      if (i > 0) {
        ASSERT_GT(bindings[i].revision(), bindings[i - 1].revision()) << token;
      }
    }
    total += static_cast<int>(bindings.size());
  }
  EXPECT_EQ(total, kTotal);
  v1::BindingEvent extra;
  EXPECT_EQ(Poll(*sub, &extra), Result::kTimeout);
}

// Issue #10, race 1: a subscription made while commits run must see every
// later change of a token it was told about, so that the watcher's view
// (its snapshot, then its events) ends equal to the index. Many short-lived
// watchers subscribe, take the snapshot as WatchBindings does, and apply
// what arrives; committers register and remove a few hot tokens meanwhile,
// each token's commits coming from different threads.
TEST(WatchHubTest, SubscribedWhileCommitsRun_ViewEndsEqualToTheIndex) {
  constexpr int kCommitters = 6;
  constexpr int kTokens = 4;
  constexpr int kRounds = 60;
  constexpr int kWatchersPerRound = 16;
  WatchHub hub(/*max_queue=*/1 << 20);
  TokenIndex index(64, &hub);
  struct Seen {
    uint64_t revision = 0;
    bool present = false;
  };
  int watchers = 0, wrong = 0;
  for (int round = 0; round < kRounds; ++round) {
    // Commits run while this round's watchers subscribe ...
    std::atomic<bool> stop{false};
    std::vector<std::thread> committers;
    for (int t = 0; t < kCommitters; ++t) {
      committers.emplace_back([&, t] {
        for (int i = 0; !stop.load(); ++i) {
          auto lock = index.Lock("hot-" + std::to_string((i + t) % kTokens));
          BindingState next;  // alternately registered and removed
          if (lock.state().empty()) next = ProducerOn("n1", (i % 64) + 1, 0);
          EXPECT_TRUE(lock.Commit(std::move(next)).ok());
        }
      });
    }
    std::vector<std::shared_ptr<WatchHub::Subscriber>> subs;
    std::vector<std::map<std::string, Seen>> views;
    for (int w = 0; w < kWatchersPerRound; ++w) {
      subs.push_back(hub.Subscribe(""));
      std::map<std::string, Seen> view;  // the snapshot, as WatchBindings
      index.ForEachCommitted(
          [&](const std::string& token, const BindingState& st) {
            view[token] = {st.revision, true};
          });
      views.push_back(std::move(view));
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
    // ... then stop, and each watcher's view must be the index's.
    stop = true;
    for (auto& c : committers) c.join();
    std::map<std::string, uint64_t> want;
    index.ForEachCommitted(
        [&](const std::string& token, const BindingState& st) {
          want[token] = st.revision;
        });
    for (size_t w = 0; w < subs.size(); ++w) {
      v1::BindingEvent event;
      Result result;
      while ((result = Poll(*subs[w], &event)) == Result::kEvent) {
        Seen& seen = views[w][event.binding().token()];
        if (event.binding().revision() <= seen.revision) continue;  // repeat
        seen = {event.binding().revision(),
                event.type() != v1::BindingEvent::REMOVED};
      }
      ASSERT_EQ(result, Result::kTimeout) << "watcher " << w << " overflowed";
      std::map<std::string, uint64_t> got;
      for (const auto& [token, seen] : views[w]) {
        if (seen.present) got[token] = seen.revision;
      }
      if (got != want) ++wrong;
      ++watchers;
      hub.Unsubscribe(subs[w]);
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << watchers << " watchers";
}

// Subscribers come and go (and their streams drop them) while commits
// fan out: under ASan/TSan a subscriber freed while a commit pushes to it
// fails. An unsubscribed subscriber is closed, and keeps no events.
TEST(WatchHubTest, UnsubscribedWhileCommitsRun_NoUseAfterFree) {
  WatchHub hub;
  TokenIndex index(64, &hub);
  std::atomic<bool> stop{false};
  std::vector<std::thread> committers;
  for (int t = 0; t < 4; ++t) {
    committers.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        auto lock = index.Lock("u-" + std::to_string((i + t) % 8));
        BindingState next;
        if (lock.state().empty()) next = ProducerOn("n1", (i % 64) + 1, 0);
        EXPECT_TRUE(lock.Commit(std::move(next)).ok());
      }
    });
  }
  for (int i = 0; i < 2000; ++i) {
    std::shared_ptr<WatchHub::Subscriber> sub = hub.Subscribe("");
    v1::BindingEvent event;
    (void)Poll(*sub, &event);
    hub.Unsubscribe(sub);
    // At most what the reader had already taken in hand, then the end:
    // closed, or overflowed if the commits filled a sub-queue before the
    // unsubscribe (this reader never reads, and a preempted test thread
    // leaves the committers a whole time slice).
    Result result;
    int left = 0;
    while ((result = Poll(*sub, &event)) == Result::kEvent) ++left;
    EXPECT_TRUE(result == Result::kClosed || result == Result::kOverflow)
        << static_cast<int>(result);
    EXPECT_LT(left, 1000);
  }
  stop = true;
  for (auto& c : committers) c.join();
}

TEST(WatchHubTest, Mark_DeliveredOnlyOnceEveryEarlierEventWasHandedOut) {
  WatchHub hub;
  auto sub = hub.Subscribe("");
  // Tokens in more than one sub-queue.
  for (int i = 0; i < 8; ++i) {
    Commit(hub, "m" + std::to_string(i), ProducerOn("n1", i, i + 1));
  }
  const auto mark = sub->TakeMark();
  ASSERT_TRUE(mark.has_value());
  Commit(hub, "later", ProducerOn("n1", 9, 9));  // after the mark
  EXPECT_FALSE(sub->Delivered(*mark));
  v1::BindingEvent event;
  int read = 0;
  while (!sub->Delivered(*mark)) {
    ASSERT_EQ(Poll(*sub, &event), Result::kEvent);
    ++read;
  }
  // Exactly the eight before the mark, whatever order they came in.
  EXPECT_GE(read, 8);
  EXPECT_LE(read, 9);
  // A closed subscriber gives no mark: commits after the close skip it.
  hub.Shutdown();
  EXPECT_FALSE(sub->TakeMark().has_value());
}

TEST(WatchHubTest, Removals_RememberedForResume_NodeFiltered) {
  WatchHub hub;
  hub.SetResumeFloor(10);
  BindingState gone;
  gone.revision = 11;
  Commit(hub, "a", gone, ProducerOn("n1", 1, 5));
  gone.revision = 12;
  Commit(hub, "b", gone, ProducerOn("n2", 1, 6));
  std::vector<WatchHub::Removal> removals;
  ASSERT_TRUE(hub.RemovalsAfter(10, "n1", &removals));
  ASSERT_EQ(removals.size(), 1u);
  EXPECT_EQ(removals[0].token, "a");
  EXPECT_EQ(removals[0].revision, 11u);
  removals.clear();
  ASSERT_TRUE(hub.RemovalsAfter(11, "", &removals));
  ASSERT_EQ(removals.size(), 1u);
  EXPECT_EQ(removals[0].token, "b");
  // Before the process's start: cannot tell.
  EXPECT_FALSE(hub.RemovalsAfter(9, "", &removals));
}

TEST(WatchHubTest, RemovalRingWrapped_FloorRisesPastTheForgotten) {
  WatchHub hub;
  BindingState gone;
  for (uint64_t r = 1; r <= WatchHub::kRemovals + 10; ++r) {
    gone.revision = r;
    Commit(hub, "t" + std::to_string(r), gone, ProducerOn("n1", 1, 0));
  }
  // Removals 1..10 were overwritten.
  EXPECT_EQ(hub.ResumeFloor(), 10u);
  std::vector<WatchHub::Removal> removals;
  EXPECT_FALSE(hub.RemovalsAfter(9, "", &removals));
  ASSERT_TRUE(hub.RemovalsAfter(10, "", &removals));
  EXPECT_EQ(removals.size(), WatchHub::kRemovals);
}

TEST(WatchHubTest, NodeFilter_DeliversOnlyThatNodesEvents) {
  WatchHub hub;
  auto n1 = hub.Subscribe("n1");
  auto all = hub.Subscribe("");

  Commit(hub, "a", ProducerOn("n1", 1, 1));
  Commit(hub, "b", ProducerOn("n2", 1, 2));
  // A removal carries the node it was on.
  Commit(hub, "b", BindingState(), ProducerOn("n2", 1, 2));

  v1::BindingEvent event;
  ASSERT_EQ(Poll(*n1, &event), Result::kEvent);
  EXPECT_EQ(event.type(), v1::BindingEvent::UPDATED);
  EXPECT_EQ(event.binding().token(), "a");
  EXPECT_EQ(event.binding().node(), "n1");
  EXPECT_EQ(Poll(*n1, &event), Result::kTimeout);

  std::map<std::string, int> seen;
  while (Poll(*all, &event) == Result::kEvent) {
    ++seen[event.binding().token() + "/" +
           v1::BindingEvent::Type_Name(event.type())];
  }
  EXPECT_EQ(seen, (std::map<std::string, int>{
                      {"a/UPDATED", 1}, {"b/UPDATED", 1}, {"b/REMOVED", 1}}));
}

TEST(WatchHubTest, SubQueueAtCapacity_StillDelivers) {
  WatchHub hub(/*max_queue=*/WatchHub::kSubQueues * 2);  // 2 per sub-queue
  auto sub = hub.Subscribe("");
  Commit(hub, "t", ProducerOn("n1", 1, 1));
  Commit(hub, "t", ProducerOn("n1", 2, 2));

  v1::BindingEvent event;
  ASSERT_EQ(Poll(*sub, &event), Result::kEvent);
  EXPECT_EQ(event.binding().producer().vector(), 1u);
  ASSERT_EQ(Poll(*sub, &event), Result::kEvent);
  EXPECT_EQ(event.binding().producer().vector(), 2u);
}

TEST(WatchHubTest, Overflow_SubscriberThatFallsBehind_IsClosed) {
  WatchHub hub(/*max_queue=*/WatchHub::kSubQueues * 2);  // 2 per sub-queue
  auto slow = hub.Subscribe("");
  auto fast = hub.Subscribe("");
  v1::BindingEvent event;
  for (uint32_t v = 1; v <= 3; ++v) {
    Commit(hub, "t", ProducerOn("n1", v, v));
    ASSERT_EQ(Poll(*fast, &event), Result::kEvent);
  }

  // Queued events are dropped; the subscriber stays closed.
  EXPECT_EQ(Poll(*slow, &event), Result::kOverflow);
  Commit(hub, "t", ProducerOn("n1", 4, 4));
  EXPECT_EQ(slow->Next(&event, Clock::now() + kPatience), Result::kOverflow);
  // The one that kept up is unaffected.
  ASSERT_EQ(Poll(*fast, &event), Result::kEvent);
  EXPECT_EQ(event.binding().producer().vector(), 4u);
}

TEST(WatchHubTest, Overflow_TotalPendingBeyondMaxQueue_AlwaysOverflows) {
  constexpr size_t kMaxQueue = 64;
  WatchHub hub(kMaxQueue);
  auto sub = hub.Subscribe("");
  // Whatever the hash spread, this many events overfill some sub-queue.
  for (size_t i = 0; i < kMaxQueue + WatchHub::kSubQueues; ++i) {
    Commit(hub, "tok-" + std::to_string(i), ProducerOn("n1", 1, i + 1));
  }
  v1::BindingEvent event;
  EXPECT_EQ(Poll(*sub, &event), Result::kOverflow);
}

TEST(WatchHubTest, Shutdown_WakesWaitingReaderWithClosed) {
  WatchHub hub;
  auto sub = hub.Subscribe("");
  std::atomic<bool> done{false};
  Result result = Result::kEvent;
  std::thread reader([&] {
    v1::BindingEvent event;
    result = sub->Next(&event, Clock::now() + kPatience);
    done = true;
  });
  const auto start = Clock::now();
  hub.Shutdown();
  reader.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(result, Result::kClosed);
  EXPECT_LT(Clock::now() - start, kPatience);
}

TEST(WatchHubTest, Shutdown_QueuedEventsComeFirst_ThenClosed) {
  WatchHub hub;
  auto sub = hub.Subscribe("");
  Commit(hub, "t", ProducerOn("n1", 1, 1));
  hub.Shutdown();
  Commit(hub, "t", ProducerOn("n1", 2, 2));  // after shutdown: not delivered

  v1::BindingEvent event;
  ASSERT_EQ(Poll(*sub, &event), Result::kEvent);
  EXPECT_EQ(event.binding().producer().vector(), 1u);
  EXPECT_EQ(Poll(*sub, &event), Result::kClosed);
}

TEST(WatchHubTest, SubscribeAfterShutdown_IsClosedAtOnce) {
  WatchHub hub;
  hub.Shutdown();
  auto sub = hub.Subscribe("");
  Commit(hub, "t", ProducerOn("n1", 1, 1));

  const auto start = Clock::now();
  v1::BindingEvent event;
  EXPECT_EQ(sub->Next(&event, Clock::now() + kPatience), Result::kClosed);
  EXPECT_LT(Clock::now() - start, kPatience);
  hub.Unsubscribe(sub);  // harmless
}

TEST(WatchHubTest, Unsubscribe_StopsDelivery) {
  WatchHub hub;
  auto sub = hub.Subscribe("");
  auto other = hub.Subscribe("");
  Commit(hub, "t", ProducerOn("n1", 1, 1));
  hub.Unsubscribe(sub);
  Commit(hub, "t", ProducerOn("n1", 2, 2));

  // Unsubscribed: closed, and what it had queued is gone (nothing reads it
  // after its stream ended).
  v1::BindingEvent event;
  EXPECT_EQ(Poll(*sub, &event), Result::kClosed);
  // The remaining subscriber still gets both.
  ASSERT_EQ(Poll(*other, &event), Result::kEvent);
  ASSERT_EQ(Poll(*other, &event), Result::kEvent);
  EXPECT_EQ(event.binding().producer().vector(), 2u);
}

TEST(WatchHubTest, WaitingNext_ReturnsPromptlyWhenEventArrives) {
  // Ping-pong: each event is committed while the reader is (about to be)
  // asleep with a long deadline, so a lost wakeup shows up as a kTimeout
  // after kPatience instead of an event.
  constexpr int kRounds = 300;
  WatchHub hub;
  auto sub = hub.Subscribe("");
  std::atomic<int> received{0};
  std::thread reader([&] {
    v1::BindingEvent event;
    for (int i = 0; i < kRounds; ++i) {
      const Result r = sub->Next(&event, Clock::now() + kPatience);
      ASSERT_EQ(r, Result::kEvent) << "round " << i;
      ASSERT_EQ(event.binding().producer().vector(),
                static_cast<uint32_t>(i + 1));
      received.store(i + 1, std::memory_order_release);
    }
  });
  const auto start = Clock::now();
  for (int i = 0; i < kRounds; ++i) {
    // Alternate tokens so the reader has to look in different sub-queues.
    Commit(hub, i % 2 ? "odd" : "even",
           ProducerOn("n1", static_cast<uint32_t>(i + 1), i + 1));
    const auto wait_until = Clock::now() + kPatience;
    while (received.load(std::memory_order_acquire) <= i &&
           Clock::now() < wait_until) {
      std::this_thread::yield();
    }
    if (received.load() <= i) {
      ADD_FAILURE() << "round " << i << " not delivered";
      break;
    }
  }
  reader.join();
  // Far below one kPatience: no round waited for a deadline.
  EXPECT_LT(Clock::now() - start, kPatience);
}

TEST(WatchHubTest, NoSubscribers_CommitsAreDropped) {
  WatchHub hub;
  Commit(hub, "t", ProducerOn("n1", 1, 1));
  auto sub = hub.Subscribe("");
  v1::BindingEvent event;
  EXPECT_EQ(Poll(*sub, &event), Result::kTimeout);
}

}  // namespace
}  // namespace irqbypass
