#include "service/watch_slots.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace irqbypass {

WatchSlots::Slot::~Slot() { slots_.Give(identity_); }

absl::StatusOr<std::unique_ptr<WatchSlots::Slot>> WatchSlots::Take(
    const std::string& identity) {
  MutexLock lock(&mu_);
  if (open_ >= total_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("WatchBindings: ", total_,
                     " watches are open (--max_watches); try again later"));
  }
  int& mine = by_identity_[identity];
  if (mine >= per_identity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("WatchBindings: this caller has ", mine,
                     " watches open, the most one identity may "
                     "(--max_watches_per_identity)"));
  }
  ++mine;
  ++open_;
  return std::unique_ptr<Slot>(new Slot(*this, identity));
}

void WatchSlots::Give(const std::string& identity) {
  MutexLock lock(&mu_);
  --open_;
  auto it = by_identity_.find(identity);
  if (it != by_identity_.end() && --it->second == 0) by_identity_.erase(it);
}

int WatchSlots::open() const {
  MutexLock lock(&mu_);
  return open_;
}

}  // namespace irqbypass
