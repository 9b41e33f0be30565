#include "service/rocksdb_store.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/merge_operator.h"
#include "rocksdb/options.h"
#include "rocksdb/statistics.h"
#include "rocksdb/write_batch.h"
#include "service/errors.h"
#include "service/store_codec.h"

namespace irqbypass {
namespace {

constexpr absl::string_view kBindingPrefix = "b/";
constexpr absl::string_view kRevisionKey = "m/revision";
constexpr absl::string_view kRequestPrefix = "r/";
// Most changes one RocksDB write carries (the calls queued while the last
// write was in flight; more wait for the next one).
constexpr size_t kChangesPerWrite = 4096;

// "r/<expiry, 16 hex digits>/<id>": sorted by expiry, so that what expired
// is one key range.
std::string RequestKeyPrefix(int64_t expires_unix_micros) {
  return absl::StrCat(kRequestPrefix,
                      absl::Hex(static_cast<uint64_t>(
                                    std::max<int64_t>(0, expires_unix_micros)),
                                absl::kZeroPad16),
                      "/");
}

std::string EncodeRevision(uint64_t revision) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>((revision >> (8 * i)) & 0xff);
  }
  return bytes;
}

bool DecodeRevision(const rocksdb::Slice& bytes, uint64_t* revision) {
  if (bytes.size() != 8) return false;
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) {
    value |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  }
  *revision = value;
  return true;
}

// "m/revision" keeps the largest value ever merged into it.
class MaxRevisionOperator final : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice& /*key*/,
             const rocksdb::Slice* existing_value, const rocksdb::Slice& value,
             std::string* new_value,
             rocksdb::Logger* /*logger*/) const override {
    uint64_t merged = 0;
    if (!DecodeRevision(value, &merged)) return false;
    uint64_t existing = 0;
    if (existing_value != nullptr) {
      if (!DecodeRevision(*existing_value, &existing)) return false;
      if (existing > merged) merged = existing;
    }
    *new_value = EncodeRevision(merged);
    return true;
  }
  const char* Name() const override { return "irqbypass.MaxRevision"; }
};

absl::Status Unavailable(absl::string_view what, const rocksdb::Status& s) {
  return MakeError(
      absl::StatusCode::kUnavailable, ErrorReason::kStoreUnavailable,
      absl::StrCat("durable store: ", what, ": ", s.ToString()), {});
}

}  // namespace

RocksDbStore::RocksDbStore(std::string dir, bool sync)
    : dir_(std::move(dir)), sync_(sync) {}

absl::StatusOr<std::unique_ptr<RocksDbStore>> RocksDbStore::Open(
    const RocksDbStoreOptions& options) {
  if (options.dir.empty()) {
    return absl::InvalidArgumentError("data directory: empty");
  }
  std::unique_ptr<RocksDbStore> store(
      new RocksDbStore(options.dir, options.sync));
  store->on_failure_ = options.on_failure;
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.merge_operator = std::make_shared<MaxRevisionOperator>();
  db_options.statistics = rocksdb::CreateDBStatistics();
  db_options.statistics->set_stats_level(rocksdb::kExceptTimers);
  db_options.max_background_jobs = 2;
  db_options.info_log_level = rocksdb::WARN_LEVEL;
  db_options.keep_log_file_num = 4;
  if (options.env != nullptr) db_options.env = options.env;
  store->statistics_ = db_options.statistics;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.dir, &db);
  if (!s.ok()) {
    if (s.IsIOError() && absl::StrContains(s.ToString(), "lock")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data directory ", options.dir,
          " is in use by another process (its RocksDB LOCK is held): is "
          "another irqbypassd running with this --data_dir? (",
          s.ToString(), ")"));
    }
    return absl::UnavailableError(absl::StrCat(
        "cannot open the store in ", options.dir, ": ", s.ToString()));
  }
  {
    MutexLock lock(&store->mu_);
    store->db_.reset(db);
  }
  RocksDbStore* const raw = store.get();
  store->batcher_ = std::make_unique<StoreBatcher>(
      /*writers=*/1, kChangesPerWrite,
      [raw](absl::Span<const StoreChange> changes) {
        return raw->WriteNow(changes);
      });
  return store;
}

RocksDbStore::Use::Use(RocksDbStore* store) : store_(store) {
  MutexLock lock(&store_->mu_);
  if (store_->db_ == nullptr || store_->closing_) return;
  db_ = store_->db_.get();
  ++store_->uses_;
}

RocksDbStore::Use::~Use() {
  if (db_ == nullptr) return;
  MutexLock lock(&store_->mu_);
  --store_->uses_;  // the Unlock wakes a Close waiting for the last one
}

RocksDbStore::~RocksDbStore() { Close().IgnoreError(); }

