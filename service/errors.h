// Errors raised inside irqbypassd, as absl::Status values that carry a
// machine-readable reason and context (field, step, errno, ...) as payloads.
// The gRPC edge (bypass_service.cc) turns them into grpc::Status with an
// irqbypass.v1.ErrorDetail. Thread-safe (pure functions).
#ifndef IRQBYPASS_SERVICE_ERRORS_H_
#define IRQBYPASS_SERVICE_ERRORS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace irqbypass {

// Mirrors irqbypass.v1.ErrorDetail.Reason (same numbers), so this layer needs
// no protobuf.
enum class ErrorReason {
  kUnspecified = 0,
  kInvalidField = 1,
  kTokenBusy = 2,
  kObjectBusy = 3,
  kConnectFailed = 4,
  kNodeMismatch = 5,
  kRegistrationMismatch = 6,
  kAgentUnavailable = 7,
  kAgentTimeout = 8,
  kNotRegistered = 9,
  kStoreUnavailable = 10,
  kRequestInProgress = 11,
  kNotLeader = 12,
  kNotOwner = 13,
};

// Context attached to an error; empty fields are not attached.
struct ErrorContext {
  std::string field;
  std::string token;
  std::string node;
  std::string step;
  int err = 0;
  std::string agent_message;
  std::string other_token;
  std::string leader;
};

absl::Status MakeError(absl::StatusCode code, ErrorReason reason,
                       absl::string_view message, const ErrorContext& ctx);

// INVALID_ARGUMENT naming `field`.
absl::Status InvalidField(absl::string_view field, absl::string_view message);

// Reads back what MakeError attached (defaults when absent).
ErrorReason GetErrorReason(const absl::Status& status);
ErrorContext GetErrorContext(const absl::Status& status);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_ERRORS_H_
