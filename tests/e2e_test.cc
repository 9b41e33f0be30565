// End-to-end: the real irqbypassd and irqbypass-agent (sim backend) on
// loopback, driven through the client library.
#include <signal.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "client/error_detail.h"
#include "client/irqbypass_client.h"
#include "gtest/gtest.h"
#include "security/testing/pki.h"
#include "tests/cluster.h"
#include "tests/etcd_support.h"

namespace irqbypass::testing {
namespace {

using client::GetErrorDetail;

class EndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(cluster_.StartManager()); }
  void TearDown() override {
    if (HasFailure()) cluster_.DumpLogs();
  }
  client::Client& api() { return cluster_.client(); }

  // Restarts irqbypassd on `store_flags`, pairs t1 through agent n1, kills
  // irqbypassd with SIGKILL and starts it again on the same flags: once n1
  // has reconciled (the new leader elected first, on etcd), t1 is back,
  // connected, with its registration id, and was kept, not rewired.
  void ExpectPairSurvivesKill(const std::vector<std::string>& store_flags) {
    cluster_.manager().Signal(SIGKILL);
    cluster_.manager().Wait();
    ASSERT_TRUE(cluster_.StartManager(store_flags));
    ASSERT_TRUE(cluster_.StartAgent("n1"));
    ASSERT_TRUE(
        api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24)).ok());
    auto p1 = api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1"));
    ASSERT_TRUE(p1.ok()) << p1.status();
    const int reconciles = cluster_.Reconciles("n1");
    cluster_.manager().Signal(SIGKILL);
    cluster_.manager().Wait();
    ASSERT_TRUE(cluster_.StartManager(store_flags));
    ASSERT_TRUE(cluster_.WaitReconciles("n1", reconciles + 1));
    auto t1 = api().GetBinding("t1");
    ASSERT_TRUE(t1.ok()) << t1.status();
    EXPECT_TRUE(t1->connected());
    EXPECT_EQ(t1->producer_registration_id(), p1->registration_id);
    EXPECT_NE(cluster_.manager().Log().rfind(
                  "msg=\"agent reconciled\" node=n1 kept=1 "
                  "disconnected=0 reconnected=0"),
              std::string::npos);
  }

  Cluster cluster_;
};

TEST_F(EndToEndTest,
       ProducerAndConsumer_Paired_ThroughRealAgent_ThenDisconnected) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  auto c = api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->connected);
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->connected);

  auto b = api().GetBinding("t1");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->connected());
  EXPECT_EQ(b->node(), "n1");
  EXPECT_EQ(b->producer().device(), "0000:3b:00.1");
  EXPECT_EQ(b->consumer().vm(), "vm-a");
  EXPECT_EQ(b->producer_registration_id(), p->registration_id);

  auto d = api().UnregisterConsumer("t1", c->registration_id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(*d);
  b = api().GetBinding("t1");
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->connected());
  EXPECT_FALSE(b->has_consumer());
  ASSERT_TRUE(api().UnregisterProducer("t1").ok());
  EXPECT_EQ(api().GetBinding("t1").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(EndToEndTest, ConnectFails_VmNotOnAgent_RolledBackWithStepAndErrno) {
  ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_vms=vm-a"}));
  auto c = api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-x", 24));
  ASSERT_TRUE(c.ok()) << c.status();
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1"));
  ASSERT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition)
      << p.status();
  auto detail = GetErrorDetail(p.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), v1::ErrorDetail::CONNECT_FAILED);
  EXPECT_EQ(detail->step(), "add_producer");
  EXPECT_EQ(detail->errno_name(), "ENOENT");
  EXPECT_EQ(detail->errno_value(), ENOENT);

  auto b = api().GetBinding("t1");
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->has_producer());
  EXPECT_EQ(b->consumer_registration_id(), c->registration_id);
  EXPECT_FALSE(b->connected());
  // The rolled-back device vector is free: it pairs under another token.
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t2", "n1", "vm-a", 25)).ok());
  auto p2 = api().RegisterProducer(MakeProducer("t2", "n1", "0000:3b:00.1"));
  ASSERT_TRUE(p2.ok()) << p2.status();
  EXPECT_TRUE(p2->connected);
}

TEST_F(EndToEndTest, ConnectFails_EachStepInTurn_ErrnoOfThatStep) {
  const struct {
    const char* flag;
    const char* step;
    int err;
  } cases[] = {{"add_consumer:EIO", "add_consumer", EIO},
               {"add_producer:EBUSY", "add_producer", EBUSY}};
  for (const auto& tc : cases) {
    ASSERT_TRUE(
        cluster_.StartAgent("n1", {std::string("--sim_fail_step=") + tc.flag}));
    const std::string token = std::string("t-") + tc.step;
    ASSERT_TRUE(
        api().RegisterProducer(MakeProducer(token, "n1", "0000:3b:00.1")).ok());
    auto c = api().RegisterConsumer(MakeConsumer(token, "n1", "vm-a", 24));
    ASSERT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition)
        << c.status();
    auto detail = GetErrorDetail(c.status());
    ASSERT_TRUE(detail.has_value());
    EXPECT_EQ(detail->step(), tc.step);
    EXPECT_EQ(detail->errno_value(), tc.err);
    auto b = api().GetBinding(token);
    ASSERT_TRUE(b.ok());
    EXPECT_TRUE(b->has_producer());
    EXPECT_FALSE(b->has_consumer());
    ASSERT_TRUE(api().UnregisterProducer(token).ok());
  }
}

