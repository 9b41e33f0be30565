#include "agent/step_executor.h"

#include <cerrno>
#include <optional>
#include <string>
#include <vector>

#include "agent/backend.h"
#include "agent/sim/sim_backend.h"
#include "common/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace irqbypass {
namespace agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using v1::ADD_CONSUMER;
using v1::ADD_PRODUCER;
using v1::DEL_CONSUMER;
using v1::DEL_PRODUCER;
using v1::START_CONSUMER;
using v1::START_PRODUCER;
using v1::STOP_CONSUMER;
using v1::STOP_PRODUCER;

// Records every call in order and fails one chosen step kind.
class RecordingBackend final : public Backend {
 public:
  void FailStep(v1::StepKind kind, int errno_value, std::string message) {
    fail_kind_ = kind;
    fail_errno_ = errno_value;
    fail_message_ = std::move(message);
  }

  std::vector<v1::StepKind> calls() const {
    MutexLock lock(&mu_);
    return calls_;
  }
  std::string last_token() const {
    MutexLock lock(&mu_);
    return last_token_;
  }

  std::string Name() const override { return "recording"; }
  void StopProducer(absl::string_view token, const v1::Producer&,
                    const v1::Consumer&) override {
    static_cast<void>(Record(STOP_PRODUCER, token));
  }
  void StopConsumer(absl::string_view token, const v1::Producer&,
                    const v1::Consumer&) override {
    static_cast<void>(Record(STOP_CONSUMER, token));
  }
  void StartConsumer(absl::string_view token, const v1::Producer&,
                     const v1::Consumer&) override {
    static_cast<void>(Record(START_CONSUMER, token));
  }
  void StartProducer(absl::string_view token, const v1::Producer&,
                     const v1::Consumer&) override {
    static_cast<void>(Record(START_PRODUCER, token));
  }
  StepResult AddConsumer(absl::string_view token, const v1::Producer&,
                         const v1::Consumer&) override {
    return Record(ADD_CONSUMER, token);
  }
  StepResult AddProducer(absl::string_view token, const v1::Producer&,
                         const v1::Consumer&) override {
    return Record(ADD_PRODUCER, token);
  }
  StepResult DelProducer(absl::string_view token, const v1::Producer&,
                         const v1::Consumer&) override {
    return Record(DEL_PRODUCER, token);
  }
  StepResult DelConsumer(absl::string_view token, const v1::Producer&,
                         const v1::Consumer&) override {
    return Record(DEL_CONSUMER, token);
  }
  std::vector<v1::WiredPair> Inventory() const override { return {}; }

 private:
  StepResult Record(v1::StepKind kind, absl::string_view token) {
    MutexLock lock(&mu_);
    calls_.push_back(kind);
    last_token_ = std::string(token);
    if (fail_kind_ == kind) {
      return StepResult::Error(fail_errno_, fail_message_);
    }
    return StepResult::Ok();
  }

  std::optional<v1::StepKind> fail_kind_;
  int fail_errno_ = 0;
  std::string fail_message_;

  mutable Mutex mu_;
  std::vector<v1::StepKind> calls_ ABSL_GUARDED_BY(mu_);
  std::string last_token_ ABSL_GUARDED_BY(mu_);
};

v1::Step MakeStep(v1::StepKind kind, bool always = false,
                  v1::StepKind undo = v1::STEP_UNSPECIFIED) {
  v1::Step step;
  step.set_kind(kind);
  step.set_always(always);
  step.set_undo(undo);
  return step;
}

v1::Command BaseCommand(v1::Command::Kind kind, uint64_t id) {
  v1::Command command;
  command.set_id(id);
  command.set_kind(kind);
  command.set_token("t1");
  v1::Producer& producer = *command.mutable_producer();
  producer.set_token("t1");
  producer.set_node("n1");
  producer.set_device("0000:3b:00.1");
  producer.set_vector(3);
  producer.set_index(v1::IRQ_INDEX_MSIX);
  v1::Consumer& consumer = *command.mutable_consumer();
  consumer.set_token("t1");
  consumer.set_node("n1");
  consumer.set_vm("vm-1");
  consumer.set_gsi(40);
  return command;
}

// The connect steps as the contract (and the manager) spell them.
v1::Command ConnectCommand(uint64_t id = 1) {
  v1::Command command = BaseCommand(v1::Command::CONNECT, id);
  *command.add_steps() = MakeStep(STOP_PRODUCER);
  *command.add_steps() = MakeStep(STOP_CONSUMER);
  *command.add_steps() = MakeStep(ADD_CONSUMER, false, DEL_CONSUMER);
  *command.add_steps() = MakeStep(ADD_PRODUCER);
  *command.add_steps() = MakeStep(START_CONSUMER, true);
  *command.add_steps() = MakeStep(START_PRODUCER, true);
  return command;
}

