#include "client/irqbypass_client.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "client/fake_bypass_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "protocol/testing/records.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::client {
namespace {

using ::irqbypass::testing::MakeConsumer;
using ::irqbypass::testing::MakeProducer;

using ::irqbypass::client::testing::FakeServer;
using ::irqbypass::v1::Binding;
using ::irqbypass::v1::BindingEvent;
using ::irqbypass::v1::ErrorDetail;
using ::testing::ElementsAre;

BindingEvent Event(BindingEvent::Type type, const std::string& token) {
  BindingEvent event;
  event.set_type(type);
  event.mutable_binding()->set_token(token);
  return event;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<FakeServer>> server = FakeServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    client_ = NewClient(ClientOptions());
  }

  std::unique_ptr<Client> NewClient(ClientOptions options) {
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Create(server_->address(), std::move(options));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  testing::FakeBypassManager& fake() { return server_->service(); }

  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<Client> client_;
};

// --- Create ---

TEST(ClientCreateTest, EmptyTarget_IsInvalidArgument) {
  EXPECT_EQ(Client::Create("", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ClientCreateTest, NonPositiveTimeouts_AreInvalidArgument) {
  ClientOptions zero_call;
  zero_call.call_timeout = absl::ZeroDuration();
  EXPECT_EQ(Client::Create("127.0.0.1:1", zero_call).status().code(),
            absl::StatusCode::kInvalidArgument);
  ClientOptions negative_watch;
  negative_watch.watch_timeout = absl::Seconds(-1);
  EXPECT_EQ(Client::Create("127.0.0.1:1", negative_watch).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ClientCreateTest, NullChannel_IsInvalidArgument) {
  EXPECT_EQ(Client::CreateWithChannel(nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Register / unregister ---

TEST_F(ClientTest, RegisterProducer_NoConsumer_ReturnsIdNotConnected) {
  absl::StatusOr<RegisterResult> result = client_->RegisterProducer(
      MakeProducer("t1", "n1", "0000:3b:00.1", 3, v1::IRQ_INDEX_MSIX));

  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->registration_id.empty());
  EXPECT_FALSE(result->connected);
}

TEST_F(ClientTest, RegisterConsumer_ProducerPresent_Connected) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());

  absl::StatusOr<RegisterResult> result =
      client_->RegisterConsumer(MakeConsumer("t1", "n1", "vm-x", 42));

  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->connected);
}

TEST_F(ClientTest, RegisterProducer_TokenBusy_AlreadyExistsWithDetail) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());

  absl::StatusOr<RegisterResult> result = client_->RegisterProducer(
      MakeProducer("t1", "n1", "0000:3b:00.1", 3, v1::IRQ_INDEX_MSIX));

  EXPECT_EQ(result.status().code(), absl::StatusCode::kAlreadyExists);
  std::optional<ErrorDetail> detail = GetErrorDetail(result.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), ErrorDetail::TOKEN_BUSY);
  EXPECT_EQ(detail->token(), "t1");
}

TEST_F(ClientTest, RegisterConsumer_OtherNode_FailedPreconditionNodeMismatch) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());

  absl::StatusOr<RegisterResult> result =
      client_->RegisterConsumer(MakeConsumer("t1", "n2", "vm-x", 42));

  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(GetErrorDetail(result.status()).has_value());
  EXPECT_EQ(GetErrorDetail(result.status())->reason(),
            ErrorDetail::NODE_MISMATCH);
}

TEST_F(ClientTest, ServerConnectFailure_KeepsCodeMessageAndDetail) {
  ErrorDetail sent;
  sent.set_reason(ErrorDetail::CONNECT_FAILED);
  sent.set_node("n1");
  sent.set_token("t1");
  sent.set_step("add_producer");
  sent.set_errno_value(2);
  sent.set_errno_name("ENOENT");
  sent.set_agent_message("vm \"vm-x\" not held");
  fake().FailNextCall(WithErrorDetail(
      absl::FailedPreconditionError("connect step add_producer failed"), sent));

  absl::StatusOr<RegisterResult> result = client_->RegisterProducer(
      MakeProducer("t1", "n1", "0000:3b:00.1", 3, v1::IRQ_INDEX_MSIX));

  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(result.status().message(), "connect step add_producer failed");
  std::optional<ErrorDetail> detail = GetErrorDetail(result.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->SerializeAsString(), sent.SerializeAsString());
  EXPECT_EQ(DescribeError(result.status()),
            "connect step add_producer failed on node n1: ENOENT "
            "(vm \"vm-x\" not held)");
}

