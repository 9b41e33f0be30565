// The kernel contract, line by line (see README "Contract"), against the
// matcher with a fake dispatcher standing in for the node agents.
#include "service/matcher.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "common/testing/eventually.h"
#include "gtest/gtest.h"
#include "service/errors.h"
#include "service/etcd_store.h"
#include "service/owners.h"
#include "service/registration_limits.h"
#include "service/rocksdb_store.h"
#include "service/store.h"
#include "service/testing/fake_dispatcher.h"
#include "tests/etcd_support.h"

namespace irqbypass {
namespace {

ProducerRecord Prod(const std::string& node = "n1",
                    const std::string& device = "0000:3b:00.1",
                    uint32_t vector = 0) {
  ProducerRecord p;
  p.node = node;
  p.device = device;
  p.vector = vector;
  return p;
}

ConsumerRecord Cons(const std::string& node = "n1",
                    const std::string& vm = "vm-a", uint32_t gsi = 24) {
  ConsumerRecord c;
  c.node = node;
  c.vm = vm;
  c.gsi = gsi;
  return c;
}

using ::irqbypass::testing::FakeDispatcher;

bool Always() { return true; }

absl::Status ConnectStepFailed(const std::string& step, int err) {
  ErrorContext ctx;
  ctx.step = step;
  ctx.err = err;
  return MakeError(absl::StatusCode::kFailedPrecondition,
                   ErrorReason::kConnectFailed, "connect step failed", ctx);
}

// A store that refuses writes while told to, in front of a real one.
class RefusingStore : public Store {
 public:
  explicit RefusingStore(Store* real) : real_(real) {}
  absl::StatusOr<uint64_t> Load(
      const std::function<absl::Status(std::string, BindingState)>& fn)
      override {
    return real_->Load(fn);
  }
  void Write(absl::Span<const StoreChange> changes,
             std::function<void(absl::Status)> done) override {
    if (refuse_.load()) {
      ++refused_;
      done(MakeError(absl::StatusCode::kUnavailable,
                     ErrorReason::kStoreUnavailable, "refused (test)", {}));
      return;
    }
    real_->Write(changes, std::move(done));
  }
  absl::Status LoadRequests(
      int64_t now, const std::function<void(RequestRecord)>& fn) override {
    return real_->LoadRequests(now, fn);
  }
  absl::Status PruneRequests(int64_t now) override {
    return real_->PruneRequests(now);
  }
  std::string Describe() const override { return "refusing"; }
  std::atomic<bool> refuse_{false};
  std::atomic<int> refused_{0};

 private:
  Store* real_;
};

// Writes nothing, refuses nothing: what the index does with no store.
class NullStore : public Store {
 public:
  absl::StatusOr<uint64_t> Load(
      const std::function<absl::Status(std::string, BindingState)>&) override {
    return 0;
  }
  void Write(absl::Span<const StoreChange>,
             std::function<void(absl::Status)> done) override {
    done(absl::OkStatus());
  }
  absl::Status LoadRequests(
      int64_t, const std::function<void(RequestRecord)>&) override {
    return absl::OkStatus();
  }
  absl::Status PruneRequests(int64_t) override { return absl::OkStatus(); }
  std::string Describe() const override { return "none"; }
};

std::string NewTempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string path =
      std::string(base != nullptr ? base : "/tmp") + "/matcher_test.XXXXXX";
  if (mkdtemp(path.data()) == nullptr) std::abort();
  return path;
}

// Every contract test runs against each store: none (`--store=memory`) and
// the embedded RocksDB store; with a store, the test ends by reading the
// store back and checking it holds exactly what the index publishes.
enum class StoreKind { kMemory, kEmbedded, kEtcd };

// One etcd member for the whole test binary (each test on its own prefix).
testing::EtcdCluster& SharedEtcd() {
  static testing::EtcdCluster* etcd = [] {
    auto* cluster = new testing::EtcdCluster();
    if (!cluster->Start(1)) std::abort();
    return cluster;
  }();
  return *etcd;
}

class MatcherTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  MatcherTest() {
    if (GetParam() == StoreKind::kEmbedded) {
      RocksDbStoreOptions options;
      options.dir = NewTempDir();
      auto opened = RocksDbStore::Open(options);
      if (!opened.ok()) std::abort();
      rocks_ = *std::move(opened);
      refusing_ = std::make_unique<RefusingStore>(rocks_.get());
    } else if (GetParam() == StoreKind::kEtcd) {
      EtcdStoreOptions options;
      options.endpoints = SharedEtcd().endpoints();
      static int tests = 0;
      options.prefix = "/matcher-test/" + std::to_string(++tests) + "/";
      auto opened = EtcdStore::Open(options);
      if (!opened.ok()) std::abort();
      etcd_ = *std::move(opened);
      refusing_ = std::make_unique<RefusingStore>(etcd_.get());
    } else {
      refusing_ = std::make_unique<RefusingStore>(&null_);
    }
    index_ =
        std::make_unique<TokenIndex>(16, nullptr, nullptr, refusing_.get());
    matcher_ = std::make_unique<Matcher>(*index_, agent_, &requests_);
  }

  void TearDown() override {
    Store* durable =
        rocks_ != nullptr ? static_cast<Store*>(rocks_.get()) : etcd_.get();
    if (durable == nullptr) return;
    std::map<std::string, BindingState> published;
    index_->ForEachCommitted(
        [&](const std::string& token, const BindingState& st) {
          published[token] = st;
        });
    std::map<std::string, BindingState> stored;
    auto loaded = durable->Load([&](std::string token, BindingState st) {
      stored[token] = std::move(st);
      return absl::OkStatus();
    });
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(stored.size(), published.size());
    for (const auto& [token, st] : published) {
      auto it = stored.find(token);
      ASSERT_NE(it, stored.end()) << token << " published but not stored";
      EXPECT_EQ(it->second.revision, st.revision) << token;
      EXPECT_EQ(it->second.connected, st.connected) << token;
      EXPECT_EQ(it->second.producer.has_value(), st.producer.has_value());
      EXPECT_EQ(it->second.consumer.has_value(), st.consumer.has_value());
    }
    // The store's high-water mark is the last revision handed out, unless
    // the last commits were refused (their revisions were never written).
    if (refusing_->refused_.load() == 0) {
      EXPECT_EQ(*loaded, index_->revision());
    } else {
      EXPECT_LE(*loaded, index_->revision());
    }
  }

  static RequestLog::Options LogOptions(absl::Time* now) {
    RequestLog::Options options;
    options.ttl = absl::Minutes(10);
    options.now = [now] { return *now; };
    return options;
  }

