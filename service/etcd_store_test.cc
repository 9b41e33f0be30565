// The etcd store against a real etcd member on loopback: what it keeps,
// the revision mark, request outcomes, and what happens when etcd is gone.
#include "service/etcd_store.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "service/errors.h"
#include "service/testing/store_support.h"
#include "tests/etcd_support.h"

namespace irqbypass {
namespace {

using ::irqbypass::testing::LoadAll;
using ::irqbypass::testing::PairedState;

class EtcdStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    etcd_ = new testing::EtcdCluster();
    ASSERT_TRUE(etcd_->Start(1));
  }
  static void TearDownTestSuite() {
    delete etcd_;
    etcd_ = nullptr;
  }

  // A store on its own prefix, so tests do not see one another's keys.
  std::unique_ptr<EtcdStore> Open(const std::string& prefix) {
    EtcdStoreOptions options;
    options.endpoints = etcd_->endpoints();
    options.prefix = "/test/" + prefix + "/";
    auto opened = EtcdStore::Open(options);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? *std::move(opened) : nullptr;
  }

  static testing::EtcdKv& Kv() {
    static auto* kv = new testing::EtcdKv(etcd_->endpoints()[0]);
    return *kv;
  }

  static testing::EtcdCluster* etcd_;
};

testing::EtcdCluster* EtcdStoreTest::etcd_ = nullptr;

TEST_F(EtcdStoreTest, Reopen_LoadsWhatWasWrittenAndNotWhatWasRemoved) {
  {
    auto store = Open("reopen");
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->WriteAndWait(StoreChange{"a", PairedState(1, 1)}).ok());
    ASSERT_TRUE(store->WriteAndWait(StoreChange{"b", PairedState(2, 2)}).ok());
    BindingState removed;
    removed.revision = 3;
    ASSERT_TRUE(store->WriteAndWait(StoreChange{"b", removed}).ok());
  }
  auto store = Open("reopen");
  uint64_t last = 0;
  auto loaded = LoadAll(*store, &last);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded.at("a").producer->vector, 1u);
  EXPECT_TRUE(loaded.at("a").connected);
  EXPECT_EQ(last, 3u);  // the removal's revision, though nothing holds it
}

