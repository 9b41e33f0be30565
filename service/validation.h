// Request validation and conversion between the API's protos and the index's
// records. Every error is INVALID_ARGUMENT naming the field
// ("producer.device: ..."). Thread-safe (pure functions).
#ifndef IRQBYPASS_SERVICE_VALIDATION_H_
#define IRQBYPASS_SERVICE_VALIDATION_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"
#include "service/token_index.h"

namespace irqbypass {

inline constexpr size_t kMaxTokenBytes = 256;
inline constexpr size_t kMaxNodeBytes = 253;
inline constexpr size_t kMaxVmBytes = 128;
inline constexpr uint32_t kMaxGsi = 4095;  // KVM routes at most 4096 GSIs
inline constexpr uint32_t kMaxMsiVector = 31;
inline constexpr uint32_t kMaxMsixVector = 2047;
inline constexpr size_t kMaxRequestIdBytes = 128;

// 1..256 bytes of printable ASCII without spaces.
absl::Status ValidateToken(absl::string_view field, absl::string_view token);
// Empty (none), or 1..128 bytes of printable ASCII without spaces.
absl::Status ValidateRequestId(absl::string_view field, absl::string_view id);
// Kubernetes-style node name: 1..253 of [A-Za-z0-9.-_].
absl::Status ValidateNode(absl::string_view field, absl::string_view node);

absl::StatusOr<ProducerRecord> ProducerFromProto(const v1::Producer& p);
absl::StatusOr<ConsumerRecord> ConsumerFromProto(const v1::Consumer& c);
void ProducerToProto(absl::string_view token, const ProducerRecord& r,
                     v1::Producer* out);
void ConsumerToProto(absl::string_view token, const ConsumerRecord& r,
                     v1::Consumer* out);
void BindingToProto(absl::string_view token, const BindingState& st,
                    v1::Binding* out);

// Registration ids are "p-" (producers) or "c-" (consumers) and 16 hex
// digits. Parse returns 0 for an empty string (meaning "whatever holds the
// token"), INVALID_ARGUMENT naming `field` for anything malformed.
std::string FormatRegistrationId(char side, uint64_t id);
absl::StatusOr<uint64_t> ParseRegistrationId(absl::string_view field, char side,
                                             absl::string_view id);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_VALIDATION_H_
