// StoreBatcher: group commit without a thread blocked per write. A store's
// Write queues the call (its changes copied) and returns; `writers` threads
// each take the oldest queued calls, up to `max_changes` changes in all (a
// call is never split, so it stays all-or-none), write them with one call
// of the store's write function (one synced RocksDB write, one etcd Txn),
// and run every call's `done` with the outcome. While a write is in flight
// the calls behind it gather, so the next write carries them all: the cost
// of an fsync or a quorum round trip is shared by every call waiting for
// it, and no caller's thread waits for it.
//
// Thread-safe. `done` runs on a writer thread, with no lock held; it may
// queue another write (a continuation that goes on to the token's next
// operation), but must not call Stop.
#ifndef IRQBYPASS_SERVICE_STORE_BATCHER_H_
#define IRQBYPASS_SERVICE_STORE_BATCHER_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/mutex.h"
#include "service/store.h"

namespace irqbypass {

class StoreBatcher {
 public:
  // Writes `changes` (from one or more calls, at most one per token) all or
  // none.
  using WriteFn = std::function<absl::Status(absl::Span<const StoreChange>)>;

  StoreBatcher(int writers, size_t max_changes, WriteFn write);
  ~StoreBatcher();  // Stop
  StoreBatcher(const StoreBatcher&) = delete;
  StoreBatcher& operator=(const StoreBatcher&) = delete;

  // Queues the call; `done` gets its outcome (a failed write shared with
  // other calls: the same code, reason and message, with this call's token
  // in the error detail). UNAVAILABLE (kStoreUnavailable), at once, once
  // stopped. A call of more than max_changes changes is the store's to
  // refuse before it gets here.
  void Write(absl::Span<const StoreChange> changes,
             std::function<void(absl::Status)> done);

  // Writes what is queued, then ends the writers; later Writes are
  // refused. Idempotent.
  void Stop();

 private:
  struct OwnedChange {
    std::string token;
    BindingState state;
    std::optional<RequestRecord> request;
  };
  struct Call {
    std::vector<OwnedChange> changes;
    std::function<void(absl::Status)> done;
  };
  void WriterLoop();

  const size_t max_changes_;
  const WriteFn write_;
  Mutex mu_;
  CondVar work_;
  std::deque<Call> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> writers_;
};

// A failed write's status as one of the calls that shared it sees it: the
// same code, reason and message, with that call's token (if it changed one
// token).
absl::Status ForCall(const absl::Status& status,
                     absl::Span<const StoreChange> changes);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_STORE_BATCHER_H_
