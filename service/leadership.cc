#include "service/leadership.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "service/errors.h"

namespace irqbypass {

bool Leadership::Lead(uint64_t epoch) {
  MutexLock lock(&mu_);
  if (stepped_down_) return false;
  epoch_.store(epoch, std::memory_order_release);
  leading_.store(true, std::memory_order_release);
  return true;
}

void Leadership::StepDown() {
  MutexLock lock(&mu_);
  stepped_down_ = true;
  leading_.store(false, std::memory_order_release);
  leader_address_.clear();
}

void Leadership::SetLeaderAddress(std::string address) {
  MutexLock lock(&mu_);
  leader_address_ = std::move(address);
}

std::string Leadership::leader_address() const {
  MutexLock lock(&mu_);
  return leader_address_;
}

absl::Status Leadership::Check() const {
  if (leading()) return absl::OkStatus();
  ErrorContext ctx;
  ctx.leader = leader_address();
  return MakeError(
      absl::StatusCode::kUnavailable, ErrorReason::kNotLeader,
      ctx.leader.empty()
          ? "this irqbypassd is a standby and no leader is elected now; retry"
          : absl::StrCat("this irqbypassd is a standby; the leader is at ",
                         ctx.leader),
      ctx);
}

}  // namespace irqbypass