  absl::Time now_ = absl::FromUnixSeconds(1800000000);
  RequestLog requests_{LogOptions(&now_)};
  std::unique_ptr<RocksDbStore> rocks_;
  std::unique_ptr<EtcdStore> etcd_;
  NullStore null_;
  std::unique_ptr<RefusingStore> refusing_;
  FakeDispatcher agent_;
  std::unique_ptr<TokenIndex> index_;
  std::unique_ptr<Matcher> matcher_;
};

// --- 1. Register producer -------------------------------------------------

TEST_P(MatcherTest, RegisterProducer_NoConsumer_RecordedNotConnected) {
  auto r = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->connected);
  EXPECT_NE(r->registration_id, 0u);
  auto st = index_->Get("t1");
  ASSERT_TRUE(st && st->producer);
  EXPECT_EQ(st->producer->registration_id, r->registration_id);
  EXPECT_FALSE(st->consumer.has_value());
  EXPECT_EQ(agent_.connects(), 0);
}

TEST_P(MatcherTest,
       RegisterProducer_ProducerHoldsToken_AlreadyExistsNothingChanges) {
  auto first = matcher_->RegisterProducer("t1", Prod("n1", "0000:00:01.0"));
  ASSERT_TRUE(first.ok());
  auto second = matcher_->RegisterProducer("t1", Prod("n1", "0000:00:02.0"));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(GetErrorReason(second.status()), ErrorReason::kTokenBusy);
  auto st = index_->Get("t1");
  EXPECT_EQ(st->producer->device, "0000:00:01.0");
  EXPECT_EQ(st->producer->registration_id, first->registration_id);
  EXPECT_EQ(st->revision, 1u);
}

TEST_P(MatcherTest,
       RegisterProducer_ObjectAlreadyRegistered_AlreadyExistsNamingToken) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  auto dup = matcher_->RegisterProducer("t2", Prod());
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(GetErrorReason(dup.status()), ErrorReason::kObjectBusy);
  EXPECT_EQ(GetErrorContext(dup.status()).other_token, "t1");
  EXPECT_FALSE(index_->Get("t2").has_value());
}

TEST_P(MatcherTest, RegisterProducer_ConsumerPresent_ConnectsAndRecordsPair) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  auto r = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->connected);
  EXPECT_EQ(agent_.connects(), 1);
  auto st = index_->Get("t1");
  EXPECT_TRUE(st->producer && st->consumer && st->connected);
}

TEST_P(
    MatcherTest,
    RegisterProducer_ConsumerPresent_ConnectFails_ProducerNotRecordedConsumerUntouched) {
  auto c = matcher_->RegisterConsumer("t1", Cons());
  ASSERT_TRUE(c.ok());
  const uint64_t revision_before = index_->Get("t1")->revision;
  agent_.fail_with_ = ConnectStepFailed("add_producer", ENOENT);
  auto r = matcher_->RegisterProducer("t1", Prod());
  // The failing step's error is returned as is.
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorContext(r.status()).step, "add_producer");
  EXPECT_EQ(GetErrorContext(r.status()).err, ENOENT);
  auto st = index_->Get("t1");
  ASSERT_TRUE(st.has_value());
  EXPECT_FALSE(st->producer.has_value());
  EXPECT_FALSE(st->connected);
  EXPECT_EQ(st->consumer->registration_id, c->registration_id);
  EXPECT_EQ(st->revision, revision_before);  // consumer untouched
  // The rolled-back producer's object is free again.
  agent_.fail_with_ = absl::OkStatus();
  EXPECT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
}

TEST_P(MatcherTest,
       RegisterProducer_ConsumerOnOtherNode_FailedPreconditionNotRecorded) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons("n2")).ok());
  auto r = matcher_->RegisterProducer("t1", Prod("n1"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorReason(r.status()), ErrorReason::kNodeMismatch);
  EXPECT_FALSE(index_->Get("t1")->producer.has_value());
  EXPECT_EQ(agent_.connects(), 0);
}

TEST_P(MatcherTest,
       RegisterProducer_AgentUnavailable_RolledBackWithUnavailable) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  agent_.fail_with_ = absl::UnavailableError("no agent for node n1");
  auto r = matcher_->RegisterProducer("t1", Prod());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(index_->Get("t1")->producer.has_value());
}

TEST_P(MatcherTest, ConnectInFlight_ReadersSeeOnlyCommittedState) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  agent_.Hold();
  std::thread registrar(
      [&] { ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok()); });
  agent_.WaitHeld(1);
  auto mid = index_->Get("t1");
  EXPECT_FALSE(mid->producer.has_value());
  EXPECT_FALSE(mid->connected);
  agent_.Release();
  registrar.join();
  EXPECT_TRUE(index_->Get("t1")->connected);
}

// A register of a side the token already has is answered from the
// committed state, without waiting for the operation holding the token: here
// a consumer's connect is held indefinitely, and the duplicate producer must
// still be told ALREADY_EXISTS (before, it queued behind the connect).
TEST_P(MatcherTest, DuplicateRegister_WhileTheTokenIsHeld_AlreadyExistsAtOnce) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  agent_.Hold();
  std::thread registrar(
      [&] { EXPECT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok()); });
  agent_.WaitHeld(1);  // t1's op lock is held across the connect
  std::atomic<bool> answered{false};
  absl::Status duplicate;
  std::thread duplicator([&] {
    duplicate =
        matcher_->RegisterProducer("t1", Prod("n1", "0000:00:02.0")).status();
    answered = true;
  });
  EXPECT_TRUE(irqbypass::testing::Eventually([&] { return answered.load(); }))
      << "the duplicate waited for the held connect";
  agent_.Release();
  registrar.join();
  duplicator.join();
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists) << duplicate;
  EXPECT_EQ(GetErrorReason(duplicate), ErrorReason::kTokenBusy);
  EXPECT_TRUE(index_->Get("t1")->connected);
}

TEST_P(MatcherTest,
       ConnectInFlight_SameObjectElsewhere_AbortedNotAlreadyExists) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  agent_.Hold();
  agent_.fail_with_ = ConnectStepFailed("add_producer", ENOENT);
  std::thread registrar(
      [&] { EXPECT_FALSE(matcher_->RegisterProducer("t1", Prod()).ok()); });
  agent_.WaitHeld(1);
  // t1's producer may still be rolled back: the caller is told to retry.
  auto racing = matcher_->RegisterProducer("t2", Prod());
  EXPECT_EQ(racing.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(GetErrorReason(racing.status()), ErrorReason::kObjectBusy);
  EXPECT_EQ(GetErrorContext(racing.status()).other_token, "t1");
  agent_.Release();
  registrar.join();
  // t1's connect failed, so the object is free.
  EXPECT_TRUE(matcher_->RegisterProducer("t2", Prod()).ok());
}