TEST_F(ClientTest, UnregisterProducer_Connected_ReportsDisconnect) {
  absl::StatusOr<RegisterResult> producer = client_->RegisterProducer(
      MakeProducer("t1", "n1", "0000:3b:00.1", 3, v1::IRQ_INDEX_MSIX));
  ASSERT_TRUE(producer.ok());
  ASSERT_TRUE(
      client_->RegisterConsumer(MakeConsumer("t1", "n1", "vm-x", 42)).ok());

  absl::StatusOr<bool> disconnected =
      client_->UnregisterProducer("t1", producer->registration_id);

  ASSERT_TRUE(disconnected.ok()) << disconnected.status();
  EXPECT_TRUE(*disconnected);
}

TEST_F(ClientTest, UnregisterConsumer_NotConnected_NoDisconnect) {
  ASSERT_TRUE(
      client_->RegisterConsumer(MakeConsumer("t1", "n1", "vm-x", 42)).ok());

  absl::StatusOr<bool> disconnected = client_->UnregisterConsumer("t1");

  ASSERT_TRUE(disconnected.ok()) << disconnected.status();
  EXPECT_FALSE(*disconnected);
}

TEST_F(ClientTest, UnregisterProducer_WrongRegistrationId_FailedPrecondition) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());

  absl::StatusOr<bool> result = client_->UnregisterProducer("t1", "p-other");

  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(GetErrorDetail(result.status()).has_value());
  EXPECT_EQ(GetErrorDetail(result.status())->reason(),
            ErrorDetail::REGISTRATION_MISMATCH);
}

TEST_F(ClientTest, UnregisterConsumer_Nothing_NotFound) {
  EXPECT_EQ(client_->UnregisterConsumer("t1").status().code(),
            absl::StatusCode::kNotFound);
}

// --- Get / list ---

TEST_F(ClientTest, GetBinding_ReturnsCommittedState) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());
  ASSERT_TRUE(
      client_->RegisterConsumer(MakeConsumer("t1", "n1", "vm-x", 42)).ok());

  absl::StatusOr<Binding> binding = client_->GetBinding("t1");

  ASSERT_TRUE(binding.ok()) << binding.status();
  EXPECT_EQ(binding->token(), "t1");
  EXPECT_EQ(binding->node(), "n1");
  EXPECT_TRUE(binding->connected());
  EXPECT_EQ(binding->producer().device(), "0000:3b:00.1");
  EXPECT_EQ(binding->consumer().vm(), "vm-x");
}

TEST_F(ClientTest, GetBinding_Unknown_NotFoundWithDetail) {
  absl::StatusOr<Binding> binding = client_->GetBinding("nope");

  EXPECT_EQ(binding.status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(GetErrorDetail(binding.status()).has_value());
  EXPECT_EQ(GetErrorDetail(binding.status())->reason(),
            ErrorDetail::NOT_REGISTERED);
}

TEST_F(ClientTest, ListBindings_PassesRequestAndReturnsPage) {
  for (const char* token : {"a", "b", "c"}) {
    ASSERT_TRUE(client_
                    ->RegisterProducer(MakeProducer(token, "n1", "0000:3b:00.1",
                                                    3, v1::IRQ_INDEX_MSIX))
                    .ok());
  }

  absl::StatusOr<v1::ListBindingsResponse> page =
      client_->ListBindings("n1", 2, "");

  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->bindings_size(), 2);
  EXPECT_EQ(page->next_page_token(), "b");
  EXPECT_EQ(fake().last_list_request().node(), "n1");
  EXPECT_EQ(fake().last_list_request().page_size(), 2);
}

TEST_F(ClientTest, ListAllBindings_FollowsEveryPage) {
  for (const char* token : {"a", "b", "c", "d", "e"}) {
    ASSERT_TRUE(client_
                    ->RegisterProducer(MakeProducer(token, "n1", "0000:3b:00.1",
                                                    3, v1::IRQ_INDEX_MSIX))
                    .ok());
  }
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("x", "n2", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());
  const int calls_before = fake().calls();

  absl::StatusOr<std::vector<Binding>> all = client_->ListAllBindings("n1", 2);

  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> tokens;
  for (const Binding& b : *all) tokens.push_back(b.token());
  EXPECT_THAT(tokens, ElementsAre("a", "b", "c", "d", "e"));
  EXPECT_EQ(fake().calls() - calls_before, 3);
}

TEST_F(ClientTest, ListAllBindings_ErrorOnAPage_IsReturned) {
  fake().FailNextCall(absl::InvalidArgumentError("page_size out of range"));

  EXPECT_EQ(client_->ListAllBindings("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Request ids and retries ---

TEST_F(ClientTest, MutatingCalls_EachCarriesAFreshRequestId) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());
  ASSERT_TRUE(client_->UnregisterProducer("t1").ok());
  const std::vector<std::string> ids = fake().request_ids();
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0].rfind("r-", 0), 0u) << ids[0];
  EXPECT_EQ(ids[0].size(), 34u);
  EXPECT_NE(ids[0], ids[1]);
}

