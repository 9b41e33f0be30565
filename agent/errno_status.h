// Errno-carrying absl::Status for the agent's system-call layers (kvm_vm,
// vfio_device, kvm_backend, handoff). The kernel's errno is what the manager
// and its callers see (CommandAck.errno_value, ErrorDetail.errno_value), so it
// must survive every layer exactly; absl's code mapping alone loses it (EBUSY
// and EAGAIN both become UNAVAILABLE). ErrnoError() keeps the exact value in
// a payload, ErrnoOf() reads it back.
//
// Thread-safety: pure functions.
#ifndef IRQBYPASS_AGENT_ERRNO_STATUS_H_
#define IRQBYPASS_AGENT_ERRNO_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace irqbypass {
namespace agent {

// A non-OK status for `errno_value` (0 is treated as EIO): code from
// absl::ErrnoToStatusCode, message "<what>: <strerror>", the exact errno in a
// payload.
absl::Status ErrnoError(int errno_value, absl::string_view what);

// Like ErrnoError, but the message is taken as is (for failures the agent
// decides itself, e.g. "vm \"vm-x\" not held by agent", where strerror text
// would only add noise).
absl::Status ErrnoErrorWithMessage(int errno_value, absl::string_view message);

// The errno carried by `status`: 0 for OK, the payload if present, otherwise
// EIO (a non-OK status without an errno is still a failure).
int ErrnoOf(const absl::Status& status);

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_ERRNO_STATUS_H_