TEST_F(EtcdStoreTest, ConcurrentWriters_MarkIsTheMaximum_ManyPagesLoaded) {
  auto store = Open("concurrent");
  std::atomic<uint64_t> revision{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::string token =
            "t" + std::to_string(t) + "-" + std::to_string(i);
        EXPECT_TRUE(store
                        ->WriteAndWait(StoreChange{
                            token, PairedState(i, revision.fetch_add(1) + 1)})
                        .ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  uint64_t last = 0;
  EXPECT_EQ(LoadAll(*store, &last).size(), 1600u);  // two pages of 1,000
  EXPECT_EQ(last, 1600u);
}

TEST_F(EtcdStoreTest, Write_MoreThanOneTransactionHolds_RefusedNothingWritten) {
  auto store = Open("batch");
  std::vector<std::string> tokens;
  std::vector<BindingState> states;
  for (int i = 0; i < 41; ++i) {
    tokens.push_back("k" + std::to_string(i));
    states.push_back(PairedState(i, i + 1));
  }
  std::vector<StoreChange> changes;
  for (int i = 0; i < 41; ++i) changes.push_back({tokens[i], states[i]});
  absl::Status s = store->WriteAndWait(changes);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("41 changes"), std::string::npos) << s;
  EXPECT_TRUE(LoadAll(*store, nullptr).empty());
  changes.pop_back();  // 40: one transaction, all written
  ASSERT_TRUE(store->WriteAndWait(changes).ok());
  uint64_t last = 0;
  EXPECT_EQ(LoadAll(*store, &last).size(), 40u);
  EXPECT_EQ(last, 40u);
}

// Group commit: many concurrent calls, puts and removals mixed, share
// transactions; each call is answered exactly once (on the store's writer
// threads), and the store ends holding exactly what the calls left.
TEST_F(EtcdStoreTest, GroupCommit_MixedCalls_EachAnsweredOnceAllKept) {
  auto store = Open("group");
  const int64_t etcd_before = Kv().Revision();
  constexpr int kThreads = 32;
  constexpr int kTokens = 40;
  std::atomic<uint64_t> revision{0};
  std::atomic<int> calls{0};
  std::atomic<int> answers{0};
  std::vector<std::map<std::string, BindingState>> kept(kThreads);
  std::vector<uint64_t> highest(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kTokens; ++i) {
        const std::string token =
            "g" + std::to_string(t) + "-" + std::to_string(i);
        auto write = [&](const BindingState& st) {
          // Answered on one of the store's writer threads.
          Mutex mu;
          CondVar cv;
          bool answered = false;
          absl::Status got;
          store->Write(absl::MakeConstSpan(
                           std::vector<StoreChange>{StoreChange{token, st}}),
                       [&](absl::Status s) {
                         answers.fetch_add(1);
                         MutexLock lock(&mu);
                         got = std::move(s);
                         answered = true;
                         cv.Signal();
                       });
          calls.fetch_add(1);
          {
            MutexLock lock(&mu);
            while (!answered) cv.Wait(&mu);
          }
          EXPECT_TRUE(got.ok()) << token << ": " << got;
          highest[t] = std::max(highest[t], st.revision);
        };
        BindingState st = PairedState(i, revision.fetch_add(1) + 1);
        write(st);
        if (i % 3 == 0) {
          BindingState removed;
          removed.revision = revision.fetch_add(1) + 1;
          write(removed);
        } else {
          kept[t][token] = st;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::map<std::string, BindingState> want;
  uint64_t want_last = 0;
  for (int t = 0; t < kThreads; ++t) {
    want.insert(kept[t].begin(), kept[t].end());
    want_last = std::max(want_last, highest[t]);
  }
  uint64_t last = 0;
  std::map<std::string, BindingState> loaded = LoadAll(*store, &last);
  ASSERT_EQ(loaded.size(), want.size());
  for (const auto& [token, st] : want) {
    ASSERT_EQ(loaded.count(token), 1u) << token;
    EXPECT_EQ(loaded[token].revision, st.revision) << token;
    EXPECT_EQ(loaded[token].producer->vector, st.producer->vector) << token;
  }
  EXPECT_EQ(last, want_last);
  store.reset();  // its writers stop: any second answer would have come
  EXPECT_EQ(answers.load(), calls.load()) << "a call answered twice";
  // Each transaction raises etcd's revision by one: fewer than one per
  // call shows calls shared them (32 callers, 4 transactions in flight).
  const int64_t txns = Kv().Revision() - etcd_before;
  EXPECT_LT(txns, calls.load()) << "no call shared a transaction";
  std::printf("%d calls in %lld transactions\n", calls.load(),
              static_cast<long long>(txns));
}

// A newer leader elected while calls are batched: every call from then on
// is refused NOT_LEADER with its own token, nothing of them is written, and
// the store steps down once.
TEST_F(EtcdStoreTest, GroupCommit_FenceLost_EveryLaterCallRefusedWithItsToken) {
  const std::string leader = "/test/fenced/leader";
  const int64_t epoch = Kv().Put(leader, "replica");
  ASSERT_GT(epoch, 0);
  std::atomic<int> step_downs{0};
  EtcdStoreOptions options;
  options.endpoints = etcd_->endpoints();
  options.prefix = "/test/fenced/";
  options.on_step_down = [&](const char*) { step_downs.fetch_add(1); };
  auto opened = EtcdStore::Open(options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<EtcdStore> store = *std::move(opened);
  store->SetFence(leader, epoch);

  constexpr int kThreads = 16;
  std::atomic<int> written{0};
  std::atomic<bool> deposed{false};
  std::vector<std::vector<std::string>> acked(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0;; ++i) {
        const bool after = deposed.load();
        const std::string token =
            "f" + std::to_string(t) + "-" + std::to_string(i);
        absl::Status s =
            store->WriteAndWait(StoreChange{token, PairedState(i, i + 1)});
        if (s.ok()) {
          EXPECT_FALSE(after) << token << " written after a newer leader";
          acked[t].push_back(token);
          written.fetch_add(1);
          continue;
        }
        EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
        EXPECT_EQ(GetErrorReason(s), ErrorReason::kNotLeader) << s;
        EXPECT_EQ(GetErrorContext(s).token, token) << s;
        if (after) break;
      }
    });
  }
  ASSERT_TRUE(::irqbypass::testing::Eventually([&] { return written >= 200; }));
  // A newer election: the key deleted and created again.
  Kv().Delete(leader);
  ASSERT_GT(Kv().Put(leader, "replica"), epoch);
  deposed.store(true);
  for (auto& th : threads) th.join();
  EXPECT_EQ(step_downs.load(), 1);
  std::map<std::string, BindingState> loaded = LoadAll(*store, nullptr);
  size_t want = 0;
  for (int t = 0; t < kThreads; ++t) {
    want += acked[t].size();
    for (const std::string& token : acked[t]) {
      EXPECT_EQ(loaded.count(token), 1u) << token << " acknowledged, lost";
    }
  }
  EXPECT_EQ(loaded.size(), want) << "a refused call was written";
}

TEST_F(EtcdStoreTest, RequestOutcomes_LoadedUntilExpiredThenPruned) {
  auto store = Open("requests");
  RequestRecord r;
  r.id = "req-1";
  r.kind = RequestKind::kRegisterConsumer;
  r.token = "a";
  r.registration_id = 42;
  r.expires_unix_micros = 2000;
  ASSERT_TRUE(
      store->WriteAndWait(StoreChange{"a", PairedState(1, 1), &r}).ok());
  std::vector<RequestRecord> got;
  auto collect = [&](RequestRecord rec) { got.push_back(std::move(rec)); };
  ASSERT_TRUE(store->LoadRequests(1000, collect).ok());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].registration_id, 42u);
  got.clear();
  ASSERT_TRUE(store->LoadRequests(2000, collect).ok());
  EXPECT_TRUE(got.empty());
  ASSERT_TRUE(store->PruneRequests(2000).ok());
  ASSERT_TRUE(store->LoadRequests(0, collect).ok());
  EXPECT_TRUE(got.empty());
}

TEST_F(EtcdStoreTest, Open_NoEndpointsOrMalformed_InvalidArgument) {
  EXPECT_EQ(EtcdStore::Open({}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EtcdStoreOptions options;
  options.endpoints = {"https://127.0.0.1:2379"};
  EXPECT_EQ(EtcdStore::Open(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Last: it stops the member.
TEST_F(EtcdStoreTest, ZEtcdDown_WriteUnavailableNothingHangs) {
  auto store = Open("down");
  ASSERT_NE(store, nullptr);
  etcd_->member(0).Signal(SIGKILL);
  etcd_->member(0).Wait();
  absl::Status s = store->WriteAndWait(StoreChange{"a", PairedState(1, 1)});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetErrorReason(s), ErrorReason::kStoreUnavailable);
  ASSERT_TRUE(etcd_->Restart(0));
  EXPECT_TRUE(::irqbypass::testing::Eventually([&] {
    return store->WriteAndWait(StoreChange{"a", PairedState(1, 2)}).ok();
  }));
}

}  // namespace
}  // namespace irqbypass
