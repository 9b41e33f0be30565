// The durable store's record format: BindingState <-> bytes
// (irqbypass.store.v1.StoredBinding, protos/irqbypass/store/v1/store.proto).
// Shared by every Store implementation, so that the embedded and the etcd
// store read each other's records. Thread-safe (pure functions).
#ifndef IRQBYPASS_SERVICE_STORE_CODEC_H_
#define IRQBYPASS_SERVICE_STORE_CODEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/binding_state.h"

namespace irqbypass {

std::string EncodeBinding(const BindingState& state);

// DATA_LOSS when `bytes` is not a StoredBinding, or one that names a value
// out of range (an irq index above 255); never crashes on any input. Owners
// are stored as their URIs and interned (owners.h) when read.
absl::StatusOr<BindingState> DecodeBinding(absl::string_view bytes);

std::string EncodeRequest(const RequestRecord& request);
// DATA_LOSS when `bytes` is not a StoredRequest or names an unknown kind.
absl::StatusOr<RequestRecord> DecodeRequest(absl::string_view bytes);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_STORE_CODEC_H_