TEST_P(MatcherTest, QueuedOperation_StartsOnlyAfterTheOneBeforeAnswered) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  Mutex mu;
  std::vector<std::string> answered;  // guarded by mu
  auto note = [&](const char* what) {
    MutexLock lock(&mu);
    answered.push_back(what);
  };
  agent_.Hold();
  std::thread registrar([&] {
    matcher_->RegisterConsumerAsync("t1", Cons(), nullptr,
                                    [&](absl::StatusOr<RegisterResult> r) {
                                      EXPECT_TRUE(r.ok()) << r.status();
                                      note("register");
                                    });
  });
  agent_.WaitHeld(1);  // the register holds t1 across its connect
  std::atomic<bool> unregistered{false};
  matcher_->UnregisterConsumerAsync(
      "t1", 0, nullptr, [&](absl::StatusOr<bool> r) {
        EXPECT_TRUE(r.ok()) << r.status();
        {
          MutexLock lock(&mu);
          // The unregister saw the register's outcome: it got the lock only
          // after the register had answered its caller.
          EXPECT_EQ(answered, std::vector<std::string>{"register"});
        }
        note("unregister");
        unregistered = true;
      });
  agent_.Release();
  registrar.join();
  ASSERT_TRUE(
      irqbypass::testing::Eventually([&] { return unregistered.load(); }));
  MutexLock lock(&mu);
  EXPECT_EQ(answered, (std::vector<std::string>{"register", "unregister"}));
}

TEST_P(MatcherTest, ConnectInFlight_UnrelatedTokensProceed) {
  ASSERT_TRUE(matcher_->RegisterConsumer("slow", Cons("n1", "vm-a", 1)).ok());
  agent_.Hold();
  std::thread registrar([&] {
    (void)matcher_->RegisterProducer("slow", Prod("n1", "0000:00:01.0"));
  });
  agent_.WaitHeld(1);
  // While "slow" waits on its agent, another token registers freely.
  EXPECT_TRUE(
      matcher_->RegisterProducer("fast", Prod("n1", "0000:00:02.0")).ok());
  EXPECT_TRUE(matcher_->UnregisterProducer("fast", 0).ok());
  agent_.Release();
  registrar.join();
}

// --- 2. Register consumer (mirror image) -----------------------------------

TEST_P(MatcherTest, RegisterConsumer_NoProducer_RecordedNotConnected) {
  auto r = matcher_->RegisterConsumer("t1", Cons());
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->connected);
  EXPECT_TRUE(index_->Get("t1")->consumer.has_value());
}

TEST_P(MatcherTest, RegisterConsumer_ConsumerHoldsToken_AlreadyExists) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons("n1", "vm-a", 1)).ok());
  auto r = matcher_->RegisterConsumer("t1", Cons("n1", "vm-b", 2));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(index_->Get("t1")->consumer->vm, "vm-a");
}

TEST_P(
    MatcherTest,
    RegisterConsumer_ProducerPresent_ConnectFails_ConsumerNotRecordedProducerUntouched) {
  auto p = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(p.ok());
  agent_.fail_with_ = ConnectStepFailed("add_consumer", EBUSY);
  auto r = matcher_->RegisterConsumer("t1", Cons());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorContext(r.status()).step, "add_consumer");
  auto st = index_->Get("t1");
  EXPECT_FALSE(st->consumer.has_value());
  EXPECT_EQ(st->producer->registration_id, p->registration_id);
}

TEST_P(MatcherTest, RegisterConsumer_ProducerPresent_ConnectsAndRecordsPair) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  auto r = matcher_->RegisterConsumer("t1", Cons());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->connected);
  EXPECT_TRUE(index_->Get("t1")->connected);
}

// --- 3. Unregister producer -------------------------------------------------

TEST_P(MatcherTest, UnregisterProducer_NeverRegistered_NotFoundNoChange) {
  auto r = matcher_->UnregisterProducer("t1", 0);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(index_->Get("t1").has_value());
}

TEST_P(MatcherTest,
       UnregisterProducer_AfterFailedRegistration_NotFoundConsumerKept) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  agent_.fail_with_ = ConnectStepFailed("add_producer", EIO);
  ASSERT_FALSE(matcher_->RegisterProducer("t1", Prod()).ok());
  EXPECT_EQ(matcher_->UnregisterProducer("t1", 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(index_->Get("t1")->consumer.has_value());
  EXPECT_EQ(agent_.disconnects(), 0);
}

TEST_P(MatcherTest, UnregisterProducer_Paired_DisconnectsFirstThenForgets) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  bool producer_visible_during_disconnect = false;
  agent_.on_disconnect_ = [&](absl::string_view token) {
    auto st = index_->Get(token);
    producer_visible_during_disconnect = st && st->producer && st->connected;
  };
  auto r = matcher_->UnregisterProducer("t1", 0);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  EXPECT_TRUE(producer_visible_during_disconnect);
  auto st = index_->Get("t1");
  EXPECT_FALSE(st->producer.has_value());
  EXPECT_FALSE(st->connected);
  EXPECT_TRUE(st->consumer.has_value());
  EXPECT_EQ(agent_.disconnects(), 1);
}

TEST_P(MatcherTest,
       UnregisterProducer_OtherRegistrationId_FailedPreconditionUntouched) {
  auto p = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(p.ok());
  auto r = matcher_->UnregisterProducer("t1", p->registration_id + 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorReason(r.status()), ErrorReason::kRegistrationMismatch);
  EXPECT_EQ(index_->Get("t1")->producer->registration_id, p->registration_id);
}

TEST_P(MatcherTest, UnregisterProducer_MatchingRegistrationId_Removes) {
  auto p = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(matcher_->UnregisterProducer("t1", p->registration_id).ok());
  EXPECT_FALSE(index_->Get("t1").has_value());
  // Its object is free for another token.
  EXPECT_TRUE(matcher_->RegisterProducer("t2", Prod()).ok());
}

TEST_P(MatcherTest,
       UnregisterProducer_StaleIdAfterReRegistration_RemovesNothing) {
  auto old_reg = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(
      matcher_->UnregisterProducer("t1", old_reg->registration_id).ok());
  auto new_reg = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(new_reg.ok());
  EXPECT_FALSE(
      matcher_->UnregisterProducer("t1", old_reg->registration_id).ok());
  EXPECT_EQ(index_->Get("t1")->producer->registration_id,
            new_reg->registration_id);
}

// --- Owners
// -------------------------------------------------------------------