TEST_F(EndToEndTest, SidesOnDifferentNodes_SecondRefusedFailedPrecondition) {
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24)).ok());
  auto p = api().RegisterProducer(MakeProducer("t1", "n2", "0000:3b:00.1"));
  ASSERT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorDetail(p.status())->reason(),
            v1::ErrorDetail::NODE_MISMATCH);
  EXPECT_FALSE(api().GetBinding("t1")->has_producer());
}

TEST_F(EndToEndTest, NoAgentForNode_UnavailableAndRolledBack) {
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "ghost", "vm-a", 24)).ok());
  auto p = api().RegisterProducer(MakeProducer("t1", "ghost", "0000:3b:00.1"));
  ASSERT_EQ(p.status().code(), absl::StatusCode::kUnavailable) << p.status();
  EXPECT_EQ(GetErrorDetail(p.status())->reason(),
            v1::ErrorDetail::AGENT_UNAVAILABLE);
  EXPECT_FALSE(api().GetBinding("t1")->has_producer());
}

TEST_F(EndToEndTest,
       TokenTaken_AlreadyExists_ObjectTaken_AlreadyExistsNamingToken) {
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1")).ok());
  auto again = api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.2"));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(GetErrorDetail(again.status())->reason(),
            v1::ErrorDetail::TOKEN_BUSY);
  auto same_object =
      api().RegisterProducer(MakeProducer("t2", "n1", "0000:3b:00.1"));
  EXPECT_EQ(same_object.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(GetErrorDetail(same_object.status())->other_token(), "t1");
}

TEST_F(EndToEndTest, InvalidRequests_InvalidArgumentNamingField) {
  auto no_token =
      api().RegisterProducer(MakeProducer("", "n1", "0000:3b:00.1"));
  EXPECT_EQ(no_token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetErrorDetail(no_token.status())->field(), "producer.token");
  auto no_node = api().RegisterConsumer(MakeConsumer("t1", "", "vm-a", 1));
  EXPECT_EQ(GetErrorDetail(no_node.status())->field(), "consumer.node");
  auto no_vm = api().RegisterConsumer(MakeConsumer("t1", "n1", "", 1));
  EXPECT_EQ(GetErrorDetail(no_vm.status())->field(), "consumer.vm");
  auto bad_device = api().RegisterProducer(MakeProducer("t1", "n1", "nope"));
  EXPECT_EQ(GetErrorDetail(bad_device.status())->field(), "producer.device");
  auto long_token = api().RegisterConsumer(
      MakeConsumer(std::string(300, 't'), "n1", "vm-a", 1));
  EXPECT_EQ(GetErrorDetail(long_token.status())->field(), "consumer.token");
  auto bad_id = api().UnregisterProducer("t1", "garbage");
  EXPECT_EQ(GetErrorDetail(bad_id.status())->field(), "registration_id");
  auto empty_get = api().GetBinding("");
  EXPECT_EQ(empty_get.status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_page = api().ListBindings("", 0, "not-a-page-token");
  EXPECT_EQ(GetErrorDetail(bad_page.status())->field(), "page_token");
  // Nothing was recorded by any of these.
  EXPECT_TRUE(api().ListAllBindings("")->empty());
}

TEST_F(EndToEndTest,
       Unregister_WrongRegistrationId_FailedPreconditionUntouched) {
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1"));
  ASSERT_TRUE(p.ok());
  auto wrong = api().UnregisterProducer("t1", "p-00000000000000aa");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(api().GetBinding("t1")->producer_registration_id(),
            p->registration_id);
  EXPECT_EQ(api().UnregisterConsumer("t1").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(EndToEndTest, ListBindings_PagesAndNodeFilter) {
  for (int i = 0; i < 25; ++i) {
    const std::string node = i % 5 == 0 ? "n2" : "n1";
    ASSERT_TRUE(api()
                    .RegisterConsumer(
                        MakeConsumer("t" + std::to_string(i), node, "vm", i))
                    .ok());
  }
  auto all = api().ListAllBindings("", 4);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 25u);
  auto n2 = api().ListAllBindings("n2", 2);
  ASSERT_TRUE(n2.ok());
  EXPECT_EQ(n2->size(), 5u);
}

TEST_F(EndToEndTest, WatchBindings_SeesUpdatesAndRemoval) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("before", "n1", "vm-a", 1)).ok());
  client::WatchCanceller canceller;
  std::vector<v1::BindingEvent> events;
  std::atomic<bool> synced{false};
  std::thread watcher([&] {
    v1::WatchBindingsRequest req;
    req.set_include_existing(true);
    auto s = api().WatchBindings(
        req,
        [&](const v1::BindingEvent& e) {
          events.push_back(e);
          if (e.type() == v1::BindingEvent::SYNCED) synced = true;
          return !(e.type() == v1::BindingEvent::REMOVED &&
                   e.binding().token() == "t1");
        },
        &canceller);
    EXPECT_TRUE(s.ok()) << s;
  });
  ASSERT_TRUE(Eventually([&] { return synced.load(); }));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24)).ok());
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1")).ok());
  ASSERT_TRUE(api().UnregisterProducer("t1").ok());
  ASSERT_TRUE(api().UnregisterConsumer("t1").ok());
  watcher.join();
  ASSERT_GE(events.size(), 6u);
  EXPECT_EQ(events[0].type(), v1::BindingEvent::EXISTING);
  EXPECT_EQ(events[0].binding().token(), "before");
  EXPECT_EQ(events[1].type(), v1::BindingEvent::SYNCED);
  EXPECT_EQ(events[2].type(), v1::BindingEvent::UPDATED);
  EXPECT_FALSE(events[2].binding().connected());
  EXPECT_EQ(events[3].type(), v1::BindingEvent::UPDATED);
  EXPECT_TRUE(events[3].binding().connected());
  EXPECT_EQ(events.back().type(), v1::BindingEvent::REMOVED);
  EXPECT_EQ(events.back().binding().node(), "n1");
}

