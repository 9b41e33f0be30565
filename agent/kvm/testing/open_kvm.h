// Test support: /dev/kvm for the tests that need the real thing. A test
// skips (saying why) where it cannot be opened; nowhere else.
#ifndef IRQBYPASS_AGENT_KVM_TESTING_OPEN_KVM_H_
#define IRQBYPASS_AGENT_KVM_TESTING_OPEN_KVM_H_

#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "agent/kvm/fd.h"

namespace irqbypass::agent::testing {

// /dev/kvm opened read-write, or FAILED_PRECONDITION saying why not (for
// GTEST_SKIP() << status.message()).
inline absl::StatusOr<Fd> OpenKvmForTest() {
  Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm.valid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "/dev/kvm cannot be opened here (", std::strerror(errno), ")"));
  }
  return kvm;
}

}  // namespace irqbypass::agent::testing

#endif  // IRQBYPASS_AGENT_KVM_TESTING_OPEN_KVM_H_