TEST_P(MatcherTest, Owners_OnlyTheOwnerOrAnAdmin_PairsWithOrUnregisters) {
  auto as = [](const char* uri, bool admin) {
    CallId call;
    call.caller.owner = Owners::Get().Intern(uri);
    call.caller.admin = admin;
    return call;
  };
  const CallId x = as("spiffe://td/irqbypass/orchestrator/x", false);
  const CallId y = as("spiffe://td/irqbypass/orchestrator/y", false);
  const CallId admin = as("spiffe://td/irqbypass/admin/a", true);
  ASSERT_NE(x.caller.owner, y.caller.owner);
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons(), &x).ok());

  // Y may neither pair with X's consumer nor unregister it; the refusal
  // does not say whose it is.
  auto pair = matcher_->RegisterProducer("t1", Prod(), &y);
  EXPECT_EQ(pair.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(GetErrorReason(pair.status()), ErrorReason::kNotOwner);
  EXPECT_EQ(pair.status().message().find("orchestrator/x"), std::string::npos)
      << pair.status();
  EXPECT_EQ(agent_.connects(), 0);
  auto unregister = matcher_->UnregisterConsumer("t1", 0, &y);
  EXPECT_EQ(unregister.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(GetErrorReason(unregister.status()), ErrorReason::kNotOwner);
  ASSERT_TRUE(index_->Get("t1")->consumer.has_value());

  // X pairs; each side records its owner, in the store too.
  auto p = matcher_->RegisterProducer("t1", Prod(), &x);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->connected);
  EXPECT_EQ(index_->Get("t1")->producer->owner, x.caller.owner);
  EXPECT_EQ(index_->Get("t1")->consumer->owner, x.caller.owner);
  Store* durable =
      rocks_ != nullptr ? static_cast<Store*>(rocks_.get()) : etcd_.get();
  if (durable != nullptr) {
    std::optional<BindingState> stored;
    ASSERT_TRUE(durable
                    ->Load([&](std::string token, BindingState st) {
                      if (token == "t1") stored = std::move(st);
                      return absl::OkStatus();
                    })
                    .ok());
    ASSERT_TRUE(stored.has_value() && stored->producer && stored->consumer);
    EXPECT_EQ(Owners::Get().Name(stored->producer->owner),
              "spiffe://td/irqbypass/orchestrator/x");
    EXPECT_EQ(stored->consumer->owner, x.caller.owner);
  }

  // An admin may unregister what X registered; X its own.
  auto by_admin = matcher_->UnregisterProducer("t1", 0, &admin);
  ASSERT_TRUE(by_admin.ok()) << by_admin.status();
  EXPECT_TRUE(*by_admin);
  EXPECT_TRUE(matcher_->UnregisterConsumer("t1", 0, &x).ok());
  EXPECT_FALSE(index_->Get("t1").has_value());
}

TEST_P(MatcherTest, Owners_ARequestIdReusedByAnotherOwner_IsAnotherRequest) {
  // (The service mixes the owner into the fingerprint; the matcher then
  // refuses the reuse rather than answering with the first call's
  // outcome, registration id included.)
  CallId x;
  x.id = "req-1";
  x.fingerprint = 7;
  x.caller.owner = Owners::Get().Intern("spiffe://td/irqbypass/orchestrator/x");
  x.caller.admin = false;
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons(), &x).ok());
  CallId y = x;
  y.fingerprint = 7 ^ 0x9e3779b97f4a7c15;
  y.caller.owner = Owners::Get().Intern("spiffe://td/irqbypass/orchestrator/y");
  auto reused = matcher_->RegisterConsumer("t1", Cons(), &y);
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kInvalidArgument)
      << reused.status();
}

// --- Registration limits
// ---------------------------------------------------------

TEST_P(MatcherTest,
       Limits_PerNodeAndPerOwner_RefusedNothingRecorded_GivenBack) {
  RegistrationLimits limits(/*per_node=*/3, /*per_owner=*/2);
  matcher_->SetLimits(&limits);
  CallId x;
  x.caller.owner =
      Owners::Get().Intern("spiffe://td/irqbypass/orchestrator/lx");
  x.caller.admin = false;
  CallId y = x;
  y.caller.owner =
      Owners::Get().Intern("spiffe://td/irqbypass/orchestrator/ly");

  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons("n1", "vm-1", 1), &x).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t2", Cons("n1", "vm-1", 2), &x).ok());
  // X's third side: over its owner limit.
  auto over_owner = matcher_->RegisterConsumer("t3", Cons("n1", "vm-1", 3), &x);
  EXPECT_EQ(over_owner.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over_owner.status().message().find("--max_registrations_per_owner"),
            std::string::npos);
  EXPECT_FALSE(index_->Get("t3").has_value());
  // Y's first is the node's third; its second is over the node limit.
  ASSERT_TRUE(matcher_->RegisterConsumer("t4", Cons("n1", "vm-1", 4), &y).ok());
  auto over_node = matcher_->RegisterConsumer("t5", Cons("n1", "vm-1", 5), &y);
  EXPECT_EQ(over_node.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over_node.status().message().find("--max_registrations_per_node"),
            std::string::npos);
  // Another node is not full.
  ASSERT_TRUE(matcher_->RegisterConsumer("t6", Cons("n2", "vm-1", 6), &y).ok());
  EXPECT_EQ(limits.OfNode("n1"), 3u);
  EXPECT_EQ(limits.OfOwner(x.caller.owner), 2u);

  // A connect that fails gives its place back.
  ASSERT_TRUE(matcher_->UnregisterConsumer("t2", 0, &x).ok());
  EXPECT_EQ(limits.OfNode("n1"), 2u);
  agent_.fail_with_ = absl::UnavailableError("agent gone");
  EXPECT_FALSE(matcher_->RegisterProducer("t1", Prod("n1"), &x).ok());
  agent_.fail_with_ = absl::OkStatus();
  EXPECT_EQ(limits.OfNode("n1"), 2u);
  EXPECT_EQ(limits.OfOwner(x.caller.owner), 1u);
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod("n1"), &x).ok());
  EXPECT_EQ(limits.OfOwner(x.caller.owner), 2u);

  // Counted again from the committed state: the same.
  RegistrationLimits recounted(3, 2);
  recounted.Recount(*index_);
  EXPECT_EQ(recounted.OfNode("n1"), 3u);
  EXPECT_EQ(recounted.OfNode("n2"), 1u);
  EXPECT_EQ(recounted.OfOwner(x.caller.owner), 2u);
  EXPECT_EQ(recounted.OfOwner(y.caller.owner), 2u);
  matcher_->SetLimits(nullptr);
}

// --- 4. Unregister consumer (mirror image) -----------------------------------

