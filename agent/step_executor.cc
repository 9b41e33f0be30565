#include "agent/step_executor.h"

#include <cerrno>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/errno_name.h"
#include "common/log.h"

namespace irqbypass {
namespace agent {
namespace {

bool IsKnownStep(int kind) {
  return v1::StepKind_IsValid(kind) && kind != v1::STEP_UNSPECIFIED;
}

}  // namespace

absl::Status ValidateCommand(const v1::Command& command) {
  if (command.kind() != v1::Command::CONNECT &&
      command.kind() != v1::Command::DISCONNECT) {
    return absl::InvalidArgumentError(
        absl::StrCat("kind: want CONNECT or DISCONNECT, got ",
                     static_cast<int>(command.kind())));
  }
  if (command.token().empty()) {
    return absl::InvalidArgumentError("token: empty");
  }
  if (!command.has_producer() || command.producer().device().empty()) {
    return absl::InvalidArgumentError("producer.device: missing");
  }
  if (!command.has_consumer() || command.consumer().vm().empty()) {
    return absl::InvalidArgumentError("consumer.vm: missing");
  }
  if (command.steps().empty()) {
    return absl::InvalidArgumentError("steps: empty");
  }
  for (int i = 0; i < command.steps_size(); ++i) {
    const v1::Step& step = command.steps(i);
    if (!IsKnownStep(step.kind())) {
      return absl::InvalidArgumentError(
          absl::StrCat("steps[", i, "].kind: unknown step kind ",
                       static_cast<int>(step.kind())));
    }
    if (step.undo() != v1::STEP_UNSPECIFIED && !IsKnownStep(step.undo())) {
      return absl::InvalidArgumentError(
          absl::StrCat("steps[", i, "].undo: unknown step kind ",
                       static_cast<int>(step.undo())));
    }
  }
  return absl::OkStatus();
}

v1::CommandAck StepExecutor::Execute(const v1::Command& command,
                                     bool* del_failed) {
  bool del_failed_here = false;
  if (del_failed == nullptr) del_failed = &del_failed_here;
  *del_failed = false;
  v1::CommandAck ack;
  ack.set_id(command.id());
  if (absl::Status valid = ValidateCommand(command); !valid.ok()) {
    ack.set_ok(false);
    ack.set_failed_step(v1::STEP_UNSPECIFIED);
    ack.set_errno_value(EINVAL);
    ack.set_message(absl::StrCat("invalid command: ", valid.message()));
    return ack;
  }

  bool failed = false;
  // Undo kinds of the steps completed before the first failure, in order.
  std::vector<v1::StepKind> undos;
  for (const v1::Step& step : command.steps()) {
    if (failed && !step.always()) continue;
    StepResult result = RunStep(step.kind(), command, del_failed);
    ack.add_executed(step.kind());
    if (result.ok()) {
      if (!failed && step.undo() != v1::STEP_UNSPECIFIED) {
        undos.push_back(step.undo());
      }
      continue;
    }
    if (failed) {
      // Only an `always` step gets here; the first failure is what counts.
      LogWarn("step failed after an earlier failure",
              {{"token", command.token()},
               {"node", command.producer().node()},
               {"step", StepName(step.kind())},
               {"errno", ErrnoName(result.errno_value())},
               {"error", result.message()}});
      continue;
    }
    failed = true;
    ack.set_failed_step(step.kind());
    ack.set_errno_value(result.errno_value());
    ack.set_message(result.message());
    for (auto it = undos.rbegin(); it != undos.rend(); ++it) {
      StepResult undone = RunStep(*it, command, del_failed);
      ack.add_executed(*it);
      if (!undone.ok()) {
        LogWarn("undo step failed", {{"token", command.token()},
                                     {"node", command.producer().node()},
                                     {"step", StepName(*it)},
                                     {"errno", ErrnoName(undone.errno_value())},
                                     {"error", undone.message()}});
      }
    }
  }
  ack.set_ok(!failed);
  return ack;
}

StepResult StepExecutor::RunStep(v1::StepKind kind, const v1::Command& command,
                                 bool* del_failed) {
  const std::string& token = command.token();
  const v1::Producer& producer = command.producer();
  const v1::Consumer& consumer = command.consumer();
  switch (kind) {
    case v1::STOP_PRODUCER:
      backend_.StopProducer(token, producer, consumer);
      return StepResult::Ok();
    case v1::STOP_CONSUMER:
      backend_.StopConsumer(token, producer, consumer);
      return StepResult::Ok();
    case v1::START_CONSUMER:
      backend_.StartConsumer(token, producer, consumer);
      return StepResult::Ok();
    case v1::START_PRODUCER:
      backend_.StartProducer(token, producer, consumer);
      return StepResult::Ok();
    case v1::ADD_CONSUMER:
      return backend_.AddConsumer(token, producer, consumer);
    case v1::ADD_PRODUCER:
      return backend_.AddProducer(token, producer, consumer);
    case v1::DEL_PRODUCER:
    case v1::DEL_CONSUMER: {
      StepResult result = kind == v1::DEL_PRODUCER
                              ? backend_.DelProducer(token, producer, consumer)
                              : backend_.DelConsumer(token, producer, consumer);
      if (!result.ok()) {
        // The contract's del hooks cannot fail: report and carry on.
        failed_dels_.fetch_add(1, std::memory_order_relaxed);
        *del_failed = true;
        LogWarn("del step failed; ignored",
                {{"token", token},
                 {"node", producer.node()},
                 {"step", StepName(kind)},
                 {"errno", ErrnoName(result.errno_value())},
                 {"error", result.message()}});
      }
      return StepResult::Ok();
    }
    default:
      // ValidateCommand rejects these before any step runs.
      return StepResult::Error(
          EINVAL, absl::StrCat("unknown step kind ", static_cast<int>(kind)));
  }
}

}  // namespace agent
}  // namespace irqbypass
