// Owners: who registered a producer or a consumer, kept in its record as a
// small number (2 bytes, in padding the record had anyway) that this table
// maps to the identity's URI. One table per process, shared by the service
// (which interns the caller), the store codec (which writes and reads the
// URI) and the log. Ids are this process's own; the store keeps URIs.
// Append-only, at most 65535 identities (kMaxOwners). Thread-safe.
#ifndef IRQBYPASS_SERVICE_OWNERS_H_
#define IRQBYPASS_SERVICE_OWNERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "common/mutex.h"

namespace irqbypass {

class Owners {
 public:
  static constexpr uint32_t kMaxOwners = 65535;

  // The process's table.
  static Owners& Get();

  // The id of `uri` (interned on first use); 0 for an empty uri, and 0
  // when the table is full (the caller then refuses the call).
  uint16_t Intern(absl::string_view uri) ABSL_LOCKS_EXCLUDED(mu_);
  // The URI of `id`; empty for 0 or an unknown id.
  std::string Name(uint16_t id) const ABSL_LOCKS_EXCLUDED(mu_);
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable Mutex mu_;
  absl::flat_hash_map<std::string, uint16_t> ids_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> names_ ABSL_GUARDED_BY(mu_) = {""};  // [0]: none
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_OWNERS_H_