TEST_F(ClientTest, Unavailable_RetriedWithTheSameRequestId) {
  fake().FailNextCall(absl::UnavailableError("manager restarting"));
  absl::StatusOr<RegisterResult> result = client_->RegisterProducer(
      MakeProducer("t1", "n1", "0000:3b:00.1", 3, v1::IRQ_INDEX_MSIX));
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<std::string> ids = fake().request_ids();
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], ids[1]);
}

TEST_F(ClientTest, CallersRequestId_SentAsGiven) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX),
                                     "my-id-1")
                  .ok());
  EXPECT_EQ(fake().request_ids(), std::vector<std::string>{"my-id-1"});
}

TEST_F(ClientTest, NotRetryable_ReturnedAtOnce) {
  fake().FailNextCall(absl::AlreadyExistsError("busy"));
  EXPECT_EQ(client_
                ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                v1::IRQ_INDEX_MSIX))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(fake().request_ids().size(), 1u);
}

// --- Deadlines and transport errors ---

TEST_F(ClientTest, UnaryCall_CarriesADeadline) {
  ASSERT_TRUE(client_
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());
  EXPECT_TRUE(fake().last_call_had_deadline());
}

TEST_F(ClientTest, SlowServer_DeadlineExceeded) {
  ClientOptions options;
  options.call_timeout = absl::Milliseconds(200);
  std::unique_ptr<Client> client = NewClient(options);
  fake().SetHoldUnary(true);

  absl::StatusOr<Binding> binding = client->GetBinding("t1");

  EXPECT_EQ(binding.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(GetErrorDetail(binding.status()).has_value());
}

TEST_F(ClientTest, ServerGone_Unavailable) {
  server_->Shutdown();

  EXPECT_EQ(client_->GetBinding("t1").status().code(),
            absl::StatusCode::kUnavailable);
}

// --- Watch ---

TEST_F(ClientTest, Watch_DeliversEventsAndPassesRequest) {
  fake().SetWatchScript(
      {Event(BindingEvent::EXISTING, "a"), Event(BindingEvent::SYNCED, ""),
       Event(BindingEvent::UPDATED, "b")},
      /*hold_open=*/false);
  v1::WatchBindingsRequest request;
  request.set_node("n1");
  request.set_include_existing(true);
  std::vector<std::string> seen;

  absl::Status status =
      client_->WatchBindings(request, [&](const BindingEvent& event) {
        seen.push_back(absl::StrCat(BindingEvent::Type_Name(event.type()), ":",
                                    event.binding().token()));
        return true;
      });

  EXPECT_TRUE(status.ok()) << status;
  EXPECT_THAT(seen, ElementsAre("EXISTING:a", "SYNCED:", "UPDATED:b"));
  EXPECT_EQ(fake().last_watch_request().node(), "n1");
  EXPECT_TRUE(fake().last_watch_request().include_existing());
}

TEST_F(ClientTest, Watch_CallbackReturnsFalse_StopsWithOk) {
  fake().SetWatchScript(
      {Event(BindingEvent::UPDATED, "a"), Event(BindingEvent::UPDATED, "b")},
      /*hold_open=*/true);
  int seen = 0;

  absl::Status status = client_->WatchBindings({}, [&](const BindingEvent&) {
    ++seen;
    return false;
  });

  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(seen, 1);
  fake().AwaitWatchesFinished(1);  // the server saw the cancellation
}

TEST_F(ClientTest, Watch_ServerEndsWithError_ReturnsIt) {
  fake().SetWatchScript({Event(BindingEvent::UPDATED, "a")},
                        /*hold_open=*/false,
                        absl::ResourceExhaustedError("watcher fell behind"));

  absl::Status status =
      client_->WatchBindings({}, [](const BindingEvent&) { return true; });

  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "watcher fell behind");
}

TEST_F(ClientTest, Watch_CancelledFromAnotherThread_ReturnsOk) {
  fake().SetWatchScript({Event(BindingEvent::UPDATED, "a")},
                        /*hold_open=*/true);
  WatchCanceller canceller;
  absl::Notification first_event;
  std::thread cancel_thread([&] {
    first_event.WaitForNotification();
    canceller.Cancel();
  });

  absl::Status status = client_->WatchBindings(
      {},
      [&](const BindingEvent&) {
        if (!first_event.HasBeenNotified()) first_event.Notify();
        return true;
      },
      &canceller);
  cancel_thread.join();

  EXPECT_TRUE(status.ok()) << status;
  EXPECT_TRUE(canceller.IsCancelled());
  fake().AwaitWatchesFinished(1);
}