TEST_P(MatcherTest, UnregisterConsumer_Paired_DisconnectsAndKeepsProducer) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  auto r = matcher_->UnregisterConsumer("t1", 0);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  EXPECT_EQ(agent_.disconnects(), 1);
  auto st = index_->Get("t1");
  EXPECT_TRUE(st->producer.has_value());
  EXPECT_FALSE(st->consumer.has_value());
}

TEST_P(MatcherTest, UnregisterConsumer_NotRegistered_NotFound) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  EXPECT_EQ(matcher_->UnregisterConsumer("t1", 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(index_->Get("t1")->producer.has_value());
}

TEST_P(MatcherTest, UnregisterConsumer_Unpaired_NoDisconnect) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  auto r = matcher_->UnregisterConsumer("t1", 0);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  EXPECT_EQ(agent_.disconnects(), 0);
  EXPECT_FALSE(index_->Get("t1").has_value());
}

// --- Concurrency -------------------------------------------------------------

TEST_P(MatcherTest, Race_ManyProducersOnOneToken_ExactlyOneWins) {
  constexpr int kThreads = 8;
  std::atomic<int> wins{0};
  std::atomic<int> busy{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto r = matcher_->RegisterProducer(
          "hot", Prod("n1", "0000:00:0" + std::to_string(t) + ".0"));
      if (r.ok())
        ++wins;
      else if (r.status().code() == absl::StatusCode::kAlreadyExists)
        ++busy;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wins.load(), 1);
  EXPECT_EQ(busy.load(), kThreads - 1);
}

TEST_P(MatcherTest,
       Race_BothSidesArriveTogether_ConnectedExactlyOnceNoDeadlock) {
  constexpr int kTokens = 300;
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    for (int i = 0; i < kTokens; ++i) {
      ASSERT_TRUE(
          (*matcher_)
              .RegisterProducer("t" + std::to_string(i), Prod("n1", "dev", i))
              .ok());
    }
  });
  threads.emplace_back([&] {
    for (int i = kTokens - 1; i >= 0; --i) {
      ASSERT_TRUE(
          (*matcher_)
              .RegisterConsumer("t" + std::to_string(i), Cons("n1", "vm", i))
              .ok());
    }
  });
  for (auto& th : threads) th.join();
  EXPECT_EQ(agent_.connects(), kTokens);
  EXPECT_EQ(index_->CountAll().connected, static_cast<size_t>(kTokens));
}

TEST_P(MatcherTest, Race_RegisterUnregisterChurn_NoLostDisconnect) {
  constexpr int kTokens = 40;
  constexpr int kRounds = 50;
  std::vector<std::thread> threads;
  for (int side = 0; side < 2; ++side) {
    threads.emplace_back([&, side] {
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < kTokens; ++i) {
          const std::string token = "t" + std::to_string(i);
          if (side == 0) {
            ASSERT_TRUE(
                matcher_->RegisterProducer(token, Prod("n1", "dev", i)).ok());
            ASSERT_TRUE(matcher_->UnregisterProducer(token, 0).ok());
          } else {
            ASSERT_TRUE(
                matcher_->RegisterConsumer(token, Cons("n1", "vm", i)).ok());
            ASSERT_TRUE(matcher_->UnregisterConsumer(token, 0).ok());
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  // Every connect was matched by exactly one disconnect; nothing is left.
  EXPECT_EQ(agent_.connects(), agent_.disconnects());
  EXPECT_EQ(index_->CountAll().tokens, 0u);
}

// --- Reconcile ---------------------------------------------------------------

TEST_P(MatcherTest, Reconcile_StaleWiringOnAgent_Disconnected) {
  WiredPair stale{"gone", Prod(), Cons()};
  auto r = matcher_->Reconcile("n1", {stale}, agent_, Always);
  EXPECT_EQ(r.disconnected, 1);
  EXPECT_EQ(agent_.calls(), std::vector<std::string>{"disconnect:gone"});
}

TEST_P(MatcherTest, Reconcile_MatchingWiring_Kept) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  auto r = matcher_->Reconcile("n1", {WiredPair{"t1", Prod(), Cons()}}, agent_,
                               Always);
  EXPECT_EQ(r.kept, 1);
  EXPECT_EQ(agent_.disconnects(), 0);
  EXPECT_EQ(agent_.connects(), 1);  // only the original connect
}

TEST_P(MatcherTest, Reconcile_MissingOnAgent_ConnectedAgain) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  auto r = matcher_->Reconcile("n1", {}, agent_, Always);
  EXPECT_EQ(r.reconnected, 1);
  EXPECT_EQ(agent_.connects(), 2);
  EXPECT_TRUE(index_->Get("t1")->connected);
}

TEST_P(MatcherTest, Reconcile_ReconnectFails_ReportedNotConnectedThenRecovers) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  agent_.fail_with_ = ConnectStepFailed("add_producer", ENOENT);
  EXPECT_EQ(matcher_->Reconcile("n1", {}, agent_, Always).failed, 1);
  auto st = index_->Get("t1");
  EXPECT_TRUE(st->producer && st->consumer);
  EXPECT_FALSE(st->connected);
  agent_.fail_with_ = absl::OkStatus();
  EXPECT_EQ(matcher_->Reconcile("n1", {}, agent_, Always).reconnected, 1);
  EXPECT_TRUE(index_->Get("t1")->connected);
}

TEST_P(MatcherTest, Reconcile_SessionNoLongerCurrent_StopsWithoutChanges) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  const uint64_t revision = index_->Get("t1")->revision;
  auto r = matcher_->Reconcile(
      "n1",
      {WiredPair{"stale", Prod("n1", "0000:00:09.0"), Cons("n1", "vm-z", 9)}},
      agent_, [] { return false; });
  EXPECT_EQ(r.disconnected + r.reconnected + r.kept + r.failed, 0);
  EXPECT_EQ(agent_.connects(), 1);  // only the original connect
  EXPECT_EQ(agent_.disconnects(), 0);
  EXPECT_EQ(index_->Get("t1")->revision, revision);
}

TEST_P(MatcherTest, Reconcile_PartialWiring_DisconnectedThenConnectedAgain) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  WiredPair half{"t1", Prod(), Cons(), /*partial=*/true};
  auto r = matcher_->Reconcile("n1", {half}, agent_, Always);
  EXPECT_EQ(r.kept, 0);
  EXPECT_EQ(r.disconnected, 1);
  EXPECT_EQ(r.reconnected, 1);
  EXPECT_EQ(agent_.calls(), (std::vector<std::string>{
                                "connect:t1", "disconnect:t1", "connect:t1"}));
  EXPECT_TRUE(index_->Get("t1")->connected);
}

