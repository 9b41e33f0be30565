// EtcdStore: irqbypassd's state in an etcd cluster (`--store=etcd
// --etcd_endpoints=http://127.0.0.1:2379,...`), over etcd's v3 gRPC API
// (protos/etcd/, a wire-compatible subset).
//
// Durability is etcd's: a write is acknowledged once etcd committed it (a
// quorum of members has it in its fsynced log). Each Write is one etcd Txn:
// the token's record put or deleted, the call's request outcome put, and the
// revision mark raised when this revision is higher (a Compare on its
// value). etcd allows 128 operations per transaction by default: a batch is
// split into transactions of at most 40 changes, each atomic on its own.
//
// Layout under `prefix` (default "/irqbypass/"), as in rocksdb_store.h:
// "b/<token>" -> StoredBinding, "r/<expiry>/<id>" -> StoredRequest,
// "m/revision" -> the highest revision written (20 decimal digits, so that
// etcd's byte comparison orders it).
//
// One irqbypassd per prefix for now: leader election and fenced writes
// (several replicas on one cluster) are not built yet.
//
// Thread-safe; every call is a blocking gRPC call with `timeout`.
#ifndef IRQBYPASS_SERVICE_ETCD_STORE_H_
#define IRQBYPASS_SERVICE_ETCD_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "service/store.h"

namespace irqbypass {

struct EtcdStoreOptions {
  // "http://host:port" or "host:port", one per member.
  std::vector<std::string> endpoints;
  std::string prefix = "/irqbypass/";
  absl::Duration timeout = absl::Seconds(5);
};

class EtcdStore final : public Store {
 public:
  // Connects and makes sure the revision mark exists. INVALID_ARGUMENT for
  // no endpoints or a malformed one; UNAVAILABLE when etcd does not answer
  // within the timeout.
  static absl::StatusOr<std::unique_ptr<EtcdStore>> Open(
      const EtcdStoreOptions& options);

  absl::StatusOr<uint64_t> Load(
      const std::function<absl::Status(std::string token, BindingState state)>&
          fn) override;
  // Runs the transaction(s) on the calling thread; calls `done` before
  // returning.
  void Write(absl::Span<const StoreChange> changes,
             std::function<void(absl::Status)> done) override;
  absl::Status LoadRequests(
      int64_t now_unix_micros,
      const std::function<void(RequestRecord)>& fn) override;
  absl::Status PruneRequests(int64_t now_unix_micros) override;
  std::string Describe() const override;

 private:
  explicit EtcdStore(EtcdStoreOptions options);
  // Every key in [prefix + from, prefix + to) in pages; fn(key without the
  // prefix, value).
  absl::Status RangeAll(
      const std::string& from, const std::string& to,
      const std::function<absl::Status(const std::string&, const std::string&)>&
          fn);
  absl::Status WriteChunk(absl::Span<const StoreChange> changes);
  void SetDeadline(grpc::ClientContext* context) const;

  const EtcdStoreOptions options_;
  std::string target_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
};

// "20 decimal digits": etcd compares values as bytes.
std::string EtcdRevisionValue(uint64_t revision);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_ETCD_STORE_H_