TEST_F(EndToEndTest,
       AgentKilledMidCommand_RegistrationFailsUnavailableAndRollsBack) {
  ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_step_delay_ms=30000"}));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("kill-1", "n1", "vm-a", 24)).ok());
  absl::Status result;
  std::thread registrar([&] {
    result = api()
                 .RegisterProducer(MakeProducer("kill-1", "n1", "0000:3b:00.1"))
                 .status();
  });
  // Wait until the agent is executing the command, then kill it.
  ASSERT_TRUE(Eventually([&] {
    return cluster_.agent("n1").Log().find("token=kill-1") != std::string::npos;
  }));
  cluster_.agent("n1").Signal(SIGKILL);
  registrar.join();
  EXPECT_EQ(result.code(), absl::StatusCode::kUnavailable) << result;
  auto b = api().GetBinding("kill-1");
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->has_producer());
  EXPECT_TRUE(b->has_consumer());
}

TEST_F(EndToEndTest, AgentNeverAcks_DeadlineExceededAndRollsBack) {
  cluster_.manager().Signal(SIGKILL);
  cluster_.manager().Wait();
  ASSERT_TRUE(cluster_.StartManager({"--agent_command_timeout=500ms"}));
  ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_step_delay_ms=3000"}));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("slow", "n1", "vm-a", 24)).ok());
  auto p = api().RegisterProducer(MakeProducer("slow", "n1", "0000:3b:00.1"));
  EXPECT_EQ(p.status().code(), absl::StatusCode::kDeadlineExceeded)
      << p.status();
  EXPECT_FALSE(api().GetBinding("slow")->has_producer());
}

// One slow VM (its VMM takes 1.5 s per add step, two per connect) holds up
// only its own commands: a connect for another VM on the same host completes
// while the slow one is still in flight (with commands run one at a time it
// queued behind it and finished after it).
TEST_F(EndToEndTest, SlowVm_OtherVmsOnTheHostConnectMeanwhile) {
  ASSERT_TRUE(cluster_.StartAgent(
      "n1", {"--sim_step_delay_ms=1500", "--sim_slow_vms=vm-slow"}));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("slow", "n1", "vm-slow", 24)).ok());
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("fast", "n1", "vm-fast", 25)).ok());
  std::atomic<bool> slow_done{false};
  absl::Status slow_result;
  std::thread slow([&] {
    slow_result =
        api()
            .RegisterProducer(MakeProducer("slow", "n1", "0000:3b:00.1"))
            .status();
    slow_done = true;
  });
  ASSERT_TRUE(Eventually([&] {
    auto n = api().GetNode("n1");
    return n.ok() && n->commands_in_flight() == 1;
  }));
  auto fast =
      api().RegisterProducer(MakeProducer("fast", "n1", "0000:3b:00.2"));
  const bool slow_still_in_flight = !slow_done.load();
  slow.join();
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_TRUE(fast->connected);
  EXPECT_TRUE(slow_still_in_flight)
      << "the fast VM's connect waited for the slow VM's";
  EXPECT_TRUE(slow_result.ok()) << slow_result;
  EXPECT_TRUE(api().GetBinding("slow")->connected());
}

v1::BatchItem RegisterProducerItem(const v1::Producer& p) {
  v1::BatchItem item;
  *item.mutable_register_producer()->mutable_producer() = p;
  return item;
}
v1::BatchItem RegisterConsumerItem(const v1::Consumer& c) {
  v1::BatchItem item;
  *item.mutable_register_consumer()->mutable_consumer() = c;
  return item;
}

