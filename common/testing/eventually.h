// Test support: poll a condition until it holds or a timeout passes. The
// timeout only matters when something is broken, so it is generous; the
// poll interval starts at a millisecond (in-process conditions settle fast)
// and backs off to 10 ms (conditions that scrape a process or call an RPC
// should not load a 2-core machine). Header-only; for tests and benchmarks.
#ifndef IRQBYPASS_COMMON_TESTING_EVENTUALLY_H_
#define IRQBYPASS_COMMON_TESTING_EVENTUALLY_H_

#include <algorithm>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace irqbypass::testing {

// The default wait: long enough for a sanitizer build on a loaded machine
// to start a process and reconcile a node.
inline constexpr absl::Duration kEventuallyTimeout = absl::Seconds(20);

// True as soon as condition() is; false if it is still false after
// `timeout`. condition() is called once more at the deadline, so a result
// that arrives during the last sleep is not missed.
template <typename F>
bool Eventually(F&& condition, absl::Duration timeout = kEventuallyTimeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration poll = absl::Milliseconds(1);
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(poll);
    poll = std::min(poll * 2, absl::Milliseconds(10));
  }
  return condition();
}

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_COMMON_TESTING_EVENTUALLY_H_
