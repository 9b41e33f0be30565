// irqbypassd's validation of what a client sends (service/validation.h):
// the bytes of a Batch request (which holds every mutating request) from a
// hostile client are parsed as gRPC would, then every item is validated as
// the service does; nothing may crash, and a record that validates must
// name only values the API allows.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "google/protobuf/stubs/logging.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"
#include "service/validation.h"

// libFuzzer calls this once: protobuf's complaint about each malformed
// input (invalid UTF-8) would be most of the run's time.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  irqbypass::v1::BatchRequest batch;
  if (!batch.ParseFromArray(data, static_cast<int>(size))) return 0;
  for (const auto& item : batch.items()) {
    if (item.has_register_producer()) {
      const auto& r = item.register_producer();
      (void)irqbypass::ValidateRequestId("request_id", r.request_id());
      if (auto p = irqbypass::ProducerFromProto(r.producer()); p.ok()) {
        if (p->node.empty() || p->node.size() > irqbypass::kMaxNodeBytes ||
            p->vector > irqbypass::kMaxMsixVector) {
          std::abort();
        }
      }
    }
    if (item.has_register_consumer()) {
      const auto& r = item.register_consumer();
      if (auto c = irqbypass::ConsumerFromProto(r.consumer()); c.ok()) {
        if (c->vm.empty() || c->vm.size() > irqbypass::kMaxVmBytes ||
            c->gsi > irqbypass::kMaxGsi) {
          std::abort();
        }
      }
    }
    if (item.has_unregister_producer()) {
      const auto& r = item.unregister_producer();
      (void)irqbypass::ValidateToken("token", r.token());
      (void)irqbypass::ParseRegistrationId("registration_id", 'p',
                                           r.registration_id());
    }
    if (item.has_unregister_consumer()) {
      (void)irqbypass::ParseRegistrationId(
          "registration_id", 'c', item.unregister_consumer().registration_id());
    }
  }
  return 0;
}
