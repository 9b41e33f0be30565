#include "agent/errno_status.h"

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace irqbypass {
namespace agent {
namespace {

constexpr char kErrnoPayloadUrl[] = "irqbypass.agent/errno";

}  // namespace

absl::Status ErrnoErrorWithMessage(int errno_value, absl::string_view message) {
  if (errno_value == 0) errno_value = EIO;
  absl::Status status(absl::ErrnoToStatusCode(errno_value), message);
  status.SetPayload(kErrnoPayloadUrl, absl::Cord(absl::StrCat(errno_value)));
  return status;
}

absl::Status ErrnoError(int errno_value, absl::string_view what) {
  if (errno_value == 0) errno_value = EIO;
  char buffer[128];
  // GNU strerror_r: returns the message, maybe not in `buffer`.
  const char* text = strerror_r(errno_value, buffer, sizeof(buffer));
  return ErrnoErrorWithMessage(errno_value, absl::StrCat(what, ": ", text));
}

int ErrnoOf(const absl::Status& status) {
  if (status.ok()) return 0;
  const auto payload = status.GetPayload(kErrnoPayloadUrl);
  int value = 0;
  if (payload.has_value() && absl::SimpleAtoi(std::string(*payload), &value) &&
      value > 0) {
    return value;
  }
  return EIO;
}

}  // namespace agent
}  // namespace irqbypass