TEST_F(EndToEndTest, Batch_VmWith64Queues_AllConnectedEachItemItsOwnResult) {
  ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_vms=vm-a"}));
  v1::BatchRequest request;
  for (int q = 0; q < 64; ++q) {
    const std::string token = absl::StrCat("vm-a-q", q);
    // Producer then consumer of one token: the consumer connects them.
    *request.add_items() = RegisterProducerItem(
        MakeProducer(token, "n1", "0000:3b:00.1", static_cast<uint32_t>(q)));
    *request.add_items() = RegisterConsumerItem(
        MakeConsumer(token, "n1", "vm-a", static_cast<uint32_t>(32 + q)));
  }
  // Items that fail, each on its own: a VM the agent does not hold (its
  // connect fails), a duplicate of item 0, a malformed consumer, no op.
  *request.add_items() =
      RegisterProducerItem(MakeProducer("bad-vm", "n1", "0000:3b:00.2", 0));
  *request.add_items() =
      RegisterConsumerItem(MakeConsumer("bad-vm", "n1", "vm-x", 5));
  *request.add_items() =
      RegisterProducerItem(MakeProducer("vm-a-q0", "n1", "0000:3b:00.3", 0));
  *request.add_items() =
      RegisterConsumerItem(MakeConsumer("bad field", "n1", "vm-a", 6));
  request.add_items();
  auto response = api().Batch(request);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->results_size(), 133);
  for (int q = 0; q < 64; ++q) {
    const v1::BatchResult& p = response->results(2 * q);
    const v1::BatchResult& c = response->results(2 * q + 1);
    ASSERT_EQ(p.status().code(), 0) << p.status().message();
    ASSERT_EQ(c.status().code(), 0) << c.status().message();
    EXPECT_FALSE(p.register_producer().connected());
    EXPECT_TRUE(c.register_consumer().connected()) << q;
    auto b = api().GetBinding(absl::StrCat("vm-a-q", q));
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(b->connected());
    EXPECT_EQ(b->producer_registration_id(),
              p.register_producer().registration_id());
    EXPECT_EQ(b->consumer_registration_id(),
              c.register_consumer().registration_id());
  }
  EXPECT_EQ(response->results(128).status().code(), 0);
  EXPECT_EQ(response->results(129).status().code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition))
      << response->results(129).status().message();
  v1::ErrorDetail detail;
  ASSERT_EQ(response->results(129).status().details_size(), 1);
  ASSERT_TRUE(response->results(129).status().details(0).UnpackTo(&detail));
  EXPECT_EQ(detail.reason(), v1::ErrorDetail::CONNECT_FAILED);
  EXPECT_EQ(detail.step(), "add_producer");
  EXPECT_EQ(response->results(130).status().code(),
            static_cast<int>(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(response->results(131).status().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  ASSERT_TRUE(response->results(131).status().details(0).UnpackTo(&detail));
  EXPECT_EQ(detail.field(), "items[131].register_consumer.consumer.token")
      << response->results(131).status().message();
  EXPECT_EQ(response->results(132).status().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  ASSERT_TRUE(response->results(132).status().details(0).UnpackTo(&detail));
  EXPECT_EQ(detail.field(), "items[132].op");

  // Sent again (as a new call: the client library gives its items fresh
  // request ids): every register answers ALREADY_EXISTS, nothing changes.
  auto again = api().Batch(request);
  ASSERT_TRUE(again.ok()) << again.status();
  for (int i = 0; i < 128; ++i) {
    EXPECT_EQ(again->results(i).status().code(),
              static_cast<int>(absl::StatusCode::kAlreadyExists))
        << i;
  }

  // Unregister everything in one batch: each consumer's unregister
  // disconnects its pair.
  v1::BatchRequest down;
  for (int q = 0; q < 64; ++q) {
    const std::string token = absl::StrCat("vm-a-q", q);
    down.add_items()->mutable_unregister_consumer()->set_token(token);
    down.add_items()->mutable_unregister_producer()->set_token(token);
  }
  auto removed = api().Batch(down);
  ASSERT_TRUE(removed.ok()) << removed.status();
  for (int q = 0; q < 64; ++q) {
    EXPECT_EQ(removed->results(2 * q).status().code(), 0);
    EXPECT_TRUE(removed->results(2 * q).unregister_consumer().disconnected());
    EXPECT_EQ(removed->results(2 * q + 1).status().code(), 0);
    EXPECT_FALSE(
        removed->results(2 * q + 1).unregister_producer().disconnected());
    EXPECT_EQ(api().GetBinding(absl::StrCat("vm-a-q", q)).status().code(),
              absl::StatusCode::kNotFound);
  }
}

TEST_F(EndToEndTest, Batch_NoItemsOrTooMany_InvalidArgumentAsAWhole) {
  v1::BatchRequest empty;
  auto none = api().Batch(empty);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  auto detail = GetErrorDetail(none.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->field(), "items");
  v1::BatchRequest many;
  for (int i = 0; i < 4097; ++i) {
    many.add_items()->mutable_unregister_producer()->set_token("t");
  }
  auto too_many = api().Batch(many);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("4096"), std::string::npos)
      << too_many.status();
}

TEST_F(EndToEndTest, AgentRestarted_WhileBindingsExist_ReconciledWithManager) {
  ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_vms=vm-a,vm-b"}));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("keep", "n1", "vm-a", 24)).ok());
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("keep", "n1", "0000:3b:00.1")).ok());
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("drop", "n1", "vm-b", 25)).ok());
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("drop", "n1", "0000:3b:00.2")).ok());

  cluster_.agent("n1").Signal(SIGKILL);
  cluster_.agent("n1").Wait();
  // While the agent is away: disconnect cannot fail, so unregister succeeds.
  ASSERT_TRUE(
      Eventually([&] { return api().UnregisterProducer("drop").ok(); }));
  // It comes back without vm-a: the manager re-sends the missing connect,
  // which fails, so "keep" is reported as not connected.
  ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_vms=vm-b"}));
  auto keep = api().GetBinding("keep");
  ASSERT_TRUE(keep.ok());
  EXPECT_TRUE(keep->has_producer() && keep->has_consumer());
  EXPECT_FALSE(keep->connected());
  // Back with vm-a: reconciled and connected again.
  ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_vms=vm-a,vm-b"}));
  EXPECT_TRUE(api().GetBinding("keep")->connected());
  EXPECT_FALSE(api().GetBinding("drop")->has_producer());
}

