// Symbolic names for errno values ("ENOENT"), used in error messages and
// error details by the agent, the manager and the client. Thread-safe.
#ifndef IRQBYPASS_COMMON_ERRNO_NAME_H_
#define IRQBYPASS_COMMON_ERRNO_NAME_H_

#include <string>

#include "absl/strings/string_view.h"

namespace irqbypass {

// "ENOENT" for ENOENT; "E<n>" for a value without a known name.
std::string ErrnoName(int err);

// Parses "ENOENT" or a decimal number; returns 0 for anything else.
int ErrnoFromName(absl::string_view name);

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_ERRNO_NAME_H_
