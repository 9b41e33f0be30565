// RequestLog: the outcomes of mutating calls that carried a client-chosen
// request id, so that a retry with the same id (after a timeout, a crash or
// a failover the client cannot see through) gets the first call's outcome
// instead of running again. A deliberate addition to the kernel contract,
// which has no retries.
//
// Only calls that changed state are remembered: their outcome is written to
// the store in the same write as the change (TokenLock::Stage), so after a
// restart the log is filled again from the store (Restore). A call that
// changed nothing (an error) is forgotten at once: its retry runs again,
// which is safe because it had no effect.
//
// An outcome is kept for `ttl` from the call and at most `max_entries` are
// kept (the oldest go first). A retry after that runs again; the contract's
// own identity checks still make it harmless (a second registration of the
// same producer gets ALREADY_EXISTS, an unregister of one already gone
// NOT_FOUND), it only loses the first outcome.
//
// Thread-safe: sharded, one short mutex hold per call.
#ifndef IRQBYPASS_SERVICE_REQUEST_LOG_H_
#define IRQBYPASS_SERVICE_REQUEST_LOG_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "service/binding_state.h"

namespace irqbypass {

class RequestLog {
 public:
  struct Options {
    absl::Duration ttl = absl::Minutes(10);
    size_t max_entries = 1000000;
    // The clock (tests); default absl::Now.
    std::function<absl::Time()> now;
  };
  explicit RequestLog(Options options);

  enum class Claim {
    kNew,         // run the call, then Finish
    kDone,        // it ran before: *first holds its outcome
    kInProgress,  // a call with this id is running now
    kMismatch,    // the id was used for a different request
  };
  // Claims `id` for a call of `kind` whose other fields hash to
  // `fingerprint`.
  Claim Start(const std::string& id, RequestKind kind, uint64_t fingerprint,
              RequestRecord* first);
  // A record for the call claimed with Start: id, kind, fingerprint, token
  // and expiry set; the matcher fills in the outcome.
  RequestRecord NewRecord(const std::string& id, RequestKind kind,
                          uint64_t fingerprint, absl::string_view token) const;
  // Ends a kNew claim: with the outcome the store now holds, or with null
  // when the call changed nothing.
  void Finish(const std::string& id, const RequestRecord* outcome);

  // Start-up: an outcome read back from the store.
  void Restore(RequestRecord record);

  size_t size() const;
  int64_t NowUnixMicros() const;

 private:
  struct Entry {
    bool done = false;
    RequestRecord record;  // kind and fingerprint also while in progress
  };
  struct Shard {
    mutable Mutex mu;
    absl::flat_hash_map<std::string, Entry> entries ABSL_GUARDED_BY(mu);
    // Finished ids, oldest first, with their expiry.
    std::deque<std::pair<int64_t, std::string>> order ABSL_GUARDED_BY(mu);
  };
  static constexpr size_t kShards = 64;
  Shard& ShardFor(absl::string_view id);
  void ExpireLocked(Shard& shard, int64_t now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);

  const Options options_;
  const size_t max_per_shard_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

// A stable 64-bit hash of `bytes` (FNV-1a): the same in every process, so
// fingerprints survive restarts.
uint64_t StableFingerprint(absl::string_view bytes);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_REQUEST_LOG_H_
