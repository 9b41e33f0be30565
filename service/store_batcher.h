// StoreBatcher: group commit without a thread blocked per write. A store's
// Write queues the call (its changes copied) and returns; `writers` threads
// each take the oldest queued calls, up to `max_changes` changes in all (a
// call is never split, so it stays all-or-none), and write them with one
// call of the store's write function (one synced RocksDB write, one etcd
// Txn). While a write is in flight the calls behind it gather, so the next
// write carries them all: the cost of an fsync or a quorum round trip is
// shared by every call waiting for it, and no caller's thread waits for it.
//
// A written batch's `done`s run on one completion thread, in the order the
// batches were written, while the writers go on to the next write: the
// continuations the answers start (an operation's commit, the next
// operation on its token) never delay the next fsync or Txn.
//
// Thread-safe. `done` runs with no lock held; it may queue another write,
// but must not call Stop (nor destroy the batcher), and should be short:
// every answer waits for the ones before it on the one completion thread.
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

  // Writes what is queued, runs every done, then ends the threads; later
  // Writes are refused. Idempotent; concurrent calls all return once it is
  // done. Must not be called from a `done` (it cannot wait for its own
  // thread): if it is, it logs that, refuses later writes and returns at
  // once, without waiting for what is queued.
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
  // A written call: its done and its outcome.
  struct Answer {
    std::function<void(absl::Status)> done;
    absl::Status status;
  };
  void WriterLoop();
  void CompleterLoop();
  bool OnOwnThread() const;

  const size_t max_changes_;
  const WriteFn write_;
  Mutex stop_mu_;  // one Stop at a time
  Mutex mu_;
  CondVar work_;      // a call queued, or stopping
  CondVar answered_;  // answers queued, or the last writer ended
  std::deque<Call> queue_ ABSL_GUARDED_BY(mu_);
  std::deque<std::vector<Answer>> answers_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int writing_ ABSL_GUARDED_BY(mu_) = 0;  // writer threads not yet ended
  std::vector<std::thread> writers_;
  std::thread completer_;
  std::vector<std::thread::id> own_ids_;  // of the threads above, at start
};

// A failed write's status as one of the calls that shared it sees it: the
// same code, reason and message, with that call's token (if it changed one
// token).
absl::Status ForCall(const absl::Status& status,
                     absl::Span<const StoreChange> changes);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_STORE_BATCHER_H_