// Everything a watch from `start_revision` sends up to SYNCED, or its error.
absl::StatusOr<std::vector<v1::BindingEvent>> ResumeWatch(
    client::Client& api, uint64_t start_revision) {
  std::vector<v1::BindingEvent> events;
  v1::WatchBindingsRequest req;
  req.set_start_revision(start_revision);
  absl::Status s = api.WatchBindings(req, [&](const v1::BindingEvent& e) {
    events.push_back(e);
    return e.type() != v1::BindingEvent::SYNCED;
  });
  if (!s.ok()) return s;
  return events;
}

TEST_F(EndToEndTest, Nodes_ShowAgentsSessionsCountsAndInFlightCommands) {
  EXPECT_EQ(api().GetNode("n1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(api().GetNode("").status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  ASSERT_TRUE(api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 3)).ok());
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1")).ok());
  ASSERT_TRUE(api().RegisterConsumer(MakeConsumer("t2", "n2", "vm-b", 4)).ok());

  auto nodes = api().ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_EQ(nodes->size(), 2u);
  const v1::Node& n1 = (*nodes)[0];
  EXPECT_EQ(n1.name(), "n1");
  EXPECT_TRUE(n1.agent_connected());
  EXPECT_TRUE(n1.reconciled());
  EXPECT_EQ(n1.backend(), "sim");
  EXPECT_FALSE(n1.agent_version().empty());
  EXPECT_GT(n1.session_started_unix_micros(), 0);
  EXPECT_EQ(n1.producers(), 1u);
  EXPECT_EQ(n1.consumers(), 1u);
  EXPECT_EQ(n1.connected_pairs(), 1u);
  ASSERT_TRUE(n1.has_last_reconciliation());
  EXPECT_GT(n1.last_reconciliation().finished_unix_micros(), 0);
  const v1::Node& n2 = (*nodes)[1];  // bindings, never an agent
  EXPECT_EQ(n2.name(), "n2");
  EXPECT_FALSE(n2.agent_connected());
  EXPECT_EQ(n2.consumers(), 1u);
  EXPECT_EQ(n2.session_started_unix_micros(), 0);

  // A command waiting on a stopped agent is in flight.
  ASSERT_TRUE(cluster_.agent("n1").Signal(SIGSTOP));
  ASSERT_TRUE(WaitAllThreadsStopped(cluster_.agent("n1").pid()));
  std::thread unregister([&] { (void)api().UnregisterProducer("t1"); });
  EXPECT_TRUE(Eventually([&] {
    auto n = api().GetNode("n1");
    return n.ok() && n->commands_in_flight() == 1;
  }));
  ASSERT_TRUE(cluster_.agent("n1").Signal(SIGCONT));
  unregister.join();
  // The agent goes: its session ended, the node is still known.
  ASSERT_TRUE(cluster_.agent("n1").Signal(SIGKILL));
  cluster_.agent("n1").Wait();
  EXPECT_TRUE(Eventually([&] {
    auto n = api().GetNode("n1");
    return n.ok() && !n->agent_connected() && !n->reconciled() &&
           n->session_ended_unix_micros() >= n->session_started_unix_micros();
  }));
}

TEST_F(EndToEndTest, WatchResumed_SendsOnlyWhatChangedSince) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  for (const char* t : {"a", "b", "c"}) {
    ASSERT_TRUE(api()
                    .RegisterConsumer(MakeConsumer(t, "n1", "vm-a",
                                                   static_cast<uint32_t>(t[0])))
                    .ok());
  }
  const uint64_t seen = api().GetBinding("c")->revision();
  // After the watcher's last event: a changes, b goes, d comes.
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("a", "n1", "0000:3b:00.1")).ok());
  ASSERT_TRUE(api().UnregisterConsumer("b").ok());
  ASSERT_TRUE(api().RegisterConsumer(MakeConsumer("d", "n1", "vm-a", 9)).ok());

  auto events = ResumeWatch(api(), seen);
  ASSERT_TRUE(events.ok()) << events.status();
  std::map<std::string, v1::BindingEvent::Type> got;
  for (const auto& e : *events) {
    if (e.type() != v1::BindingEvent::SYNCED) {
      EXPECT_GT(e.binding().revision(), seen);
      got[e.binding().token()] = e.type();
    }
  }
  EXPECT_EQ(got, (std::map<std::string, v1::BindingEvent::Type>{
                     {"a", v1::BindingEvent::UPDATED},
                     {"b", v1::BindingEvent::REMOVED},
                     {"d", v1::BindingEvent::UPDATED}}));
  EXPECT_EQ(events->back().type(), v1::BindingEvent::SYNCED);
  EXPECT_TRUE(got.count("c") == 0);
}