TEST_P(MatcherTest,
       Reconcile_PartialWiringOfUnregisteredToken_OnlyDisconnected) {
  WiredPair half{"gone", Prod(), Cons(), /*partial=*/true};
  auto r = matcher_->Reconcile("n1", {half}, agent_, Always);
  EXPECT_EQ(r.disconnected, 1);
  EXPECT_EQ(r.reconnected, 0);
  EXPECT_EQ(agent_.calls(), std::vector<std::string>{"disconnect:gone"});
}

TEST_P(MatcherTest, Reconcile_OtherNodesBindings_Untouched) {
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod("n2")).ok());
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons("n2")).ok());
  auto r = matcher_->Reconcile("n1", {}, agent_, Always);
  EXPECT_EQ(r.reconnected, 0);
  EXPECT_EQ(agent_.connects(), 1);
}

TEST_P(MatcherTest, Reconcile_ReportedPairOfAnotherNode_RefusedNotLocked) {
  ASSERT_TRUE(matcher_->RegisterConsumer("theirs", Cons("n2")).ok());
  ASSERT_TRUE(matcher_->RegisterProducer("theirs", Prod("n2")).ok());
  // Another operation holds the token: a reconcile that locked it would
  // block until the end of this test.
  TokenIndex::TokenLock busy = index_->Lock("theirs");
  auto done = std::async(std::launch::async, [&] {
    return matcher_->Reconcile("n1",
                               {WiredPair{"theirs", Prod("n2"), Cons("n2")},
                                WiredPair{"theirs", Prod("n1"), Cons("n2")}},
                               agent_, Always);
  });
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const ReconcileResult r = done.get();
  EXPECT_EQ(r.refused, 2);
  EXPECT_EQ(r.disconnected, 0);
  EXPECT_EQ(agent_.disconnects(), 0);
  EXPECT_TRUE(busy.state().connected);
}

TEST_P(MatcherTest, Reconcile_SameTokenReportedTwice_TakenOnce) {
  auto r = matcher_->Reconcile(
      "n1", {WiredPair{"t1", Prod(), Cons()}, WiredPair{"t1", Prod(), Cons()}},
      agent_, Always);
  EXPECT_EQ(r.disconnected, 1);
  EXPECT_EQ(r.refused, 1);
}

// Begin* only queues; End* completes in order. Counts what is in flight.
class PipelineDispatcher : public FakeDispatcher {
 public:
  std::unique_ptr<Pending> BeginConnect(absl::string_view token,
                                        const ProducerRecord& p,
                                        const ConsumerRecord& c) override {
    Track(+1);
    auto pending = std::make_unique<Pending>();
    pending->result = Connect(token, p, c);
    return pending;
  }
  absl::Status EndConnect(std::unique_ptr<Pending> pending) override {
    Track(-1);
    return pending->result;
  }
  std::unique_ptr<Pending> BeginDisconnect(absl::string_view token,
                                           const ProducerRecord& p,
                                           const ConsumerRecord& c) override {
    Track(+1);
    Disconnect(token, p, c);
    return std::make_unique<Pending>();
  }
  void EndDisconnect(std::unique_ptr<Pending>) override { Track(-1); }
  int max_in_flight() const { return max_in_flight_; }
  int in_flight() const { return in_flight_; }

 private:
  void Track(int d) {
    in_flight_ += d;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
  }
  int in_flight_ = 0;
  int max_in_flight_ = 0;
};

TEST_P(MatcherTest, Reconcile_NextTokenBusy_ReleasesWhatItHoldsFirst) {
  // "kept" is wired as registered; "stale" is registered nowhere.
  ASSERT_TRUE(matcher_->RegisterConsumer("kept", Cons()).ok());
  ASSERT_TRUE(matcher_->RegisterProducer("kept", Prod()).ok());
  // Another operation holds "kept" and will want "stale" next: if the
  // reconcile waited for "kept" while holding "stale" (its disconnect in
  // flight), neither would ever go on.
  std::optional<TokenIndex::TokenLock> other = index_->Lock("kept");
  std::promise<void> stale_sent;
  struct Dispatcher : PipelineDispatcher {
    std::promise<void>* sent;
    std::unique_ptr<Pending> BeginDisconnect(absl::string_view token,
                                             const ProducerRecord& p,
                                             const ConsumerRecord& c) override {
      auto pending = PipelineDispatcher::BeginDisconnect(token, p, c);
      sent->set_value();
      return pending;
    }
  } via;
  via.sent = &stale_sent;
  auto reconcile = std::async(std::launch::async, [&] {
    return matcher_->Reconcile(
        "n1",
        {WiredPair{"stale", Prod("n1", "0000:4b:00.0"), Cons("n1", "vm-b", 7)},
         WiredPair{"kept", Prod(), Cons()}},
        via, Always);
  });
  stale_sent.get_future().wait();
  auto took_stale =
      std::async(std::launch::async, [&] { return index_->Lock("stale"); });
  const bool released = took_stale.wait_for(std::chrono::seconds(10)) ==
                        std::future_status::ready;
  if (released) took_stale.get();  // and released at once
  other.reset();  // (lets a reconcile that did wait go on, so the test ends)
  EXPECT_TRUE(released)
      << "the reconcile kept \"stale\" while waiting for \"kept\"";
  ASSERT_EQ(reconcile.wait_for(std::chrono::seconds(10)),
            std::future_status::ready);
  const ReconcileResult r = reconcile.get();
  EXPECT_EQ(r.disconnected, 1);
  EXPECT_EQ(r.kept, 1);
}