v1::Command DisconnectCommand(uint64_t id = 2) {
  v1::Command command = BaseCommand(v1::Command::DISCONNECT, id);
  *command.add_steps() = MakeStep(STOP_PRODUCER);
  *command.add_steps() = MakeStep(STOP_CONSUMER);
  *command.add_steps() = MakeStep(DEL_PRODUCER);
  *command.add_steps() = MakeStep(DEL_CONSUMER);
  *command.add_steps() = MakeStep(START_CONSUMER, true);
  *command.add_steps() = MakeStep(START_PRODUCER, true);
  return command;
}

std::vector<v1::StepKind> Executed(const v1::CommandAck& ack) {
  std::vector<v1::StepKind> kinds;
  for (int kind : ack.executed())
    kinds.push_back(static_cast<v1::StepKind>(kind));
  return kinds;
}

TEST(StepExecutorTest, Connect_AllStepsSucceed_RunsContractOrderAndAcksOk) {
  RecordingBackend backend;
  StepExecutor executor(backend);

  const v1::CommandAck ack = executor.Execute(ConnectCommand(/*id=*/17));

  EXPECT_TRUE(ack.ok());
  EXPECT_EQ(ack.id(), 17u);
  EXPECT_EQ(ack.failed_step(), v1::STEP_UNSPECIFIED);
  EXPECT_EQ(ack.errno_value(), 0);
  EXPECT_THAT(Executed(ack),
              ElementsAre(STOP_PRODUCER, STOP_CONSUMER, ADD_CONSUMER,
                          ADD_PRODUCER, START_CONSUMER, START_PRODUCER));
  EXPECT_EQ(backend.calls(), Executed(ack));
  EXPECT_EQ(backend.last_token(), "t1");
}

TEST(StepExecutorTest,
     Connect_AddConsumerFails_SkipsAddProducerStillStartsAndReportsErrno) {
  RecordingBackend backend;
  backend.FailStep(ADD_CONSUMER, ENOENT, "device not held");
  StepExecutor executor(backend);

  const v1::CommandAck ack = executor.Execute(ConnectCommand());

  EXPECT_FALSE(ack.ok());
  EXPECT_EQ(ack.failed_step(), ADD_CONSUMER);
  EXPECT_EQ(ack.errno_value(), ENOENT);
  EXPECT_EQ(ack.message(), "device not held");
  EXPECT_THAT(Executed(ack),
              ElementsAre(STOP_PRODUCER, STOP_CONSUMER, ADD_CONSUMER,
                          START_CONSUMER, START_PRODUCER));
  EXPECT_EQ(backend.calls(), Executed(ack));
}

TEST(StepExecutorTest,
     Connect_AddProducerFails_UndoesAddConsumerThenStartsAndReportsErrno) {
  RecordingBackend backend;
  backend.FailStep(ADD_PRODUCER, EBUSY, "gsi busy");
  StepExecutor executor(backend);

  const v1::CommandAck ack = executor.Execute(ConnectCommand());

  EXPECT_FALSE(ack.ok());
  EXPECT_EQ(ack.failed_step(), ADD_PRODUCER);
  EXPECT_EQ(ack.errno_value(), EBUSY);
  EXPECT_EQ(ack.message(), "gsi busy");
  EXPECT_THAT(
      Executed(ack),
      ElementsAre(STOP_PRODUCER, STOP_CONSUMER, ADD_CONSUMER, ADD_PRODUCER,
                  DEL_CONSUMER, START_CONSUMER, START_PRODUCER));
  EXPECT_EQ(backend.calls(), Executed(ack));
}

TEST(StepExecutorTest, Connect_UnknownErrno_IsReportedExactly) {
  RecordingBackend backend;
  backend.FailStep(ADD_PRODUCER, 4242, "odd host error");
  StepExecutor executor(backend);

  const v1::CommandAck ack = executor.Execute(ConnectCommand());

  EXPECT_EQ(ack.errno_value(), 4242);
}