absl::Status RocksDbStore::Close() {
  if (batcher_ != nullptr) batcher_->Stop();  // queued writes go in first
  MutexLock lock(&mu_);
  if (db_ == nullptr || closing_) {
    // Closed, or another Close is closing it: wait for that to finish.
    mu_.Await(
        [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return db_ == nullptr; });
    return absl::OkStatus();
  }
  closing_ = true;
  mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return uses_ == 0; });
  // Every acknowledged write is in the fsynced log already; flushing the
  // memtable only shortens the next start's log replay.
  rocksdb::Status flushed = db_->Flush(rocksdb::FlushOptions());
  rocksdb::Status closed = db_->Close();
  db_.reset();
  if (!flushed.ok()) return Unavailable("flush on close", flushed);
  if (!closed.ok()) return Unavailable("close", closed);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RocksDbStore::Load(
    const std::function<absl::Status(std::string token, BindingState state)>&
        fn) {
  Use use(this);
  rocksdb::DB* const db = use.db();
  if (db == nullptr) {
    return absl::UnavailableError("durable store: closed");
  }
  uint64_t last = 0;
  {
    std::string value;
    rocksdb::Status s = db->Get(
        rocksdb::ReadOptions(),
        rocksdb::Slice(kRevisionKey.data(), kRevisionKey.size()), &value);
    if (s.ok()) {
      if (!DecodeRevision(value, &last)) {
        return absl::DataLossError(
            absl::StrCat("store key ", kRevisionKey, ": not 8 bytes"));
      }
    } else if (!s.IsNotFound()) {
      return Unavailable("read revision", s);
    }
  }
  rocksdb::ReadOptions read;
  read.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read));
  const rocksdb::Slice prefix(kBindingPrefix.data(), kBindingPrefix.size());
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix);
       it->Next()) {
    std::string token(it->key().data() + prefix.size(),
                      it->key().size() - prefix.size());
    absl::StatusOr<BindingState> state = DecodeBinding(
        absl::string_view(it->value().data(), it->value().size()));
    if (!state.ok()) {
      return absl::DataLossError(
          absl::StrCat("store key b/", token, ": ", state.status().message()));
    }
    if (state->revision > last) last = state->revision;
    absl::Status taken = fn(std::move(token), *std::move(state));
    if (!taken.ok()) return taken;
  }
  if (!it->status().ok()) return Unavailable("read", it->status());
  return last;
}

void RocksDbStore::Write(absl::Span<const StoreChange> changes,
                         std::function<void(absl::Status)> done) {
  batcher_->Write(changes, std::move(done));
}

absl::Status RocksDbStore::WriteNow(absl::Span<const StoreChange> changes) {
  rocksdb::WriteBatch batch;
  uint64_t revision = 0;
  for (const StoreChange& change : changes) {
    const std::string key = absl::StrCat(kBindingPrefix, change.token);
    if (change.state.empty()) {
      batch.Delete(key);
    } else {
      batch.Put(key, EncodeBinding(change.state));
    }
    revision = std::max(revision, change.state.revision);
    if (change.request != nullptr) {
      batch.Put(
          absl::StrCat(RequestKeyPrefix(change.request->expires_unix_micros),
                       change.request->id),
          EncodeRequest(*change.request));
    }
  }
  batch.Merge(rocksdb::Slice(kRevisionKey.data(), kRevisionKey.size()),
              EncodeRevision(revision));
  rocksdb::WriteOptions options;
  options.sync = sync_;
  rocksdb::Status s;
  const char* refused = nullptr;  // why the store would not take the write
  {
    Use use(this);
    if (use.db() == nullptr) {
      refused = "durable store: closed";
    } else if (failed_.load()) {
      refused = "durable store: failed earlier; restart irqbypassd";
    } else {
      s = use.db()->Write(options, &batch);
    }
  }
  if (refused != nullptr) {
    return MakeError(absl::StatusCode::kUnavailable,
                     ErrorReason::kStoreUnavailable, refused, {});
  }
  if (!s.ok()) {
    ErrorContext ctx;
    if (changes.size() == 1) ctx.token = std::string(changes[0].token);
    absl::Status error = MakeError(
        absl::StatusCode::kUnavailable, ErrorReason::kStoreUnavailable,
        absl::StrCat("durable store: write failed: ", s.ToString()), ctx);
    if (!failed_.exchange(true) && on_failure_) on_failure_(error);
    return error;
  }
  writes_.fetch_add(changes.size(), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status RocksDbStore::LoadRequests(
    int64_t now_unix_micros, const std::function<void(RequestRecord)>& fn) {
  Use use(this);
  rocksdb::DB* const db = use.db();
  if (db == nullptr) return absl::UnavailableError("durable store: closed");
  rocksdb::ReadOptions read;
  read.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read));
  const std::string from = RequestKeyPrefix(now_unix_micros + 1);
  const rocksdb::Slice prefix(kRequestPrefix.data(), kRequestPrefix.size());
  for (it->Seek(from); it->Valid() && it->key().starts_with(prefix);
       it->Next()) {
    absl::StatusOr<RequestRecord> r = DecodeRequest(
        absl::string_view(it->value().data(), it->value().size()));
    if (!r.ok()) {
      return absl::DataLossError(absl::StrCat(
          "store key ", it->key().ToString(), ": ", r.status().message()));
    }
    fn(*std::move(r));
  }
  if (!it->status().ok()) return Unavailable("read", it->status());
  return absl::OkStatus();
}

absl::Status RocksDbStore::PruneRequests(int64_t now_unix_micros) {
  Use use(this);
  rocksdb::DB* const db = use.db();
  if (db == nullptr) return absl::UnavailableError("durable store: closed");
  // Not synced: a pruned record that comes back after a power cut is
  // expired and skipped on load.
  rocksdb::Status s = db->DeleteRange(
      rocksdb::WriteOptions(), db->DefaultColumnFamily(),
      std::string(kRequestPrefix), RequestKeyPrefix(now_unix_micros + 1));
  if (!s.ok()) return Unavailable("prune request outcomes", s);
  return absl::OkStatus();
}

std::string RocksDbStore::Describe() const {
  return absl::StrCat("embedded dir=", dir_);
}

RocksDbStore::Stats RocksDbStore::GetStats() const {
  Stats stats;
  stats.writes = writes_.load(std::memory_order_relaxed);
  stats.wal_syncs = statistics_->getTickerCount(rocksdb::WAL_FILE_SYNCED);
  stats.wal_bytes = statistics_->getTickerCount(rocksdb::WAL_FILE_BYTES);
  stats.write_groups = statistics_->getTickerCount(rocksdb::WRITE_DONE_BY_SELF);
  return stats;
}

}  // namespace irqbypass
