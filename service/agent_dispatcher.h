// AgentDispatcher: how the matcher reaches the node agents. The production
// implementation is AgentRegistry (agent_registry.h), which sends commands
// over each agent's AgentControl stream; tests substitute fakes.
// Implementations are thread-safe: the matcher calls them from many threads,
// one call at a time per token.
#ifndef IRQBYPASS_SERVICE_AGENT_DISPATCHER_H_
#define IRQBYPASS_SERVICE_AGENT_DISPATCHER_H_

#include <memory>
#include <utility>

#include "absl/functional/any_invocable.h"
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

  // Continuation forms, for callers that must not block a thread on the
  // round trip (the matcher under callback-API RPCs): start the command and
  // return; `done` runs once with what Connect would have returned (or,
  // for a disconnect, once Disconnect would have returned), on this thread
  // or another (the one that reads the agent's ack, a deadline timer, or
  // the one that ends the session). `done` must not block. The defaults
  // run the blocking call here and then `done` (fakes need nothing more).
  using ConnectedFn = absl::AnyInvocable<void(absl::Status) &&>;
  using DisconnectedFn = absl::AnyInvocable<void() &&>;
  virtual void ConnectAsync(absl::string_view token,
                            const ProducerRecord& producer,
                            const ConsumerRecord& consumer, ConnectedFn done) {
    std::move(done)(Connect(token, producer, consumer));
  }
  virtual void DisconnectAsync(absl::string_view token,
                               const ProducerRecord& producer,
                               const ConsumerRecord& consumer,
                               DisconnectedFn done) {
    Disconnect(token, producer, consumer);
    std::move(done)();
  }

  // Pipelined use (reconciliation sends thousands of commands to one agent):
  // Begin* queues the command and returns at once; End* waits for its
  // outcome, which is what Connect / Disconnect would have returned. Ends
  // come in the order of their Begins; every Begin gets its End. The
  // defaults run the blocking call in Begin (fakes need nothing more).
  class Pending {
   public:
    virtual ~Pending() = default;
    absl::Status result;  // the defaults' outcome
  };
  virtual std::unique_ptr<Pending> BeginConnect(
      absl::string_view token, const ProducerRecord& producer,
      const ConsumerRecord& consumer) {
    auto pending = std::make_unique<Pending>();
    pending->result = Connect(token, producer, consumer);
    return pending;
  }
  virtual absl::Status EndConnect(std::unique_ptr<Pending> pending) {
    return pending->result;
  }
  virtual std::unique_ptr<Pending> BeginDisconnect(
      absl::string_view token, const ProducerRecord& producer,
      const ConsumerRecord& consumer) {
    Disconnect(token, producer, consumer);
    return std::make_unique<Pending>();
  }
  virtual void EndDisconnect(std::unique_ptr<Pending> pending) {}
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_AGENT_DISPATCHER_H_
