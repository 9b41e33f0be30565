// The warm standby copy against a real etcd member on loopback: it follows
// what an EtcdStore writes (before and after it started), hands over
// exactly what a load from etcd would read, catches up from the watch after
// falling behind, lists again when etcd compacted past it, and says so when
// it cannot reach the election's revision.
#include "service/etcd_mirror.h"

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "service/etcd_store.h"
#include "service/store_codec.h"
#include "service/testing/store_support.h"
#include "tests/etcd_support.h"

namespace irqbypass {
namespace {

using ::irqbypass::testing::PairedState;

class EtcdMirrorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    etcd_ = new testing::EtcdCluster();
    ASSERT_TRUE(etcd_->Start(1));
    kv_ = new testing::EtcdKv(etcd_->endpoints()[0]);
  }
  static void TearDownTestSuite() {
    delete kv_;
    kv_ = nullptr;
    delete etcd_;
    etcd_ = nullptr;
  }

  std::string Prefix(const std::string& name) {
    return "/mirror/" + name + "/";
  }

  std::unique_ptr<EtcdStore> OpenStore(const std::string& name) {
    EtcdStoreOptions options;
    options.endpoints = etcd_->endpoints();
    options.prefix = Prefix(name);
    auto opened = EtcdStore::Open(options);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? *std::move(opened) : nullptr;
  }

  std::unique_ptr<EtcdMirror> StartMirror(const std::string& name) {
    EtcdMirrorOptions options;
    options.endpoints = etcd_->endpoints();
    options.prefix = Prefix(name);
    auto started = EtcdMirror::Start(options);
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return nullptr;
    // Take refuses a copy not listed yet.
    EXPECT_TRUE(::irqbypass::testing::Eventually(
        [&] { return (*started)->lists() > 0; }));
    return *std::move(started);
  }

  // An election: the leader key created; its revision.
  static int64_t Elect(const std::string& prefix) {
    return kv_->Put(prefix + "leader", "127.0.0.1:1");
  }

  static void CompactAll() { kv_->CompactAll(); }

  // The copy equals what a load from etcd reads now.
  static void ExpectSameAsEtcd(EtcdStore& store, MirrorCopy& copy) {
    std::map<std::string, BindingState> loaded;
    auto last = store.Load([&](std::string token, BindingState st) {
      loaded[token] = std::move(st);
      return absl::OkStatus();
    });
    ASSERT_TRUE(last.ok()) << last.status();
    std::map<std::string, BindingState> mirrored(copy.bindings.begin(),
                                                 copy.bindings.end());
    ASSERT_EQ(mirrored.size(), loaded.size());
    for (const auto& [token, st] : loaded) {
      ASSERT_EQ(mirrored.count(token), 1u) << token;
      EXPECT_EQ(EncodeBinding(mirrored[token]), EncodeBinding(st)) << token;
    }
    EXPECT_EQ(copy.last_revision, *last);
    // The same outcomes in the same (expiry) order.
    std::vector<std::string> requests, mirrored_requests;
    ASSERT_TRUE(store
                    .LoadRequests(0,
                                  [&](RequestRecord r) {
                                    requests.push_back(EncodeRequest(r));
                                  })
                    .ok());
    for (const RequestRecord& r : copy.requests) {
      mirrored_requests.push_back(EncodeRequest(r));
    }
    EXPECT_EQ(mirrored_requests, requests);
  }

  // Writes tokens [from, to) and removes every third; request outcomes for
  // every fifth.
  static void WriteSome(EtcdStore& store, int from, int to,
                        uint64_t* revision) {
    for (int i = from; i < to; ++i) {
      const std::string token = "t" + std::to_string(i);
      RequestRecord r;
      r.id = "req-" + std::to_string(i);
      r.kind = RequestKind::kRegisterProducer;
      r.token = token;
      r.expires_unix_micros = 1000000 + i;
      ASSERT_TRUE(
          store
              .WriteAndWait(StoreChange{token, PairedState(i, ++*revision),
                                        i % 5 == 0 ? &r : nullptr})
              .ok());
      if (i % 3 == 0) {
        BindingState removed;
        removed.revision = ++*revision;
        ASSERT_TRUE(store.WriteAndWait(StoreChange{token, removed}).ok());
      }
    }
  }

