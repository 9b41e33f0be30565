// WatchHub: fans committed binding changes out to WatchBindings streams. It
// is the TokenIndex's ChangeListener; each subscriber has a bounded queue,
// and one that falls too far behind is closed with an overflow flag (its
// stream ends with RESOURCE_EXHAUSTED) rather than slowing registrations.
// With no subscribers a commit costs one relaxed atomic load. Thread-safe.
#ifndef IRQBYPASS_SERVICE_WATCH_HUB_H_
#define IRQBYPASS_SERVICE_WATCH_HUB_H_

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"
#include "service/token_index.h"

namespace irqbypass {

class WatchHub : public ChangeListener {
 public:
  class Subscriber {
   public:
    enum class Result { kEvent, kTimeout, kClosed, kOverflow };
    // Waits for the next event until `deadline`.
    Result Next(v1::BindingEvent* event,
                std::chrono::steady_clock::time_point deadline);

   private:
    friend class WatchHub;
    explicit Subscriber(std::string node) : node_(std::move(node)) {}
    const std::string node_;
    Mutex mu_;
    CondVar cv_;
    std::deque<v1::BindingEvent> queue_ ABSL_GUARDED_BY(mu_);
    bool overflow_ ABSL_GUARDED_BY(mu_) = false;
    bool closed_ ABSL_GUARDED_BY(mu_) = false;
  };

  explicit WatchHub(size_t max_queue = 10000) : max_queue_(max_queue) {}

  // Events for `node` only (empty: all).
  std::shared_ptr<Subscriber> Subscribe(const std::string& node);
  void Unsubscribe(const std::shared_ptr<Subscriber>& subscriber);
  // Closes every subscriber (their streams end); used at shutdown.
  void Shutdown();

  void OnCommit(absl::string_view token, const BindingState& before,
                const BindingState& after) override;

 private:
  const size_t max_queue_;
  std::atomic<int> count_{0};
  Mutex mu_;
  std::vector<std::shared_ptr<Subscriber>> subscribers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_WATCH_HUB_H_
