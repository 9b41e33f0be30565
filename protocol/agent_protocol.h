// The agent protocol's shared vocabulary (protos/irqbypass/v1/agent.proto),
// linked by both sides: the contract's step lists, which the manager puts
// into every command and the agent runs in order, and the names both use
// for steps in logs, metrics and errors.
#ifndef IRQBYPASS_PROTOCOL_AGENT_PROTOCOL_H_
#define IRQBYPASS_PROTOCOL_AGENT_PROTOCOL_H_

#include <string>

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

}  // namespace irqbypass

#endif  // IRQBYPASS_PROTOCOL_AGENT_PROTOCOL_H_
