// EtcdStore: irqbypassd's state in an etcd cluster (`--store=etcd
// --etcd_endpoints=http://127.0.0.1:2379,...`), over etcd's v3 gRPC API
// (protos/etcd/, a wire-compatible subset).
//
// Durability is etcd's: a write is acknowledged once etcd committed it (a
// quorum of members has it in its fsynced log). Concurrent Writes share
// Txns (group commit without a blocked caller: up to kWriters in flight,
// 40 changes each, written by the store's own threads); a Txn has
// the token's record put or deleted, the call's request outcome put, and,
// for a removal, the revision mark raised when this revision is higher (a
// Compare on its value). etcd allows 128 operations per transaction by
// default, so one call holds at most 40 changes (more: INVALID_ARGUMENT,
// nothing written): a call is never split, so it stays all-or-none. A
// failed transaction fails every call in it, each with its own token in the
// error detail.
//
// Layout under `prefix` (default "/irqbypass/"), as in rocksdb_store.h:
// "b/<token>" -> StoredBinding, "r/<expiry>/<id>" -> StoredRequest,
// "m/revision" -> the highest revision of a removal (20 decimal digits, so
// that etcd's byte comparison orders it); with the stored bindings' own
// revisions it gives the highest revision ever written.
//
// Several irqbypassd replicas share a prefix: one leads (etcd_election.h)
// and, once SetFence is called, every write of its store is a Txn guarded by
// the leader key's create_revision: after a newer election the deposed
// leader's writes fail (UNAVAILABLE, NOT_LEADER), and `on_step_down` runs.
// So it does when a fenced write fails without an answer (etcd down or
// slow): etcd may still apply it, so the replica's index may differ from
// etcd, and only a fresh load (at the next election) is trusted. irqbypassd
// always fences its etcd store (it runs an election even as the only
// replica); without a fence (tests) a write whose answer did not come is
// reported UNAVAILABLE although etcd may still apply it.
//
// Thread-safe; every call is a blocking gRPC call with `timeout`.
#ifndef IRQBYPASS_SERVICE_ETCD_STORE_H_
#define IRQBYPASS_SERVICE_ETCD_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "service/errors.h"
#include "service/store.h"
#include "service/store_batcher.h"

namespace irqbypass {

struct EtcdStoreOptions {
  // "http://host:port" or "host:port", one per member; "https://host:port"
  // with TLS (all the same scheme).
  std::vector<std::string> endpoints;
  // TLS credentials for https:// endpoints (security/tls.h
  // EtcdChannelCredentials); null for http://.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string prefix = "/irqbypass/";
  absl::Duration timeout = absl::Seconds(5);
  // Runs (once, on the writing thread) when a fenced write finds that this
  // replica no longer leads, or fails with an unknown outcome. May be
  // empty.
  std::function<void(const char* why)> on_step_down;
  // Open asks etcd once (and fails UNAVAILABLE if it does not answer);
  // false: Open only checks the endpoints (a standby starts without etcd).
  bool require_answer = true;
};

// The gRPC target for `endpoints` ("http://host:port", "https://host:port"
// or "host:port"): "ipv4:a,b,c" when all are IPv4 literals (gRPC then moves
// to the next member when one fails), else the first. INVALID_ARGUMENT
// naming a bad one, or if http:// and https:// are mixed.
absl::StatusOr<std::string> EtcdTarget(
    const std::vector<std::string>& endpoints);
// One endpoint: "http://HOST:PORT", "https://HOST:PORT" or "HOST:PORT"
// (http), an IPv6 HOST in brackets, PORT 1..65535. INVALID_ARGUMENT naming
// it otherwise.
struct EtcdEndpoint {
  bool tls = false;
  std::string host;  // without brackets
  int port = 0;
  std::string HostPort() const;  // "10.0.0.1:2379", "[::1]:2379"
};
absl::StatusOr<EtcdEndpoint> ParseEtcdEndpoint(absl::string_view endpoint);
// Whether `endpoints` are https:// (false if EtcdTarget refuses them).
bool EtcdEndpointsUseTls(const std::vector<std::string>& endpoints);
// The hosts EtcdTarget's target dials ("https://10.0.0.1:2379" ->
// "10.0.0.1"): every endpoint's when all are IPv4 literals, else the
// first's. A member's certificate must name one of them.
std::vector<std::string> EtcdDialledHosts(
    const std::vector<std::string>& endpoints);
// A channel to the members of `endpoints`, with `credentials` (null:
// plaintext). INVALID_ARGUMENT if the endpoints are https:// without
// credentials or http:// with them.
absl::StatusOr<std::shared_ptr<grpc::Channel>> EtcdChannel(
    const std::vector<std::string>& endpoints,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args = grpc::ChannelArguments());

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
  // Queues the changes and returns; up to kWriters writer threads share
  // the queued calls out into transactions (store_batcher.h) and run their
  // `done`s. At most kChangesPerTxn changes (more: INVALID_ARGUMENT, at
  // once).
  void Write(absl::Span<const StoreChange> changes,
             std::function<void(absl::Status)> done) override;
  absl::Status LoadRequests(
      int64_t now_unix_micros,
      const std::function<void(RequestRecord)>& fn) override;
  absl::Status PruneRequests(int64_t now_unix_micros) override;
  std::string Describe() const override;

  // From now on every write is applied only while `key`'s create_revision
  // is `create_revision` (this replica's election: etcd_election.h). Call
  // once, before serving.
  void SetFence(std::string key, int64_t create_revision);

  // Creates the revision mark if missing (every Write compares against
  // it). Load does this; a leader that takes its state from a warm copy
  // (etcd_mirror.h) instead calls it before serving.
  absl::Status EnsureMark();

 private:
  explicit EtcdStore(EtcdStoreOptions options);
  // Every key in [prefix + from, prefix + to) in pages; fn(key without the
  // prefix, value).
  absl::Status RangeAll(
      const std::string& from, const std::string& to,
      const std::function<absl::Status(const std::string&, const std::string&)>&
          fn);
  absl::Status WriteChunk(absl::Span<const StoreChange> changes);
  // Makes `txn` apply only while this replica's election stands.
  void AddFence(etcdserverpb::TxnRequest* txn) const;
  // A fenced write found another leader: NOT_LEADER; steps down.
  absl::Status Fenced(const ErrorContext& ctx);
  void StepDown(const char* why);
  void SetDeadline(grpc::ClientContext* context) const;

  const EtcdStoreOptions options_;
  std::string target_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  static constexpr int kWriters = 4;
  // Set once by SetFence before any concurrent write.
  std::string fence_key_;
  int64_t fence_revision_ = 0;
  std::atomic<bool> stepped_down_{false};  // on_step_down has run
  // Last: its writers stop (writing what is queued) before the rest goes.
  std::unique_ptr<StoreBatcher> batcher_;  // set by Open
};

// The first key after every key that starts with `prefix` (a Range's or
// Watch's range_end for the prefix).
std::string EtcdPrefixEnd(std::string prefix);

// "20 decimal digits": etcd compares values as bytes.
std::string EtcdRevisionValue(uint64_t revision);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_ETCD_STORE_H_
