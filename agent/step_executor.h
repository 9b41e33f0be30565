// StepExecutor: runs the steps of one AgentControl Command against a Backend
// and builds its CommandAck. The agent session calls it once per Command, in
// order per token and per object (CommandScheduler).
//
// The rules are generic (agent.proto, Step):
//   * steps run in order;
//   * once a step has failed, later steps run only if marked `always` (the
//     start steps);
//   * on the first failure, before anything else, the `undo` kinds of the
//     steps completed so far run in reverse order (for connect: DEL_CONSUMER
//     undoes ADD_CONSUMER when ADD_PRODUCER fails);
//   * stop/start/del steps cannot fail; a backend error from a del step is
//     logged and otherwise ignored.
// The ack reports the first failure (step, errno exactly as the backend gave
// it, message) and `executed`: every step kind that ran, undos included.
//
// Thread-safety: holds no state besides the Backend reference; as thread-safe
// as the Backend (all backends are thread-safe).
#ifndef IRQBYPASS_AGENT_STEP_EXECUTOR_H_
#define IRQBYPASS_AGENT_STEP_EXECUTOR_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "agent/backend.h"
#include "protocol/agent_protocol.h"
#include "protos/irqbypass/v1/agent.pb.h"

namespace irqbypass {
namespace agent {

class StepExecutor {
 public:
  // `backend` must outlive the executor.
  explicit StepExecutor(Backend& backend) : backend_(backend) {}

  // Runs `command` and returns its ack (same id). Never fails itself: a
  // malformed command (see ValidateCommand) runs no step and is acked with
  // ok=false, failed_step=STEP_UNSPECIFIED, errno_value=EINVAL.
  // With `del_failed`, also whether a del step of this command failed
  // (failed_dels() counts every command's, and commands run concurrently).
  v1::CommandAck Execute(const v1::Command& command,
                         bool* del_failed = nullptr);

  // How many del steps have failed so far (they do not fail their command,
  // as in the contract, but may leave half a pair wired).
  uint64_t failed_dels() const {
    return failed_dels_.load(std::memory_order_relaxed);
  }

 private:
  StepResult RunStep(v1::StepKind kind, const v1::Command& command,
                     bool* del_failed);

  Backend& backend_;
  std::atomic<uint64_t> failed_dels_{0};
};

// OK if `command` can be executed: kind CONNECT or DISCONNECT, a token, a
// producer with a device, a consumer with a vm, at least one step, and every
// step's kind (and undo, if set) a known StepKind. Otherwise
// INVALID_ARGUMENT naming the offending field, e.g. "steps[2].kind: unknown
// step kind 42".
absl::Status ValidateCommand(const v1::Command& command);

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_STEP_EXECUTOR_H_
