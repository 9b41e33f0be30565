// WatchSlots: how many WatchBindings streams may be open at once, in all
// and per caller identity, so that no caller (and no number of callers)
// can hold unbounded memory with watchers that never read: each holds up
// to --watch_queue events while it lives. A slot is held from the call's
// start until its stream object is freed. Thread-safe.
#ifndef IRQBYPASS_SERVICE_WATCH_SLOTS_H_
#define IRQBYPASS_SERVICE_WATCH_SLOTS_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"

namespace irqbypass {

class WatchSlots {
 public:
  // A taken slot; gives it back when destroyed.
  class Slot {
   public:
    ~Slot();
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    friend class WatchSlots;
    Slot(WatchSlots& slots, std::string identity)
        : slots_(slots), identity_(std::move(identity)) {}
    WatchSlots& slots_;
    const std::string identity_;
  };

  WatchSlots(int per_identity, int total)
      : per_identity_(per_identity), total_(total) {}

  // A slot for `identity`; RESOURCE_EXHAUSTED naming the limit when it has
  // per_identity open, or all callers together total.
  absl::StatusOr<std::unique_ptr<Slot>> Take(const std::string& identity)
      ABSL_LOCKS_EXCLUDED(mu_);

  int open() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Give(const std::string& identity) ABSL_LOCKS_EXCLUDED(mu_);

  const int per_identity_;
  const int total_;
  mutable Mutex mu_;
  int open_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, int> by_identity_ ABSL_GUARDED_BY(mu_);
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_WATCH_SLOTS_H_