TEST_P(MatcherTest, Reconcile_ReportedTokenNowOnAnotherNode_UnwiredNotLocked) {
  ASSERT_TRUE(matcher_->RegisterConsumer("moved", Cons("n2")).ok());
  ASSERT_TRUE(matcher_->RegisterProducer("moved", Prod("n2")).ok());
  TokenIndex::TokenLock busy = index_->Lock("moved");
  auto done = std::async(std::launch::async, [&] {
    return matcher_->Reconcile("n1", {WiredPair{"moved", Prod(), Cons()}},
                               agent_, Always);
  });
  ASSERT_EQ(done.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const ReconcileResult r = done.get();
  EXPECT_EQ(r.disconnected, 1);  // n1's old wiring of it is stale
  EXPECT_EQ(agent_.disconnects(), 1);
  EXPECT_TRUE(busy.state().connected);  // n2's pair untouched
}

TEST_P(MatcherTest, Reconcile_Pipelined_UpToWindowCommandsInFlight) {
  constexpr int kPairs = 100;
  std::vector<WiredPair> stale;
  for (int i = 0; i < kPairs; ++i) {
    const std::string device = "0000:3b:" + std::to_string(i) + ".0";
    // Registered here (so missing on the agent)...
    ASSERT_TRUE(matcher_
                    ->RegisterConsumer("held" + std::to_string(i),
                                       Cons("n1", "vm-a", i))
                    .ok());
    ASSERT_TRUE(
        matcher_
            ->RegisterProducer("held" + std::to_string(i), Prod("n1", device))
            .ok());
    // ...and wiring the agent has that is registered nowhere.
    stale.push_back(WiredPair{"stale" + std::to_string(i),
                              Prod("n1", "0000:4b:00.0", i),
                              Cons("n1", "vm-b", i)});
  }
  PipelineDispatcher via;
  auto r = matcher_->Reconcile("n1", stale, via, Always, /*window=*/16);
  EXPECT_EQ(r.disconnected, kPairs);
  EXPECT_EQ(r.reconnected, kPairs);
  EXPECT_EQ(via.max_in_flight(), 16);
  EXPECT_EQ(via.in_flight(), 0);
  EXPECT_EQ(via.disconnects(), kPairs);
  EXPECT_EQ(via.connects(), kPairs);
  EXPECT_EQ(index_->CountAll().connected, static_cast<size_t>(kPairs));
}

// --- The durable store refuses a change ------------------------------------

TEST_P(MatcherTest, StoreRefuses_RegisterUnpaired_UnavailableNothingRecorded) {
  refusing_->refuse_ = true;
  auto r = matcher_->RegisterProducer("t1", Prod());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetErrorReason(r.status()), ErrorReason::kStoreUnavailable);
  EXPECT_FALSE(index_->Get("t1").has_value());
  // The object was not kept either: it can be registered once the store
  // takes writes again.
  refusing_->refuse_ = false;
  EXPECT_TRUE(matcher_->RegisterProducer("t2", Prod()).ok());
}

TEST_P(MatcherTest, StoreRefuses_RegisterThatConnected_RolledBackOnAgent) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  refusing_->refuse_ = true;
  auto r = matcher_->RegisterProducer("t1", Prod());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  // Wired, then unwired: nothing is left on the agent that the store does
  // not hold, and the consumer is untouched.
  EXPECT_EQ(agent_.calls(),
            (std::vector<std::string>{"connect:t1", "disconnect:t1"}));
  auto st = index_->Get("t1");
  ASSERT_TRUE(st && st->consumer);
  EXPECT_FALSE(st->producer.has_value());
  EXPECT_FALSE(st->connected);
  refusing_->refuse_ = false;
  auto again = matcher_->RegisterProducer("t1", Prod());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->connected);
}

TEST_P(MatcherTest, StoreRefuses_UnregisterPaired_UnavailableStillWired) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  refusing_->refuse_ = true;
  auto r = matcher_->UnregisterProducer("t1", 0);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(agent_.disconnects(), 0);
  auto st = index_->Get("t1");
  ASSERT_TRUE(st && st->producer && st->consumer);
  EXPECT_TRUE(st->connected);
  refusing_->refuse_ = false;
  auto u = matcher_->UnregisterProducer("t1", 0);
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_TRUE(*u);
  EXPECT_EQ(agent_.disconnects(), 1);
}

// --- Request ids (idempotent retries) ---------------------------------------

CallId Call(const std::string& id, uint64_t fingerprint = 7) {
  return CallId{id, fingerprint};
}

TEST_P(MatcherTest, RequestId_RetryAfterSuccess_FirstOutcomeWithoutRunning) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  const CallId call = Call("req-1");
  auto first = matcher_->RegisterProducer("t1", Prod(), &call);
  ASSERT_TRUE(first.ok()) << first.status();
  auto retry = matcher_->RegisterProducer("t1", Prod(), &call);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->registration_id, first->registration_id);
  EXPECT_TRUE(retry->connected);
  EXPECT_EQ(agent_.connects(), 1);
  // Without the id, the same call is a second registration: refused.
  EXPECT_EQ(matcher_->RegisterProducer("t1", Prod()).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_P(MatcherTest, RequestId_UnregisterRetried_SameOutcomeOneDisconnect) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  const CallId call = Call("req-u");
  auto first = matcher_->UnregisterProducer("t1", 0, &call);
  ASSERT_TRUE(first.ok() && *first);
  auto retry = matcher_->UnregisterProducer("t1", 0, &call);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_TRUE(*retry);
  EXPECT_EQ(agent_.disconnects(), 1);
}

TEST_P(MatcherTest, RequestId_ReusedForDifferentRequest_InvalidArgument) {
  const CallId call = Call("req-1", 1);
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod(), &call).ok());
  const CallId other = Call("req-1", 2);
  auto r = matcher_->RegisterProducer("t2", Prod("n1", "0000:3b:00.2"), &other);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetErrorContext(r.status()).field, "request_id");
  EXPECT_FALSE(index_->Get("t2").has_value());
  // Another kind of call under the same id: refused too.
  EXPECT_EQ(matcher_->UnregisterProducer("t1", 0, &call).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(MatcherTest, RequestId_FailedCall_NotRemembered_RetryRuns) {
  agent_.fail_with_ = ConnectStepFailed("add_producer", 2);
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  const CallId call = Call("req-f");
  EXPECT_FALSE(matcher_->RegisterProducer("t1", Prod(), &call).ok());
  agent_.fail_with_ = absl::OkStatus();
  auto retry = matcher_->RegisterProducer("t1", Prod(), &call);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_TRUE(retry->connected);
  EXPECT_EQ(agent_.connects(), 2);
}

TEST_P(MatcherTest, RequestId_Expired_RunsAgain) {
  const CallId call = Call("req-e");
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod(), &call).ok());
  now_ += absl::Minutes(11);
  EXPECT_EQ(matcher_->RegisterProducer("t1", Prod(), &call).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_P(MatcherTest, RequestId_SecondCallWhileFirstRuns_Aborted) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  agent_.Hold();
  const CallId call = Call("req-p");
  auto first = std::async(std::launch::async, [&] {
    return matcher_->RegisterProducer("t1", Prod(), &call);
  });
  agent_.WaitHeld(1);
  auto second = matcher_->RegisterProducer("t1", Prod(), &call);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(GetErrorReason(second.status()), ErrorReason::kRequestInProgress);
  agent_.Release();
  ASSERT_TRUE(first.get().ok());
}

// Under ThreadSanitizer only without a store: Debian's RocksDB is not built
// for TSan, and the hand-off inside its write groups (a leader copies the
// followers' batches, synchronised by RocksDB's own atomics) is invisible to
// it, so every group commit reads as a race in RocksDB's memory (and the
// etcd store runs on Debian's gRPC, also not built for TSan). ASan and the
// default build run all three.
#if defined(__SANITIZE_THREAD__)
#define IRQBYPASS_STORE_KINDS ::testing::Values(StoreKind::kMemory)
#else
#define IRQBYPASS_STORE_KINDS \
  ::testing::Values(StoreKind::kMemory, StoreKind::kEmbedded, StoreKind::kEtcd)
