// AgentDispatcher: how the matcher reaches the node agents. The production
// implementation is AgentRegistry (agent_registry.h), which sends commands
// over each agent's AgentControl stream; tests substitute fakes.
// Implementations are thread-safe: the matcher calls them from many threads,
// one call at a time per token.
#ifndef IRQBYPASS_SERVICE_AGENT_DISPATCHER_H_
#define IRQBYPASS_SERVICE_AGENT_DISPATCHER_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "service/token_index.h"

namespace irqbypass {

class AgentDispatcher {
 public:
  virtual ~AgentDispatcher() = default;

  // Has the agent of producer.node (== consumer.node) run the contract's
  // connect steps and waits for its acknowledgement. Returns OK when
  // connected; otherwise nothing stays wired and the status is
  // FAILED_PRECONDITION (reason kConnectFailed, with step and errno),
  // UNAVAILABLE (no agent for the node, or it went away mid-command) or
  // DEADLINE_EXCEEDED (no ack in time; a disconnect is queued behind it).
  virtual absl::Status Connect(absl::string_view token,
                               const ProducerRecord& producer,
                               const ConsumerRecord& consumer) = 0;

  // Has the agent run the disconnect steps. Cannot fail, as in the kernel:
  // when the agent cannot be reached now, the stale wiring is removed when
  // it reconnects (reconciliation).
  virtual void Disconnect(absl::string_view token,
                          const ProducerRecord& producer,
                          const ConsumerRecord& consumer) = 0;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_AGENT_DISPATCHER_H_
