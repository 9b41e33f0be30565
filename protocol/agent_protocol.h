// The agent protocol's shared vocabulary (protos/irqbypass/v1/agent.proto),
// linked by both sides: the contract's step lists, which the manager puts
// into every command and the agent runs in order, and the names both use
// for steps in logs, metrics and errors; and how either side packs what it
// sends into batch messages.
#ifndef IRQBYPASS_PROTOCOL_AGENT_PROTOCOL_H_
#define IRQBYPASS_PROTOCOL_AGENT_PROTOCOL_H_

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "protos/irqbypass/v1/agent.pb.h"

namespace irqbypass {

// The kernel contract's steps (../shared/reference/kernel-contract.md), in
// order. Connect: stop both sides, the producer takes the consumer (undone
// by del_consumer if the next step fails), the consumer takes the
// producer, start both again (always). Disconnect: stop both, del_producer,
// del_consumer, start both again (always).
void AddConnectSteps(v1::Command* command);
void AddDisconnectSteps(v1::Command* command);

// "add_producer" for ADD_PRODUCER; "step_42" for a value the proto does not
// define (an agent or manager of another version).
std::string StepName(v1::StepKind kind);

// Packs each run of consecutive messages that carry one item (a Command, a
// CommandAck) into batch messages (CommandBatch, AckBatch) of at most `max`
// items, keeping the order; other messages stay as they are, between them.
// `single(m)` is m's one item (null: m is something else);
// `batch(m)` is the repeated field of m's batch (set on m by the call).
template <typename Message, typename Single, typename Batch>
void PackRuns(std::vector<Message>& messages, int max, Single single,
              Batch batch) {
  std::vector<Message> packed;
  packed.reserve(messages.size() / max + 2);
  constexpr size_t kNone = ~size_t{0};
  size_t open = kNone;  // index in `packed` of the batch being filled
  for (Message& m : messages) {
    auto* item = single(m);
    if (item == nullptr) {
      packed.push_back(std::move(m));
      open = kNone;
      continue;
    }
    if (open == kNone || batch(packed[open])->size() >= max) {
      open = packed.size();
      batch(packed.emplace_back());
    }
    batch(packed[open])->Add()->Swap(item);
  }
  messages.swap(packed);
}

}  // namespace irqbypass

#endif  // IRQBYPASS_PROTOCOL_AGENT_PROTOCOL_H_