  // Tokens [from, to) written 40 to a call (one transaction each), with a
  // request outcome each whose expiry runs backwards, so key order and
  // write order differ.
  static void WriteMany(EtcdStore& store, int from, int to) {
    std::vector<std::string> tokens;
    std::vector<BindingState> states;
    std::vector<RequestRecord> records;
    for (int start = from; start < to; start += 40) {
      tokens.clear();
      states.clear();
      records.clear();
      const int end = std::min(to, start + 40);
      for (int i = start; i < end; ++i) {
        tokens.push_back("m" + std::to_string(i));
        states.push_back(PairedState(i, 10000 + i));
        RequestRecord r;
        r.id = "bulk-" + std::to_string(i);
        r.kind = RequestKind::kRegisterConsumer;
        r.token = tokens.back();
        r.expires_unix_micros = 5000000 - i;
        records.push_back(r);
      }
      std::vector<StoreChange> changes;
      for (size_t i = 0; i < tokens.size(); ++i) {
        changes.push_back({tokens[i], states[i], &records[i]});
      }
      ASSERT_TRUE(store.WriteAndWait(changes).ok());
    }
  }

  static testing::EtcdCluster* etcd_;
  static testing::EtcdKv* kv_;
};

testing::EtcdCluster* EtcdMirrorTest::etcd_ = nullptr;
testing::EtcdKv* EtcdMirrorTest::kv_ = nullptr;

TEST_F(EtcdMirrorTest, FollowsWritesBeforeAndAfterStart_TakeIsWhatEtcdHolds) {
  auto store = OpenStore("follow");
  ASSERT_NE(store, nullptr);
  uint64_t revision = 0;
  WriteSome(*store, 0, 300, &revision);  // listed
  auto mirror = StartMirror("follow");
  ASSERT_NE(mirror, nullptr);
  WriteSome(*store, 300, 600, &revision);  // watched
  // A removal of a listed token, after the list.
  BindingState removed;
  removed.revision = ++revision;
  ASSERT_TRUE(store->WriteAndWait(StoreChange{"t1", removed}).ok());
  const int64_t election = Elect(Prefix("follow"));
  auto copy = mirror->Take(election, absl::Seconds(10));
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_GE(copy->etcd_revision, election);
  EXPECT_EQ(copy->last_revision, revision);
  EXPECT_EQ(mirror->lists(), 1);
  ExpectSameAsEtcd(*store, *copy);
}

TEST_F(EtcdMirrorTest, FellBehind_CatchesUpFromTheWatchWithoutListing) {
  auto store = OpenStore("behind");
  auto mirror = StartMirror("behind");
  ASSERT_TRUE(
      ::irqbypass::testing::Eventually([&] { return mirror->revision() > 0; }));
  mirror->PauseForTest();
  // Many revisions for one catch-up (etcd sends them in large messages).
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      uint64_t r = 1000000 * (t + 1);
      WriteSome(*store, t * 800, (t + 1) * 800, &r);
    });
  }
  for (auto& th : writers) th.join();
  mirror->ResumeForTest();
  const int64_t election = Elect(Prefix("behind"));
  auto copy = mirror->Take(election, absl::Seconds(20));
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(mirror->lists(), 1);
  ExpectSameAsEtcd(*store, *copy);
}

TEST_F(EtcdMirrorTest, EtcdCompactedPastTheCopy_ListsAgainAndIsExact) {
  auto store = OpenStore("compacted");
  uint64_t revision = 0;
  WriteSome(*store, 0, 100, &revision);
  auto mirror = StartMirror("compacted");
  ASSERT_TRUE(
      ::irqbypass::testing::Eventually([&] { return mirror->bindings() > 0; }));
  mirror->PauseForTest();
  WriteSome(*store, 100, 200, &revision);
  for (int i = 0; i < 100; i += 2) {  // removals the copy never sees
    BindingState removed;
    removed.revision = ++revision;
    ASSERT_TRUE(
        store->WriteAndWait(StoreChange{"t" + std::to_string(i), removed})
            .ok());
  }
  CompactAll();
  mirror->ResumeForTest();
  const int64_t election = Elect(Prefix("compacted"));
  auto copy = mirror->Take(election, absl::Seconds(10));
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(mirror->lists(), 2);
  EXPECT_EQ(copy->last_revision, revision);
  ExpectSameAsEtcd(*store, *copy);
}

