// The records the manager keeps per token: a producer, a consumer, whether
// they are connected, and the revision of the commit that made the state.
// Shared by the TokenIndex (the read path) and the Store (durability). Plain
// values; not synchronised.
#ifndef IRQBYPASS_SERVICE_BINDING_STATE_H_
#define IRQBYPASS_SERVICE_BINDING_STATE_H_

#include <cstdint>
#include <optional>
#include <string>

namespace irqbypass {

// The manager's own compact records (the API's protos are built at the edge).
struct ProducerRecord {
  std::string node;
  std::string device;  // PCI address
  uint32_t vector = 0;
  uint8_t irq_index = 3;  // irqbypass.v1.IrqIndex value; MSIX by default
  // Who registered it (owners.h; 0: nobody in particular, e.g. --insecure).
  // In the padding before registration_id: no bigger than without.
  uint16_t owner = 0;
  uint64_t registration_id = 0;
};

struct ConsumerRecord {
  std::string node;
  std::string vm;
  uint32_t gsi = 0;
  uint16_t owner = 0;  // as ProducerRecord's
  uint64_t registration_id = 0;
};

struct BindingState {
  std::optional<ProducerRecord> producer;
  std::optional<ConsumerRecord> consumer;
  bool connected = false;
  // Set by every commit, from one counter for the whole manager that only
  // rises, across restarts too (the store keeps its high-water mark); not
  // contiguous.
  uint64_t revision = 0;

  bool empty() const { return !producer.has_value() && !consumer.has_value(); }
  // The node of whichever side is present ("" when empty).
  const std::string& node() const {
    static const std::string* const kNone = new std::string();
    if (producer.has_value()) return producer->node;
    if (consumer.has_value()) return consumer->node;
    return *kNone;
  }
};

// The mutating calls, as a request id remembers which one it named.
enum class RequestKind : uint8_t {
  kRegisterProducer = 1,
  kRegisterConsumer = 2,
  kUnregisterProducer = 3,
  kUnregisterConsumer = 4,
};

// The outcome of a call that carried a client-chosen request id and changed
// state, kept (durably, in the same write as the change) until it expires,
// so that a retry with the same id gets this outcome instead of running
// again (request_log.h).
struct RequestRecord {
  std::string id;
  RequestKind kind = RequestKind::kRegisterProducer;
  // Of the request's other fields: the same id with a different request is
  // refused.
  uint64_t fingerprint = 0;
  int64_t expires_unix_micros = 0;
  std::string token;
  uint64_t registration_id = 0;  // register: the registration made
  bool connected = false;        // register: connected by it
  bool disconnected = false;     // unregister: a disconnect was issued
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_BINDING_STATE_H_
