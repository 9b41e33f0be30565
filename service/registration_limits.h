// RegistrationLimits: how many sides (producers and consumers) one node and
// one owner may have registered, so that no node's agent and no
// orchestrator can grow the index (and every replica's memory) without
// bound. A registration reserves its place under its token's op lock
// before it connects or stores anything, and gives it back if it is not
// made; an unregister gives it back once made. Counts are of committed
// state (Recount, after a load), plus reservations in flight. Thread-safe.
#ifndef IRQBYPASS_SERVICE_REGISTRATION_LIMITS_H_
#define IRQBYPASS_SERVICE_REGISTRATION_LIMITS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "common/mutex.h"
#include "service/token_index.h"

namespace irqbypass {

class RegistrationLimits {
 public:
  // 0: no limit. Owner 0 (no identity: --insecure) has no per-owner limit.
  RegistrationLimits(size_t per_node, size_t per_owner)
      : per_node_(per_node), per_owner_(per_owner) {}

  // A place for one more side on `node` by `owner`; RESOURCE_EXHAUSTED
  // naming the limit when either is full.
  absl::Status Reserve(uint16_t owner, const std::string& node)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Release(uint16_t owner, const std::string& node)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The counts of `index`'s committed state, replacing these.
  void Recount(const TokenIndex& index) ABSL_LOCKS_EXCLUDED(mu_);

  size_t OfNode(const std::string& node) const ABSL_LOCKS_EXCLUDED(mu_);
  size_t OfOwner(uint16_t owner) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void AddLocked(uint16_t owner, const std::string& node)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t per_node_;
  const size_t per_owner_;
  mutable Mutex mu_;
  absl::flat_hash_map<std::string, size_t> nodes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint16_t, size_t> owners_ ABSL_GUARDED_BY(mu_);
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_REGISTRATION_LIMITS_H_
