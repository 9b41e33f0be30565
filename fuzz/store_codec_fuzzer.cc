// The durable store's decoding of what it reads back (service/store_codec):
// any bytes (a torn or tampered record) decode to a value or DATA_LOSS,
// never a crash; and a decoded record encodes to one that decodes equal.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "google/protobuf/stubs/logging.h"
#include "service/store_codec.h"

namespace {

bool SameState(const irqbypass::BindingState& a,
               const irqbypass::BindingState& b) {
  if (a.connected != b.connected || a.revision != b.revision) return false;
  if (a.producer.has_value() != b.producer.has_value()) return false;
  if (a.consumer.has_value() != b.consumer.has_value()) return false;
  if (a.producer &&
      (a.producer->node != b.producer->node ||
       a.producer->device != b.producer->device ||
       a.producer->vector != b.producer->vector ||
       a.producer->irq_index != b.producer->irq_index ||
       a.producer->registration_id != b.producer->registration_id ||
       a.producer->owner != b.producer->owner)) {
    return false;
  }
  if (a.consumer &&
      (a.consumer->node != b.consumer->node ||
       a.consumer->vm != b.consumer->vm || a.consumer->gsi != b.consumer->gsi ||
       a.consumer->registration_id != b.consumer->registration_id ||
       a.consumer->owner != b.consumer->owner)) {
    return false;
  }
  return true;
}

}  // namespace

// libFuzzer calls this once: protobuf's complaint about each malformed
// input (invalid UTF-8) would be most of the run's time.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (auto state = irqbypass::DecodeBinding(bytes); state.ok()) {
    auto again = irqbypass::DecodeBinding(irqbypass::EncodeBinding(*state));
    if (!again.ok() || !SameState(*state, *again)) std::abort();
  }
  if (auto request = irqbypass::DecodeRequest(bytes); request.ok()) {
    auto again = irqbypass::DecodeRequest(irqbypass::EncodeRequest(*request));
    if (!again.ok() || again->id != request->id ||
        again->registration_id != request->registration_id) {
      std::abort();
    }
  }
  return 0;
}
