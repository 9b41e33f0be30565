// Test support: poll a condition until it holds or a timeout passes. The
// timeout only matters when something is broken, so it is generous.
// Header-only; for tests.
#ifndef IRQBYPASS_COMMON_TESTING_EVENTUALLY_H_
#define IRQBYPASS_COMMON_TESTING_EVENTUALLY_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace irqbypass::testing {

// True as soon as condition() is; false if it is still false after
// `timeout` (checked every millisecond).
template <typename F>
bool Eventually(F condition, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return condition();
}

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_COMMON_TESTING_EVENTUALLY_H_
