// Test support: the API's Producer and Consumer records, built in one place
// so every layer's tests (client, manager, agent, end to end) describe a
// registration the same way.
#ifndef IRQBYPASS_PROTOCOL_TESTING_RECORDS_H_
#define IRQBYPASS_PROTOCOL_TESTING_RECORDS_H_

#include <cstdint>

#include "absl/strings/string_view.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::testing {

// A VFIO device vector on `node`. The index defaults to UNSPECIFIED, which
// the API treats as MSI-X.
v1::Producer MakeProducer(absl::string_view token, absl::string_view node,
                          absl::string_view device, uint32_t vector = 0,
                          v1::IrqIndex index = v1::IRQ_INDEX_UNSPECIFIED);

// A KVM irqfd into `vm` at `gsi` on `node`.
v1::Consumer MakeConsumer(absl::string_view token, absl::string_view node,
                          absl::string_view vm, uint32_t gsi);

// The agent's side sees records for one node, and a backend does not look
// at the token: these are the records an agent test hands its backend
// (node kTestNode, no token).
inline constexpr absl::string_view kTestNode = "n1";
v1::Producer NodeProducer(absl::string_view device, uint32_t vector,
                          v1::IrqIndex index = v1::IRQ_INDEX_MSIX);
v1::Consumer NodeConsumer(absl::string_view vm, uint32_t gsi);

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_PROTOCOL_TESTING_RECORDS_H_
