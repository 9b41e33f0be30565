// Leadership: whether this irqbypassd serves the API. With --store=etcd
// several replicas run and one leads (etcd_election.h); the others are
// standbys that answer every BypassManager and AgentControl call UNAVAILABLE
// (reason NOT_LEADER, naming the leader's address) until they are elected.
// With the embedded or memory store there is one replica and it always
// leads, with epoch 0.
//
// The epoch is the leader key's etcd create_revision: it rises with every
// election, and commands to agents carry it (agent.proto Command.epoch).
//
// Thread-safe.
#ifndef IRQBYPASS_SERVICE_LEADERSHIP_H_
#define IRQBYPASS_SERVICE_LEADERSHIP_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "common/mutex.h"

namespace irqbypass {

class Leadership {
 public:
  // A single replica: leading from the start, epoch 0.
  Leadership() : leading_(true) {}
  // standby = true: one of several replicas, not leading until Lead().
  explicit Leadership(bool standby) : leading_(!standby) {}

  Leadership(const Leadership&) = delete;
  Leadership& operator=(const Leadership&) = delete;

  // This replica was elected with `epoch` (and its state is loaded). False,
  // and nothing changes, once StepDown was called: a process leads at most
  // once.
  [[nodiscard]] bool Lead(uint64_t epoch);
  // This replica no longer leads (it was deposed or is stopping), for good.
  void StepDown();
  // A standby: who leads now ("" when nobody does or it is not known).
  void SetLeaderAddress(std::string address);

  bool leading() const { return leading_.load(std::memory_order_acquire); }
  uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }
  std::string leader_address() const;

  // OK when leading; otherwise UNAVAILABLE, reason NOT_LEADER, with the
  // leader's address in the message and the detail.
  absl::Status Check() const;

 private:
  std::atomic<bool> leading_;
  std::atomic<uint64_t> epoch_{0};
  mutable Mutex mu_;
  std::string leader_address_ ABSL_GUARDED_BY(mu_);
  bool stepped_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_LEADERSHIP_H_