#endif
INSTANTIATE_TEST_SUITE_P(Stores, MatcherTest, IRQBYPASS_STORE_KINDS,
                         [](const ::testing::TestParamInfo<StoreKind>& info) {
                           switch (info.param) {
                             case StoreKind::kMemory:
                               return "memory";
                             case StoreKind::kEmbedded:
                               return "embedded";
                             case StoreKind::kEtcd:
                               return "etcd";
                           }
                           return "unknown";
                         });

// Restore: an index built from what the embedded store holds.
class RestoreTest : public ::testing::Test {
 protected:
  RestoreTest() {
    RocksDbStoreOptions options;
    options.dir = NewTempDir();
    auto opened = RocksDbStore::Open(options);
    if (!opened.ok()) std::abort();
    rocks_ = *std::move(opened);
    index_ = std::make_unique<TokenIndex>(16, nullptr, nullptr, rocks_.get());
    matcher_ = std::make_unique<Matcher>(*index_, agent_, &requests_);
  }

  RequestLog requests_{RequestLog::Options{}};

  std::unique_ptr<RocksDbStore> rocks_;
  FakeDispatcher agent_;
  std::unique_ptr<TokenIndex> index_;
  std::unique_ptr<Matcher> matcher_;
};

TEST_F(RestoreTest, Restore_FreshIndexFromStore_SameBindingsAndClaims) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod()).ok());
  ASSERT_TRUE(
      matcher_->RegisterProducer("t2", Prod("n1", "0000:3b:00.2")).ok());
  ASSERT_TRUE(
      matcher_->RegisterProducer("t3", Prod("n1", "0000:3b:00.3")).ok());
  ASSERT_TRUE(matcher_->UnregisterProducer("t3", 0).ok());

  TokenIndex restored(16);
  ASSERT_TRUE(restored.Restore(*rocks_).ok());
  EXPECT_EQ(restored.revision(), index_->revision());
  auto t1 = restored.Get("t1");
  ASSERT_TRUE(t1 && t1->producer && t1->consumer);
  EXPECT_TRUE(t1->connected);
  EXPECT_EQ(t1->producer->registration_id,
            index_->Get("t1")->producer->registration_id);
  EXPECT_FALSE(restored.Get("t3").has_value());
  // The objects are claimed again: the same device vector under another
  // token is refused, a freed one is not.
  FakeDispatcher agent;
  Matcher matcher(restored, agent);
  EXPECT_EQ(
      matcher.RegisterProducer("x", Prod("n1", "0000:3b:00.2")).status().code(),
      absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(matcher.RegisterProducer("y", Prod("n1", "0000:3b:00.3")).ok());
}

TEST_F(RestoreTest, Restore_ManyBindingsOnWorkers_AllThere) {
  for (int i = 0; i < 5000; ++i) {
    BindingState st;
    st.producer = Prod("n1", "0000:3b:00.0", static_cast<uint32_t>(i));
    st.revision = static_cast<uint64_t>(i) + 1;
    ASSERT_TRUE(
        rocks_->WriteAndWait(StoreChange{"r" + std::to_string(i), st}).ok());
  }
  TokenIndex restored(16);
  ASSERT_TRUE(restored.Restore(*rocks_, /*threads=*/3).ok());
  EXPECT_EQ(restored.CountAll().producers, 5000u);
  EXPECT_EQ(restored.revision(), 5000u);
  EXPECT_EQ(restored.Get("r4999")->producer->vector, 4999u);
}

TEST_F(RestoreTest, Restore_TwoTokensHoldOneObject_DataLossNamingBoth) {
  BindingState st;
  st.producer = Prod();
  st.revision = 1;
  ASSERT_TRUE(rocks_->WriteAndWait(StoreChange{"one", st}).ok());
  st.revision = 2;
  ASSERT_TRUE(rocks_->WriteAndWait(StoreChange{"two", st}).ok());
  TokenIndex restored(16);
  absl::Status s = restored.Restore(*rocks_);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("\"one\""), std::string::npos) << s;
  EXPECT_NE(s.message().find("\"two\""), std::string::npos) << s;
}

}  // namespace
}  // namespace irqbypass

namespace irqbypass {
namespace {

TEST_F(RestoreTest, RequestId_RetriedAfterRestart_FirstOutcome) {
  ASSERT_TRUE(matcher_->RegisterConsumer("t1", Cons()).ok());
  const CallId call{"req-r", 99};
  auto first = matcher_->RegisterProducer("t1", Prod(), &call);
  ASSERT_TRUE(first.ok()) << first.status();

  // A new manager: index and request log read back from the store.
  TokenIndex index(16);
  ASSERT_TRUE(index.Restore(*rocks_).ok());
  RequestLog requests{RequestLog::Options{}};
  ASSERT_TRUE(rocks_
                  ->LoadRequests(
                      requests.NowUnixMicros(),
                      [&](RequestRecord r) { requests.Restore(std::move(r)); })
                  .ok());
  FakeDispatcher agent;
  Matcher matcher(index, agent, &requests);
  auto retry = matcher.RegisterProducer("t1", Prod(), &call);
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_EQ(retry->registration_id, first->registration_id);
  EXPECT_TRUE(retry->connected);
  EXPECT_EQ(agent.connects(), 0);
}

TEST_F(RestoreTest, RequestOutcomes_Expired_NotLoadedAndPruned) {
  const CallId call{"req-x", 1};
  ASSERT_TRUE(matcher_->RegisterProducer("t1", Prod(), &call).ok());
  const int64_t later =
      requests_.NowUnixMicros() + absl::ToInt64Microseconds(absl::Hours(1));
  int loaded = 0;
  ASSERT_TRUE(
      rocks_->LoadRequests(later, [&](RequestRecord) { ++loaded; }).ok());
  EXPECT_EQ(loaded, 0);
  ASSERT_TRUE(rocks_
                  ->LoadRequests(requests_.NowUnixMicros(),
                                 [&](RequestRecord) { ++loaded; })
                  .ok());
  EXPECT_EQ(loaded, 1);
  ASSERT_TRUE(rocks_->PruneRequests(later).ok());
  ASSERT_TRUE(rocks_
                  ->LoadRequests(requests_.NowUnixMicros(),
                                 [&](RequestRecord) { ++loaded; })
                  .ok());
  EXPECT_EQ(loaded, 1);
}

}  // namespace
}  // namespace irqbypass
