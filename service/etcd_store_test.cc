// The etcd store against a real etcd member on loopback: what it keeps,
// the revision mark, request outcomes, and what happens when etcd is gone.
#include "service/etcd_store.h"

#include <signal.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "service/errors.h"
#include "tests/etcd_support.h"

namespace irqbypass {
namespace {

BindingState Paired(uint32_t n, uint64_t revision) {
  BindingState st;
  ProducerRecord& p = st.producer.emplace();
  p.node = "n1";
  p.device = "0000:3b:00.1";
  p.vector = n;
  p.registration_id = 100 + n;
  ConsumerRecord& c = st.consumer.emplace();
  c.node = "n1";
  c.vm = "vm-a";
  c.gsi = n;
  st.connected = true;
  st.revision = revision;
  return st;
}

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

  static std::map<std::string, BindingState> LoadAll(Store& store,
                                                     uint64_t* last) {
    std::map<std::string, BindingState> loaded;
    auto r = store.Load([&](std::string token, BindingState st) {
      loaded[token] = std::move(st);
      return absl::OkStatus();
    });
    EXPECT_TRUE(r.ok()) << r.status();
    if (last != nullptr) *last = r.ok() ? *r : 0;
    return loaded;
  }

  static testing::EtcdCluster* etcd_;
};

testing::EtcdCluster* EtcdStoreTest::etcd_ = nullptr;

TEST_F(EtcdStoreTest, Reopen_LoadsWhatWasWrittenAndNotWhatWasRemoved) {
  {
    auto store = Open("reopen");
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->WriteAndWait(StoreChange{"a", Paired(1, 1)}).ok());
    ASSERT_TRUE(store->WriteAndWait(StoreChange{"b", Paired(2, 2)}).ok());
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
        const std::string token = "t" + std::to_string(t) + "-" +
                                  std::to_string(i);
        EXPECT_TRUE(store
                        ->WriteAndWait(StoreChange{
                            token, Paired(i, revision.fetch_add(1) + 1)})
                        .ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  uint64_t last = 0;
  EXPECT_EQ(LoadAll(*store, &last).size(), 1600u);  // two pages of 1,000
  EXPECT_EQ(last, 1600u);
}

TEST_F(EtcdStoreTest, Batch_LargerThanOneTransaction_AllWritten) {
  auto store = Open("batch");
  std::vector<std::string> tokens;
  std::vector<BindingState> states;
  for (int i = 0; i < 300; ++i) {
    tokens.push_back("k" + std::to_string(i));
    states.push_back(Paired(i, i + 1));
  }
  std::vector<StoreChange> changes;
  for (int i = 0; i < 300; ++i) changes.push_back({tokens[i], states[i]});
  ASSERT_TRUE(store->WriteAndWait(changes).ok());
  uint64_t last = 0;
  EXPECT_EQ(LoadAll(*store, &last).size(), 300u);
  EXPECT_EQ(last, 300u);
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
      store->WriteAndWait(StoreChange{"a", Paired(1, 1), &r}).ok());
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
  absl::Status s = store->WriteAndWait(StoreChange{"a", Paired(1, 1)});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetErrorReason(s), ErrorReason::kStoreUnavailable);
  ASSERT_TRUE(etcd_->Restart(0));
  EXPECT_TRUE(::irqbypass::testing::WaitFor([&] {
    return store->WriteAndWait(StoreChange{"a", Paired(1, 2)}).ok();
  }));
}

}  // namespace
}  // namespace irqbypass