TEST_F(EtcdMirrorTest, ElectionRevisionNotReached_DeadlineExceeded) {
  auto mirror = StartMirror("ahead");
  ASSERT_TRUE(
      ::irqbypass::testing::Eventually([&] { return mirror->revision() > 0; }));
  auto copy =
      mirror->Take(mirror->revision() + 1000000, absl::Milliseconds(300));
  EXPECT_EQ(copy.status().code(), absl::StatusCode::kDeadlineExceeded)
      << copy.status();
}

TEST_F(EtcdMirrorTest, UndecodableRecord_DataLossNamingTheKey) {
  auto mirror = StartMirror("corrupt");
  ASSERT_GT(kv_->Put(Prefix("corrupt") + "b/bad", "\xff\xff not a binding"), 0);
  auto copy = mirror->Take(Elect(Prefix("corrupt")), absl::Seconds(10));
  EXPECT_EQ(copy.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(copy.status().message().find("b/bad"), std::string::npos)
      << copy.status();
}

TEST_F(EtcdMirrorTest, ListedInPages_RequestsInExpiryOrder) {
  auto store = OpenStore("pages");
  WriteMany(*store, 0, 2600);  // three pages of keys and more of outcomes
  auto mirror = StartMirror("pages");
  const int64_t election = Elect(Prefix("pages"));
  auto copy = mirror->Take(election, absl::Seconds(20));
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(mirror->lists(), 1);
  EXPECT_EQ(copy->bindings.size(), 2600u);
  ASSERT_EQ(copy->requests.size(), 2600u);
  EXPECT_EQ(copy->requests.front().id, "bulk-2599");  // expires first
  ExpectSameAsEtcd(*store, *copy);
}

TEST_F(EtcdMirrorTest, NeverListed_TakeRefusedAtOnce) {
  EtcdMirrorOptions options;
  options.endpoints = {"http://127.0.0.1:1"};  // nothing listens there
  auto mirror = EtcdMirror::Start(options);
  ASSERT_TRUE(mirror.ok()) << mirror.status();
  auto copy = (*mirror)->Take(5, absl::Seconds(10));
  EXPECT_EQ(copy.status().code(), absl::StatusCode::kFailedPrecondition)
      << copy.status();
}

TEST_F(EtcdMirrorTest, CancelledWhileTakeWaits_TakeReturnsCancelled) {
  auto mirror = StartMirror("cancel");
  ASSERT_TRUE(
      ::irqbypass::testing::Eventually([&] { return mirror->lists() > 0; }));
  absl::Status got;
  std::thread taker([&] {
    got =
        mirror->Take(mirror->revision() + 1000000, absl::Seconds(30)).status();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  mirror->Cancel();
  taker.join();
  EXPECT_EQ(got.code(), absl::StatusCode::kCancelled) << got;
}

TEST_F(EtcdMirrorTest, UndecodableRecordOverwritten_CopyUsableAgain) {
  auto mirror = StartMirror("fixed");
  auto put = [&](const std::string& value) {
    ASSERT_GT(kv_->Put(Prefix("fixed") + "b/t", value), 0);
  };
  put("\xff\xff not a binding");
  put(EncodeBinding(PairedState(1, 7)));
  auto copy = mirror->Take(Elect(Prefix("fixed")), absl::Seconds(10));
  ASSERT_TRUE(copy.ok()) << copy.status();
  ASSERT_EQ(copy->bindings.size(), 1u);
  EXPECT_EQ(copy->bindings[0].second.revision, 7u);
}

}  // namespace
}  // namespace irqbypass
