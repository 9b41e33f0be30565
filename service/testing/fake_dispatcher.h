// Test support: a fake AgentDispatcher for the matcher's tests and the
// index benchmark. It records every connect and disconnect, can fail
// connects (fail_with_), run a hook on each (on_connect_, on_disconnect_),
// and hold connects until released (Hold / WaitHeld / Release). With
// Recording::kOff it does nothing and every connect succeeds. Thread-safe.
// (tests/contract_steps_test's InProcessDispatcher is not a fake: it runs
// the real step executor against a backend.)
#ifndef IRQBYPASS_SERVICE_TESTING_FAKE_DISPATCHER_H_
#define IRQBYPASS_SERVICE_TESTING_FAKE_DISPATCHER_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/mutex.h"
#include "service/agent_dispatcher.h"

namespace irqbypass::testing {

class FakeDispatcher : public AgentDispatcher {
 public:
  // kOff: nothing recorded and no lock taken (benchmarks: every connect
  // succeeds at once, and the fake adds no contention of its own).
  enum class Recording { kOn, kOff };
  explicit FakeDispatcher(Recording recording = Recording::kOn)
      : recording_(recording == Recording::kOn) {}

  absl::Status Connect(absl::string_view token, const ProducerRecord& p,
                       const ConsumerRecord& c) override {
    if (!recording_) return absl::OkStatus();
    {
      MutexLock lock(&mu_);
      ++connects_;
      calls_.push_back("connect:" + std::string(token));
      if (hold_) {
        ++held_;
        mu_.Await([this]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !hold_; });
      }
    }
    if (on_connect_) on_connect_(token);
    return fail_with_;
  }
  void Disconnect(absl::string_view token, const ProducerRecord& p,
                  const ConsumerRecord& c) override {
    if (!recording_) return;
    if (on_disconnect_) on_disconnect_(token);
    MutexLock lock(&mu_);
    ++disconnects_;
    calls_.push_back("disconnect:" + std::string(token));
  }

  void Hold() {
    MutexLock lock(&mu_);
    hold_ = true;
  }
  void WaitHeld(int n) {
    MutexLock lock(&mu_);
    mu_.Await([this, n]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return held_ >= n; });
  }
  void Release() {
    MutexLock lock(&mu_);
    hold_ = false;
  }
  int connects() {
    MutexLock lock(&mu_);
    return connects_;
  }
  int disconnects() {
    MutexLock lock(&mu_);
    return disconnects_;
  }
  std::vector<std::string> calls() {
    MutexLock lock(&mu_);
    return calls_;
  }

  absl::Status fail_with_;
  std::function<void(absl::string_view)> on_connect_;
  std::function<void(absl::string_view)> on_disconnect_;

 private:
  const bool recording_;
  Mutex mu_;
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  int held_ ABSL_GUARDED_BY(mu_) = 0;
  int connects_ ABSL_GUARDED_BY(mu_) = 0;
  int disconnects_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_SERVICE_TESTING_FAKE_DISPATCHER_H_