TEST(StepExecutorTest, Disconnect_RunsContractOrderAndAcksOk) {
  RecordingBackend backend;
  StepExecutor executor(backend);

  const v1::CommandAck ack = executor.Execute(DisconnectCommand(/*id=*/5));

  EXPECT_TRUE(ack.ok());
  EXPECT_EQ(ack.id(), 5u);
  EXPECT_THAT(Executed(ack),
              ElementsAre(STOP_PRODUCER, STOP_CONSUMER, DEL_PRODUCER,
                          DEL_CONSUMER, START_CONSUMER, START_PRODUCER));
  EXPECT_EQ(backend.calls(), Executed(ack));
}

TEST(StepExecutorTest, Disconnect_DelStepErrors_AreIgnoredAndAllStepsRun) {
  RecordingBackend backend;
  backend.FailStep(DEL_PRODUCER, EIO, "deassign failed");
  StepExecutor executor(backend);

  const v1::CommandAck ack = executor.Execute(DisconnectCommand());

  EXPECT_TRUE(ack.ok());
  EXPECT_EQ(ack.errno_value(), 0);
  EXPECT_THAT(Executed(ack),
              ElementsAre(STOP_PRODUCER, STOP_CONSUMER, DEL_PRODUCER,
                          DEL_CONSUMER, START_CONSUMER, START_PRODUCER));
  // Counted, so the agent can re-report what may be left wired.
  EXPECT_EQ(executor.failed_dels(), 1u);
}

TEST(StepExecutorTest, Failure_RunsUndosOfCompletedStepsInReverseOrder) {
  RecordingBackend backend;
  backend.FailStep(ADD_PRODUCER, EIO, "boom");
  StepExecutor executor(backend);
  v1::Command command = BaseCommand(v1::Command::CONNECT, 1);
  *command.add_steps() = MakeStep(STOP_PRODUCER, false, START_PRODUCER);
  *command.add_steps() = MakeStep(STOP_CONSUMER, false, START_CONSUMER);
  *command.add_steps() = MakeStep(ADD_CONSUMER, false, DEL_CONSUMER);
  *command.add_steps() = MakeStep(ADD_PRODUCER);

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_FALSE(ack.ok());
  EXPECT_THAT(
      Executed(ack),
      ElementsAre(STOP_PRODUCER, STOP_CONSUMER, ADD_CONSUMER, ADD_PRODUCER,
                  DEL_CONSUMER, START_CONSUMER, START_PRODUCER));
}

TEST(StepExecutorTest, Failure_SkipsLaterNonAlwaysStepsButRunsAlwaysSteps) {
  RecordingBackend backend;
  backend.FailStep(ADD_CONSUMER, EIO, "boom");
  StepExecutor executor(backend);
  v1::Command command = BaseCommand(v1::Command::CONNECT, 1);
  *command.add_steps() = MakeStep(ADD_CONSUMER);
  *command.add_steps() = MakeStep(STOP_CONSUMER);
  *command.add_steps() = MakeStep(START_CONSUMER, true);
  *command.add_steps() = MakeStep(ADD_PRODUCER);
  *command.add_steps() = MakeStep(START_PRODUCER, true);

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_THAT(Executed(ack),
              ElementsAre(ADD_CONSUMER, START_CONSUMER, START_PRODUCER));
}

TEST(StepExecutorTest,
     Failure_OfAlwaysStepAfterEarlierFailure_KeepsFirstError) {
  RecordingBackend backend;
  backend.FailStep(ADD_PRODUCER, EBUSY, "first");
  StepExecutor executor(backend);
  v1::Command command = BaseCommand(v1::Command::CONNECT, 1);
  *command.add_steps() = MakeStep(ADD_PRODUCER);
  *command.add_steps() = MakeStep(ADD_PRODUCER, true);

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_FALSE(ack.ok());
  EXPECT_EQ(ack.errno_value(), EBUSY);
  EXPECT_THAT(Executed(ack), ElementsAre(ADD_PRODUCER, ADD_PRODUCER));
}

// Malformed commands: acked with EINVAL, no backend call, never a crash.

TEST(StepExecutorTest, Invalid_NoSteps_AcksEinvalAndRunsNothing) {
  RecordingBackend backend;
  StepExecutor executor(backend);
  v1::Command command = ConnectCommand(/*id=*/9);
  command.clear_steps();

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_FALSE(ack.ok());
  EXPECT_EQ(ack.id(), 9u);
  EXPECT_EQ(ack.errno_value(), EINVAL);
  EXPECT_EQ(ack.failed_step(), v1::STEP_UNSPECIFIED);
  EXPECT_THAT(ack.message(), HasSubstr("steps"));
  EXPECT_THAT(Executed(ack), IsEmpty());
  EXPECT_THAT(backend.calls(), IsEmpty());
}