TEST_F(ClientTest, Watch_CancelledBeforeStart_ReturnsAtOnce) {
  WatchCanceller canceller;
  canceller.Cancel();

  absl::Status status = client_->WatchBindings(
      {}, [](const BindingEvent&) { return true; }, &canceller);

  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(fake().calls(), 0);
}

TEST_F(ClientTest, Watch_WatchTimeout_DeadlineExceeded) {
  ClientOptions options;
  options.watch_timeout = absl::Milliseconds(200);
  std::unique_ptr<Client> client = NewClient(options);
  fake().SetWatchScript({}, /*hold_open=*/true);

  absl::Status status =
      client->WatchBindings({}, [](const BindingEvent&) { return true; });

  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(ClientTest, Watch_NoTimeoutByDefault_NoDeadline) {
  fake().SetWatchScript({}, /*hold_open=*/false);

  ASSERT_TRUE(
      client_->WatchBindings({}, [](const BindingEvent&) { return true; })
          .ok());
  EXPECT_FALSE(fake().last_call_had_deadline());
}

// --- Thread-safety ---

TEST_F(ClientTest, ConcurrentCallsFromManyThreads_AllSucceed) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string token = absl::StrCat("t", t, "-", i);
        if (!client_
                 ->RegisterProducer(MakeProducer(token, "n1", "0000:3b:00.1", 3,
                                                 v1::IRQ_INDEX_MSIX))
                 .ok() ||
            !client_->GetBinding(token).ok()) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(failures.load(), 0);
  absl::StatusOr<std::vector<Binding>> all = client_->ListAllBindings("", 7);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), static_cast<size_t>(kThreads * kPerThread));
}

// --- Several replicas (failover) ---

absl::Status NotLeader(const std::string& leader) {
  ErrorDetail detail;
  detail.set_reason(ErrorDetail::NOT_LEADER);
  detail.set_leader(leader);
  return WithErrorDetail(
      absl::UnavailableError("this irqbypassd is a standby; the leader is at " +
                             leader),
      detail);
}

class FailoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto* server : {&standby_, &leader_}) {
      absl::StatusOr<std::unique_ptr<FakeServer>> started = FakeServer::Start();
      ASSERT_TRUE(started.ok()) << started.status();
      *server = std::move(*started);
    }
    standby_->service().FailEveryCall(NotLeader(leader_->address()));
  }

  std::unique_ptr<FakeServer> standby_;
  std::unique_ptr<FakeServer> leader_;
};

TEST_F(FailoverTest, StandbyNamesTheLeader_CallGoesThereAndStays) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(
      standby_->address() + "," + leader_->address(), ClientOptions());
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<RegisterResult> result = (*client)->RegisterProducer(
      MakeProducer("t1", "n1", "0000:3b:00.1", 3, v1::IRQ_INDEX_MSIX), "id-1");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(standby_->service().calls(), 1);
  EXPECT_EQ(leader_->service().request_ids(), std::vector<std::string>{"id-1"});
  // Later calls go straight to the leader.
  ASSERT_TRUE((*client)->GetBinding("t1").ok());
  EXPECT_EQ(standby_->service().calls(), 1);
  EXPECT_EQ(leader_->service().calls(), 2);
}

TEST_F(FailoverTest, UnreachableReplica_Skipped) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Create("127.0.0.1:1," + leader_->address(), ClientOptions());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)
                  ->RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1", 3,
                                                  v1::IRQ_INDEX_MSIX))
                  .ok());
  EXPECT_EQ(leader_->service().calls(), 1);
}

TEST_F(FailoverTest, NoLeaderWithinFailoverTimeout_NotLeaderReturned) {
  leader_->service().FailEveryCall(NotLeader(""));
  standby_->service().FailEveryCall(NotLeader(""));
  ClientOptions options;
  options.failover_timeout = absl::Milliseconds(300);
  options.retry_backoff = absl::Milliseconds(20);
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Create(standby_->address() + "," + leader_->address(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<irqbypass::v1::Binding> got = (*client)->GetBinding("t1");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable);
  std::optional<ErrorDetail> detail = GetErrorDetail(got.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), ErrorDetail::NOT_LEADER);
  // Both replicas were asked, more than once, while the window lasted.
  EXPECT_GE(standby_->service().calls(), 2);
  EXPECT_GE(leader_->service().calls(), 2);
}

TEST(ClientCreateTest, OnlyCommas_IsInvalidArgument) {
  EXPECT_EQ(Client::Create(",,", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace irqbypass::client
