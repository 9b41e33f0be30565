// RocksDbStore: the embedded durable store (`--store=embedded`, the
// default), a RocksDB database in `--data_dir`.
//
// Durability: every Write is a RocksDB write with WriteOptions::sync, so
// `done` reports OK only once the change is in the write-ahead log and the
// log is fsynced. Concurrent Writes join one RocksDB write group: the group's
// leader appends everyone's records to the log and fsyncs once for all of
// them (group commit), so the fsync cost is shared by every caller waiting at
// the same moment instead of paid by each.
//
// Layout: "b/<token>" -> StoredBinding (store_codec.h) for every token that
// holds something; "r/<expiry>/<request id>" -> StoredRequest, the
// remembered outcomes of calls with a request id (in the same write as their
// change; expired ones are deleted as a range); "m/revision" -> the highest
// revision ever written (8 bytes, little-endian), kept by a max-merge so that
// concurrent writers never lower it and a removed token's revision is not
// forgotten.
//
// One process at a time: RocksDB's LOCK file makes a second Open of the same
// directory fail (FAILED_PRECONDITION naming the directory) instead of
// corrupting it. Thread-safe.
#ifndef IRQBYPASS_SERVICE_ROCKSDB_STORE_H_
#define IRQBYPASS_SERVICE_ROCKSDB_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "service/store.h"
#include "service/store_batcher.h"

namespace rocksdb {
class DB;
class Env;
class Statistics;
}  // namespace rocksdb

namespace irqbypass {

struct RocksDbStoreOptions {
  std::string dir;
  // Tests only: false leaves each write in the OS page cache, which survives
  // kill -9 but not a power cut (the power-cut test's negative control).
  bool sync = true;
  // Tests only: an Env that can simulate a power cut. Null: the default.
  rocksdb::Env* env = nullptr;
  // Called once, on the writing thread, when a write fails: the store then
  // refuses every later write (UNAVAILABLE), because after a failed append
  // or fsync what is on the disk is unknown until a restart reads it back
  // (the failed write may or may not be there; a retry with its request id
  // gets whichever outcome the restarted manager finds). irqbypassd turns
  // its services' health NOT_SERVING, so readiness probes take it out of
  // service until it is restarted.
  std::function<void(const absl::Status&)> on_failure;
};

class RocksDbStore final : public Store {
 public:
  // Opens (creating if needed) the database in options.dir.
  // FAILED_PRECONDITION when another process has it open; UNAVAILABLE with
  // RocksDB's message for any other failure (permissions, corruption).
  static absl::StatusOr<std::unique_ptr<RocksDbStore>> Open(
      const RocksDbStoreOptions& options);
  ~RocksDbStore() override;

  absl::StatusOr<uint64_t> Load(
      const std::function<absl::Status(std::string token, BindingState state)>&
          fn) override;
  // Queues the changes and returns: one writer thread takes every call
  // queued meanwhile and writes them as one synced RocksDB write (one
  // fsync), then runs their `done`s (store_batcher.h).
  void Write(absl::Span<const StoreChange> changes,
             std::function<void(absl::Status)> done) override;
  absl::Status LoadRequests(
      int64_t now_unix_micros,
      const std::function<void(RequestRecord)>& fn) override;
  absl::Status PruneRequests(int64_t now_unix_micros) override;
  std::string Describe() const override;

  // Writes what is queued, then flushes and closes the database; later
  // Writes fail UNAVAILABLE. Idempotent; waits for Writes in progress. Not
  // from a Write's `done`.
  absl::Status Close();

  struct Stats {
    uint64_t writes = 0;        // changes written (one per token per Write)
    uint64_t wal_syncs = 0;     // fsyncs of the write-ahead log
    uint64_t wal_bytes = 0;     // bytes appended to it
    uint64_t write_groups = 0;  // RocksDB writes done by a group leader
  };
  Stats GetStats() const;

 private:
  RocksDbStore(std::string dir, bool sync);
  // Writes the changes of one or more calls as one synced RocksDB write.
  absl::Status WriteNow(absl::Span<const StoreChange> changes);

  const std::string dir_;
  const bool sync_;
  std::function<void(const absl::Status&)> on_failure_;
  std::atomic<bool> failed_{false};
  std::shared_ptr<rocksdb::Statistics> statistics_;
  // A call's hold on the open database (Load, Write, ...): Close waits for
  // the holds to end and refuses new ones, while calls run concurrently
  // (RocksDB lets concurrent synced writes share one fsync).
  class Use {
   public:
    explicit Use(RocksDbStore* store);
    ~Use();
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;
    // Null once the store is closed or closing.
    rocksdb::DB* db() const { return db_; }

   private:
    RocksDbStore* const store_;
    rocksdb::DB* db_ = nullptr;
  };

  mutable Mutex mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(mu_);  // null once closed
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  int uses_ ABSL_GUARDED_BY(mu_) = 0;  // Use objects holding db_
  std::atomic<uint64_t> writes_{0};
  std::unique_ptr<StoreBatcher> batcher_;  // set by Open
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_ROCKSDB_STORE_H_
