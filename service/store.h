// Store: where irqbypassd's committed state lives durably. The TokenIndex is
// the read path; the store is the source of truth at start-up. Every state
// change is written here (TokenIndex::TokenLock::Stage) *before* it is
// published to readers and watchers or acknowledged to a caller, and a
// store may refuse a change: then the change is not made.
//
// Implementations: RocksDbStore (rocksdb_store.h, the embedded default).
// `--store=memory` runs with no store at all. Thread-safe: Write is called
// concurrently from many threads, one call at a time per token.
#ifndef IRQBYPASS_SERVICE_STORE_H_
#define IRQBYPASS_SERVICE_STORE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "service/binding_state.h"

namespace irqbypass {

// One token's new committed state. `state.empty()`: the token holds nothing
// any more and its record is removed. `state.revision` is the commit's.
struct StoreChange {
  absl::string_view token;
  const BindingState& state;
  // The call that made the change, remembered with it so that a retry with
  // its request id gets the same outcome (null: none).
  const RequestRecord* request = nullptr;
};

class Store {
 public:
  virtual ~Store() = default;

  // Calls fn(token, state) for every stored token (in no particular order),
  // then returns the highest revision the store has ever written, removed
  // tokens' included, so that revisions continue upward after a restart.
  // DATA_LOSS when a record cannot be decoded (naming its key).
  virtual absl::StatusOr<uint64_t> Load(
      const std::function<absl::Status(std::string token, BindingState state)>&
          fn) = 0;

  // Calls fn for every remembered request outcome that expires after
  // `now_unix_micros`. DATA_LOSS as Load.
  virtual absl::Status LoadRequests(
      int64_t now_unix_micros,
      const std::function<void(RequestRecord)>& fn) = 0;

  // Forgets the request outcomes that expired by `now_unix_micros`.
  virtual absl::Status PruneRequests(int64_t now_unix_micros) = 0;

  // Records `changes` atomically (all or none; at most one per token).
  // `done` runs exactly once, on this thread or another: OK once the changes
  // will survive a crash of the process or of the host; otherwise
  // UNAVAILABLE (reason kStoreUnavailable) and nothing was written.
  // `changes` are read before Write returns. A store may bound the changes
  // in one call (EtcdStore: 40, one etcd transaction): more are refused
  // with INVALID_ARGUMENT and nothing is written.
  virtual void Write(absl::Span<const StoreChange> changes,
                     std::function<void(absl::Status)> done) = 0;

  // Write, then wait for `done`.
  [[nodiscard]] absl::Status WriteAndWait(
      absl::Span<const StoreChange> changes);
  [[nodiscard]] absl::Status WriteAndWait(const StoreChange& change) {
    return WriteAndWait(absl::MakeConstSpan(&change, 1));
  }

  // For logs: e.g. "embedded dir=/var/lib/irqbypassd".
  virtual std::string Describe() const = 0;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_STORE_H_
