// The connect/disconnect steps exactly as the manager sends them and the
// agent runs them: the real Matcher, the manager's step lists and ack
// mapping, and the agent's StepExecutor, joined in-process by a dispatcher,
// over a fake backend that records every step and fails the one chosen.
#include <cerrno>
#include <string>
#include <vector>

#include "agent/backend.h"
#include "agent/step_executor.h"
#include "gtest/gtest.h"
#include "service/agent_registry.h"
#include "service/errors.h"
#include "service/matcher.h"
#include "service/token_index.h"

namespace irqbypass {
namespace {

class RecordingBackend : public agent::Backend {
 public:
  std::string Name() const override { return "recording"; }
  void StopProducer(absl::string_view, const v1::Producer&,
                    const v1::Consumer&) override {
    calls.push_back("stop_producer");
  }
  void StopConsumer(absl::string_view, const v1::Producer&,
                    const v1::Consumer&) override {
    calls.push_back("stop_consumer");
  }
  void StartConsumer(absl::string_view, const v1::Producer&,
                     const v1::Consumer&) override {
    calls.push_back("start_consumer");
  }
  void StartProducer(absl::string_view, const v1::Producer&,
                     const v1::Consumer&) override {
    calls.push_back("start_producer");
  }
  agent::StepResult AddConsumer(absl::string_view, const v1::Producer&,
                                const v1::Consumer&) override {
    return Add("add_consumer", &producer_holds_consumer);
  }
  agent::StepResult AddProducer(absl::string_view, const v1::Producer&,
                                const v1::Consumer&) override {
    return Add("add_producer", &consumer_holds_producer);
  }
  agent::StepResult DelProducer(absl::string_view, const v1::Producer&,
                                const v1::Consumer&) override {
    calls.push_back("del_producer");
    consumer_holds_producer = false;
    return agent::StepResult::Ok();
  }
  agent::StepResult DelConsumer(absl::string_view, const v1::Producer&,
                                const v1::Consumer&) override {
    calls.push_back("del_consumer");
    producer_holds_consumer = false;
    return agent::StepResult::Ok();
  }
  std::vector<v1::WiredPair> Inventory() const override { return {}; }

  std::string fail_step;
  int fail_errno = 0;
  std::vector<std::string> calls;
  bool producer_holds_consumer = false;
  bool consumer_holds_producer = false;

 private:
  agent::StepResult Add(const std::string& step, bool* wired) {
    calls.push_back(step);
    if (step == fail_step) {
      return agent::StepResult::Error(fail_errno, "injected by test");
    }
    *wired = true;
    return agent::StepResult::Ok();
  }
};

// The manager's AgentRegistry minus the network: same commands, same ack
// mapping.
class InProcessDispatcher : public AgentDispatcher {
 public:
  explicit InProcessDispatcher(agent::Backend& backend) : executor_(backend) {}
  absl::Status Connect(absl::string_view token, const ProducerRecord& p,
                       const ConsumerRecord& c) override {
    v1::CommandAck ack =
        executor_.Execute(MakeCommand(v1::Command::CONNECT, token, p, c));
    return ConnectAckToStatus(token, p.node, ack);
  }
  void Disconnect(absl::string_view token, const ProducerRecord& p,
                  const ConsumerRecord& c) override {
    (void)executor_.Execute(MakeCommand(v1::Command::DISCONNECT, token, p, c));
  }

 private:
  agent::StepExecutor executor_;
};

ProducerRecord Prod() {
  ProducerRecord p;
  p.node = "n1";
  p.device = "0000:3b:00.1";
  return p;
}

ConsumerRecord Cons() {
  ConsumerRecord c;
  c.node = "n1";
  c.vm = "vm-a";
  c.gsi = 24;
  return c;
}

class ContractStepsTest : public ::testing::Test {
 protected:
  RecordingBackend backend_;
  InProcessDispatcher dispatcher_{backend_};
  TokenIndex index_{8};
  Matcher matcher_{index_, dispatcher_};
};

using Calls = std::vector<std::string>;

TEST_F(ContractStepsTest,
       Connect_Succeeds_StopsAddsInOrderThenStartsConsumerFirst) {
  ASSERT_TRUE(matcher_.RegisterConsumer("t1", Cons()).ok());
  ASSERT_TRUE(matcher_.RegisterProducer("t1", Prod()).ok());
  EXPECT_EQ(backend_.calls,
            (Calls{"stop_producer", "stop_consumer", "add_consumer",
                   "add_producer", "start_consumer", "start_producer"}));
  EXPECT_TRUE(backend_.producer_holds_consumer);
  EXPECT_TRUE(backend_.consumer_holds_producer);
}

TEST_F(ContractStepsTest,
       Connect_AddConsumerFails_SkipsAddProducerStillStartsBoth) {
  backend_.fail_step = "add_consumer";
  backend_.fail_errno = EIO;
  ASSERT_TRUE(matcher_.RegisterConsumer("t1", Cons()).ok());
  auto r = matcher_.RegisterProducer("t1", Prod());
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorContext(r.status()).step, "add_consumer");
  EXPECT_EQ(GetErrorContext(r.status()).err, EIO);
  EXPECT_EQ(backend_.calls,
            (Calls{"stop_producer", "stop_consumer", "add_consumer",
                   "start_consumer", "start_producer"}));
  EXPECT_FALSE(backend_.producer_holds_consumer);
  EXPECT_FALSE(backend_.consumer_holds_producer);
  EXPECT_FALSE(index_.Get("t1")->producer.has_value());
}

TEST_F(ContractStepsTest,
       Connect_AddProducerFails_UndoesAddConsumerThenStartsBoth) {
  backend_.fail_step = "add_producer";
  backend_.fail_errno = ENOENT;
  ASSERT_TRUE(matcher_.RegisterProducer("t1", Prod()).ok());
  auto r = matcher_.RegisterConsumer("t1", Cons());
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorContext(r.status()).step, "add_producer");
  EXPECT_EQ(GetErrorContext(r.status()).err, ENOENT);
  EXPECT_EQ(
      backend_.calls,
      (Calls{"stop_producer", "stop_consumer", "add_consumer", "add_producer",
             "del_consumer", "start_consumer", "start_producer"}));
  EXPECT_FALSE(backend_.producer_holds_consumer);  // rolled back
  EXPECT_FALSE(backend_.consumer_holds_producer);
  auto st = index_.Get("t1");
  EXPECT_TRUE(st->producer.has_value());
  EXPECT_FALSE(st->consumer.has_value());
}

TEST_F(ContractStepsTest, Disconnect_OnUnregister_RunsStepsInContractOrder) {
  ASSERT_TRUE(matcher_.RegisterConsumer("t1", Cons()).ok());
  ASSERT_TRUE(matcher_.RegisterProducer("t1", Prod()).ok());
  backend_.calls.clear();
  ASSERT_TRUE(matcher_.UnregisterConsumer("t1", 0).ok());
  EXPECT_EQ(backend_.calls,
            (Calls{"stop_producer", "stop_consumer", "del_producer",
                   "del_consumer", "start_consumer", "start_producer"}));
  EXPECT_FALSE(backend_.producer_holds_consumer);
  EXPECT_FALSE(backend_.consumer_holds_producer);
}

}  // namespace
}  // namespace irqbypass
