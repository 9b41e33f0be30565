#include "protocol/agent_protocol.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace irqbypass {
namespace {

void AddStep(v1::Command* command, v1::StepKind kind, bool always,
             v1::StepKind undo = v1::STEP_UNSPECIFIED) {
  v1::Step* step = command->add_steps();
  step->set_kind(kind);
  step->set_always(always);
  step->set_undo(undo);
}

}  // namespace

void AddConnectSteps(v1::Command* command) {
  AddStep(command, v1::STOP_PRODUCER, false);
  AddStep(command, v1::STOP_CONSUMER, false);
  AddStep(command, v1::ADD_CONSUMER, false, v1::DEL_CONSUMER);
  AddStep(command, v1::ADD_PRODUCER, false);
  AddStep(command, v1::START_CONSUMER, true);
  AddStep(command, v1::START_PRODUCER, true);
}

void AddDisconnectSteps(v1::Command* command) {
  AddStep(command, v1::STOP_PRODUCER, false);
  AddStep(command, v1::STOP_CONSUMER, false);
  AddStep(command, v1::DEL_PRODUCER, false);
  AddStep(command, v1::DEL_CONSUMER, false);
  AddStep(command, v1::START_CONSUMER, true);
  AddStep(command, v1::START_PRODUCER, true);
}

std::string StepName(v1::StepKind kind) {
  if (!v1::StepKind_IsValid(kind)) {
    return absl::StrCat("step_", static_cast<int>(kind));
  }
  return absl::AsciiStrToLower(v1::StepKind_Name(kind));
}

}  // namespace irqbypass