TEST(StepExecutorTest, Invalid_UnknownStepKind_AcksEinvalAndRunsNothing) {
  RecordingBackend backend;
  StepExecutor executor(backend);
  v1::Command command = ConnectCommand();
  command.mutable_steps(2)->set_kind(static_cast<v1::StepKind>(42));

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_FALSE(ack.ok());
  EXPECT_EQ(ack.errno_value(), EINVAL);
  EXPECT_THAT(ack.message(), HasSubstr("steps[2].kind"));
  EXPECT_THAT(backend.calls(), IsEmpty());
}

TEST(StepExecutorTest, Invalid_UnspecifiedStepKind_AcksEinval) {
  RecordingBackend backend;
  StepExecutor executor(backend);
  v1::Command command = ConnectCommand();
  command.mutable_steps(0)->set_kind(v1::STEP_UNSPECIFIED);

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_EQ(ack.errno_value(), EINVAL);
  EXPECT_THAT(backend.calls(), IsEmpty());
}

TEST(StepExecutorTest, Invalid_UnknownUndoKind_AcksEinval) {
  RecordingBackend backend;
  StepExecutor executor(backend);
  v1::Command command = ConnectCommand();
  command.mutable_steps(2)->set_undo(static_cast<v1::StepKind>(99));

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_EQ(ack.errno_value(), EINVAL);
  EXPECT_THAT(ack.message(), HasSubstr("steps[2].undo"));
  EXPECT_THAT(backend.calls(), IsEmpty());
}

TEST(StepExecutorTest, Invalid_UnknownCommandKind_AcksEinval) {
  RecordingBackend backend;
  StepExecutor executor(backend);
  v1::Command command = ConnectCommand();
  command.set_kind(static_cast<v1::Command::Kind>(7));

  const v1::CommandAck ack = executor.Execute(command);

  EXPECT_EQ(ack.errno_value(), EINVAL);
  EXPECT_THAT(ack.message(), HasSubstr("kind"));
  EXPECT_THAT(backend.calls(), IsEmpty());
}

TEST(StepExecutorTest, Invalid_MissingTokenProducerOrConsumer_AcksEinval) {
  RecordingBackend backend;
  StepExecutor executor(backend);
  v1::Command no_token = ConnectCommand();
  no_token.clear_token();
  v1::Command no_producer = ConnectCommand();
  no_producer.clear_producer();
  v1::Command no_consumer = ConnectCommand();
  no_consumer.clear_consumer();

  EXPECT_EQ(executor.Execute(no_token).errno_value(), EINVAL);
  EXPECT_EQ(executor.Execute(no_producer).errno_value(), EINVAL);
  EXPECT_EQ(executor.Execute(no_consumer).errno_value(), EINVAL);
  EXPECT_THAT(backend.calls(), IsEmpty());
}

// With the sim backend: the contract's outcomes on a modelled host.

TEST(StepExecutorWithSimTest, Connect_ThenDisconnect_WiresAndUnwiresThePair) {
  SimBackendOptions options;
  options.node = "n1";
  SimBackend sim(std::move(options));
  StepExecutor executor(sim);

  ASSERT_TRUE(executor.Execute(ConnectCommand()).ok());
  ASSERT_EQ(sim.Inventory().size(), 1u);
  ASSERT_TRUE(executor.Execute(DisconnectCommand()).ok());

  EXPECT_THAT(sim.Inventory(), IsEmpty());
}

TEST(StepExecutorWithSimTest,
     Connect_VmNotHeld_FailsAtAddProducerAndLeavesNothingWired) {
  SimBackendOptions options;
  options.node = "n1";
  options.vms = absl::flat_hash_set<std::string>{"vm-other"};
  SimBackend sim(std::move(options));
  StepExecutor executor(sim);

  const v1::CommandAck ack = executor.Execute(ConnectCommand());

  EXPECT_FALSE(ack.ok());
  EXPECT_EQ(ack.failed_step(), ADD_PRODUCER);
  EXPECT_EQ(ack.errno_value(), ENOENT);
  EXPECT_EQ(ack.message(), "vm \"vm-1\" not held by agent on node n1");
  EXPECT_THAT(sim.Inventory(), IsEmpty());
  // The undo freed the vector: another token can take it.
  v1::Command other = ConnectCommand();
  other.set_token("t2");
  other.mutable_consumer()->set_vm("vm-other");
  EXPECT_TRUE(executor.Execute(other).ok());
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