// Changes are published out of revision order: an unregister takes its
// revision before its disconnect and is published after it. A watcher that
// resumes from the highest revision it saw misses such a change; one that
// resumes from the last SYNCED/PROGRESS resume_revision does not.
TEST_F(EndToEndTest, WatchResumedFromProgress_ChangePublishedLateNotMissed) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  ASSERT_TRUE(api().RegisterConsumer(MakeConsumer("x", "n1", "vm-a", 5)).ok());
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("x", "n1", "0000:3b:00.1")).ok());
  client::WatchCanceller canceller;
  std::mutex mu;
  uint64_t resume = 0;      // guarded by mu
  uint64_t y_revision = 0;  // guarded by mu: as delivered
  int progress_events = 0;  // guarded by mu
  std::thread watcher([&] {
    v1::WatchBindingsRequest req;
    req.set_include_existing(true);
    req.set_progress_notify(true);
    api()
        .WatchBindings(
            req,
            [&](const v1::BindingEvent& e) {
              std::lock_guard<std::mutex> lock(mu);
              if (e.type() == v1::BindingEvent::SYNCED ||
                  e.type() == v1::BindingEvent::PROGRESS) {
                resume = e.resume_revision();
                progress_events += e.type() == v1::BindingEvent::PROGRESS;
              }
              if (e.binding().token() == "y") {
                y_revision = e.binding().revision();
              }
              return true;
            },
            &canceller)
        .IgnoreError();
  });
  ASSERT_TRUE(Eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    return resume > 0;
  }));
  // x's unregister waits on its disconnect while the agent is stopped.
  ASSERT_TRUE(cluster_.agent("n1").Signal(SIGSTOP));
  ASSERT_TRUE(WaitAllThreadsStopped(cluster_.agent("n1").pid()));
  std::thread unregister(
      [&] { EXPECT_TRUE(api().UnregisterProducer("x").ok()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // y needs no agent: published at once, with a higher revision than x's.
  ASSERT_TRUE(api().RegisterConsumer(MakeConsumer("y", "n2", "vm-b", 6)).ok());
  // Progress would be reported now (every second), but x is pending: no
  // resume point may pass it.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  uint64_t resume_from = 0, seen = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    resume_from = resume;
    seen = y_revision;
  }
  ASSERT_GT(seen, 0u) << "the watcher never got y";
  EXPECT_LT(resume_from, seen) << "a resume point past x's pending unregister";
  ASSERT_TRUE(cluster_.agent("n1").Signal(SIGCONT));
  unregister.join();
  // Once x is published the resume point moves past both, in a PROGRESS.
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    return resume >= seen && progress_events > 0;
  })) << "no PROGRESS past y";
  canceller.Cancel();
  watcher.join();
  const uint64_t x_revision = api().GetBinding("x")->revision();
  ASSERT_LT(x_revision, seen);  // numbered before y, published after it

  auto from_seen = ResumeWatch(api(), seen);
  ASSERT_TRUE(from_seen.ok()) << from_seen.status();
  for (const auto& e : *from_seen) {
    EXPECT_NE(e.binding().token(), "x") << "x's change is below y's revision";
  }
  auto from_resume = ResumeWatch(api(), resume_from);
  ASSERT_TRUE(from_resume.ok()) << from_resume.status();
  bool x_seen = false;
  for (const auto& e : *from_resume) {
    if (e.binding().token() == "x") {
      x_seen = true;
      EXPECT_EQ(e.binding().revision(), x_revision);
      EXPECT_FALSE(e.binding().has_producer());
    }
  }
  EXPECT_TRUE(x_seen) << "resumed from " << resume_from << ", missed x";
}

TEST_F(EndToEndTest, WatchResumed_FromBeforeARestartOrTheFuture_OutOfRange) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  ASSERT_TRUE(api().RegisterConsumer(MakeConsumer("a", "n1", "vm-a", 1)).ok());
  const uint64_t seen = api().GetBinding("a")->revision();
  ASSERT_TRUE(api().RegisterConsumer(MakeConsumer("b", "n1", "vm-a", 2)).ok());
  ASSERT_TRUE(api().UnregisterConsumer("b").ok());
  EXPECT_EQ(ResumeWatch(api(), seen + 1000).status().code(),
            absl::StatusCode::kOutOfRange);
  cluster_.manager().Signal(SIGKILL);
  cluster_.manager().Wait();
  ASSERT_TRUE(cluster_.StartManager());
  // The restarted manager no longer knows about b's removal: the watcher
  // must re-list, and is told so.
  auto resumed = ResumeWatch(api(), seen);
  EXPECT_EQ(resumed.status().code(), absl::StatusCode::kOutOfRange)
      << resumed.status();
  // Nor from its latest revision: the restarted manager skipped one, so no
  // resume point of the earlier process is above its floor.
  const uint64_t latest = api().GetBinding("a")->revision() + 2;
  EXPECT_EQ(ResumeWatch(api(), latest).status().code(),
            absl::StatusCode::kOutOfRange);
  // From a resume point of its own it can.
  v1::WatchBindingsRequest list;
  list.set_include_existing(true);
  uint64_t point = 0;
  ASSERT_TRUE(api()
                  .WatchBindings(list,
                                 [&](const v1::BindingEvent& e) {
                                   point = e.resume_revision();
                                   return e.type() != v1::BindingEvent::SYNCED;
                                 })
                  .ok());
  EXPECT_GT(point, latest);
  auto now = ResumeWatch(api(), point);
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->size(), 1u);  // SYNCED only
}

TEST_F(EndToEndTest, ManagerKilledAndRestarted_StateKept_WiringKept) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24)).ok());
  auto p1 = api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1"));
  ASSERT_TRUE(p1.ok()) << p1.status();
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("waiting", "n1", "vm-a", 25)).ok());
  const uint64_t revision = api().GetBinding("waiting")->revision();
  // The last commits before the kill remove what they made: the highest
  // revision belongs to no stored binding.
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("gone", "n1", "vm-a", 26)).ok());
  ASSERT_TRUE(api().UnregisterConsumer("gone").ok());
  const int reconciles = cluster_.Reconciles("n1");
  cluster_.manager().Signal(SIGKILL);
  cluster_.manager().Wait();

  ASSERT_TRUE(cluster_.StartManager());
  ASSERT_TRUE(cluster_.WaitReconciles("n1", reconciles + 1));
  // Everything acknowledged is there, with its registration ids.
  auto t1 = api().GetBinding("t1");
  ASSERT_TRUE(t1.ok()) << t1.status();
  EXPECT_TRUE(t1->connected());
  EXPECT_EQ(t1->producer_registration_id(), p1->registration_id);
  EXPECT_TRUE(api().GetBinding("waiting")->has_consumer());
  // The agent's wiring was kept, not torn down and re-made.
  const std::string log = cluster_.manager().Log();
  EXPECT_NE(log.find("msg=\"agent reconciled\" node=n1 kept=1 "
                     "disconnected=0 reconnected=0 failed=0"),
            std::string::npos)
      << log;
  // The agent ran one connect for t1 (before the restart) and nothing else.
  const std::string agent_log = cluster_.agent("n1").Log();
  EXPECT_EQ(CountOccurrences(agent_log, "token=t1 id="), 2);  // received, done
  EXPECT_EQ(CountOccurrences(agent_log, "kind=disconnect"), 0);
  // Revisions continue upward, past the removal's (one commit each here).
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("after", "n1", "vm-a", 27)).ok());
  EXPECT_GE(api().GetBinding("after")->revision(), revision + 3);
  // And the restarted manager can still tear it down.
  auto u = api().UnregisterProducer("t1");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_TRUE(*u);
}

TEST_F(EndToEndTest, ManagerRestarted_LongInventoryInParts_AllKept) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  // More pairs than one hello message carries (agent_session.h).
  constexpr int kPairs = 2300;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int n = t; n < kPairs; n += 8) {
        const std::string token = "inv" + std::to_string(n);
        char device[16];
        snprintf(device, sizeof(device), "0000:%02x:%02x.0", n / 32 % 256,
                 n % 32);
        if (!api()
                 .RegisterConsumer(MakeConsumer(token, "n1", "vm-a", n))
                 .ok() ||
            !api()
                 .RegisterProducer(MakeProducer(token, "n1", device, n / 8192))
                 .ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  const int reconciles = cluster_.Reconciles("n1");
  cluster_.manager().Signal(SIGKILL);
  cluster_.manager().Wait();
  ASSERT_TRUE(cluster_.StartManager());
  ASSERT_TRUE(cluster_.WaitReconciles("n1", reconciles + 1));
  EXPECT_NE(cluster_.manager().Log().find(
                "msg=\"agent reconciled\" node=n1 kept=2300 disconnected=0 "
                "reconnected=0 failed=0 refused=0"),
            std::string::npos);
}

TEST_F(EndToEndTest, SecondManagerOnTheSameDataDir_RefusedWithClearError) {
  const CommandResult second =
      RunCommand(BinaryPath("service/irqbypassd"),
                 {"--listen=127.0.0.1:0", "--metrics_listen=", "--insecure",
                  "--data_dir=" + cluster_.dir() + "/data"});
  EXPECT_EQ(second.exit_code, 2);
  EXPECT_NE(second.err.find("in use by another process"), std::string::npos)
      << second.err;
  // The first one is unharmed.
  EXPECT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24)).ok());
}

TEST_F(EndToEndTest, EtcdStore_ManagerKilledAndRestarted_StateAndWiringKept) {
  EtcdCluster etcd;
  ASSERT_TRUE(etcd.Start(1));
  ExpectPairSurvivesKill(
      {"--store=etcd", "--etcd_endpoints=" + etcd.endpoints()[0]});
  if (HasFatalFailure()) return;
  EXPECT_NE(cluster_.manager().Log().find("store=\"etcd endpoints="),
            std::string::npos);
}

// The same over TLS to etcd: members with certificates of etcd's own CA,
// requiring client certificates; irqbypassd given --etcd_cacert,
// --etcd_cert and --etcd_key. An https:// endpoint without --etcd_cacert
// stops the start naming the flag.
TEST_F(EndToEndTest, EtcdStoreOverTls_ManagerKilledAndRestarted_StateKept) {
  const security::testing::Pki pki(cluster_.dir() + "/etcd-pki");
  const auto member = pki.Issue("member", {"IP:127.0.0.1"});
  const auto client = pki.Issue("client", {});
  ASSERT_FALSE(member.cert_file.empty() || client.cert_file.empty());
  EtcdCluster etcd;
  ASSERT_TRUE(etcd.Start(
      1, EtcdTestTls{pki.ca_file(), member.cert_file, member.key_file,
                     client.cert_file, client.key_file}));
  ASSERT_EQ(etcd.endpoints()[0].rfind("https://", 0), 0u);
  ExpectPairSurvivesKill(
      {"--store=etcd", "--etcd_endpoints=" + etcd.endpoints()[0],
       "--etcd_cacert=" + pki.ca_file(), "--etcd_cert=" + client.cert_file,
       "--etcd_key=" + client.key_file});
  if (HasFatalFailure()) return;
  // etcd holds it: read back with etcd's client certificate.
  EtcdKv kv(etcd.endpoints()[0], etcd.tls());
  EXPECT_GT(kv.Revision(), 0);

  // An https:// endpoint without --etcd_cacert is a usage error at start.
  const CommandResult bad =
      RunCommand(BinaryPath("service/irqbypassd"),
                 {"--listen=127.0.0.1:0", "--metrics_listen=", "--insecure",
                  "--store=etcd", "--etcd_endpoints=" + etcd.endpoints()[0]});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--etcd_cacert"), std::string::npos) << bad.err;
}

TEST_F(EndToEndTest, MemoryStore_ManagerRestarted_StaleWiringRemoved) {
  cluster_.manager().Signal(SIGKILL);
  cluster_.manager().Wait();
  ASSERT_TRUE(cluster_.StartManager({"--store=memory"}));
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24)).ok());
  ASSERT_TRUE(
      api().RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1")).ok());
  const int reconciles = cluster_.Reconciles("n1");
  cluster_.manager().Signal(SIGKILL);
  cluster_.manager().Wait();
  // The new manager holds nothing: the agent's surviving wiring is stale
  // and must be removed when it reconnects.
  ASSERT_TRUE(cluster_.StartManager({"--store=memory"}));
  ASSERT_TRUE(cluster_.WaitReconciles("n1", reconciles + 1));
  // The same device vector and VM GSI pair again under a new token: this
  // only connects if the stale wiring was removed (else EBUSY).
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t2", "n1", "vm-a", 24)).ok());
  auto p = api().RegisterProducer(MakeProducer("t2", "n1", "0000:3b:00.1"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->connected);
}

TEST_F(EndToEndTest, Sigterm_ManagerShutsDownGracefully) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  ASSERT_TRUE(cluster_.manager().Signal(SIGTERM));
  EXPECT_EQ(cluster_.manager().Wait(), 0);
  EXPECT_NE(cluster_.manager().Log().find("msg=stopped"), std::string::npos);
}

TEST_F(EndToEndTest, ManyConcurrentPairs_AllConnectedThenAllRemoved) {
  ASSERT_TRUE(cluster_.StartAgent("n1"));
  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int n = t * kPerThread + i;
        const std::string token = "c" + std::to_string(n);
        char device[16];
        snprintf(device, sizeof(device), "0000:%02x:%02x.0", n / 32, n % 32);
        // Alternate which side arrives first.
        bool ok;
        if (n % 2 == 0) {
          ok =
              api().RegisterProducer(MakeProducer(token, "n1", device)).ok() &&
              api().RegisterConsumer(MakeConsumer(token, "n1", "vm-a", n)).ok();
        } else {
          ok = api()
                   .RegisterConsumer(MakeConsumer(token, "n1", "vm-a", n))
                   .ok() &&
               api().RegisterProducer(MakeProducer(token, "n1", device)).ok();
        }
        if (!ok) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto all = api().ListAllBindings("n1", 1000);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), static_cast<size_t>(kThreads * kPerThread));
  for (const auto& b : *all) EXPECT_TRUE(b.connected()) << b.token();
  for (const auto& b : *all) {
    ASSERT_TRUE(api().UnregisterProducer(b.token()).ok());
    ASSERT_TRUE(api().UnregisterConsumer(b.token()).ok());
  }
  EXPECT_TRUE(api().ListAllBindings("")->empty());
}

}  // namespace
}  // namespace irqbypass::testing
